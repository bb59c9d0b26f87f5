"""`vispos train/eval resolution --batching naflex`: variable-resolution, aspect-preserving batches through timm's
NaFlex pipeline on a NaFlexViT host, with vispos PEs; tiny runs that finish and write their results."""
import argparse
import copy
import json

import pytest
import torch
from PIL import Image

from vispos.eval import resolution as R
from vispos.eval.resolution import naflex as N
from vispos.eval.resolution.cli import add_eval_args, add_train_args
from vispos.eval.resolution.data import naflex_train_batch

MODEL = "naflexvit_base_patch16_gap"
TINY = {"patch_size": 4, "embed_dim": 32, "depth": 1, "num_heads": 2, "mlp_ratio": 2.0}


def _cfg(tmp_path, **kw):
    base = dict(model=MODEL, model_kwargs=TINY, sizes="16,24", train_size=16, batching="naflex", max_tokens=20,
                steps=3, batch_size=6, eval_batch_size=8, eval_samples=18, warmup_steps=1, ckpt_every=3,
                out=str(tmp_path / "out"), threads=1)
    base.update(kw)
    return R.load_config(None, **base)


def _grids(batch):
    """Each sample's grid (rows, cols) from its valid coordinates."""
    out = []
    for c, v in zip(batch["patch_coord"], batch["patch_valid"]):
        out.append(tuple(int(x) + 1 for x in c[v].max(0).values))
    return out


def test_train_then_eval_naflex_synthetic(tmp_path):
    cfg = _cfg(tmp_path, pe="ape,rope_axial")
    data = R.plan_data(cfg, train=True)
    batch, y = naflex_train_batch(cfg, data, 0, list(range(6)), 0, (4, 4))
    grids = _grids(batch)
    assert batch["patches"].shape == (6, 20, 4 * 4 * 3) and y.shape == (6,)
    assert len(set(grids)) > 1 and all(h * w <= 20 for h, w in grids)  # mixed grids, within the budget
    assert [h * w for h, w in grids] == batch["patch_valid"].sum(1).tolist()
    res = R.run_experiment(cfg, train=True, progress=False)
    out = tmp_path / "out"
    saved = json.loads((out / "results.json").read_text())
    assert saved["batching"] == "naflex" and saved["max_tokens"] == 20
    assert len(saved["rows"]) == 4 and all(0 <= r["top1"] <= 1 and r["n"] == 18 for r in saved["rows"])
    assert "Batching naflex" in res["table"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["ape_seed0.pt", "rope_axial_seed0.pt"]
    ev = R.run_experiment(R.load_config(None, checkpoint=str(out), batching="naflex", sizes="16,20x28",
                                        eval_samples=18, out=str(tmp_path / "ev"), threads=1),
                          train=False, progress=False)
    assert {r["variant"] for r in ev["rows"]} == {"ape", "rope_axial"} and len(ev["rows"]) == 4


def _folder(root, sizes):
    g = torch.Generator().manual_seed(0)
    for c in range(2):
        d = root / f"class{c}"
        d.mkdir(parents=True)
        for i, (h, w) in enumerate(sizes):
            a = (torch.rand(h, w, 3, generator=g) * 255).byte().numpy()
            Image.fromarray(a).save(d / f"img{i}.png")
    return root


def test_naflex_imagefolder_is_timms_pipeline(tmp_path):
    """ImageFolder eval batches are timm's NaFlex eval transform (ResizeToSequence, normalise, Patchify) + collator:
    each image keeps its aspect ratio within the test size's tokens; the run finishes and writes its results."""
    from timm.data import resolve_data_config
    from timm.data.naflex_dataset import NaFlexCollator
    from timm.data.transforms_factory import transforms_imagenet_eval

    root = _folder(tmp_path / "data", [(40, 60), (64, 24), (32, 32)])
    cfg = _cfg(tmp_path, data=str(root), train_data=str(root), pe="rope_axial", batch_size=2, sizes="16,24")
    res = R.run_experiment(cfg, train=True, progress=False)
    assert len(res["rows"]) == 2 and all(r["n"] == 6 for r in res["rows"])
    model = R.build_model(R.parse_variants(cfg)[0], 2, cfg["train_size"])
    dc = resolve_data_config(model=model)
    tf = transforms_imagenet_eval(naflex=True, patch_size=(4, 4), max_seq_len=36, interpolation=dc["interpolation"],
                                  mean=dc["mean"], std=dc["std"], patchify=True)
    data = R.plan_data(cfg, train=False)
    folder = copy.copy(data.eval_folder)
    folder.transform = tf  # timm's own NaFlex eval transform at 24x24's 36 tokens
    want, _ = NaFlexCollator(max_seq_len=36)([folder[i] for i in range(3)])
    got = next(iter(R.evaluation._naflex_batches(model, cfg, data, (24, 24), [0, 1, 2], 3)))[0]
    for k in ("patches", "patch_coord", "patch_valid"):
        assert torch.equal(got[k], want[k]), k
    assert len(set(_grids(got))) == 3  # three aspect ratios, three grids


def test_naflex_refused_where_it_does_not_fit(tmp_path):
    with pytest.raises(ValueError, match="NaFlexViT"):
        R.run_experiment(_cfg(tmp_path, model="vit_tiny_patch16_224", pe="ape"), train=True, progress=False)
    with pytest.raises(ValueError, match="max_tokens"):
        _cfg(tmp_path, batching="fixed", pe="ape")
    with pytest.raises(ValueError, match="batching"):
        _cfg(tmp_path, batching="packed", pe="ape")
    with pytest.raises(ValueError, match="aspect_range"):
        _cfg(tmp_path, aspect_range=[2, 0.5], pe="ape")
    with pytest.raises(ValueError, match="exclude"):
        _cfg(tmp_path, train_sizes="16,24", pe="ape")
    assert not (tmp_path / "out").exists()


def test_cli_flags_reach_the_config():
    p = argparse.ArgumentParser()
    add_train_args(p)
    a = p.parse_args(["--model", MODEL, "--batching", "naflex", "--max-tokens", "48", "--aspect-range", "0.25,4",
                      "--train-size", "16", "--pe", "ape"])
    cfg = R.load_config(args=a)
    assert (cfg["batching"], cfg["max_tokens"], cfg["aspect_range"]) == ("naflex", 48, [0.25, 4.0])
    e = argparse.ArgumentParser()
    add_eval_args(e)
    assert "NaFlexViT" in e.format_help()


def test_budget_sizes_are_timms():
    from timm.data.naflex_transforms import get_image_size_for_seq

    for aspect in (0.5, 1.0, 1.7):
        hw = N.sample_hw(aspect, 36, (4, 4))
        assert hw == tuple(get_image_size_for_seq((round(1024 * aspect ** 0.5), round(1024 / aspect ** 0.5)),
                                                  (4, 4), 36)[1])
        assert (hw[0] // 4) * (hw[1] // 4) <= 36


def test_eval_timm_naflex_checkpoint_converted_for_a_vispos_pe(tmp_path):
    """A timm-format NaFlexViT checkpoint (embeds.pos_embed) evaluated as pe=ape is converted and scores exactly as
    the timm model itself, on naflex batches."""
    cfg = _cfg(tmp_path, pe="timm")
    torch.manual_seed(0)
    m = R.build_model(R.parse_variants(cfg)[0], 9, cfg["train_size"])
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.3)
    ckpt = tmp_path / "timm.pt"
    torch.save(m.state_dict(), ckpt)
    rows = {}
    for pe in ("timm", "ape"):
        res = R.run_experiment(_cfg(tmp_path, pe=pe, checkpoint=str(ckpt), out=str(tmp_path / pe)), train=False,
                               progress=False)
        rows[pe] = [(r["size"], r["correct1"]) for r in res["rows"]]
    assert rows["ape"] == rows["timm"] and len(rows["ape"]) == 2
