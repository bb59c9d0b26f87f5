"""An ImageFolder (``root/<class>/<image>``) that checks its files, skips the bad ones and names them.

torchvision's ``ImageFolder`` opens files only when a batch needs them, so one corrupt file crashes a run at the
same step every time (batches are deterministic), also after ``--resume``. :class:`CheckedImageFolder` instead:

* checks every file when it is built (:func:`check_image`): it must open as an image (zero-byte and text files do
  not), have at most ``max_pixels`` pixels (a decompression bomb -- a tiny file claiming e.g. 65535x65535 -- is
  refused before any decoding), pass PIL's ``verify()`` (PNG: every chunk's CRC, so a truncated PNG fails) and, for
  JPEGs, end with the end-of-image marker (a truncated JPEG does not; one that lacks it is decoded in full to
  decide). Files that fail are left out and listed in :attr:`skipped` as ``(path, reason)``, with a warning;
* decodes with ``LOAD_TRUNCATED_IMAGES`` off (a short file is an error, never grey padding). A file that still fails
  when it is loaded (changed on disk, an error the checks could not see) is added to :attr:`skipped`, warned about,
  and replaced by the next good sample (a deterministic choice: the same in every run and after a resume, so a
  resume never meets the same crash again);
* converts 16-bit greyscale (PIL modes ``I;16*`` and ``I``) to 8 bits by scaling (``v * 255 / 65535``, rounded),
  instead of PIL's ``convert("RGB")`` which clips every value above 255 to white.

Classes are the sorted sub-folder names (torchvision's convention); a class folder without any usable image is an
error naming it. ``ds[i]`` is ``(transform(image), class index)``; :attr:`samples`, :attr:`targets`,
:attr:`classes`, :attr:`class_to_idx`, :attr:`transform` and :meth:`loader` are torchvision's names.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

from .files import scan_files

PathLike = Union[str, os.PathLike]

__all__ = ["IMAGE_EXTENSIONS", "CheckedImageFolder", "check_image", "load_rgb"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
DEFAULT_MAX_PIXELS = 89_478_485  # PIL's own default Image.MAX_IMAGE_PIXELS (1024 * 1024 * 1024 // 4 // 3)


def _open(path):
    from PIL import Image

    return Image.open(path)


def check_image(path: PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> str:
    """Why ``path`` cannot be used as an image (``""`` when it can). Decodes nothing but a suspect JPEG."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError as e:
        return f"cannot stat: {e.strerror or e}"
    if size == 0:
        return "empty file (0 bytes)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with _open(p) as img:
                w, h = img.size
                fmt = img.format
                if w * h > max_pixels:
                    return (f"decompression-bomb guard: {w}x{h} = {w * h} pixels > max_pixels={max_pixels} (a "
                            "larger limit: CheckedImageFolder(max_pixels=...))")
                img.verify()
    except UnidentifiedImageError:
        return "not an image PIL can identify (corrupt, or another kind of file)"
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        return f"decompression-bomb guard: {e}"
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # PIL's errors for broken streams
        return f"corrupt image: {e}"
    if fmt == "JPEG" and not _jpeg_has_end(p):
        try:
            load_rgb(p, max_pixels)
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            return f"truncated or corrupt JPEG: {e}"
    return ""


def _jpeg_has_end(p: Path) -> bool:
    with open(p, "rb") as f:
        f.seek(max(0, p.stat().st_size - 64))
        tail = f.read().rstrip(b"\x00\r\n \t")
    return tail.endswith(b"\xff\xd9")


def load_rgb(path: PathLike, max_pixels: int = DEFAULT_MAX_PIXELS):
    """Decode ``path`` to an RGB PIL image, strictly (no truncated-image padding, the pixel limit enforced);
    16-bit greyscale is scaled to 8 bits, not clipped."""
    import numpy as np
    from PIL import Image, ImageFile

    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise ValueError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is on: truncated files would be padded silently; "
                         "turn it off to load data with vispos")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with _open(path) as img:
            w, h = img.size
            if w * h > max_pixels:
                raise ValueError(f"{w}x{h} = {w * h} pixels > max_pixels={max_pixels}")
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
                a = np.asarray(img).astype(np.float64)
                hi = 65535.0 if img.mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
                a = np.clip(np.rint(a * (255.0 / hi)), 0, 255).astype(np.uint8)
                return Image.fromarray(a, "L").convert("RGB")
            return img.convert("RGB")


class CheckedImageFolder:
    """``root/<class>/<image>`` with bad files skipped and listed (see the module doc).

    Args:
        root: the folder; one sub-folder per class.
        transform: applied to the RGB PIL image (``ds.transform`` may be replaced later, as with torchvision).
        extensions: image suffixes looked for.
        max_pixels: images with more pixels are skipped (decompression-bomb guard).
        what: how errors name the folder (``"data folder"``).
    """

    def __init__(self, root: PathLike, transform: Optional[Callable] = None,
                 extensions: Sequence[str] = IMAGE_EXTENSIONS, max_pixels: int = DEFAULT_MAX_PIXELS,
                 what: str = "image folder"):
        self.root = Path(root)
        self.transform = transform
        self.max_pixels = int(max_pixels)
        self.skipped: List[Tuple[str, str]] = []
        if not self.root.is_dir():
            raise ValueError(f"{what} {str(self.root)!r} is not a folder (expected an ImageFolder: one sub-folder "
                             "per class)")
        self.classes = sorted(e.name for e in os.scandir(self.root) if e.is_dir() and not e.name.startswith("."))
        if not self.classes:
            raise ValueError(f"{what} {str(self.root)!r} has no class sub-folders (expected root/<class>/<image>)")
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.samples: List[Tuple[str, int]] = []
        empty, all_bad = [], []
        for c in self.classes:
            files, unusable = scan_files(self.root / c, extensions)
            for path, reason in unusable:
                self._skip(path, reason)
            good = 0
            for f in files:
                reason = check_image(f, self.max_pixels)
                if reason:
                    self._skip(f, reason)
                    continue
                self.samples.append((str(f), self.class_to_idx[c]))
                good += 1
            if not files and not unusable:
                empty.append(c)
            elif not good:
                all_bad.append(c)
        if empty or all_bad:
            parts = []
            if empty:
                parts.append(f"class folder(s) {empty} hold no files with extensions {tuple(extensions)}")
            if all_bad:
                parts.append(f"class folder(s) {all_bad} hold no usable image (all skipped)")
            raise ValueError(f"{what} {str(self.root)!r}: " + "; ".join(parts) + " -- every class needs at least "
                             f"one image (remove the folder or add images); skipped: {self.skipped}")
        self.targets = [t for _, t in self.samples]

    def _skip(self, path, reason: str) -> None:
        self.skipped.append((str(path), reason))
        warnings.warn(f"CheckedImageFolder: skipping {str(path)!r}: {reason}", RuntimeWarning, stacklevel=3)

    def __len__(self) -> int:
        return len(self.samples)

    def loader(self, path: PathLike):
        """Strict RGB decode of one file (raises on a bad file); :meth:`load` is the skipping version."""
        return load_rgb(path, self.max_pixels)

    def load(self, index: int):
        """``(RGB PIL image, class index)`` of sample ``index``; a file that fails to decode is recorded in
        :attr:`skipped` and the next sample (cyclically) is used instead."""
        n = len(self.samples)
        if not 0 <= index < n:
            raise IndexError(f"index {index} out of range for {n} images")
        bad = {p for p, _ in self.skipped}
        for k in range(n):
            path, target = self.samples[(index + k) % n]
            if path in bad:
                continue
            try:
                return self.loader(path), target
            except (OSError, SyntaxError, ValueError, EOFError) as e:
                self._skip(path, f"failed to decode when loaded: {e}")
                bad.add(path)
        raise ValueError(f"none of the {n} images in {str(self.root)!r} could be decoded; skipped: {self.skipped}")

    def __getitem__(self, index: int):
        img, target = self.load(int(index))
        return (self.transform(img) if self.transform is not None else img), target

    def __repr__(self) -> str:
        return (f"CheckedImageFolder({str(self.root)!r}, {len(self.samples)} images, {len(self.classes)} classes, "
                f"{len(self.skipped)} skipped)")
