"""Atomic writes: results and checkpoints are written to a temp file in the same folder, then renamed.

A reader never sees a half-written file: either the old one or the complete new one.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, List, Mapping, Sequence, Union

__all__ = [
    "ensure_writable_dir",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_write_csv",
    "atomic_torch_save",
    "atomic_savefig",
    "markdown_table",
]

PathLike = Union[str, os.PathLike]


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


_UMASK = _umask()


def _publish_mode(tmp: str) -> None:
    """``mkstemp`` files are 0600; give results the mode a normal ``open()`` would (0666 minus the umask)."""
    os.chmod(tmp, 0o666 & ~_UMASK)


def ensure_writable_dir(path: PathLike, what: str = "output folder") -> Path:
    """Create ``path`` if needed and check it is a writable folder; ``ValueError`` naming it otherwise.

    Call this before any work starts, so a long run never fails at the end for a bad output path.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValueError(f"{what} {str(p)!r} exists and is not a folder")
    try:
        p.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".write-test-", dir=p)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise ValueError(f"{what} {str(p)!r} is not writable: {e.strerror or e}") from e
    return p


@contextlib.contextmanager
def atomic_path(path: PathLike, suffix: str = ".tmp"):
    """Yield a temp path in ``path``'s folder for a writer that needs a file name (PyAV, savefig, ...); on success
    the file is fsync'ed and renamed onto ``path``; on any error it is removed and ``path`` is left untouched."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=suffix, dir=p.parent)
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
