"""Bad input everywhere a user can reach (issue 9): each case raises a clear error, before any work.

``CASES`` is the table of docs/robustness.md ("what happens on bad input"): one row per case id, and
:func:`test_docs_table_matches_cases` checks that the document and this file list the same cases with the same
exception types, so every documented row is tested here.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch

import vispos
from vispos.freqs import ScalingRule, apply_rule, rope_freqs
from vispos.grid import GridLayout, grid_coords
from vispos.ops.attention import sdpa
from vispos.ops.rope import apply_rope
from vispos.pe.rope import AxialRoPE, MixedRoPE, VoPE
from vispos.utils.config import load_yaml, resolve_config
from vispos.utils.io import ensure_writable_dir

DOC = Path(__file__).resolve().parents[1] / "docs" / "robustness.md"
L = GridLayout((2, 3), 1)  # 7 tokens


def _q(n=7, d=16, h=2, b=1):
    return torch.randn(b, h, n, d)


def _rope():
    return AxialRoPE(16, 2)


def _tiny_timm(**kw):
    return vispos.create_model("vit_tiny_patch16_224", pe="rope_axial", img_size=32, patch_size=8, embed_dim=32,
                               depth=1, num_heads=2, **kw)


def _ckpt_with_bad_keys(tmp_path):
    sd = dict(_tiny_timm().state_dict())
    sd.pop("cls_token")
    sd["head.extra"] = torch.zeros(1)
    p = tmp_path / "ckpt.pt"
    torch.save(sd, p)
    return p


def _file(tmp_path):
    p = tmp_path / "a_file.txt"
    p.write_text("x")
    return p


def _yaml(tmp_path, text):
    p = tmp_path / "cfg.yaml"
    p.write_text(text)
    return p


# id -> (where, callable(tmp_path), exception type, message regex)
CASES = {
    # ---- grids and coordinates
    "grid-nonpositive": ("GridLayout", lambda t: GridLayout((0, 4)), ValueError, r"positive sizes, got \(0, 4\)"),
    "grid-too-many-axes": ("GridLayout", lambda t: GridLayout((2, 2, 2, 2)), ValueError, r"1, 2 or 3 axes"),
    "grid-float-size": ("GridLayout", lambda t: GridLayout((2.5, 3)), TypeError, r"must contain ints"),
    "grid-negative-prefix": ("GridLayout", lambda t: GridLayout((2, 2), -1), ValueError,
                             r"num_prefix must be >= 0, got -1"),
    "grid-positions-length": ("GridLayout", lambda t: GridLayout((2, 2), positions=((0, 1, 2), (0, 1))),
                              ValueError, r"positions for axis 0 must have 2 entries"),
    "coord-mode-unknown": ("grid_coords", lambda t: grid_coords((2, 2), mode="polar"), ValueError,
                           r"unknown coordinate mode 'polar'; expected one of"),
    "coord-mode-needs-ref": ("grid_coords", lambda t: grid_coords((2, 2), mode="normalized"), ValueError,
                             r"needs a reference size"),
    # ---- registry and combinations
    "pe-unknown": ("build_pe", lambda t: vispos.build_pe("rope2d", head_dim=16), ValueError,
                   r"unknown PE 'rope2d'; valid names: .*rope_axial"),
    "pe-name-type": ("build_pe", lambda t: vispos.build_pe(3), TypeError, r"pe must be a name"),
    "pe-unknown-option": ("build_pe", lambda t: vispos.build_pe("rope_axial", head_dim=16, bogus=1), TypeError,
                          r"unknown option\(s\) \['bogus'\]; its options are"),
    "pe-two-qk": ("build_pe", lambda t: vispos.build_pe(["rope_axial", "vope"], dim=32, num_heads=2, grid=(4, 4)),
                  ValueError, r"incompatible PE combination .*'qk' hook"),
    "pe-two-qk-mixed": ("build_pe", lambda t: vispos.build_pe(["rope_mixed", "rope_axial"], dim=32, num_heads=2,
                                                              depth=2, grid=(4, 4)),
                        ValueError, r"incompatible PE combination"),
    "pe-duplicate": ("build_pe", lambda t: vispos.build_pe(["ape", "ape"], dim=32, grid=(4, 4)), ValueError,
                     r"appears twice"),
    "pe-empty-list": ("build_pe", lambda t: vispos.build_pe([]), ValueError, r"empty list of PEs"),
    # ---- scaling rules, pairings, RoPE construction
    "rule-unknown": ("ScalingRule", lambda t: ScalingRule("yarm"), ValueError,
                     r"unknown scaling rule 'yarm'; expected one of"),
    "rule-nonpositive-length": ("ScalingRule", lambda t: ScalingRule("pi", train_len=0, test_len=8), ValueError,
                                r"train_len must be a finite number > 0 or None, got 0"),
    "rule-missing-lengths": ("apply_rule", lambda t: apply_rule(rope_freqs(8), "pi", 10000.0, 8), ValueError,
                             r"rule 'pi' needs factor=, or train_len and test_len"),
    "rule-unknown-in-rope": ("AxialRoPE", lambda t: AxialRoPE(16, rules="linear"), ValueError,
                             r"unknown scaling rule 'linear'"),
    "rope-odd-dim": ("rope_freqs", lambda t: rope_freqs(7), ValueError, r"rotary dim must be an even int >= 2, got 7"),
    "pairing-unknown": ("AxialRoPE", lambda t: AxialRoPE(16, pairing="rotate_half"), ValueError,
                        r"unknown RoPE pairing 'rotate_half'; expected one of \('interleaved', 'half'\)"),
    "pairing-unknown-apply": ("apply_rope", lambda t: apply_rope(_q(), torch.ones(7, 8), torch.zeros(7, 8), "x"),
                              ValueError, r"unknown RoPE pairing 'x'"),
    "rope-coords-unknown": ("AxialRoPE", lambda t: AxialRoPE(16, coords="polar"), ValueError,
                            r"unknown coordinate mode 'polar'"),
    "rope-coords-need-ref": ("AxialRoPE", lambda t: AxialRoPE(16, coords="normalized"), ValueError,
                             r"needs ref_shape= or train_shape="),
    "rope-head-dim-odd": ("AxialRoPE", lambda t: AxialRoPE(15), ValueError, r"RoPE head_dim must be an even int >= 2, got 15"),
    "rope-dims-too-large": ("AxialRoPE", lambda t: AxialRoPE(16, dims=(8, 12)), ValueError,
                            r"sum to 20, more than head_dim=16"),
    "rope-mixed-depth": ("MixedRoPE", lambda t: MixedRoPE(16, 0, 2), ValueError, r"positive int depth, got 0"),
    "vope-no-grid": ("VoPE", lambda t: VoPE(16), ValueError, r"VoPE needs train_shape="),
    # ---- tensors at the hooks
    "qk-rank": ("forward_qk", lambda t: _rope().forward_qk(torch.randn(7, 16), torch.randn(7, 16), L), ValueError,
                r"q must have shape \(B, heads, N, head_dim\), got \(7, 16\)"),
    "qk-token-count": ("forward_qk", lambda t: _rope().forward_qk(_q(n=10), _q(n=10), L), ValueError,
                       r"got a sequence of 10 tokens, but the layout grid \(2, 3\) with 1 prefix tokens has 7"),
    "qk-head-dim": ("forward_qk", lambda t: _rope().forward_qk(_q(d=8), _q(d=8), L), ValueError,
                    r"head dim 8, this RoPE was built for 16"),
    "qk-grid-rank": ("forward_qk", lambda t: _rope().forward_qk(_q(n=8), _q(n=8), GridLayout((2, 2, 2))),
                     ValueError, r"supports grids with \(2,\) axes, got a 3-D grid"),
    "qk-mixed-heads": ("forward_qk", lambda t: MixedRoPE(16, 2, 4).forward_qk(_q(h=2), _q(h=2), L), ValueError,
                       r"q has 2 heads, this RoPE was built for 4"),
    "qk-mixed-layer": ("forward_qk", lambda t: MixedRoPE(16, 2, 2).forward_qk(_q(), _q(), L, 5), ValueError,
                       r"layer index 5 out of range"),
    "tokens-rank": ("forward_tokens", lambda t: vispos.build_pe("ape", dim=32, grid=(2, 3), num_prefix=1)
                    .forward_tokens(torch.randn(7, 32), L), ValueError, r"must have shape \(B, N, C\), got \(7, 32\)"),
    "tokens-count": ("forward_tokens", lambda t: vispos.build_pe("ape_sincos", dim=32, grid=(2, 3))
                     .forward_tokens(torch.randn(1, 9, 32), L), ValueError, r"got a sequence of 9 tokens"),
    "tokens-channels": ("forward_tokens", lambda t: vispos.build_pe("ape", dim=32, grid=(2, 3), num_prefix=1)
                        .forward_tokens(torch.randn(1, 7, 48), L), ValueError, r"48 channels, .*dim=32"),
    "block-count": ("forward_block", lambda t: vispos.build_pe("peg", dim=32, grid=(2, 3))
                    .forward_block(torch.randn(1, 8, 32), L, 0), ValueError, r"got a sequence of 8 tokens"),
    "bias-count": ("attn_bias", lambda t: vispos.build_pe("rel_decomposed", dim=32, num_heads=2, depth=1,
                                                          grid=(2, 3)).attn_bias(_q(n=5), L, 0),
                   ValueError, r"got a sequence of 5 tokens"),
    "attention-rank": ("Attention", lambda t: vispos.Attention(32, 2)(torch.randn(7, 32), L), ValueError,
                       r"x must be \(B, N, dim=32\), got \(7, 32\)"),
    "attention-count": ("Attention", lambda t: vispos.Attention(32, 2)(torch.randn(1, 9, 32), L, _rope()),
                        ValueError, r"got a sequence of 9 tokens"),
    "attention-no-layout": ("Attention", lambda t: vispos.Attention(32, 2)(torch.randn(1, 7, 32), None, _rope()),
                            ValueError, r"needs the token layout"),
    "sdpa-rank": ("sdpa", lambda t: sdpa(torch.randn(7, 16), _q(), _q()), ValueError,
                  r"q must be a 4-D tensor \(B, heads, N, D\), got \(7, 16\)"),
    "sdpa-impl": ("sdpa", lambda t: sdpa(_q(), _q(), _q(), impl="flash3"), ValueError,
                  r"unknown attention impl 'flash3'"),
    # ---- the tensor contract at every hook's entry (issue 13): floating point, device
    "contract-int-tokens": ("forward_tokens", lambda t: vispos.build_pe("ape", dim=32, grid=(2, 3), num_prefix=1)
                            .forward_tokens(torch.ones(1, 7, 32, dtype=torch.int64), L), TypeError,
                            r"ape: x must be a floating-point tensor .*got dtype torch.int64"),
    "contract-bool-block": ("forward_block", lambda t: vispos.build_pe("peg", dim=32, grid=(2, 3))
                            .forward_block(torch.ones(1, 7, 32, dtype=torch.bool), L, 0), TypeError,
                            r"peg: x must be a floating-point tensor .*got dtype torch.bool"),
    "contract-int-attn-input": ("forward_attn_input", lambda t: vispos.build_pe(
        "lape", dim=32, depth=1, grid=(2, 3), num_prefix=1).forward_attn_input(torch.ones(1, 7, 32, dtype=torch.int32),
                                                                              L, 0),
        TypeError, r"lape: x must be a floating-point tensor .*got dtype torch.int32"),
    "contract-int-qk": ("forward_qk", lambda t: _rope().forward_qk(_q().long(), _q().long(), L), TypeError,
                        r"rope_axial: q must be a floating-point tensor .*got dtype torch.int64"),
    "contract-complex-qk": ("forward_qk", lambda t: MixedRoPE(16, 2, 2).forward_qk(_q().to(torch.complex64),
                                                                                   _q().to(torch.complex64), L),
                            TypeError, r"rope_mixed: q must be a floating-point tensor .*got dtype torch.complex64"),
    "contract-complex-bias": ("attn_bias", lambda t: vispos.build_pe("rel_decomposed", dim=32, num_heads=2, depth=1,
                                                                     grid=(2, 3)).attn_bias(_q().to(torch.complex64), L),
                              TypeError, r"rel_decomposed: q must be a floating-point tensor .*complex64"),
    "contract-int-value": ("forward_value", lambda t: vispos.build_pe("glpe", dim=32, num_heads=2, depth=1, grid=(2, 3))
                           .forward_value(_q().int(), _q().int(), L, 0), TypeError,
                           r"glpe: out must be a floating-point tensor .*got dtype torch.int32"),
    "contract-device": ("forward_tokens", lambda t: vispos.build_pe("ape", dim=32, grid=(2, 3), num_prefix=1)
                        .forward_tokens(torch.empty(1, 7, 32, device="meta"), L), ValueError,
                        r"ape: x is on meta, the PE's parameters are on cpu"),
    "build-dtype-int": ("build_pe", lambda t: vispos.build_pe("ape", dim=32, grid=(2, 3), dtype=torch.int64),
                        TypeError, r"ape: dtype must be a floating-point dtype .*got torch.int64"),
    "build-dtype-bool": ("build_pe", lambda t: vispos.build_pe("rope_mixed", dim=32, num_heads=2, depth=1,
                                                               dtype=torch.bool), TypeError, r"got torch.bool"),
    "build-dtype-complex": ("build_pe", lambda t: vispos.build_pe("glpe", dim=32, num_heads=2, depth=1, grid=(2, 3),
                                                                  dtype=torch.complex64), TypeError,
                            r"got torch.complex64"),
    "build-num-heads-zero": ("build_pe", lambda t: vispos.build_pe("rope_axial", dim=32, num_heads=0), ValueError,
                             r"rope_axial: num_heads must be an int >= 1 or None, got 0"),
    "build-heads-not-dividing": ("build_pe", lambda t: vispos.build_pe("rope_axial", dim=32, num_heads=3),
                                 ValueError, r"dim=32 is not divisible by num_heads=3"),
    "build-grid-nonpositive": ("build_pe", lambda t: vispos.build_pe("peg", dim=32, grid=(0, -3)), ValueError,
                               r"peg: grid must contain positive sizes, got \(0, -3\)"),
    "build-grid-nan": ("build_pe", lambda t: vispos.build_pe("glpe", dim=32, num_heads=2, depth=1,
                                                             grid=(float("nan"), 3)), TypeError,
                       r"glpe: grid must contain ints, got \(nan, 3\)"),
    "build-grid-string": ("build_pe", lambda t: vispos.build_pe("peg", dim=32, grid="44"), TypeError,
                          r"peg: grid must be a tuple of ints .*got '44'"),
    "rule-attn-factor-not-bool": ("ScalingRule", lambda t: ScalingRule("yarn", 8, 16, attn_factor="no"), TypeError,
                                  r"attn_factor must be None, True or False, got 'no'"),
    "rule-option-not-used": ("ScalingRule", lambda t: ScalingRule("ntk", 8, 16, factor=2.0), ValueError,
                             r"rule 'ntk' does not use option\(s\) \['factor'\]"),
    "rule-option-not-used-yarn": ("ScalingRule", lambda t: ScalingRule("yarn", 8, 16, k=3), ValueError,
                                  r"rule 'yarn' does not use option\(s\) \['k'\]"),
    # ---- files, folders, configs
    "out-is-file": ("ensure_writable_dir", lambda t: ensure_writable_dir(_file(t)), ValueError,
                    r"exists and is not a folder"),
    "out-unwritable": ("ensure_writable_dir", lambda t: ensure_writable_dir(_file(t) / "sub"), ValueError,
                       r"is not writable"),
    "config-missing": ("load_yaml", lambda t: load_yaml(t / "nope.yaml"), ValueError, r"does not exist"),
    "config-not-mapping": ("load_yaml", lambda t: load_yaml(_yaml(t, "- a\n- b\n")), ValueError,
                           r"must hold a mapping of options, got list"),
    "config-invalid-yaml": ("load_yaml", lambda t: load_yaml(_yaml(t, "a: [1, 2\n")), ValueError,
                            r"is not valid YAML"),
    "config-unknown-key": ("resolve_config", lambda t: resolve_config({"a": 1}, config_path=_yaml(t, "bogus: 2\n")),
                           ValueError, r"unknown key\(s\) \['bogus'\] in config .*allowed: \['a'\]"),
    # ---- timm integration
    "timm-unknown-pe": ("create_model", lambda t: vispos.create_model("vit_tiny_patch16_224", pe="rope2d"),
                        ValueError, r"unknown PE 'rope2d'"),
    "timm-no-pe": ("create_model", lambda t: vispos.create_model("vit_tiny_patch16_224"), TypeError,
                   r"create_model needs pe="),
    "timm-ckpt-keys": ("create_model", lambda t: _tiny_timm(checkpoint_path=str(_ckpt_with_bad_keys(t))),
                       RuntimeError, r"missing keys \[[^]]*'cls_token'[^]]*\], unexpected keys \['head.extra'\]"),
    "timm-image-not-divisible": ("timm model forward", lambda t: _tiny_timm(dynamic_img_size=True)(
        torch.randn(1, 3, 30, 32)), ValueError, r"30.*patch size"),
    "timm-image-rank": ("timm model forward", lambda t: _tiny_timm()(torch.randn(3, 32, 32)), ValueError,
                        r"\(B, C, H, W\)"),
    # ---- data
    "videos-missing": ("VideoFolder", lambda t: _video_folder(t / "nope"), ValueError, r"does not exist"),
    "videos-empty": ("VideoFolder", lambda t: _video_folder(_empty(t)), ValueError, r"holds no files"),
    "videos-clip-length": ("VideoFolder", lambda t: _video_folder(_empty(t), clip_length=0), ValueError,
                           r"clip_length must be an int >= 1, got 0"),
}


def _empty(t):
    p = t / "empty"
    p.mkdir(exist_ok=True)
    return p


def _video_folder(root, clip_length=4):
    from vispos.data.video import VideoFolder

    return VideoFolder(root, clip_length)


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input(case, tmp_path):
    where, fn, exc, pattern = CASES[case]
    with pytest.raises(exc) as info:
        fn(tmp_path)
    assert type(info.value) is exc or issubclass(type(info.value), exc)
    assert re.search(pattern, str(info.value)), f"{case}: message {str(info.value)!r} does not match {pattern!r}"


# ---- the CLI: exit code 2 and the message on stderr, before any work -----------------------------------------------
TINY = "{patch_size: 8, embed_dim: 32, depth: 1, num_heads: 2, mlp_ratio: 2.0}"


def _res_args(tmp_path, *extra, cmd="train"):
    train = ["--steps", "1", "--batch-size", "4"] if cmd == "train" else []
    return [cmd, "resolution", "--model-kwargs", TINY, "--pe", "ape", "--sizes", "16", "--train-size", "16",
            *train, "--eval-samples", "4", "--device", "cpu", "--out", str(tmp_path / "out"), *extra]


def _image_folder(tmp_path):
    from PIL import Image

    root = tmp_path / "imgs"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        Image.new("RGB", (16, 16), (10, 20, 30)).save(root / c / "x.png")
    return root


def _res_cfg(t, **over):
    """train resolution argv with ``over`` in a YAML config (flags: the usual tiny run)."""
    import yaml

    f = t / "over.yaml"
    f.write_text(yaml.safe_dump(over))
    return _res_args(t, "--config", str(f))


def _resume_empty_ckpt(t):
    out = t / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "ape_seed0.pt").write_bytes(b"")
    return _res_args(t, "--out", str(out), "--resume")


def _resume_damaged_partial(t):
    out = t / "run"
    out.mkdir()
    (out / "partial_rows.json").write_text('{"fingerprint": "abc", "rows": [{"variant"')
    return _res_args(t, "--out", str(out), "--resume", cmd="eval")


def _video_cfg(t, **over):
    import yaml

    f = t / "video.yaml"
    f.write_text(yaml.safe_dump({**dict(num_videos=4, frames=4, size=8, num_objects=1, patch=[1, 4, 4], dim=32,
                                        depth=1, num_heads=2, batch_size=2, steps=1, device="cpu",
                                        out=str(t / "out")), **over}))
    return ["train", "video", "--config", str(f), "--no-progress"]


CLI_CASES = {
    "cli-unknown-pe": (lambda t: _res_args(t, "--pe", "rope2d"), r"unknown PE 'rope2d'"),
    "cli-two-qk": (lambda t: _res_args(t, "--pe", "rope_axial+vope"), r"incompatible PE combination"),
    "cli-out-is-file": (lambda t: _res_args(t, "--out", str(_file(t))), r"exists and is not a folder"),
    "cli-out-unwritable": (lambda t: _res_args(t, "--out", str(_file(t) / "sub")), r"is not writable"),
    "cli-config-unknown-key": (lambda t: _res_args(t, "--config", str(_yaml(t, "bogus_key: 1\n"))),
                               r"unknown key\(s\) \['bogus_key'\]"),
    "cli-config-not-mapping": (lambda t: _res_args(t, "--config", str(_yaml(t, "[1, 2]\n"))),
                               r"must hold a mapping"),
    "cli-config-missing": (lambda t: _res_args(t, "--config", str(t / "nope.yaml")), r"does not exist"),
    "cli-data-missing": (lambda t: _res_args(t, "--data", str(t / "nope"), cmd="eval"), r"is not a folder"),
    "cli-data-empty": (lambda t: _res_args(t, "--data", str(_empty(t)), cmd="eval"), r"holds no images"),
    "cli-train-data-empty": (lambda t: _res_args(t, "--train-data", str(_empty(t))), r"has no class sub-folders"),
    "cli-size-not-divisible": (lambda t: _res_args(t, "--sizes", "16,30"), r"\['30'\] are not multiples of its "
                                                                           r"patch size 8x8"),
    "cli-size-nonpositive": (lambda t: _res_args(t, "--sizes", "0"), r"must be positive"),
    "cli-steps-nonpositive": (lambda t: _res_args(t, "--steps", "0"), r"steps"),
    "cli-batch-nonpositive": (lambda t: _res_args(t, "--batch-size", "-4"), r"batch_size"),
    # ---- config numbers that used to pass validation and crash later (issue 13, item 6)
    "cli-lr-inf": (lambda t: _res_cfg(t, lr=float("inf")), r"lr must be a finite number > 0, got inf"),
    "cli-weight-decay-nan": (lambda t: _res_cfg(t, weight_decay=float("nan")), r"weight_decay must be a finite"),
    "cli-grad-clip-nan": (lambda t: _res_cfg(t, grad_clip=float("nan")), r"grad_clip must be a finite"),
    "cli-label-smoothing": (lambda t: _res_cfg(t, label_smoothing=1.5), r"label_smoothing must be .*< 1, got 1.5"),
    "cli-rrc-absolute-task": (lambda t: _res_args(t, "--task", "absolute", "--rrc-scale", "0.5,1"),
                              r"task 'absolute' takes no random-resized crop .*fixed fraction of the image"),
    "cli-heads-not-dividing": (lambda t: _res_args(t, "--model-kwargs", "{embed_dim: 32, num_heads: 3, depth: 1}"),
                               r"embed_dim=32 is not divisible by num_heads=3"),
    "cli-embed-dim-zero": (lambda t: _res_args(t, "--model-kwargs", "{embed_dim: 0, num_heads: 2, depth: 1}"),
                           r"model_kwargs.embed_dim must be an int >= 1, got 0"),
    "cli-device-unavailable": (lambda t: [a if a != "cpu" else "cuda:99" for a in _res_args(t)], r"cuda"),
    "cli-batch-huge": (lambda t: _res_args(t, "--batch-size", "1000000000"),
                       r"batch_size=1000000000 at 16x16 needs .* GiB .* more than this machine's"),
    "cli-resume-empty-checkpoint": (_resume_empty_ckpt, r"--resume: checkpoint .*ape_seed0.pt' is empty \(0 bytes\)"),
    "cli-resume-damaged-partial": (_resume_damaged_partial,
                                   r"cannot resume from .*partial_rows.json': the file is damaged"),
    "cli-video-lr-inf": (lambda t: _video_cfg(t, lr=float("inf")), r"lr must be a finite number"),
    "cli-video-batch-huge": (lambda t: _video_cfg(t, batch_size=10 ** 9), r"batch_size=1000000000 of 4x8x8 videos"),
    "cli-frames-videos-missing": (lambda t: ["eval", "frames", "--videos", str(t / "nope"), "--out", str(t / "o")],
                                  r"nope"),
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_cli_bad_input(case, tmp_path, capsys):
    from vispos.cli import main

    argv = CLI_CASES[case][0](tmp_path)
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, f"{case}: exit code {rc}, stderr {err!r}"
    assert err.startswith("vispos: error: "), err
    assert re.search(CLI_CASES[case][1], err), f"{case}: stderr {err!r}"
    out = tmp_path / "out"  # nothing was trained or written before the error
    if out.is_dir():
        assert not any(out.rglob("*.pt")) and not (out / "results.json").exists(), f"{case}: work was done"


# ---- the contract's valid edges: empty batches, float64, numpy integers ------------------------------------------
@pytest.mark.parametrize("pe", ["rel_decomposed", "glpe", "rope_axial", "ape", "peg", "lape", "rope_mixed"])
def test_timm_vit_runs_on_an_empty_batch(pe):
    m = vispos.create_model("vit_tiny_patch16_224", pe=pe, img_size=32, patch_size=8, embed_dim=32, depth=1,
                            num_heads=2, num_classes=5)
    assert m(torch.randn(0, 3, 32, 32)).shape == (0, 5)


@pytest.mark.parametrize("pe", ["rel_decomposed", "glpe", "rope_axial"])
def test_video_dit_runs_on_an_empty_batch(pe):
    from vispos.models import VideoDiT

    m = VideoDiT(video_size=(2, 8, 8), patch=(1, 4, 4), dim=32, depth=1, num_heads=2, pe=pe)
    x = torch.randn(0, 3, 2, 8, 8)
    assert m(x, torch.rand(0)).shape == x.shape


def test_float64_inputs_work_everywhere():
    """lape used to fail with a mixed-dtype error on float64 input; every family takes float64 q/k/x."""
    pe = vispos.build_pe("lape", dim=32, depth=1, grid=(2, 3), num_prefix=1)
    x = torch.randn(1, 7, 32, dtype=torch.float64)
    out = pe.forward_attn_input(x, L, 0)
    assert out.dtype == torch.float64
    ref = x + pe.layer_pe(L, 0, 1, torch.float32).double()
    torch.testing.assert_close(out, ref)
    q = _q().double()
    qr, kr = _rope().forward_qk(q, q, L)
    assert qr.dtype == torch.float64 and torch.isfinite(qr).all()


def test_numpy_integers_are_ints():
    import numpy as np

    pe = vispos.build_pe("rope_axial", dim=np.int64(32), num_heads=np.int32(2), grid=(np.int64(2), np.int64(3)))
    assert pe.head_dim == 16 and isinstance(pe.head_dim, int)
    lay = GridLayout((np.int64(2), np.int64(3)), np.int64(1))
    assert lay.shape == (2, 3) and lay.num_prefix == 1 and type(lay.num_prefix) is int
    assert ScalingRule("riflex", 8, 16, k=np.int64(2)).k == 2
    ape = vispos.build_pe("ape", dim=np.int64(32), grid=(2, 3), num_prefix=np.int64(1))
    assert ape.forward_tokens(torch.randn(1, 7, 32), lay).shape == (1, 7, 32)


def test_timm_own_checkpoint_round_trip(tmp_path):
    """strict loading must accept the model's own state dict (a checkpoint written by a vispos-timm model)."""
    m = _tiny_timm()
    p = tmp_path / "own.pt"
    torch.save(m.state_dict(), p)
    m2 = _tiny_timm(checkpoint_path=str(p))
    for k, v in m.state_dict().items():
        assert torch.equal(m2.state_dict()[k], v), k


def test_cli_unknown_flag_exits_2(capsys):
    from vispos.cli import main

    with pytest.raises(SystemExit) as info:
        main(["list", "--bogus"])
    assert info.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


# ---- unreadable / truncated videos: skipped with a warning and counted -----------------------------------------------
def _videos(tmp_path, n_frames=12):
    from vispos.data.video import write_video

    root = tmp_path / "videos"
    root.mkdir()
    frames = (torch.rand(n_frames, 32, 32, 3) * 255).to(torch.uint8).numpy()
    good = write_video(root / "good.mp4", frames, fps=8)
    data = Path(good).read_bytes()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (root / "garbage.mp4").write_bytes(b"\x00not a video at all" * 50)
    (root / "empty.mp4").write_bytes(b"")
    return root


def test_video_folder_skips_truncated_and_unreadable_files(tmp_path):
    from vispos.data.video import VideoFolder

    root = _videos(tmp_path)
    with pytest.warns(RuntimeWarning, match="VideoFolder: skipping") as rec:
        ds = VideoFolder(root, clip_length=8)
    assert [Path(f).name for f in ds.files] == ["good.mp4"]
    skipped = sorted(Path(p).name for p, _ in ds.skipped)
    assert skipped == ["empty.mp4", "garbage.mp4", "truncated.mp4"], ds.skipped
    assert len([w for w in rec if "skipping" in str(w.message)]) == 3
    item = ds[0]
    assert item["video"].shape == (3, 8, 32, 32) and torch.isfinite(item["video"]).all()


def test_video_folder_all_files_bad_is_a_clear_error(tmp_path):
    from vispos.data.video import VideoFolder

    root = tmp_path / "bad"
    root.mkdir()
    (root / "a.mp4").write_bytes(b"junk" * 100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(ValueError, match=r"none of its 1 video files is usable"):
            VideoFolder(root, clip_length=2)


# ---- the documented table and the tests agree ----------------------------------------------------------------------
def _doc_rows():
    rows = {}
    text = DOC.read_text()
    start = text.index("## What happens on bad input")
    end = text.find("\n## ", start + 1)
    for line in text[start: end if end > 0 else None].splitlines():
        m = re.match(r"^\|\s*`([a-z0-9-]+)`\s*\|(.*)\|\s*$", line)
        if m:
            cells = [c.strip() for c in m.group(2).split("|")]
            rows[m.group(1)] = cells
    return rows


def test_docs_table_matches_cases():
    rows = _doc_rows()
    expected = set(CASES) | set(CLI_CASES) | {"video-truncated", "video-all-bad", "cli-unknown-flag"}
    assert set(rows) == expected, (f"docs/robustness.md and tests differ: only in the doc {sorted(set(rows) - expected)}"
                                   f", only in the tests {sorted(expected - set(rows))}")
    for case, (_where, _, exc, _) in CASES.items():
        assert f"`{exc.__name__}`" in rows[case][1], f"{case}: the doc says {rows[case][1]!r}, the code {exc.__name__}"
    for case in CLI_CASES:
        assert "exit 2" in rows[case][1], f"{case}: the doc must say exit 2"


@pytest.mark.parametrize("name", [i.name for i in vispos.list_pes()])
@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.complex64])
def test_every_family_refuses_non_float_inputs_at_every_hook(name, dtype):
    """The contract holds for every registered family (a new one is covered the day it lands)."""
    pe = vispos.build_pe(name, dim=32, num_heads=2, depth=2, grid=(2, 3), num_prefix=1)
    x = torch.ones(1, 7, 32).to(dtype)
    q = torch.ones(1, 2, 7, 16).to(dtype)
    calls = {"token": lambda: pe.forward_tokens(x, L), "block": lambda: pe.forward_block(x, L, 0),
             "attn_input": lambda: pe.forward_attn_input(x, L, 0), "qk": lambda: pe.forward_qk(q, q, L, 0),
             "bias": lambda: pe.attn_bias(q, L, 0), "value": lambda: pe.forward_value(q, q, L, 0)}
    hooks = [h for h in calls if h in pe.hooks and (h != "block" or 0 in pe.block_indices)]
    assert hooks, name
    for h in hooks:
        with pytest.raises(TypeError, match=rf"must be a floating-point tensor .*got dtype {dtype}"):
            calls[h]()
