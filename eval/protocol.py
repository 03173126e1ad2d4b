"""The evaluation protocol's data: the training part and the test clips, each preprocessed once.

Self-reenactment (no ``test_clips``): the video is preprocessed whole first, which measures and
corrects any audio/lip offset in it; the last ``test_fraction`` of its frames is cut into test
clips of about ``clip_seconds`` each and the rest becomes the training video, both written with
the corrected audio. With ``test_clips`` (a folder of separate clips of the same speaker) the
whole video trains and each clip is a test clip as it is.

Every preprocessed clip lives in ``cache/prepared-<hash>`` where the hash covers the video's
content and the options, so a re-run reuses it.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lipsync.common import LipsyncError

from lipsync.files import content_key

from .core import EVAL_CRF, Progress, TestClip

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".mpg", ".mpeg", ".webm", ".m4v")


def prepare_cached(video: Path, cache: Path, *, sync_audio: bool, progress: Progress | None = None) -> Path:
    """``lipsync preprocess`` with the raw atlas kept (every stage needs it), reused when cached."""
    from lipsync import __version__
    from lipsync.preprocessing import PreprocessOptions, preprocess

    opts = PreprocessOptions(keep_raw_atlas=True, previews=False, sync_audio=sync_audio, min_seconds=0.4)
    key = content_key(Path(video), repr(opts), __version__)
    out = cache / f"prepared-{Path(video).stem}-{key}"
    if not (out / "manifest.json").is_file():
        preprocess(video, out, options=opts, overwrite=True,
                   progress=progress and (lambda st, d, t: progress(f"preprocess {Path(video).name}: {st}", d, t)))
    return out


def write_segment(source: Path, audio: np.ndarray, start: int, stop: int, fps: float, out: Path, work: Path) -> None:
    """Frames [start, stop) of ``source`` and the matching audio (16 kHz, sample 0 = frame 0 of the
    source) as an mp4 at ``EVAL_CRF``."""
    from lipsync.media import FrameReader, probe, write_wav
    from lipsync.media import VideoWriter

    info = probe(source)
    wav = work / f"{out.stem}.wav"
    a, b = int(round(start / fps * 16000)), int(round(stop / fps * 16000))
    write_wav(wav, audio[a:b])
    try:
        with VideoWriter(out, info.width, info.height, fps, wav, crf=EVAL_CRF) as writer:
            for i, frame in enumerate(FrameReader(info, max_frames=stop)):
                if i >= start:
                    writer.write(frame)
    finally:
        wav.unlink(missing_ok=True)


def split_points(frames: int, fps: float, test_fraction: float, clip_seconds: float) -> tuple[int, list[tuple[int, int]]]:
    """The first test frame and the test clips' [start, stop) frame ranges: the test part is cut
    into pieces of about ``clip_seconds`` (a short remainder joins the last piece)."""
    if not 0 < test_fraction < 1:
        raise LipsyncError(f"the test fraction must be between 0 and 1, not {test_fraction}.")
    split = int(round(frames * (1 - test_fraction)))
    length = max(1, int(round(clip_seconds * fps)))
    count = max(1, int(round((frames - split) / length)))
    edges = np.linspace(split, frames, count + 1).round().astype(int)
    return split, [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def clip_from(name: str, video: Path, prepared: Path) -> TestClip:
    from lipsync.prepared import open_prepared

    m = open_prepared(prepared).info
    return TestClip(name=name, video=Path(video), audio=Path(prepared) / m.audio_file, prepared=Path(prepared),
                    fps=m.fps, frames=m.frames, width=m.width, height=m.height)


def prepare_protocol(video: Path, cache: Path, *, test_clips: Path | None = None, test_fraction: float = 0.2,
                     clip_seconds: float = 5.0, max_test_clips: int | None = None,
                     progress: Progress | None = None) -> tuple[Path, Path, list[TestClip], dict]:
    """Returns (training video, its prepared clip, the test clips, facts for the report)."""
    from lipsync.media import probe
    from lipsync.prepared import open_prepared

    video = Path(video)
    probe(video)  # a clear error for a missing or unreadable video before any work
    cache.mkdir(parents=True, exist_ok=True)
    if test_clips is not None:
        test_clips = Path(test_clips)
        if not test_clips.is_dir():
            raise LipsyncError(f"{test_clips} is not a folder of test clips.")
        files = sorted(p for p in test_clips.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
        if not files:
            raise LipsyncError(f"{test_clips} holds no video clips ({', '.join(VIDEO_SUFFIXES)}).")
        files = files[:max_test_clips] if max_test_clips else files
        train_prepared = prepare_cached(video, cache, sync_audio=True, progress=progress)
        clips = []
        for k, f in enumerate(files):
            if progress:
                progress("prepare test clips", k, len(files))
            clips.append(clip_from(f.stem, f, prepare_cached(f, cache, sync_audio=False)))
        return video, train_prepared, clips, {"protocol": "held-out clips", "test_clips_dir": str(test_clips),
                                              "train_frames": open_prepared(train_prepared).num_frames}

    full = open_prepared(prepare_cached(video, cache, sync_audio=True, progress=progress))
    n, fps = full.num_frames, full.fps
    split, ranges = split_points(n, fps, test_fraction, clip_seconds)
    ranges = ranges[:max_test_clips] if max_test_clips else ranges
    audio, _ = full.audio()
    key = content_key(Path(full.path) / "manifest.json", test_fraction, clip_seconds, EVAL_CRF)
    seg = cache / f"segments-{video.stem}-{key}"
    seg.mkdir(parents=True, exist_ok=True)
    train_video = seg / "train.mp4"
    if not train_video.is_file():
        write_segment(video, audio, 0, split, fps, train_video, seg)
    train_prepared = prepare_cached(train_video, cache, sync_audio=False, progress=progress)
    clips = []
    for k, (a, b) in enumerate(ranges):
        if progress:
            progress("prepare test clips", k, len(ranges))
        name = f"test{k:02d}_{a:06d}"
        path = seg / f"{name}.mp4"
        if not path.is_file():
            write_segment(video, audio, a, b, fps, path, seg)
        clips.append(clip_from(name, path, prepare_cached(path, cache, sync_audio=False)))
    facts = {"protocol": "self-reenactment", "frames": n, "fps": fps, "train_frames": split,
             "test_frames": int(sum(b - a for a, b in ranges)), "test_fraction": test_fraction,
             "clip_seconds": clip_seconds, "audio_sync": full.info.sync}
    split_doc = json.dumps({"split": split, "ranges": ranges})
    split_file = seg / "split.json"
    if not split_file.is_file() or split_file.read_text() != split_doc:  # a re-run leaves it as it is
        split_file.write_text(split_doc)
    return train_video, train_prepared, clips, facts
