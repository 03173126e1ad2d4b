"""Live synthesis over WebRTC (aiortc): the browser's microphone as an audio track in, the face as
a video track (and its sound as an audio track) out, for browsers.

``POST /live/offer`` with JSON ``{"sdp", "type": "offer", "ticket"?, "mouth_motion"?}`` (the
browser's offer, all ICE candidates gathered; the optional settings as in the WebSocket's start
message) answers ``{"sdp", "type": "answer", "session", "fps", "width", "height",
"lookahead_ms"}``, or an error ``{"code", "message"}`` (HTTP 503 ``busy``, 400 ``bad_request``). The session counts against the same limit as the WebSocket ones
(``LiveService``). The browser's data channel (any label) carries, from the server, one JSON
message per frame ``{"type": "frame", "index", "time", "latency_ms"}`` (from the arrival of the
audio holding the frame's first sample to the frame handed to the video track), ``warning`` and
``end`` messages as on the WebSocket; and from the browser ``{"type": "say", "text"}`` (the
server speaks the text into the stream, for a connection without a microphone track) and
``{"type": "end"}``. Frames carry RTP timestamps of their place in the stream, so the browser
plays picture and sound together; none is dropped.

The session ends when the microphone track ends, on ``end``, when the connection fails or closes,
or after ``idle_timeout_s`` without audio.
"""
from __future__ import annotations

import asyncio
import fractions
import json
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .common import LipsyncError
from .live_server import (AUDIO_OUT_RATE, ArrivalClock, LiveService, ProtocolError, late_warning, parse_session_settings,
                          spoken, to_pcm16)

MAX_OFFER_BYTES = 64 * 1024
VIDEO_CLOCK = 90000


def _frame_tracks():
    """The two outgoing tracks' classes (aiortc is imported only when WebRTC is used)."""
    from aiortc import MediaStreamTrack

    class QueueTrack(MediaStreamTrack):
        """A track whose frames are put in by the session; ``None`` ends it."""

        def __init__(self, kind: str):
            super().__init__()
            self.kind = kind
            self.queue: asyncio.Queue = asyncio.Queue()

        async def recv(self):
            from aiortc.mediastreams import MediaStreamError

            frame = await self.queue.get()
            if frame is None:
                self.stop()
                raise MediaStreamError
            return frame

    return QueueTrack


def audio_samples(frame) -> tuple[np.ndarray, int]:
    """Mono float32 samples and the rate of an ``av.AudioFrame`` (packed or planar, any channels)."""
    raw = frame.to_ndarray()
    channels = len(frame.layout.channels)
    x = raw.reshape(channels, -1).mean(axis=0) if frame.format.is_planar else raw.reshape(-1, channels).mean(axis=1)
    if np.issubdtype(raw.dtype, np.integer):
        x = x / float(np.iinfo(raw.dtype).max + 1)
    return np.asarray(x, np.float32), int(frame.sample_rate)


class WebRTCLive:
    """``POST /live/offer`` for a ``LiveService`` (its resolver, options and session limit)."""

    def __init__(self, service: LiveService):
        self.service = service
        self.peers: set = set()

    async def offer(self, request):
        from starlette.responses import JSONResponse

        body = await request.body()
        try:
            if len(body) > MAX_OFFER_BYTES:
                raise ProtocolError("bad_request", f"the offer is larger than {MAX_OFFER_BYTES // 1024} KB.")
            try:
                msg = json.loads(body)
            except ValueError:
                raise ProtocolError("bad_request", "the offer must be JSON: {\"sdp\": ..., \"type\": \"offer\"}.") from None
            if not isinstance(msg, dict) or msg.get("type") != "offer" or not isinstance(msg.get("sdp"), str):
                raise ProtocolError("bad_request", "the offer must be JSON: {\"sdp\": ..., \"type\": \"offer\"}.")
            settings = parse_session_settings(msg)
        except ProtocolError as err:
            return JSONResponse({"code": err.code, "message": str(err)}, status_code=400)
        sid = self.service.claim()
        if sid is None:
            return JSONResponse({"code": "busy", "message": f"all {self.service.options.max_sessions} live sessions are "
                                                            "taken; try again in a minute."}, status_code=503)
        peer = Peer(self, sid)
        try:
            answer = await peer.start(msg["sdp"], settings)
        except LipsyncError as err:
            await peer.close()
            return JSONResponse({"code": getattr(err, "code", "bad_request"), "message": str(err)}, status_code=400)
        except Exception as err:  # noqa: BLE001 - one client's failure must not reach the others
            await peer.close()
            return JSONResponse({"code": "internal", "message": f"the live session failed ({type(err).__name__}: {err})."},
                                status_code=500)
        self.peers.add(peer)
        return JSONResponse(answer)

    def routes(self) -> list:
        from starlette.routing import Route

        return [Route("/live/offer", self.offer, methods=["POST"])]


class Peer:
    """One browser's WebRTC connection and its live session."""

    def __init__(self, owner: WebRTCLive, sid: str):
        self.owner, self.sid = owner, sid
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"live-{sid}")
        self.made: dict = {}
        self.pc = None
        self.channel = None
        self.closed = False
        self.tasks: list[asyncio.Task] = []
        self.state = {"frames": 0, "late": 0, "warned": False}
        self.last_audio = time.perf_counter()

    async def start(self, sdp: str, settings: dict) -> dict:
        from aiortc import RTCPeerConnection, RTCSessionDescription

        loop = asyncio.get_running_loop()
        service = self.owner.service
        model, target = await loop.run_in_executor(self.worker, service.resolve, settings)

        def make():
            self.made["session"] = model.live(target, renderer=service.options.renderer,
                                              mouth_motion=settings.get("mouth_motion", 1.0))
            return self.made["session"]

        self.session = await loop.run_in_executor(self.worker, make)
        track_class = _frame_tracks()
        self.video, self.sound = track_class("video"), track_class("audio")
        self.pc = pc = RTCPeerConnection()
        pc.addTrack(self.video)
        pc.addTrack(self.sound)

        @pc.on("datachannel")
        def on_channel(channel):
            self.channel = channel
            channel.on("message", lambda message: self.tasks.append(asyncio.ensure_future(self.on_message(message))))

        @pc.on("track")
        def on_track(track):
            if track.kind == "audio" and not any(t.get_name() == "mic" for t in self.tasks):
                task = asyncio.ensure_future(self.consume(track))
                task.set_name("mic")
                self.tasks.append(task)

        @pc.on("connectionstatechange")
        async def on_state():
            if pc.connectionState in ("failed", "closed"):
                await self.close()

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            await pc.setLocalDescription(await pc.createAnswer())
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as err:
            raise ProtocolError("bad_request", f"the offer's SDP could not be answered ({type(err).__name__}: {err}).") from None
        self.tasks.append(asyncio.ensure_future(self.watch_idle()))
        target_size = target.size
        return {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type, "session": self.sid,
                "fps": self.session.fps, "width": target_size[0], "height": target_size[1],
                "lookahead_ms": round(1000 * self.session.lookahead_s, 1)}

    def send(self, doc: dict) -> None:
        if self.channel is not None and self.channel.readyState == "open":
            self.channel.send(json.dumps(doc))

    async def deliver(self, frames, clock: ArrivalClock) -> None:
        import av

        for f in frames:
            image = av.VideoFrame.from_ndarray(f.image, format="rgb24")
            image.pts, image.time_base = int(round(f.index * VIDEO_CLOCK / self.session.fps)), fractions.Fraction(1, VIDEO_CLOCK)
            pcm = to_pcm16(f.audio)
            sound = av.AudioFrame.from_ndarray(pcm[None], format="s16", layout="mono")
            sound.sample_rate = AUDIO_OUT_RATE
            sound.pts, sound.time_base = int(round(f.time_s * AUDIO_OUT_RATE)), fractions.Fraction(1, AUDIO_OUT_RATE)
            await self.video.queue.put(image)
            await self.sound.queue.put(sound)
            latency = clock.latency(f.index, time.perf_counter())
            self.state["frames"] += 1
            self.send({"type": "frame", "index": f.index, "time": round(f.time_s, 4), "latency_ms": round(1000 * latency, 1)})
            warning = late_warning(self.state, latency, self.session.lookahead_s)
            if warning:
                self.send(warning)

    async def consume(self, track) -> None:
        """The microphone track into the session, as its frames arrive."""
        from aiortc.mediastreams import MediaStreamError

        loop = asyncio.get_running_loop()
        clock = None
        try:
            while not self.closed:
                try:
                    frame = await track.recv()
                except MediaStreamError:
                    break
                x, rate = audio_samples(frame)
                now = self.last_audio = time.perf_counter()
                clock = clock or ArrivalClock(rate, self.session.fps)
                clock.arrived(len(x), now)
                await self.deliver(await loop.run_in_executor(self.worker, self.session.push, x, rate), clock)
        finally:
            await self.finish(clock)

    async def on_message(self, message) -> None:
        try:
            msg = json.loads(message) if isinstance(message, str) else None
        except ValueError:
            msg = None
        kind = msg.get("type") if isinstance(msg, dict) else None
        if kind == "end":
            await self.finish(None)
            return
        if kind != "say" or any(t.get_name() == "mic" for t in self.tasks):
            self.send({"type": "error", "code": "bad_request",
                       "message": 'data channel messages must be {"type": "say", "text": ...} (without a microphone track) '
                                  'or {"type": "end"}.'})
            return
        loop = asyncio.get_running_loop()
        try:
            pieces = await loop.run_in_executor(self.worker, spoken, msg.get("text"), AUDIO_OUT_RATE)
        except LipsyncError as err:
            self.send({"type": "error", "code": getattr(err, "code", "bad_request"), "message": str(err)})
            return
        clock, t0 = ArrivalClock(AUDIO_OUT_RATE, self.session.fps), time.perf_counter()
        for piece in pieces:  # in real time, as a microphone would bring it
            ahead = clock.received / AUDIO_OUT_RATE - (time.perf_counter() - t0) - 0.2
            if ahead > 0:
                await asyncio.sleep(ahead)
            if self.closed:
                return
            self.last_audio = time.perf_counter()
            clock.arrived(len(piece), self.last_audio)
            await self.deliver(await loop.run_in_executor(self.worker, self.session.push, piece, AUDIO_OUT_RATE), clock)
        await self.finish(clock)

    async def finish(self, clock) -> None:
        """The last frames, ``end``, and the connection closed a moment later (so they play out)."""
        if self.closed or "finished" in self.made:
            return
        self.made["finished"] = True
        loop = asyncio.get_running_loop()
        frames = await loop.run_in_executor(self.worker, self.session.finish)
        await self.deliver(frames, clock or ArrivalClock(AUDIO_OUT_RATE, self.session.fps))
        self.send({"type": "end", "frames": self.state["frames"], "late_frames": self.state["late"]})
        await self.video.queue.put(None)
        await self.sound.queue.put(None)
        await asyncio.sleep(1.0)
        await self.close()

    async def watch_idle(self) -> None:
        timeout = self.owner.service.options.idle_timeout_s
        while not self.closed:
            await asyncio.sleep(min(1.0, timeout / 4))
            if time.perf_counter() - self.last_audio > timeout and "finished" not in self.made:
                self.send({"type": "error", "code": "timeout", "message": f"no audio for {timeout:g} s; the session is closed."})
                await self.close()

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.owner.peers.discard(self)
        self.owner.service.release(self.sid)
        if self.pc is not None:
            await self.pc.close()
        current = asyncio.current_task()
        for t in self.tasks:
            if t is not current and not t.done():
                t.cancel()
        self.worker.submit(lambda: self.made.get("session") and self.made["session"].close())
        self.worker.shutdown(wait=False)
