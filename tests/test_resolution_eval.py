"""`vispos eval/train resolution`: hand-checked accuracy on an ImageFolder, complete results, resume, bad input."""
import csv
import json
import math

import pytest
import torch
from PIL import Image

from vispos.eval import resolution as R

TINY = {"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2, "mlp_ratio": 2.0}


def _folder(root, counts, size=(40, 50)):
    """An ImageFolder with ``counts[c]`` images in class ``c`` (random RGB, ``size`` = (h, w))."""
    g = torch.Generator().manual_seed(0)
    for c, n in enumerate(counts):
        d = root / f"class{c}"
        d.mkdir(parents=True)
        for i in range(n):
            a = (torch.rand(size[0], size[1], 3, generator=g) * 255).byte().numpy()
            Image.fromarray(a).save(d / f"img{i}.png")
    return root


def _cfg(tmp_path, **kw):
    base = dict(model_kwargs=TINY, sizes="16,24x40", train_size=16, eval_batch_size=4, out=str(tmp_path / "out"),
                threads=1)
    base.update(kw)
    return R.load_config(None, **base)


def test_parse_sizes_and_variants():
    assert R.parse_sizes("16, 24,32x48") == [(16, 16), (24, 24), (32, 48)]
    assert R.parse_sizes([16, "8x24"]) == [(16, 16), (8, 24)]
    with pytest.raises(ValueError, match="repeat"):
        R.parse_sizes("16,16")
    with pytest.raises(ValueError, match="32x48"):
        R.parse_sizes("32y48")
    vs = R.parse_variants(dict(pe="ape,ape+rope_axial", model="vit_tiny_patch16_224", model_kwargs=TINY))
    assert [v.name for v in vs] == ["ape", "ape+rope_axial"] and vs[1].pe == ["ape", "rope_axial"]
    vs = R.parse_variants(dict(variants=["vope", ["ape", "rope_mixed"], dict(name="x", pe="peg",
                                                                             model_kwargs=dict(depth=2))],
                               model_kwargs=TINY))
    assert [v.name for v in vs] == ["vope", "ape+rope_mixed", "x"] and vs[2].model_kwargs["depth"] == 2
    with pytest.raises(ValueError, match="unknown PE 'rope_axail'"):
        R.parse_variants(dict(pe="ape,rope_axail"))
    with pytest.raises(ValueError, match="unknown key"):
        R.parse_variants(dict(variants=[dict(pe="ape", pee=1)]))
    with pytest.raises(ValueError, match="unknown timm model"):
        R.parse_variants(dict(pe="ape", model="vit_nonexistent"))
    with pytest.raises(ValueError, match="no models"):
        R.parse_variants(dict())


def test_resize_center_crop_sizes():
    t = R.ResizeCenterCrop(24, crop_pct=0.875)  # floor(24 / .875) = 27 on the shorter side, aspect kept
    assert t.resized_size(50, 40) == (27, 33)
    t = R.ResizeCenterCrop((24, 40), crop_pct=0.875)  # cover (27, 45): scale max(27/40, 45/50) = 0.9
    assert t.resized_size(50, 40) == (36, 45)
    img = Image.new("RGB", (50, 40))
    assert t(img).size == (40, 24)


def test_eval_imagefolder_matches_hand_count(tmp_path):
    """A model whose logits are a fixed bias: top-1 always class 0, top-5 classes 0..4 -- accuracy by hand."""
    counts = [2, 1, 1, 1, 1, 3]  # 9 images, 6 classes
    root = _folder(tmp_path / "data", counts)
    cfg = _cfg(tmp_path, data=str(root), pe="ape")
    v = R.parse_variants(cfg)[0]
    model = R.build_model(v, 6, cfg["train_size"])
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([6.0, 5, 4, 3, 2, 1]))
    ckpt = tmp_path / "fixed.pt"
    torch.save(model.state_dict(), ckpt)
    res = R.run_experiment(dict(cfg, checkpoint=str(ckpt)), train=False, progress=False)
    assert len(res["rows"]) == 2
    for r in res["rows"]:
        assert r["n"] == 9 and r["correct1"] == 2 and r["correct5"] == 6
        assert r["top1"] == pytest.approx(2 / 9) and r["top5"] == pytest.approx(6 / 9)


@pytest.mark.parametrize("model, kw, mean", [
    ("vit_tiny_patch16_224.augreg_in21k", {}, (0.5, 0.5, 0.5)),  # augreg: mean = std = 0.5, crop 0.9
    ("eva02_tiny_patch14_224.mim_in22k", {"ref_feat_shape": (2, 2)}, (0.48145466, 0.4578275, 0.40821073)),  # CLIP
])
def test_eval_imagefolder_is_timms_validation(tmp_path, model, kw, mean):
    """The ImageFolder path evaluates exactly as timm's validate.py: the model's resolved data config, timm's
    create_transform at each test size, timm's dataset -- counted here with timm's own functions."""
    import timm
    from timm.data import create_dataset, create_transform, resolve_data_config

    root = _folder(tmp_path / "data", [3, 2, 2, 1, 2], size=(36, 52))
    cfg = _cfg(tmp_path, model=model, model_kwargs=dict(TINY, **kw), data=str(root), pe="timm", sizes="16,24x40")
    torch.manual_seed(3)
    v = R.parse_variants(cfg)[0]
    m = R.build_model(v, 5, cfg["train_size"]).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.3)
    ckpt = tmp_path / "m.pt"
    torch.save({"model": m.state_dict(), "step": 1}, ckpt)
    res = R.run_experiment(dict(cfg, checkpoint=str(ckpt)), train=False, progress=False)
    dc = resolve_data_config(model=timm.create_model(model, num_classes=5, **dict(TINY, **kw)))
    assert dc["mean"] == pytest.approx(mean) and dc["crop_pct"] == 0.9
    assert res["data_config"]["mean"] == pytest.approx(list(mean))
    for (h, w), row in zip(((16, 16), (24, 40)), res["rows"]):
        tf = create_transform(**{**dc, "input_size": (3, h, w)})
        correct = 0
        for x, y in create_dataset("", root=str(root), transform=tf):
            with torch.no_grad():
                correct += int(m(x[None]).argmax(-1).item() == y)
        assert row["n"] == 10 and row["correct1"] == correct, (h, w)


def test_results_files_complete(tmp_path):
    cfg = _cfg(tmp_path, pe="ape,rope_axial", task="quadrant", steps=2, batch_size=8, eval_samples=12,
               sizes="16,24,16x32")
    res = R.run_experiment(cfg, train=True, progress=False)
    out = tmp_path / "out"
    data = json.loads((out / "results.json").read_text())
    assert data["sizes"] == ["16", "24", "16x32"] and data["train_size"] == "16"
    assert len(data["rows"]) == 6 and data["num_classes"] == 4 and data["chance"] == 0.25
    assert set(data["summary"]) == {"ape", "rope_axial"}
    for r in data["rows"]:
        assert r["n"] == 12 and 0 <= r["top1"] <= 1 and r["correct1"] == round(r["top1"] * 12)
        assert r["top5"] is None  # 4 classes: no top-5
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and {r["variant"] for r in rows} == {"ape", "rope_axial"}
    assert [float(r["top1"]) for r in rows] == [r["top1"] for r in data["rows"]]
    table = (out / "table.md").read_text()
    lines = [ln for ln in table.splitlines() if ln.startswith("|")]
    # accuracy table, then the change from the training size in points (same layout); columns by pixel count
    assert lines[0] == lines[4] == "| PE | 16* | 16x32 | 24 |" and len(lines) == 8
    assert all(len(ln.split("|")) == 6 for ln in lines)
    assert lines[6].startswith("| ape | 0 | ") and "Change from the training size" in table
    assert table == res["table"]
    with Image.open(out / "accuracy_vs_resolution.png") as im:
        im.load()
        assert im.size[0] > 100 and im.size[1] > 100
    with open(out / "summary.csv") as f:  # the loss log: one row per step, variant and seed
        log_rows = list(csv.DictReader(f))
    assert len(log_rows) == 2 * cfg["steps"] and {r["variant"] for r in log_rows} == {"ape", "rope_axial"}
    assert all(math.isfinite(float(r["loss"])) for r in log_rows)
    env = data["environment"]
    assert env["torch"] == torch.__version__ and env["seeds"] == [0] and env["cpu"]["cores"] >= 1
    cfg_back = R.load_config(out / "config.yaml")
    assert cfg_back["sizes"] == [[16, 16], [24, 24], [16, 32]] and cfg_back["pe"] == "ape,rope_axial"
    # the checkpoints evaluate to the same numbers through `eval`
    ck = out / "checkpoints" / "rope_axial_seed0.pt"
    ev = R.run_experiment(dict(cfg, pe="rope_axial", checkpoint=str(ck), out=str(tmp_path / "ev")), train=False,
                          progress=False)
    assert [r["correct1"] for r in ev["rows"]] == [r["correct1"] for r in res["rows"] if r["variant"] == "rope_axial"]
    with pytest.raises(ValueError, match="was trained at"):
        R.run_experiment(dict(cfg, pe="rope_axial", checkpoint=str(ck), train_size=[32, 32], out=str(tmp_path / "x")),
                         train=False, progress=False)


class _Stop(Exception):
    pass


def _train_and_stop_at_4(v, cfg, data, ckpt):
    """Train until step 4 and stop as if interrupted (the last checkpoint is at step 3 with ckpt_every=3)."""
    def stop_at_4(step, model):
        if step == 4:
            raise _Stop

    with pytest.raises(_Stop):
        R.train_variant(v, cfg, data, 0, ckpt, callback=stop_at_4, progress=False)


def test_resume_reproduces_uninterrupted_run(tmp_path):
    cfg = _cfg(tmp_path, pe="rope_mixed", steps=6, batch_size=8, ckpt_every=3, train_sizes="8,16,24", lr=3e-3)
    v = R.parse_variants(cfg)[0]
    data = R.plan_data(cfg, True)
    full = R.train_variant(v, cfg, data, 0, tmp_path / "a.pt", progress=False)

    _train_and_stop_at_4(v, cfg, data, tmp_path / "b.pt")
    assert torch.load(tmp_path / "b.pt", weights_only=True)["step"] == 3
    resumed = R.train_variant(v, dict(cfg, resume=True), data, 0, tmp_path / "b.pt", progress=False)
    a, b = full.state_dict(), resumed.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    # the sizes of the multi-resolution batches are drawn per step, the same on every run
    assert len({R.train_step_plan(cfg, data, 0, s)[1] for s in range(6)}) > 1
    with pytest.raises(ValueError, match="other settings"):
        R.train_variant(v, dict(cfg, resume=True, lr=1e-2), data, 0, tmp_path / "b.pt", progress=False)


def test_bad_input_fails_before_work(tmp_path):
    with pytest.raises(ValueError, match="is not a folder"):
        R.run_experiment(_cfg(tmp_path, data=str(tmp_path / "missing"), pe="ape"), train=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        R.run_experiment(_cfg(tmp_path, data=str(tmp_path / "empty"), pe="ape"), train=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        R.run_experiment(_cfg(tmp_path, pe="ape", out=str(tmp_path / "file")), train=False)
    with pytest.raises(ValueError, match="multiples of its patch size"):
        R.run_experiment(_cfg(tmp_path, pe="ape", sizes="16,20"), train=False)
    with pytest.raises(ValueError, match="unknown task"):
        _cfg(tmp_path, pe="ape", task="nope")
    with pytest.raises(ValueError, match="does not exist"):
        R.run_experiment(_cfg(tmp_path, pe="ape", checkpoint=str(tmp_path / "nope.pt")), train=False)
    with pytest.raises(ValueError, match="unknown key"):
        (tmp_path / "c.yaml").write_text("stepz: 3\n")
        R.load_config(tmp_path / "c.yaml")
    assert not (tmp_path / "out" / "results.json").exists()


def test_checkpoint_mismatch_is_clear(tmp_path):
    cfg = _cfg(tmp_path, pe="ape")
    v = R.parse_variants(cfg)[0]
    torch.save(R.build_model(v, 9, (32, 32)).state_dict(), tmp_path / "m.pt")  # APE grid 4x4 vs 2x2
    with pytest.raises(ValueError, match="shape mismatch"):
        R.build_model(v, 9, (16, 16), str(tmp_path / "m.pt"))


def test_cli_eval_writes_table(tmp_path, capsys):
    from vispos.cli import main

    rc = main(["eval", "resolution", "--pe", "vope", "--model-kwargs", "{patch_size: 8, embed_dim: 32, depth: 1, "
               "num_heads: 2}", "--sizes", "16,32", "--train-size", "16", "--eval-samples", "9", "--task", "absolute",
               "--out", str(tmp_path / "cli")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "| PE | 16* | 32 |" in out and "| vope |" in out
    assert (tmp_path / "cli" / "results.json").is_file()
    rc = main(["eval", "resolution", "--pe", "nope", "--out", str(tmp_path / "cli2")])
    assert rc == 2 and "unknown PE 'nope'" in capsys.readouterr().err


def test_eval_without_train_size_uses_the_checkpoints_size(tmp_path):
    """A VoPE checkpoint trained at 24 px, evaluated without --train-size, is built on its training grid (timm's
    default 224 px would load silently with the wrong reference grid)."""
    cfg = _cfg(tmp_path, pe="vope", task="quadrant", steps=2, batch_size=8, eval_samples=8, sizes="24",
               train_size=24)
    R.run_experiment(cfg, train=True, progress=False)
    ckpt = str(tmp_path / "out" / "checkpoints" / "vope_seed0.pt")
    given = R.run_experiment(_cfg(tmp_path, pe="vope", checkpoint=ckpt, task="quadrant", eval_samples=8, sizes="16,40",
                                  train_size=24, out=str(tmp_path / "e1")), train=False, progress=False)
    inferred = R.run_experiment(_cfg(tmp_path, pe="vope", checkpoint=ckpt, task="quadrant", eval_samples=8,
                                     sizes="16,40", train_size=None, out=str(tmp_path / "e2")),
                                train=False, progress=False)
    assert inferred["train_size"] == given["train_size"] == "24"
    assert [r["correct1"] for r in inferred["rows"]] == [r["correct1"] for r in given["rows"]]


def test_resume_restores_the_rng_of_random_training_paths(tmp_path):
    """Training that draws random numbers (RO-ViT crop_aug, dropout): the resumed run equals the uninterrupted one
    only if the RNG state is saved and restored; a run resumed from a fresh RNG would differ."""
    cfg = _cfg(tmp_path, pe="ape", pe_kwargs={"crop_aug": True}, model_kwargs={**TINY, "drop_rate": 0.1}, steps=6,
               batch_size=8, ckpt_every=3, lr=3e-3)
    v = R.parse_variants(cfg)[0]
    data = R.plan_data(cfg, True)
    full = R.train_variant(v, cfg, data, 0, tmp_path / "a.pt", progress=False)

    _train_and_stop_at_4(v, cfg, data, tmp_path / "b.pt")
    torch.manual_seed(12345)  # the resumed process starts from another global RNG state
    resumed = R.train_variant(v, dict(cfg, resume=True), data, 0, tmp_path / "b.pt", progress=False)
    a, b = full.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_interrupted_eval_resumes_to_the_same_result(tmp_path, monkeypatch):
    """An evaluation stopped after some (variant, size) cells continues with --resume: finished cells are kept,
    the rest evaluated, and the result equals an uninterrupted run."""
    variants = []
    for name in ("ape", "rope_axial"):  # fixed weights: evaluations of random inits would differ between runs
        v = R.parse_variants(_cfg(tmp_path, pe=name))[0]
        torch.save(R.build_model(v, 4, (16, 16)).state_dict(), tmp_path / f"{name}.pt")
        variants.append({"pe": name, "checkpoint": str(tmp_path / f"{name}.pt")})
    kw = dict(pe=None, variants=variants, task="quadrant", eval_samples=8, sizes="16,24,32")
    full = R.run_experiment(_cfg(tmp_path, out=str(tmp_path / "full"), **kw), train=False, progress=False)
    real = R.evaluate
    calls = []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt  # killed mid-way, after 3 of 6 cells
        return real(*a, **k)

    monkeypatch.setattr(R.evaluation, "evaluate", flaky)
    with pytest.raises(KeyboardInterrupt):
        R.run_experiment(_cfg(tmp_path, out=str(tmp_path / "part"), **kw), train=False, progress=False)
    saved = json.loads((tmp_path / "part" / "partial_rows.json").read_text())
    assert len(saved["rows"]) == 3
    monkeypatch.setattr(R.evaluation, "evaluate", real)
    with pytest.raises(ValueError, match="other settings"):
        R.run_experiment(_cfg(tmp_path, out=str(tmp_path / "part"), resume=True, **{**kw, "eval_samples": 9}),
                         train=False, progress=False)
    calls.clear()
    monkeypatch.setattr(R.evaluation, "evaluate", flaky)  # counts again: only the 3 missing cells may be evaluated
    resumed = R.run_experiment(_cfg(tmp_path, out=str(tmp_path / "part"), resume=True, **kw), train=False,
                               progress=False)
    assert len(calls) == 3
    key = ("variant", "size", "n", "correct1")
    assert [tuple(r[k] for k in key) for r in resumed["rows"]] == [tuple(r[k] for k in key) for r in full["rows"]]
    assert not (tmp_path / "part" / "partial_rows.json").exists()
