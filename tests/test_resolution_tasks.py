"""Resolution tasks that resize the way photographs do (Landolt rings of random size and place, crops of
scikit-image photos with disjoint train/test regions), configurable random-resized-crop, and the papers'
protocol: test sizes as ratios of the training size, deltas in points paired by seed."""
import json

import pytest
import torch

from vispos.data.images import (
    TASKS,
    SyntheticPositionDataset,
    load_photo,
    photo_box,
    photo_crop,
    photo_region,
    render,
    scene,
)
from vispos.eval.resolution import load_config
from vispos.eval.resolution.config import PAPER_RATIOS, parse_ratios, sizes_from_ratios


def _target_pixels(img, rgb):
    return ((img - rgb[:, None, None]).abs().max(0).values < 0.03).float()


@pytest.mark.parametrize("size", [32, 64, 96])
def test_landolt_gap_read_back_from_pixels(size):
    """The ring's pixels lie away from the gap: their centroid is offset opposite the labelled direction."""
    opposite = {0: (-1, 0), 1: (0, -1), 2: (1, 0), 3: (0, 1)}  # gap right -> centroid left of the centre, ...
    for i in range(24):
        objs, bg, label = scene("landolt", 3, i)
        t = objs[1]
        r = float(t[3])
        if r * size < 6:  # too few pixels for a centroid at this size
            continue
        img = render("landolt", 3, i, size)[0] * 0.5 + 0.5
        m = _target_pixels(img, t[4:7])
        ys = (torch.arange(size, dtype=torch.float64) + 0.5) / size
        cy = float((m.double().sum(1) * ys).sum() / m.sum())
        cx = float((m.double().sum(0) * ys).sum() / m.sum())
        dx, dy = (cx - float(t[1])) / r, (cy - float(t[2])) / r
        ex, ey = opposite[label]
        assert dx * ex + dy * ey > 0.05 and abs(dx * ey + dy * ex) < 0.05, (i, size, label, dx, dy)


def test_landolt_random_size_and_place():
    objs = torch.stack([scene("landolt", 0, i)[0][1] for i in range(300)])
    r, cx, cy = objs[:, 3], objs[:, 1], objs[:, 2]
    assert float(r.min()) < 0.13 and float(r.max()) > 0.42  # a 4.5x range of scales
    assert bool(((cx - r) >= 0).all() and ((cx + r) <= 1).all() and ((cy - r) >= 0).all())
    assert float(cx.std()) > 0.1 and float(cy.std()) > 0.1
    assert objs[:, 0].long().unique().tolist() == [4, 5, 6, 7]  # every gap direction


def test_photos_regions_disjoint_and_crops_inside():
    names = TASKS["photos"].classes
    assert len(names) == 12
    for name in names:
        img = load_photo(name)
        assert img.shape[0] == 3 and min(img.shape[1:]) == 384
        a, b = photo_region(img.shape, "train"), photo_region(img.shape, "test")
        long_h = img.shape[1] >= img.shape[2]
        assert (a[1] == b[0]) if long_h else (a[3] == b[2])  # adjacent, not overlapping
    for split in ("train", "test"):
        for i in range(48):
            label, (top, left, h, w), flip = photo_box(1, i, split)
            y0, y1, x0, x1 = photo_region(load_photo(names[label]).shape, split)
            assert y0 <= top and top + h <= y1 and x0 <= left and left + w <= x1, (split, i)
            if split == "test":
                assert h == w and not flip


def test_photos_rrc_scale_sets_the_crop_area():
    areas = {}
    for scale in ((0.25, 1.0), (0.9, 1.0), (0.1, 0.1)):
        vals = []
        for i in range(60):
            label, (_, _, h, w), _ = photo_box(0, i, "train", scale)
            from vispos.data.images import _max_crop

            vals.append(h * w / _max_crop(load_photo(TASKS["photos"].classes[label]).shape) ** 2)
        areas[scale] = vals
    assert min(areas[(0.9, 1.0)]) > 0.8 and max(areas[(0.1, 0.1)]) < 0.13
    assert max(areas[(0.25, 1.0)]) > 0.8 and min(areas[(0.25, 1.0)]) < 0.35
    with pytest.raises(ValueError, match="rrc_scale"):
        SyntheticPositionDataset("photos", 32, 12, rrc_scale=(0.0, 1.0))
    with pytest.raises(ValueError, match="rrc_scale"):
        SyntheticPositionDataset("photos", 32, 12, rrc_scale=(0.8, 0.5))
    with pytest.raises(ValueError, match="split"):
        SyntheticPositionDataset("photos", 32, 12, split="val")
    with pytest.raises(ValueError, match="rrc_scale"):
        load_config(task="photos", rrc_scale="1,2", pe="ape")


def test_photos_crop_at_any_size_shows_the_same_view():
    a, la = photo_crop(2, 5, 96, "test")
    b, lb = photo_crop(2, 5, 24, "test")
    assert la == lb
    down = torch.nn.functional.interpolate(a[None], size=(24, 24), mode="area")[0]
    assert float((down - b).abs().mean()) < 0.05
    ds = SyntheticPositionDataset("photos", 32, 24, seed=2, split="test")
    x, y = ds.get_batch([5, 6])
    assert torch.allclose(x[0], photo_crop(2, 5, 32, "test")[0]) and int(y[0]) == la


def test_size_ratios_match_the_papers():
    assert parse_ratios("paper") == list(PAPER_RATIOS) == [0.43, 1.0, 1.7, 2.3, 3.0]
    # 224 px / patch 16: 96, 224, 384, 512, 672 (the papers test 96, 384, 512, 640)
    assert [s[0] for s in sizes_from_ratios(PAPER_RATIOS, [224, 224], 16)] == [96, 224, 384, 512, 672]
    assert [s[0] for s in sizes_from_ratios(PAPER_RATIOS, [28, 28], 4)] == [12, 28, 48, 64, 84]
    assert [s[0] for s in sizes_from_ratios(PAPER_RATIOS, [112, 112], 8)] == [48, 112, 192, 256, 336]
    with pytest.raises(ValueError, match="include 1"):
        parse_ratios("0.5,2")
    with pytest.raises(ValueError, match="positive"):
        parse_ratios([0.5, -1, 1])
    with pytest.raises(ValueError, match="repeated"):
        sizes_from_ratios([1.0, 1.1], [8, 8], 8)


def test_protocol_deltas_paired_by_seed(tmp_path):
    from vispos.eval.resolution import run_experiment

    cfg = load_config(task="landolt", pe="ape,rope_axial", model_kwargs={"patch_size": 4, "embed_dim": 16,
                      "depth": 1, "num_heads": 2}, train_size=12, size_ratios="0.5,1,2", steps=2, batch_size=8,
                      eval_samples=16, eval_batch_size=16, seeds=[0, 1], out=str(tmp_path), device="cpu")
    res = run_experiment(cfg, train=True, progress=False)
    assert res["sizes"] == ["8", "12", "24"]
    acc = {(r["variant"], r["seed"], r["size"]): r["top1"] for r in res["rows"]}
    for v in ("ape", "rope_axial"):
        for s in ("8", "24"):
            d = [100 * (acc[(v, k, s)] - acc[(v, k, "12")]) for k in (0, 1)]
            e = res["deltas"][v][s]
            assert e["mean"] == pytest.approx(sum(d) / 2) and e["n_seeds"] == 2
            assert e["std"] == pytest.approx(abs(d[0] - d[1]) / 2 ** 0.5)
    assert "Change from the training size, in points" in res["table"]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["deltas"] == json.loads(json.dumps(res["deltas"]))


def test_imagefolder_training_uses_rrc_scale(tmp_path):
    from PIL import Image

    from vispos.eval.resolution.data import _open_image_folder, _TrainImages

    root = tmp_path / "imgs"
    (root / "a").mkdir(parents=True)
    grad = torch.linspace(0, 255, 64).repeat(64, 1)
    arr = torch.stack([grad, grad.t(), 255 - grad], -1).byte().numpy()
    Image.fromarray(arr).save(root / "a" / "x.png")
    folder = _open_image_folder(root, "train_data folder")
    base = load_config(pe="ape", task="absolute")
    full = _TrainImages(folder, dict(base, rrc_scale=[1.0, 1.0]))
    tiny = _TrainImages(folder, dict(base, rrc_scale=[0.05, 0.05]))
    a = torch.stack([full[(0, (16, 16), s)][0] for s in range(6)])
    b = torch.stack([tiny[(0, (16, 16), s)][0] for s in range(6)])
    # the whole image spans the full range of the gradient channels; a 5 % crop only a part of it
    span_a = (a[:, 1].amax((1, 2)) - a[:, 1].amin((1, 2))).min()
    span_b = (b[:, 1].amax((1, 2)) - b[:, 1].amin((1, 2))).max()
    assert float(span_a) > 2 * float(span_b)


def test_demo_configs_use_the_protocol():
    from pathlib import Path

    from vispos.eval.resolution import demo_config_path, resolve_sizes

    expect = {"cpu": [12, 28, 48, 64, 84], "gpu": [48, 112, 192, 256, 336]}
    for scale, sizes in expect.items():
        cfg = resolve_sizes(load_config(demo_config_path(scale)))
        assert cfg["task"] == "photos" and len(cfg["seeds"]) >= 3 and cfg["rrc_scale"] == [0.25, 1.0]
        assert [s[0] for s in cfg["sizes"]] == sizes
    adversarial = load_config(Path(demo_config_path("cpu")).parent / "absolute_cpu.yaml")
    assert adversarial["task"] == "absolute"
