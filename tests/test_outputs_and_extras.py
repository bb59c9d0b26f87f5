"""Output folders that protect results; missing extras turned into hints; plots that order sizes."""
import json
import logging
import sys

import numpy as np
import pytest

from vispos.cli import main
from vispos.eval.plots import size_axis
from vispos.utils.outdir import check_out, results_folder, timestamped_out

TINY = '{"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2, "mlp_ratio": 2.0}'


def _train_argv(out, pe="ape", steps=2, extra=()):
    return ["train", "resolution", "--task", "absolute", "--model-kwargs", TINY, "--pe", pe, "--train-size", "16",
            "--sizes", "16,24", "--steps", str(steps), "--batch-size", "8", "--eval-samples", "16", "--threads", "1",
            "--out", str(out), "--no-progress", *extra]


def test_timestamped_folders_never_collide(tmp_path):
    a = timestamped_out(tmp_path, "vit", "32", now=0)
    a.mkdir(parents=True)
    b = timestamped_out(tmp_path, "vit", "32", now=0)
    assert a != b and b.name == a.name + "-1" and a.name.endswith("-vit-32")
    assert timestamped_out(tmp_path, "a/b c").name.endswith("-a_b_c")


def test_check_out_policy(tmp_path):
    assert check_out(tmp_path / "new") == []
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / ".vispos.lock").write_text("")  # hidden entries do not count
    assert check_out(tmp_path / "used") == []
    (tmp_path / "used" / "results.json").write_text("{}")
    (tmp_path / "used" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="already holds notes.txt, results.json: pass --overwrite"):
        check_out(tmp_path / "used")
    assert check_out(tmp_path / "used", resume=True) == []
    assert check_out(tmp_path / "used", overwrite=True, owned=["results.json", "*.png"]) == ["results.json"]
    with pytest.raises(ValueError, match="exclude each other"):
        check_out(tmp_path / "used", resume=True, overwrite=True)
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="not a folder"):
        check_out(tmp_path / "file")


def test_results_folder_removes_what_a_failed_run_created(tmp_path):
    target = tmp_path / "a" / "b"
    with pytest.raises(RuntimeError):
        with results_folder(target):
            raise RuntimeError("boom")
    assert not (tmp_path / "a").exists()
    with pytest.raises(RuntimeError):
        with results_folder(target) as out:
            (out / "results.json").write_text("{}")
            raise RuntimeError("boom")
    assert (target / "results.json").is_file()  # something was written: kept


def test_second_train_run_into_a_used_folder_does_not_destroy_the_first(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_train_argv(out, "ape")) == 0
    first = {p.name: p.read_bytes() for p in [out / "results.json", out / "checkpoints" / "ape_seed0.pt"]}
    assert (out / "summary.csv").is_file()
    capsys.readouterr()
    assert main(_train_argv(out, "rope_axial")) == 2  # refused, one line
    err = capsys.readouterr().err
    assert "already holds" in err and "--overwrite" in err and "--resume" in err
    assert {p.name: p.read_bytes() for p in [out / "results.json", out / "checkpoints" / "ape_seed0.pt"]} == first
    # --overwrite replaces the run: no stale checkpoint of the other variant next to the new results
    assert main(_train_argv(out, "rope_axial", extra=["--overwrite"])) == 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["rope_axial_seed0.pt"]
    assert [v["name"] for v in json.loads((out / "results.json").read_text())["variants"]] == ["rope_axial"]
    # evaluation without --out: a fresh timestamped folder, never the training folder
    import os

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert main(["eval", "resolution", "--checkpoint", str(out), "--sizes", "16", "--eval-samples", "8",
                     "--no-progress"]) == 0
    finally:
        os.chdir(cwd)
    runs = list((tmp_path / "results" / "eval-resolution").iterdir())
    assert len(runs) == 1 and (runs[0] / "results.json").is_file()
    res = json.loads((runs[0] / "results.json").read_text())
    # everything the checkpoint stores was read from it: variant, model kwargs, training size
    assert res["train_size"] == "16" and res["rows"][0]["variant"] == "rope_axial" and res["rows"][0]["seed"] == 0


def test_failed_run_leaves_no_empty_folder(tmp_path, capsys):
    out = tmp_path / "deep" / "run"
    assert main(_train_argv(out, "ape", extra=["--pe-kwargs", "{bogus: 1}"])) == 2
    assert not (tmp_path / "deep").exists()
    assert main(["train", "video", "--dim", "30", "--num-heads", "2", "--out", str(tmp_path / "v"),
                 "--no-progress"]) == 2
    assert "multiple of 8" in capsys.readouterr().err and not (tmp_path / "v").exists()


def test_video_rotary_split_follows_the_head_dim():
    from vispos.eval.frames.config import TRAIN_DEFAULTS
    from vispos.eval.frames.models import build_model

    m = build_model(dict(TRAIN_DEFAULTS, dim=32, num_heads=2))  # head dim 16: 8 / 4 / 4
    assert tuple(m.rope_modules()[0].dims) == (8, 4, 4)
    m = build_model(dict(TRAIN_DEFAULTS))  # the demo's head dim 32: 16 / 8 / 8 as before
    assert tuple(m.rope_modules()[0].dims) == (16, 8, 8)
    m = build_model(dict(TRAIN_DEFAULTS, dim=32, num_heads=2, pe_kwargs={"dims": [4, 6, 6], "base": 100.0}))
    assert tuple(m.rope_modules()[0].dims) == (4, 6, 6)


def test_size_axis_orders_non_square_sizes():
    order, xs, ticks, logx = size_axis(["64x32", "16", "32x64", "48", "32"])
    assert ticks == ["16", "32", "32x64", "64x32", "48"] and not logx
    assert xs == [0.0, 1.0, 2.0, 3.0, 4.0]  # distinct, increasing positions: no zig-zag, no shared x
    order, xs, ticks, logx = size_axis(["48", "16", "32"])
    assert ticks == ["16", "32", "48"] and xs == [16.0, 32.0, 48.0] and logx


def test_no_matplotlib_finishes_with_a_hint(tmp_path, monkeypatch, caplog):
    for mod in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING):
        assert main(_train_argv(out)) == 0
        assert main(["demo", "rope", "--out", str(tmp_path / "rope")]) == 0
    hints = [r.getMessage() for r in caplog.records if "matplotlib is not installed" in r.getMessage()]
    assert hints and all("pip install 'vispos[plots]'" in h for h in hints)
    assert (out / "results.json").is_file() and (out / "table.md").is_file()
    assert not (out / "accuracy_vs_resolution.png").exists() and not (out / "partial_rows.json").exists()
    assert (tmp_path / "rope" / "table.md").is_file() and not (tmp_path / "rope" / "rope_kernel.png").exists()


def test_no_decord_reads_with_pyav_and_neither_gives_the_install_line(tmp_path, monkeypatch, caplog):
    from vispos.data import video as V

    frames = (np.random.default_rng(0).random((6, 16, 16, 3)) * 255).astype(np.uint8)
    V.write_video(tmp_path / "v.mp4", frames, fps=8)
    monkeypatch.setitem(sys.modules, "decord", None)
    monkeypatch.setattr(V, "_warned_no_decord", [])
    got = V.read_video(tmp_path / "v.mp4")  # whole-file reads are PyAV's anyway (sequential, bounded memory)
    assert got.shape == (6, 16, 16, 3)
    with caplog.at_level(logging.WARNING):  # clip reads (VideoFolder) fall back from decord to PyAV, with a hint
        clip = V._decode(V._open_reader(tmp_path / "v.mp4"), [1, 2], tmp_path / "v.mp4")
    assert clip.shape == (2, 16, 16, 3)
    assert any("decord is not installed: reading videos with PyAV" in r.getMessage() for r in caplog.records)
    # the whole --videos evaluation finishes
    out = tmp_path / "eval"
    assert main(["eval", "frames", "--videos", str(tmp_path), "--train-len", "4", "--out", str(out),
                 "--no-progress"]) == 0
    assert json.loads((out / "results.json").read_text())["per_video"][0]["num_frames"] == 6
    monkeypatch.setitem(sys.modules, "av", None)
    from vispos.utils.extras import MissingExtraError

    with pytest.raises(MissingExtraError, match=r"pip install 'vispos\[video\]'"):
        V.read_video(tmp_path / "v.mp4")


def test_video_grid_has_a_frame_counter_that_marks_the_extrapolated_frames():
    from vispos.eval.frames.results import frame_counter

    grid = np.zeros((5, 40, 64, 3), np.uint8)
    out = frame_counter(grid, train_len=3)
    assert out.shape == (5, 52, 64, 3) and np.array_equal(out[:, 12:], grid)
    assert out[0, :12].max() > 200  # white text
    assert out[0, :12, :, 0].min() == 0 and out[3, :12, :, 0].min() >= 150  # red strip past the training length
    assert not np.array_equal(out[0, :12], out[1, :12])  # the counter changes every frame


def test_progress_bar_off_a_terminal_prints_a_few_lines_not_one_per_update():
    import io

    from vispos.utils.progress import progress_bar

    buf = io.StringIO()  # not a terminal
    bar = progress_bar(total=2000, desc="train", file=buf)
    for _ in range(2000):
        bar.update(1)
        bar.set_postfix(loss="1.0", refresh=False)
    bar.close()
    assert buf.getvalue().count("\r") <= 3 and len(buf.getvalue()) < 1000, len(buf.getvalue())
    silent = io.StringIO()
    bar = progress_bar(total=10, desc="x", enabled=False, file=silent)
    bar.update(10)
    bar.close()
    assert silent.getvalue() == ""


def test_default_sizes_fit_the_default_models_patch():
    from vispos.eval import resolution as R

    cfg = R.load_config(None, pe="ape")  # `vispos eval resolution --pe ape`: no sizes, no train size
    sizes = R.resolve_sizes(cfg, num_classes=10)["sizes"]
    assert sizes == [[96, 96], [224, 224], [384, 384], [512, 512], [672, 672]]  # 0.43..3 x 224, patch 16
    cfg = R.load_config(None, pe="ape", train_size=32, model_kwargs={"patch_size": 8})
    assert R.resolve_sizes(cfg, num_classes=10)["sizes"] == [[16, 16], [32, 32], [56, 56], [72, 72], [96, 96]]
