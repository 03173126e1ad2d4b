"""Running a graph of tasks on Ray: an embedded local Ray by default, a cluster by address.

The evaluation of a dataset of speakers (``python -m eval.run --dataset``) and batch dubbing
(``lipsync batch``) describe their work as ``Task``s, each a module-level function with its
arguments, the tasks whose results it needs (``Result("key")`` placeholders in its arguments) and
the resources it asks for. ``run_graph`` submits every task to Ray as soon as what it needs is
done, so independent work runs in parallel and nothing waits on what it does not need.

* Faults: a worker process that dies (or a node that leaves) makes Ray run the task again, up to
  ``Task.max_retries`` times; the tasks write their outputs atomically under content-keyed names,
  so a retry continues (or redoes) the work and ends with the same result. A task that fails for a
  real reason (``LipsyncError``: bad input) is not retried: it is marked failed with its sentence,
  the tasks that need it are skipped with the reason, and everything else goes on.
* Progress: one display across the graph (groups x stages, done / running / failed, elapsed and
  estimated remaining) on the terminal, and ``progress.json`` in the run's folder with every
  task's state, attempts, worker process and host.
* Interrupts: Ctrl-C (or SIGTERM) cancels the running tasks and returns; finished work is on
  disk, so the same command resumes.

The run's files live in one storage root (``lipsync.storage``): a folder every node sees at the
same path (one machine, or a shared filesystem on a cluster), or an object store (``s3://...``)
that each node mirrors, the tasks bringing what they read and sending what they write. Every node
needs this project installed (the project's Docker image is a worker image).
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .common import LipsyncError
from .files import atomic_write_text
from .storage import Storage

# What Ray's object store needs here: only small task results travel through it (every artifact
# is a file under the run's folder), so a small store spares the machine's shared memory.
OBJECT_STORE_BYTES = 256 * 2**20


@dataclass(frozen=True)
class Result:
    """Placeholder in a task's arguments for the result of the task named ``key``."""
    key: str


@dataclass(frozen=True)
class Failed:
    """What a ``Task`` with ``tolerate_failures`` receives in place of a failed dependency's result."""
    key: str
    error: str


@dataclass
class Task:
    """One unit of work.

    Members:
        key: unique name in the graph, e.g. "s1/fit/lipsync3d".
        fn: a module-level function (Ray pickles it by reference); called as ``fn(*args, **kwargs)``
            with every ``Result`` in ``args``/``kwargs`` (also inside lists, tuples and dict
            values) replaced by that task's return value.
        group, stage: the row and column of the progress display (a speaker and "fit", a job and "dub").
        num_cpus, num_gpus: the resources Ray reserves for it; the task's torch uses ``num_cpus`` threads.
        max_retries: how often Ray runs it again after its worker died.
        tolerate_failures: run even when a dependency failed (receiving ``Failed``), e.g. a report
            over the groups that did finish.
        scope: the parts of the storage root the task reads and writes (paths relative to it, with
            ``/``; absolute paths under it; ``Result``s of tasks that return such paths); on an
            object-store root they are brought to the task's node before it runs and what it wrote
            there is sent back after (see ``lipsync.storage``).
    """
    key: str
    fn: Callable
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    group: str = ""
    stage: str = ""
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    max_retries: int = 3
    tolerate_failures: bool = False
    scope: tuple = ()

    def deps(self) -> list[str]:
        found: list[str] = []
        _walk(self.args, found)
        _walk(self.kwargs, found)
        return list(dict.fromkeys(found))


def _walk(x, found: list) -> None:
    if isinstance(x, Result):
        found.append(x.key)
    elif isinstance(x, (list, tuple)):
        for v in x:
            _walk(v, found)
    elif isinstance(x, dict):
        for v in x.values():
            _walk(v, found)


def _fill(x, values: dict):
    if isinstance(x, Result):
        return values[x.key]
    if isinstance(x, tuple):
        return tuple(_fill(v, values) for v in x)
    if isinstance(x, list):
        return [_fill(v, values) for v in x]
    if isinstance(x, dict):
        return {k: _fill(v, values) for k, v in x.items()}
    return x


@dataclass
class Outcome:
    """How a task ended. ``status``: "done", "failed" (``error`` says why, one sentence), "skipped"
    (a dependency failed) or "cancelled" (the run was interrupted); ``attempts``: how many times a
    worker started it (more than 1: Ray retried it after a worker died); ``moved``: on an
    object-store root, the files and megabytes it fetched and sent and the seconds that took
    (included in ``seconds``)."""
    key: str
    status: str
    value: Any = None
    error: str | None = None
    attempts: int = 0
    seconds: float | None = None
    moved: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# connecting

def connect(address: str | None = None, *, num_cpus: int | None = None) -> dict:
    """Start an embedded local Ray sized to this machine (or to ``num_cpus``), or join the cluster
    at ``address`` (also taken from ``RAY_ADDRESS``). Returns facts for the report: the address,
    the cluster's CPUs and GPUs, the number of nodes, the dashboard's URL when it runs, and
    whether this call started Ray (and so must stop it)."""
    try:
        import ray
    except ImportError as err:  # pragma: no cover - ray is a dependency
        raise LipsyncError(f"Ray is not installed ({err}); install the project with pip install -e .") from None
    address = address or os.environ.get("RAY_ADDRESS") or None
    started = False
    if not ray.is_initialized():
        kwargs: dict = {"log_to_driver": False, "configure_logging": False}
        if address:
            kwargs["address"] = address
        else:
            kwargs.update(num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False,
                          object_store_memory=OBJECT_STORE_BYTES)
        try:
            ctx = ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError) as err:
            where = f"the Ray cluster at {address}" if address else "a local Ray"
            raise LipsyncError(f"Could not start or join {where} ({str(err).splitlines()[0]}).") from None
        started = True
        dashboard = getattr(ctx, "dashboard_url", None) or None
    else:
        dashboard = None
    res = ray.cluster_resources()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return {"address": address or "local", "cpus": int(res.get("CPU", 0)), "gpus": int(res.get("GPU", 0)),
            "nodes": len(nodes), "dashboard": f"http://{dashboard}" if dashboard and "://" not in dashboard else dashboard,
            "started": started}


def disconnect(info: dict) -> None:
    """Stop the Ray that ``connect`` started (a joined cluster keeps running). Called while an
    error or Ctrl-C is on its way up (in a ``finally``), a failure to stop is ignored, so the
    caller sees the first cause rather than this one."""
    import ray

    if info.get("started") and ray.is_initialized():
        unwinding = sys.exc_info()[0] is not None
        try:
            ray.shutdown()
        except Exception:
            if not unwinding:
                raise


# ---------------------------------------------------------------------------------------------
# inside a worker

def _execute(fn: Callable, args: tuple, kwargs: dict, key: str, storage: Storage, markers: str, run_id: str,
             threads: int, scope: tuple):
    """Run one task in a Ray worker: record the attempt (process, host, start time) for the
    progress display, use ``threads`` CPU threads, bring the storage root's ``scope`` to this node
    (and what the task wrote there back), and turn an expected failure into a result
    (``("failed", sentence)``) so Ray does not retry it."""
    safe = _safe(key)
    attempt = 1 + len(_Markers(storage, markers).files(f"{safe}.attempt*.json"))  # also those on other nodes
    record = f"{markers}/{safe}.attempt{attempt}.json"
    atomic_write_text(storage.path(record),
                      json.dumps({"key": key, "run": run_id, "attempt": attempt, "pid": os.getpid(),
                                  "host": socket.gethostname(), "started": time.time()}))
    os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    t0 = time.perf_counter()
    try:
        storage.put([record])
        with storage.synced(scope) as moved:
            value = fn(*args, **kwargs)
    except LipsyncError as err:
        return ("failed", str(err), attempt, time.perf_counter() - t0, {})
    except Exception as err:  # noqa: BLE001 - a bug in one task must not sink the others
        log = f"{markers}/{safe}.error.log"
        storage.path(log).write_text(traceback.format_exc())
        try:
            storage.put([log])
        except LipsyncError:
            pass
        return ("failed", f"{type(err).__name__}: {err} (traceback in {storage.root}/{log})", attempt,
                time.perf_counter() - t0, {})
    return ("done", value, attempt, time.perf_counter() - t0, moved)


def _safe(key: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "~" for c in key)


# ---------------------------------------------------------------------------------------------
# the driver

def run_graph(tasks: list[Task], folder: str | os.PathLike | Storage, *, title: str = "run", show: bool = True,
              refresh_s: float = 1.0, prefix: str = "", cancel: bool = True) -> dict[str, Outcome]:
    """Run ``tasks`` on the connected Ray (``connect`` first); returns every task's ``Outcome``.

    ``folder`` (a folder every node sees, or a ``Storage``) gets ``progress.json`` and ``engine/``
    (attempt records and tracebacks of unexpected errors), in its subfolder ``prefix`` if given.
    Raises ``KeyboardInterrupt`` after cancelling the running tasks when the user presses Ctrl-C;
    with ``cancel=False`` they are left to the caller, for a Ray this process started (``connect``'s
    ``started``), whose shutdown stops them: Ray 2.60's driver can abort on a cancelled task's late
    reply (a known race of ``ray.cancel``), which turned a Ctrl-C into a crash."""
    import ray

    by_key = {t.key: t for t in tasks}
    if len(by_key) != len(tasks):
        raise ValueError("task keys must be unique")
    for t in tasks:
        missing = [d for d in t.deps() if d not in by_key]
        if missing:
            raise ValueError(f"{t.key} needs unknown tasks {missing}")
    storage = folder if isinstance(folder, Storage) else Storage.open(folder)
    run_id = uuid.uuid4().hex[:8]
    prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
    markers = _Markers(storage, f"{prefix}engine/{run_id}")
    markers.path.mkdir(parents=True, exist_ok=True)
    remote = ray.remote(_execute)
    outcomes: dict[str, Outcome] = {}
    submitted: dict[str, float] = {}
    running: dict[Any, str] = {}  # ObjectRef -> key
    waiting = [t.key for t in tasks]
    display = _Display(tasks, storage, markers, title, show, f"{prefix}progress.json")
    t_start = time.time()

    def submit_ready() -> None:
        for key in list(waiting):
            t = by_key[key]
            deps = t.deps()
            failed = [d for d in deps if d in outcomes and outcomes[d].status != "done"]
            if failed and not t.tolerate_failures:
                dep = outcomes[failed[0]]
                # the root cause travels down a chain of skipped tasks unchanged
                why = dep.error if dep.status == "skipped" else f"{dep.key} {dep.status}: {dep.error or dep.status}"
                outcomes[key] = Outcome(key, "skipped", error=why)
                waiting.remove(key)
                continue
            if not all(d in outcomes for d in deps):
                continue
            values = {d: (outcomes[d].value if outcomes[d].status == "done"
                          else Failed(d, outcomes[d].error or outcomes[d].status)) for d in deps}
            threads = max(1, int(round(t.num_cpus)))
            ref = remote.options(num_cpus=t.num_cpus, num_gpus=t.num_gpus, max_retries=t.max_retries,
                                 retry_exceptions=False, name=t.key).remote(
                t.fn, _fill(t.args, values), _fill(t.kwargs, values), t.key, storage, markers.rel, run_id, threads,
                tuple(_fill(list(t.scope), values)))
            running[ref] = key
            submitted[key] = time.time()
            waiting.remove(key)

    # a stop request from outside (kill, a Kubernetes job ending) stops like Ctrl-C
    import signal
    import threading

    def _terminate(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _terminate) if threading.current_thread() is threading.main_thread() else None
    try:
        while True:
            # skipping can make more tasks decidable: repeat until nothing changes
            before = -1
            while before != len(outcomes) + len(running):
                before = len(outcomes) + len(running)
                submit_ready()
            if not running:
                break
            done, _ = ray.wait(list(running), num_returns=1, timeout=refresh_s)
            for ref in done:
                key = running.pop(ref)
                try:
                    status, value, attempt, seconds, moved = ray.get(ref)
                    outcomes[key] = Outcome(key, status, value=value if status == "done" else None,
                                            error=None if status == "done" else value, attempts=attempt,
                                            seconds=round(seconds, 2), moved=moved)
                except ray.exceptions.RayTaskError as err:  # it could not even start (e.g. its code is missing)
                    outcomes[key] = Outcome(key, "failed", attempts=_attempts(markers, key),
                                            error=f"the task could not run ({_last_line(err)}).")
                except ray.exceptions.RayError as err:  # its worker or node died more often than retried
                    attempts = _attempts(markers, key)
                    outcomes[key] = Outcome(key, "failed", attempts=attempts,
                                            error=f"its worker died {attempts} time(s) ({_first_line(err)}).")
            display.update(outcomes, running.values(), submitted, time.time() - t_start)
    except KeyboardInterrupt:
        for ref, key in running.items():
            if cancel:
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001 - the task ended meanwhile: the interruption still stands
                    pass
            outcomes[key] = Outcome(key, "cancelled", error="interrupted", attempts=_attempts(markers, key))
        for key in waiting:
            outcomes[key] = Outcome(key, "cancelled", error="interrupted")
        display.update(outcomes, [], submitted, time.time() - t_start, final=True)
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    display.update(outcomes, [], submitted, time.time() - t_start, final=True)
    return outcomes


class _Markers:
    """The attempt records of one run (``engine/RUNID`` in the storage root), read afresh from
    the store when the root is one."""

    def __init__(self, storage: Storage, rel: str):
        self.storage, self.rel, self.path = storage, rel, storage.path(rel)
        self.pulled = 0.0

    def files(self, pattern: str, *, fresh: bool = True) -> list[Path]:
        if self.storage.remote and (fresh or time.time() - self.pulled > 1.0):
            try:
                self.storage.pull([self.rel])
                self.pulled = time.time()
            except LipsyncError:
                pass  # the display shows what it knows
        return list(self.path.glob(pattern))


def _attempts(markers: _Markers, key: str) -> int:
    return len(markers.files(f"{_safe(key)}.attempt*.json"))


def _last_line(err: Exception) -> str:
    """The exception at the end of a remote traceback, e.g. "ModuleNotFoundError: No module named 'x'"."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip() and not set(ln.strip()) <= set("^~ ")]
    return (lines[-1] if lines else type(err).__name__)[:300]


def _first_line(err: Exception) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return (lines[0] if lines else type(err).__name__)[:200]


def transfers(outcomes: dict[str, Outcome]) -> dict:
    """What the tasks moved between their nodes' mirrors and the object store, in all (empty on a folder)."""
    moved = [o.moved for o in outcomes.values() if o.moved]
    if not moved:
        return {}
    return {k: round(sum(m.get(k, 0) for m in moved), 2) for k in ("fetched", "fetched_mb", "sent", "sent_mb", "seconds")}


def retries(outcomes: dict[str, Outcome]) -> dict[str, int]:
    """Tasks that Ray ran more than once (a worker died), with their attempts."""
    return {k: o.attempts for k, o in outcomes.items() if o.attempts > 1}


class _Display:
    """The live progress of a graph: a table of groups x stages on a terminal (a line per finished
    task otherwise) and ``progress.json``."""

    def __init__(self, tasks: list[Task], storage: Storage, markers: _Markers, title: str, show: bool, progress: str):
        self.tasks, self.storage, self.markers, self.title, self.progress = tasks, storage, markers, title, progress
        self.show = show
        self.tty = show and sys.stderr.isatty()
        self.groups = list(dict.fromkeys(t.group for t in tasks))
        self.stages = list(dict.fromkeys(t.stage for t in tasks))
        self.lines_drawn = 0
        self.reported: set[str] = set()
        self.last_json = 0.0

    def _started(self) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for f in self.markers.files("*.attempt*.json", fresh=False):
            try:
                d = json.loads(f.read_text())
            except (OSError, ValueError):
                continue
            if d["attempt"] >= out.get(d["key"], {}).get("attempt", 0):
                out[d["key"]] = d
        return out

    def update(self, outcomes: dict, running_keys, submitted: dict, elapsed: float, final: bool = False) -> None:
        started = self._started()
        running = set(running_keys)
        state = {}
        for t in self.tasks:
            o = outcomes.get(t.key)
            st = o.status if o else ("running" if t.key in running and t.key in started else
                                     "queued" if t.key in running else "waiting")
            entry = {"group": t.group, "stage": t.stage, "status": st}
            if t.key in started:
                entry.update(pid=started[t.key]["pid"], host=started[t.key]["host"], attempt=started[t.key]["attempt"])
            if o:
                entry.update(seconds=o.seconds, attempts=o.attempts, error=o.error)
            state[t.key] = entry
        counts = {s: sum(1 for e in state.values() if e["status"] == s)
                  for s in ("done", "running", "queued", "waiting", "failed", "skipped", "cancelled")}
        eta = self._eta(outcomes, state)
        now = time.time()
        if final or now - self.last_json > 1.0:
            atomic_write_text(self.storage.path(self.progress), json.dumps(
                {"title": self.title, "elapsed_s": round(elapsed, 1), "remaining_s": eta, "counts": counts,
                 "finished": final, "tasks": state}, indent=1))
            self.last_json = now
            try:
                self.storage.put([self.progress])
            except LipsyncError:
                pass  # the next update tries again
        if not self.show:
            return
        if self.tty:
            self._draw(state, counts, elapsed, eta, final)
        else:
            for key, o in outcomes.items():
                if key not in self.reported:
                    self.reported.add(key)
                    print(f"[{self.title}] {key}: {o.status}" + (f" ({o.error})" if o.error and o.status != "done" else "")
                          + f"  [{counts['done']}/{len(self.tasks)} done, {_clock(elapsed)} elapsed"
                          + (f", ~{_clock(eta)} left]" if eta is not None and not final else "]"),
                          file=sys.stderr, flush=True)

    def _eta(self, outcomes: dict, state: dict) -> float | None:
        durations: dict[str, list[float]] = {}
        for t in self.tasks:
            o = outcomes.get(t.key)
            if o and o.status == "done" and o.seconds is not None:
                durations.setdefault(t.stage, []).append(o.seconds)
        if not durations:
            return None
        overall = sum(sum(v) for v in durations.values()) / sum(len(v) for v in durations.values())
        left = 0.0
        for t in self.tasks:
            if state[t.key]["status"] in ("running", "queued", "waiting"):
                d = durations.get(t.stage)
                left += sum(d) / len(d) if d else overall
        try:
            import ray

            slots = max(1.0, float(ray.cluster_resources().get("CPU", 1)))
        except Exception:  # noqa: BLE001 - an estimate only
            slots = 1.0
        return round(left / slots, 1)

    def _draw(self, state: dict, counts: dict, elapsed: float, eta, final: bool) -> None:
        marks = {"done": "ok", "running": "run", "queued": "q", "waiting": ".", "failed": "FAIL", "skipped": "skip",
                 "cancelled": "stop"}
        width = max([len(g) for g in self.groups] + [5])
        lines = [f"{self.title}: {counts['done']}/{len(self.tasks)} done, {counts['running']} running, "
                 f"{counts['failed']} failed, {counts['skipped']} skipped; {_clock(elapsed)} elapsed"
                 + (f", ~{_clock(eta)} left" if eta is not None and not final else "")]
        for g in self.groups:
            cells = []
            for s in self.stages:
                sts = [e["status"] for e in state.values() if e["group"] == g and e["stage"] == s]
                if not sts:
                    continue
                done = sum(x == "done" for x in sts)
                bad = [x for x in sts if x in ("failed", "skipped", "cancelled")]
                run = sum(x == "running" for x in sts)
                cell = f"{s} {done}/{len(sts)}"
                if run:
                    cell += f" ({marks['running']} {run})"
                if bad:
                    cell += f" ({marks[bad[0]]} {len(bad)})"
                cells.append(cell)
            lines.append(f"  {g.ljust(width)}  " + " | ".join(cells))
        out = ("\x1b[F\x1b[2K" * self.lines_drawn) + "\n".join(lines) + "\n"
        sys.stderr.write(out)
        sys.stderr.flush()
        self.lines_drawn = len(lines)


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
