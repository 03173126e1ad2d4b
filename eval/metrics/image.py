"""Image fidelity of the face region against the ground truth: PSNR, SSIM and LPIPS.

Every metric here compares output frame i with reference frame i inside ``face_box[i]`` (the
face's bounding box from the ground truth's tracking), the same pixels in both, and averages the
per-frame values over the frames where the ground truth has a tracked face and the box holds at
least ``MIN_CROP`` pixels each way. Frames that do not qualify are NaN in ``per_frame``.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from ..core import MetricValue, Sample, Unavailable
from . import Metric, register, torch_hub_checkpoints

MIN_CROP = 32            # pixels: smaller face boxes are skipped (AlexNet needs ~31 px; SSIM 11)
PSNR_CAP_DB = 100.0      # identical crops have infinite PSNR; each frame is capped here
DATA_RANGE = 255.0       # uint8 images
SSIM_SIGMA = 1.5         # Gaussian window of Wang et al. (2004)
SSIM_RADIUS = 5          # 11x11 window: the kernel truncated at 3.5 sigma, as skimage does
SSIM_K1, SSIM_K2 = 0.01, 0.03
ALEXNET_FILE = "alexnet-owt-7be5be79.pth"  # torchvision's AlexNet ImageNet weights


# ---------------------------------------------------------------------------------------------
# crops

def clip_box(box, height: int, width: int, *, min_size: int = MIN_CROP) -> tuple[int, int, int, int] | None:
    """``box`` (x0, y0, x1, y1) clipped to the image; None if not finite or smaller than ``min_size``."""
    b = np.asarray(box, np.float64)
    if b.shape != (4,) or not np.isfinite(b).all():
        return None
    x0, y0 = int(max(0, np.floor(b[0]))), int(max(0, np.floor(b[1])))
    x1, y1 = int(min(width, np.ceil(b[2]))), int(min(height, np.ceil(b[3])))
    if x1 - x0 < min_size or y1 - y0 < min_size:
        return None
    return x0, y0, x1, y1


def paired_crops(sample: Sample, *, boxes: np.ndarray | None = None, min_size: int = MIN_CROP):
    """Yield ``(i, output_crop, reference_crop)`` uint8 (h, w, 3) for every frame that can be compared.

    Frames are compared up to the shorter of output and reference; frames where the ground truth
    has no tracked face (``sample.valid``) or whose box is too small are skipped.
    """
    if sample.reference is None:
        raise Unavailable("this metric needs ground-truth frames, which cross-audio runs do not have")
    boxes = sample.face_box if boxes is None else boxes
    n = min(len(sample.frames), len(sample.reference), len(boxes))
    h, w = sample.frames.shape[1:3]
    for i in range(n):
        if not bool(sample.valid[i]):
            continue
        b = clip_box(boxes[i], h, w, min_size=min_size)
        if b is None:
            continue
        x0, y0, x1, y1 = b
        yield i, np.asarray(sample.frames[i, y0:y1, x0:x1]), np.asarray(sample.reference[i, y0:y1, x0:x1])


def per_frame_value(sample: Sample, fn) -> MetricValue:
    """Apply ``fn(output_crop, reference_crop) -> float`` to every comparable frame; the clip value
    is the mean over those frames (NaN with a reason when there are none)."""
    if sample.reference is None:
        raise Unavailable("this metric needs ground-truth frames, which cross-audio runs do not have")
    n = min(len(sample.frames), len(sample.reference))
    values = np.full(n, np.nan)
    for i, out, ref in paired_crops(sample):
        values[i] = fn(out, ref)
    used = int(np.isfinite(values).sum())
    extra = {"frames_used": used, "frames": n}
    if len(sample.frames) != len(sample.reference):
        extra["length_mismatch"] = [len(sample.frames), len(sample.reference)]
    if used == 0:
        return MetricValue(float("nan"), values, {**extra, "reason": "no frame with a tracked face of at least "
                                                 f"{MIN_CROP} px in the ground truth"})
    return MetricValue(float(np.nanmean(values)), values, extra)


# ---------------------------------------------------------------------------------------------
# PSNR

def psnr(a: np.ndarray, b: np.ndarray, *, cap: float = PSNR_CAP_DB) -> float:
    """PSNR in dB of two uint8 images of the same shape (peak 255, MSE over all pixels and channels),
    capped at ``cap`` so identical images give ``cap`` rather than infinity."""
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    if mse <= 0:
        return float(cap)
    return float(min(cap, 10.0 * np.log10(DATA_RANGE ** 2 / mse)))


def compute_psnr(sample: Sample, settings: dict) -> MetricValue:
    return per_frame_value(sample, psnr)


# ---------------------------------------------------------------------------------------------
# SSIM

def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM (Wang et al. 2004) of two uint8 RGB (or grey) images of the same shape.

    Gaussian-weighted 11x11 window (sigma 1.5), K1 = 0.01, K2 = 0.03, data range 255, population
    (co)variances; computed on each RGB channel and averaged over channels and over the pixels at
    least 5 px from the border (where the window fits). This is what
    ``skimage.metrics.structural_similarity(a, b, channel_axis=-1, data_range=255,
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False)`` computes, but ~10x faster.
    """
    import cv2

    x = np.asarray(a, np.float64)
    y = np.asarray(b, np.float64)
    if x.shape != y.shape:
        raise ValueError(f"ssim: shapes {x.shape} and {y.shape} differ")
    k = 2 * SSIM_RADIUS + 1

    def blur(z):
        return cv2.GaussianBlur(z, (k, k), SSIM_SIGMA, sigmaY=SSIM_SIGMA, borderType=cv2.BORDER_REFLECT)

    c1, c2 = (SSIM_K1 * DATA_RANGE) ** 2, (SSIM_K2 * DATA_RANGE) ** 2
    mx, my = blur(x), blur(y)
    vx = blur(x * x) - mx * mx
    vy = blur(y * y) - my * my
    cxy = blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    r = SSIM_RADIUS
    return float(s[r:-r, r:-r].mean())


def compute_ssim(sample: Sample, settings: dict) -> MetricValue:
    return per_frame_value(sample, ssim)


# ---------------------------------------------------------------------------------------------
# LPIPS

def lpips_weights_path(settings: dict) -> Path:
    given = settings.get("lpips_weights")
    return Path(given).expanduser() if given else torch_hub_checkpoints() / ALEXNET_FILE


def check_lpips(settings: dict) -> str | None:
    path = lpips_weights_path(settings)
    if not path.is_file():
        where = "given as lpips_weights" if settings.get("lpips_weights") else "in $TORCH_HOME/hub/checkpoints"
        return (f"LPIPS needs torchvision's AlexNet ImageNet weights ({ALEXNET_FILE}), not found {where} "
                f"({path}); put the file there or pass its path as lpips_weights.")
    try:
        load_lpips(str(path), str(settings.get("device") or "cpu"))
    except Unavailable as err:
        return str(err)
    return None


@lru_cache(maxsize=2)
def load_lpips(weights: str, device: str = "cpu"):
    """``lpips.LPIPS(net='alex')`` with its backbone loaded from ``weights`` (a torchvision AlexNet
    state dict) and its linear layers from the lpips wheel; never downloads anything.

    The model is built with a random backbone (``pnet_rand=True``, so torchvision is never asked
    for pretrained weights) whose parameters are then all replaced, strictly, by the file's
    ``features.*`` tensors. Raises ``Unavailable`` if a file does not fit.
    """
    import warnings

    try:
        import lpips
        import torch
    except ImportError as err:
        raise Unavailable(f"LPIPS needs the lpips package ({err}); install it with 'pip install lpips'.") from None
    with warnings.catch_warnings():  # torchvision's notice about lpips's use of the old pretrained= argument
        warnings.simplefilter("ignore")
        model = lpips.LPIPS(net="alex", pretrained=False, pnet_rand=True, verbose=False)
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user error
        raise Unavailable(f"LPIPS weights {weights} could not be read ({type(err).__name__}); give torchvision's {ALEXNET_FILE}.") from None
    features = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")} if isinstance(state, dict) else {}
    backbone = model.net.state_dict()  # keys like "slice2.3.weight": slice, then the index in alexnet.features
    mapped = {k: features.get(k.split(".", 1)[1]) for k in backbone}
    bad = [k for k, v in mapped.items() if v is None or tuple(v.shape) != tuple(backbone[k].shape)]
    unused = set(features) - {k.split(".", 1)[1] for k in backbone}
    if bad or unused:
        raise Unavailable(f"{weights} is not a torchvision AlexNet state dict (features {sorted(bad or unused)[:3]} do not fit); "
                          f"give torchvision's {ALEXNET_FILE}.")
    model.net.load_state_dict(mapped, strict=True)
    # lpips's own calibrated linear layers, shipped in the wheel
    lin_path = Path(lpips.__file__).parent / "weights" / "v0.1" / "alex.pth"
    lin = torch.load(lin_path, map_location="cpu", weights_only=True)
    result = model.load_state_dict(lin, strict=False)
    expected = {f"lin{i}.model.1.weight" for i in range(5)}
    if result.unexpected_keys or set(lin) != expected:
        raise Unavailable(f"the lpips package's linear weights ({lin_path}) do not fit its AlexNet model; reinstall lpips.")
    return model.eval().to(device)


def lpips_distance(model, a: np.ndarray, b: np.ndarray, device: str = "cpu") -> float:
    """LPIPS of two uint8 RGB images (h, w, 3) of the same shape, at their own size."""
    import torch

    def tensor(x):
        return torch.from_numpy(np.ascontiguousarray(x)).to(device).permute(2, 0, 1)[None].float() / 127.5 - 1.0

    with torch.no_grad():
        return float(model(tensor(a), tensor(b)).item())


def compute_lpips(sample: Sample, settings: dict) -> MetricValue:
    reason = check_lpips(settings)
    if reason:
        raise Unavailable(reason)
    device = str(settings.get("device") or "cpu")
    model = load_lpips(str(lpips_weights_path(settings)), device)
    return per_frame_value(sample, lambda a, b: lpips_distance(model, a, b, device))


register(Metric(
    name="psnr", better="higher", needs_reference=True, unit="dB",
    description="Peak signal-to-noise ratio of the face region against the ground truth, per frame (capped at 100 dB for identical frames) and averaged.",
    requires="nothing", compute=compute_psnr))
register(Metric(
    name="ssim", better="higher", needs_reference=True, unit="",
    description="Structural similarity (Gaussian 11x11 window, RGB channels averaged) of the face region against the ground truth, averaged over frames.",
    requires="nothing", compute=compute_ssim))
register(Metric(
    name="lpips", better="lower", needs_reference=True, unit="",
    description="Learned perceptual distance (LPIPS v0.1, AlexNet) of the face region to the ground truth, averaged over frames.",
    requires=f"torchvision AlexNet ImageNet weights ({ALEXNET_FILE}) and the lpips package",
    compute=compute_lpips, check=check_lpips))
