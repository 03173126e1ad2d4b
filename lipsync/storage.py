"""A run's storage root: a folder every node sees, or an object store mirrored on each node.

``Storage.open(root)`` takes what the user gave as ``--out``:

* a path (a local folder, or a shared filesystem mounted at the same path on every node): the
  tasks read and write it directly; ``pull`` and ``push`` do nothing.
* a URI (``s3://bucket/prefix``, ``gs://...``, ``hdfs://...`` through pyarrow's filesystems;
  any other scheme that fsspec knows, e.g. ``az://`` with adlfs installed; ``file:///path`` for a
  folder used as if it were a store): the tasks work in a node-local mirror of it, the same folder
  on every node (``$LIPSYNC_MIRROR/<hash of the URI>``, by default under the system's temporary
  folder), so the absolute paths that tasks hand each other stay valid everywhere. A task pulls
  the parts of the root it reads (its ``scope``) before it runs, and pushes what it wrote, changed
  or deleted there after; the next task, on any node, pulls that.

The artifacts are named by content hashes and written atomically (a temporary name, then a
rename), so nearly everything is written once; a file that is rewritten (a report) is fetched
again when the store's copy is newer than the mirror's. Temporary files (a name starting with
``.`` and holding ``.tmp-`` or ``.partial-``, also for folders: scratch space goes there) and lock
files never travel. Tasks on one node share its mirror, so a task's push can also send another
running task's new files; pushes on a node take turns, so the writer's own push, after it has
finished the file, is the last. Credentials and endpoints come from each node's environment, as the filesystem's library
reads them (for S3: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``...).
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from .common import LipsyncError

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# parallel transfers: an object store answers each request in tens of milliseconds
TRANSFER_THREADS = 8
# a store's modification times can be rounded to the second
_SLACK_NS = 500_000_000


def is_uri(text: str | os.PathLike) -> bool:
    return bool(_URI.match(str(text)))


def _travels(rel: str) -> bool:
    """Whether a file goes between the mirror and the store: not a temporary file of an atomic
    write (``.NAME.tmp-PID``, ``.NAME.partial-PID/``) or a lock file."""
    parts = rel.split("/")
    if parts[-1].endswith(".lock"):
        return False
    return not any(p.startswith(".") and (".tmp-" in p or ".partial-" in p) for p in parts)


_FILESYSTEMS: dict = {}


def _filesystem(uri: str):
    """(pyarrow filesystem, the root's path in it), cached per process."""
    if uri not in _FILESYSTEMS:
        import pyarrow as pa
        import pyarrow.fs as pafs

        try:
            try:
                fs, path = pafs.FileSystem.from_uri(uri)
            except pa.ArrowInvalid as err:
                if "Unrecognized filesystem type" not in str(err):
                    raise
                import fsspec

                ffs, path = fsspec.core.url_to_fs(uri)
                fs = pafs.PyFileSystem(pafs.FSSpecHandler(ffs))
        except (ImportError, ValueError, OSError, pa.ArrowException) as err:
            raise LipsyncError(f"Cannot open the storage root {uri} ({_first_line(err)}).") from None
        _FILESYSTEMS[uri] = (fs, path.rstrip("/"))
    return _FILESYSTEMS[uri]


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:300]


def _object_stores() -> tuple:
    import pyarrow.fs as pafs

    return tuple(c for c in (getattr(pafs, "S3FileSystem", None), getattr(pafs, "GcsFileSystem", None)) if c)


def default_mirror(uri: str) -> Path:
    base = os.environ.get("LIPSYNC_MIRROR") or os.path.join(tempfile.gettempdir(), "lipsync-mirror")
    return Path(base) / hashlib.sha256(uri.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Storage:
    """Members:
        root: what the user gave (a folder or a URI).
        local: the folder tasks read and write: ``root`` itself, or the URI's mirror on each node.
    """
    root: str
    local: str

    @classmethod
    def open(cls, root: str | os.PathLike, *, mirror: str | os.PathLike | None = None) -> "Storage":
        root = str(root)
        if not is_uri(root):
            path = Path(root).expanduser().resolve()
            if path.exists() and not path.is_dir():
                raise LipsyncError(f"{path} is a file; give a folder for the results.")
            return cls(str(path), str(path))  # made by the first file written into it
        root = root.rstrip("/")
        fs, base = _filesystem(root)
        import pyarrow.fs as pafs

        try:
            kind = fs.get_file_info(base).type
        except OSError as err:
            raise LipsyncError(f"Cannot reach the storage root {root} ({_first_line(err)}).") from None
        if kind == pafs.FileType.File:
            raise LipsyncError(f"{root} is a file; give a folder (a prefix) for the results.")
        local = Path(mirror).expanduser().resolve() if mirror else default_mirror(root)
        try:
            local.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise LipsyncError(f"Cannot make the mirror folder {local} of {root} ({err.strerror}); "
                               "set LIPSYNC_MIRROR to a writable folder.") from None
        return cls(root, str(local))

    @property
    def remote(self) -> bool:
        return is_uri(self.root)

    def path(self, rel: str = "") -> Path:
        """The local path of ``rel`` (a path relative to the root, with ``/``)."""
        return Path(self.local) / rel if rel else Path(self.local)

    def rel(self, path: str | os.PathLike) -> str:
        """``path`` (under ``local``) relative to the root."""
        return Path(path).resolve().relative_to(Path(self.local)).as_posix()

    # --- the store's side -------------------------------------------------------------------

    def listing(self, scopes: Iterable[str]) -> dict[str, tuple[int, int | None]]:
        """rel -> (size, modification time in ns or None) of the store's files under ``scopes``."""
        import pyarrow.fs as pafs

        fs, base = _filesystem(self.root)
        found: dict = {}
        for scope in scopes:
            where = f"{base}/{scope}".rstrip("/")
            info = fs.get_file_info(where)
            infos = [info] if info.type == pafs.FileType.File else (
                fs.get_file_info(pafs.FileSelector(where, recursive=True, allow_not_found=True))
                if info.type == pafs.FileType.Directory or scope == "" else [])
            for i in infos:
                if i.type != pafs.FileType.File:
                    continue
                rel = i.path[len(base) + 1:] if i.path.startswith(base + "/") else i.path
                if _travels(rel):
                    found[rel] = (i.size, i.mtime_ns)
        return found

    def pull(self, scopes: Iterable[str] = ("",)) -> int:
        """Fetch the store's files under ``scopes`` that the mirror lacks, or whose copy in the
        store is newer; returns how many were fetched. Nothing on a plain folder."""
        return self._pull(scopes)[0]

    def _pull(self, scopes: Iterable[str]) -> tuple[int, int]:
        """(files, bytes) fetched."""
        if not self.remote:
            return 0, 0
        try:
            todo = []
            for rel, (size, mtime) in self.listing(list(scopes)).items():
                local = self.path(rel)
                try:
                    st = local.stat()
                except FileNotFoundError:
                    todo.append((rel, mtime))
                    continue
                newer = mtime is not None and mtime > st.st_mtime_ns + _SLACK_NS
                if newer or (mtime is None and st.st_size != size):
                    todo.append((rel, mtime))
            with ThreadPoolExecutor(TRANSFER_THREADS) as pool:
                sizes = list(pool.map(lambda x: self._download(*x), todo))
        except OSError as err:
            raise LipsyncError(f"Cannot read from the storage root {self.root} ({_first_line(err)}).") from None
        return len(todo), sum(sizes)

    def _download(self, rel: str, mtime: int | None) -> int:
        fs, base = _filesystem(self.root)
        local = self.path(rel)
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.tmp-{os.getpid()}-{id(local)}")
        try:
            with fs.open_input_stream(f"{base}/{rel}") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            if mtime is not None:
                os.utime(tmp, ns=(mtime, mtime))
            size = tmp.stat().st_size
            os.replace(tmp, local)
            return size
        finally:
            tmp.unlink(missing_ok=True)

    def snapshot(self, scopes: Iterable[str] = ("",)) -> dict[str, tuple[int, int]]:
        """rel -> (size, modification time in ns) of the mirror's files under ``scopes``."""
        found: dict = {}
        for scope in scopes:
            top = self.path(scope)
            if top.is_file():
                st = top.stat()
                found[scope] = (st.st_size, st.st_mtime_ns)
                continue
            for dirpath, _dirs, files in os.walk(top):
                for name in files:
                    p = Path(dirpath) / name
                    rel = p.relative_to(self.local).as_posix()
                    if not _travels(rel):
                        continue
                    try:
                        st = p.stat()
                    except FileNotFoundError:  # removed by another task meanwhile
                        continue
                    found[rel] = (st.st_size, st.st_mtime_ns)
        return found

    def push(self, scopes: Iterable[str], before: dict[str, tuple[int, int]]) -> int:
        """Send the files under ``scopes`` that are new or changed since ``before`` (a
        ``snapshot``) to the store, and delete there the ones removed since; returns how many
        files were sent. Nothing on a plain folder."""
        return self._push(scopes, before)[0]

    def _push(self, scopes: Iterable[str], before: dict[str, tuple[int, int]]) -> tuple[int, int]:
        """(files, bytes) sent."""
        if not self.remote:
            return 0, 0
        from filelock import FileLock

        # One push at a time on a node: another task's push may have sent a file of this task
        # while it was still being written; this task's own push, later, then wins.
        with FileLock(str(self.path(".push.lock"))):
            return self._push_now(scopes, before)

    def _push_now(self, scopes: list[str], before: dict[str, tuple[int, int]]) -> tuple[int, int]:
        after = self.snapshot(scopes)
        changed = [rel for rel, facts in after.items() if before.get(rel) != facts]
        gone = [rel for rel in before if rel not in after]
        try:
            with ThreadPoolExecutor(TRANSFER_THREADS) as pool:
                list(pool.map(self._upload, changed))
            fs, base = _filesystem(self.root)
            for rel in gone:
                try:
                    fs.delete_file(f"{base}/{rel}")
                except FileNotFoundError:
                    pass
        except OSError as err:
            raise LipsyncError(f"Cannot write to the storage root {self.root} ({_first_line(err)}).") from None
        return len(changed), sum(after[rel][0] for rel in changed)

    def _upload(self, rel: str) -> None:
        import pyarrow.fs as pafs

        fs, base = _filesystem(self.root)
        local = self.path(rel)
        target = f"{base}/{rel}"
        parent = target.rsplit("/", 1)[0]
        if not isinstance(fs, _object_stores()):  # an object store has no folders to make
            fs.create_dir(parent, recursive=True)
        # a folder used as a store gets the file whole or not at all (an object store does that itself)
        atomic = isinstance(fs, pafs.LocalFileSystem)
        dest = f"{parent}/.{rel.rsplit('/', 1)[-1]}.tmp-{os.getpid()}-{id(rel)}" if atomic else target
        try:
            with open(local, "rb") as src, fs.open_output_stream(dest) as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        except FileNotFoundError:  # replaced or removed meanwhile by another task on this node
            if atomic:
                fs.delete_file(dest)
            return
        if atomic:
            fs.move(dest, target)
        # the mirror's copy takes the store's time, so the next pull knows it is current
        mtime = fs.get_file_info(target).mtime_ns
        if mtime is not None:
            try:
                os.utime(local, ns=(mtime, mtime))
            except FileNotFoundError:
                pass

    def remove(self) -> None:
        """Delete everything under the root in the store (the mirror stays)."""
        if self.remote:
            fs, base = _filesystem(self.root)
            fs.delete_dir(base)

    def put(self, rels: Iterable[str]) -> None:
        """Send these files (rel paths) to the store as they are now."""
        if not self.remote:
            return
        try:
            for rel in rels:
                self._upload(rel)
        except OSError as err:
            raise LipsyncError(f"Cannot write to the storage root {self.root} ({_first_line(err)}).") from None

    @contextmanager
    def synced(self, scopes: Iterable[str]) -> Iterator[dict]:
        """Pull ``scopes`` (paths relative to the root, or absolute paths under ``local``), run the
        block, push what it wrote there (also when it raised). Yields a dict that ends up with what
        moved: files and megabytes fetched and sent, and the seconds it took. Nothing on a plain
        folder (the dict stays empty)."""
        moved: dict = {}
        if not self.remote:
            yield moved
            return
        scopes = [self.rel(x) if os.path.isabs(str(x)) else str(x) for x in scopes]
        t0 = time.perf_counter()
        files, size = self._pull(scopes)
        before = self.snapshot(scopes)
        moved.update(fetched=files, fetched_mb=round(size / 2**20, 2), seconds=time.perf_counter() - t0)
        try:
            yield moved
        finally:
            t0 = time.perf_counter()
            files, size = self._push(scopes, before)
            moved.update(sent=files, sent_mb=round(size / 2**20, 2),
                         seconds=round(moved["seconds"] + time.perf_counter() - t0, 3))

    def stage(self, src: str | os.PathLike, where: str = "inputs") -> Path:
        """An input file or folder of the driver's machine, copied into the store (once: under the
        hash of its content) so that every node can read it; returns its mirror path. On a plain
        folder, ``src`` itself."""
        src = Path(src)
        if not self.remote:
            return src
        from .files import content_key, file_digest

        files = sorted(p for p in src.rglob("*") if p.is_file()) if src.is_dir() else [src]
        key = file_digest(src) if src.is_file() else content_key([[p.relative_to(src).as_posix(), file_digest(p)]
                                                                   for p in files])
        top = f"{where}/{key}/{src.name}"
        have = self.listing([top]) if files else {}
        for p in files:
            rel = top if src.is_file() else f"{top}/{p.relative_to(src).as_posix()}"
            local = self.path(rel)
            if rel not in have or have[rel][0] != p.stat().st_size:
                local.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(p, local)
                self.put([rel])
            elif not local.exists():
                self.pull([rel])
        return self.path(top)
