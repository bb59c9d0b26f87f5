"""The notebook API returns the rows the CLI writes; a user's Dataset / DataLoader; to_pandas; evaluate_frames."""
import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import vispos
from vispos.cli import main

TINY = {"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2, "mlp_ratio": 2.0}
NAME = "vit_tiny_patch16_224.augreg_in21k"
KEYS = ["variant", "pe", "seed", "size", "height", "width", "n", "correct1", "top1", "correct5", "top5"]


def _folder(root, n_classes=3, per=3, hw=(30, 44)):
    rng = np.random.default_rng(0)
    for c in range(n_classes):
        d = root / f"c{c}"
        d.mkdir(parents=True)
        for i in range(per):
            Image.fromarray(rng.integers(0, 255, (*hw, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


def _checkpoint(path, num_classes=3):
    torch.manual_seed(0)
    m = timm.create_model(NAME, num_classes=num_classes, img_size=16, dynamic_img_size=True, **TINY)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.3)
    torch.save(m.state_dict(), path)
    return m


def _strip(rows):
    return [{k: r[k] for k in KEYS} for r in rows]


def test_evaluate_resolution_equals_the_cli(tmp_path):
    data = _folder(tmp_path / "data")
    _checkpoint(tmp_path / "ck.pth")
    out = tmp_path / "cli"
    assert main(["eval", "resolution", "--model", NAME, "--model-kwargs", json.dumps(TINY), "--pe", "timm",
                 "--checkpoint", str(tmp_path / "ck.pth"), "--data", str(data), "--sizes", "16,24,16x32",
                 "--train-size", "16", "--out", str(out), "--no-progress"]) == 0
    cli_rows = json.loads((out / "results.json").read_text())["rows"]
    rows = vispos.evaluate_resolution(NAME, data, "16,24,16x32", pe="timm", checkpoint=tmp_path / "ck.pth",
                                      model_kwargs=TINY, train_size=16, progress=False)
    assert isinstance(rows, vispos.Rows) and len(rows) == 3
    assert _strip(rows) == _strip(cli_rows)
    assert rows.meta["data_config"]["mean"] == [0.5, 0.5, 0.5] and "table" in rows.meta
    df = rows.to_pandas()
    assert list(df["size"]) == ["16", "24", "16x32"] and df["top1"].tolist() == [r["top1"] for r in rows]
    assert not list(tmp_path.glob("results"))  # nothing written without out=


def test_evaluate_resolution_training_free_variants_equal_eval_pretrained(tmp_path):
    data = _folder(tmp_path / "data")
    m = _checkpoint(tmp_path / "ck.pth")
    assert main(["eval", "pretrained", "--model", NAME, "--model-kwargs", json.dumps(TINY), "--checkpoint",
                 str(tmp_path / "ck.pth"), "--data", str(data), "--sizes", "16,32", "--train-size", "16",
                 "--variants", "timm,ape-bilinear,ape-nearest", "--out", str(tmp_path / "cli"), "--no-progress"]) == 0
    cli_rows = json.loads((tmp_path / "cli" / "results.json").read_text())["rows"]
    m.eval()
    # a module (weights loaded) and an ImageFolder path
    rows = vispos.evaluate_resolution(m, data, "16,32", variants="timm,ape-bilinear,ape-nearest", train_size=16,
                                      progress=False)
    assert _strip(rows) == _strip(cli_rows)
    # the same images as a user's Dataset of (PIL image, label): timm's transform is applied per size
    ds = timm.data.create_dataset("", root=str(data))
    rows_ds = vispos.evaluate_resolution(m, ds, "16,32", variants="timm,ape-bilinear,ape-nearest", train_size=16,
                                         progress=False)
    assert _strip(rows_ds) == _strip(cli_rows)
    # a DataLoader of tensors: resized to each size
    x = torch.rand(6, 3, 16, 16)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
    rows_dl = vispos.evaluate_resolution(m, loader, "16,32", progress=False)
    with torch.no_grad():
        want16 = int((m(x).argmax(-1) == y).sum())
    assert [r["variant"] for r in rows_dl] == ["timm", "timm"] and rows_dl[0]["correct1"] == want16
    assert rows_dl[1]["n"] == 6


def test_evaluate_resolution_bad_input():
    with pytest.raises(TypeError, match="model_or_name"):
        vispos.evaluate_resolution(3, "x", "16")
    m = timm.create_model(NAME, num_classes=3, img_size=16, **TINY)
    with pytest.raises(TypeError, match="data must be"):
        vispos.evaluate_resolution(m, 5, "16", progress=False)
    ds = torch.utils.data.TensorDataset(torch.rand(2, 3, 16, 16), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="give sizes="):
        vispos.evaluate_resolution(m, ds, None)
    with pytest.raises(ValueError, match="dynamic_img_size=True"):
        vispos.evaluate_resolution(m, ds, "16,32", progress=False)


def test_evaluate_frames_equals_the_cli_and_takes_arrays(tmp_path):
    from vispos.data.video import SyntheticVideos, to_uint8, write_video

    vids = SyntheticVideos(3, 12, size=16, num_objects=1, seed=0)
    folder = tmp_path / "videos"
    folder.mkdir()
    arrays = []
    for i in range(3):
        a = to_uint8(vids.render(i, 12))
        arrays.append(a)
        write_video(folder / f"v{i}.mp4", a, fps=8)
    assert main(["eval", "frames", "--videos", str(folder), "--train-len", "8", "--out", str(tmp_path / "cli"),
                 "--no-progress"]) == 0
    cli = json.loads((tmp_path / "cli" / "results.json").read_text())
    rows = vispos.evaluate_frames(folder, train_len=8, progress=False)
    assert [r["file"] for r in rows] == [r["file"] for r in cli["per_video"]]
    assert rows == cli["per_video"] and rows.meta["summary"] == cli["summary"]
    arr_rows = vispos.evaluate_frames(arrays, train_len=8, progress=False)
    assert [r["file"] for r in arr_rows] == ["video0", "video1", "video2"]
    assert arr_rows[0]["num_frames"] == 12 and arr_rows.meta["summary"]["n"] == 3
    with pytest.raises(ValueError, match="empty"):
        vispos.evaluate_frames([], train_len=8)
