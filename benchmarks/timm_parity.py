"""The timm parity matrix: every timm model family with a positional scheme, converted to vispos, equals timm.

For each row a small random timm model is built (``pretrained=False``, tiny depth / width through
``timm.create_model`` kwargs, ``dynamic_img_size=True``), its weights are randomised so that the PE matters (timm's
init makes attention nearly uniform), and a copy is converted to vispos with :func:`vispos.integrations.timm.install_pe`
(the conversion every loading route uses). The converted model must give timm's ``forward_features`` to 1e-5
relative at the training size, at a rectangular other size, and after ``set_input_size`` at a third size. A NaFlexViT
(no ``set_input_size``; it runs at any size) is compared at the training size, a rectangular size and on a mixed
NaFlex batch (:data:`MIXED_GRIDS`, padded, on the valid tokens, and its masked-pooled logits).

    PYTHONPATH=. .venv/bin/python benchmarks/timm_parity.py            # print the table
    PYTHONPATH=. .venv/bin/python benchmarks/timm_parity.py --write    # update docs/timm.md between the markers

``tests/test_timm_parity.py`` runs every row and checks that docs/timm.md holds this script's table.
"""
from __future__ import annotations

import argparse
import copy
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

DOC = Path(__file__).resolve().parents[1] / "docs" / "timm.md"
BEGIN, END = "<!-- parity-matrix:begin -->", "<!-- parity-matrix:end -->"
TOL = 1e-5


@dataclass(frozen=True)
class Row:
    """One family: a timm model name and tiny-config kwargs, the vispos PE spec it converts to, and three sizes."""

    family: str
    model: str
    pe: object
    kwargs: Dict = field(default_factory=dict)
    train: Tuple[int, int] = (64, 64)
    rect: Tuple[int, int] = (48, 80)
    resized: Tuple[int, int] = (80, 64)
    pe_kwargs: Optional[Dict] = None  # options of the vispos PE a user gives for a timm setting (shown in the spec)


_VIT = dict(embed_dim=64, depth=2, num_heads=2)
_EVA = dict(embed_dim=64, depth=2, num_heads=2)
_NAF = dict(embed_dim=64, depth=2, num_heads=2, pos_embed_grid_size=(4, 4))
#: the grids of the mixed NaFlex batch (row-major patches, each sample padded to MIXED_LENGTH patch slots)
MIXED_GRIDS = ((4, 6), (7, 3), (5, 5))
MIXED_LENGTH = 28

ROWS: List[Row] = [
    Row("ViT", "vit_base_patch16_224", "ape", dict(_VIT, img_size=64)),
    Row("ViT, registers, no class embed", "vit_base_patch16_reg4_gap_256", "ape", dict(_VIT, img_size=64)),
    Row("DeiT (distilled)", "deit_tiny_distilled_patch16_224", "ape", dict(_VIT, img_size=64)),
    Row("DeiT-3", "deit3_small_patch16_224", "ape", dict(_VIT, img_size=64)),
    Row("CLIP", "vit_base_patch16_clip_224", "ape", dict(_VIT, img_size=64)),
    Row("SigLIP", "vit_base_patch16_siglip_224", "ape", dict(_VIT, img_size=64)),
    Row("DINOv2", "vit_small_patch14_dinov2", "ape", dict(_VIT, img_size=56), (56, 56), (42, 70), (70, 56)),
    Row("DINOv2 + registers", "vit_small_patch14_reg4_dinov2", "ape", dict(_VIT, img_size=56), (56, 56),
        (42, 70), (70, 56)),
    Row("FlexiViT", "flexivit_small", "ape", dict(_VIT, img_size=64)),
    Row("hybrid ViT (ResNet stem)", "vit_tiny_r_s16_p8_224", "ape", dict(_VIT, img_size=64), (64, 64), (32, 96),
        (96, 64)),
    Row("hybrid ViT (R26 stem)", "vit_small_r26_s32_224", "ape", dict(_VIT, img_size=128), (128, 128),
        (96, 160), (160, 96)),
    Row("EVA-02", "eva02_tiny_patch14_224", ["ape", "rope_axial"], dict(_EVA, img_size=56), (56, 56), (42, 70),
        (70, 56)),
    Row("EVA-02, RoPE-Mixed ij", "eva02_tiny_patch14_224", ["ape", "rope_mixed"],
        dict(_EVA, img_size=56, rope_type="mixed"), (56, 56), (42, 70), (70, 56)),
    Row("EVA-02, RoPE-Mixed xy", "eva02_tiny_patch14_224", ["ape", "rope_mixed"],
        dict(_EVA, img_size=56, rope_type="mixed", rope_grid_indexing="xy"), (56, 56), (42, 70), (70, 56)),
    Row("RoPE ViT (_rope_reg)", "vit_medium_patch16_rope_reg1_gap_256", "rope_axial", dict(_EVA, img_size=64)),
    Row("naver RoPE-ViT axial", "vit_small_patch16_rope_224", "rope_axial", dict(_EVA, img_size=64)),
    Row("naver RoPE-ViT axial + APE", "vit_small_patch16_rope_ape_224", ["ape", "rope_axial"],
        dict(_EVA, img_size=64)),
    Row("naver RoPE-ViT mixed", "vit_small_patch16_rope_mixed_224", "rope_mixed", dict(_EVA, img_size=64)),
    Row("naver RoPE-ViT mixed + APE", "vit_small_patch16_rope_mixed_ape_224", ["ape", "rope_mixed"],
        dict(_EVA, img_size=64)),
    Row("Perception Encoder", "vit_pe_core_tiny_patch16_384", ["ape", "rope_axial"],
        dict(_EVA, img_size=64, attn_pool_num_heads=2)),
    Row("DINOv3", "vit_small_patch16_dinov3", "rope_axial", dict(_EVA, img_size=64)),
    Row("DINOv3 (lingbot)", "vit_small_patch16_lingbot", "rope_axial", dict(_EVA, img_size=64)),
    Row("DINOv3 (sapiens2)", "vit_base_patch16_sapiens2", "rope_axial",
        dict(_EVA, img_size=64, num_kv_heads=2)),
    Row("NaFlexViT, learned APE", "naflexvit_base_patch16_gap", "ape", dict(_NAF), rect=(48, 96)),
    Row("NaFlexViT, MAP pool", "naflexvit_base_patch16_map", "ape", dict(_NAF), rect=(48, 96)),
    Row("NaFlexViT, aspect-preserving APE", "naflexvit_base_patch16_par_gap", "ape", dict(_NAF), rect=(48, 96)),
    Row("NaFlexViT, factorized APE", "naflexvit_base_patch16_gap", "ape", dict(_NAF, pos_embed="factorized"),
        rect=(48, 96)),
    Row("NaFlexViT, factorized aspect-preserving APE", "naflexvit_base_patch16_parfac_gap", "ape", dict(_NAF),
        rect=(48, 96)),
    Row("NaFlexViT SigLIP (bilinear table)", "naflexvit_base_patch16_siglip", "ape", dict(_NAF), rect=(48, 96)),
    Row("NaFlexViT C-RADIOv3 (align_corners table)", "naflexvit_base_patch16_radio_v3", "ape", dict(_NAF),
        rect=(48, 96)),
    Row("NaFlexViT, grid_sample APE (bicubic)", "naflexvit_base_patch16_gap", "ape",
        dict(_NAF, pos_embed_use_grid_sample=True), rect=(48, 96)),
    Row("NaFlexViT, grid_sample aspect-preserving APE", "naflexvit_base_patch16_par_gap", "ape",
        dict(_NAF, pos_embed_use_grid_sample=True), rect=(48, 96)),
    Row("NaFlexViT, grid_sample factorized APE", "naflexvit_base_patch16_parfac_gap", "ape",
        dict(_NAF, pos_embed_use_grid_sample=True), rect=(48, 96)),
    Row("NaFlexViT from ViT (use_naflex)", "vit_base_patch16_224", "ape", dict(_VIT, img_size=64, use_naflex=True),
        rect=(48, 96)),
    Row("NaFlexViT, RoPE axial", "naflexvit_base_patch16_gap", "rope_axial",
        dict(_NAF, rope_type="axial", pos_embed="none"), rect=(48, 96)),
    Row("NaFlexViT, APE + RoPE axial", "naflexvit_base_patch16_gap", ["ape", "rope_axial"],
        dict(_NAF, rope_type="axial"), rect=(48, 96)),
    Row("NaFlexViT, RoPE-Mixed", "naflexvit_base_patch16_gap", "rope_mixed",
        dict(_NAF, rope_type="mixed", pos_embed="none"), rect=(48, 96)),
    Row("NaFlexViT, DINOv3 RoPE", "naflexvit_base_patch16_gap", "rope_axial",
        dict(_NAF, rope_type="dinov3", rope_rotate_half=True, pos_embed="none"), rect=(48, 96)),
    Row("NaFlexViT, MRoPE (interleaved, rope_type='mrope')", "naflexvit_base_patch16_gap", "rope_axial",
        dict(_NAF, rope_type="mrope", rope_mrope_section=(4, 6, 6), pos_embed="none"), rect=(48, 96)),
    Row("NaFlexViT, APE + MRoPE, head_dim 64 (GenLIP sections 8, 12, 12)", "naflexvit_base_patch16_gap",
        ["ape", "rope_axial"], dict(_NAF, num_heads=1, rope_type="mrope", rope_mrope_section=(8, 12, 12)),
        rect=(48, 96)),
    Row("NaFlexViT from EVA-02 (use_naflex)", "eva02_tiny_patch14_224", ["ape", "rope_axial"],
        dict(_EVA, img_size=56, use_naflex=True), (56, 56), (42, 70)),
]


def naflex_batch(model, grids=MIXED_GRIDS, length: int = MIXED_LENGTH, generator=None) -> Dict[str, torch.Tensor]:
    """A NaFlex batch for ``model`` (timm's ``Patchify`` + ``NaFlexCollator``): one random image per grid, its
    patches row-major, padded to ``length`` patch slots (padding patches random too, so they would show)."""
    from timm.data.naflex_dataset import NaFlexCollator
    from timm.data.naflex_transforms import Patchify

    ph, pw = model.embeds.patch_size
    patchify = Patchify(patch_size=(ph, pw))
    items = [(patchify(torch.randn(model.embeds.in_chans, h * ph, w * pw, generator=generator)), 0)
             for h, w in grids]
    batch, _ = NaFlexCollator(max_seq_len=length)(items)
    pad = ~batch["patch_valid"]
    batch["patches"][pad] = torch.randn(int(pad.sum()), batch["patches"].shape[-1], generator=generator)
    return {k: batch[k] for k in ("patches", "patch_coord", "patch_valid")}


def _valid_rel(ours: Dict[str, torch.Tensor], ref: Dict[str, torch.Tensor], num_prefix: int) -> float:
    """Max relative difference over the prefix and valid patch tokens of two NaFlex ``forward_features``."""
    valid = torch.cat([torch.ones(ref["patch_valid"].shape[0], num_prefix, dtype=torch.bool), ref["patch_valid"]],
                      dim=1)
    return _rel(ours["patches"][valid], ref["patches"][valid])


def randomise(model: torch.nn.Module, seed: int = 0) -> None:
    """Weights large enough that attention is far from uniform (so every PE difference shows in the output)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("rope.freqs"):
                continue  # RoPE-Mixed keeps its init: its scale is the scheme
            if p.dim() <= 1:
                base = 1.0 if ("norm" in name or name.endswith(".gamma") or "ls" in name) and name.endswith(
                    ("weight", "gamma")) else 0.0
                p.copy_(base + 0.1 * torch.randn(p.shape, generator=g))
            elif "pos_embed" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                fan_in = math.prod(p.shape[1:])
                p.copy_(torch.randn(p.shape, generator=g) * (1.5 / math.sqrt(fan_in)))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def run_row(row: Row, seed: int = 0) -> Dict[str, object]:
    """Build, randomise, convert and compare one row; returns the spec and the max relative difference."""
    import timm

    from vispos.integrations.timm import install_pe

    torch.manual_seed(seed)
    naflex = row.model.startswith("naflexvit") or row.kwargs.get("use_naflex")
    extra = {} if naflex else dict(dynamic_img_size=True)
    ref = timm.create_model(row.model, pretrained=False, **extra, **row.kwargs).eval()
    randomise(ref, seed)
    ours = install_pe(copy.deepcopy(ref), row.pe, row.pe_kwargs, convert=True).eval()
    g = torch.Generator().manual_seed(seed + 1)
    diffs = {}
    with torch.no_grad():
        for what, size in (("train", row.train), ("rect", row.rect)):
            x = torch.randn(2, 3, *size, generator=g)
            diffs[what] = _rel(ours.forward_features(x), ref.forward_features(x))
        if naflex:  # the mixed NaFlex batch: valid tokens of forward_features and the masked-pooled logits
            batch = naflex_batch(ref, generator=g)
            diffs["set_input_size"] = max(_valid_rel(ours.forward_features(**batch), ref.forward_features(**batch),
                                                     ref.num_prefix_tokens),
                                          _rel(ours(batch), ref(batch)))
            return dict(row=row, spec=describe(ours.pe), diffs=diffs, max=max(diffs.values()))
        ref.set_input_size(img_size=row.resized)
        ours.set_input_size(img_size=row.resized)
        x = torch.randn(2, 3, *row.resized, generator=g)
        diffs["set_input_size"] = _rel(ours.forward_features(x), ref.forward_features(x))
    return dict(row=row, spec=describe(ours.pe), diffs=diffs, max=max(diffs.values()))


def describe(pe) -> str:
    """The converted PE as a short spec: each member's name and the options that define its scheme."""
    return " + ".join(_member(m) for m in pe.members())


def _member(m) -> str:
    opts = []
    if m.name == "ape":
        opts.append(f"embed_prefix={m.embed_prefix}")
        if m.mode != "bicubic":
            opts.append(f"mode={m.mode}")
        if getattr(m, "ar_preserving", False):
            opts.append("ar_preserving=True")
        if m.align_corners:
            opts.append("align_corners=True")
        if m.grid_sample:
            opts.append("grid_sample=True")
    if m.name in ("rope_axial", "vope"):
        if getattr(m, "allocation", "chunked") != "chunked":
            opts.append(f"allocation={m.allocation}, dims={m.dims}")
            if m.rotary_dim != sum(m.dims):
                opts.append(f"rotary_dim={m.rotary_dim}")
        b = sorted(set(m.bases))
        opts.append(f"base={b[0]:g}" if len(b) == 1 else f"bases={m.bases}")
        if m.periods is not None:
            opts.append(f"periods={m.periods}")
        opts.append(f"pairing={m.pairing}")
        opts.append(f"coords={m.coords}")
        if m.coords == "centered":
            opts.append(f"normalize_coords={m.normalize_coords}")
        elif m.coords != "index" and m.ref_shape is not None:
            opts.append(f"ref_shape={tuple(int(v) for v in m.ref_shape)}")
        if m.angle_scale != 1.0:
            opts.append("angle_scale=2pi" if abs(m.angle_scale - 2 * math.pi) < 1e-12 else f"angle_scale={m.angle_scale:g}")
    if m.name in ("rope_axial", "vope", "rope_mixed"):
        opts.append(f"axis_order={m.axis_order}")
        if any(m.grid_offset):
            opts.append(f"grid_offset={m.grid_offset[0]:g}" if len(set(m.grid_offset)) == 1
                        else f"grid_offset={m.grid_offset}")
        if m.coord_aug.active:
            c = m.coord_aug
            opts += [f"{k}_coords={v:g}" for k, v in (("shift", c.shift), ("jitter", c.jitter),
                                                      ("rescale", c.rescale)) if v is not None]
    return f"{m.name}({', '.join(opts)})" if opts else m.name


def _fmt(x: float) -> str:
    return "0" if x == 0 else f"{x:.1e}"


def parse_table(text: str) -> List[Tuple[str, str, str, Tuple[float, float, float]]]:
    """Rows of a rendered table: (family, model, spec, (train, rect, set_input_size))."""
    out = []
    for line in text.strip().splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        out.append((cells[0], cells[1].strip("`"), cells[2].strip("`"),
                    tuple(float(v) for v in cells[3].split(" / "))))
    return out


def render(results: Sequence[Dict[str, object]]) -> str:
    lines = ["| family | timm model | vispos PE (converted) | max rel. difference (train / rect / set_input_size or "
             "NaFlex mixed batch) |",
             "|---|---|---|---|"]
    for r in results:
        row, d = r["row"], r["diffs"]
        lines.append(f"| {row.family} | `{row.model}` | `{r['spec']}` | "
                     f"{_fmt(d['train'])} / {_fmt(d['rect'])} / {_fmt(d['set_input_size'])} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write", action="store_true", help="update docs/timm.md between the parity markers")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    results = [run_row(r) for r in ROWS]
    table = render(results)
    print(table)
    bad = [r["row"].family for r in results if r["max"] > TOL]
    if args.write:
        text = DOC.read_text(encoding="utf-8")
        if BEGIN not in text or END not in text:
            raise SystemExit(f"{DOC} has no {BEGIN} ... {END} markers")
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        DOC.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}", encoding="utf-8")
    if bad:
        print(f"rows above {TOL}: {bad}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
