"""timm-compatible evaluation: the model's data config and transforms, class maps, checkpoint folders, and
``vispos eval pretrained`` on a small random timm checkpoint and an ImageFolder written here."""
import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from vispos.cli import main
from vispos.eval.checkpoints import checkpoint_record, find_checkpoint
from vispos.eval.pretrained import VARIANTS, default_variants, parse_tf_variants
from vispos.eval.timm_data import eval_transform, image_dataset, read_class_map, resolve_eval_config

TINY = dict(depth=2, embed_dim=64, num_heads=2)


def _images(root: Path, classes=("cat", "dog", "eel"), per=3, hw=(40, 52), seed=0):
    rng = np.random.default_rng(seed)
    for c in classes:
        d = root / c
        d.mkdir(parents=True)
        for i in range(per):
            Image.fromarray(rng.integers(0, 255, (*hw, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


@pytest.mark.parametrize("name, mean, crop", [
    ("vit_tiny_patch16_224.augreg_in21k", (0.5, 0.5, 0.5), 0.9),
    ("eva02_tiny_patch14_224.mim_in22k", (0.48145466, 0.4578275, 0.40821073), 0.9),
])
def test_eval_transform_is_timms_for_the_models_data_config(tmp_path, name, mean, crop):
    from timm.data import create_transform, resolve_data_config

    m = timm.create_model(name, pretrained=False, num_classes=3, **TINY)
    dc = resolve_eval_config(m)
    assert dc["mean"] == pytest.approx(mean) and dc["crop_pct"] == crop
    ref = create_transform(**resolve_data_config(model=m))
    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (300, 260, 3), dtype=np.uint8))
    assert torch.equal(eval_transform(dc)(img), ref(img))
    # another test size: timm's transform with input_size replaced, nothing else
    ref2 = create_transform(**{**resolve_data_config(model=m), "input_size": (3, 112, 168)})
    out = eval_transform(dc, (112, 168))(img)
    assert out.shape == (3, 112, 168) and torch.equal(out, ref2(img))
    # overrides, as timm's validate.py flags
    dc2 = resolve_eval_config(m, mean="0.1,0.2,0.3", std=[0.5], crop_pct=1.0, interpolation="bilinear")
    assert dc2["mean"] == (0.1, 0.2, 0.3) and dc2["std"] == (0.5, 0.5, 0.5) and dc2["crop_pct"] == 1.0
    assert dc2["interpolation"] == "bilinear"
    for bad, match in ((dict(mean="a,b"), "mean must be three numbers"), (dict(crop_pct=1.5), "crop_pct"),
                       (dict(std=[0, 1, 1]), "std must be positive"), (dict(crop_mode="zoom"), "crop_mode")):
        with pytest.raises(ValueError, match=match):
            resolve_eval_config(m, **bad)


def test_class_map_and_dataset(tmp_path):
    root = _images(tmp_path / "data")
    ds = image_dataset(root)
    assert len(ds) == 9 and ds.reader.class_to_idx == {"cat": 0, "dog": 1, "eel": 2}
    cmap = tmp_path / "map.txt"
    cmap.write_text("ant\ncat\nbee\ndog\nelk\neel\n")
    ds = image_dataset(root, class_map=str(cmap))
    assert ds.reader.class_to_idx["eel"] == 5 and sorted({t for _, t in ds.reader.samples}) == [1, 3, 5]
    assert read_class_map({"a": 0}) == {"a": 0}
    (tmp_path / "short.txt").write_text("cat\ndog\n")
    with pytest.raises(ValueError, match=r"class folders \['eel'\].*not in the class map"):
        image_dataset(root, class_map=str(tmp_path / "short.txt"))
    with pytest.raises(ValueError, match="does not exist"):
        read_class_map(str(tmp_path / "nope.txt"))
    with pytest.raises(ValueError, match="is not a folder"):
        image_dataset(tmp_path / "missing")


def test_checkpoint_folders(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(ValueError, match="holds no model_best"):
        find_checkpoint(run)
    torch.save({"w": torch.zeros(1)}, run / "a.pth")
    assert find_checkpoint(run) == run / "a.pth"
    torch.save({"w": torch.zeros(1)}, run / "b.pth")
    with pytest.raises(ValueError, match="several checkpoints"):
        find_checkpoint(run)
    torch.save({"state_dict": {"head.weight": torch.zeros(7, 4)}, "arch": "vit_x"}, run / "last.pth.tar")
    assert find_checkpoint(run) == run / "last.pth.tar"
    rec = checkpoint_record(run / "last.pth.tar")
    assert rec["arch"] == "vit_x" and rec["num_classes"] == 7
    with pytest.raises(ValueError, match="does not exist"):
        find_checkpoint(tmp_path / "nope")


def test_variants_follow_the_models_pe():
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=3, **TINY)
    eva = timm.create_model("eva02_tiny_patch14_224", num_classes=3, **TINY)
    assert default_variants(vit) == ["timm", "ape-bicubic", "ape-bilinear", "ape-nearest", "ape-area"]
    assert set(default_variants(eva)) == set(VARIANTS)
    with pytest.raises(ValueError, match="variant 'rope-ntk' changes the model's 'rope_axial'"):
        parse_tf_variants("timm,rope-ntk", vit)
    with pytest.raises(ValueError, match="unknown training-free variant 'ape-cubic'"):
        parse_tf_variants("ape-cubic", vit)


def _random_checkpoint(path: Path, name: str, img: int, num_classes: int = 3, **kw):
    torch.manual_seed(0)
    m = timm.create_model(name, num_classes=num_classes, img_size=img, **kw)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.2)  # random weights everywhere, so the PE decides the outputs
    torch.save(m.state_dict(), path)
    return m


@pytest.mark.parametrize("name, patch, variants", [
    ("vit_tiny_patch16_224.augreg_in21k", 8, ["timm", "ape-bicubic", "ape-bilinear", "ape-nearest", "ape-area"]),
    ("eva02_tiny_patch14_224.mim_in22k", 8, ["timm", "rope-index", "rope-interpolated", "rope-ntk", "rope-yarn"]),
])
def test_eval_pretrained_on_a_random_checkpoint_and_an_image_folder(tmp_path, capsys, name, patch, variants):
    kw = dict(TINY, patch_size=patch)
    if name.startswith("eva02"):
        kw["ref_feat_shape"] = (4, 4)  # the RoPE reference grid = the checkpoint's grid (32 px / 8)
    _random_checkpoint(tmp_path / "ck.pth", name, 32, **kw)
    data = _images(tmp_path / "data")
    out = tmp_path / "out"
    argv = ["eval", "pretrained", "--model", name, "--checkpoint", str(tmp_path / "ck.pth"), "--data", str(data),
            "--sizes", "16,32,48,32x64", "--train-size", "32", "--model-kwargs", json.dumps(kw), "--out", str(out),
            "--variants", ",".join(variants), "--no-progress"]
    assert main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["variants"] == [v for v in variants if v in res["parity"] and v not in res["skipped"]]
    assert not res["skipped"], res["skipped"]  # every variant reproduces the checkpoint at its training size
    assert res["sizes"] == ["16", "32", "32x64", "48"]  # ordered by pixel count
    assert len(res["rows"]) == len(variants) * 4 and all(r["n"] == 9 for r in res["rows"])
    # the timm row at the training size is timm's own evaluation of the checkpoint with timm's transform
    from timm.data import create_transform, resolve_data_config

    m = timm.create_model(name, num_classes=3, img_size=32, dynamic_img_size=True, **kw).eval()
    m.load_state_dict(torch.load(tmp_path / "ck.pth", weights_only=True))
    tf = create_transform(**{**resolve_data_config(model=m), "input_size": (3, 32, 32)})
    ds = timm.data.create_dataset("", root=str(data), transform=tf)
    with torch.no_grad():
        pred = torch.cat([m(x).argmax(-1) for x, _ in torch.utils.data.DataLoader(ds, batch_size=4)])
    correct = int((pred == torch.tensor([t for _, t in ds.reader.samples])).sum())
    row = next(r for r in res["rows"] if r["variant"] == "timm" and r["size"] == "32")
    assert row["correct1"] == correct
    assert res["data_config"]["mean"] == list(resolve_data_config(model=m)["mean"])
    assert res["environment"]["torch"] == torch.__version__ and res["environment"]["timm"] == timm.__version__
    for f in ("results.csv", "table.md", "config.yaml", "accuracy_vs_resolution.png"):
        assert (out / f).is_file()
    assert "32*" in (out / "table.md").read_text()
    # a second run into the same folder is refused and leaves the first intact
    before = (out / "results.json").read_bytes()
    assert main(argv) == 2
    assert "already holds" in capsys.readouterr().err
    assert (out / "results.json").read_bytes() == before


def test_eval_pretrained_num_classes_and_class_map(tmp_path, capsys):
    name, kw = "vit_tiny_patch16_224", dict(TINY, patch_size=8)
    _random_checkpoint(tmp_path / "ck10.pth", name, 32, num_classes=10, **kw)
    data = _images(tmp_path / "data")
    cmap = tmp_path / "map.txt"
    cmap.write_text("\n".join(["a", "cat", "b", "dog", "c", "d", "eel", "e", "f", "g"]) + "\n")
    base = ["eval", "pretrained", "--model", name, "--data", str(data), "--sizes", "32", "--train-size", "32",
            "--model-kwargs", json.dumps(kw), "--variants", "timm", "--no-progress"]
    # the 10 classifier rows are read from the checkpoint; the folder's 3 classes map onto outputs 1, 3, 6
    assert main(base + ["--checkpoint", str(tmp_path / "ck10.pth"), "--class-map", str(cmap),
                        "--out", str(tmp_path / "o1")]) == 0
    res = json.loads((tmp_path / "o1" / "results.json").read_text())
    assert res["num_classes"] == 10 and res["class_map"]["eel"] == 6 and res["rows"][0]["top5"] is not None
    # --num-classes that does not match the checkpoint's head: one clear error
    assert main(base + ["--checkpoint", str(tmp_path / "ck10.pth"), "--num-classes", "3",
                        "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert "vispos: error:" in err and "head" in err
    assert not (tmp_path / "o2").exists()  # a failed run leaves no folder


def test_pretrained_flag_goes_through_timms_pretrained_loading(tmp_path):
    """--pretrained loads weights the way timm does (here from a local file via pretrained_cfg_overlay, no hub)."""
    name, kw = "vit_tiny_patch16_224.augreg_in21k", dict(TINY, patch_size=8)
    m = _random_checkpoint(tmp_path / "ck.pth", name, 32, **kw)
    data = _images(tmp_path / "data")
    mk = dict(kw, pretrained_cfg_overlay={"file": str(tmp_path / "ck.pth"), "num_classes": 3})
    argv = ["--model", name, "--data", str(data), "--sizes", "32", "--train-size", "32", "--model-kwargs",
            json.dumps(mk), "--pretrained", "--no-progress"]
    assert main(["eval", "pretrained", *argv, "--variants", "timm", "--out", str(tmp_path / "a"), "--num-classes",
                 "3"]) == 0
    a = json.loads((tmp_path / "a" / "results.json").read_text())["rows"][0]
    assert main(["eval", "resolution", *argv, "--pe", "timm", "--out", str(tmp_path / "b")]) == 0
    b = json.loads((tmp_path / "b" / "results.json").read_text())["rows"][0]
    # both equal the checkpoint evaluated by hand (so the weights were loaded, not random)
    from timm.data import create_transform, resolve_data_config

    m.eval()
    tf = create_transform(**{**resolve_data_config(model=m), "input_size": (3, 32, 32)})
    ds = timm.data.create_dataset("", root=str(data), transform=tf)
    with torch.no_grad():
        correct = sum(int(m(x[None]).argmax(-1).item() == y) for x, y in ds)
    assert a["correct1"] == b["correct1"] == correct
