"""The evaluation across many speakers: ``python -m eval.run --dataset DATASET --out RESULTS``.

DATASET is a YAML file (or a folder, see ``load_dataset``)::

    methods: [ground_truth, lipsync3d, no_mouth_bank, frozen, personalized_2d]  # default: eval.run's
    metrics: [lmd, mouth_corr, sharpness, teeth]       # default: all
    preset: quick                                       # tiny | quick | full
    seed: 0
    test_fraction: 0.2                                  # defaults of every speaker ...
    clip_seconds: 5
    max_test_clips: 4
    cross_audio: true                                   # false, or a list of audio files
    side_by_side: true
    sweeps:
      train_seconds: [20, 60]                           # each method also trained on the first N s
    speakers:
      - name: s1
        video: s1/train.mp4                             # paths are relative to the YAML file
        test_clips: s1/held_out/                        # optional: separate clips instead of a test fraction
      - name: s2
        video: s2.mp4
        test_fraction: 0.25                             # ... which a speaker may change

Every speaker's run is what ``python -m eval.run --video`` does (``RESULTS/speakers/NAME/``: its
results, report and side-by-side video; each sweep value in ``RESULTS/speakers/NAME/sweeps/``),
and on top ``RESULTS/pooled.md`` / ``pooled.json`` / ``pooled.csv`` / ``plots/``: every metric per
method as the mean over speakers with a 95% bootstrap interval over speakers, the paper's claims
across speakers (for how many speakers each holds, and the pooled paired difference), per-speaker
tables, and the sweep's plot.

The work runs on Ray (``lipsync.engine``) as a graph of tasks: per speaker, prepare the protocol
(preprocess, cut the test clips, train the sync expert), cut each sweep's training part, fit each
method, render and measure each (method, clip), write the speaker's report; then pool. An embedded
local Ray uses this machine; ``--ray-address`` (or ``RAY_ADDRESS``) joins a cluster whose nodes all
see RESULTS at the same path. Every artifact is kept under content-keyed names, so a re-run, or a
run after Ctrl-C or a dead worker, redoes only what is missing; a speaker whose video fails (no
face, unreadable) is reported failed with its sentence while the others finish.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from lipsync.common import LipsyncError
from lipsync.files import atomic_write_text

from .config import DEFAULT_METHODS, EvalConfig

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SPEAKER_KEYS = {"name", "video", "test_clips", "test_fraction", "clip_seconds", "max_test_clips", "cross_audio"}
TOP_KEYS = {"speakers", "methods", "metrics", "preset", "seed", "test_fraction", "clip_seconds", "max_test_clips",
            "cross_audio", "side_by_side", "sweeps"}
SWEEPS = {"train_seconds"}
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".mpg", ".mpeg", ".webm", ".m4v")


@dataclass(frozen=True)
class Speaker:
    """One speaker of a dataset: ``video`` trains (and, without ``test_clips``, its held-out end
    tests); ``settings``: this speaker's changes to the dataset's EvalConfig fields."""
    name: str
    video: Path
    test_clips: Path | None = None
    settings: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Dataset:
    """Members:
        speakers: the speakers, in the file's order.
        settings: EvalConfig fields shared by every speaker (methods, metrics, preset, seed...).
        train_seconds: the training-length sweep's values (empty: no sweep).
        source: the file or folder it was read from.
    """
    speakers: tuple
    settings: dict
    train_seconds: tuple = ()
    source: Path | None = None


def _number(where: str, key: str, v, *, integer: bool = False, lo: float = 0.0, hi: float | None = None):
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) and v > lo and (hi is None or v < hi)
    if not ok or (integer and int(v) != v):
        kind = "a whole number" if integer else "a number"
        raise LipsyncError(f"{where}: {key} must be {kind} above {lo:g}" + (f" and below {hi:g}" if hi else "") + f", not {v!r}.")
    return int(v) if integer else float(v)


def _common(where: str, d: dict, base: Path) -> dict:
    """The EvalConfig fields a dataset or a speaker may set, checked."""
    out: dict = {}
    if "test_fraction" in d:
        out["test_fraction"] = _number(where, "test_fraction", d["test_fraction"], hi=1.0)
    if "clip_seconds" in d:
        out["clip_seconds"] = _number(where, "clip_seconds", d["clip_seconds"])
    if d.get("max_test_clips") is not None:
        out["max_test_clips"] = _number(where, "max_test_clips", d["max_test_clips"], integer=True)
    if "cross_audio" in d:
        v = d["cross_audio"]
        if isinstance(v, bool):
            out["cross_audio_test"] = v
        elif isinstance(v, list) and v and all(isinstance(x, str) for x in v):
            out["cross_audio"] = tuple(str(_path(base, x)) for x in v)
        else:
            raise LipsyncError(f"{where}: cross_audio must be true, false or a list of audio files.")
    return out


def _path(base: Path, value) -> Path:
    p = Path(str(value)).expanduser()
    return (p if p.is_absolute() else base / p).resolve()


def load_dataset(path: str | Path) -> Dataset:
    """A dataset from a YAML file, or from a folder: its ``dataset.yaml`` when there is one, else
    one speaker per subfolder (named after it; its video is the one video file in it, and a
    ``test/`` subfolder of clips, when present, is its held-out set) and one per video file directly
    in the folder. ``LipsyncError`` (one sentence) for anything malformed."""
    import yaml

    path = Path(path)
    if path.is_dir():
        if (path / "dataset.yaml").is_file():
            return load_dataset(path / "dataset.yaml")
        return _folder_dataset(path)
    if not path.is_file():
        raise LipsyncError(f"{path} is neither a dataset file nor a folder of speakers.")
    try:
        d = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise LipsyncError(f"{path} is not valid YAML ({str(err).splitlines()[0]}).") from None
    if not isinstance(d, dict):
        raise LipsyncError(f"{path} must hold a mapping with a 'speakers' list.")
    unknown = sorted(set(d) - TOP_KEYS)
    if unknown:
        raise LipsyncError(f"{path}: unknown key {unknown[0]!r}; the keys are {', '.join(sorted(TOP_KEYS))}.")
    base = path.resolve().parent
    settings = _common(str(path), d, base)
    for key in ("methods", "metrics"):
        if key in d:
            v = d[key]
            if not (isinstance(v, list) and v and all(isinstance(x, str) for x in v)):
                raise LipsyncError(f"{path}: {key} must be a list of names.")
            settings[key] = tuple(v)
    if "preset" in d:
        if d["preset"] not in ("tiny", "quick", "full"):
            raise LipsyncError(f"{path}: preset must be tiny, quick or full, not {d['preset']!r}.")
        settings["preset"] = d["preset"]
    if "seed" in d:
        if not isinstance(d["seed"], int) or isinstance(d["seed"], bool):
            raise LipsyncError(f"{path}: seed must be a whole number.")
        settings["seed"] = d["seed"]
    if "side_by_side" in d:
        settings["side_by_side"] = bool(d["side_by_side"])
    train_seconds: tuple = ()
    sweeps = d.get("sweeps") or {}
    if not isinstance(sweeps, dict) or set(sweeps) - SWEEPS:
        raise LipsyncError(f"{path}: sweeps may hold {', '.join(sorted(SWEEPS))} (a list of values).")
    if "train_seconds" in sweeps:
        v = sweeps["train_seconds"]
        if not isinstance(v, list) or not v:
            raise LipsyncError(f"{path}: sweeps.train_seconds must be a list of seconds, e.g. [20, 60, 180].")
        train_seconds = tuple(sorted({_number(str(path), "a sweeps.train_seconds value", x) for x in v}))
    raw = d.get("speakers")
    if not isinstance(raw, list) or not raw:
        raise LipsyncError(f"{path} lists no speakers; add a 'speakers' list with a name and a video each.")
    speakers = []
    for i, s in enumerate(raw):
        where = f"{path}: speaker {i + 1}"
        if not isinstance(s, dict):
            raise LipsyncError(f"{where} must be a mapping with a name and a video.")
        unknown = sorted(set(s) - SPEAKER_KEYS)
        if unknown:
            raise LipsyncError(f"{where}: unknown key {unknown[0]!r}; a speaker has {', '.join(sorted(SPEAKER_KEYS))}.")
        name = str(s.get("name", ""))
        if not NAME.match(name):
            raise LipsyncError(f"{where}: the name {name!r} must be letters, digits, '.', '_' or '-' (a folder name).")
        if "video" not in s:
            raise LipsyncError(f"{where} ({name}) names no video.")
        speakers.append(Speaker(name, _path(base, s["video"]),
                                _path(base, s["test_clips"]) if s.get("test_clips") else None,
                                _common(f"{where} ({name})", s, base)))
    _unique(path, speakers)
    return Dataset(tuple(speakers), settings, train_seconds, path)


def _unique(path: Path, speakers: list[Speaker]) -> None:
    seen: set[str] = set()
    for s in speakers:
        if s.name.lower() in seen:
            raise LipsyncError(f"{path}: two speakers are called {s.name!r}; give each its own name.")
        seen.add(s.name.lower())


def _folder_dataset(folder: Path) -> Dataset:
    speakers = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_file() and entry.suffix.lower() in VIDEO_SUFFIXES:
            speakers.append(Speaker(_safe_name(entry.stem), entry.resolve()))
        elif entry.is_dir():
            videos = sorted(p for p in entry.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
            if len(videos) != 1:
                raise LipsyncError(f"{entry} must hold exactly one training video (it holds {len(videos)}); "
                                   "put held-out clips in its test/ subfolder, or describe the dataset in dataset.yaml.")
            test = entry / "test"
            speakers.append(Speaker(_safe_name(entry.name), videos[0].resolve(), test.resolve() if test.is_dir() else None))
    if not speakers:
        raise LipsyncError(f"{folder} holds no speakers: add one subfolder (or one video) per speaker, or a dataset.yaml.")
    _unique(folder, speakers)
    return Dataset(tuple(speakers), {}, (), folder)


def _safe_name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", text).lstrip("._-")[:64]
    return name or "speaker"


# ---------------------------------------------------------------------------------------------
# the graph

def speaker_config(base: EvalConfig, dataset: Dataset, speaker: Speaker, out: Path,
                   train_seconds: float | None = None) -> EvalConfig:
    """The EvalConfig of one speaker's run (``train_seconds``: one sweep value's run)."""
    folder = out / "speakers" / speaker.name
    run_out = folder if train_seconds is None else folder / "sweeps" / f"train_{train_seconds:g}s"
    return replace(base, video=speaker.video, test_clips=speaker.test_clips, out=run_out, cache=folder / "cache",
                   train_seconds=train_seconds, quiet=True, **{**dataset.settings, **speaker.settings})


def _prepare(config: EvalConfig):
    from .run import prepare_run

    return prepare_run(config)


def _cut(config: EvalConfig, _speaker_prepared):
    """A sweep value's protocol: the speaker's (prepared by the task it waits for, so this finds
    it in the cache) with the training part cut."""
    from .run import prepare_run

    return prepare_run(config)


def _fit(config: EvalConfig, prepared, name: str, *_after):
    from .run import fit_method

    return fit_method(config, prepared, name)


def _measure(config: EvalConfig, prepared, fitted, job_index: int, cross: bool, last: bool):
    """One (method, clip) unit; the last unit of a kind also takes any clips beyond the ones the
    graph foresaw (the prepared video can have a frame more or less than its container said)."""
    from .run import jobs_of, measure_jobs

    if fitted.info is None:
        return None
    jobs = jobs_of(prepared)[1 if cross else 0]
    mine = jobs[job_index:] if last else jobs[job_index:job_index + 1]
    if not mine:
        return None
    return measure_jobs(config, prepared, fitted, [] if cross else mine, mine if cross else [])


def _report(config: EvalConfig, prepared, fitted: list, measured: list):
    """A speaker's report from its methods' pieces (``measured``: per method, its (method, clip)
    units in the serial run's order: every test clip, then every cross-audio sentence)."""
    from .run import merge_measured, report_run

    grouped = []
    for f, pieces in zip(fitted, measured):
        pieces = [x for x in pieces if x is not None]
        if f.info is None:
            continue
        reasons: dict = {}
        for x in pieces:
            for k, v in x[2].items():
                reasons.setdefault(k, v)
        grouped.append((merge_measured([x[0] for x in pieces]), merge_measured([x[1] for x in pieces]), reasons))
    t0 = time.perf_counter()
    doc = report_run(config, prepared, fitted, grouped, dict(prepared.timings))
    from lipsync.prepared import open_prepared

    train = open_prepared(prepared.train_prepared)
    return {"results_json": str(Path(prepared.out) / "results.json"), "seconds": round(time.perf_counter() - t0, 1),
            "train_seconds": round(train.num_frames / train.fps, 2), "test_clips": len(prepared.clips),
            "results": doc["results"], "cross_audio": doc["cross_audio"], "per_clip": doc["per_clip"],
            "claims": doc.get("claims", []), "metrics": doc["metrics"], "protocol": doc["protocol"]}


def _pool(dataset: Dataset, seed: int, reports: dict) -> dict:
    from lipsync.engine import Failed

    return pool(dataset, {k: v for k, v in reports.items() if not isinstance(v, Failed)},
                {k: v.error for k, v in reports.items() if isinstance(v, Failed)}, seed=seed)


@dataclass
class Plan:
    tasks: list
    reports: dict   # "speaker" or "speaker@Ns" (a sweep value) -> its report task's key
    pool_key: str


def build_graph(dataset: Dataset, base: EvalConfig, out: Path, *, gpus: int = 0) -> Plan:
    """The tasks of a dataset run (see the module docstring). The numbers of test clips and
    cross-audio sentences are known before anything is prepared: test clips from the held-out
    folder or the split of the video's length, sentences from the settings."""
    from lipsync.engine import Result, Task

    from .methods import get_method

    tasks: list = []
    reports: dict = {}
    for sp in dataset.speakers:
        points = [None, *dataset.train_seconds]
        for ts in points:
            cfg = speaker_config(base, dataset, sp, out, ts)
            scope = _scope(cfg, out, sp.name)
            tag = sp.name if ts is None else f"{sp.name}@{ts:g}s"
            if ts is None:
                pkey = f"{sp.name}/prepare"
                tasks.append(Task(pkey, _prepare, (cfg,), group=tag, stage="prepare", scope=scope))
            else:
                pkey = f"{tag}/prepare"
                tasks.append(Task(pkey, _cut, (cfg, Result(f"{sp.name}/prepare")), group=tag, stage="prepare",
                                  scope=scope))
            names = list(dict.fromkeys(cfg.methods or DEFAULT_METHODS))
            fit_keys = {}
            for name in names:
                shared = getattr(get_method(name), "trains_as", None)
                after = (Result(fit_keys[shared]),) if shared in fit_keys else ()
                key = f"{tag}/fit/{name}"
                trains = getattr(get_method(name), "trainable", False)
                tasks.append(Task(key, _fit, (cfg, Result(pkey), name, *after), group=tag, stage="fit", scope=scope,
                                  num_gpus=1 if (gpus and trains and cfg.device != "cpu") else 0))
                fit_keys[name] = key
            own, cross = _job_counts(cfg)
            measured = []
            for name in names:
                units = []
                for kind, count in (("clip", own), ("cross", cross)):
                    for j in range(count):
                        key = f"{tag}/measure/{name}/{kind}{j}"
                        tasks.append(Task(key, _measure, (cfg, Result(pkey), Result(fit_keys[name]), j, kind == "cross",
                                                          j == count - 1), group=tag, stage="measure",
                                          scope=scope))
                        units.append(Result(key))
                measured.append(units)
            rkey = f"{tag}/report"
            tasks.append(Task(rkey, _report, (cfg, Result(pkey), [Result(fit_keys[n]) for n in names], measured),
                              group=tag, stage="report", scope=scope))
            reports[_point(sp.name, ts)] = Result(rkey)
    tasks.append(Task("pool", _pool, (dataset, base.seed, reports), group="all", stage="pool", tolerate_failures=True))
    return Plan(tasks, {k: r.key for k, r in reports.items()}, "pool")


def _point(speaker: str, train_seconds: float | None) -> str:
    return speaker if train_seconds is None else f"{speaker}@{train_seconds:g}s"


def _job_counts(config: EvalConfig) -> tuple[int, int]:
    """(test clips, cross-audio sentences) the run will have, without preparing anything."""
    from lipsync.media import probe

    from .protocol import VIDEO_SUFFIXES as CLIP_SUFFIXES, split_points
    from .run import CROSS_SPEECH

    if config.test_clips is not None:
        folder = Path(config.test_clips)
        n = len([p for p in folder.iterdir() if p.suffix.lower() in CLIP_SUFFIXES]) if folder.is_dir() else 0
    else:
        try:
            info = probe(Path(config.video))
            n = len(split_points(info.frames, info.fps, config.test_fraction, config.clip_seconds)[1])
        except LipsyncError:
            n = 1  # the prepare task fails with the reason; the rest is skipped
    if config.max_test_clips:
        n = min(n, config.max_test_clips)
    n = max(1, n)
    cross = 0
    if config.cross_audio_test:
        cross = len(config.cross_audio) if config.cross_audio else len(CROSS_SPEECH)
    return n, cross


# ---------------------------------------------------------------------------------------------
# pooling

def pool(dataset: Dataset, reports: dict, failures: dict, *, seed: int = 0) -> dict:
    """The pooled document from the speakers' reports (``reports``: "speaker" or "speaker@Ns" ->
    what ``_report`` returned; ``failures``: the same keys -> why there is no report)."""
    from .core import MetricValue
    from .report import check_claims
    from .stats import summarize

    names = [s.name for s in dataset.speakers]
    done = {n: reports[n] for n in names if n in reports}
    meta = next((r["metrics"] for r in done.values()), {})
    methods = list(dict.fromkeys(m for r in done.values() for m in r["results"]))

    def values(section: str, rows: dict, m: str, k: str) -> dict:
        out = {}
        for n, r in rows.items():
            e = r.get(section, {}).get(m, {}).get(k, {})
            if "value" in e and e["value"] is not None and np.isfinite(e["value"]):
                out[n] = float(e["value"])
        return out

    def pooled(section: str, rows: dict) -> dict:
        res: dict = {}
        for m in methods:
            row = {}
            for k in meta:
                v = values(section, rows, m, k)
                if not v:
                    why = next((r[section][m][k].get("unavailable") for r in rows.values()
                                if k in r.get(section, {}).get(m, {}) and "unavailable" in r[section][m][k]), None)
                    row[k] = {"unavailable": why or "no speaker gave a value"}
                    continue
                s = summarize([MetricValue(x) for x in v.values()], seed=seed)
                row[k] = {"value": s["value"], "ci95": s["ci95"], "n_speakers": len(v),
                          **({"note": "one speaker: no interval"} if len(v) < 2 else {})}
            if any("value" in e for e in row.values()):
                res[m] = row
        return res

    per_speaker = {k: {n: {m: values("results", {n: r}, m, k).get(n) for m in methods} for n, r in done.items()}
                   for k in meta}
    pseudo = {"per_clip": {m: {n: {k: per_speaker[k][n][m] for k in meta if per_speaker[k][n][m] is not None}
                               for n in done} for m in methods},
              "metrics": meta, "config": {"seed": seed}}
    claims = []
    for c in check_claims(pseudo):
        verdicts = [next((x["verdict"] for x in r.get("claims", []) if x["claim"] == c["claim"]), "not tested")
                    for r in done.values()]
        tested = [v for v in verdicts if v != "not tested"]
        claims.append({**c, "speakers_tested": len(tested), "holds_for": sum(v == "holds" for v in tested),
                       "does_not_hold_for": sum(v == "does not hold" for v in tested)})
    sweep: dict = {}
    if dataset.train_seconds:
        points = [None, *dataset.train_seconds]
        for k in meta:
            for m in methods:
                line = []
                for ts in points:
                    rows = {n: reports[_point(n, ts)] for n in names if _point(n, ts) in reports}
                    v = values("results", rows, m, k)
                    if not v:
                        continue
                    s = summarize([MetricValue(x) for x in v.values()], seed=seed)
                    x = ts if ts is not None else float(np.mean([rows[n]["train_seconds"] for n in v]))
                    used = float(np.mean([rows[n]["train_seconds"] for n in v]))
                    line.append({"train_seconds": x, "used_seconds": used, "all": ts is None, "value": s["value"],
                                 "ci95": s["ci95"], "n_speakers": len(v)})
                if line:
                    sweep.setdefault(k, {})[m] = sorted(line, key=lambda e: e["used_seconds"])
    speakers = {}
    for n in names:
        if n in done:
            r = done[n]
            speakers[n] = {"status": "done", "results": r["results_json"], "test_clips": r["test_clips"],
                           "train_seconds": r["train_seconds"]}
        else:
            speakers[n] = {"status": "failed", "error": failures.get(n, "no report")}
    sweep_failures = {k: v for k, v in failures.items() if "@" in k}
    return {"speakers": speakers, "metrics": meta, "methods": methods, "results": pooled("results", done),
            "cross_audio": pooled("cross_audio", done), "per_speaker": per_speaker, "claims": claims,
            "sweep": sweep, "sweep_failures": sweep_failures, "settings": {k: (list(v) if isinstance(v, tuple) else v)
                                                                           for k, v in dataset.settings.items()},
            "train_seconds": list(dataset.train_seconds), "source": str(dataset.source), "seed": seed}


def write_pooled(out: Path, doc: dict) -> None:
    """``pooled.json``, ``pooled.md``, ``pooled.csv``, ``per_speaker.csv`` and the plots."""
    from .cache import write_json
    from .report import _fmt, plot_metrics, table

    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    meta = doc["metrics"]
    n_done = sum(1 for s in doc["speakers"].values() if s["status"] == "done")
    L = [f"# Pooled results over {n_done} of {len(doc['speakers'])} speakers", "",
         f"Dataset: `{doc['source']}`. Each speaker's run is `python -m eval.run` on that speaker "
         "(self-reenactment on held-out clips, cross-audio on foreign speech); here every metric is the mean over "
         "speakers of the speaker's value, with a 95% bootstrap interval over speakers.", ""]
    eng = doc.get("engine")
    if eng:
        L += [f"Ran on Ray ({eng['address']}: {eng['nodes']} node(s), {eng['cpus']} CPUs, {eng['gpus']} GPUs) in "
              f"{eng['wall_s']:.0f} s: {eng['counts'].get('done', 0)} tasks done, {eng['counts'].get('failed', 0)} failed, "
              f"{eng['counts'].get('skipped', 0)} skipped. "
              + (f"Ray retried {len(eng['retries'])} task(s) after their worker died (at most {eng['max_retries']} "
                 "retries each): " + ", ".join(f"{k} ({v} attempts)" for k, v in eng["retries"].items()) + "."
                 if eng["retries"] else "No task needed a retry.")
              + (f" Storage root `{eng['storage']}`: the tasks fetched {eng['transfers']['fetched_mb']:.0f} MB "
                 f"({eng['transfers']['fetched']:.0f} files) from the store into their nodes' mirrors and sent "
                 f"{eng['transfers']['sent_mb']:.0f} MB ({eng['transfers']['sent']:.0f} files) back, in "
                 f"{eng['transfers']['seconds']:.0f} s of task time." if eng.get("transfers") else ""), ""]
    L += ["## Speakers", "", "| speaker | status | test clips | training footage (s) | |", "|---|---|---|---|---|"]
    for n, s in doc["speakers"].items():
        if s["status"] == "done":
            L.append(f"| {n} | done | {s['test_clips']} | {s['train_seconds']:.1f} | [report](speakers/{n}/report.md) |")
        else:
            L.append(f"| {n} | **failed** | | | {s['error']} |")
    for k, v in doc.get("sweep_failures", {}).items():
        L.append(f"| {k} | **failed** | | | {v} |")
    if doc["results"]:
        L += ["", "## Self-reenactment: mean over speakers [95% interval over speakers]", "",
              *table(doc["results"], meta)]
        if plot_metrics({"results": doc["results"], "metrics": meta}, plots / "pooled_metrics.png"):
            L += ["", "![pooled metrics](plots/pooled_metrics.png)"]
    if doc["cross_audio"]:
        L += ["", "## Cross-audio (foreign speech): mean over speakers", "",
              *table(doc["cross_audio"], {k: v for k, v in meta.items() if not v.get("needs_reference")})]
    if doc["claims"]:
        L += ["", "## The paper's claims across speakers", "",
              "For how many speakers each claim holds (each speaker's own verdict, paired over its clips), and the "
              "pooled verdict: the paired difference of the speakers' means, with a 95% interval over speakers.", "",
              "| claim | holds for | does not hold for | pooled verdict | pooled differences |", "|---|---|---|---|---|"]
        for c in doc["claims"]:
            if c["verdict"] == "not tested" and not c["speakers_tested"]:
                continue  # its methods were not run
            diffs = "; ".join(f"{r['metric']} {r['difference']:+.3f}" + (f" [{r['ci95'][0]:+.3f}, {r['ci95'][1]:+.3f}]"
                                                                         if r.get("ci95") else "")
                              for r in c["metrics"] if "difference" in r)
            L.append(f"| {c['claim']} | {c['holds_for']} of {c['speakers_tested']} | {c['does_not_hold_for']} | "
                     f"{c['verdict']} | {diffs or '—'} |")
    if doc["per_speaker"] and n_done:
        L += ["", "## Per speaker", ""]
        for k, rows in doc["per_speaker"].items():
            if not any(v is not None for r in rows.values() for v in r.values()):
                continue
            L += [f"### {k}", "", "| speaker | " + " | ".join(doc["methods"]) + " |", "|---|" + "---|" * len(doc["methods"])]
            for n, r in rows.items():
                L.append(f"| {n} | " + " | ".join("—" if r.get(m) is None else f"{r[m]:.3f}" for m in doc["methods"]) + " |")
            L.append("")
    if doc["sweep"]:
        _plot_sweep(doc, plots / "sweep_train_seconds.png")
        L += ["", "## Training-length sweep", "",
              "Each method trained on the first N seconds of each speaker's training footage (the rightmost point: all "
              "of it), measured on the same test clips; mean over speakers with 95% intervals over speakers.", "",
              "![training-length sweep](plots/sweep_train_seconds.png)", ""]
        for k, lines in doc["sweep"].items():
            L += [f"### {k}", "", "| method | " + " | ".join(f"{e['train_seconds']:g} s" + (" (all)" if e["all"] else "")
                                                          for e in next(iter(lines.values()))) + " |",
                  "|---|" + "---|" * len(next(iter(lines.values())))]
            for m, line in lines.items():
                L.append(f"| {m} | " + " | ".join(_fmt(e) for e in line) + " |")
            L.append("")
    atomic_write_text(out / "pooled.md", "\n".join(L) + "\n")
    rows = ["section,method,metric,value,ci_lo,ci_hi,n_speakers"]
    for section in ("results", "cross_audio"):
        for m, row in doc[section].items():
            for k, e in row.items():
                if "value" in e:
                    ci = e.get("ci95") or [float("nan")] * 2
                    rows.append(f"{section},{m},{k},{e['value']:.6g},{ci[0]:.6g},{ci[1]:.6g},{e['n_speakers']}")
    atomic_write_text(out / "pooled.csv", "\n".join(rows) + "\n")
    rows = ["speaker,method,metric,value"]
    for k, per in doc["per_speaker"].items():
        for n, r in per.items():
            rows += [f"{n},{m},{k},{v:.6g}" for m, v in r.items() if v is not None]
    atomic_write_text(out / "per_speaker.csv", "\n".join(rows) + "\n")
    write_json(out / "pooled.json", doc)


def _plot_sweep(doc: dict, path: Path) -> None:
    from .report import _plt, _save, _better_words

    plt = _plt()
    keys = list(doc["sweep"])
    cols = min(3, len(keys))
    nrows = -(-len(keys) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.4 * cols, 3.2 * nrows), squeeze=False)
    for ax, k in zip(axes.flat, keys):
        for m, line in doc["sweep"][k].items():
            x = np.array([e["used_seconds"] for e in line])
            v = np.array([e["value"] for e in line], float)
            ci = np.array([e["ci95"] or [np.nan, np.nan] for e in line], float)
            ax.errorbar(x, v, yerr=[np.nan_to_num(np.clip(v - ci[:, 0], 0, None)), np.nan_to_num(np.clip(ci[:, 1] - v, 0, None))],
                        marker="o", capsize=3, label=m)
        ax.set_title(f"{k} ({_better_words(doc['metrics'][k])})", fontsize=9)
        ax.set_xlabel("training footage (s)", fontsize=8)
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=7)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    _save(fig, path)


# ---------------------------------------------------------------------------------------------
# the run

def run_dataset(dataset: Dataset, base: EvalConfig, out: str | Path, *, address: str | None = None,
                num_cpus: int | None = None, mirror: str | Path | None = None) -> dict:
    """Run a dataset on Ray (see the module docstring); returns ``pooled.json``'s document.
    ``out``: a folder (every node of a cluster must see it at the same path) or an object-store
    URI (``s3://bucket/prefix``; see ``lipsync.storage``), where the speakers' inputs are copied
    first (``mirror``: the nodes' mirror folder instead of ``$LIPSYNC_MIRROR``'s).
    ``KeyboardInterrupt`` after the running tasks are cancelled (the same call resumes)."""
    from lipsync.engine import connect, disconnect, retries, run_graph, transfers
    from lipsync.storage import Storage

    t0 = time.perf_counter()
    storage = Storage.open(out, mirror=mirror)
    if storage.remote:
        dataset = stage_inputs(dataset, storage)
    out = storage.path()
    out.mkdir(parents=True, exist_ok=True)
    info = connect(address, num_cpus=num_cpus)
    try:
        if info.get("dashboard") and not base.quiet:
            print(f"[eval] Ray dashboard: {info['dashboard']}", flush=True)
        plan = build_graph(dataset, base, out, gpus=info["gpus"])
        outcomes = run_graph(plan.tasks, storage, title="eval", show=not base.quiet,
                             cancel=not info["started"])
    finally:
        disconnect(info)
    pooled_outcome = outcomes[plan.pool_key]
    if pooled_outcome.status != "done":
        raise LipsyncError(f"pooling the speakers' results failed: {pooled_outcome.error}")
    doc = pooled_outcome.value
    counts: dict = {}
    for o in outcomes.values():
        counts[o.status] = counts.get(o.status, 0) + 1
    max_retries = max(t.max_retries for t in plan.tasks)
    doc["engine"] = {k: info[k] for k in ("address", "cpus", "gpus", "nodes", "dashboard")}
    doc["engine"].update(wall_s=round(time.perf_counter() - t0, 1), counts=counts, retries=retries(outcomes),
                         max_retries=max_retries, tasks=len(plan.tasks),
                         task_seconds={k: o.seconds for k, o in outcomes.items() if o.seconds is not None},
                         storage=storage.root, transfers=transfers(outcomes))
    if storage.remote:  # where the results are, for a reader of the store
        for entry in doc["speakers"].values():
            if entry.get("results"):
                entry["results"] = f"{storage.root}/{storage.rel(entry['results'])}"
    before = storage.snapshot(POOLED_FILES)
    write_pooled(out, doc)
    storage.push(POOLED_FILES, before)
    return doc


POOLED_FILES = ("pooled.md", "pooled.json", "pooled.csv", "per_speaker.csv", "plots")


def stage_inputs(dataset: Dataset, storage) -> Dataset:
    """The dataset with every input (videos, held-out clips, cross-audio files) copied into the
    object-store root ``storage`` (``inputs/<content hash>/NAME``) and named by its mirror path,
    which is the same on every node."""
    def staged(settings: dict) -> dict:
        if "cross_audio" not in settings:
            return settings
        return {**settings, "cross_audio": tuple(str(storage.stage(p)) for p in settings["cross_audio"])}

    speakers = tuple(replace(sp, video=storage.stage(sp.video),
                             test_clips=sp.test_clips and storage.stage(sp.test_clips),
                             settings=staged(sp.settings)) for sp in dataset.speakers)
    return replace(dataset, speakers=speakers, settings=staged(dataset.settings))


def _scope(config: EvalConfig, out: Path, speaker: str) -> tuple:
    """The parts of the storage root a speaker's tasks read and write: its folder and its inputs."""
    found = [f"speakers/{speaker}"]
    for p in [config.video, config.test_clips, *(config.cross_audio or ())]:
        if p is not None and Path(p).is_relative_to(out):
            found.append(Path(p).relative_to(out).as_posix())
    return tuple(dict.fromkeys(found))
