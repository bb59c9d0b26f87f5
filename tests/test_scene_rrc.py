"""Train-time random-resized crop of the synthetic scene tasks (issue 15): ``relative``, ``landolt`` and ``shape``
take one that keeps their label true (the label-deciding objects stay whole, read back from the pixels of the
crop); ``absolute`` / ``quadrant`` refuse one clearly (dataset, config and CLI)."""
import math

import pytest
import torch

from vispos.data.images import (
    RRC_TASKS,
    SyntheticPositionDataset,
    crop_view,
    render,
    render_scenes,
    resolve_rrc_scale,
    scene,
)
from vispos.eval.resolution import load_config
from vispos.eval.resolution.data import plan_data, train_batch, train_seed

CROP_TASKS = ("relative", "landolt", "shape")
SLOTS = {"relative": (0, 1), "landolt": (1,), "shape": (0,)}


def _mask(img, rgb, tol=0.03):
    return ((img - rgb[:, None, None]).abs().max(0).values < tol).double()


def _centroid(m):
    h, w = m.shape
    ys = (torch.arange(h, dtype=torch.float64) + 0.5) / h
    xs = (torch.arange(w, dtype=torch.float64) + 0.5) / w
    n = m.sum()
    return float((m.sum(1) * ys).sum() / n), float((m.sum(0) * xs).sum() / n)


@pytest.mark.parametrize("task", ["absolute", "quadrant", "relative", "landolt", "shape"])
def test_whole_view_renders_the_uncropped_scene(task):
    scenes = [scene(task, 4, i) for i in range(8)]
    objs, bg = torch.stack([s[0] for s in scenes]), torch.stack([s[1] for s in scenes])
    plain = render_scenes(objs, bg, (24, 40))
    whole = render_scenes(objs, bg, (24, 40), torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 8))
    torch.testing.assert_close(whole, plain, atol=1e-5, rtol=0)


@pytest.mark.parametrize("task", CROP_TASKS)
def test_square_window_equals_the_magnified_scene(task):
    """Rasterising a square window = rasterising the scene moved and magnified into the unit square (boxes,
    rings and discs alike)."""
    x0, y0, c = 0.15, 0.1, 0.7
    for i in range(6):
        objs, bg, _ = scene(task, 2, i)
        moved = objs.clone()
        moved[:, 1] = (objs[:, 1] - x0) / c
        moved[:, 2] = (objs[:, 2] - y0) / c
        moved[:, 3] = objs[:, 3] / c
        a = render_scenes(objs[None], bg[None], 32, torch.tensor([[x0, y0, x0 + c, y0 + c]]))
        b = render_scenes(moved[None], bg[None], 32)
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


@pytest.mark.parametrize("task", CROP_TASKS)
def test_crop_window_keeps_the_label_objects_whole(task):
    areas, aspects, widened = [], [], 0
    for i in range(300):
        objs = scene(task, 1, i)[0]
        x0, y0, x1, y1 = crop_view(task, 1, i, (0.25, 1.0))
        assert 0 <= x0 < x1 <= 1 + 1e-9 and 0 <= y0 < y1 <= 1 + 1e-9
        for s in SLOTS[task]:
            cx, cy, half = (float(v) for v in objs[s, 1:4])
            assert x0 - 1e-6 <= cx - half and cx + half <= x1 + 1e-6, (task, i)
            assert y0 - 1e-6 <= cy - half and cy + half <= y1 + 1e-6, (task, i)
        a, ar = (x1 - x0) * (y1 - y0), (x1 - x0) / (y1 - y0)
        keep = objs[list(SLOTS[task])]
        need_w = float((keep[:, 1] + keep[:, 3]).max()) - float((keep[:, 1] - keep[:, 3]).min())
        need_h = float((keep[:, 2] + keep[:, 3]).max()) - float((keep[:, 2] - keep[:, 3]).min())
        cw, ch = x1 - x0, y1 - y0
        if min(abs(cw - need_w), abs(ch - need_h), abs(cw - 1), abs(ch - 1)) < 1e-7:
            widened += 1  # widened / heightened to hold the objects, or capped at the image
            continue
        areas.append(a)
        aspects.append(ar)
        assert 0.25 - 1e-9 <= a <= 1 + 1e-9 and 3 / 4 - 1e-9 <= ar <= 4 / 3 + 1e-9
    assert len(areas) > 30, (task, widened)  # the crop is really random, not always the whole image
    assert min(areas) < 0.4 and max(aspects) / min(aspects) > 1.3
    # deterministic in (seed, index), independent of the scene's own stream
    assert crop_view(task, 1, 7, (0.25, 1.0)) == crop_view(task, 1, 7, (0.25, 1.0))
    assert crop_view(task, 1, 7, (0.25, 1.0)) != crop_view(task, 1, 8, (0.25, 1.0))
    torch.testing.assert_close(scene(task, 1, 7)[0], scene(task, 1, 7)[0])


def _window(task, seed, i):
    return crop_view(task, seed, i, (0.25, 1.0))


@pytest.mark.parametrize("size", [48, "40x56"])
def test_labels_read_back_from_the_cropped_pixels(size):
    """The label of a cropped training image is what its pixels show (relative order of A and B, the gap's
    direction, the shape's fill of its box), with the crop really magnifying the scene."""
    opposite = {0: (-1, 0), 1: (0, -1), 2: (1, 0), 3: (0, 1)}
    fills = {0: 1.0, 1: math.pi / 4, 2: 1 - 0.55 ** 2, 3: 20 / 36}
    rel = SyntheticPositionDataset("relative", size, 40, seed=3, rrc_scale=(0.25, 1.0))
    lan = SyntheticPositionDataset("landolt", size, 40, seed=3, rrc_scale=(0.25, 1.0))
    shp = SyntheticPositionDataset("shape", size, 40, seed=3, rrc_scale=(0.25, 1.0))
    xr, yr = rel.get_batch(range(40))
    xl, yl = lan.get_batch(range(40))
    xs, ys = shp.get_batch(range(40))
    h, w = xr.shape[-2:]
    magnified = 0
    for i in range(40):
        objs, _, label = scene("relative", 3, i)
        assert int(yr[i]) == label
        img = xr[i] * 0.5 + 0.5
        ya, xa = _centroid(_mask(img, objs[0, 4:7]))
        yb, xb = _centroid(_mask(img, objs[1, 4:7]))
        assert label == 2 * int(ya < yb) + int(xa < xb), (i, size)
        x0, y0, x1, y1 = _window("relative", 3, i)
        magnified += (x1 - x0) < 0.9
        # landolt: the ring's centroid is offset opposite its gap, in the crop's coordinates
        objs, _, label = scene("landolt", 3, i)
        assert int(yl[i]) == label
        t = objs[1]
        x0, y0, x1, y1 = _window("landolt", 3, i)
        rx, ry = float(t[3]) / (x1 - x0), float(t[3]) / (y1 - y0)
        if min(rx * w, ry * h) >= 8:  # enough pixels for a centroid
            cy, cx = _centroid(_mask(xl[i] * 0.5 + 0.5, t[4:7]))
            dx, dy = (cx - (float(t[1]) - x0) / (x1 - x0)) / rx, (cy - (float(t[2]) - y0) / (y1 - y0)) / ry
            ex, ey = opposite[label]
            assert dx * ex + dy * ey > 0.05 and abs(dx * ey + dy * ex) < 0.05, (i, size, label, dx, dy)
        # shape: the whole object is in view, its fill of its (stretched) box names the kind
        objs, bg, label = scene("shape", 3, i)
        assert int(ys[i]) == label
        o = objs[0]
        x0, y0, x1, y1 = _window("shape", 3, i)
        box = (2 * float(o[3]) / (x1 - x0) * w) * (2 * float(o[3]) / (y1 - y0) * h)
        img = xs[i] * 0.5 + 0.5
        cov = ((img - bg[:, None, None]).sum(0) / (o[4:7] - bg).sum()).clamp(0, 1)
        fill = float(cov.sum()) / box
        assert min(fills, key=lambda k: abs(fills[k] - fill)) == label, (i, size, fill)
    assert magnified > 10


def test_crop_is_train_only_size_free_and_consistent():
    ds = SyntheticPositionDataset("relative", 24, 12, seed=5, rrc_scale=(0.3, 0.6))
    xb, yb = ds.get_batch(range(12))
    for i in (0, 5, 11):
        x, y = ds[i]
        torch.testing.assert_close(x, xb[i])
        assert y == int(yb[i])
    assert not torch.allclose(xb, SyntheticPositionDataset("relative", 24, 12, seed=5).get_batch(range(12))[0])
    # the same window at every size: downsampling the 96-px crop gives the 24-px crop
    big = ds.get_batch(range(4), size=96)[0]
    down = torch.nn.functional.avg_pool2d(big, 4)
    assert float((down - xb[:4]).abs().mean()) < 0.03
    # the test split never crops
    test = SyntheticPositionDataset("relative", 24, 12, seed=5, split="test", rrc_scale=(0.3, 0.6))
    torch.testing.assert_close(test.get_batch(range(12))[0],
                               SyntheticPositionDataset("relative", 24, 12, seed=5, split="test").get_batch(range(12))[0])
    # render() and "off" agree with the dataset
    torch.testing.assert_close(render("relative", 5, 3, 24, rrc_scale=(0.3, 0.6))[0], xb[3])
    torch.testing.assert_close(render("relative", 5, 3, 24, rrc_scale="off")[0], render("relative", 5, 3, 24)[0])


@pytest.mark.parametrize("task", ["absolute", "quadrant"])
def test_absolute_tasks_refuse_a_crop(task, tmp_path, capsys):
    with pytest.raises(ValueError, match=rf"task '{task}' takes no random-resized crop .*fixed fraction"):
        SyntheticPositionDataset(task, 32, 9, rrc_scale=(0.5, 1.0))
    with pytest.raises(ValueError, match=rf"task '{task}' takes no random-resized crop"):
        render(task, 0, 0, 32, rrc_scale=(0.5, 1.0))
    with pytest.raises(ValueError, match="takes no scene crop"):
        crop_view(task, 0, 0, (0.5, 1.0))
    with pytest.raises(ValueError, match=rf"task '{task}' takes no random-resized crop"):
        load_config(task=task, rrc_scale="0.5,1", pe="ape")
    assert load_config(task=task, pe="ape")["rrc_scale"] is False  # default: the whole image
    assert load_config(task=task, rrc_scale="off", pe="ape")["rrc_scale"] is False
    from vispos.cli import main

    rc = main(["train", "resolution", "--task", task, "--rrc-scale", "0.5,1", "--pe", "ape", "--train-size", "16",
               "--model-kwargs", "{patch_size: 8, embed_dim: 32, depth: 1, num_heads: 2}", "--steps", "1",
               "--batch-size", "4", "--eval-samples", "4", "--device", "cpu", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("vispos: error: ") and "takes no random-resized crop" in err, err
    assert not (tmp_path / "o").exists()


def test_config_defaults_and_off():
    assert set(RRC_TASKS) == {"photos", *CROP_TASKS}
    for task in RRC_TASKS:
        assert load_config(task=task, pe="ape")["rrc_scale"] == [0.25, 1.0]
        assert load_config(task=task, rrc_scale="0.5,0.9", pe="ape")["rrc_scale"] == [0.5, 0.9]
    for task in CROP_TASKS:
        assert load_config(task=task, rrc_scale="off", pe="ape")["rrc_scale"] is False
        assert resolve_rrc_scale(task, None) is None  # the dataset's default: the whole scene
    with pytest.raises(ValueError, match="does not apply to the photos task"):
        load_config(task="photos", rrc_scale="off", pe="ape")
    with pytest.raises(ValueError, match="ImageFolder training always uses a random-resized crop"):
        load_config(train_data="x", data="y", rrc_scale="off", pe="ape")
    with pytest.raises(ValueError, match="rrc_scale must be like"):
        load_config(task="relative", rrc_scale="big", pe="ape")
    with pytest.raises(ValueError, match="rrc_scale"):
        load_config(task="shape", rrc_scale="0,1", pe="ape")


def test_training_batches_of_scene_tasks_are_cropped():
    on = load_config(task="landolt", pe="ape", train_size=16, steps=2, batch_size=8)
    off = load_config(task="landolt", pe="ape", train_size=16, steps=2, batch_size=8, rrc_scale="off")
    data = plan_data(on, train=True)
    xa, ya = train_batch(on, data, 0, list(range(8)), (16, 16), 0)
    xb, yb = train_batch(off, data, 0, list(range(8)), (16, 16), 0)
    assert torch.equal(ya, yb) and not torch.allclose(xa, xb)
    want = SyntheticPositionDataset("landolt", 16, 16, seed=train_seed(on, 0), rrc_scale=(0.25, 1.0))
    torch.testing.assert_close(xa, want.get_batch(range(8))[0])
