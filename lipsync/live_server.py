"""Live synthesis over a WebSocket: PCM audio in, encoded frames with timestamps out.

``LiveService`` serves ``LiveSession``s (``lipsync.synthesis.stream``) to WebSocket clients, at
most ``max_sessions`` at once, each in its own thread (the renderer's GL context stays on the
thread that made it), with the model's frames made as soon as their audio has arrived. It is
mounted by ``lipsync serve`` (``create_app``) and by the demo's app, on the path ``/live/ws``.

Protocol ``lipsync-live/1`` (one stream per connection):

client -> server
  1. text ``{"type": "start", "sample_rate": 48000, "format": "s16le"}``: audio format of the
     stream (``format``: ``s16le`` 16-bit or ``f32le`` 32-bit float little-endian mono samples;
     any rate from 8 to 192 kHz), optionally ``"quality"`` (JPEG quality 30-95, default 80) and,
     where the server offers several, ``"model"`` and ``"target"`` (names from its listing).
  2. binary messages: audio samples in that format, any number of samples each (up to 5 s).
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
LATE_WARNING_S = 1.0  # a frame later than this past its audio warns once that the machine cannot keep up

# WebSocket close codes (RFC 6455 and IANA): normal, unsupported data, policy, server error, try later
CLOSE_NORMAL, CLOSE_DATA, CLOSE_POLICY, CLOSE_ERROR, CLOSE_BUSY = 1000, 1003, 1008, 1011, 1013


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


def encode_frame(frame, quality: int) -> tuple[bytes, bytes]:
    """A ``LiveFrame``'s JPEG image and its audio as 16-bit PCM."""
    import cv2

    ok, jpeg = cv2.imencode(".jpg", np.ascontiguousarray(frame.image[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise LipsyncError("a frame could not be encoded as JPEG.")
    pcm = np.clip(np.round(frame.audio * 32768.0), -32768, 32767).astype("<i2").tobytes()  # 16-bit input comes back exact
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
    for key in ("model", "target"):
        if key in msg and not isinstance(msg[key], str):
            raise ProtocolError("bad_request", f"{key} must be a name (a string).")
    return {"sample_rate": rate, "format": fmt, "quality": quality, "model": msg.get("model"), "target": msg.get("target")}


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

    def _claim(self) -> str | None:
        with self._lock:
            if len(self.active) >= self.options.max_sessions:
                return None
            sid = uuid.uuid4().hex[:12]
            self.active[sid] = {"started": time.time(), "frames": 0}
            self.served += 1
            return sid

    def _release(self, sid: str) -> None:
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
        sid = self._claim()
        if sid is None:
            await _send_error(websocket, "busy", f"all {self.options.max_sessions} live sessions are taken; try again in a minute.",
                              CLOSE_BUSY)
            return
        worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"live-{sid}")
        loop = asyncio.get_running_loop()
        made: dict = {}

        def make_session(model, target):
            made["session"] = model.live(target, renderer=self.options.renderer)
            return made["session"]

        def close_session():
            if "session" in made:
                made["session"].close()

        try:
            text = await self._receive(websocket, text=True)
            settings = parse_start(text)
            model, target = await loop.run_in_executor(worker, self.resolve, settings)
            session = await loop.run_in_executor(worker, make_session, model, target)
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
            self._release(sid)
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
        spf = rate / session.fps
        arrivals: list[tuple[int, float]] = []  # (samples received before the chunk, its arrival time)
        received = 0
        t0 = None
        state = {"frames": 0, "late": 0, "warned": False}

        async def send(frames) -> None:
            for f in frames:
                jpeg, pcm = await loop.run_in_executor(worker, encode_frame, f, quality)
                first = int(f.index * spf)
                while len(arrivals) > 1 and arrivals[1][0] <= first:
                    arrivals.pop(0)
                arrived = arrivals[0][1] if arrivals and arrivals[0][0] <= first else time.perf_counter()
                now = time.perf_counter()
                latency = now - arrived
                await websocket.send_bytes(pack_frame({"type": "frame", "index": f.index, "time": round(f.time_s, 4),
                                                       "latency_ms": round(1000 * latency, 1)}, jpeg, pcm))
                state["frames"] += 1
                self.active.get(sid, {})["frames"] = state["frames"]
                if latency > session.lookahead_s + LATE_WARNING_S:
                    state["late"] += 1
                    if not state["warned"]:
                        state["warned"] = True
                        await websocket.send_text(json.dumps({
                            "type": "warning", "message": f"this machine is too slow to keep up: frames arrive {latency:.1f} s "
                                                          "after their audio (none is dropped)."}))

        while True:
            if t0 is not None:  # pace a client that sends faster than real time
                ahead = received / rate - (time.perf_counter() - t0) - self.options.max_ahead_s
                if ahead > 0:
                    await asyncio.sleep(ahead)
            data = await self._receive(websocket)
            now = time.perf_counter()
            if isinstance(data, str):
                try:
                    msg = json.loads(data)
                except ValueError:
                    msg = None
                if not isinstance(msg, dict) or msg.get("type") != "end":
                    raise ProtocolError("bad_request", 'after the start message, text messages must be {"type": "end"}.')
                await send(await loop.run_in_executor(worker, session.finish))
                await websocket.send_text(json.dumps({"type": "end", "frames": state["frames"], "audio_s": round(received / rate, 3),
                                                      "late_frames": state["late"]}))
                await websocket.close(CLOSE_NORMAL)
                return
            samples = parse_audio(data, fmt, rate)
            if not len(samples):
                continue
            t0 = now if t0 is None else t0
            arrivals.append((received, now))
            received += len(samples)
            await send(await loop.run_in_executor(worker, session.push, samples, rate))


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


def create_app(service: LiveService):
    """A Starlette app with the WebSocket endpoint at ``WS_PATH``, the browser page at ``/live`` and
    the service's status at ``/live/status``."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, RedirectResponse
    from starlette.routing import Route, WebSocketRoute

    routes = [WebSocketRoute(WS_PATH, service.handle),
              Route("/live/status", lambda request: JSONResponse(service.status())),
              Route("/", lambda request: RedirectResponse("/live"))]
    page = live_page_route()
    if page is not None:
        routes.append(page)
    return Starlette(routes=routes)


def live_page_route():
    """``/live``: the browser page that streams the microphone to ``WS_PATH`` (if it is installed)."""
    from importlib.resources import files

    from starlette.responses import HTMLResponse
    from starlette.routing import Route

    page = files("lipsync") / "assets" / "live.html"
    if not page.is_file():
        return None
    html = page.read_text()
    return Route("/live", lambda request: HTMLResponse(html))
