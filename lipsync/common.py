"""Small shared helpers: the user-facing error type, shape checks, device resolution, and the rule
for handing user input to external programs.

External programs (ffmpeg, ffprobe, espeak-ng) are always started with an argument list, never
through a shell, and user input never becomes one of their options: file paths go through
``path_arg`` (absolute, so never ``-...`` nor ``proto:...``), and free text goes after a ``--``
that ends the program's options.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# How long-running steps report progress: progress(stage, done, total), e.g. ("track", 250, 1800).
Progress = Callable[[str, int, int], None]


class LipsyncError(Exception):
    """An expected failure caused by the user's input or environment.

    The CLI prints ``str(err)`` as one sentence and exits non-zero, without a traceback.
    The message should say what is wrong and what to do about it.
    """


def path_arg(path: str | os.PathLike) -> str:
    """A file path as a command-line argument for ffmpeg, ffprobe and the like.

    The path is made absolute, so it starts with ``/``: a file named ``-f`` or ``-y.mp4`` cannot be
    read as an option, and one named ``concat:a|b`` or ``http:...`` cannot select an ffmpeg protocol
    (ffmpeg only looks for a protocol name before the first ``/``).
    """
    return os.fspath(Path(path).absolute())


def check_shape(name: str, array, dims: Sequence[int | str | None]) -> dict[str, int]:
    """Check that ``array`` has ``len(dims)`` axes; integer entries must match exactly.

    String entries name a dimension (``"T"``, ``"V"``...) and must be consistent across one call;
    ``None`` matches anything. Returns the named sizes, e.g. ``{"T": 75, "V": 468}``.

    Modelled on kornia's ``KORNIA_CHECK_SHAPE``; raises ``ValueError`` (a programming error, not a
    user error).
    """
    shape = tuple(array.shape)
    if len(shape) != len(dims):
        raise ValueError(f"{name}: expected {len(dims)} axes {tuple(dims)}, got shape {shape}")
    named: dict[str, int] = {}
    for size, want in zip(shape, dims):
        if want is None:
            continue
        if isinstance(want, str):
            if named.setdefault(want, size) != size:
                raise ValueError(f"{name}: dimension {want} is inconsistent in shape {shape} for {tuple(dims)}")
        elif size != want:
            raise ValueError(f"{name}: expected shape {tuple(dims)}, got {shape}")
    return named


def resolve_device(device: str | None = None) -> str:
    """``None``/``"auto"`` -> ``"cuda"`` when a CUDA device is usable, else ``"cpu"``."""
    if device not in (None, "auto"):
        return device
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def setup_cache_env(root: Path | None = None) -> None:
    """Point the caches of heavy libraries at an ignored project folder unless the user set them.

    Keeps numba's JIT cache, matplotlib's font cache and gradio's temp files out of $HOME and /tmp.
    """
    base = Path(os.environ.get("LIPSYNC_CACHE_DIR", (root or PROJECT_ROOT) / ".cache"))
    for var, sub in (("NUMBA_CACHE_DIR", "numba"), ("MPLCONFIGDIR", "matplotlib"),
                     ("GRADIO_TEMP_DIR", "gradio"), ("TORCH_HOME", "torch")):
        if var not in os.environ:
            path = base / sub
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError:
                continue
            os.environ[var] = str(path)
    # MediaPipe/absl/TensorFlow Lite log noise on stderr is not useful to our users.
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
