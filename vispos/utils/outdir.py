"""Output folders that protect results.

The policy of every vispos command that writes a results folder:

* **No ``--out``: a fresh folder per run** (timm's convention, ``output/train/<date>-<time>-<model>-<size>``):
  :func:`timestamped_out` gives ``<root>/<YYYYmmdd-HHMMSS>-<tag>``, with ``-1``, ``-2`` ... appended if that exists.
  Two runs never share a folder.
* **An explicit ``--out`` that already holds files is refused** unless ``--resume`` (continue the run there) or
  ``--overwrite`` (replace it: the files an earlier vispos run wrote there -- the command's ``owned`` names and
  patterns, e.g. ``checkpoints/``, ``results.json``, ``*.png`` -- are deleted first, so no stale checkpoint of
  another variant sits next to the new results; anything else in the folder is kept). Hidden entries (lock files,
  temp files, names starting with ``.``) do not count.
* **No empty folder after a failed run**: :func:`results_folder` creates the folder (and missing parents) up front,
  checks that it is writable, and removes what it created if the run fails before anything is written there.
"""
from __future__ import annotations

import contextlib
import fnmatch
import os
import re
import shutil
import time
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Union

__all__ = ["DEFAULT_ROOT", "timestamped_out", "check_out", "results_folder", "remove_entries", "visible_entries"]

PathLike = Union[str, os.PathLike]

#: Root of the timestamped folders of commands run without ``--out``.
DEFAULT_ROOT = "results"


def _safe(tag: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", str(tag)).strip("_") or "run"


def timestamped_out(root: PathLike, *tags: str, now: Optional[float] = None) -> Path:
    """``<root>/<YYYYmmdd-HHMMSS>-<tag1>-<tag2>`` (tags made file-name safe); ``-1``, ``-2`` ... appended while
    the name exists. Nothing is created."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(time.time() if now is None else now))
    name = "-".join([stamp] + [_safe(t) for t in tags if t])
    p = Path(root) / name
    k = 0
    while p.exists():
        k += 1
        p = Path(root) / f"{name}-{k}"
    return p


def visible_entries(path: PathLike) -> List[str]:
    """Names in folder ``path`` that do not start with ``.`` (sorted); ``[]`` if it does not exist."""
    p = Path(path)
    if not p.is_dir():
        return []
    return sorted(e.name for e in p.iterdir() if not e.name.startswith("."))


def _owned(entries: Sequence[str], owned: Sequence[str]) -> List[str]:
    return [e for e in entries if any(fnmatch.fnmatch(e, pat.rstrip("/")) for pat in owned)]


def check_out(path: PathLike, *, resume: bool = False, overwrite: bool = False, owned: Sequence[str] = (),
              what: str = "output folder") -> List[str]:
    """Apply the policy to ``path`` before any work; returns the entries ``overwrite`` will delete (none deleted yet).

    Raises ``ValueError`` when ``path`` is a file, when both ``resume`` and ``overwrite`` are given, or when it holds
    files and neither is given (the message lists a few and the three ways out).
    """
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other: resume continues the run in the folder, "
                         "overwrite replaces it")
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValueError(f"{what} {str(p)!r} exists and is not a folder")
    entries = visible_entries(p)
    if not entries or resume:
        return []
    if not overwrite:
        shown = ", ".join(entries[:5]) + (f", ... ({len(entries)} entries)" if len(entries) > 5 else "")
        raise ValueError(f"{what} {str(p)!r} already holds {shown}: pass --overwrite to replace that run's results, "
                         f"--resume to continue it, or another --out (without --out every run gets a fresh "
                         f"timestamped folder)")
    return _owned(entries, owned)


def _missing_chain(p: Path) -> List[Path]:
    """``p`` and its ancestors that do not exist yet, deepest first."""
    out = []
    q = p.absolute()
    while not q.exists():
        out.append(q)
        if q.parent == q:
            break
        q = q.parent
    return out


@contextlib.contextmanager
def results_folder(path: PathLike, *, resume: bool = False, overwrite: bool = False, owned: Sequence[str] = (),
                   what: str = "output folder", main: bool = True) -> Iterator[Path]:
    """Check ``path`` with :func:`check_out`, create it (:func:`vispos.utils.io.ensure_writable_dir`: writable, and
    claimed for this run), delete the ``owned`` entries an ``overwrite`` replaces, and yield it. If the body raises,
    every folder this call created is removed again when nothing was written into it (so a failed run leaves no
    empty folder); the error propagates unchanged. ``main=False`` (torchrun ranks other than 0) checks and
    creates but deletes nothing."""
    from .io import ensure_writable_dir

    p = Path(path)
    doomed = check_out(p, resume=resume, overwrite=overwrite, owned=owned, what=what) if main else []
    created = _missing_chain(p)
    try:
        ensure_writable_dir(p, what)
    except ValueError:
        _remove_empty(created)
        raise
    remove_entries(p, doomed)
    try:
        yield p
    except BaseException:
        if main:
            _remove_empty(created)
        raise


def remove_entries(path: PathLike, names: Sequence[str]) -> None:
    """Delete ``names`` (files or folders) inside ``path``: what :func:`check_out` said an ``overwrite`` replaces."""
    p = Path(path)
    for name in names:
        q = p / name
        if q.is_dir() and not q.is_symlink():
            shutil.rmtree(q)
        elif q.exists() or q.is_symlink():
            q.unlink()


def _remove_empty(created: Sequence[Path]) -> None:
    for q in created:  # deepest first; stops at the first folder that holds something
        try:
            if any(not e.name.startswith(".") for e in q.iterdir()):
                return
            for e in q.iterdir():  # only hidden leftovers (a write probe, a lock): remove them with the folder
                if e.is_file():
                    e.unlink()
            q.rmdir()
        except OSError:
            return
