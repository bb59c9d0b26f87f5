"""Video training (rectified flow, resume), samplers, `vispos eval frames` end to end and `--videos DIR`."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from vispos.cli import main
from vispos.eval import frames as FR

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(num_videos=8, frames=4, size=8, num_objects=1, patch=[1, 4, 4], dim=32, depth=2, num_heads=2,
            pe_kwargs={"dims": [8, 4, 4], "base": 10.0}, batch_size=2, steps=4, warmup=2, ckpt_every=2, ema=0.9)


def _state(path):
    ck = torch.load(path, map_location="cpu", weights_only=True)  # our checkpoints are weights-only loadable
    return ck


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    a = FR.train_video(dict(TINY, out=str(tmp_path / "a")), progress=False)
    assert a["steps"] == 4 and a["done"]
    FR.train_video(dict(TINY, out=str(tmp_path / "b"), stop_after=2), progress=False)
    mid = _state(tmp_path / "b" / "checkpoint.pt")
    assert mid["step"] == 2
    FR.train_video(dict(TINY, out=str(tmp_path / "b")), resume=True, progress=False)
    ca, cb = _state(tmp_path / "a" / "checkpoint.pt"), _state(tmp_path / "b" / "checkpoint.pt")
    assert cb["step"] == 4 and ca["losses"] == cb["losses"]
    for key in ("model", "ema"):
        for n, t in ca[key].items():
            assert torch.equal(t, cb[key][n]), (key, n)
    sa, sb = ca["optimizer"]["state"], cb["optimizer"]["state"]
    assert all(torch.equal(sa[i]["exp_avg"], sb[i]["exp_avg"]) for i in sa)
    # training changed the weights
    assert any(not torch.equal(t, mid["model"][n]) for n, t in ca["model"].items())
    # a resume with another config is refused, naming the key
    with pytest.raises(ValueError, match="lr"):
        FR.train_video(dict(TINY, out=str(tmp_path / "b"), lr=0.5, steps=6), resume=True, progress=False)


def test_train_config_errors_before_work(tmp_path):
    with pytest.raises(ValueError, match="t_sampling"):
        FR.train_video(dict(TINY, out=str(tmp_path), t_sampling="cosine"), progress=False)
    assert main(["train", "video", "--out", str(tmp_path / "x"), "--data", str(tmp_path / "missing")]) == 2


class _ExactVelocity(torch.nn.Module):
    """The exact rectified-flow velocity for a single data point x0: v(x, t) = (x - x0) / t."""

    def __init__(self, x0):
        super().__init__()
        self.x0 = x0

    def forward(self, x, t, y=None):
        return (x - self.x0) / t.view(-1, 1, 1, 1, 1)


@pytest.mark.parametrize("method", ["euler", "heun"])
def test_samplers_integrate_the_flow(method):
    x0 = torch.randn(1, 3, 2, 4, 4)
    out = FR.sample(_ExactVelocity(x0), torch.randn(2, 3, 2, 4, 4), steps=3, method=method)
    torch.testing.assert_close(out, x0.expand_as(out), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="sampler"):
        FR.sample(_ExactVelocity(x0), torch.randn(1, 3, 2, 4, 4), method="ddim")


def test_flow_loss_is_zero_for_the_exact_velocity():
    x0 = torch.randn(1, 3, 2, 4, 4)
    noise = torch.randn(1, 3, 2, 4, 4)
    t = torch.tensor([0.3])
    exact = _ExactVelocity(x0)
    assert FR.flow_loss(exact, x0, t, noise).item() < 1e-10


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    FR.train_video(dict(TINY, out=str(out), steps=2), progress=False)
    return out / "checkpoint.pt"


def test_eval_frames_end_to_end(tiny_ckpt, tmp_path):
    out = tmp_path / "eval"
    rc = main(["eval", "frames", "--checkpoint", str(tiny_ckpt), "--out", str(out), "--scales", "1,2",
               "--num-samples", "2", "--sample-steps", "2", "--riflex-k", "2", "--no-progress"])
    assert rc == 0 or rc is None
    res = json.loads((out / "results.json").read_text())
    rules = ["none", "pi", "ntk", "yarn", "riflex"]
    assert [(a["rule"], a["frames"]) for a in res["aggregate"]] == [(r, n) for r in rules for n in (4, 8)]
    assert len(res["per_video"]) == 5 * 2 * 2
    assert res["temporal_rope"]["default_k"] >= 1 and res["identified"] is not None and res["riflex_k_used"] == 2
    for name in ("table.md", "results.csv", "grid_8f.mp4", "grid_8f.gif"):
        assert (out / name).stat().st_size > 0, name
    for k in FR.PLOT_KEYS:
        assert (out / f"{k.replace('mean_', '')}.png").stat().st_size > 0
    table = (out / "table.md").read_text()
    assert table.count("| riflex |") == 2 and "slowdown_ratio" in table
    # the same noise for every rule: at the training length, every rule gives the same videos (s = 1 is a no-op)
    at_l = {a["rule"]: a["mean_motion"] for a in res["aggregate"] if a["frames"] == 4}
    assert len(set(at_l.values())) == 1
    # the grid has one row per rule: decode it back
    from vispos.data.video import read_video
    grid = read_video(out / "grid_8f.mp4")
    assert grid.shape[0] == 8


def test_eval_frames_bad_input(tiny_ckpt, tmp_path):
    with pytest.raises(ValueError, match="unknown temporal rule"):
        FR.eval_frames(dict(checkpoint=str(tiny_ckpt), out=str(tmp_path), rules=["none", "bogus"]))
    with pytest.raises(ValueError, match="whole number"):
        FR.eval_frames(dict(checkpoint=str(tiny_ckpt), out=str(tmp_path), scales=[1.3], num_samples=1))
    with pytest.raises(ValueError, match="exactly one"):
        FR.eval_frames(dict(out=str(tmp_path)))
    assert not (tmp_path / "results.json").exists()


def test_videos_dir_mode_scores_files_and_identifies_k(tmp_path):
    from vispos.data.video import SyntheticVideos, to_uint8, write_video

    ds = SyntheticVideos(2, 6, size=(16, 16), num_objects=1, seed=3)
    vdir = tmp_path / "videos"
    vdir.mkdir()
    for i in range(2):
        head = to_uint8(ds.render(i, 6))
        looped = np.concatenate([head] * 4, axis=0)  # period 6: a loop at frame 6
        write_video(vdir / f"loop{i}.mp4", looped, fps=8)
    write_video(vdir / "straight.mp4", to_uint8(ds.render(0, 24)), fps=8)
    out = tmp_path / "scored"
    rc = main(["eval", "frames", "--videos", str(vdir), "--train-len", "6", "--out", str(out),
               "--rope-base", "10", "--rope-dim", "8"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    by = {r["file"]: r for r in res["per_video"]}
    assert set(by) == {"loop0.mp4", "loop1.mp4", "straight.mp4"}
    assert by["loop0.mp4"]["repetition_frame"] == 6 and by["loop1.mp4"]["repetition_frame"] == 6
    ident = res["identified"]
    assert ident["N"] == 6.0
    from vispos.freqs import identify_k
    assert (ident["k"], ident["N_k"]) == identify_k(10.0, 8, 6.0)
    table = (out / "table.md").read_text()
    assert table.count("| loop0.mp4 |") == 1 and table.count("| loop1.mp4 |") == 1
    # the per-video plot, as the generated-video mode writes its plots
    assert res["files"]["plots"] == ["videos.png"]
    assert (out / "videos.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # no model is needed, but the training length is
    assert main(["eval", "frames", "--videos", str(vdir), "--out", str(tmp_path / "x")]) == 2


def test_demo_presets_match_the_yaml_configs():
    for scale in ("cpu", "gpu"):
        data = yaml.safe_load((ROOT / "configs" / "video" / f"demo_{scale}.yaml").read_text())
        assert data == FR.DEMO_PRESETS[scale], scale
        tr, ev = FR.demo_configs(data, Path("/tmp/unused"))
        FR.check_train_config(tr)
    train = yaml.safe_load((ROOT / "configs" / "video" / "train_example.yaml").read_text())
    assert set(train) <= set(FR.TRAIN_DEFAULTS)
    FR.check_train_config(dict(FR.TRAIN_DEFAULTS, **train))


def test_videos_dir_mode_without_matplotlib_skips_the_plot_with_a_hint(tmp_path, monkeypatch, caplog):
    import logging
    import sys

    from vispos.data.video import SyntheticVideos, to_uint8, write_video

    vdir = tmp_path / "videos"
    vdir.mkdir()
    write_video(vdir / "a.mp4", to_uint8(SyntheticVideos(1, 8, size=(16, 16), num_objects=1, seed=0).render(0, 8)),
                fps=8)
    for mod in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    out = tmp_path / "scored"
    with caplog.at_level(logging.WARNING):
        assert main(["eval", "frames", "--videos", str(vdir), "--train-len", "4", "--out", str(out),
                     "--no-progress"]) == 0
    hints = [r.getMessage() for r in caplog.records if "matplotlib is not installed" in r.getMessage()]
    assert len(hints) == 1 and "videos.png" in hints[0] and "pip install 'vispos[plots]'" in hints[0]
    res = json.loads((out / "results.json").read_text())
    assert res["files"]["plots"] == [] and not (out / "videos.png").exists() and (out / "table.md").is_file()
