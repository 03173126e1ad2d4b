"""Batch dubbing: ``lipsync batch JOBS.csv --out DIR``, many talking-head videos in one run on Ray.

JOBS.csv is a comma-separated file with a header row (column names are case-insensitive; an
unknown column is refused) and one job per row::

    output,train_video,model,audio,text,voice,target,mesh,blendshapes,mouth_motion
    alice_hello.mp4,alice/talk.mp4,,hello.wav,,,,yes,,
    alice_bye,alice/talk.mp4,,,Goodbye and thank you.,en-us,alice/still.jpg,,yes,0.8
    bob_news.mp4,,models/bob,news.m4a,,,,,,

* ``output`` (required): the video's name, ``NAME.mp4`` or ``NAME``; written as ``DIR/NAME.mp4``.
  A plain name: no folder separators, not starting with ``.`` or ``-``, not ``summary``; every row
  has its own.
* ``model`` (a model folder from ``lipsync train``) or ``train_video`` (a video of the speaker,
  preprocessed and trained here with ``--preset``): exactly one per row. Rows whose training videos
  have the same content share one preprocessing and one training.
* ``audio`` (speech: wav, mp3, m4a, or a video with sound) or ``text`` (spoken by espeak-ng, with
  the optional ``voice``, e.g. ``en-us``): exactly one per row.
* ``target`` (optional): a video or still image of the same person to insert the face into
  (default: the model's training video).
* ``mesh``, ``blendshapes`` (optional, yes/no): also write ``DIR/NAME.glb`` (the animated face,
  glTF) and ``DIR/NAME.csv`` (per-frame blendshape weights).
* ``mouth_motion`` (optional, a number, default 1): as ``lipsync synthesize --mouth-motion``.

Relative paths are relative to the CSV file's folder; empty cells count as absent. Every row is
checked before anything runs: a bad row (a missing file, both or neither of model/train_video or
audio/text, a bad or repeated output name) fails alone with one sentence and the others run. Only a
CSV that cannot be read, is empty or lacks the needed columns stops the command (exit 2, nothing
written).

The work is a graph of ``lipsync.engine`` tasks: per distinct training video ``prepare``
(``lipsync.preprocessing.preprocess``) then ``train`` (on a GPU when the cluster has one and
``--device`` is not cpu); per row ``dub`` (``LoadedModel.synthesize``), after its training. What is
not a final output lives in ``DIR/.work/``: prepared clips (``prepared-DIGEST``) and models
(``models-DIGEST/``, DIGEST: the training video's content hash) under content-keyed names,
``progress.json`` (every task's state), ``engine/`` (attempts, tracebacks), ``dub/`` (outputs being
made) and ``records/NAME.json``. A row's files are made in ``dub/NAME/`` and moved into ``DIR``
when all are complete, and only then is its record written: the key of its inputs (the training
video's content and preset or the model's files, the speech, the target, the options) and the size
and modification time of each file. A later run counts a row as ``cached`` (and does nothing for
it) while its record has the same key and its files are unchanged, so re-running after Ctrl-C or a
failure redoes only what did not finish.

``DIR`` can be an object-store URI (``s3://bucket/prefix``; see ``lipsync.storage``): the rows'
input files are copied into it first (``inputs/<content hash>/``), each task works in its node's
mirror of the store, fetching what it reads and sending back what it writes, and a row counts as
``cached`` when its record matches and its files are in the store with the recorded sizes.

``DIR/summary.csv`` has one row per job: output, status (done, cached, failed, skipped: its
training failed; cancelled after Ctrl-C), seconds (of this run's dub task; 0 when cached),
duration_s (of the video), attempts (of the dub task; more than 1 when a worker died) and error
(one sentence; empty unless failed, skipped or cancelled).
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .common import LipsyncError

COLUMNS = ("output", "model", "train_video", "audio", "text", "voice", "target", "mesh", "blendshapes", "mouth_motion")
SUMMARY_FIELDS = ("output", "status", "seconds", "duration_s", "attempts", "error")
BATCH_VERSION = 1  # bump when a change makes earlier outputs stale
WORK = ".work"
RESERVED = {"summary"}  # DIR/summary.csv is ours
YES, NO = {"yes", "y", "true", "1"}, {"no", "n", "false", "0", ""}
MAX_CPUS_PER_TASK = 4


@dataclass
class Job:
    """One CSV row. ``row``: its line in the file; ``error``: why it cannot run (one sentence), or
    None; ``video_digest``: the content hash of ``train_video``."""
    row: int
    output: str
    stem: str | None = None
    model: Path | None = None
    train_video: Path | None = None
    audio: Path | None = None
    text: str | None = None
    voice: str | None = None
    target: Path | None = None
    mesh: bool = False
    blendshapes: bool = False
    mouth_motion: float = 1.0
    error: str | None = None
    video_digest: str | None = None

    @property
    def name(self) -> str:
        """The name in the summary: ``NAME.mp4``, or the output cell (or row number) of a bad row."""
        if self.stem:
            return f"{self.stem}.mp4"
        return self.output or f"(row {self.row})"

    def files(self) -> list[str]:
        """The files this job writes into DIR."""
        return [f"{self.stem}.mp4"] + ([f"{self.stem}.glb"] if self.mesh else []) + \
               ([f"{self.stem}.csv"] if self.blendshapes else [])


# ---------------------------------------------------------------------------------------------
# reading and checking the CSV

def read_jobs(path: str | os.PathLike) -> list[Job]:
    """The jobs of a CSV file, each checked (a bad one carries its ``error``). ``LipsyncError``
    for a file that is unreadable, empty or lacks the needed columns."""
    path = Path(path)
    if not path.is_file():
        raise LipsyncError(f"the jobs file {path} does not exist." if not path.exists()
                           else f"the jobs file {path} is not a file; give a CSV file.")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise LipsyncError(f"{path} is not UTF-8 text; save the jobs file as a UTF-8 CSV.") from None
    except OSError as err:
        raise LipsyncError(f"cannot read {path} ({err.strerror or err}).") from None
    if "\x00" in text:
        raise LipsyncError(f"{path} is not a text file; give a CSV file with a header row.")
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        rows = [(reader.line_num, cells) for cells in reader]
    except csv.Error as err:
        raise LipsyncError(f"{path} is not valid CSV (line {reader.line_num}: {err}).") from None
    rows = [(n, c) for n, c in rows if any(x.strip() for x in c)]
    if not rows:
        raise LipsyncError(f"{path} is empty; it needs a header row (output, model or train_video, audio or text) "
                           "and one row per job.")
    header = [h.strip().lower() for h in rows[0][1]]
    named = [h for h in header if h]
    unknown = [h for h in named if h not in COLUMNS]
    if unknown:
        raise LipsyncError(f"{path} has an unknown column {unknown[0]!r}; the columns are {', '.join(COLUMNS)}.")
    repeated = sorted({h for h in named if named.count(h) > 1})
    if repeated:
        raise LipsyncError(f"{path} has the column {repeated[0]!r} twice; give each column once.")
    missing = [need for need in ("output", "model or train_video", "audio or text")
               if not any(h in named for h in need.split(" or "))]
    if missing:
        raise LipsyncError(f"{path} has no {missing[0]} column; its header must name output, model or train_video, "
                           "and audio or text.")
    if len(rows) == 1:
        raise LipsyncError(f"{path} has a header but no jobs; add one row per video to make.")
    base = path.resolve().parent
    jobs = []
    for line, cells in rows[1:]:
        values = {h: cells[i].strip() for i, h in enumerate(header) if h and i < len(cells)}
        extra = [c for i, c in enumerate(cells) if (i >= len(header) or not header[i]) and c.strip()]
        job = Job(row=line, output=values.get("output", ""))
        try:
            if extra:
                raise LipsyncError(f"row {line} has a value ({extra[0].strip()!r}) outside the header's columns.")
            _check_row(job, values, base)
        except LipsyncError as err:
            job.error = str(err)
        jobs.append(job)
    _refuse_repeated_outputs(jobs)
    return jobs


def output_stem(value: str) -> str:
    """The stem of an ``output`` cell (``NAME.mp4`` or ``NAME``); ``LipsyncError`` if it is not a plain name."""
    name = value.strip()
    if name.lower().endswith(".mp4"):
        name = name[:-4]
    if not name:
        raise LipsyncError("has no output name")
    if "/" in name or "\\" in name or name in (".", ".."):
        raise LipsyncError(f"has the output {value!r}, which is a path; give a plain file name (the video goes into --out)")
    if name[0] in ".-":
        raise LipsyncError(f"has the output {value!r}, which starts with {name[0]!r}; start the name with a letter or digit")
    if any(ord(c) < 32 or c in '<>:"|?*' for c in name) or len(name) > 200:
        raise LipsyncError(f"has the output {value!r}; use up to 200 letters, digits, '-', '_' or '.'")
    if name.lower() in RESERVED:
        raise LipsyncError(f"has the output {value!r}, a name the batch uses itself (summary.csv); choose another")
    return name


def _check_row(job: Job, v: dict, base: Path) -> None:
    """Fill ``job`` from the row's cells ``v``; ``LipsyncError`` (one sentence) if the row is bad."""
    r = f"row {job.row}"
    try:
        job.stem = output_stem(v.get("output", ""))
    except LipsyncError as err:
        raise LipsyncError(f"{r} {err}.") from None

    def given(col: str) -> str | None:
        return v.get(col) or None

    def path(col: str) -> Path | None:
        cell = given(col)
        return None if cell is None else (base / Path(cell).expanduser()).resolve()

    def file(col: str, what: str) -> Path:
        p = path(col)
        if not p.exists():
            raise LipsyncError(f"{r}: the {what} {p} does not exist.")
        if not p.is_file():
            raise LipsyncError(f"{r}: the {what} {p} is not a file.")
        if p.stat().st_size == 0:
            raise LipsyncError(f"{r}: the {what} {p} is empty (0 bytes).")
        return p

    if given("model") and given("train_video"):
        raise LipsyncError(f"{r} gives both a model and a train_video; give one of them.")
    if not given("model") and not given("train_video"):
        raise LipsyncError(f"{r} gives neither a model nor a train_video; give one of them.")
    if given("audio") and given("text"):
        raise LipsyncError(f"{r} gives both audio and text; give one of them.")
    if not given("audio") and not given("text"):
        raise LipsyncError(f"{r} gives neither audio nor text; give one of them.")
    if given("voice") and not given("text"):
        raise LipsyncError(f"{r} gives a voice but no text; the voice speaks the text column.")
    for col in ("mesh", "blendshapes"):
        flag = v.get(col, "").lower()
        if flag not in YES | NO:
            raise LipsyncError(f"{r} has {col} {v[col]!r}; write yes or no.")
        setattr(job, col, flag in YES)
    if given("model"):
        job.model = path("model")
        if not job.model.is_dir():
            raise LipsyncError(f"{r}: the model folder {job.model} does not exist." if not job.model.exists()
                               else f"{r}: the model {job.model} is not a folder; give a folder made by 'lipsync train'.")
        from .model_io import CONFIG, WEIGHTS

        lacking = [n for n in (WEIGHTS, CONFIG) if not (job.model / n).is_file()]
        if lacking:
            raise LipsyncError(f"{r}: {job.model} has no {lacking[0]}, so it is not a trained model; give a folder "
                               "made by 'lipsync train'.")
    else:
        from .files import file_digest

        job.train_video = file("train_video", "training video")
        job.video_digest = file_digest(job.train_video)
    if given("audio"):
        job.audio = file("audio", "audio file")
    else:
        from .synthesis.speech import VOICE_RE

        job.text = v["text"]
        job.voice = given("voice")
        if "\x00" in job.text:
            raise LipsyncError(f"{r} has a NUL character in its text; give plain text.")
        if job.voice is not None and not VOICE_RE.match(job.voice):
            raise LipsyncError(f"{r} has the voice {job.voice!r}, which is not an espeak-ng voice name (e.g. en, en-us, de).")
    if given("target"):
        job.target = path("target")
        if not job.target.exists():
            raise LipsyncError(f"{r}: the target {job.target} does not exist.")
    if given("mouth_motion"):
        from .synthesis.pipeline import check_mouth_motion

        try:
            job.mouth_motion = check_mouth_motion(v["mouth_motion"])
        except LipsyncError as err:
            raise LipsyncError(f"{r}: {err}") from None


def _refuse_repeated_outputs(jobs: list[Job]) -> None:
    """Rows that would write the same file (names compared ignoring case) all fail."""
    by_name: dict[str, list[Job]] = {}
    for j in jobs:
        if j.stem:
            by_name.setdefault(j.stem.lower(), []).append(j)
    for same in by_name.values():
        if len(same) > 1:
            for j in same:
                others = ", ".join(str(o.row) for o in same if o is not j)
                j.error = (f"row {j.row} has the output {j.name}, which row {others} also writes; give each row its "
                           "own output name.")


# ---------------------------------------------------------------------------------------------
# what a job's output depends on, and whether it is already made

def _preprocess_options(workers: int = 0):
    from .preprocessing import PreprocessOptions

    return PreprocessOptions(previews=False, workers=workers)


def _train_options(preset: str):
    from .training import PRESETS

    if preset not in PRESETS:
        raise LipsyncError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}.")
    return PRESETS[preset]


def job_key(job: Job, *, preset: str, renderer: str) -> str:
    """A hash of everything the job's files depend on (files by content)."""
    from . import __version__
    from .files import content_key

    if job.model is not None:
        from .model_io import CONFIG, WEIGHTS

        model = ["model", job.model / WEIGHTS, job.model / CONFIG]
    else:
        from eval.methods.lipsync3d import VERSION

        model = ["train", job.video_digest, asdict(_train_options(preset)), VERSION, repr(_preprocess_options())]
    speech = ["audio", job.audio] if job.audio is not None else ["text", job.text, job.voice or "en"]
    target = None
    if job.target is not None:
        target = job.target / "manifest.json" if job.target.is_dir() else job.target
    motion = [job.mouth_motion] if job.mouth_motion != 1.0 else []  # rows without it keep their keys
    return content_key(BATCH_VERSION, __version__, model, speech, target, job.mesh, job.blendshapes, renderer, *motion)


def _record_path(out: Path, stem: str) -> Path:
    return out / WORK / "records" / f"{stem}.json"


def _file_facts(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def cached_record(out: Path, job: Job, key: str, stored: dict | None = None) -> dict | None:
    """The record of the job's earlier run when it has the same key and its files are unchanged
    (``stored``: on an object-store root, the sizes of the files in the store, which are then
    compared instead of the local files' size and time)."""
    try:
        record = json.loads(_record_path(out, job.stem).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("key") != key:
        return None
    files = record.get("files")
    if not isinstance(files, dict) or sorted(files) != sorted(job.files()):
        return None
    for name, facts in files.items():
        try:
            if (stored.get(name) != facts[0]) if stored is not None else (_file_facts(out / name) != facts):
                return None
        except (OSError, TypeError, IndexError):
            return None
    return record


# ---------------------------------------------------------------------------------------------
# the tasks (module-level: Ray pickles them by reference)

def _models(work: str | Path, digest: str) -> Path:
    """Where the models trained on one training video live (one folder per video, so that a task
    can name it before the model's own content key is known)."""
    return Path(work) / f"models-{digest}"


def prepare_task(video: str, work: str, digest: str, workers: int) -> str:
    """Preprocess a training video once: ``WORK/prepared-DIGEST`` (reused when complete)."""
    from .preprocessing import preprocess

    out = Path(work) / f"prepared-{digest}"
    if not (out / "manifest.json").is_file():
        preprocess(video, out, options=_preprocess_options(workers), overwrite=True)
    return str(out)


def train_task(prepared: str, work: str, video: str, digest: str, preset: str, device: str) -> str:
    """Train on a prepared clip once (``eval``'s cached training: reused when finished, resumed
    from its checkpoint after a dead worker); returns the model folder."""
    from eval.core import RunContext
    from eval.methods.lipsync3d import train_cached

    ctx = RunContext(out=Path(work), cache=_models(work, digest), train_video=Path(video), train_prepared=Path(prepared),
                     preset=preset, device=device)
    folder, _ = train_cached(ctx, digest, Path(prepared), _train_options(preset))
    return str(folder)


def dub_task(job: dict, model_dir: str, out: str, key: str, renderer: str) -> dict:
    """Make one row's files in ``WORK/dub/NAME/``, move them into ``out``, then write its record."""
    from .model_io import load_model
    from .synthesis import text_to_speech

    out_dir = Path(out)
    stem = job["stem"]
    work = out_dir / WORK / "dub" / stem
    shutil.rmtree(work, ignore_errors=True)  # what a killed attempt left
    work.mkdir(parents=True)
    try:
        model = load_model(model_dir)
        audio = job["audio"]
        if audio is None:
            audio = text_to_speech(job["text"], work, voice=job["voice"] or "en")
        names = {"video": f"{stem}.mp4", "mesh": f"{stem}.glb" if job["mesh"] else None,
                 "blendshapes": f"{stem}.csv" if job["blendshapes"] else None}
        result = model.synthesize(out=work / names["video"], audio=audio, target=job["target"],
                                  mesh=names["mesh"] and work / names["mesh"],
                                  blendshapes=names["blendshapes"] and work / names["blendshapes"], renderer=renderer,
                                  mouth_motion=job.get("mouth_motion", 1.0))
        record_path = _record_path(out_dir, stem)
        try:
            earlier = json.loads(record_path.read_text()).get("files", {})
        except (OSError, ValueError, AttributeError):
            earlier = {}
        record_path.unlink(missing_ok=True)
        made = [n for n in names.values() if n]
        for name in made:
            os.replace(work / name, out_dir / name)
        for name in earlier:  # what an earlier run made that this one does not (e.g. a .glb no longer asked for)
            if name not in made and Path(name).name == name and name.startswith(stem + "."):
                (out_dir / name).unlink(missing_ok=True)
        record = {"key": key, "files": {n: _file_facts(out_dir / n) for n in made}, "duration_s": round(result.seconds, 3),
                  "frames": result.frames, "fps": result.fps, "renderer": result.renderer, "notes": result.notes,
                  "made": time.strftime("%Y-%m-%dT%H:%M:%S")}
        from .files import atomic_write_text

        atomic_write_text(record_path, json.dumps(record, indent=1), what="job record")
        return record
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# the run

@dataclass
class RowResult:
    """One line of ``summary.csv``."""
    output: str
    status: str
    seconds: float | None = None
    duration_s: float | None = None
    attempts: int = 0
    error: str = ""


def _one_line(text: str | None) -> str:
    return re.sub(r"\s+", " ", text or "").strip()


def _node_cpus() -> int:
    import ray

    return max([int(n.get("Resources", {}).get("CPU", 0)) for n in ray.nodes() if n.get("Alive")] + [1])


def build_graph(jobs: list[Job], out: Path, keys: dict, *, preset: str, device: str, renderer: str,
                gpus: int, node_cpus: int) -> tuple[list, dict]:
    """The tasks for ``jobs`` (the ones to make); returns them and each job stem's dub task key.
    Each task's ``scope`` names what it reads and writes under ``out`` (used on an object-store root)."""
    from .engine import Result, Task

    work = out / WORK

    def under(*paths) -> list[str]:
        return [Path(p).relative_to(out).as_posix() for p in paths if p is not None and Path(p).is_relative_to(out)]

    videos: dict[str, Job] = {}
    for j in jobs:
        if j.train_video is not None:
            videos.setdefault(j.video_digest, j)
    per_task = max(1, min(MAX_CPUS_PER_TASK, node_cpus // max(1, len(videos))))
    tasks, train_keys, groups = [], {}, set()
    for digest, j in videos.items():
        group = j.train_video.name
        if group in groups:
            group = f"{group}#{digest[:6]}"
        groups.add(group)
        made = under(j.train_video, work / f"prepared-{digest}")
        tasks.append(Task(f"{group}/prepare", prepare_task, (str(j.train_video), str(work), digest, per_task),
                          group=group, stage="prepare", num_cpus=per_task, scope=tuple(made)))
        tasks.append(Task(f"{group}/train", train_task, (Result(f"{group}/prepare"), str(work), str(j.train_video), digest,
                                                         preset, device),
                          group=group, stage="train", num_cpus=per_task,
                          num_gpus=1 if gpus and device != "cpu" else 0,
                          scope=tuple(made + under(_models(work, digest)))))
        train_keys[digest] = f"{group}/train"
    dubs = {}
    for j in jobs:
        spec = {"stem": j.stem, "audio": j.audio and str(j.audio), "text": j.text, "voice": j.voice,
                "target": j.target and str(j.target), "mesh": j.mesh, "blendshapes": j.blendshapes,
                "mouth_motion": j.mouth_motion}
        model = str(j.model) if j.model is not None else Result(train_keys[j.video_digest])
        key = f"{j.stem}/dub"
        # the model (a trained one: its folder, its prepared clip and video, the default target)
        scope = under(j.model, j.audio, j.target, work / "dub" / j.stem, _record_path(out, j.stem),
                      *(out / f"{j.stem}.{ext}" for ext in ("mp4", "glb", "csv")))
        if j.train_video is not None:
            scope += [model, *under(j.train_video, work / f"prepared-{j.video_digest}")]
        tasks.append(Task(key, dub_task, (spec, model, str(out), keys[j.stem], renderer), group=j.stem, stage="dub",
                          scope=tuple(scope)))
        dubs[j.stem] = key
    return tasks, dubs


def run_batch(jobs_csv: str | os.PathLike, out: str | os.PathLike, *, address: str | None = None,
              num_cpus: int | None = None, preset: str = "quick", device: str = "auto", renderer: str = "auto",
              show: bool = True) -> list[RowResult]:
    """Run every job of ``jobs_csv`` into ``out`` (see the module docstring); returns the summary's
    rows (also written to ``out/summary.csv``). ``LipsyncError`` for a whole-command error (nothing
    written); ``KeyboardInterrupt`` after Ctrl-C (the summary says which rows were cancelled)."""
    if num_cpus is not None and num_cpus < 1:
        raise LipsyncError("--num-cpus must be at least 1.")
    _train_options(preset)
    jobs = read_jobs(jobs_csv)
    from .storage import Storage, is_uri

    if not is_uri(out) and Path(out).expanduser().is_file():
        raise LipsyncError(f"{Path(out).expanduser().resolve()} is a file; give a folder for the videos with --out.")
    storage = Storage.open(out)
    out = storage.path()
    keys = {j.stem: job_key(j, preset=preset, renderer=renderer) for j in jobs if j.error is None}
    stored = _stored(storage, jobs)
    records = {j.stem: cached_record(out, j, keys[j.stem], stored) for j in jobs if j.error is None}
    todo = [j for j in jobs if j.error is None and records[j.stem] is None]
    if storage.remote:
        todo = [_staged(storage, j) for j in todo]
    outcomes: dict = {}
    dubs: dict = {}
    if todo:
        from .engine import connect, disconnect, run_graph

        info = connect(address, num_cpus=num_cpus)
        try:
            if device == "cuda" and info["gpus"] == 0 and any(j.train_video is not None for j in todo):
                raise LipsyncError("--device cuda needs a GPU, and the Ray cluster has none; use --device auto or cpu.")
            (out / WORK).mkdir(parents=True, exist_ok=True)
            tasks, dubs = build_graph(todo, out, keys, preset=preset, device=device, renderer=renderer,
                                      gpus=info["gpus"], node_cpus=_node_cpus())
            try:
                outcomes = run_graph(tasks, storage, title="batch", show=show, prefix=WORK,
                                     cancel=not info["started"])
            except KeyboardInterrupt:
                write_summary(storage, _rows(jobs, keys, records, {}, dubs, out, interrupted=True,
                                             stored=_stored(storage, jobs)))
                raise
        finally:
            disconnect(info)
    rows = _rows(jobs, keys, records, outcomes, dubs, out)
    write_summary(storage, rows)
    return rows


def _stored(storage, jobs: list[Job]) -> dict | None:
    """On an object-store root: the job records brought to this machine, and the sizes of the
    videos (and meshes, weights) in the store; None on a folder."""
    if not storage.remote:
        return None
    storage.pull([f"{WORK}/records"])
    return {rel: size for rel, (size, _) in storage.listing([n for j in jobs if j.error is None for n in j.files()]).items()}


def _staged(storage, job: Job) -> Job:
    """The job with its input files copied into the object-store root (see ``Storage.stage``)."""
    from dataclasses import replace

    return replace(job, **{k: storage.stage(getattr(job, k)) for k in ("model", "train_video", "audio", "target")
                           if getattr(job, k) is not None})


def _rows(jobs: list[Job], keys: dict, records: dict, outcomes: dict, dubs: dict, out: Path, *,
          interrupted: bool = False, stored: dict | None = None) -> list[RowResult]:
    rows = []
    for j in jobs:
        if j.error is not None:
            rows.append(RowResult(j.name, "failed", error=_one_line(j.error)))
        elif records[j.stem] is not None:
            rows.append(RowResult(j.name, "cached", 0.0, records[j.stem].get("duration_s")))
        elif interrupted:
            record = cached_record(out, j, keys[j.stem], stored)  # finished before the interrupt
            rows.append(RowResult(j.name, "done", None, record.get("duration_s")) if record else
                        RowResult(j.name, "cancelled", error="interrupted; run the same command again to resume."))
        else:
            o = outcomes[dubs[j.stem]]
            if o.status == "done":
                rows.append(RowResult(j.name, "done", o.seconds, o.value["duration_s"], o.attempts))
            else:
                rows.append(RowResult(j.name, o.status, o.seconds, None, o.attempts, _one_line(o.error or o.status)))
    return rows


def write_summary(storage, rows: list[RowResult]) -> Path:
    """``summary.csv`` in the storage root (atomically; sent to the store when the root is one)."""
    from .files import atomic_write_text

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(SUMMARY_FIELDS)
    for r in rows:
        w.writerow([r.output, r.status, "" if r.seconds is None else f"{r.seconds:.1f}",
                    "" if r.duration_s is None else f"{r.duration_s:.2f}", r.attempts, r.error])
    path = atomic_write_text(storage.path("summary.csv"), buf.getvalue(), what="summary")
    storage.put(["summary.csv"])
    return path


def format_summary(rows: list[RowResult], out: str | Path) -> str:
    """A few lines for the terminal: one per job, then the counts."""
    width = max([len(r.output) for r in rows] + [6])
    lines = []
    for r in rows:
        line = f"{r.output.ljust(width)}  {r.status:<9}"
        if r.status in ("done", "cached") and r.duration_s is not None:
            line += f" {r.duration_s:6.2f} s video" + (f" in {r.seconds:.0f} s" if r.status == "done" and r.seconds else "")
        elif r.error:
            line += f" {r.error}"
        lines.append(line)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.status] = counts.get(r.status, 0) + 1
    order = ("done", "cached", "failed", "skipped", "cancelled")
    lines.append(f"{len(rows)} job{'s' if len(rows) != 1 else ''}: "
                 + ", ".join(f"{counts[s]} {s}" for s in order if counts.get(s))
                 + f"; summary in {str(out).rstrip('/')}/summary.csv")
    return "\n".join(lines)


def exit_code(rows: list[RowResult]) -> int:
    """0 when every job's video is there (done or cached), else 1."""
    return 0 if all(r.status in ("done", "cached") for r in rows) else 1
