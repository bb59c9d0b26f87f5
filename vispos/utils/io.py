"""Atomic writes, output-folder locks and stale temp files.

* Atomic writes: results and checkpoints are written to a temp file (``.vispos-tmp.<name>.<random>.tmp``) in the
  same folder, fsync'ed, then renamed. A reader never sees a half-written file: either the old one or the complete
  new one. An exception (also ``KeyboardInterrupt`` and :class:`Terminated`, raised on SIGTERM by the ``vispos``
  command) removes the temp file; a SIGKILL cannot, so :func:`ensure_writable_dir` removes the temp files a killed
  run left in its output folder when the next run (a resume) claims the folder.
* Locks: :func:`ensure_writable_dir` (on rank 0 of a torchrun job; it is the one that writes) takes an exclusive ``flock`` on ``<folder>/.vispos.lock`` (holding the pid),
  so a second run into the same folder is refused (:class:`OutputFolderInUse`, a ``ValueError``) while the first
  runs. The OS drops the lock when the process ends, however it ends (no stale locks after SIGKILL); the ``vispos``
  command also releases it when a command returns (:func:`release_output_locks`).
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, List, Mapping, Sequence, Union

__all__ = [
    "ensure_writable_dir",
    "lock_output_dir",
    "release_output_locks",
    "remove_stale_temps",
    "OutputFolderInUse",
    "Terminated",
    "TEMP_PREFIX",
    "LOCK_NAME",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_write_csv",
    "atomic_torch_save",
    "load_checkpoint_file",
    "file_fingerprint",
    "folder_fingerprint",
    "atomic_savefig",
    "markdown_table",
]

PathLike = Union[str, os.PathLike]
logger = logging.getLogger(__name__)

TEMP_PREFIX = ".vispos-tmp."
"""Every temp file vispos writes starts with this (atomic writes, the writability probe)."""
LOCK_NAME = ".vispos.lock"
"""The lock file :func:`ensure_writable_dir` holds in each output folder."""


class OutputFolderInUse(ValueError):
    """Another live process holds the output folder's lock."""


class Terminated(BaseException):
    """Raised by the ``vispos`` command's SIGTERM handler: unwinds like Ctrl-C, so temp files are removed."""


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


_UMASK = _umask()


def _publish_mode(tmp: str) -> None:
    """``mkstemp`` files are 0600; give results the mode a normal ``open()`` would (0666 minus the umask)."""
    os.chmod(tmp, 0o666 & ~_UMASK)


def ensure_writable_dir(path: PathLike, what: str = "output folder", lock: bool = True) -> Path:
    """Create ``path`` if needed and check it is a writable folder; ``ValueError`` naming it otherwise.

    With ``lock=True`` (the default) the folder is also claimed for this process (:func:`lock_output_dir`: a second
    run into it is refused while this one runs) and the temp files a killed earlier run left in it are removed
    (:func:`remove_stale_temps`). Call this before any work starts, so a long run never fails at the end for a bad
    output path.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValueError(f"{what} {str(p)!r} exists and is not a folder")
    try:
        p.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX + "write-test.", dir=p)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise ValueError(f"{what} {str(p)!r} is not writable: {e.strerror or e}") from e
    if lock and _is_main_rank():  # in a torchrun job rank 0 claims the folder for every rank (only it writes)
        lock_output_dir(p, what)
        remove_stale_temps(p)
    return p


def _is_main_rank() -> bool:
    r = os.environ.get("RANK", "0").strip()
    return r in ("", "0")


# folder (resolved) -> open fd holding its flock, for this process
_LOCKS: dict = {}


def lock_output_dir(path: PathLike, what: str = "output folder") -> Path:
    """Take an exclusive, non-blocking ``flock`` on ``<path>/.vispos.lock`` for this process.

    Idempotent within a process (a demo that trains then evaluates into one folder takes it once). Raises
    :class:`OutputFolderInUse` naming the folder and the holder's pid when another process holds it. The lock lasts
    until :func:`release_output_locks` or the end of the process (also SIGKILL: the OS drops it). On platforms
    without ``fcntl`` (Windows) folders are not locked.
    """
    p = Path(path)
    key = os.path.realpath(p)
    if key in _LOCKS:
        return p
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        logger.warning("no fcntl on this platform: output folder %s is not locked against a second run", p)
        return p
    lock_path = p / LOCK_NAME
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise ValueError(f"{what} {str(p)!r}: cannot create its lock file {LOCK_NAME}: {e.strerror or e}") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        try:
            holder = os.read(fd, 64).decode("ascii", "replace").strip() or "unknown"
        finally:
            os.close(fd)
        raise OutputFolderInUse(
            f"{what} {str(p)!r} is in use by another vispos run (pid {holder}); wait for it to finish or choose "
            f"another output folder") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _LOCKS[key] = fd
    return p


def release_output_locks() -> None:
    """Release every output-folder lock this process holds (the lock files stay; they are empty of meaning)."""
    while _LOCKS:
        _, fd = _LOCKS.popitem()
        try:
            os.close(fd)  # closing the last descriptor releases the flock
        except OSError:  # pragma: no cover - already closed
            pass


def remove_stale_temps(folder: PathLike) -> List[Path]:
    """Remove the temp files (``.vispos-tmp.*``) an interrupted run left under ``folder`` (recursively); returns
    them. Only safe while the folder is locked by this process (no live writer can own them)."""
    removed = []
    root = Path(folder)
    for t in root.rglob(TEMP_PREFIX + "*"):
        if t.is_file() and not t.is_symlink():
            try:
                t.unlink()
            except FileNotFoundError:  # pragma: no cover - raced with nobody (we hold the lock)
                continue
            removed.append(t)
    if removed:
        logger.warning("removed %d temp file(s) left by an interrupted run in %s: %s", len(removed), root,
                       [str(t.relative_to(root)) for t in removed])
    return removed


@contextlib.contextmanager
def atomic_path(path: PathLike, suffix: str = ".tmp"):
    """Yield a temp path in ``path``'s folder for a writer that needs a file name (PyAV, savefig, ...); on success
    the file is fsync'ed and renamed onto ``path``; on any error it is removed and ``path`` is left untouched."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{p.name}.", suffix=suffix, dir=p.parent)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        _publish_mode(tmp)
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same folder + fsync + rename, see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_TRUNC), "wb") as f:
            f.write(data)
    return Path(path)


def atomic_write_text(path: PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: PathLike, obj: Any, indent: int = 2) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False, default=_json_default) + "\n")


def _json_default(o):
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # numpy is a dependency; this branch only guards exotic installs
        pass
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"cannot write {type(o).__name__} to JSON")


def atomic_write_csv(path: PathLike, rows: Sequence[Mapping[str, Any]], fieldnames: Iterable[str] = None) -> Path:
    """Write a list of dicts as CSV (columns: ``fieldnames`` or the union of keys in first-seen order)."""
    if fieldnames is None:
        fieldnames: List[str] = []
        for r in rows:
            for k in r:
                if k not in fieldnames:
                    fieldnames.append(k)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(fieldnames), extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    return atomic_write_text(path, buf.getvalue())


def atomic_torch_save(obj: Any, path: PathLike) -> Path:
    """``torch.save`` atomically."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


def load_checkpoint_file(path: PathLike, map_location="cpu", what: str = "checkpoint"):
    """``torch.load(path, weights_only=True)``: tensors and plain containers only, so a crafted file cannot run
    code when it is loaded. Every failure is a ``ValueError`` naming the file: missing, empty (0 bytes), truncated or
    not a torch file, or holding other objects (with what to do if the file is trusted)."""
    import pickle

    import torch

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{what} {str(p)!r} does not exist")
    size = p.stat().st_size
    if size == 0:
        raise ValueError(f"{what} {str(p)!r} is empty (0 bytes): an interrupted copy? Delete it (a run then starts "
                         "fresh) or restore the file")
    try:
        return torch.load(str(p), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()
        detail = next((ln.strip() for ln in first if "GLOBAL" in ln or "Unsupported" in ln), first[0] if first else "")
        raise ValueError(
            f"{what} {str(p)!r} holds objects other than tensors and plain containers ({detail}); vispos loads "
            "checkpoints with weights_only=True so that a file cannot run code. If you trust the file, convert it "
            "once in a trusted session (torch.load with weights_only disabled), then torch.save only its tensors "
            "(['model'] or its state_dict()) to a new file") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        first = str(e).strip().splitlines()
        raise ValueError(f"{what} {str(p)!r} ({size} bytes) is truncated or not a torch checkpoint: "
                         f"{first[0] if first else type(e).__name__}") from None


def file_fingerprint(path: PathLike) -> dict:
    """What identifies a file's content for a resume: ``{"size", "mtime_ns", "sha256"}``. The hash catches a file
    replaced by one with the same size and time stamp (``cp -p``, ``rsync -t``); hashing reads the file once
    (about 1 s per GB)."""
    import hashlib

    p = Path(path)
    st = p.stat()
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": h.hexdigest()}


def folder_fingerprint(path: PathLike) -> dict:
    """A data folder's listing for a resume: file count, total size and a hash of every ``(relative path, size,
    mtime)`` (files are not read: a folder of images changes when a file is added, removed, resized or touched)."""
    import hashlib

    root = Path(path)
    h = hashlib.sha256()
    n = total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            f = Path(dirpath) / name
            try:
                st = f.stat()
            except OSError:  # a dangling symlink: part of the listing too
                st = None
            rel = str(f.relative_to(root))
            h.update(f"{rel}\0{st.st_size if st else -1}\0{st.st_mtime_ns if st else -1}\n".encode())
            n += 1
            total += st.st_size if st else 0
    return {"files": n, "bytes": total, "listing_sha256": h.hexdigest()}


def atomic_savefig(fig, path: PathLike, **kwargs) -> Path:
    """Save a matplotlib figure atomically (format from the suffix)."""
    p = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format=p.suffix.lstrip(".") or "png", **kwargs)
    return atomic_write_bytes(p, buf.getvalue())


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], floatfmt: str = "{:.3f}") -> str:
    """A GitHub Markdown table."""
    def fmt(v):
        if isinstance(v, float):
            return floatfmt.format(v)
        return str(v)

    out = ["| " + " | ".join(str(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        out.append("| " + " | ".join(fmt(v) for v in r) + " |")
    return "\n".join(out) + "\n"
