"""Realism and stability of the output judged against the real frames under it (``Sample.target``,
always present, so none of these needs a ground truth for the audio): mouth sharpness, temporal
flicker of the face, and FID of face crops (set level).
"""
from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..core import MetricValue, Sample, Unavailable
from . import Metric, register, torch_hub_checkpoints
from .image import clip_box

MIN_MOUTH = 8            # pixels: smaller mouth boxes are skipped
MIN_FACE = 16            # pixels: smaller face boxes are skipped (flicker)
MIN_TEXTURE = 1e-3       # Laplacian variance below this is a flat patch: its ratio is meaningless
MIN_MOTION = 1e-3        # mean |second difference| below this in the target: the ratio is meaningless
INCEPTION_SIZE = 299     # Inception-v3 input size
FID_DIMS = 2048          # pool features
TORCHVISION_INCEPTION = "inception_v3_google-0cc3c7bd.pth"
PYTORCH_FID_INCEPTION = "pt_inception-2015-12-05-6726825d.pth"


# ---------------------------------------------------------------------------------------------
# sharpness

def laplacian_variance(image: np.ndarray) -> float:
    """Variance of the Laplacian of an RGB (or grey) uint8 image's luminance."""
    import cv2

    img = np.asarray(image)
    grey = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY) if img.ndim == 3 else img
    return float(cv2.Laplacian(grey, cv2.CV_64F, ksize=3).var())


def sharpness_ratios(frames: np.ndarray, target: np.ndarray, boxes: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per-frame Laplacian variance of the output's mouth box over the target's: float64 (T,),
    NaN where the frame has no tracked face, the box is too small or the target patch is flat."""
    n = min(len(frames), len(target), len(boxes))
    h, w = frames.shape[1:3]
    out = np.full(n, np.nan)
    for i in range(n):
        if not bool(valid[i]):
            continue
        b = clip_box(boxes[i], h, w, min_size=MIN_MOUTH)
        if b is None:
            continue
        x0, y0, x1, y1 = b
        real = laplacian_variance(target[i, y0:y1, x0:x1])
        if real > MIN_TEXTURE:
            out[i] = laplacian_variance(frames[i, y0:y1, x0:x1]) / real
    return out


def compute_sharpness(sample: Sample, settings: dict) -> MetricValue:
    per = sharpness_ratios(sample.frames, sample.target, sample.mouth_box, sample.valid)
    extra = {"frames": len(per), "frames_used": int(np.isfinite(per).sum())}
    if not np.isfinite(per).any():
        return MetricValue(float("nan"), per, {**extra, "reason": "no frame with a tracked, textured mouth in the target"})
    return MetricValue(float(np.nanmean(per)), per, extra)


# ---------------------------------------------------------------------------------------------
# flicker

def consecutive_triples(target: np.ndarray) -> np.ndarray:
    """bool (T,): frame t is the middle of three target frames that are consecutive in the clip.

    The output is laid over the clip ping-pong (``lipsync.synthesis.ping_pong``): where the schedule
    turns round, frames t-1 and t+1 are the same clip frame, pixel for pixel, and the triple is not
    a piece of real motion. First and last frames have no triple.
    """
    n = len(target)
    ok = np.zeros(n, bool)
    for t in range(1, n - 1):
        ok[t] = not np.array_equal(target[t - 1], target[t + 1])
    return ok


def second_differences(frames: np.ndarray, boxes: np.ndarray, use: np.ndarray) -> np.ndarray:
    """Mean |x_t - (x_{t-1} + x_{t+1}) / 2| over the pixels of ``boxes[t]`` (all channels): (T,), NaN where not ``use``."""
    n = len(use)
    h, w = frames.shape[1:3]
    out = np.full(n, np.nan)
    for t in np.flatnonzero(use):
        b = clip_box(boxes[t], h, w, min_size=MIN_FACE)
        if b is None:
            continue
        x0, y0, x1, y1 = b
        a, c, d = (np.asarray(frames[k, y0:y1, x0:x1], np.float32) for k in (t - 1, t, t + 1))
        out[t] = float(np.abs(c - 0.5 * (a + d)).mean())
    return out


def flicker(frames: np.ndarray, target: np.ndarray, boxes: np.ndarray, valid: np.ndarray):
    """Temporal jitter of the output's face region relative to the real video's.

    Returns ``(ratio, per_frame, used)``: ratio = mean second difference of the output over that of
    the target, over frames t where t-1, t, t+1 are consecutive in the clip and the face is
    tracked in all three (both measured in frame t's face box); per_frame = each frame's output
    second difference over the target's mean, so its mean is the ratio. 1 = as steady as the
    real video, < 1 smoother (e.g. a frozen face), > 1 more flicker.
    """
    n = min(len(frames), len(target), len(boxes))
    valid = np.asarray(valid[:n], bool)
    use = consecutive_triples(target[:n])
    use[1:-1] &= valid[:-2] & valid[1:-1] & valid[2:]
    d_out = second_differences(frames[:n], boxes, use)
    d_tgt = second_differences(target[:n], boxes, use)
    ok = np.isfinite(d_out) & np.isfinite(d_tgt)
    if not ok.any():
        return float("nan"), np.full(n, np.nan), 0
    base = float(d_tgt[ok].mean())
    if base < MIN_MOTION:
        return float("nan"), np.full(n, np.nan), int(ok.sum())
    per = np.where(ok, d_out / base, np.nan)
    return float(d_out[ok].mean() / base), per, int(ok.sum())


def compute_flicker(sample: Sample, settings: dict) -> MetricValue:
    ratio, per, used = flicker(sample.frames, sample.target, sample.face_box, sample.valid)
    extra = {"frames": len(per), "frames_used": used}
    if not np.isfinite(ratio):
        why = "no three consecutive frames with a tracked face" if used == 0 else "the real video does not move"
        return MetricValue(float("nan"), per, {**extra, "reason": why})
    return MetricValue(ratio, per, extra)


# ---------------------------------------------------------------------------------------------
# FID

def frechet_distance(a: np.ndarray, b: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Frechet distance between Gaussians fitted to feature sets a (N, D) and b (N', D).

    ||mu_a - mu_b||^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2)), with unbiased covariances
    (N-1). The last trace equals the nuclear norm of F_a^T F_b for any factors S = F F^T; with
    the centred features as factors (F_a = X_a^T / sqrt(N-1)) that is an N x N' SVD instead of a
    D x D matrix square root: exact, and fast when there are fewer samples than dimensions.

    ``weights`` (N,), for paired sets only (N = N'): integer multiplicities of the rows, exactly
    as if each row were repeated that many times (a bootstrap resample without the copies).
    """
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    wa = np.ones(len(a)) if weights is None else np.asarray(weights, np.float64)
    wb = np.ones(len(b)) if weights is None else wa
    if wa.sum() < 2 or wb.sum() < 2 or a.shape[1] != b.shape[1] or len(wa) != len(a) or len(wb) != len(b):
        raise ValueError(f"frechet_distance: need two sets of >= 2 samples of the same dimension, got {a.shape} and {b.shape}")
    mu_a, mu_b = wa @ a / wa.sum(), wb @ b / wb.sum()
    xa = (a - mu_a) * np.sqrt(wa / (wa.sum() - 1))[:, None]
    xb = (b - mu_b) * np.sqrt(wb / (wb.sum() - 1))[:, None]
    if min(len(a), len(b)) > a.shape[1]:  # more samples than dimensions: factor the D x D covariances
        xa, xb = _psd_factor(xa.T @ xa).T, _psd_factor(xb.T @ xb).T
    cross = np.linalg.svd(xa @ xb.T, compute_uv=False).sum()
    mean = float(((mu_a - mu_b) ** 2).sum())
    return float(max(0.0, mean + (xa ** 2).sum() + (xb ** 2).sum() - 2.0 * cross))


def _psd_factor(cov: np.ndarray) -> np.ndarray:
    """F with F F^T = cov for a symmetric positive semi-definite matrix (D, D)."""
    w, v = np.linalg.eigh(cov)
    return v * np.sqrt(np.clip(w, 0, None))[None]


def inception_weights_path(settings: dict) -> Path | None:
    given = settings.get("inception_weights")
    if given:
        return Path(given).expanduser()
    for name in (PYTORCH_FID_INCEPTION, TORCHVISION_INCEPTION):
        p = torch_hub_checkpoints() / name
        if p.is_file():
            return p
    return None


def check_fid(settings: dict) -> str | None:
    path = inception_weights_path(settings)
    if path is None:
        return (f"FID needs Inception-v3 weights ({TORCHVISION_INCEPTION} from torchvision or {PYTORCH_FID_INCEPTION} "
                "from pytorch-fid), none given or in $TORCH_HOME/hub/checkpoints; pass the file as inception_weights.")
    if not path.is_file():
        return (f"the Inception-v3 weights {path} (inception_weights) do not exist; "
                f"pass the path of {TORCHVISION_INCEPTION} or {PYTORCH_FID_INCEPTION}.")
    try:
        load_inception(str(path), str(settings.get("device") or "cpu"))
    except Unavailable as err:
        return str(err)
    return None


@lru_cache(maxsize=1)
def load_inception(weights: str, device: str = "cpu"):
    """An Inception-v3 feature extractor: a function uint8 (N, 299, 299, 3) -> float64 (N, 2048).

    Accepts (by the shape of ``fc.weight``):
    * torchvision's ImageNet state dict (1000 classes, e.g. ``inception_v3_google-0cc3c7bd.pth``),
      loaded strictly into ``torchvision.models.inception_v3(weights=None)``; its FID values are
      comparable between our runs but not with published numbers;
    * pytorch-fid's TF-ported weights (1008 classes, ``pt_inception-2015-12-05-6726825d.pth``),
      the standard for published FIDs; needs the ``pytorch-fid`` package for its modified blocks.
    Inputs are scaled to [-1, 1], which both networks expect. Raises ``Unavailable``.
    """
    try:
        import torch
    except ImportError as err:  # pragma: no cover - torch is a hard dependency
        raise Unavailable(f"FID needs torch ({err}).") from None
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user error
        raise Unavailable(f"the Inception-v3 weights {weights} could not be read ({type(err).__name__}); "
                          f"give {TORCHVISION_INCEPTION} or {PYTORCH_FID_INCEPTION}.") from None
    classes = int(state["fc.weight"].shape[0]) if isinstance(state, dict) and "fc.weight" in state else None
    if classes == 1000:
        net = _torchvision_inception(state, weights)
    elif classes == 1008:
        net = _pytorch_fid_inception(state, weights)
    else:
        raise Unavailable(f"{weights} is not an Inception-v3 state dict from torchvision or pytorch-fid; "
                          f"give {TORCHVISION_INCEPTION} or {PYTORCH_FID_INCEPTION}.")
    net = net.eval().to(device)

    def features(images: np.ndarray, batch: int = 16) -> np.ndarray:
        out = [np.zeros((0, FID_DIMS))]
        for i in range(0, len(images), batch):
            chunk = np.ascontiguousarray(images[i:i + batch])
            x = torch.from_numpy(chunk).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1.0
            with torch.no_grad():
                out.append(net(x).reshape(len(chunk), -1).double().cpu().numpy())
        return np.concatenate(out)

    return features


def _torchvision_inception(state: dict, weights: str):
    import torch
    from torchvision.models import inception_v3

    aux = any(k.startswith("AuxLogits.") for k in state)
    net = inception_v3(weights=None, aux_logits=aux, init_weights=False, transform_input=False)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise Unavailable(f"{weights} does not fit torchvision's Inception-v3 ({str(err).splitlines()[0][:120]}).") from None
    net.fc = torch.nn.Identity()  # the 2048-d pool features
    return net


def _pytorch_fid_inception(state: dict, weights: str):
    from unittest import mock

    try:
        from pytorch_fid import inception as pfi
    except ImportError:
        raise Unavailable(f"{weights} holds pytorch-fid's Inception weights, which need the pytorch-fid package; "
                          f"install it with 'pip install pytorch-fid' or give torchvision's {TORCHVISION_INCEPTION}.") from None
    import torch

    # pytorch-fid builds its modified network and then fetches the weights from a URL: hand it ours
    # instead, so nothing is downloaded; its load is strict.
    try:
        with mock.patch.object(pfi, "load_state_dict_from_url", lambda *a, **k: state):
            model = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[FID_DIMS]], resize_input=False,
                                    normalize_input=False, use_fid_inception=True)
    except RuntimeError as err:
        raise Unavailable(f"{weights} does not fit pytorch-fid's Inception-v3 ({str(err).splitlines()[0][:120]}).") from None

    class FirstBlock(torch.nn.Module):
        """pytorch-fid's InceptionV3 returns a list of the requested blocks; we asked for one."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x)[0]

    return FirstBlock(model)


def face_crops_for_fid(frames: np.ndarray, boxes: np.ndarray, index: np.ndarray) -> np.ndarray:
    """The face crops of ``frames[index]`` resized to 299 x 299: uint8 (N, 299, 299, 3)."""
    import cv2

    h, w = frames.shape[1:3]
    out = []
    for i in index:
        b = clip_box(boxes[i], h, w, min_size=MIN_FACE)
        x0, y0, x1, y1 = b
        out.append(cv2.resize(np.ascontiguousarray(frames[i, y0:y1, x0:x1]), (INCEPTION_SIZE, INCEPTION_SIZE),
                              interpolation=cv2.INTER_LINEAR))
    return np.stack(out) if out else np.zeros((0, INCEPTION_SIZE, INCEPTION_SIZE, 3), np.uint8)


def fid_frame_index(valid: np.ndarray, boxes: np.ndarray, shape: tuple, count: int) -> np.ndarray:
    """Up to ``count`` evenly spaced frames with a tracked face and a usable box."""
    h, w = shape
    ok = np.array([bool(valid[i]) and clip_box(boxes[i], h, w, min_size=MIN_FACE) is not None for i in range(len(boxes))])
    idx = np.flatnonzero(ok)
    if len(idx) > count:
        idx = idx[np.round(np.linspace(0, len(idx) - 1, count)).astype(int)]
    return idx


_target_features: dict[str, np.ndarray] = {}


def compute_fid(sample: Sample, settings: dict) -> MetricValue:
    """Inception features of the output's and the target's face crops on the same frames, saved
    in ``sample.workdir/fid``; the clip value is the FID of this clip alone (few samples: biased
    upwards, only a rough guide), the method's value comes from ``aggregate_fid`` over all clips."""
    from .lipsync import frames_key

    reason = check_fid(settings)
    if reason:
        raise Unavailable(reason)
    path = inception_weights_path(settings)
    extract = load_inception(str(path), str(settings.get("device") or "cpu"))
    n = min(len(sample.frames), len(sample.target), len(sample.face_box))
    idx = fid_frame_index(sample.valid[:n], sample.face_box[:n], sample.frames.shape[1:3], int(settings.get("fid_frames") or 25))
    if len(idx) < 2:
        return MetricValue(float("nan"), None, {"reason": "fewer than 2 frames with a tracked face", "frames_used": len(idx)})
    out_feat = extract(face_crops_for_fid(sample.frames, sample.face_box, idx))
    tgt_crops = face_crops_for_fid(sample.target, sample.face_box, idx)
    key = f"{path}:{frames_key(tgt_crops)}"
    if key not in _target_features:  # the same real frames under every method's output
        _target_features[key] = extract(tgt_crops)
    tgt_feat = _target_features[key]
    folder = Path(sample.workdir) / "fid"
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(out_feat.astype(np.float32).tobytes() + tgt_feat.astype(np.float32).tobytes()).hexdigest()[:16]
    file = folder / f"features-{digest}.npz"
    np.savez(file, output=out_feat.astype(np.float32), target=tgt_feat.astype(np.float32))
    return MetricValue(frechet_distance(out_feat, tgt_feat), None, {"features": str(file), "frames_used": len(idx)})


@lru_cache(maxsize=512)
def _load_features(path: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as z:
        return z["output"], z["target"]


def aggregate_fid(values: list[MetricValue], rng: np.random.Generator | None = None) -> float:
    """FID between the output and the target face crops of all the clips in ``values`` pooled.
    A clip listed k times (a bootstrap resample) counts k times, as row weights rather than
    copies. ``rng`` is unused: the value is deterministic."""
    counts: dict[str, int] = {}
    for v in values:
        f = v.extra.get("features") if v.extra else None
        if f is not None and np.isfinite(v.value):
            counts[str(f)] = counts.get(str(f), 0) + 1
    if not counts:
        return float("nan")
    loaded = [_load_features(f) for f in counts]
    a = np.concatenate([o for o, _ in loaded])
    b = np.concatenate([t for _, t in loaded])
    w = np.concatenate([np.full(len(o), c, np.float64) for (o, _), c in zip(loaded, counts.values())])
    if w.sum() < 2:
        return float("nan")
    return frechet_distance(a, b, w)


register(Metric(
    name="sharpness", better="higher", needs_reference=False, unit="ratio to real",
    description="Variance of the Laplacian of the output's mouth region over that of the real frame under it, averaged over frames; 1 = as sharp as the real video.",
    requires="nothing", compute=compute_sharpness))
register(Metric(
    name="flicker", better="lower", needs_reference=False, unit="ratio to real",
    description="Mean absolute second temporal difference of the face region of the output over that of the real video under it; 1 = as steady as the real video, below 1 smoother.",
    requires="nothing", compute=compute_flicker))
register(Metric(
    name="fid", better="lower", needs_reference=False, unit="",
    description="Frechet distance between Inception-v3 pool features of the output's face crops and of the real face crops under them, over all clips of a method (up to 25 frames a clip).",
    requires=f"Inception-v3 weights ({TORCHVISION_INCEPTION} or pytorch-fid's {PYTORCH_FID_INCEPTION})",
    compute=compute_fid, check=check_fid, aggregate=aggregate_fid))
