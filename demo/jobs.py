"""Where the demo keeps things, and the training jobs that outlive one page request.

Layout under ``DemoConfig.root`` (an ignored project folder, ``.cache/demo`` by default)::

    example/grid_s1-<key>/          the bundled example, shared by every visitor (keyed by content)
        prepared/  models/<preset>-<key>/  outputs/<key>/
    sessions/<key>/                 one visitor: key = a hash of the random 128-bit token in the
                                    visitor's HttpOnly cookie (demo.web), so links never show it
        speakers/sp-<digest>/       one uploaded speaker: video, meta.json, prepared/, models/
        runs/<n>/                   synthesized videos and comparisons

Only the session's own token leads to its folder, so one visitor never sees another's uploads.
Every stored upload gets a name the server chooses (``video.mp4``, ``video.mkv``...) from what
ffprobe finds in the file, never the name or extension it was uploaded with.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
import shutil
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from lipsync.common import LipsyncError
from lipsync.files import atomic_write_text

from .config import EXAMPLE_NAME, EXAMPLE_STEPS, EXAMPLE_VIDEO, DemoConfig

log = logging.getLogger("demo")
EXAMPLE_ID = "example"
TOKEN_RE = re.compile(r"^[0-9a-f]{32}$")
SPEAKER_RE = re.compile(r"^sp-[0-9a-f]{12}$")
SHIPPED = "shipped"  # the model shipped with the demo (demo.example_model), for the example speaker only
PRESET_LABELS = {SHIPPED: "shipped (trained on 3 min of GRID s1)", "example": "example (quick network, 600 steps)",
                 "tiny": "tiny (smoke test)", "quick": "quick", "full": "full"}
SESSION_MAX_AGE_DAYS = 30


# ---------------------------------------------------------------------------------------------
# sessions

def session_key(token: str) -> str:
    """The folder name of the session whose secret token is ``token``: a hash of it, so the file
    links the page shows (which name the folder) never reveal the token itself."""
    return hashlib.sha256(f"lipsync-demo-session:{token}".encode()).hexdigest()[:32]


def new_session(cfg: DemoConfig, token: str | None = None) -> dict:
    """The session for ``token`` (the visitor's cookie, see ``demo.web``) or, without a valid
    token, a new one. A session is the plain dict kept server-side in ``gr.State``:
    ``{"token": ..., "speaker": selected speaker id or None}``."""
    if isinstance(token, dict):  # a session dict made for an event that came before the page load
        token = token.get("token")
    if not (isinstance(token, str) and TOKEN_RE.match(token)):
        token = secrets.token_hex(16)
    (cfg.root / "sessions" / session_key(token) / "speakers").mkdir(parents=True, exist_ok=True)
    return {"token": token, "speaker": None}


def session_dir(cfg: DemoConfig, session: dict | None) -> Path:
    token = (session or {}).get("token")
    if not (isinstance(token, str) and TOKEN_RE.match(token)):
        raise LipsyncError("this page has no session yet; reload the page.")
    folder = cfg.root / "sessions" / session_key(token)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def new_run_dir(cfg: DemoConfig, session: dict, kind: str) -> Path:
    """A fresh folder for one synthesis or comparison of this session."""
    folder = session_dir(cfg, session) / "runs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{kind}-{secrets.token_hex(3)}"
    folder.mkdir(parents=True)
    return folder


def prune_sessions(cfg: DemoConfig, max_age_days: float = SESSION_MAX_AGE_DAYS) -> int:
    """Remove sessions untouched for ``max_age_days``; returns how many."""
    root = cfg.root / "sessions"
    if not root.is_dir():
        return 0
    cutoff, removed = time.time() - max_age_days * 86400, 0
    for folder in root.iterdir():
        if TOKEN_RE.match(folder.name) and folder.stat().st_mtime < cutoff:
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    return removed


# ---------------------------------------------------------------------------------------------
# speakers

@dataclass(frozen=True)
class Speaker:
    """One person: their video and everything made from it. ``shared``: the bundled example."""
    id: str
    name: str
    folder: Path
    video: Path
    shared: bool = False

    @property
    def prepared(self) -> Path:
        return self.folder / "prepared"

    def is_prepared(self) -> bool:
        return (self.prepared / "manifest.json").is_file()


def example_speaker(cfg: DemoConfig) -> Speaker:
    from lipsync.files import content_key
    from lipsync import __version__
    from lipsync.preprocessing import PreprocessOptions

    key = content_key(EXAMPLE_VIDEO, repr(PreprocessOptions()), __version__)
    return Speaker(EXAMPLE_ID, EXAMPLE_NAME, cfg.root / "example" / f"grid_s1-{key}", EXAMPLE_VIDEO, shared=True)


def _speakers_root(cfg: DemoConfig, session: dict) -> Path:
    return session_dir(cfg, session) / "speakers"


def get_speaker(cfg: DemoConfig, session: dict, speaker_id: str | None) -> Speaker:
    if not speaker_id:
        raise LipsyncError("no speaker is selected; run the example or upload a video in 'Your speaker' first.")
    if speaker_id == EXAMPLE_ID:
        return example_speaker(cfg)
    folder = _speakers_root(cfg, session) / speaker_id
    if not SPEAKER_RE.match(speaker_id) or not (folder / "meta.json").is_file():
        raise LipsyncError("that speaker is not in this session any more; upload the video again.")
    meta = json.loads((folder / "meta.json").read_text())
    return Speaker(speaker_id, meta["name"], folder, folder / meta["video"])


def list_speakers(cfg: DemoConfig, session: dict) -> list[tuple[str, str]]:
    """(label, id) of the example and of this session's speakers, oldest first."""
    out = [(EXAMPLE_NAME, EXAMPLE_ID)]
    root = _speakers_root(cfg, session)
    metas = []
    for folder in root.iterdir() if root.is_dir() else []:
        if SPEAKER_RE.match(folder.name) and (folder / "meta.json").is_file():
            metas.append((json.loads((folder / "meta.json").read_text()), folder.name))
    for meta, sid in sorted(metas, key=lambda m: m[0].get("created", 0)):
        out.append((meta["name"], sid))
    return out


def add_speaker(cfg: DemoConfig, session: dict, video: Path, name: str, *, uploaded_as: str) -> Speaker:
    """Copy an uploaded (checked) video into the session as a speaker (the same video again: the
    same speaker). ``name``: checked by ``checks.check_name``; ``uploaded_as``: the shown file name."""
    from lipsync.files import file_digest

    sid = f"sp-{file_digest(video)[:12]}"
    folder = _speakers_root(cfg, session) / sid
    if (folder / "meta.json").is_file():
        meta = json.loads((folder / "meta.json").read_text())
        if name and name != meta["name"]:
            meta["name"] = name
            atomic_write_text(folder / "meta.json", json.dumps(meta, indent=2))
        return get_speaker(cfg, session, sid)
    from .checks import store_video

    target = store_video(video, folder, "video")  # named by the server from the probed container
    meta = {"name": name or Path(uploaded_as).stem or sid, "video": target.name, "uploaded_as": uploaded_as,
            "created": time.time()}
    atomic_write_text(folder / "meta.json", json.dumps(meta, indent=2))
    return get_speaker(cfg, session, sid)


# ---------------------------------------------------------------------------------------------
# models

def train_options(preset: str):
    """lipsync ``TrainOptions`` for a demo preset ("example" is the quick network, fewer steps)."""
    from lipsync.training import PRESETS

    if preset == "example":
        return replace(PRESETS["quick"], steps=EXAMPLE_STEPS, val_every=100)
    if preset not in PRESETS:
        raise LipsyncError(f"unknown training preset {preset!r}; choose one of example, {', '.join(PRESETS)}.")
    return PRESETS[preset]


def model_dir(speaker: Speaker, preset: str) -> Path:
    from lipsync.files import content_key

    if preset == SHIPPED:
        from .example_model import MODEL_DIR

        if speaker.id != EXAMPLE_ID:
            raise LipsyncError("the shipped model is the example speaker's; pick a preset to train this speaker.")
        return MODEL_DIR
    return speaker.folder / "models" / f"{preset}-{content_key(asdict(train_options(preset)))[:10]}"


def model_state(folder: Path) -> str:
    """"finished", "stopped" (a checkpoint to resume from) or "none" (``lipsync.model_io.ModelFolder``)."""
    from lipsync.model_io import ModelFolder

    return ModelFolder(folder).state()


def finished_models(speaker: Speaker) -> list[tuple[str, Path]]:
    """(preset, folder) of the speaker's finished models, best first."""
    from .example_model import shipped_model

    out = [(SHIPPED, shipped_model())] if speaker.id == EXAMPLE_ID and shipped_model() else []
    for preset in ("full", "quick", "example", "tiny"):
        folder = model_dir(speaker, preset)
        if model_state(folder) == "finished":
            out.append((preset, folder))
    return out


# ---------------------------------------------------------------------------------------------
# training jobs: a thread per model folder, so that a page reload finds the run still going

class TrainJob:
    """``lipsync.train`` in a background thread with its progress, for the page to poll.

    Cancelling sets ``cancel``, which ``train`` polls through ``should_stop`` after every step: it
    writes a checkpoint and stops, so a later run resumes exactly where this one stopped.
    """

    def __init__(self, prepared: Path, out: Path, preset: str, device: str = "auto"):
        self.prepared, self.out, self.preset, self.device = prepared, out, preset, device
        self.options = train_options(preset)
        self.total = self.options.steps
        self.step = 0
        self.first_step: int | None = None
        self.t_first = 0.0
        self.losses: list[tuple[int, float, float]] = []  # (step, geometry, texture) of every step
        self.started = time.time()
        self.cancel = threading.Event()
        self.error: str | None = None
        self.cancelled = False
        self.done = threading.Event()
        self.resumed = model_state(out) == "stopped"
        self.thread = threading.Thread(target=self._run, name=f"train-{out.name}", daemon=True)

    def _progress(self, step: int, total: int, losses: dict) -> None:
        now = time.time()
        if self.first_step is None:
            self.first_step, self.t_first = step, now
        self.step, self.total = step, total
        self.losses.append((step, float(losses.get("geo", float("nan"))), float(losses.get("tex", float("nan")))))

    def _run(self) -> None:
        from lipsync.training import TrainingStopped, train

        try:
            train(self.prepared, self.out, preset="quick" if self.preset == "example" else self.preset,
                  options=self.options, device=self.device, resume=self.resumed, progress=self._progress,
                  should_stop=self.cancel.is_set)
        except TrainingStopped:
            self.cancelled = True
        except LipsyncError as err:
            self.error = str(err)
        except Exception as err:  # noqa: BLE001 - reported on the page, the traceback in the log
            log.exception("training %s failed", self.out)
            self.error = f"training failed unexpectedly ({type(err).__name__}: {err})."
        finally:
            self.done.set()

    def seconds_left(self) -> float | None:
        """Estimated from the steps this run has made so far."""
        if self.first_step is None or self.step <= self.first_step:
            return None
        rate = (time.time() - self.t_first) / (self.step - self.first_step)
        return rate * (self.total - self.step)


_JOBS: dict[str, TrainJob] = {}
_JOBS_LOCK = threading.Lock()


def training_job(out: Path) -> TrainJob | None:
    """The job training into ``out`` (running or finished in this server's lifetime), if any."""
    with _JOBS_LOCK:
        return _JOBS.get(str(out))


def start_training(prepared: Path, out: Path, preset: str, device: str = "auto") -> TrainJob:
    """Start (or resume from its checkpoint) training into ``out``; a run already going is returned."""
    with _JOBS_LOCK:
        job = _JOBS.get(str(out))
        if job is not None and not job.done.is_set():
            return job
        job = _JOBS[str(out)] = TrainJob(prepared, out, preset, device)
        job.thread.start()
        return job
