"""``vispos eval/train resolution`` models: a timm model per variant, checkpoints loaded and checked."""
from __future__ import annotations

import logging
from typing import Optional, Sequence, Tuple

import torch

from ...utils.io import load_checkpoint_file
from .config import Variant, size_label

log = logging.getLogger(__name__)

# ---- models ------------------------------------------------------------------------------------------------------
def build_model(variant: Variant, num_classes: int, img_size: Optional[Sequence[int]] = None,
                checkpoint: Optional[str] = None, pretrained: bool = False) -> torch.nn.Module:
    """The timm model of ``variant`` (``dynamic_img_size=True``: it runs at any multiple of its patch size).

    Args:
        num_classes: classifier width.
        img_size: ``(H, W)`` the model is built for (its training size: learned APE tables have that grid).
        checkpoint: a file with a state dict (or a dict with a ``"model"`` / ``"state_dict"`` entry); loaded
            strictly. A timm-format checkpoint with ``pos_embed`` for a vispos PE is converted by
            :func:`vispos.create_model`.
        pretrained: timm's pretrained weights (hub or local cache; a head of another size is re-initialised by timm,
            the APE resampled to ``img_size``), converted for a vispos PE.
    """
    import timm

    kw = dict(variant.model_kwargs)
    naflex = is_naflex_name(variant.model, kw)
    if not naflex:  # a NaFlexViT runs at any size and has no such option
        kw.setdefault("dynamic_img_size", True)
    kw["num_classes"] = num_classes
    if img_size is not None:
        kw["img_size"] = tuple(img_size)
        if naflex:  # its learned table at the training grid (img_size // patch), as the ViTs' APE
            kw.setdefault("pos_embed_grid_size", None)
    if variant.pe == "timm":
        model = timm.create_model(variant.model, pretrained=pretrained, **kw)
    else:
        from ...integrations.timm import create_model

        model = create_model(variant.model, pe=variant.pe, pe_kwargs=variant.pe_kwargs, pretrained=pretrained, **kw)
    if checkpoint is not None:
        _load_weights(model, variant, checkpoint, kw)
    return model


def _state_dict_of(obj, path) -> dict:
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        return obj["model"]
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        return obj["state_dict"]
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    raise ValueError(f"checkpoint {str(path)!r} holds no state dict (expected a dict of tensors or a dict with a "
                     f"'model' / 'state_dict' entry)")


def _load_weights(model, variant: Variant, path, kw) -> None:
    obj = load_checkpoint_file(path)  # weights only; a ValueError naming the file and why it cannot be read
    traj = obj.get("trajectory") if isinstance(obj, dict) else None
    if isinstance(traj, dict) and traj.get("train_size") is not None:
        built = list(kw.get("img_size") or [])
        if built and [int(v) for v in built] != [int(v) for v in traj["train_size"]]:
            raise ValueError(f"checkpoint {str(path)!r} was trained at {traj['train_size']} but the model is built "
                             f"for {built}; pass --train-size {size_label(tuple(traj['train_size']))}")
    sd = _state_dict_of(obj, path)
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    own = model.state_dict()
    if set(sd) == set(own):
        bad = [k for k in sd if sd[k].shape != own[k].shape]
        if bad:
            raise ValueError(
                f"checkpoint {str(path)!r} does not fit variant {variant.name!r}: shape mismatch for {bad[:5]} "
                f"(e.g. {bad[0]}: {tuple(sd[bad[0]].shape)} vs {tuple(own[bad[0]].shape)}); build the model like "
                f"the checkpoint (model_kwargs, train_size for learned APE tables, number of classes)")
        model.load_state_dict(sd, strict=True)
        return
    if variant.pe != "timm" and ("pos_embed" in sd or "embeds.pos_embed" in sd):  # ViT / EVA, or NaFlexViT
        # a plain timm checkpoint for a vispos PE: let the timm integration convert it (pos_embed -> ape, ...)
        log.info("checkpoint %s is in timm format; converting it for PE %s", path, variant.pe)
        from ...integrations.timm import create_model

        new = create_model(variant.model, pe=variant.pe, pe_kwargs=variant.pe_kwargs, checkpoint_path=str(path), **kw)
        model.load_state_dict(new.state_dict(), strict=True)
        return
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    raise ValueError(f"checkpoint {str(path)!r} does not fit variant {variant.name!r} ({variant.model}, pe "
                     f"{variant.pe}): missing keys {missing[:8]}, unexpected keys {unexpected[:8]}")


def is_naflex_name(model_name: str, model_kwargs) -> bool:
    """Whether timm builds a NaFlexViT for this name and kwargs (a ``naflexvit_*`` model, or ``use_naflex=True``)."""
    import timm

    arch = timm.models.get_arch_name(model_name)
    return bool(model_kwargs.get("use_naflex")) or arch in timm.list_models(module="naflexvit")


def patch_size_of(model) -> Tuple[int, int]:
    embeds = getattr(model, "embeds", None)
    if embeds is not None and hasattr(embeds, "patch_size"):  # NaFlexViT
        ps = embeds.patch_size
        return (ps, ps) if isinstance(ps, int) else (int(ps[0]), int(ps[1]))
    pe = getattr(model, "patch_embed", None)
    ps = getattr(pe, "patch_size", None)
    if ps is None:
        raise ValueError(f"cannot find the patch size of {type(model).__name__} (no patch_embed.patch_size)")
    return (ps, ps) if isinstance(ps, int) else (int(ps[0]), int(ps[1]))


def img_size_of(model) -> Tuple[int, int]:
    """The size the model is built for: ``patch_embed.img_size``, or a NaFlexViT's table grid times its patch."""
    embeds = getattr(model, "embeds", None)
    if embeds is not None and hasattr(embeds, "patch_size"):
        from ...integrations.timm.naflex import naflex_grid

        ph, pw = patch_size_of(model)
        gh, gw = naflex_grid(model)
        return gh * ph, gw * pw
    s = model.patch_embed.img_size
    return tuple(int(v) for v in (s if isinstance(s, (tuple, list)) else (s, s)))


def checkpoint_train_size(variants) -> Optional[Tuple[int, int]]:
    """The training size recorded in the variants' checkpoints (vispos ``train resolution`` checkpoints record it),
    so an eval without ``--train-size`` builds every model at the grid it was trained on. ``None`` if no checkpoint
    records one; ``ValueError`` if they disagree."""
    seen = {}
    for v in variants:
        if not v.checkpoint:
            continue
        obj = load_checkpoint_file(v.checkpoint)
        traj = obj.get("trajectory") if isinstance(obj, dict) else None
        if isinstance(traj, dict) and traj.get("train_size") is not None:
            seen[v.name] = tuple(int(x) for x in traj["train_size"])
    sizes = set(seen.values())
    if len(sizes) > 1:
        raise ValueError(f"the checkpoints were trained at different sizes {seen}; pass --train-size and evaluate "
                         f"them separately")
    return sizes.pop() if sizes else None


def checkpoint_num_classes(variants) -> Optional[int]:
    """The classifier rows (``head.weight``) of the variants' checkpoints, so a checkpoint with more outputs than
    the folder has classes (a 1000-class model on a 3-class subset) is built with its own head. ``None`` if no
    checkpoint has such a head; ``ValueError`` if they disagree."""
    from ..checkpoints import checkpoint_record

    seen = {}
    for v in variants:
        if v.checkpoint:
            n = checkpoint_record(v.checkpoint)["num_classes"]
            if n is not None:
                seen[v.name] = n
    if len(set(seen.values())) > 1:
        raise ValueError(f"the checkpoints have different numbers of classes {seen}; evaluate them separately")
    return next(iter(seen.values())) if seen else None
