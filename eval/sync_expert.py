"""A lip-sync expert learned from the speaker's own footage: small audio and mouth encoders
trained so that a window of mouth motion is most similar to the speech of the same moment and
less similar to the same speech shifted by up to ``MAX_LAG`` frames (the SyncNet idea, on tracked
lip shapes instead of pixels, and per speaker instead of pre-trained on thousands of people).

Used by the ``sync_offset`` and ``sync_conf`` metrics: a video's sync curve is the mean cosine
similarity of its mouth windows with the audio windows ``lag`` frames earlier, for every lag in
+-``MAX_LAG``; the offset is the best lag (positive: the video lags the audio) and the confidence
is the peak minus the median of the curve.

Inputs, per video frame t:
* mouth: the re-tracked landmarks, pose-normalized into the clip's canonical face (its neutral,
  closed-mouth reference), minus the canonical's own lips: the lip rings' deformation in x, y, in
  units of the eye distance; ``VIDEO_FRAMES`` consecutive frames centred on t;
* audio: the log-mel spectrogram, each band standardized over the clip, ``AUDIO_COLUMNS`` columns
  (10 ms each) centred on frame t's middle.
Training takes the prepared training clip's own tracking (``landmarks_raw``: the same MediaPipe
tracker as the metrics' re-tracking) and audio, and runs ``STEPS`` steps of random 6-second
stretches (about 30 s on one CPU core, whatever the footage's length). The networks are small
(a shared per-frame lip projection; a per-column band mix and a temporal convolution) so that
15-30 s of footage suffice.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lipsync.common import LipsyncError, Progress
from lipsync.files import atomic_file, content_key

from .core import _quiet

EXPERT_VERSION = 1               # part of the cache key: change it when features or training change
MAX_LAG = 15                     # frames searched either way (and shifts the training contrasts)
LAGS = np.arange(-MAX_LAG, MAX_LAG + 1)
VIDEO_FRAMES = 5                 # mouth frames per window (0.2 s at 25 fps)
AUDIO_COLUMNS = 20               # log-mel columns per window (0.2 s)
AUDIO_BANDS = 40                 # mel bands, adjacent pairs of the 80 averaged
SEGMENT = 150                    # frames per training segment (6 s at 25 fps)
SEGMENTS = 8                     # segments per training step
EMBED = 64
HIDDEN = 64
DROPOUT = 0.2
WEIGHT_DECAY = 1e-2
TEMPERATURE = 0.1
STEPS = 600
LEARNING_RATE = 2e-3
MIN_TRAIN_FRAMES = 375           # tracked frames (15 s at 25 fps) needed to train an expert
MIN_SYNC_FRAMES = 25             # tracked frames needed to measure a clip's sync


# ---------------------------------------------------------------------------------------------
# features

def mouth_features(landmarks: np.ndarray, canonical: np.ndarray) -> np.ndarray:
    """Per-frame lip deformation: float32 (T, 2 * lip vertices), NaN rows where untracked.

    The landmarks (T, 468, 3, pixels) are pose-normalized into ``canonical`` (468, 3), and the
    canonical's lips are subtracted, in x and y, over the canonical eye distance."""
    from .metrics.lipsync import eye_distance, mouth_indices, normalize_to_canonical

    idx = mouth_indices()
    norm = normalize_to_canonical(np.asarray(landmarks, np.float32), canonical)[:, idx, :2]
    rest = np.asarray(canonical, np.float32)[idx, :2]
    feats = (norm - rest[None]) / eye_distance(canonical)
    return feats.reshape(len(feats), -1).astype(np.float32)


def audio_features(audio: np.ndarray, num_frames: int, fps: float) -> np.ndarray:
    """Per-frame audio windows: float32 (T, ``AUDIO_BANDS``, ``AUDIO_COLUMNS``), each mel band
    standardized over the clip (so the recording's level and colour do not matter)."""
    from lipsync.audio_features import frame_windows, log_mel

    spec = log_mel(np.asarray(audio, np.float32))
    if spec.shape[1] == 0:
        spec = np.zeros((80, 1), np.float32)
    floor = np.percentile(spec, 1, axis=1, keepdims=True)
    spec = np.maximum(spec, floor)
    spec = spec.reshape(AUDIO_BANDS, -1, spec.shape[1]).mean(1)
    spec = (spec - spec.mean(1, keepdims=True)) / (spec.std(1, keepdims=True) + 1e-3)
    return frame_windows(spec.astype(np.float32), num_frames, fps, columns=AUDIO_COLUMNS)


def video_windows(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(windows float32 (T, VIDEO_FRAMES * D), usable bool (T,)): frame t's window is frames
    t - 2 .. t + 2 (edges repeated); usable when every frame in it is tracked."""
    t = len(feats)
    half = VIDEO_FRAMES // 2
    idx = np.clip(np.arange(t)[:, None] + np.arange(-half, half + 1)[None], 0, max(t - 1, 0))
    ok = np.isfinite(feats).all(1)
    windows = np.nan_to_num(feats)[idx].reshape(t, -1)
    return windows.astype(np.float32), ok[idx].all(1)


# ---------------------------------------------------------------------------------------------
# the model

def _build(dim_video: int):
    import torch
    from torch import nn

    class VideoEncoder(nn.Module):
        # one projection of each frame's lip shape, shared over the window's frames, then the window
        def __init__(self):
            super().__init__()
            self.frame = nn.Linear(dim_video // VIDEO_FRAMES, 16)
            self.window = nn.Sequential(nn.GELU(), nn.Dropout(DROPOUT), nn.Flatten(), nn.Linear(16 * VIDEO_FRAMES, HIDDEN),
                                        nn.GELU(), nn.Linear(HIDDEN, EMBED))

        def forward(self, x):
            return self.window(self.frame(x.reshape(len(x), VIDEO_FRAMES, -1)))

    class AudioEncoder(nn.Module):
        # bands mixed per column, then a convolution over time
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Conv1d(AUDIO_BANDS, 32, 1), nn.GELU(), nn.Dropout(DROPOUT),
                                     nn.Conv1d(32, 32, 5, stride=2, padding=2), nn.GELU(), nn.Flatten(),
                                     nn.Linear(32 * ((AUDIO_COLUMNS + 1) // 2), HIDDEN), nn.GELU(), nn.Linear(HIDDEN, EMBED))

        def forward(self, x):
            return self.net(x)

    class Expert(nn.Module):
        def __init__(self):
            super().__init__()
            self.video = VideoEncoder()
            self.audio = AudioEncoder()

        def embed(self, video, audio):
            v = nn.functional.normalize(self.video(video), dim=-1)
            a = nn.functional.normalize(self.audio(audio), dim=-1)
            return v, a

    torch.manual_seed(0)
    return Expert()


def _shift_logits(v, a, ok, lags):
    """Similarity of each video window t with audio window t - lag: (T, L) logits and a (T, L)
    mask of the pairs inside the clip with both windows usable."""
    import torch

    t = v.shape[0]
    src = torch.arange(t)[:, None] - torch.as_tensor(lags)[None]  # audio frame for (t, lag)
    inside = (src >= 0) & (src < t)
    src_c = src.clamp(0, t - 1)
    sims = (v[:, None, :] * a[src_c]).sum(-1)
    mask = inside & ok[:, None] & ok[src_c]
    return sims, mask


@dataclass(frozen=True)
class SyncExpert:
    """A trained expert: ``curve`` scores a clip; ``path`` is the file it was loaded from."""
    model: object
    path: Path
    info: dict

    def curve(self, landmarks: np.ndarray, canonical: np.ndarray, audio: np.ndarray, fps: float) -> dict:
        """The clip's sync: ``{"offset", "confidence", "peak", "curve", "frames"}`` (lag in frames,
        positive = the video lags the audio); NaNs and a ``reason`` when too few frames are tracked."""
        import torch

        feats = mouth_features(landmarks, canonical)
        vw, ok = video_windows(feats)
        nan = {"offset": float("nan"), "confidence": float("nan"), "peak": float("nan"), "curve": [],
               "frames": int(ok.sum())}
        if ok.sum() < MIN_SYNC_FRAMES:
            return {**nan, "reason": f"only {int(ok.sum())} frames with a tracked mouth (need {MIN_SYNC_FRAMES})"}
        aw = audio_features(audio, len(feats), fps)
        with torch.no_grad():
            v, a = self.model.embed(torch.from_numpy(vw), torch.from_numpy(aw))
            sims, mask = _shift_logits(v, a, torch.ones(len(vw), dtype=torch.bool), LAGS)
            mask &= torch.from_numpy(ok)[:, None]
            counts = mask.sum(0)
            curve = ((sims * mask).sum(0) / counts.clamp(min=1)).numpy().astype(np.float64)
        curve[counts.numpy() < MIN_SYNC_FRAMES // 2] = np.nan
        k = int(np.nanargmax(curve))
        return {"offset": float(LAGS[k]), "confidence": float(curve[k] - np.nanmedian(curve)), "peak": float(curve[k]),
                "curve": [round(float(c), 4) for c in curve], "frames": int(ok.sum())}


def load_expert(path: str | Path) -> SyncExpert:
    import torch

    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        info = json.loads(path.with_suffix(".json").read_text())
        model = _build(int(info["dim_video"]))
        model.load_state_dict(state)
    except (OSError, RuntimeError, ValueError, KeyError) as err:
        raise LipsyncError(f"{path} is not a sync expert ({type(err).__name__}); train it again.") from None
    model.eval()
    return SyncExpert(model=model, path=path, info=info)


# ---------------------------------------------------------------------------------------------
# training

def _training_data(prepared_path: Path):
    from lipsync.prepared import open_prepared

    clip = open_prepared(prepared_path)
    landmarks = np.array(clip.array("landmarks_raw"))
    canonical = np.array(clip.array("reference_vertices"))
    audio, _ = clip.audio()
    feats = mouth_features(landmarks, canonical)
    vw, ok = video_windows(feats)
    aw = audio_features(audio, len(feats), clip.fps)
    return vw, aw, ok, clip.fps


def train_expert(prepared_path: str | Path, out: str | Path, *, progress: Progress = _quiet) -> dict:
    """Train an expert on a prepared clip and write it to ``out`` (a .pt file, with a .json of its
    facts beside it); returns the facts. Refuses clips with fewer than ``MIN_TRAIN_FRAMES`` tracked
    frames."""
    import torch

    t0 = time.perf_counter()
    vw, aw, ok, fps = _training_data(Path(prepared_path))
    if ok.sum() < MIN_TRAIN_FRAMES:
        raise LipsyncError(f"the footage has only {int(ok.sum())} frames with a tracked mouth; a sync expert needs "
                           f"{MIN_TRAIN_FRAMES} ({MIN_TRAIN_FRAMES / fps:.0f} s).")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the networks are small: more threads only add overhead (5x slower on 2 busy cores)
    try:
        state, history = _train(vw, aw, ok, progress)
    finally:
        torch.set_num_threads(threads)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    info = {"version": EXPERT_VERSION, "dim_video": int(vw.shape[1]), "fps": fps, "train_frames": int(ok.sum()),
            "steps": STEPS, "history": history, "seconds": round(time.perf_counter() - t0, 1)}
    with atomic_file(out.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(info, indent=1))
    with atomic_file(out) as tmp:
        torch.save(state, tmp)
    progress("sync expert", STEPS, STEPS)
    return info


def _train(vw: np.ndarray, aw: np.ndarray, ok: np.ndarray, progress: Progress = _quiet):
    """(state dict, [(step, loss, fraction of windows whose best shift is within a frame)])."""
    import torch

    model = _build(vw.shape[1])
    opt = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    data = (torch.from_numpy(vw), torch.from_numpy(aw), torch.from_numpy(ok))
    target = int(np.flatnonzero(LAGS == 0)[0])
    gen = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    seg = min(SEGMENT, len(vw))
    ce = torch.nn.functional.cross_entropy

    def loss_of(video, audio, usable):
        video = video + 0.05 * torch.randn(video.shape, generator=gen) * video.std()
        v, a = model.embed(video, audio)
        # which audio goes with this mouth, and which mouth with this audio, among the shifted ones
        sims, mask = _shift_logits(v, a, usable, LAGS)
        sims_t, mask_t = _shift_logits(a, v, usable, -LAGS)
        logits = (sims / TEMPERATURE).masked_fill(~mask, -1e4)[mask[:, target]]
        logits_t = (sims_t / TEMPERATURE).masked_fill(~mask_t, -1e4)[mask_t[:, target]]
        loss = 0.5 * (ce(logits, torch.full((len(logits),), target)) + ce(logits_t, torch.full((len(logits_t),), target)))
        return loss, (logits.argmax(1) - target).abs().le(1).float().mean()

    history = []
    model.train()
    # Early stopping on held-out footage was tried: on short footage its few frames stopped
    # training far too early (offsets 2 frames off on unseen clips), while a fixed number of
    # steps finds the offsets of unseen clips from 24 s of training as well as from 180 s.
    for step in range(STEPS):
        starts = rng.integers(0, len(vw) - seg + 1, SEGMENTS)  # a few random stretches of the footage
        results = [loss_of(*(x[s:s + seg] for x in data)) for s in starts]
        loss = torch.stack([r[0] for r in results]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 49:
            history.append((step + 1, round(float(loss.detach()), 4), round(float(torch.stack([r[1] for r in results]).mean()), 4)))
            progress("sync expert", step + 1, STEPS)
    model.eval()
    return model.state_dict(), history


def expert_for(prepared_path: str | Path, cache: str | Path, *, progress: Progress = _quiet) -> Path:
    """The expert of a prepared clip, trained once and kept in ``cache`` under a name made from the
    clip's tracking and audio (a re-run with the same footage reuses it)."""
    from lipsync.prepared import open_prepared

    clip = open_prepared(prepared_path)
    key = content_key("sync-expert", EXPERT_VERSION, Path(clip.path / clip.info.arrays["landmarks_raw"]["file"]),
                      Path(clip.path / clip.info.audio_file), Path(clip.path / clip.info.arrays["reference_vertices"]["file"]))
    path = Path(cache) / f"sync_expert-{key}.pt"
    if not (path.is_file() and path.with_suffix(".json").is_file()):
        train_expert(prepared_path, path, progress=progress)
    return path


def expert_settings(prepared_path: str | Path, cache: str | Path, *, progress: Progress = _quiet) -> dict:
    """The metric settings for the sync metrics: ``{"sync_expert": path}`` of the clip's expert
    (trained once, see ``expert_for``), or ``{"sync_expert_error": why}`` when the footage cannot
    train one, which the sync metrics then give as their reason."""
    try:
        return {"sync_expert": str(expert_for(prepared_path, cache, progress=progress))}
    except LipsyncError as err:  # too little tracked footage
        return {"sync_expert_error": f"no sync expert could be trained on the training footage: {err}"}
