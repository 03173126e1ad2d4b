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

    def prepare(self, model_folder: Path, target: Path | None, progress=None) -> str:
        """Load the model and prepare the target (once), and return a new ticket for them."""
        from lipsync import load_model
        from lipsync.synthesis import LiveTarget

        key = (str(model_folder), str(target) if target else "")
        with self._lock:
            ready = self._ready.get(key)
        if ready is None:
            model = load_model(model_folder)
            ready = (model, LiveTarget(model, target, progress=progress))
            with self._lock:
                self._ready[key] = ready
                while len(self._ready) > KEEP_TARGETS:
                    _, (_, old) = self._ready.popitem(last=False)
                    old.close()  # sessions still using it keep the frames they hold
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
def get_ready(cfg: DemoConfig, session: dict, preset: str | None, progress=gr.Progress()) -> str:
    """The live panel for the selected speaker's model, with a fresh ticket."""
    from lipsync.live_server import live_panel_html

    from .example_model import MODEL_DIR
    from .handlers import resolve_model, stage_progress

    speaker, folder = resolve_model(cfg, session, preset)
    # the shipped model's training video was not shipped: it speaks over the bundled clip
    target = speaker.video if Path(folder) == MODEL_DIR else None
    t0 = time.perf_counter()
    ticket = DESK.prepare(Path(folder), target, progress=stage_progress(progress, "prepare the target: "))
    note = (f"{speaker.name}, model {Path(folder).name}, ready in {time.perf_counter() - t0:.1f} s. Start the microphone "
            "and speak, or type a sentence. Frames are never dropped: the counts below show when this machine falls behind.")
    return live_panel_html(ticket=ticket, ticket_required=True, note=note)
