"""The Live tab: the visitor's model streamed live in their browser (``lipsync.live_server``).

**Get ready** loads the selected speaker's model and prepares its target (the training video; the
bundled clip for the shipped model) once, then gives the page a ticket: a random string naming
that model and target, valid for ``TICKET_HOURS``. The page's script (``/live/live.js``) opens
the WebSocket at ``/live/ws`` with it, so a visitor can only stream a model of their own session.
Loaded models and prepared targets are shared by the sessions that use them (the last few kept).
"""
from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from pathlib import Path

import gradio as gr

from lipsync.common import LipsyncError

from .config import DemoConfig
from .errors import user_errors

TICKET_HOURS = 12
KEEP_TARGETS = 3  # prepared live targets kept in memory (each holds its target's frames)


class LiveDesk:
    """Tickets, loaded models and prepared targets of the demo's live sessions (one per process)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._tickets: dict[str, tuple[tuple[str, str], float]] = {}
        self._ready: OrderedDict[tuple[str, str], tuple] = OrderedDict()  # (model, target) -> (model, LiveTarget)
        self._models: dict[str, object] = {}  # model folder -> loaded model, shared by its targets

    def prepare(self, model_folder: Path, target: Path | None, progress=None) -> str:
        """Load the model and prepare the target (once), and return a new ticket for them."""
        from lipsync import load_model
        from lipsync.synthesis import LiveTarget

        key = (str(model_folder), str(target) if target else "")
        with self._lock:
            ready = self._ready.get(key)
        if ready is None:
            with self._lock:
                model = self._models.get(key[0])
            if model is None:
                model = load_model(model_folder)
            ready = (model, LiveTarget(model, target, progress=progress))
            with self._lock:
                self._ready[key] = ready
                self._models[key[0]] = model
                while len(self._ready) > KEEP_TARGETS:
                    _, (_, old) = self._ready.popitem(last=False)
                    old.close()  # sessions still using it keep the frames they hold
                in_use = {k[0] for k in self._ready}
                self._models = {k: m for k, m in self._models.items() if k in in_use}
        ticket = secrets.token_urlsafe(24)
        with self._lock:
            self._ready.move_to_end(key)
            now = time.time()
            self._tickets = {t: v for t, v in self._tickets.items() if v[1] > now}
            self._tickets[ticket] = (key, now + TICKET_HOURS * 3600)
        return ticket

    def resolve(self, settings: dict):
        """``LiveService``'s resolver: the model and target of the start message's ticket."""
        ticket = settings.get("ticket")
        with self._lock:
            entry = self._tickets.get(ticket) if isinstance(ticket, str) else None
            ready = self._ready.get(entry[0]) if entry and entry[1] > time.time() else None
        if ready is None:
            raise LipsyncError("this page's live ticket is unknown or has expired; press Get ready again.")
        return ready


DESK = LiveDesk()


def live_routes(cfg: DemoConfig) -> list:
    """The live endpoints mounted on the demo's app (same host and port as the page)."""
    from starlette.routing import WebSocketRoute

    from lipsync.live_server import WS_PATH, LiveOptions, LiveService, asset_routes, webrtc_routes

    service = LiveService(DESK.resolve, LiveOptions(max_sessions=cfg.limits.live_sessions))
    return [WebSocketRoute(WS_PATH, service.handle), *webrtc_routes(service), *asset_routes()]


def idle_panel() -> str:
    from lipsync.live_server import live_panel_html

    return live_panel_html(ticket_required=True, note="Press Get ready to load the selected speaker's model.")


@user_errors
def get_ready(cfg: DemoConfig, session: dict, preset: str | None, target_kind: str = "training", target: str | None = None,
              progress=gr.Progress()) -> str:
    """The live panel for the selected speaker's model into the chosen target (the training video,
    or an uploaded video or photo of the same person), with a fresh ticket."""
    from lipsync.live_server import live_panel_html

    from . import jobs
    from .checks import check_video, shown_name
    from .example_model import MODEL_DIR
    from .handlers import resolve_model, stage_progress

    speaker, folder = resolve_model(cfg, session, preset)
    # the shipped model's training video was not shipped: it speaks over the bundled clip
    target_path, shown = (speaker.video if Path(folder) == MODEL_DIR else None), "its training video"
    if target_kind == "upload":
        shown = shown_name(target, "target video or photo")
        target_path, _, _ = check_video(target, shown, cfg.limits, max_seconds=cfg.limits.target_s,
                                        work=jobs.session_dir(cfg, session) / "uploads", allow_image=True)
    t0 = time.perf_counter()
    try:
        ticket = DESK.prepare(Path(folder), target_path, progress=stage_progress(progress, "prepare the target: "))
    except LipsyncError as err:
        msg = str(err).replace(str(target_path), shown) if target_path is not None else str(err)
        raise LipsyncError(msg) from None
    note = (f"{speaker.name}, model {Path(folder).name}, into {shown}: ready in {time.perf_counter() - t0:.1f} s. Start "
            "the microphone and speak, or type a sentence. Frames are never dropped: the counts below show when this "
            "machine falls behind.")
    return live_panel_html(ticket=ticket, ticket_required=True, note=note)
