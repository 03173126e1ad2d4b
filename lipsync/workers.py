"""Running per-frame work on all CPU cores: a bounded thread pool.

The per-frame stages (atlas extraction, lighting) spend their time in numpy and OpenCV, which
release the GIL, so threads share the cores without copying frames between processes. At most a
few jobs wait at once, so frames in flight (and memory) stay bounded whatever the video's length.
While a pool runs, BLAS and OpenCV use one thread each: the pool already fills the cores, and
their own threads on top made the lighting step three times slower on two cores. A one-worker
pool limits them too, so the arithmetic is the same whatever the worker count: multi-threaded
BLAS splits its sums differently on some CPUs (with OpenBLAS's AVX-512 kernels a few atlas
texels came out one grey level apart).
"""
from __future__ import annotations

import os
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable


def cpu_count() -> int:
    """Cores this process may run on (its affinity, which containers and ``taskset`` narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def resolve_workers(workers: int) -> int:
    """``workers`` <= 0 -> one per available core."""
    return cpu_count() if workers <= 0 else int(workers)


class BoundedPool:
    """Run ``submit``-ted jobs on ``workers`` threads, keeping at most ``2 * workers`` unfinished.

    ``submit`` blocks while the limit is reached, so a producer (a video decoder) cannot run ahead
    of the workers. With ``workers == 1`` jobs run at once in the caller's thread (the sequential
    path, same results). The first exception of any job is raised from ``submit`` or on leaving
    the ``with`` block; jobs not started yet are then cancelled.
    """

    def __init__(self, workers: int, *, name: str = "lipsync"):
        self.workers = resolve_workers(workers)
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix=name) if self.workers > 1 else None
        self._pending: deque[Future] = deque()
        self._limit = 2 * self.workers
        self._restore = _single_threaded_libraries()

    def submit(self, fn: Callable, *args) -> None:
        if self._pool is None:
            fn(*args)
            return
        self._pending.append(self._pool.submit(fn, *args))
        while len(self._pending) > self._limit:
            self._pending.popleft().result()
        while self._pending and self._pending[0].done():
            self._pending.popleft().result()

    def drain(self) -> None:
        """Wait for every submitted job; raise the first failure."""
        while self._pending:
            self._pending.popleft().result()

    def close(self, *, cancel: bool = False) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=cancel)
            self._pending.clear()
            self._pool = None
        if self._restore is not None:
            self._restore()
            self._restore = None

    def __enter__(self) -> "BoundedPool":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self.drain()
            except BaseException:
                self.close(cancel=True)
                raise
        self.close(cancel=exc_type is not None)


_LIMIT_LOCK = threading.Lock()
_LIMIT_STATE: dict = {"users": 0, "restore": None}


def _single_threaded_libraries() -> Callable[[], None]:
    """Limit BLAS and OpenCV to one thread each while any pool runs; returns the function that
    releases this pool's hold (the last pool to finish restores the libraries' own settings, so
    pools running at once in different threads cannot leave the limit behind)."""
    with _LIMIT_LOCK:
        if _LIMIT_STATE["users"] == 0:
            import cv2
            from threadpoolctl import threadpool_limits

            cv_threads = cv2.getNumThreads()
            cv2.setNumThreads(1)
            limits = threadpool_limits(limits=1, user_api="blas")

            def restore() -> None:
                limits.restore_original_limits()
                cv2.setNumThreads(cv_threads)

            _LIMIT_STATE["restore"] = restore
        _LIMIT_STATE["users"] += 1

    def release() -> None:
        with _LIMIT_LOCK:
            _LIMIT_STATE["users"] -= 1
            if _LIMIT_STATE["users"] == 0:
                _LIMIT_STATE["restore"]()
                _LIMIT_STATE["restore"] = None

    return release


class Counter:
    """A thread-safe running total for progress reports from worker threads."""

    def __init__(self):
        self._lock = threading.Lock()
        self.value = 0

    def add(self, k: int) -> int:
        with self._lock:
            self.value += k
            return self.value
