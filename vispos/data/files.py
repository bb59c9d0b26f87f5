"""Finding data files under a folder, with every file that cannot be used listed (never dropped silently).

:func:`scan_files` walks a folder (sorted, following symlinked folders once: a symlink loop is listed, not
followed forever) and returns the regular files with the wanted extensions, plus ``(path, reason)`` for every entry
with such an extension that is not a readable regular file: a dangling symlink, a symlink loop, a directory named
``x.mp4``, a file without read permission.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Sequence, Tuple, Union

PathLike = Union[str, os.PathLike]

__all__ = ["scan_files"]


def _why_unusable(p: Path) -> str:
    if p.is_symlink():
        try:
            p.resolve(strict=True)
        except FileNotFoundError:
            return f"dangling symlink (points to {os.readlink(p)!r}, which does not exist)"
        except RuntimeError:
            return "symlink loop"
        except OSError as e:
            return f"symlink cannot be followed: {e.strerror or e}"
    try:
        st = p.stat()
    except OSError as e:
        return f"cannot stat: {e.strerror or e}"
    import stat

    if stat.S_ISDIR(st.st_mode):
        return "a directory, not a file"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if not os.access(p, os.R_OK):
        return "not readable (permission denied)"
    return ""


def scan_files(root: PathLike, extensions: Sequence[str]) -> Tuple[List[Path], List[Tuple[str, str]]]:
    """``(files, skipped)`` under ``root`` (recursive, sorted by path) whose suffix (case-insensitive) is in
    ``extensions``. Entries with a wanted suffix that are not readable regular files are in ``skipped`` with the
    reason. Hidden entries (``.name``) are ignored, as are folders reached twice (symlink loops)."""
    exts = tuple(e.lower() for e in extensions)
    root = Path(root)
    files: List[Path] = []
    skipped: List[Tuple[str, str]] = []
    seen = set()

    def walk(d: Path):
        try:
            real = os.path.realpath(d)
        except OSError:  # pragma: no cover - realpath does not raise on Linux
            return
        if real in seen:
            skipped.append((str(d), "symlink loop (folder already visited)"))
            return
        seen.add(real)
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as e:
            skipped.append((str(d), f"cannot list folder: {e.strerror or e}"))
            return
        for e in entries:
            if e.name.startswith("."):
                continue
            p = Path(e.path)
            wanted = p.suffix.lower() in exts
            if wanted:
                reason = _why_unusable(p)
                if not reason:
                    files.append(p)
                    continue
                if reason != "a directory, not a file":
                    skipped.append((str(p), reason))
                    continue
                skipped.append((str(p), reason))  # a folder named x.mp4: listed, and its content searched too
            try:
                is_dir = p.is_dir()
            except OSError:
                is_dir = False
            if is_dir:
                walk(p)
            elif not wanted and p.is_symlink() and _why_unusable(p).startswith("symlink loop"):
                skipped.append((str(p), "symlink loop"))

    walk(root)
    return sorted(files), skipped
