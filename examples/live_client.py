"""Stream a wav file to a live lipsync server and write the frames it sends back to an mp4.

    lipsync serve --model MODEL_DIR --target speaker.mp4 --port 8765      # in one shell
    python examples/live_client.py speech.wav out.mp4 --url ws://127.0.0.1:8765/live/ws

The audio goes out in 20 ms messages of 16-bit PCM at the file's own sample rate (as a microphone
would send it; ``--as-fast-as-possible`` sends without waiting, and the server paces it); each
frame comes back as JPEG with its index, time and latency (protocol ``lipsync-live/1``, see the
README). Needs only numpy, soundfile, websockets and ffmpeg: no lipsync install.
"""
from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from websockets.sync.client import connect


def unpack(message: bytes) -> tuple[dict, bytes, bytes]:
    """A frame message: 4-byte big-endian header length, JSON header, JPEG, 16-bit PCM."""
    n = struct.unpack(">I", message[:4])[0]
    header = json.loads(message[4:4 + n])
    a = 4 + n + header["image_bytes"]
    return header, message[4 + n:a], message[a:a + header["audio_bytes"]]


def send_audio(ws, audio: np.ndarray, rate: int, chunk_ms: float, realtime: bool) -> None:
    step = max(1, int(rate * chunk_ms / 1000))
    t0 = time.perf_counter()
    for i in range(0, len(audio), step):
        if realtime:  # a chunk leaves when its last sample would have been spoken
            time.sleep(max(0.0, t0 + (i + step) / rate - time.perf_counter()))
        ws.send(audio[i:i + step].tobytes())
    ws.send(json.dumps({"type": "end"}))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("wav", help="speech to send (any sample rate; the first channel is used)")
    ap.add_argument("out", help="the mp4 to write (the frames received, with the wav's sound)")
    ap.add_argument("--url", default="ws://127.0.0.1:8765/live/ws")
    ap.add_argument("--chunk-ms", type=float, default=20.0)
    ap.add_argument("--as-fast-as-possible", action="store_true", help="do not wait for real time between chunks")
    ap.add_argument("--mouth-motion", type=float, default=1.0,
                    help="how much the mouth moves relative to the speaker's own amount (0.25-2, default 1)")
    args = ap.parse_args(argv)

    try:
        audio, rate = sf.read(args.wav, dtype="int16", always_2d=True)
    except (OSError, RuntimeError) as err:
        print(f"live_client: error: cannot read {args.wav} ({err}).", file=sys.stderr)
        return 2
    audio = np.ascontiguousarray(audio[:, 0]).astype("<i2")
    out = Path(args.out)
    tmp = out.with_name(f".{out.stem}.partial{out.suffix}")
    latencies = []
    with connect(args.url, max_size=None) as ws:
        ws.send(json.dumps({"type": "start", "sample_rate": int(rate), "format": "s16le",
                            "mouth_motion": args.mouth_motion}))
        ready = json.loads(ws.recv())
        if ready["type"] != "ready":
            print(f"live_client: error: the server said: {ready['message']}", file=sys.stderr)
            return 1
        print(f"session {ready['session']}: {ready['width']}x{ready['height']} at {ready['fps']:g} fps, "
              f"model lookahead {ready['lookahead_ms']:.0f} ms", file=sys.stderr)
        encoder = subprocess.Popen(
            ["ffmpeg", "-y", "-loglevel", "error", "-f", "image2pipe", "-framerate", str(ready["fps"]), "-c:v", "mjpeg",
             "-i", "pipe:0", "-i", os.path.abspath(args.wav), "-map", "0:v", "-map", "1:a", "-c:v", "libx264",
             "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", os.path.abspath(tmp)], stdin=subprocess.PIPE)
        sender = threading.Thread(target=send_audio, args=(ws, audio, rate, args.chunk_ms, not args.as_fast_as_possible),
                                  daemon=True)
        sender.start()
        end = None
        while end is None:
            msg = ws.recv()
            if isinstance(msg, bytes):
                header, jpeg, _ = unpack(msg)
                latencies.append(header["latency_ms"])
                encoder.stdin.write(jpeg)
                continue
            doc = json.loads(msg)
            if doc["type"] == "warning":
                print(f"live_client: {doc['message']}", file=sys.stderr)
            elif doc["type"] == "end":
                end = doc
            else:
                encoder.stdin.close()
                encoder.wait()
                tmp.unlink(missing_ok=True)
                print(f"live_client: error: the server said: {doc['message']}", file=sys.stderr)
                return 1
        encoder.stdin.close()
        if encoder.wait() != 0:
            tmp.unlink(missing_ok=True)
            print("live_client: error: ffmpeg could not write the video.", file=sys.stderr)
            return 1
    tmp.replace(out)
    lat = np.array(latencies or [np.nan])
    print(f"{out}: {end['frames']} frames for {end['audio_s']:.2f} s of audio; latency p50 {np.percentile(lat, 50):.0f} ms, "
          f"p95 {np.percentile(lat, 95):.0f} ms, max {np.max(lat):.0f} ms; {end['late_frames']} frames late", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
