"""timm's NaFlexViT (``naflexvit_*``, and any timm model built with ``use_naflex=True``) as a vispos host.

A NaFlexViT takes two input forms, and so does its vispos twin:

* a standard image batch ``(B, C, H, W)``: one grid for the batch, a :class:`~vispos.grid.GridLayout`;
* NaFlex patches: a dict (timm's NaFlex collator output) or ``forward(patches, patch_coord=, patch_valid=)`` with
  ``patches (B, N, P*P*C)``, ``patch_coord (B, N, 2)`` (row, column) and ``patch_valid (B, N)``: every sample its
  own grid, padded to ``N`` -- a :class:`~vispos.grid.PackedLayout` (:meth:`PackedLayout.from_patch_coord`). The
  attention mask comes from the layout inside :func:`vispos.attention.attend` (padding keys masked); pooling is
  timm's own masked pooling (``global_pool_naflex`` / the attention pool with ``patch_valid``).

timm's own PE lives in ``embeds`` (``pos_embed (1, H, W, C)`` learned, or ``pos_embed_y`` / ``pos_embed_x``
factorized) and ``rope`` (axial / mixed / DINOv3 / MRoPE rotary modules); the host describes them by role
(:func:`host_pe`) and removes them when the vispos PE is installed.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from timm.layers import Attention as TimmAttention
from timm.layers.attention import AttentionRope
from timm.models import checkpoint
from timm.models._features import feature_take_indices
from timm.models.eva import EvaAttention, EvaBlock
from timm.models.naflexvit import NaFlexVit, batch_patchify
from timm.models.vision_transformer import Block
from torch import nn

from ...grid import GridLayout
from ...pe.host import HostFreqs, HostPE, HostTable
from .hooks import (
    PECall,
    TimmHost,
    _EvaAttentionHooks,
    _EvaBlockHooks,
    _ModelHooks,
    _RopeAttentionHooks,
    _VitAttentionHooks,
    _VitBlockHooks,
    add_host,
)

__all__ = ["NaFlexVit", "naflex_grid", "host_pe", "checkpoint_roles"]


def naflex_grid(model: NaFlexVit) -> Tuple[int, int]:
    """The host's training grid: the learned table's grid (``pos_embed_grid_size``), else ``img_size // patch``
    (``default_img_size``), else the pretrained config's input size over the patch size."""
    e = model.embeds
    if e.pos_embed is not None:
        return tuple(int(s) for s in e.pos_embed.shape[1:3])
    if e.pos_embed_y is not None:
        return int(e.pos_embed_y.shape[1]), int(e.pos_embed_x.shape[1])
    if e.pos_embed_grid_size is not None:
        return tuple(int(s) for s in e.pos_embed_grid_size)
    ph, pw = e.patch_size
    size = e.default_img_size
    if size is None:
        inp = (getattr(model, "pretrained_cfg", None) or {}).get("input_size")
        size = tuple(inp[-2:]) if inp else None
    if size is None:
        raise ValueError("NaFlexVit has no pos_embed_grid_size, img_size or pretrained input_size; vispos needs a "
                         "training grid: build it with img_size=... or pos_embed_grid_size=(H, W)")
    return int(size[0]) // ph, int(size[1]) // pw


def _resample_settings(e) -> Dict[str, Any]:
    """How timm resamples this model's table at another grid. Factorized tables are resampled linearly per axis
    (no antialias, ``align_corners=False``) and summed: on their full table ``y[h] + x[w]`` that is exactly
    bilinear resampling (the weights of each axis sum to one), so a vispos ``ape`` with ``mode="bilinear"``,
    ``antialias=False`` reproduces them. Their grid_sample variant (``pos_embed_use_grid_sample``) samples each axis
    linearly at the cell centres ``(2c + 1) / n - 1`` with border clamping: the same values, so it needs nothing
    else. A learned table's grid_sample read-out is ``ape(grid_sample=True)``."""
    if e.pos_embed_type == "factorized" or e.pos_embed_y is not None:
        return dict(mode="bilinear", antialias=False, ar_preserving=bool(e.pos_embed_ar_preserving),
                    align_corners=False)
    return dict(mode=e.pos_embed_interp_mode, antialias=bool(e.pos_embed_antialias),
                ar_preserving=bool(e.pos_embed_ar_preserving), align_corners=bool(e.pos_embed_align_corners),
                grid_sample=bool(e.pos_embed_use_grid_sample))


def _factorized(y: torch.Tensor, x: torch.Tensor, source: str) -> HostTable:
    """A factorized pair ``pos_embed_y (1, H, C)``, ``pos_embed_x (1, W, C)`` as the full table
    ``y[h] + x[w]`` ``(1, H*W, C)`` it adds (see :func:`_resample_settings` for its resampling)."""
    H, W, C = y.shape[1], x.shape[1], y.shape[2]
    full = (y[:, :, None, :] + x[:, None, :, :]).reshape(1, H * W, C)
    return HostTable(full, (H, W), 0, f"{source} (factorized, as its full table)")


def host_pe(model: NaFlexVit, convert: bool, log, roles: Optional[Dict[str, Any]] = None) -> HostPE:
    """The NaFlexViT as a :class:`~vispos.pe.host.HostPE`: its training grid, prefix tokens (never in the table),
    its table resampling (``pos_embed_interp_mode``, antialias, aspect preservation, align_corners) and, unless
    ``roles`` is given (a checkpoint's), its own PE by role."""
    e = model.embeds
    # timm's rule as recorded when the PE was installed (its tables are gone then), else the model's own
    settings = getattr(model, "_vispos_naflex_resample", None) or _resample_settings(e)
    host = HostPE(naflex_grid(model), int(model.num_prefix_tokens), prefix_in_table=False,
                  resample=dict(settings), convert=convert, log=log)
    if roles is not None:
        host.roles.update(roles)
        return host
    if e.pos_embed is not None:
        H, W, C = e.pos_embed.shape[1:]
        host.roles["abs_table"] = HostTable(e.pos_embed.detach().reshape(1, H * W, C), (H, W), 0,
                                            "embeds.pos_embed")
    elif e.pos_embed_y is not None:
        host.roles["abs_table"] = _factorized(e.pos_embed_y.detach(), e.pos_embed_x.detach(),
                                              "embeds.pos_embed_y/x")
    rope = getattr(model, "rope", None)
    if rope is not None:
        host.roles["rotary"] = rope
        if isinstance(getattr(rope, "freqs", None), nn.Parameter):
            host.roles["mixed_freqs"] = HostFreqs(rope.freqs.detach(), getattr(rope, "grid_indexing", "xy"),
                                                  "rope.freqs")
    return host


def checkpoint_roles(model: NaFlexVit, sd: dict, prefix: str) -> Dict[str, Any]:
    """Pop timm's PE keys of a NaFlexViT checkpoint out of ``sd``, as roles (``embeds.pos_embed`` at any grid,
    ``embeds.pos_embed_y/x``, ``rope.freqs``)."""
    roles = {}
    pos = sd.pop(f"{prefix}embeds.pos_embed", None)
    if pos is not None:
        if pos.dim() != 4 or pos.shape[0] != 1:
            raise ValueError(f"checkpoint embeds.pos_embed {tuple(pos.shape)} is not a NaFlex table (1, H, W, C)")
        H, W, C = pos.shape[1:]
        roles["abs_table"] = HostTable(pos.reshape(1, H * W, C), (H, W), 0, "checkpoint embeds.pos_embed")
    y, x = sd.pop(f"{prefix}embeds.pos_embed_y", None), sd.pop(f"{prefix}embeds.pos_embed_x", None)
    if y is not None and x is not None:
        roles["abs_table"] = _factorized(y, x, "checkpoint embeds.pos_embed_y/x")
    freqs = sd.pop(f"{prefix}rope.freqs", None)
    if freqs is not None:
        roles["mixed_freqs"] = HostFreqs(freqs, getattr(model, "_vispos_timm_rope_indexing", "ij"),
                                         "checkpoint rope.freqs")
    return roles


def unreproduced_settings(model: NaFlexVit, pe: nn.Module, host: HostPE) -> list:
    """What the PE member that took timm's learned table does not reproduce of timm's resampling of it (the
    options it has for it: ``mode``, ``antialias``, ``ar_preserving``, ``align_corners``, ``grid_sample``)."""
    out = []
    owner = host.taken.get("abs_table")
    if owner is not None:
        member = dict(pe.named_modules(prefix="pe")).get(owner.rsplit(".", 1)[0])
        for k, v in host.resample.items():
            have = getattr(member, k, False if k in ("ar_preserving", "align_corners", "grid_sample") else None)
            if have != v:
                hint = (f" (build it with pe_kwargs {k}={v!r})" if member is not None and hasattr(member, k)
                        else " (the vispos table has no such option)")
                timm_name = dict(mode="interp_mode", grid_sample="use_grid_sample").get(k, k)
                out.append(f"{owner.rsplit('.', 1)[0]}: timm pos_embed_{timm_name}={v!r}, "
                           f"the vispos table has {k}={have!r}{hint}")
    return out


# ---- timm's aspect-preserving table resampling -------------------------------------------------------------------
class _AspectPreservingTable:
    """Over vispos ``ape`` on a NaFlexViT built with ``pos_embed_ar_preserving=True``: at a grid ``(h, w)`` other
    than the table's, the table is resampled (the APE's own mode / antialias) to the square ``(L, L)``,
    ``L = max(h, w)``, and its top-left ``h x w`` rows are used -- timm NaFlex's rule, per sample on a packed batch
    (the APE reads its tables through :meth:`get_table`)."""

    ar_preserving = True

    def get_table(self, grid, sampled: bool = False):
        grid = tuple(int(g) for g in grid)
        if len(grid) != 2 or (grid == tuple(self.grid) and not sampled):
            return super().get_table(grid, sampled)
        side = max(grid)
        table = super().get_table((side, side), sampled)
        p = self.table_prefix
        patch = table[:, p:].reshape(1, side, side, -1)[:, :grid[0], :grid[1]].reshape(1, grid[0] * grid[1], -1)
        return torch.cat([table[:, :p], patch], dim=1)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", ar_preserving=True (timm NaFlex)"


def adopt_resampling(model: NaFlexVit, pe: nn.Module) -> None:
    """Give the learned tables (``ape``, also inside ``lape``) of a PE built by name for this NaFlexViT timm's
    aspect-preserving resampling when the model uses it (``pos_embed_ar_preserving=True``)."""
    from ...pe.absolute import AbsolutePE
    from .hooks import _subclass

    if not model.embeds.pos_embed_ar_preserving:
        return
    for m in pe.modules():
        if type(m) is AbsolutePE and len(m.grid) == 2:
            m.__class__ = _subclass(_AspectPreservingTable, AbsolutePE)
            m.clear_cache()


# ---- the hooks ---------------------------------------------------------------------------------------------------
def _bad_input(what: str) -> ValueError:
    return ValueError(f"NaFlexVit input: {what}")


class _NaFlexHooks(_ModelHooks):
    """Over ``NaFlexVit``: patch embedding without timm's PE, the layout (grid or packed), the PE's token hook, the
    block loop handing each block the :class:`~vispos.integrations.timm.hooks.PECall`, timm's masked pooling."""

    # ---- inputs ------------------------------------------------------------------------------------------------
    def _vispos_inputs(self, x, patch_coord, patch_valid, attn_mask):
        """``(patches, patch_coord, patch_valid, attn_mask)`` from either input form, checked before any work."""
        if isinstance(x, dict):
            if "patches" not in x or "patch_coord" not in x:
                raise _bad_input(f"a NaFlex dict needs 'patches' and 'patch_coord' (and 'patch_valid'), got keys "
                                 f"{sorted(x)}")
            patch_valid = x.get("patch_valid", patch_valid)
            patch_coord = x["patch_coord"]
            attn_mask = x.get("attn_mask", attn_mask)
            x = x["patches"]
        if not isinstance(x, torch.Tensor):
            raise _bad_input(f"expected an image tensor (B, C, H, W), NaFlex patches (B, N, P*P*C) with patch_coord, "
                             f"or the NaFlex collator's dict, got {type(x).__name__}")
        e = self.embeds
        if patch_coord is None:
            if x.dim() != 4:
                raise _bad_input(f"images must be (B, C, H, W), got {tuple(x.shape)} (NaFlex patches need "
                                 f"patch_coord=)")
            if x.shape[1] != e.in_chans:
                raise _bad_input(f"images have {x.shape[1]} channels, the model expects {e.in_chans}")
            ph, pw = e.patch_size
            H, W = x.shape[-2:]
            if e.is_linear and not e.dynamic_img_pad and (H % ph or W % pw):
                raise _bad_input(f"image size {H}x{W} is not divisible by the patch size {ph}x{pw} (a linear patch "
                                 f"embedding; build with dynamic_img_pad=True to pad)")
            if patch_valid is not None:
                raise _bad_input("patch_valid without patch_coord; NaFlex inputs need both")
            return x, None, None, attn_mask
        if not e.is_linear:
            raise _bad_input("NaFlex patches need a linear patch embedding (embed_proj_type='linear'); this model "
                             "embeds images with a conv, give it (B, C, H, W) images")
        if x.dim() not in (3, 5):
            raise _bad_input(f"NaFlex patches must be (B, N, P*P*C) or (B, N, Ph, Pw, C), got {tuple(x.shape)}")
        if not (e.enable_patch_interpolator and x.dim() == 5) and math.prod(x.shape[2:]) != e.proj.in_features:
            ph, pw = e.patch_size
            raise _bad_input(f"NaFlex patches must hold {e.proj.in_features} values each ({ph}x{pw} patches of "
                             f"{e.in_chans} channels), got {math.prod(x.shape[2:])} (patches {tuple(x.shape)})")
        if not isinstance(patch_coord, torch.Tensor) or patch_coord.shape != (*x.shape[:2], 2):
            got = tuple(patch_coord.shape) if isinstance(patch_coord, torch.Tensor) else type(patch_coord).__name__
            raise _bad_input(f"patch_coord must be (B, N, 2) = {(*x.shape[:2], 2)} (row, column per patch), got {got}")
        if patch_valid is not None and (not isinstance(patch_valid, torch.Tensor)
                                        or patch_valid.shape != x.shape[:2]):
            got = tuple(patch_valid.shape) if isinstance(patch_valid, torch.Tensor) else type(patch_valid).__name__
            raise _bad_input(f"patch_valid must be (B, N) = {tuple(x.shape[:2])}, got {got}")
        return x, patch_coord, patch_valid, attn_mask

    def _vispos_patches(self, x: torch.Tensor, patch_coord) -> Tuple[torch.Tensor, Optional[Tuple[int, int]]]:
        """timm's NaFlex patch embedding (linear on patches / images, or conv) and its ``norm``, without timm's
        PE: ``(tokens (B, N, C), grid or None)``."""
        e = self.embeds
        grid = None
        if e.is_linear:
            if patch_coord is None:
                x, grid = batch_patchify(x, e.patch_size, pad=e.dynamic_img_pad, channels_last=e.channels_last)
            if e.enable_patch_interpolator and x.dim() == 5:
                hw = tuple(x.shape[2:4] if e.channels_last else x.shape[3:5])
                x = e.patch_interpolator(x, e.proj.weight, e.proj.bias, patch_size=hw, is_linear=True)
            else:
                x = x.flatten(2)
                if e.norm_input is not None:
                    x = e.norm_input(x)
                x = e.proj(x)
        else:
            if e.dynamic_img_pad:
                ph, pw = e.patch_size
                H, W = x.shape[-2:]
                x = F.pad(x, (0, (pw - W % pw) % pw, 0, (ph - H % ph) % ph))  # (left, right, top, bottom)
            x = e.proj(x)
            grid = tuple(x.shape[-2:])
            x = x.flatten(2).transpose(1, 2)
        return e.norm(x), (tuple(int(s) for s in grid) if grid is not None else None)

    def _vispos_stem(self, x, patch_coord, patch_valid, attn_mask):
        """Tokens after the embedding, the PE's token hook, dropout and ``norm_pre``; the :class:`PECall`; the
        patch validity (``None`` for an image batch)."""
        x, grid = self._vispos_patches(x, patch_coord)
        B = x.shape[0]
        e = self.embeds
        n_pre = self.num_prefix_tokens
        prefix = [t.expand(B, -1, -1) for t in (e.cls_token, e.reg_token) if t is not None]
        if prefix:
            x = torch.cat(prefix + [x], dim=1)
        if patch_coord is None:
            layout = GridLayout(grid, n_pre)
        else:
            from ...grid import PackedLayout

            layout = PackedLayout.from_patch_coord(patch_coord, patch_valid, num_prefix=n_pre)
            layout.check_tokens(x.shape[1], "NaFlexVit tokens")
        if "token" in self.pe.hooks:
            x = self.pe.forward_tokens(x, layout)
        x = e.pos_drop(x)
        if self.training and self.patch_drop is not None:
            if patch_coord is not None:
                raise ValueError("patch dropout (patch_drop_rate > 0) with NaFlex inputs is not supported by the "
                                 "vispos NaFlexVit host: it reorders each sample's tokens off its grid; use "
                                 "patch_drop_rate=0")
            x, _ = self.patch_drop(x)
        x = self.norm_pre(x)
        return x, PECall(self.pe, self.pe.prepare(x, layout), attn_mask), patch_valid

    def _vispos_block(self, blk: nn.Module, x: torch.Tensor, call: PECall) -> torch.Tensor:
        # EVA blocks take the call as ``rope`` (then the user's mask), ViT blocks as ``attn_mask``
        args = (call, call.attn_mask) if isinstance(blk, EvaBlock) else (call,)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint(blk, x, *args)
        return blk(x, *args)

    # ---- timm's forwards ---------------------------------------------------------------------------------------
    def forward_features(self, patches, patch_coord: Optional[torch.Tensor] = None,
                         patch_valid: Optional[torch.Tensor] = None, attn_mask: Optional[torch.Tensor] = None):
        """timm's ``forward_features``: ``(B, N, C)`` for images; ``dict(patches=, patch_valid=)`` for NaFlex
        inputs (a dict or patches with ``patch_coord``)."""
        patches, patch_coord, patch_valid, attn_mask = self._vispos_inputs(patches, patch_coord, patch_valid,
                                                                           attn_mask)
        x, call, patch_valid = self._vispos_stem(patches, patch_coord, patch_valid, attn_mask)
        for blk in self.blocks:
            x = self._vispos_block(blk, x, call)
        x = self.norm(x)
        if patch_coord is not None:
            return {"patches": x, "patch_valid": patch_valid}
        return x

    def forward(self, x, patch_coord: Optional[torch.Tensor] = None, patch_valid: Optional[torch.Tensor] = None,
                attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """timm's ``forward``: images, NaFlex patches with ``patch_coord`` / ``patch_valid``, or the collator's
        dict; NaFlex outputs are pooled over the valid tokens only (timm's masked pooling)."""
        feats = self.forward_features(x, patch_coord, patch_valid, attn_mask)
        if isinstance(feats, dict):
            return self.forward_head(feats["patches"], patch_valid=feats["patch_valid"])
        return self.forward_head(feats)

    def forward_intermediates(self, x, indices=None, return_prefix_tokens: bool = False, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False,
                              output_dict: bool = False, patch_coord: Optional[torch.Tensor] = None,
                              patch_valid: Optional[torch.Tensor] = None, attn_mask: Optional[torch.Tensor] = None):
        """timm's ``forward_intermediates`` (same arguments and outputs; NaFlex inputs: ``NLC`` only, and with
        ``output_dict`` the result carries ``patch_valid``)."""
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        patches, patch_coord, patch_valid, attn_mask = self._vispos_inputs(x, patch_coord, patch_valid, attn_mask)
        if patch_coord is not None and output_fmt == "NCHW":
            raise ValueError('output_fmt="NCHW" is not defined for NaFlex inputs (every sample has its own grid); '
                             'use "NLC"')
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        x, call, patch_valid = self._vispos_stem(patches, patch_coord, patch_valid, attn_mask)
        blocks = self.blocks[:max_index + 1] if stop_early else self.blocks
        inter = []
        for i, blk in enumerate(blocks):
            x = self._vispos_block(blk, x, call)
            if i in take_indices:
                inter.append(self.norm(x) if norm else x)
        n_pre = self.num_prefix_tokens
        prefix = [y[:, :n_pre] for y in inter] if n_pre else None
        inter = [y[:, n_pre:] for y in inter]
        if output_fmt == "NCHW":
            H, W = call.layout.shape
            inter = [y.reshape(y.shape[0], H, W, y.shape[-1]).permute(0, 3, 1, 2).contiguous() for y in inter]
        if output_dict:
            out = {"image_intermediates": inter}
            if prefix is not None and return_prefix_tokens:
                out["image_intermediates_prefix"] = prefix
            if patch_valid is not None:
                out["patch_valid"] = patch_valid
            if not intermediates_only:
                out["image_features"] = self.norm(x)
            return out
        if return_prefix_tokens and prefix is not None:
            inter = list(zip(inter, prefix))
        if intermediates_only:
            return inter
        return self.norm(x), inter

    def _forward_embeds(self, *args, **kwargs):  # timm's embedding step would add timm's (removed) PE
        raise RuntimeError("a vispos NaFlexVit embeds through its forward / forward_features / forward_intermediates")


def check_naflex(model: NaFlexVit) -> None:
    """``ValueError`` for NaFlexViT configurations the host cannot serve, before installing."""
    if model.embeds.patch_interpolator is not None and not model.embeds.is_linear:
        raise ValueError("NaFlexVit with a conv patch embedding and a patch interpolator is not supported")
    math.prod(naflex_grid(model))  # raises when there is no training grid
    if getattr(model, "_vispos_naflex_resample", None) is None:  # timm's table rule, kept past the table's removal
        model._vispos_naflex_resample = _resample_settings(model.embeds)


add_host(TimmHost(
    "NaFlexVit (naflexvit_*, use_naflex=True)", NaFlexVit, _NaFlexHooks,
    {Block: _VitBlockHooks, EvaBlock: _EvaBlockHooks},
    {TimmAttention: _VitAttentionHooks, EvaAttention: _EvaAttentionHooks, AttentionRope: _RopeAttentionHooks},
    # timm's own PE: the learned / factorized tables in embeds (pos_embed_type 'none' makes embeds add nothing) and
    # the rotary module
    (("embeds.pos_embed", None), ("embeds.pos_embed_y", None), ("embeds.pos_embed_x", None),
     ("embeds.pos_embed_type", "none"), ("rope", None), ("rope_is_mixed", False)),
))
