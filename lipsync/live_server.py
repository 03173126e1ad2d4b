"""Live synthesis over a WebSocket: PCM audio in, encoded frames with timestamps out.

``LiveService`` serves ``LiveSession``s (``lipsync.synthesis.stream``) to WebSocket clients, at
most ``max_sessions`` at once, each in its own thread (the renderer's GL context stays on the
thread that made it), with the model's frames made as soon as their audio has arrived. It is
mounted by ``lipsync serve`` (``create_app``) and by the demo's app, on the path ``/live/ws``.

Protocol ``lipsync-live/1`` (one stream per connection):

client -> server
  1. text ``{"type": "start", "sample_rate": 48000, "format": "s16le"}``: audio format of the
     stream (``format``: ``s16le`` 16-bit or ``f32le`` 32-bit float little-endian mono samples;
     any rate from 8 to 192 kHz), optionally ``"quality"`` (JPEG quality 30-95, default 80),
     ``"mouth_motion"`` (how much the mouth moves relative to the speaker's own amount, 0.25-2,
     default 1) and, where the server asks for one (the demo), ``"ticket"``: the ticket its page
     was given for the visitor's model and target.
  2. binary messages: audio samples in that format, any number of samples each (up to 5 s).
     Or text ``{"type": "say", "text": "..."}`` (up to 1000 characters): the server speaks it with
     espeak-ng and streams that speech in real time, as if the client had sent it.
  3. text ``{"type": "end"}``: no more audio; the remaining frames follow, then ``end``.
server -> client
  - text ``{"type": "ready", "protocol", "session", "fps", "width", "height", "lookahead_ms",
    "audio_rate"}`` once the session is made (before it, no audio is read);
  - one binary message per frame: a 4-byte big-endian length n, n bytes of JSON
    ``{"type": "frame", "index", "time", "latency_ms", "image_bytes", "audio_bytes"}``, then the
    JPEG image and the frame's audio (16-bit PCM at ``audio_rate``, the 1/fps s it shows).
    ``latency_ms`` runs from the arrival of the audio chunk holding the frame's first sample to
    the frame being sent (it includes the model's lookahead). Frames are never dropped: a
    machine too slow for real time makes them late, and one ``warning`` says so;
  - text ``{"type": "warning", "message"}``;
  - text ``{"type": "end", "frames", "audio_s", "late_frames"}``, then the server closes;
  - text ``{"type": "error", "code", "message"}`` (``busy`` when all sessions are taken,
    ``bad_request`` for a malformed message, ``bad_audio``, ``timeout`` after ``idle_timeout_s``
    without a message, ``internal``), then the server closes. One client's error never affects
    another's session.

A client may send audio faster than real time (a file): the server reads at most ``max_ahead_s``
ahead of the stream's real-time clock and then waits (TCP back-pressure paces the client).
"""
from __future__ import annotations

import asyncio
import json
import struct
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .common import LipsyncError

PROTOCOL = "lipsync-live/1"
WS_PATH = "/live/ws"
AUDIO_OUT_RATE = 16000
FORMATS = {"s16le": ("<i2", 2), "f32le": ("<f4", 4)}
MAX_CHUNK_S = 5.0
MAX_SAY_CHARS = 1000
SAY_LEAD_S = 0.2  # spoken text is fed this far ahead of real time, 20 ms at a time
LATE_WARNING_S = 1.0  # a frame later than this past its audio warns once that the machine cannot keep up

# WebSocket close codes (RFC 6455 and IANA): normal, unsupported data, policy, server error, try later
CLOSE_NORMAL, CLOSE_DATA, CLOSE_POLICY, CLOSE_ERROR, CLOSE_BUSY = 1000, 1003, 1008, 1011, 1013


class ArrivalClock:
    """When each chunk of a stream's audio arrived, for the latency of its frames: from the arrival
    of the chunk that holds a frame's first sample to ``now`` (the frame being sent)."""

    def __init__(self, rate: float, fps: float):
        self.spf = rate / fps
        self.chunks: list[tuple[int, float]] = []  # (samples received before the chunk, its arrival time)
        self.received = 0

    def arrived(self, samples: int, at: float) -> None:
        self.chunks.append((self.received, at))
        self.received += samples

    def latency(self, index: int, now: float) -> float:
        first = int(index * self.spf)
        while len(self.chunks) > 1 and self.chunks[1][0] <= first:  # frames come in order
            self.chunks.pop(0)
        return now - self.chunks[0][1] if self.chunks and self.chunks[0][0] <= first else 0.0


class ProtocolError(LipsyncError):
    """A client broke the protocol; ``code`` is the error's ``code`` field."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass
class LiveOptions:
    max_sessions: int = 2        # live sessions at once; the next client is told the server is busy
    max_ahead_s: float = 1.0     # how far ahead of real time the server reads a client's audio
    idle_timeout_s: float = 30.0  # a client silent this long is closed
    renderer: str = "auto"


# (the client's start message) -> (loaded model, LiveTarget); may be slow (a target to prepare)
Resolver = Callable[[dict], tuple]


def to_pcm16(x: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1] as 16-bit PCM (scaled by 32768, so 16-bit input comes back exact)."""
    return np.clip(np.round(np.asarray(x) * 32768.0), -32768, 32767).astype("<i2")


def encode_frame(frame, quality: int) -> tuple[bytes, bytes]:
    """A ``LiveFrame``'s JPEG image and its audio as 16-bit PCM."""
    import cv2

    ok, jpeg = cv2.imencode(".jpg", np.ascontiguousarray(frame.image[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise LipsyncError("a frame could not be encoded as JPEG.")
    pcm = to_pcm16(frame.audio).tobytes()
    return jpeg.tobytes(), pcm


def pack_frame(header: dict, jpeg: bytes, pcm: bytes) -> bytes:
    """One frame message: 4-byte big-endian header length, JSON header, JPEG, 16-bit PCM."""
    head = json.dumps({**header, "image_bytes": len(jpeg), "audio_bytes": len(pcm)}).encode()
    return struct.pack(">I", len(head)) + head + jpeg + pcm


def unpack_frame(message: bytes) -> tuple[dict, bytes, bytes]:
    """(header, JPEG bytes, 16-bit PCM bytes) of a frame message (for clients)."""
    n = struct.unpack(">I", message[:4])[0]
    header = json.loads(message[4:4 + n])
    a = 4 + n + header["image_bytes"]
    return header, message[4 + n:a], message[a:a + header["audio_bytes"]]


def parse_start(text: str) -> dict:
    """The start message's settings, checked; ``ProtocolError`` if it is not one."""
    try:
        msg = json.loads(text)
    except ValueError:
        raise ProtocolError("bad_request", "the first message must be a JSON start message.") from None
    if not isinstance(msg, dict) or msg.get("type") != "start":
        raise ProtocolError("bad_request", 'the first message must be {"type": "start", "sample_rate": ..., "format": ...}.')
    rate, fmt, quality = msg.get("sample_rate"), msg.get("format", "s16le"), msg.get("quality", 80)
    if not isinstance(rate, int) or isinstance(rate, bool) or not 8000 <= rate <= 192000:
        raise ProtocolError("bad_request", "sample_rate must be a whole number of Hz from 8000 to 192000.")
    if fmt not in FORMATS:
        raise ProtocolError("bad_request", f"format must be one of {', '.join(FORMATS)}, not {fmt!r}.")
    if not isinstance(quality, int) or isinstance(quality, bool) or not 30 <= quality <= 95:
        raise ProtocolError("bad_request", "quality must be a whole number from 30 to 95.")
    return {"sample_rate": rate, "format": fmt, "quality": quality, **parse_session_settings(msg)}


def parse_session_settings(msg: dict) -> dict:
    """The settings a start message or a WebRTC offer share, checked: ``ticket`` (None when not
    given) and ``mouth_motion`` (1 when not given); ``ProtocolError`` for a bad one."""
    ticket = msg.get("ticket")
    if ticket is not None and (not isinstance(ticket, str) or len(ticket) > 200):
        raise ProtocolError("bad_request", "ticket must be the string the page was given.")
    motion = msg.get("mouth_motion", 1.0)
    if not isinstance(motion, (int, float)) or isinstance(motion, bool):
        raise ProtocolError("bad_request", "mouth_motion must be a number (1 = as the speaker).")
    from .synthesis.pipeline import check_mouth_motion

    try:
        motion = check_mouth_motion(float(motion))
    except LipsyncError as err:
        raise ProtocolError("bad_request", str(err)) from None
    return {"ticket": ticket, "mouth_motion": motion}


def parse_audio(data: bytes, fmt: str, rate: int) -> np.ndarray:
    dtype, width = FORMATS[fmt]
    if len(data) % width:
        raise ProtocolError("bad_audio", f"an audio message of {fmt} must hold whole {width}-byte samples, not {len(data)} bytes.")
    if len(data) > MAX_CHUNK_S * rate * width:
        raise ProtocolError("bad_audio", f"an audio message may hold at most {MAX_CHUNK_S:g} s of audio; send smaller chunks.")
    x = np.frombuffer(data, dtype)
    if fmt == "f32le":
        if not np.isfinite(x).all():
            raise ProtocolError("bad_audio", "the audio holds NaN or infinite samples.")
        return np.clip(x, -1.0, 1.0).astype(np.float32)
    return x.astype(np.int16)


class LiveService:
    """Live sessions for WebSocket clients (see the module docstring). ``resolve`` turns a start
    message into the model and the ``LiveTarget`` to use (it may raise ``LipsyncError``)."""

    def __init__(self, resolve: Resolver, options: LiveOptions | None = None):
        self.resolve = resolve
        self.options = options or LiveOptions()
        self._lock = threading.Lock()
        self.active: dict[str, dict] = {}  # session id -> its live statistics
        self.served = 0

    def claim(self) -> str | None:
        """A new session id, or None when every session is taken."""
        with self._lock:
            if len(self.active) >= self.options.max_sessions:
                return None
            sid = uuid.uuid4().hex[:12]
            self.active[sid] = {"started": time.time(), "frames": 0}
            self.served += 1
            return sid

    def release(self, sid: str) -> None:
        with self._lock:
            self.active.pop(sid, None)

    def status(self) -> dict:
        with self._lock:
            return {"protocol": PROTOCOL, "max_sessions": self.options.max_sessions, "active_sessions": len(self.active),
                    "sessions_served": self.served}

    async def handle(self, websocket) -> None:
        """The WebSocket endpoint (Starlette/FastAPI ``WebSocket``)."""
        from starlette.websockets import WebSocketDisconnect

        await websocket.accept()
        sid = self.claim()
        if sid is None:
            await _send_error(websocket, "busy", f"all {self.options.max_sessions} live sessions are taken; try again in a minute.",
                              CLOSE_BUSY)
            return
        worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"live-{sid}")
        loop = asyncio.get_running_loop()
        made: dict = {}

        def make_session(model, target, mouth_motion):
            made["session"] = model.live(target, renderer=self.options.renderer, mouth_motion=mouth_motion)
            return made["session"]

        def close_session():
            if "session" in made:
                made["session"].close()

        try:
            text = await self._receive(websocket, text=True)
            settings = parse_start(text)
            model, target = await loop.run_in_executor(worker, self.resolve, settings)
            session = await loop.run_in_executor(worker, make_session, model, target, settings["mouth_motion"])
            await websocket.send_text(json.dumps({
                "type": "ready", "protocol": PROTOCOL, "session": sid, "fps": session.fps,
                "width": target.size[0], "height": target.size[1], "lookahead_ms": round(1000 * session.lookahead_s, 1),
                "audio_rate": AUDIO_OUT_RATE}))
            await self._stream(websocket, session, settings, worker, sid)
        except ProtocolError as err:
            await _send_error(websocket, err.code, str(err), CLOSE_DATA if err.code == "bad_audio" else CLOSE_POLICY)
        except LipsyncError as err:
            await _send_error(websocket, "bad_request", str(err), CLOSE_POLICY)
        except (WebSocketDisconnect, ConnectionError):
            pass  # the client left: its session is freed below
        except Exception as err:  # noqa: BLE001 - one client's failure must not reach the others
            await _send_error(websocket, "internal", f"the live session failed ({type(err).__name__}: {err}).", CLOSE_ERROR)
        finally:
            # no await here: this also runs when the connection's task is cancelled. The session is
            # closed on its own thread, after whatever that thread is still doing for it.
            self.release(sid)
            worker.submit(close_session)
            worker.shutdown(wait=False)

    async def _receive(self, websocket, *, text: bool | None = None):
        """The next message's text or bytes; ``ProtocolError`` after ``idle_timeout_s`` of silence."""
        from starlette.websockets import WebSocketDisconnect

        try:
            msg = await asyncio.wait_for(websocket.receive(), self.options.idle_timeout_s)
        except asyncio.TimeoutError:
            raise ProtocolError("timeout", f"no message for {self.options.idle_timeout_s:g} s; the session is closed.") from None
        if msg["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(msg.get("code", 1000))
        data = msg.get("text") if msg.get("text") is not None else msg.get("bytes")
        if text is True and not isinstance(data, str):
            raise ProtocolError("bad_request", "the first message must be a JSON start message (text), not binary data.")
        return data

    async def _stream(self, websocket, session, settings: dict, worker, sid: str) -> None:
        loop = asyncio.get_running_loop()
        rate, fmt, quality = settings["sample_rate"], settings["format"], settings["quality"]
        clock = ArrivalClock(rate, session.fps)
        t0 = None
        state = {"frames": 0, "late": 0, "warned": False}

        async def send(frames) -> None:
            for f in frames:
                jpeg, pcm = await loop.run_in_executor(worker, encode_frame, f, quality)
                latency = clock.latency(f.index, time.perf_counter())
                await websocket.send_bytes(pack_frame({"type": "frame", "index": f.index, "time": round(f.time_s, 4),
                                                       "latency_ms": round(1000 * latency, 1)}, jpeg, pcm))
                state["frames"] += 1
                self.active.get(sid, {})["frames"] = state["frames"]
                warning = late_warning(state, latency, session.lookahead_s)
                if warning:
                    await websocket.send_text(json.dumps(warning))

        async def feed(samples: np.ndarray, lead_s: float) -> None:
            """One chunk of the stream's audio, read at most ``lead_s`` ahead of real time."""
            nonlocal t0
            if t0 is not None:
                ahead = clock.received / rate - (time.perf_counter() - t0) - lead_s
                if ahead > 0:
                    await asyncio.sleep(ahead)
            now = time.perf_counter()
            t0 = now if t0 is None else t0
            clock.arrived(len(samples), now)
            await send(await loop.run_in_executor(worker, session.push, samples, rate))

        while True:
            if t0 is not None:  # pace a client that sends faster than real time
                ahead = clock.received / rate - (time.perf_counter() - t0) - self.options.max_ahead_s
                if ahead > 0:
                    await asyncio.sleep(ahead)
            data = await self._receive(websocket)
            if isinstance(data, str):
                try:
                    msg = json.loads(data)
                except ValueError:
                    msg = None
                kind = msg.get("type") if isinstance(msg, dict) else None
                if kind == "say":
                    for piece in await loop.run_in_executor(worker, spoken, msg.get("text"), rate):
                        await feed(piece, SAY_LEAD_S)
                    continue
                if kind != "end":
                    raise ProtocolError("bad_request", 'after the start message, text messages must be {"type": "say", '
                                                       '"text": ...} or {"type": "end"}.')
                await send(await loop.run_in_executor(worker, session.finish))
                await websocket.send_text(json.dumps({"type": "end", "frames": state["frames"], "audio_s": round(clock.received / rate, 3),
                                                      "late_frames": state["late"]}))
                await websocket.close(CLOSE_NORMAL)
                return
            samples = parse_audio(data, fmt, rate)
            if len(samples):
                await feed(samples, float("inf"))


def late_warning(state: dict, latency: float, lookahead_s: float) -> dict | None:
    """Counts a frame later than ``LATE_WARNING_S`` past the model's lookahead in ``state``; the
    warning message for the first."""
    if latency <= lookahead_s + LATE_WARNING_S:
        return None
    state["late"] += 1
    if state["warned"]:
        return None
    state["warned"] = True
    return {"type": "warning", "message": f"this machine is too slow to keep up: frames arrive {latency:.1f} s after "
                                          "their audio (none is dropped)."}


def spoken(text, rate: int) -> list[np.ndarray]:
    """``text`` spoken by espeak-ng, at ``rate``, in 20 ms pieces (16-bit samples)."""
    import soxr

    from .synthesis.speech import speech_stream

    if not isinstance(text, str) or not text.strip() or len(text) > MAX_SAY_CHARS:
        raise ProtocolError("bad_request", f"say needs text of 1 to {MAX_SAY_CHARS} characters.")
    parts = [(x, r) for x, r in speech_stream(text, max_seconds=60)]
    if not parts:
        return []
    x = np.concatenate([p for p, _ in parts]).astype(np.float32) / 32768.0
    if parts[0][1] != rate:
        x = soxr.resample(x, parts[0][1], rate)
    pcm = to_pcm16(x)
    step = max(1, rate // 50)
    return [pcm[i:i + step] for i in range(0, len(pcm), step)]


async def _send_error(websocket, code: str, message: str, close_code: int) -> None:
    try:
        await websocket.send_text(json.dumps({"type": "error", "code": code, "message": message}))
        await websocket.close(close_code)
    except Exception:  # noqa: BLE001 - the client may be gone already
        pass


def single_target(model, target: str | None, *, progress=None) -> Resolver:
    """A resolver that serves one model into one target, made ready now (``lipsync serve``)."""
    from .synthesis import LiveTarget

    live = LiveTarget(model, target, progress=progress)

    def resolve(settings: dict):
        return model, live

    resolve.live_target = live
    return resolve


def live_panel_html(*, ticket: str | None = None, ticket_required: bool = False, note: str = "") -> str:
    """The live panel's markup (``live.js`` drives it): buttons, the text box, the picture, the
    measured latency and frame counts, and messages. ``ticket``: the demo's ticket for this page."""
    import html

    data = f' data-ticket="{html.escape(ticket)}"' if ticket else ""
    data += ' data-ticket-required="1"' if ticket_required else ""
    return f"""<div id="live-panel" data-ws="{WS_PATH}" data-capture="/live/capture.js"{data}>
<p id="live-note">{html.escape(note)}</p>
<div style="display:flex;gap:0.5em;flex-wrap:wrap;align-items:center">
<button id="live-mic" type="button">Start microphone</button>
<input id="live-text" type="text" maxlength="{MAX_SAY_CHARS}" placeholder="or type a sentence" style="flex:1;min-width:12em">
<button id="live-say" type="button">Speak it</button>
<button id="live-stop" type="button" disabled>Stop</button>
<label>mouth motion <input id="live-motion" type="number" min="0.5" max="1.5" step="0.05" value="1" style="width:4.5em"
 title="how much the mouth moves, relative to the speaker's own amount (1 = as the speaker)"></label>
<label>over <select id="live-transport"><option value="ws">WebSocket</option><option value="webrtc">WebRTC</option></select></label>
</div>
<p id="live-message" data-kind="info" role="status"></p>
<canvas id="live-canvas" width="512" height="512" style="max-width:100%;background:#222"></canvas>
<video id="live-video" autoplay playsinline style="display:none;max-width:100%;background:#222"></video>
<p id="live-stats" data-frames="0"></p>
</div>"""


LIVE_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>lipsync live</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<script src="/live/live.js" defer></script></head>
<body style="font-family:sans-serif;max-width:60em;margin:1em auto">
<h1>lipsync live</h1>
{panel}
</body></html>"""


def asset_routes() -> list:
    """``/live/live.js`` and ``/live/capture.js``: the page's scripts (served from this origin, so
    a strict Content-Security-Policy allows them)."""
    from importlib.resources import files

    from starlette.responses import Response
    from starlette.routing import Route

    assets = files("lipsync") / "assets"
    scripts = {"/live/live.js": (assets / "live.js").read_text(), "/live/capture.js": (assets / "live_capture.js").read_text()}
    return [Route(path, (lambda body: lambda request: Response(body, media_type="text/javascript"))(body))
            for path, body in scripts.items()]


def webrtc_routes(service: LiveService) -> list:
    """``POST /live/offer`` (``lipsync.live_webrtc``) for the service, when aiortc is installed."""
    import importlib.util

    if importlib.util.find_spec("aiortc") is None:
        return []
    from .live_webrtc import WebRTCLive

    return WebRTCLive(service).routes()


def create_app(service: LiveService, *, note: str = ""):
    """A Starlette app: the WebSocket endpoint at ``WS_PATH``, the browser page at ``/live``, its
    scripts, and the service's status at ``/live/status``."""
    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse
    from starlette.routing import Route, WebSocketRoute

    page = LIVE_PAGE.replace("{panel}", live_panel_html(note=note))
    routes = [WebSocketRoute(WS_PATH, service.handle), *webrtc_routes(service),
              Route("/live/status", lambda request: JSONResponse(service.status())),
              Route("/live", lambda request: HTMLResponse(page)),
              Route("/", lambda request: RedirectResponse("/live")),
              *asset_routes()]
    return Starlette(routes=routes)
