"""``lipsync train``: fit a personalized audio-to-face model on one prepared clip.

The last 10% of the clip is held out for validation. Training is seeded and runs a fixed number
of steps per preset (so the result does not depend on the machine's speed); ``max_minutes`` only
stops it early. A checkpoint is written at every validation, so a killed run continues with
``resume=True``. Auto-regressive texture conditioning is trained with teacher forcing plus three
things that keep inference (which feeds back its own predictions) from drifting: noise on the
previous texture, dropping it (the reference crop instead), and self-conditioning (the model's
own prediction of the previous frame, made from the frame before it, as the input).
"""
from __future__ import annotations

import csv
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .common import LipsyncError
from .files import atomic_file
from .model_io import CHECKPOINT, LOG, PLOT, ModelFolder, TrainSummary

LOG_FIELDS = ["step", "seconds", "lr", "train_geometry", "train_texture", "val_geometry", "val_texture", "val_loss"]


@dataclass(frozen=True)
class TrainOptions:
    """A training preset. ``quick`` fits a 3-minute clip on 2 CPU cores in under 10 minutes;
    ``full`` is for a GPU (more steps, a full-resolution lower-face texture)."""
    steps: int = 2400
    batch: int = 32
    lr: float = 2e-3
    texture_scale: float = 0.5      # predicted crop resolution relative to the atlas
    tex_channels: int = 96
    pca_components: int = 32
    val_every: int = 300
    # early stopping: training ends after this many validations without a lower validation loss
    # (0: runs every step); with keep_best the weights of the best validation are the ones kept
    patience: int = 3
    keep_best: bool = True
    geometry_weight: float = 20.0   # canonical units: lips move ~0.05, so L1 is scaled up
    mouth_weight: float = 4.0       # extra texture weight on lips and mouth interior
    prev_noise: float = 0.03        # std of the noise on the previous texture (0..1 units)
    prev_drop: float = 0.2          # probability of replacing the previous texture by the reference
    self_condition: float = 0.5     # final fraction of samples conditioned on the model's own prediction
    audio_noise: float = 0.2        # std of noise added to the normalized log-mel windows
    audio_gain: float = 0.5         # random loudness change (normalized log-mel units, +-)
    audio_columns: int = 24         # log-mel columns (10 ms each) of audio context per video frame
    # how far the audio window reaches past a frame's centre, in ms (a multiple of 10); None: the
    # window is centred (110 ms with 24 columns). Shorter lookahead = lower live latency.
    lookahead_ms: int | None = None
    dropout: float = 0.25           # dropout on the audio latent
    weight_decay: float = 1e-4
    val_fraction: float = 0.1
    seed: int = 0
    # ablations of the paper (used by the evaluation suite): no previous-frame conditioning;
    # textures learnt from the atlas before lighting normalization (needs --keep-raw-atlas)
    autoregressive: bool = True
    lighting_norm: bool = True
    # add the fine skin detail of one real training frame to the reference atlas's lower face
    # (lipsync.model.skin_detail); the per-texel median alone is softer than the real skin
    skin_detail: bool = True
    # keep a bank of the training frames' full-resolution mouths for synthesis (lipsync.model.mouth_bank)
    mouth_bank: bool = True
    mouth_bank_frames: int = 250    # at most this many mouths (about 22 KB each at the default atlas size)
    # scale synthesized mouth movements so they are as large as the speaker's on the validation part
    calibrate_articulation: bool = True


PRESETS = {
    "quick": TrainOptions(),
    "full": TrainOptions(steps=30000, batch=64, lr=1e-3, texture_scale=1.0, tex_channels=128, val_every=1000),
    # for tests and smoke runs only: seconds, not a usable model
    "tiny": TrainOptions(steps=40, batch=8, val_every=20, tex_channels=32),
}

TrainProgress = Callable[[int, int, dict], None]  # (step, total steps, losses of the step)


def _crop_region(regions: dict, size: int, scale: float) -> tuple[tuple[int, int, int, int], int, int]:
    """The lower-face box in atlas texels and the predicted crop size (divisible by 16);
    ``regions``: name -> bool (S, S) (``PreparedClip.regions()``)."""
    lower = regions["lower_face"] | regions["mouth"]
    ys, xs = np.nonzero(lower)
    step = max(16, int(round(16 / scale)))
    top = int(ys.min()) // step * step
    bottom = min(size, -(-(int(ys.max()) + 1) // step) * step)
    left = int(xs.min()) // step * step
    right = min(size, -(-(int(xs.max()) + 1) // step) * step)
    h = max(16, int(round((bottom - top) * scale / 16)) * 16)
    w = max(16, int(round((right - left) * scale / 16)) * 16)
    return (top, bottom, left, right), h, w


def resize_crops(images: np.ndarray, crop, height: int, width: int, *, interpolation=None) -> np.ndarray:
    """Atlas images (N, S, S, C) -> their crop resized to (N, height, width, C)."""
    import cv2

    t, b, l, r = crop
    interp = cv2.INTER_AREA if interpolation is None else interpolation
    out = np.empty((len(images), height, width, images.shape[-1]), images.dtype)
    for i, img in enumerate(images):
        res = cv2.resize(np.ascontiguousarray(img[t:b, l:r]), (width, height), interpolation=interp)
        out[i] = res.reshape(height, width, -1)
    return out


@dataclass
class TrainingData:
    """Everything the training loop reads, in memory. T = frames of the clip.

    windows float32 (T, 1, 80, 24) normalized; vertices float32 (T, V, 3); crops float32
    (T, 3, H, W) in [0,1] (invalid texels filled from the reference); masks float32 (T, 1, H, W);
    weight float32 (1, H, W); prev int64 (T,) index of the previous usable frame or -1;
    train, val int64 frame indices.
    """
    windows: np.ndarray
    vertices: np.ndarray
    crops: np.ndarray
    masks: np.ndarray
    weight: np.ndarray
    prev: np.ndarray
    train: np.ndarray
    val: np.ndarray
    reference_crop: np.ndarray


def lookahead_columns(options: TrainOptions) -> int | None:
    """The audio window's spectrogram columns after a frame's centre (None: centred)."""
    from .audio_features import HOP, SAMPLE_RATE

    ms = options.lookahead_ms
    if ms is None:
        return None
    step = 1000 * HOP // SAMPLE_RATE
    limit = step * (options.audio_columns - 1)
    if ms != int(ms) or not 0 <= ms <= limit or ms % step:
        raise LipsyncError(f"the audio lookahead must be a multiple of {step} ms from 0 to {limit}, not {ms}.")
    return int(ms) // step


def prepare_data(clip, config, options: TrainOptions, audio_norm=None):
    """Read a prepared clip into ``TrainingData``; returns (data, audio_norm)."""
    from .audio_features import AudioNorm, audio_windows

    n = clip.num_frames
    valid = np.array(clip.array("valid"))
    if valid.sum() < 50:
        raise LipsyncError(f"{clip.path} has only {int(valid.sum())} usable frames; training needs at least 50 (2 s), and 1-5 minutes works best.")
    audio, rate = clip.audio()
    raw = audio_windows(audio, n, clip.fps, columns=options.audio_columns, future=lookahead_columns(options))
    split = int(round(n * (1 - options.val_fraction)))
    train = np.flatnonzero(valid[:split])
    val = np.flatnonzero(valid[split:]) + split
    if len(val) < 5:
        raise LipsyncError(f"the last {100 * options.val_fraction:.0f}% of {clip.path} has fewer than 5 usable frames to validate on; give a longer clip.")
    audio_norm = audio_norm or AudioNorm.fit(raw[train])
    windows = audio_norm.apply(raw)[:, None]
    cuts = np.array(clip.array("cuts"))
    prev = np.arange(n) - 1
    prev[0] = -1
    ok_prev = np.zeros(n, bool)
    ok_prev[1:] = valid[:-1] & ~cuts[1:]
    prev[~ok_prev] = -1
    h, w = config.tex_height, config.tex_width
    ref = resize_crops(reference_atlas(clip, options)[None], config.crop, h, w)[0].astype(np.float32) / 255.0
    atlas, amask = clip.array(_atlas_name(clip, options)), clip.array("atlas_mask")
    crops = np.empty((n, 3, h, w), np.float32)
    masks = np.empty((n, 1, h, w), np.float32)
    for s in range(0, n, 256):
        a = resize_crops(np.asarray(atlas[s:s + 256]), config.crop, h, w).astype(np.float32) / 255.0
        mk = resize_crops(np.asarray(amask[s:s + 256], np.float32)[..., None], config.crop, h, w)[..., 0] > 0.99
        a = np.where(mk[..., None], a, ref[None])
        crops[s:s + 256] = a.transpose(0, 3, 1, 2)
        masks[s:s + 256, 0] = mk
    mouth = resize_crops(clip.regions()["mouth"][None, ..., None].astype(np.float32), config.crop, h, w)[0, ..., 0]
    weight = (1.0 + options.mouth_weight * mouth)[None].astype(np.float32)
    verts = np.nan_to_num(np.array(clip.array("vertices"), np.float32))
    data = TrainingData(windows=windows, vertices=verts, crops=crops, masks=masks, weight=weight, prev=prev,
                        train=train, val=val, reference_crop=ref.transpose(2, 0, 1).copy())
    return data, audio_norm


def _atlas_name(clip, options: TrainOptions) -> str:
    if options.lighting_norm:
        return "atlas"
    if not clip.info.has_array("atlas_raw"):
        raise LipsyncError(f"{clip.path} has no raw atlas, which training without lighting normalization needs; "
                           "preprocess the video with --keep-raw-atlas.")
    return "atlas_raw"


def _fits_on_gpu(torch, device, data: TrainingData) -> bool:
    """Whether the training arrays take at most a third of the GPU's free memory."""
    need = sum(a.nbytes for a in (data.crops, data.masks, data.windows, data.vertices))
    try:
        free, _ = torch.cuda.mem_get_info(device)
    except RuntimeError:
        return False
    return need <= free / 3


MAX_ARTICULATION_GAIN = 1.5


def articulation_gain(net, data: TrainingData) -> float:
    """How much synthesis should enlarge the predicted mouth movements: the speaker's real mouth
    opening spread (standard deviation) over the network's predicted one on the validation frames,
    within [1, MAX_ARTICULATION_GAIN]. A regression trained with an L1 loss moves the mouth less
    than the speaker (it hedges towards the mean shape where the audio is ambiguous); this brings
    the amplitude back, at a small cost in per-frame error.

    The prediction must be on frames the network did not learn from (the validation part). The
    speaker's spread is the larger of two estimates: over the validation frames (the same frames
    as the prediction) and over all the usable frames. The validation part is the last tenth of
    the footage, a few seconds of a short clip, and how much the mouth moves there varies with
    what is said: a calm ending alone would mute every synthesis. The larger estimate is taken
    because the network hedges at least as much on other recordings as on its own footage's
    held-out end, so both ratios fall short of what new audio needs rather than exceed it."""
    import torch

    from .face_measures import mouth_opening

    if len(data.val) < 25:
        return 1.0
    net.eval()
    with torch.no_grad():
        device = next(net.parameters()).device
        z = net.audio(torch.from_numpy(data.windows[data.val]).to(device))
        pred = net.geometry(z).cpu().numpy()
    net.train()
    speaker = max(np.std(mouth_opening(data.vertices[data.val])),
                  np.std(mouth_opening(data.vertices[np.concatenate([data.train, data.val])])))
    spread = float(np.std(mouth_opening(pred)))
    if not np.isfinite(spread) or spread <= 1e-9:
        return 1.0
    return float(np.clip(speaker / spread, 1.0, MAX_ARTICULATION_GAIN))


def inner_lip_texels(uv: np.ndarray, size: int) -> np.ndarray:
    """bool (size, size): the atlas texels inside the inner-lip contour of the UV layout (V, 2)."""
    import cv2

    from .topology import load_topology

    interior = np.zeros((size, size), np.uint8)
    corners = np.asarray(uv)[load_topology().regions["lips_inner"]] * size - 0.5
    cv2.fillPoly(interior, [np.round(corners * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    return interior.astype(bool)


def make_mouth_bank(clip, options: TrainOptions, vertices: np.ndarray, frames: np.ndarray, *,
                    latents: np.ndarray | None = None, val: np.ndarray | None = None):
    """The clip's mouth bank over ``frames`` (the training frames), from the atlas the texture
    was learnt from; None when too few frames show the whole mouth. With the trained network's
    audio codes of every frame (``latents`` (T, D)) and the validation frames ``val``, the bank
    also learns to follow the teeth area the audio predicts (``add_teeth_readout``)."""
    from .model.mouth_bank import add_teeth_readout, build_mouth_bank
    from .topology import load_topology

    regions = load_topology().regions
    lips = np.concatenate([regions["lips_inner"], regions["lips_outer"]])
    interior = inner_lip_texels(np.array(clip.array("uv")), clip.atlas_size)
    atlas, atlas_mask, mouth = clip.array(_atlas_name(clip, options)), clip.array("atlas_mask"), clip.regions()["mouth"]
    bank = build_mouth_bank(atlas, atlas_mask, vertices, mouth, frames, lips, interior=interior,
                            fill=reference_atlas(clip, options), size=options.mouth_bank_frames)
    if bank is not None and latents is not None:
        bank = add_teeth_readout(bank, atlas, atlas_mask, interior, mouth, latents, frames,
                                 np.zeros(0, np.int64) if val is None else val)
    return bank


def audio_codes(net, windows: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """float32 (T, D): the network's audio code of each window (T, 1, n_mels, columns), in eval
    mode, a chunk at a time on the network's device."""
    import torch

    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    with torch.no_grad():
        out = [net.codes(torch.from_numpy(np.ascontiguousarray(windows[i:i + chunk])).to(device)).cpu().numpy()
               for i in range(0, len(windows), chunk)]
    net.train(was_training)
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, net.config.latent), np.float32)


def with_skin_detail(clip, options: TrainOptions, speaker, crop, frames: np.ndarray) -> np.ndarray:
    """The speaker's reference atlas with the fine skin detail of its medoid training frame in
    the animated lower face (``lipsync.model.skin_detail``)."""
    from .model.mouth_bank import mouth_blend_mask
    from .model.skin_detail import detailed_reference

    animated = speaker.region("lower_face") | speaker.region("mouth")
    atlas, _ = detailed_reference(speaker.reference_atlas, clip.array(_atlas_name(clip, options)), clip.array("atlas_mask"),
                                  frames, animated, mouth_blend_mask(speaker.region("mouth")), tuple(crop))
    return atlas


def reference_atlas(clip, options: TrainOptions) -> np.ndarray:
    """uint8 (S,S,3): the clip's lighting-normalized reference atlas, or without lighting
    normalization the per-texel median of up to 100 evenly spaced usable raw atlases."""
    if options.lighting_norm:
        return np.array(clip.array("reference_atlas"))
    valid = np.flatnonzero(np.array(clip.array("valid")))
    pick = valid[np.linspace(0, len(valid) - 1, min(100, len(valid))).round().astype(int)]
    from .atlas import masked_median

    med = masked_median(clip.array(_atlas_name(clip, options))[pick], np.asarray(clip.array("atlas_mask")[pick]))
    return np.nan_to_num(med).round().astype(np.uint8)


def build_model(clip, data_vertices_train: np.ndarray, options: TrainOptions):
    """A new ``TalkingFaceModel`` sized for this clip, its geometry decoder initialized by PCA."""
    from .model import ModelConfig, TalkingFaceModel
    from .model.geometry import fit_pca

    size = clip.atlas_size
    crop, h, w = _crop_region(clip.regions(), size, options.texture_scale)
    config = ModelConfig(columns=options.audio_columns, lookahead=lookahead_columns(options), pca_components=options.pca_components, atlas_size=size,
                         crop=crop, tex_height=h, tex_width=w, tex_channels=options.tex_channels,
                         dropout=options.dropout, autoregressive=options.autoregressive)
    net = TalkingFaceModel(config)
    mean, basis, std = fit_pca(data_vertices_train, options.pca_components)
    net.geometry.init_from_pca(mean, basis, std)
    return net


def _losses(net, batch, options: TrainOptions, weight):
    """Geometry L1 (scaled) and texture L1 over valid texels, mouth weighted."""
    verts, crop = net(batch["windows"], batch["prev"])
    geo = (verts - batch["vertices"]).abs().mean() * options.geometry_weight
    wm = weight * batch["masks"]
    tex = ((crop - batch["crops"]).abs() * wm).sum() / (wm.sum() * 3 + 1e-6)
    return geo, tex


def _seed_all(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _atomic_torch_save(obj, path: Path) -> None:
    import torch

    with atomic_file(path) as tmp:
        torch.save(obj, tmp)


def log_loss_axis(ax) -> None:
    """Put ``ax``'s y axis on a log scale with plain-text tick labels.

    matplotlib's default log labels are mathtext, and its mathtext parser is one object shared by
    all threads: two threads drawing at once (training writes its plot while the demo draws the
    live loss curve) make it fail. Plain labels ("0.01", "0.1") never reach that parser.
    """
    from matplotlib.ticker import FuncFormatter

    def minor(v, _):  # label the minor ticks only when less than a decade is shown
        lo, hi = ax.get_ylim()
        return f"{v:.2g}" if lo > 0 and hi / lo < 10 else ""

    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(minor))


def _write_plot(folder: Path, rows: list[dict]) -> None:
    """The loss curves as a PNG; drawn without pyplot, whose global state is not safe across threads."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not rows:
        return
    steps = [r["step"] for r in rows]
    fig = Figure(figsize=(10, 3.4))
    FigureCanvasAgg(fig)
    ax = fig.subplots(1, 2)
    for k, (tr, va) in enumerate((("train_geometry", "val_geometry"), ("train_texture", "val_texture"))):
        ax[k].plot(steps, [r[tr] for r in rows], label="train")
        ax[k].plot(steps, [r[va] for r in rows], label="validation")
        ax[k].set_title(tr.split("_")[1])
        ax[k].set_xlabel("step")
        log_loss_axis(ax[k])
        ax[k].grid(alpha=0.3)
        ax[k].legend()
    fig.tight_layout()
    with atomic_file(folder / PLOT) as tmp:
        fig.savefig(tmp, dpi=100)


class TrainingStopped(LipsyncError):
    """``train`` stopped because ``should_stop()`` said so; its checkpoint lets ``resume=True`` go on."""


def train(prepared: str | Path, out: str | Path, *, preset: str = "quick", options: TrainOptions | None = None,
          max_minutes: float | None = None, device: str = "auto", resume: bool = False,
          progress: TrainProgress | None = None, should_stop=None) -> ModelFolder:
    """Train a model on a prepared clip; returns the model folder (``ModelFolder``: its state and
    summary; usable as a path). See the module docstring.

    ``should_stop``: a callable checked after every step (e.g. a Cancel button); when it returns
    True, training writes a checkpoint and raises ``TrainingStopped``."""
    import torch

    from .common import resolve_device
    from .model_io import SpeakerData, save_model
    from .prepared import open_prepared

    if preset not in PRESETS:
        raise LipsyncError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}.")
    options = options or PRESETS[preset]
    lookahead_columns(options)  # a bad lookahead is refused before anything is written
    device = resolve_device(device)
    out = Path(out)
    clip = open_prepared(prepared)
    ckpt_path = out / CHECKPOINT
    if out.exists() and not out.is_dir():
        raise LipsyncError(f"{out} is a file; choose a folder for the model.")
    if resume:
        if not ckpt_path.is_file():
            raise LipsyncError(f"{out} has no checkpoint to resume from; start without --resume.")
    elif out.exists() and any(out.iterdir()):
        raise LipsyncError(f"{out} already exists and is not empty; choose another folder, or pass --resume to continue its training.")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise LipsyncError(f"Cannot create the model folder {out} ({err.strerror or err}); choose a writable location.") from None

    if not os.environ.get("OMP_NUM_THREADS"):  # respect a caller that shares the machine
        torch.set_num_threads(max(1, os.cpu_count() or 1))
    _seed_all(options.seed)
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False) if resume else None
    if ckpt is not None:
        options = TrainOptions(**ckpt["options"])
    net_vertices = np.nan_to_num(np.array(clip.array("vertices"), np.float32))
    valid = np.array(clip.array("valid"))
    split = int(round(len(valid) * (1 - options.val_fraction)))
    net = build_model(clip, net_vertices[:split][valid[:split]], options)
    from .audio_features import AudioNorm

    data, audio_norm = prepare_data(clip, net.config, options,
                                    audio_norm=AudioNorm.from_dict(ckpt["audio_norm"]) if ckpt else None)
    net.reference_crop.copy_(torch.from_numpy(data.reference_crop))
    net.to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=options.lr, weight_decay=options.weight_decay)
    if options.steps < 5:
        raise LipsyncError(f"training needs at least 5 steps, not {options.steps}.")
    # warm up over 5% of the steps, but over at least 2.5 steps (OneCycleLR needs a non-empty warm-up)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=options.lr, total_steps=options.steps,
                                                pct_start=min(0.3, max(0.05, 2.5 / options.steps)))
    rows: list[dict] = []
    step, elapsed_before = 0, 0.0
    best = {"loss": float("inf"), "step": 0, "index": -1, "state": None, "row": {}}  # the best validation so far
    if ckpt is not None:
        best = ckpt.get("best", best)
        net.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        step, rows, elapsed_before = ckpt["step"], ckpt["log"], ckpt["seconds"]
        torch.set_rng_state(ckpt["torch_rng"])
        np.random.set_state(ckpt["numpy_rng"])
    rng = np.random.default_rng(options.seed)
    if ckpt is not None:
        rng.bit_generator.state = ckpt["rng"]

    tens = lambda a: torch.from_numpy(a).to(device)  # noqa: E731
    weight = tens(data.weight)
    ref = tens(data.reference_crop)
    # On a GPU with room for it, the clip's training data is copied there once and each batch is
    # gathered there; otherwise batches are gathered from host memory (shared with the arrays).
    store = device if torch.device(device).type == "cuda" and _fits_on_gpu(torch, device, data) else "cpu"
    on_store = lambda a: torch.from_numpy(a).to(store)  # noqa: E731
    crops_s, masks_s, windows_s, vertices_s = (on_store(a) for a in (data.crops, data.masks, data.windows, data.vertices))
    ref_s = on_store(data.reference_crop)

    def crops_or_reference(frames: np.ndarray):
        """The crops of ``frames`` on ``device``, the reference crop where a frame index is -1."""
        f = on_store(frames)
        return torch.where((f >= 0)[:, None, None, None], crops_s[f.clamp(min=0)], ref_s[None]).to(device)

    def batch_at(idx: np.ndarray, *, augment: bool, self_frac: float) -> dict:
        prev_idx = data.prev[idx]
        prev = crops_or_reference(prev_idx)
        if augment:
            # self-conditioning: replace the previous crop by the model's own prediction of it
            sel = np.flatnonzero((prev_idx >= 0) & (rng.random(len(idx)) < self_frac))
            if len(sel):
                p = prev_idx[sel]
                with torch.no_grad():
                    _, own = net(windows_s[on_store(p)].to(device), crops_or_reference(data.prev[p]))
                prev[torch.from_numpy(sel).to(device)] = own
            prev = prev + options.prev_noise * torch.randn_like(prev)
            drop = torch.from_numpy(rng.random(len(idx)) < options.prev_drop).to(device)
            prev = torch.where(drop[:, None, None, None], ref[None].expand_as(prev), prev)
        at = on_store(idx)
        windows = windows_s[at].to(device)
        if augment and (options.audio_noise or options.audio_gain):
            gain = (torch.rand(len(idx), 1, 1, 1, device=device) * 2 - 1) * options.audio_gain
            windows = windows + gain + options.audio_noise * torch.randn_like(windows)
        return {"windows": windows, "prev": prev, "vertices": vertices_s[at].to(device),
                "crops": crops_s[at].to(device), "masks": masks_s[at].to(device)}

    def validate() -> tuple[float, float]:
        net.eval()
        g_sum = t_sum = 0.0
        with torch.no_grad():
            for s in range(0, len(data.val), 128):
                idx = data.val[s:s + 128]
                g, t = _losses(net, batch_at(idx, augment=False, self_frac=0.0), options, weight)
                g_sum += float(g) * len(idx)
                t_sum += float(t) * len(idx)
        net.train()
        return g_sum / len(data.val), t_sum / len(data.val)

    def checkpoint(seconds: float) -> None:
        _atomic_torch_save({"model": net.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                            "step": step, "log": rows, "seconds": seconds, "options": asdict(options),
                            "audio_norm": audio_norm.to_dict(), "torch_rng": torch.get_rng_state(),
                            "numpy_rng": np.random.get_state(), "rng": rng.bit_generator.state, "best": best}, ckpt_path)
        with atomic_file(out / LOG) as tmp, open(tmp, "w", newline="") as f:
            wr = csv.DictWriter(f, LOG_FIELDS)
            wr.writeheader()
            wr.writerows(rows)
        _write_plot(out, rows)

    t0 = time.perf_counter()
    net.train()
    acc = {"g": 0.0, "t": 0.0, "n": 0}
    stopped_early, stop_reason = False, ""
    try:
        while step < options.steps:
            idx = rng.choice(data.train, options.batch, replace=len(data.train) < options.batch)
            self_frac = options.self_condition * min(1.0, step / max(1, 0.5 * options.steps))
            g, t = _losses(net, batch_at(idx, augment=True, self_frac=self_frac), options, weight)
            opt.zero_grad(set_to_none=True)
            (g + t).backward()
            opt.step()
            sched.step()
            step += 1
            acc["g"] += float(g.detach())
            acc["t"] += float(t.detach())
            acc["n"] += 1
            seconds = elapsed_before + time.perf_counter() - t0
            if progress:
                progress(step, options.steps, {"geo": float(g.detach()), "tex": float(t.detach())})
            out_of_time = max_minutes is not None and seconds > 60 * max_minutes
            if step % options.val_every == 0 or step == options.steps or out_of_time:
                vg, vt = validate()
                rows.append({"step": step, "seconds": round(seconds, 2), "lr": sched.get_last_lr()[0],
                             "train_geometry": acc["g"] / acc["n"], "train_texture": acc["t"] / acc["n"],
                             "val_geometry": vg, "val_texture": vt, "val_loss": vg + vt})
                acc = {"g": 0.0, "t": 0.0, "n": 0}
                if vg + vt < best["loss"]:
                    best = {"loss": vg + vt, "step": step, "index": len(rows) - 1, "row": rows[-1],
                            "state": {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}}
                checkpoint(seconds)
                if options.patience and len(rows) - 1 - best["index"] >= options.patience:
                    stop_reason = f"no better validation loss in {options.patience} validations"
                    break
            if out_of_time:
                stopped_early = True
                stop_reason = "max_minutes"
                break
            if should_stop is not None and should_stop():
                checkpoint(seconds)
                raise TrainingStopped(f"training stopped at step {step} of {options.steps}; resume it to continue from there.")
    except KeyboardInterrupt:
        checkpoint(elapsed_before + time.perf_counter() - t0)
        raise LipsyncError(f"training interrupted at step {step}; continue it with 'lipsync train {prepared} --out {out} --resume'.") from None

    seconds = elapsed_before + time.perf_counter() - t0
    if options.keep_best and best["state"] is not None:  # the weights that validated best (early stopping)
        net.load_state_dict(best["state"])
    else:
        best = {"step": step, "row": rows[-1] if rows else {}}
    last = best["row"]
    summary = TrainSummary(preset=preset, options=asdict(options), steps=step, seconds=round(seconds, 1),
                           stopped_early=stopped_early, stop_reason=stop_reason, best_step=int(best["step"]), device=device, prepared=str(Path(prepared).resolve()),
                           frames_train=int(len(data.train)), frames_val=int(len(data.val)),
                           val_geometry=last.get("val_geometry"), val_texture=last.get("val_texture"),
                           val_loss=last.get("val_loss"))
    speaker = SpeakerData.from_prepared(clip)
    if not options.lighting_norm:
        speaker.reference_atlas = reference_atlas(clip, options)
    if options.skin_detail:
        speaker.reference_atlas = with_skin_detail(clip, options, speaker, net.config.crop, data.train)
    if options.calibrate_articulation:
        net.config.articulation_gain = articulation_gain(net, data)
    bank = make_mouth_bank(clip, options, net_vertices, data.train, latents=audio_codes(net, data.windows),
                           val=data.val) if options.mouth_bank else None
    save_model(out, net.cpu(), speaker, audio_norm, fps=clip.fps, training=summary.to_dict(), mouth_bank=bank)
    folder = ModelFolder(out)
    folder.write_summary(summary)
    return folder

