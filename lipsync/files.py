"""Files that a reader never sees half-written, and the content hashes that name cached results.

- ``atomic_file(path)``: a temporary path beside ``path`` that replaces it when the block succeeds.
- ``atomic_write_bytes`` / ``atomic_write_text``: the same for data in memory, with one-sentence
  errors for paths that cannot be written.
- ``atomic_output(folder)``: a whole output folder, built beside its final name and renamed into
  place (an existing one is replaced only when ``overwrite`` and it is one of ours).
- ``file_digest`` / ``content_key``: short stable hashes of a file's bytes and of settings, used
  as the names of cached models, renders and metrics (by eval, the demo and the rating studies).
- ``FrameArray``: a (T, ...) array in an ``.npy`` file, read and written a few frames at a time;
  ``frame_array``, ``read_frames``, ``map_frames``, ``read_columns``, ``write_columns`` and
  ``column_groups`` work the same on it and on an in-memory array, so whole-clip computations
  (gap filling, smoothing over time) run in bounded memory on long videos.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .common import LipsyncError


# ---------------------------------------------------------------------------------------------
# content hashes

def file_digest(path: str | os.PathLike, *, chunk: int = 1 << 20) -> str:
    """sha256 of a file's content (hex, first 16 characters)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()[:16]


def content_key(*parts) -> str:
    """A short stable hash of JSON-serializable parts (paths of existing files are hashed by content)."""
    def norm(x):
        if isinstance(x, Path):
            return {"file": file_digest(x)} if x.is_file() else {"path": str(x)}
        if isinstance(x, dict):
            return {str(k): norm(v) for k, v in sorted(x.items())}
        if isinstance(x, (list, tuple)):
            return [norm(v) for v in x]
        return x
    return hashlib.sha256(json.dumps([norm(p) for p in parts], sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# single files

@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (with the same suffix, for writers that choose the
    format by it); it replaces ``path`` when the block succeeds and is removed when it fails."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, what: str = "file") -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``.

    Missing parent folders are created (and removed again if the write fails). Raises
    ``LipsyncError`` with one sentence when the path cannot be written; nothing is left behind.
    """
    path = Path(path)
    if path.is_dir():
        raise LipsyncError(f"Cannot write the {what} {path}: it is a folder; give a file name.")
    parent = path.parent
    missing = [p for p in [parent, *parent.parents] if not p.exists()]
    try:
        parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as tmp:
            tmp.write_bytes(data)
    except OSError as err:
        for p in missing:  # deepest first
            try:
                p.rmdir()
            except OSError:
                break
        raise LipsyncError(f"Cannot write the {what} {path} ({err.strerror or err}); choose a writable file path.") from None
    return path


def atomic_write_text(path: str | os.PathLike, text: str, *, what: str = "file") -> Path:
    """``atomic_write_bytes`` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"), what=what)


# ---------------------------------------------------------------------------------------------
# whole folders

@contextmanager
def atomic_output(out: str | os.PathLike, *, overwrite: bool, marker: str, what: str) -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; rename it to ``out`` only if the block succeeds.

    An existing non-empty ``out`` is replaced only with ``overwrite`` and only when it holds
    ``marker`` (a file every such folder of ours has), so a wrong path never deletes someone's
    folder. ``what`` names the folder in messages (e.g. "prepared clip"). Temporary folders of
    earlier runs that were killed are removed; on failure nothing is left, not even the parent
    folders this call created.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise LipsyncError(f"{out} exists and is a file; choose a folder name for the {what}.")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise LipsyncError(f"{out} already exists and is not empty; choose another folder or pass --overwrite.")
        if not (out / marker).is_file():
            raise LipsyncError(f"{out} is not a {what}, so --overwrite will not replace it; choose another folder.")
    parent = out.parent
    ancestor = next((p for p in [parent, *parent.parents] if p.exists()), Path("/"))
    if not ancestor.is_dir():
        raise LipsyncError(f"Cannot write the output folder {out}: {ancestor} is a file, not a folder; choose another location.")
    created = parent if not parent.exists() else None  # removed again if we fail
    _remove_stale_partials(parent, out.name)
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = parent / f".{out.name}.partial-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    except OSError as err:
        raise LipsyncError(f"Cannot write the output folder {out} ({err.strerror or err}); choose a writable location.") from None
    try:
        yield tmp
        if out.exists():
            old = parent / f".{out.name}.old-{os.getpid()}"
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created is not None:
            _remove_empty_dirs(created, stop=ancestor)
        raise


def _remove_stale_partials(parent: Path, name: str) -> None:
    """Delete temporary folders of earlier runs that were killed (their process is gone)."""
    if not parent.is_dir():
        return
    for p in parent.glob(f".{name}.partial-*"):
        try:
            pid = int(p.name.rsplit("-", 1)[1])
            os.kill(pid, 0)  # raises if no such process
        except ProcessLookupError:
            shutil.rmtree(p, ignore_errors=True)
        except (ValueError, PermissionError):
            continue


def _remove_empty_dirs(folder: Path, *, stop: Path) -> None:
    """Remove ``folder`` and its parents up to (not including) ``stop`` while they are empty."""
    for p in [folder, *folder.parents]:
        if p == stop or not p.is_dir() or any(p.iterdir()):
            break
        p.rmdir()


# ---------------------------------------------------------------------------------------------
# frame arrays on disk

class FrameArray:
    """A (T, ...) array in an ``.npy`` file, written and read a few frames at a time.

    Frames are written with positioned writes and read through short-lived memory maps, so the
    process's memory does not grow with T: one long-lived map of the whole file would keep every
    page it ever touched resident (gigabytes for a long video's atlases). Different threads may
    write different frames at once.

    ``a[i] = frame`` writes frame ``i``; ``a[start:stop]`` is a memory map of those frames (writable
    unless opened with ``writable=False``; changes go to the file; the map is released when
    dropped); ``a[i]`` and ``a[index_array]`` are copies.
    """

    def __init__(self, path: str | os.PathLike, *, dtype=None, shape: tuple | None = None, writable: bool = True):
        import numpy as np

        self.path = Path(path)
        self.writable = writable or shape is not None
        if shape is not None:  # create the file: header and (sparse) space for every frame
            np.lib.format.open_memmap(self.path, mode="w+", dtype=dtype, shape=tuple(shape))._mmap.close()
        probe = np.load(self.path, mmap_mode="r")
        self.shape, self.dtype, self.offset = probe.shape, probe.dtype, probe.offset
        probe._mmap.close()
        self.frame_shape = self.shape[1:]
        self.frame_bytes = int(np.prod(self.frame_shape, dtype=np.int64)) * self.dtype.itemsize
        self._fd = os.open(self.path, os.O_RDWR if self.writable else os.O_RDONLY)

    def __len__(self) -> int:
        return self.shape[0]

    def _window(self, start: int, stop: int):
        import numpy as np

        return np.memmap(self.path, dtype=self.dtype, mode="r+" if self.writable else "r", offset=self.offset + start * self.frame_bytes,
                         shape=(stop - start, *self.frame_shape))

    def __getitem__(self, key):
        import numpy as np

        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                raise IndexError("FrameArray slices must be contiguous")
            return self._window(start, max(start, stop))
        if isinstance(key, (int, np.integer)):
            return self._read(int(key))
        key = np.asarray(key)
        if key.dtype == bool:
            key = np.flatnonzero(key)
        return np.stack([self._read(int(i)) for i in np.asarray(key).reshape(-1)]).reshape(
            (*np.shape(key), *self.frame_shape))

    def _read(self, i: int):
        import numpy as np

        if not -len(self) <= i < len(self):
            raise IndexError(f"frame {i} of {len(self)}")
        i %= len(self)
        data = os.pread(self._fd, self.frame_bytes, self.offset + i * self.frame_bytes)
        return np.frombuffer(data, self.dtype).reshape(self.frame_shape).copy()

    def __setitem__(self, i, value) -> None:
        import numpy as np

        if not isinstance(i, (int, np.integer)):
            raise IndexError("FrameArray writes one frame at a time")
        if not self.writable:
            raise PermissionError(f"{self.path} was opened read-only")
        if not 0 <= i < len(self):
            raise IndexError(f"frame {i} of {len(self)}")
        frame = np.ascontiguousarray(np.broadcast_to(np.asarray(value, self.dtype), self.frame_shape))
        data, at = memoryview(frame).cast("B"), self.offset + int(i) * self.frame_bytes
        while len(data):
            written = os.pwrite(self._fd, data, at)
            data, at = data[written:], at + written

    def resize(self, frames: int) -> None:
        """Change the number of frames in place: the header is rewritten (numpy leaves room in it
        for a longer first dimension) and the file cut or extended with zeros."""
        import io

        import numpy as np

        if not self.writable:
            raise PermissionError(f"{self.path} was opened read-only")
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": np.lib.format.dtype_to_descr(self.dtype),
                                                      "fortran_order": False, "shape": (int(frames), *self.frame_shape)})
        if len(header.getvalue()) != self.offset:
            raise ValueError(f"{self.path}: a header for {frames} frames does not fit in place")
        os.pwrite(self._fd, header.getvalue(), 0)
        os.ftruncate(self._fd, self.offset + int(frames) * self.frame_bytes)
        self.shape = (int(frames), *self.frame_shape)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self):
        self.close()


# ---------------------------------------------------------------------------------------------
# frame-wise work on arrays in memory or on disk

COLUMN_BUDGET = 16 << 20  # bytes of one column group's values (its temporaries take a few times more)
WINDOW_BYTES = 8 << 20  # bytes of a FrameArray mapped at once while sweeping over it


def frame_array(folder: Path | None, name: str, shape: tuple, dtype):
    """A new (T, ...) array: ``folder/name`` on disk (a ``FrameArray``) when ``folder`` is given,
    else in memory, filled with NaN (floats) or zeros."""
    import numpy as np

    if folder is not None:
        return FrameArray(Path(folder) / name, dtype=dtype, shape=shape)
    return np.full(shape, np.nan if np.issubdtype(np.dtype(dtype), np.floating) else 0, dtype)


def frame_slices(frames: int, chunk: int) -> Iterator[slice]:
    """``slice(start, stop)`` over ``frames`` frames, ``chunk`` at a time."""
    for start in range(0, frames, max(1, int(chunk))):
        yield slice(start, min(frames, start + chunk))


def _window_frames(arr) -> int:
    import numpy as np

    per_frame = int(np.prod(arr.shape[1:], dtype=np.int64)) * np.dtype(arr.dtype).itemsize
    return max(1, WINDOW_BYTES // max(1, per_frame))


def read_frames(arr, key):
    """``arr[key]`` as an array in memory (a copy for a ``FrameArray``)."""
    import numpy as np

    if isinstance(arr, FrameArray):
        part = arr[key]
        return np.array(part) if isinstance(key, slice) else part
    return arr[key]


def map_frames(fn, arr, *, chunk: int | None = None):
    """``fn(arr[a:b])`` over consecutive chunks of frames, concatenated: the same as ``fn(arr)``
    for any per-frame ``fn``, without holding the whole array in memory."""
    import numpy as np

    if not isinstance(arr, FrameArray):
        return fn(arr)
    parts = [fn(read_frames(arr, sl)) for sl in frame_slices(len(arr), chunk or _window_frames(arr))]
    if not parts:
        return fn(np.zeros((0, *arr.shape[1:]), arr.dtype))
    if isinstance(parts[0], dict):
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return np.concatenate(parts)


def column_groups(shape: tuple, itemsize: int = 4) -> list[slice]:
    """Groups of axis 1 (vertices) of a (T, N, ...) array small enough that one group over every
    frame fits in ``COLUMN_BUDGET`` bytes: whole-clip work per vertex group in bounded memory."""
    import numpy as np

    frames, n = int(shape[0]), int(shape[1])
    per_column = max(1, frames * int(np.prod(shape[2:], dtype=np.int64)) * itemsize)
    size = int(np.clip(COLUMN_BUDGET // per_column, 8, max(n, 1)))
    return [slice(s, min(n, s + size)) for s in range(0, n, size)]


def read_columns(arr, cols: slice):
    """``arr[:, cols]`` in memory, read a window of frames at a time from a ``FrameArray``."""
    import numpy as np

    if not isinstance(arr, FrameArray):
        return np.array(arr[:, cols])
    out = np.empty((len(arr), len(range(*cols.indices(arr.shape[1]))), *arr.shape[2:]), arr.dtype)
    for sl in frame_slices(len(arr), _window_frames(arr)):
        window = arr[sl]
        out[sl] = window[:, cols]
        del window
    return out


def write_columns(arr, cols: slice, values) -> None:
    """``arr[:, cols] = values``, written a window of frames at a time to a ``FrameArray``."""
    if not isinstance(arr, FrameArray):
        arr[:, cols] = values
        return
    for sl in frame_slices(len(arr), _window_frames(arr)):
        window = arr[sl]
        window[:, cols] = values[sl]
        del window
