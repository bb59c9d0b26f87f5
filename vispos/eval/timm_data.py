"""Evaluation data the way timm's own validation prepares it.

timm's ``validate.py`` resolves the model's data config (``timm.data.resolve_data_config(args, model=model)``:
input size, interpolation, mean, std, crop_pct, crop_mode from the model's ``pretrained_cfg``, each overridable),
builds ``timm.data.create_transform(**data_config)`` and reads the folder with ``timm.data.create_dataset`` (an
``ImageDataset``; ``--class-map`` maps folder names to model output indices). vispos does exactly that, with the
input size replaced by each test size of the sweep:

* :func:`resolve_eval_config` -- the model's data config with overrides (``mean`` / ``std`` / ``crop_pct`` /
  ``interpolation`` / ``crop_mode``); an augreg ViT gets mean = std = 0.5 and crop 0.9, EVA-02 the CLIP statistics.
* :func:`eval_transform` -- ``create_transform(input_size=(3, H, W), is_training=False, ...)`` for one test size.
* :func:`image_dataset` -- timm's ``ImageDataset`` over a folder (one sub-folder per class, or a ``val`` /
  ``validation`` split inside it), with an optional class map (a ``.txt`` file: line ``i`` names class ``i``; or a
  ``{folder name: index}`` dict).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Union

__all__ = ["DATA_CONFIG_KEYS", "CROP_MODES", "INTERPOLATIONS", "resolve_eval_config", "eval_transform",
           "image_dataset", "read_class_map"]

#: the keys of timm's data config that a user can override
DATA_CONFIG_KEYS = ("mean", "std", "crop_pct", "interpolation", "crop_mode")
CROP_MODES = ("center", "squash", "border")
INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "lanczos", "box", "hamming", "random")


def _three(v, key: str):
    if v is None:
        return None
    if isinstance(v, str):
        v = [x for x in v.replace(" ", "").split(",") if x]
        try:
            v = [float(x) for x in v]
        except ValueError:
            raise ValueError(f"{key} must be three numbers like '0.5,0.5,0.5' (or one), got {v!r}") from None
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        v = [v]
    if not isinstance(v, (list, tuple)) or len(v) not in (1, 3) or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
        raise ValueError(f"{key} must be three numbers (one per RGB channel) or one, got {v!r}")
    v = [float(x) for x in v] * (3 if len(v) == 1 else 1)
    if key == "std" and any(x <= 0 for x in v):
        raise ValueError(f"std must be positive, got {v}")
    return tuple(v)


def resolve_eval_config(model=None, *, pretrained_cfg: Optional[Mapping[str, Any]] = None, mean=None, std=None,
                        crop_pct: Optional[float] = None, interpolation: Optional[str] = None,
                        crop_mode: Optional[str] = None) -> Dict[str, Any]:
    """``timm.data.resolve_data_config(overrides, model=model)``, checked: ``{input_size, interpolation, mean, std,
    crop_pct, crop_mode}``. ``None`` overrides keep the model's value. ``ValueError`` names a bad override."""
    from timm.data import resolve_data_config

    if model is None and pretrained_cfg is None:
        raise TypeError("resolve_eval_config needs model= (a timm model) or pretrained_cfg= (a dict)")
    args: Dict[str, Any] = {}
    if mean is not None:
        args["mean"] = _three(mean, "mean")
    if std is not None:
        args["std"] = _three(std, "std")
    if crop_pct is not None:
        if isinstance(crop_pct, bool) or not isinstance(crop_pct, (int, float)) or not 0 < crop_pct <= 1:
            raise ValueError(f"crop_pct must be a number in (0, 1], got {crop_pct!r}")
        args["crop_pct"] = float(crop_pct)
    if interpolation is not None:
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
        args["interpolation"] = interpolation
    if crop_mode is not None:
        if crop_mode not in CROP_MODES:
            raise ValueError(f"crop_mode must be one of {CROP_MODES}, got {crop_mode!r}")
        args["crop_mode"] = crop_mode
    cfg = resolve_data_config(args, pretrained_cfg=dict(pretrained_cfg) if pretrained_cfg else None, model=model)
    cfg["mean"] = tuple(float(x) for x in cfg["mean"])
    cfg["std"] = tuple(float(x) for x in cfg["std"])
    return cfg


def eval_transform(data_config: Mapping[str, Any], size=None):
    """timm's eval transform for ``data_config`` at ``size`` (``(H, W)``, an int, or ``None`` for the config's own
    input size): ``timm.data.create_transform(input_size=(3, H, W), is_training=False, interpolation, mean, std,
    crop_pct, crop_mode)``."""
    from timm.data import create_transform

    from ..data.images import parse_size

    if size is None:
        c, h, w = data_config["input_size"]
    else:
        h, w = parse_size(tuple(size) if isinstance(size, list) else size)
    return create_transform(input_size=(3, int(h), int(w)), is_training=False,
                            interpolation=data_config["interpolation"], mean=tuple(data_config["mean"]),
                            std=tuple(data_config["std"]), crop_pct=data_config["crop_pct"],
                            crop_mode=data_config.get("crop_mode"))


def read_class_map(class_map: Union[str, Path, Mapping[str, int], None]) -> Optional[Dict[str, int]]:
    """A class map as ``{folder name: model output index}``: a dict (checked), a ``.txt`` file (line ``i`` names
    class ``i``, timm's format) or ``None``. ``ValueError`` for a missing / malformed file."""
    if class_map is None:
        return None
    if isinstance(class_map, Mapping):
        out = dict(class_map)
    else:
        p = Path(class_map)
        if not p.is_file():
            raise ValueError(f"class map {str(p)!r} does not exist (expected a .txt file, one class name a line)")
        if p.suffix.lower() != ".txt":
            raise ValueError(f"class map {str(p)!r} must be a .txt file (line i names class i), got {p.suffix!r}")
        names = [line.strip() for line in p.read_text(encoding="utf-8").splitlines()]
        while names and not names[-1]:
            names.pop()
        if not names or any(not n for n in names):
            raise ValueError(f"class map {str(p)!r} must name one class per line, without blank lines")
        out = {n: i for i, n in enumerate(names)}
        if len(out) != len(names):
            raise ValueError(f"class map {str(p)!r} names a class twice")
    if not out or not all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0
                          for k, v in out.items()):
        raise ValueError(f"class map must map folder names (str) to output indices (int >= 0), got {class_map!r}")
    return out


def image_dataset(root, class_map=None, split: str = "validation", transform=None):
    """timm's ``ImageDataset`` over ``root`` (``timm.data.create_dataset("", root, split=split, class_map=...)``:
    a ``val`` / ``validation`` sub-folder is used when present). Raises ``ValueError`` for a missing folder, a folder
    without images, or class folders the class map does not name."""
    from timm.data import create_dataset

    p = Path(root)
    if not p.is_dir():
        raise ValueError(f"data folder {str(p)!r} is not a folder (expected an ImageFolder: one sub-folder per class)")
    cmap = read_class_map(class_map)
    if cmap is not None:
        folders = sorted(e.name for e in _split_dir(p, split).iterdir() if e.is_dir())
        unknown = [f for f in folders if f not in cmap]
        if unknown:
            raise ValueError(f"class folders {unknown[:5]} of {str(p)!r} are not in the class map (it names "
                             f"{sorted(cmap)[:5]}{' ...' if len(cmap) > 5 else ''})")
    try:
        ds = create_dataset("", root=str(p), split=split, is_training=False, class_map=cmap or "",
                            transform=transform)
    except (AssertionError, FileNotFoundError, RuntimeError) as e:
        if "Found 0 images" in str(e):
            raise ValueError(f"data folder {str(p)!r} holds no images in class sub-folders ({e})") from None
        raise ValueError(f"data folder {str(p)!r} cannot be read as an ImageFolder: {e}") from None
    # bad files (zero-byte, text, truncated, decompression bombs) are left out and named, before any evaluation:
    # timm's loader would otherwise retry the next index and count a sample twice, or crash the run
    from ..data.image_folder import check_image

    reader = getattr(ds, "reader", None)
    skipped = []
    if reader is not None and isinstance(getattr(reader, "samples", None), list):
        good = []
        for path, target in reader.samples:
            why = check_image(path)
            if why:
                skipped.append((str(path), why))
                warnings.warn(f"data folder: skipping {str(path)!r}: {why}", RuntimeWarning, stacklevel=2)
            else:
                good.append((path, target))
        reader.samples = good
    ds.skipped = skipped
    if reader is not None and isinstance(getattr(reader, "samples", None), list):
        # decode as vispos's own loader does: 16-bit greyscale scaled to 8 bits (PIL's convert("RGB") clips it to
        # white), strict decoding; everything else (transform, targets, class map) stays timm's
        ds.__class__ = _decoded_subclass(type(ds))
    if len(ds) == 0:
        raise ValueError(f"data folder {str(p)!r} holds no images" + (f"; skipped: {skipped}" if skipped else ""))
    return ds


_DECODED: Dict[type, type] = {}


def _decoded_subclass(base: type) -> type:
    """``base`` (timm's ``ImageDataset``) with items decoded by :func:`vispos.data.image_folder.load_rgb`."""
    cls = _DECODED.get(base)
    if cls is None:
        def __getitem__(self, index):
            from ..data.image_folder import load_rgb

            path, target = self.reader.samples[index][:2]
            img = load_rgb(path)
            if self.transform is not None:
                img = self.transform(img)
            if target is None:
                target = -1
            elif self.target_transform is not None:
                target = self.target_transform(target)
            return img, target

        name = f"Decoded{base.__name__}" + (f"_{len(_DECODED)}" if _DECODED else "")
        cls = type(name, (base,), {"__getitem__": __getitem__, "__module__": __name__, "__qualname__": name})
        globals()[name] = cls  # reachable by name, so the dataset pickles (DataLoader workers under spawn)
        _DECODED[base] = cls
    return cls


def _split_dir(root: Path, split: str) -> Path:
    """The folder timm's ``create_dataset`` reads for ``split`` (its ``_search_split``)."""
    names = {"validation": ("validation", "val", "valid", "eval", "evaluation"), "train": ("train", "training")}
    for n in names.get(split, (split,)):
        if (root / n).is_dir():
            return root / n
    return root


def class_names(dataset) -> Sequence[str]:
    """Folder class names of a timm ``ImageDataset`` ordered by their index."""
    c2i = dataset.reader.class_to_idx
    return [k for k, _ in sorted(c2i.items(), key=lambda kv: kv[1])]
