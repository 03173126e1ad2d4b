"""``personalized_2d``: a Wav2Lip-style 2D baseline trained from scratch on the training video.

No 3D and no lighting normalization: every frame is reduced to an aligned 2D face crop
(``eval.methods.face2d``, R x R pixels). A small U-Net sees 6 channels, the target frame's crop
with its lower half blacked out plus a reference crop (during training a random other frame of
the training clip, as Wav2Lip does), and the 240 ms log-mel window of the frame's audio
(``lipsync.audio_features``) through a convolutional audio encoder; the audio code joins the
face code at the U-Net's bottleneck and the decoder paints the lower half. Loss: L1 on the lower
half, extra weight on the lips; no GAN and no SyncNet expert (their weights are not available
here), so this is Wav2Lip's generator trained on one speaker, not Wav2Lip.

At render time the reference is the training clip's reference frame (frontal, mouth closed),
never the target frame itself, so in self-reenactment the ground-truth mouth cannot leak into
the output. The predicted lower half is pasted back into the target frame with that frame's own
2D transform through ``face2d.blend_mask`` (feathered, no seam).

Presets: ``tiny`` (tests: seconds), ``quick`` (a 3-minute 25 fps clip on 2 CPU cores in about
5 minutes), ``full`` (a GPU: larger crops, wider network, many more steps).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lipsync.common import LipsyncError, resolve_device

from lipsync.files import content_key

from lipsync.synthesis.schedule import ping_pong

from ..core import EVAL_CRF, RunContext, TestClip, Unavailable
from . import Method, register
from .face2d import CropTemplate, blend_mask, crop_transforms, make_template, template_regions, warp_crop

CODE_VERSION = "personalized_2d-1"  # part of the cache key: bump when training or the network changes
WEIGHTS, CONFIG = "model.safetensors", "config.json"


@dataclass(frozen=True)
class Options2D:
    """Size of the network and its training."""
    size: int = 96            # crop side R (pixels); divisible by 2 ** levels
    width: int = 16           # channels of the full-resolution level; x2 per level, at most x8
    levels: int = 4           # stride-2 levels of the U-Net
    latent: int = 64          # audio code size
    audio_width: int = 32     # audio encoder width (see lipsync.model.audio_encoder.AudioEncoder)
    steps: int = 1200
    batch: int = 16
    lr: float = 1e-3          # AdamW, one-cycle schedule
    weight_decay: float = 1e-4
    mouth_weight: float = 4.0  # extra L1 weight on the lips and mouth
    audio_noise: float = 0.2   # std of noise on the normalized log-mel windows (augmentation)
    audio_gain: float = 0.5    # random loudness change (normalized log-mel units, +-)
    val_fraction: float = 0.1  # the last part of the clip, held out for the validation loss
    log_every: int = 50


PRESETS = {
    "tiny": Options2D(size=48, width=8, levels=3, latent=32, audio_width=16, steps=40, batch=8, lr=2e-3, log_every=5),
    "quick": Options2D(),
    "full": Options2D(size=128, width=32, levels=4, latent=128, audio_width=64, steps=30000, batch=64, lr=5e-4,
                      log_every=500),
}


def options_for(preset: str) -> Options2D:
    if preset not in PRESETS:
        raise LipsyncError(f"unknown preset {preset!r} for personalized_2d; choose one of {', '.join(PRESETS)}.")
    return PRESETS[preset]


def split_row(options: Options2D) -> int:
    """First masked/predicted row of the R x R crop: the middle, as in Wav2Lip (a multiple of
    2 ** levels so the decoder can work on the lower half only)."""
    return options.size // 2 // (2 ** options.levels) * (2 ** options.levels)


# ---------------------------------------------------------------------------------------------
# the network

def build_net(options: Options2D):
    """A new ``Face2DNet`` (imports torch)."""
    import torch
    from torch import nn

    from lipsync.model.audio_encoder import AudioEncoder

    def act():
        return nn.LeakyReLU(0.2, inplace=True)

    def conv(c_in, c_out, stride=1):
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), act())

    class Face2DNet(nn.Module):
        """Inputs: masked crop and reference crop (B, 3, R, R) in [0, 1], audio windows
        (B, 1, 80, 24). Output: the lower half (B, 3, R - split, R) in [0, 1]."""

        def __init__(self, o: Options2D):
            super().__init__()
            if o.size % (2 ** o.levels) or split_row(o) == 0:
                raise ValueError(f"crop size {o.size} must be a multiple of {2 ** (o.levels + 1)}")
            self.split, self.levels = split_row(o), o.levels
            ch = [o.width * min(2 ** i, 8) for i in range(o.levels + 1)]
            self.audio = AudioEncoder(latent=o.latent, width=o.audio_width, dropout=0.0)
            self.stem = conv(6, ch[0])
            self.down = nn.ModuleList(nn.Sequential(conv(ch[i], ch[i + 1], 2), conv(ch[i + 1], ch[i + 1]))
                                      for i in range(o.levels))
            self.fuse = nn.Sequential(conv(ch[-1] + o.latent, ch[-1]), conv(ch[-1], ch[-1]))
            self.up = nn.ModuleList(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), conv(ch[i + 1], ch[i]))
                                    for i in range(o.levels))
            self.merge = nn.ModuleList(conv(2 * ch[i], ch[i]) for i in range(o.levels))
            self.out = nn.Conv2d(ch[0], 3, 1)

        def forward(self, masked, reference, windows):
            x = self.stem(torch.cat([masked, reference], 1))
            skips = [x]
            for block in self.down:
                x = block(x)
                skips.append(x)
            z = self.audio(windows)  # (B, latent)
            x = self.fuse(torch.cat([x, z[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3])], 1))
            x = x[:, :, self.split >> self.levels:]  # decode the lower half only
            for i in reversed(range(self.levels)):
                x = self.up[i](x)
                x = self.merge[i](torch.cat([x, skips[i][:, :, self.split >> i:]], 1))
            return torch.sigmoid(self.out(x))

    return Face2DNet(options)


# ---------------------------------------------------------------------------------------------
# data

@dataclass
class CropData:
    """The training clip as the network sees it. T = frames.

    crops uint8 (T, R, R, 3) aligned crops (zero in unusable frames); windows float32 (T, 1, 80, 24)
    normalized audio; train, val int64 frame indices; reference int: the render-time reference frame.
    """
    crops: np.ndarray
    windows: np.ndarray
    train: np.ndarray
    val: np.ndarray
    reference: int


def clip_crops(video: Path, landmarks: np.ndarray, valid: np.ndarray, template: CropTemplate) -> tuple[np.ndarray, np.ndarray]:
    """Decode ``video`` and crop every usable frame: uint8 (T, R, R, 3) and the usable mask (T,)."""
    from lipsync.media import FrameReader, probe

    mats = crop_transforms(landmarks, valid, template)
    ok = np.asarray(valid, bool) & np.isfinite(mats).all(axis=(1, 2))
    n, size = len(landmarks), template.size
    crops = np.zeros((n, size, size, 3), np.uint8)
    seen = 0
    for i, frame in enumerate(FrameReader(probe(video), max_frames=n)):
        seen = i + 1
        if ok[i]:
            crops[i] = warp_crop(frame, mats[i], size)
    ok[seen:] = False
    return crops, ok


def prepare_crop_data(prepared: Path, video: Path, options: Options2D, audio_norm=None):
    """Read the training clip: returns (CropData, AudioNorm, CropTemplate at R x R)."""
    from lipsync.audio_features import AudioNorm, audio_windows
    from lipsync.media import probe
    from lipsync.prepared import open_prepared

    clip = open_prepared(prepared)
    m = clip.info
    info = probe(video)
    if (info.width, info.height) != (m.width, m.height):
        raise LipsyncError(f"{video} ({info.width}x{info.height}) is not the video {prepared} was prepared from ({m.width}x{m.height}); give the matching video.")
    landmarks = np.array(clip.array("landmarks"), np.float32)
    valid = np.array(clip.array("valid"))
    ref = m.reference_frame
    template = make_template(landmarks[ref], options.size)
    crops, ok = clip_crops(video, landmarks, valid, template)
    n = clip.num_frames
    split = int(round(n * (1 - options.val_fraction)))
    train, val = np.flatnonzero(ok[:split]), np.flatnonzero(ok[split:]) + split
    if len(train) < 20 or len(val) < 2:
        raise LipsyncError(f"{prepared} has only {int(ok.sum())} usable frames; personalized_2d needs at least 25 (1 s), and minutes work best.")
    audio, _ = clip.audio()
    raw = audio_windows(audio, n, clip.fps)
    audio_norm = audio_norm or AudioNorm.fit(raw[train])
    windows = audio_norm.apply(raw)[:, None]
    if not ok[ref]:
        ref = int(train[0])
    return CropData(crops=crops, windows=windows, train=train, val=val, reference=ref), audio_norm, template


def _to_tensor(crops: np.ndarray, device):
    """uint8 (B, R, R, 3) -> float (B, 3, R, R) in [0, 1]."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(crops)).to(device).permute(0, 3, 1, 2).float() / 255.0


def _masked(x, split: int):
    out = x.clone()
    out[:, :, split:] = 0.0
    return out


# ---------------------------------------------------------------------------------------------
# training

def train_2d(prepared: Path, video: Path, out: Path, *, options: Options2D, seed: int = 0, device: str = "cpu",
             progress=None) -> dict:
    """Train the 2D network on one prepared clip and its video; writes ``out`` (weights + config)
    atomically and returns the training summary."""
    import torch

    t0 = time.perf_counter()
    progress = progress or (lambda stage, done, total: None)
    device = resolve_device(device)
    data, audio_norm, template = prepare_crop_data(prepared, video, options)
    t_data = time.perf_counter() - t0
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = build_net(options).to(device)
    split = net.split
    regions = template_regions(template)
    weight = torch.from_numpy(1.0 + options.mouth_weight * regions["mouth"][split:].astype(np.float32)).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=options.lr, weight_decay=options.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=options.lr, total_steps=options.steps,
                                                pct_start=min(0.3, max(0.05, 2.5 / options.steps)))

    def loss_of(pred, target):
        return ((pred - target[:, :, split:]).abs() * weight).mean() / weight.mean()

    log: list[dict] = []
    acc, acc_n = 0.0, 0
    net.train()
    t1 = time.perf_counter()
    for step in range(1, options.steps + 1):
        idx = rng.choice(data.train, options.batch, replace=len(data.train) < options.batch)
        # a random other training frame as the reference (Wav2Lip's identity input)
        other = rng.choice(data.train, options.batch)
        clash = other == idx
        other[clash] = data.train[(np.searchsorted(data.train, idx[clash]) + 1) % len(data.train)]
        target = _to_tensor(data.crops[idx], device)
        windows = torch.from_numpy(data.windows[idx]).to(device)
        gain = (torch.rand(len(idx), 1, 1, 1, device=device) * 2 - 1) * options.audio_gain
        windows = windows + gain + options.audio_noise * torch.randn_like(windows)
        pred = net(_masked(target, split), _to_tensor(data.crops[other], device), windows)
        loss = loss_of(pred, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        acc += float(loss.detach())
        acc_n += 1
        if step % options.log_every == 0 or step == options.steps:
            log.append({"step": step, "seconds": round(time.perf_counter() - t1, 2), "train_l1": acc / acc_n})
            acc, acc_n = 0.0, 0
        progress("train personalized_2d", step, options.steps)
    t_train = time.perf_counter() - t1

    net.eval()
    ref = _to_tensor(data.crops[data.reference][None], device)
    val_sum = 0.0
    with torch.no_grad():
        for s in range(0, len(data.val), 64):
            idx = data.val[s:s + 64]
            target = _to_tensor(data.crops[idx], device)
            pred = net(_masked(target, split), ref.expand(len(idx), -1, -1, -1), torch.from_numpy(data.windows[idx]).to(device))
            val_sum += float(loss_of(pred, target)) * len(idx)
    summary = {"options": dataclasses.asdict(options), "seed": seed, "device": device, "code_version": CODE_VERSION,
               "frames_train": int(len(data.train)), "frames_val": int(len(data.val)), "val_l1": val_sum / len(data.val),
               "log": log, "seconds_data": round(t_data, 2), "seconds_train": round(t_train, 2),
               "seconds": round(time.perf_counter() - t0, 2), "reference_frame": data.reference,
               "prepared": str(Path(prepared).resolve())}
    save_2d(out, net, options, audio_norm, template, data.crops[data.reference], summary)
    return summary


def save_2d(out: Path, net, options: Options2D, audio_norm, template: CropTemplate, reference: np.ndarray,
            summary: dict) -> None:
    """``out``/model.safetensors (net.* weights, the template, the reference crop) and config.json,
    written into a temporary sibling folder and renamed into place."""
    import torch
    from safetensors.torch import save_file

    out = Path(out)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors = {f"net.{k}": v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    tensors["template"] = torch.from_numpy(np.ascontiguousarray(template.points, np.float32))
    tensors["reference"] = torch.from_numpy(np.ascontiguousarray(reference, np.uint8))
    save_file(tensors, str(tmp / WEIGHTS))
    config = {"format": "personalized_2d", "code_version": CODE_VERSION, "options": dataclasses.asdict(options),
              "audio_norm": audio_norm.to_dict(), "training": summary}
    (tmp / CONFIG).write_text(json.dumps(config, indent=2))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


@dataclass
class Model2D:
    """A trained 2D network ready to render: ``net`` (eval mode), its options, audio
    normalization, crop template (R x R) and render-time reference crop uint8 (R, R, 3)."""
    net: object
    options: Options2D
    audio_norm: object
    template: CropTemplate
    reference: np.ndarray
    config: dict


def load_2d(folder: Path, *, device: str = "cpu") -> Model2D:
    from safetensors.torch import load_file

    from lipsync.audio_features import AudioNorm

    folder = Path(folder)
    try:
        config = json.loads((folder / CONFIG).read_text())
        tensors = load_file(str(folder / WEIGHTS))
        options = Options2D(**config["options"])
    except Exception as err:  # noqa: BLE001 - damaged cache: say which folder to delete
        raise LipsyncError(f"the cached personalized_2d model in {folder} is unreadable ({type(err).__name__}); delete the folder and run again.") from None
    net = build_net(options)
    net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
    net.to(device).eval()
    template = CropTemplate(points=tensors["template"].numpy(), size=options.size)
    return Model2D(net=net, options=options, audio_norm=AudioNorm.from_dict(config["audio_norm"]), template=template,
                   reference=tensors["reference"].numpy(), config=config)


# ---------------------------------------------------------------------------------------------
# rendering

def render_2d(model: Model2D, clip: TestClip, audio: Path, out: Path, *, device: str = "cpu", batch: int = 32) -> dict:
    """Write ``out``: each target frame's lower face inpainted from ``audio`` and pasted back."""
    import torch

    from lipsync.audio_features import audio_windows, frames_for_audio
    from lipsync.media import load_audio
    from lipsync.prepared import open_prepared
    from lipsync.media import VideoWriter

    from ..core import read_video
    from .face2d import paste_back

    t0 = time.perf_counter()
    speech = load_audio(audio)
    n = frames_for_audio(len(speech), clip.fps)
    if n < 1:
        raise LipsyncError(f"{audio} is shorter than one video frame; give at least {1000 / clip.fps:.0f} ms of speech.")
    windows = model.audio_norm.apply(audio_windows(speech, n, clip.fps))[:, None]
    target = open_prepared(clip.prepared)
    mats = crop_transforms(np.array(target.array("landmarks"), np.float32), np.array(target.array("valid")), model.template)
    schedule = ping_pong(n, clip.frames)
    split = model.net.split
    mask = blend_mask(model.template)
    mask[:split] = 0.0  # only the predicted rows are pasted
    net = model.net.to(device).eval()
    ref = _to_tensor(model.reference[None], device)
    size = model.template.size
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="p2d-render-", dir=out.parent) as tmp:
        frames = read_video(clip.video, Path(tmp))
        with VideoWriter(out, clip.width, clip.height, clip.fps, Path(audio), crf=EVAL_CRF) as writer:
            for s in range(0, n, batch):
                ks = np.minimum(schedule[s:s + batch], len(frames) - 1)
                ok = np.array([k < len(mats) and np.isfinite(mats[k]).all() for k in ks])
                crops = np.stack([warp_crop(frames[k], mats[k], size) if o else np.zeros((size, size, 3), np.uint8)
                                  for k, o in zip(ks, ok)])
                with torch.no_grad():
                    x = _to_tensor(crops, device)
                    lower = net(_masked(x, split), ref.expand(len(ks), -1, -1, -1),
                                torch.from_numpy(windows[s:s + batch]).to(device))
                x[:, :, split:] = lower
                pred = (x.permute(0, 2, 3, 1).cpu().numpy() * 255.0)
                for j, k in enumerate(ks):
                    writer.write(paste_back(frames[k], pred[j], mats[k], mask) if ok[j] else frames[k])
    seconds = time.perf_counter() - t0
    return {"frames": n, "seconds": round(seconds, 3), "frames_per_second": round(n / max(seconds, 1e-9), 2)}


# ---------------------------------------------------------------------------------------------

@register
class Personalized2D(Method):
    name = "personalized_2d"
    description = ("Wav2Lip-style 2D inpainting baseline trained from scratch on the training video "
                   "(aligned 2D crops, lower half from audio; L1 only, no GAN or SyncNet expert)")
    trainable = True

    def __init__(self, ctx: RunContext):
        super().__init__(ctx)
        self._model: Model2D | None = None

    def check(self) -> None:
        options_for(self.ctx.preset)
        if not (Path(self.ctx.train_prepared) / "manifest.json").is_file():
            raise Unavailable(f"the training clip {self.ctx.train_prepared} is not prepared (no manifest.json).")
        if not Path(self.ctx.train_video).is_file():
            raise Unavailable(f"the training video {self.ctx.train_video} does not exist.")

    def model_dir(self) -> Path:
        ctx = self.ctx
        options = options_for(ctx.preset)
        key = content_key(Path(ctx.train_prepared) / "manifest.json", ctx.preset, dataclasses.asdict(options),
                          ctx.seed, CODE_VERSION)
        return Path(ctx.cache) / f"personalized_2d-{key}"

    def fit(self) -> dict:
        self.check()
        folder = self.model_dir()
        device = resolve_device(self.ctx.device)
        cached = (folder / WEIGHTS).is_file() and (folder / CONFIG).is_file()
        if not cached:
            train_2d(Path(self.ctx.train_prepared), Path(self.ctx.train_video), folder,
                     options=options_for(self.ctx.preset), seed=self.ctx.seed, device=device, progress=self.ctx.progress)
        self._model = load_2d(folder, device=device)
        t = self._model.config["training"]
        return {"cached": cached, "seconds": t["seconds"], "steps": t["options"]["steps"], "val_l1": t["val_l1"],
                "device": t["device"], "model": str(folder)}

    def render(self, clip: TestClip, audio: Path, out: Path) -> dict:
        if self._model is None:
            self.fit()
        return render_2d(self._model, clip, audio, out, device=resolve_device(self.ctx.device))
