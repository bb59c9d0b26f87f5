"""Checkpoints are loaded weights-only everywhere: a crafted pickle is refused and runs nothing (issue 13, item 1);
empty / truncated checkpoints are one-line errors; ``--resume`` without a checkpoint starts fresh in both trainings
(item 7); ``results.json``, the "finished" marker, is written last (item 7)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from vispos.cli import main
from vispos.utils.io import load_checkpoint_file

TINY_VIDEO = dict(num_videos=4, frames=4, size=8, num_objects=1, patch=[1, 4, 4], dim=32, depth=1, num_heads=2,
                  pe_kwargs={"dims": [8, 4, 4], "base": 10.0}, batch_size=2, steps=2, warmup=1, ckpt_every=1, ema=0.0)
TINY_VIT = "{patch_size: 8, embed_dim: 32, depth: 1, num_heads: 2, mlp_ratio: 2.0}"


class _Evil:
    """Unpickling this calls os.mkdir(marker): the stand-in for arbitrary code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _crafted(tmp_path) -> tuple:
    marker = tmp_path / "PWNED"
    p = tmp_path / "evil.pt"
    torch.save({"format": "vispos.video_dit/1", "model": {}, "payload": _Evil(marker)}, p)
    return p, marker


def test_negative_control_an_unsafe_load_would_run_the_payload(tmp_path):
    p, marker = _crafted(tmp_path)
    torch.load(p, weights_only=False)  # what the old code did
    assert marker.is_dir()


def test_crafted_pickle_is_refused_and_runs_nothing(tmp_path):
    p, marker = _crafted(tmp_path)
    with pytest.raises(ValueError, match=r"evil.pt' holds objects other than tensors .*weights_only=True"):
        load_checkpoint_file(p)
    assert not marker.exists()


def test_every_command_refuses_the_crafted_checkpoint(tmp_path, capsys):
    p, marker = _crafted(tmp_path)
    runs = {
        "eval frames": ["eval", "frames", "--checkpoint", str(p), "--out", str(tmp_path / "ef"), "--device", "cpu"],
        "eval resolution": ["eval", "resolution", "--model-kwargs", TINY_VIT, "--pe", "ape", "--checkpoint", str(p),
                            "--sizes", "16", "--train-size", "16", "--eval-samples", "4", "--device", "cpu",
                            "--out", str(tmp_path / "er")],
    }
    out = tmp_path / "tv"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(p.read_bytes())
    cfg = tmp_path / "tv.yaml"
    import yaml

    cfg.write_text(yaml.safe_dump(dict(TINY_VIDEO, out=str(out), device="cpu")))
    runs["train video --resume"] = ["train", "video", "--config", str(cfg), "--resume", "--no-progress"]
    for what, argv in runs.items():
        rc = main(argv)
        err = capsys.readouterr().err
        assert rc == 2, (what, err)
        assert err.startswith("vispos: error: ") and "holds objects other than tensors" in err, (what, err)
        assert not marker.exists(), f"{what} ran the payload"


@pytest.mark.parametrize("content, pattern", [(b"", r"is empty \(0 bytes\)"),
                                              (b"PK\x03\x04 half a zip", r"is truncated or not a torch checkpoint")])
def test_empty_and_truncated_checkpoints_are_named(tmp_path, capsys, content, pattern):
    import yaml

    out = tmp_path / "tv"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(content)
    cfg = tmp_path / "tv.yaml"
    cfg.write_text(yaml.safe_dump(dict(TINY_VIDEO, out=str(out), device="cpu")))
    assert main(["train", "video", "--config", str(cfg), "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vispos: error: --resume: checkpoint ") and "checkpoint.pt" in err, err
    import re

    assert re.search(pattern, err), err


def test_resume_without_a_checkpoint_starts_fresh_in_both_trainings(tmp_path, caplog):
    from vispos.eval import frames as FR

    with caplog.at_level("WARNING"):
        s = FR.train_video(dict(TINY_VIDEO, out=str(tmp_path / "v")), resume=True, progress=False)
    assert s["done"] and s["steps"] == 2 and "starting a fresh run" in caplog.text
    assert main(["train", "resolution", "--model-kwargs", TINY_VIT, "--pe", "ape", "--sizes", "16", "--train-size",
                 "16", "--steps", "1", "--batch-size", "4", "--eval-samples", "4", "--device", "cpu", "--out",
                 str(tmp_path / "r"), "--resume", "--no-progress"]) == 0
    assert (tmp_path / "r" / "results.json").is_file()


def test_results_json_is_written_last(tmp_path, monkeypatch):
    from vispos.utils import io as vio

    order = []
    real = vio.atomic_path

    def spy(path, *a, **k):
        order.append(Path(path).name)
        return real(path, *a, **k)

    monkeypatch.setattr(vio, "atomic_path", spy)
    assert main(["train", "resolution", "--model-kwargs", TINY_VIT, "--pe", "ape", "--sizes", "16", "--train-size",
                 "16", "--steps", "1", "--batch-size", "4", "--eval-samples", "4", "--device", "cpu", "--out",
                 str(tmp_path / "r"), "--no-progress"]) == 0
    written = [n for n in order if not n.endswith(".pt")]
    assert written[-1] == "results.json", written
    assert {"table.md", "results.csv", "accuracy_vs_resolution.png"} <= set(written), written
    assert json.loads((tmp_path / "r" / "results.json").read_text())["rows"]


def test_replacing_the_checkpoint_invalidates_the_resume(tmp_path, capsys, monkeypatch):
    """eval resolution --resume keeps finished cells only while the checkpoint's content is the same (item 3)."""
    from vispos.eval import resolution as R
    from vispos.eval.resolution import evaluation

    kw = {"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2, "mlp_ratio": 2.0}
    v = R.parse_variants(R.load_config(None, model_kwargs=kw, pe="ape", train_size=16))[0]
    ckpt = tmp_path / "m.pt"
    torch.manual_seed(0)
    torch.save(R.build_model(v, 4, (16, 16)).state_dict(), ckpt)
    out = tmp_path / "run"
    argv = ["eval", "resolution", "--model-kwargs", TINY_VIT, "--pe", "ape", "--checkpoint", str(ckpt), "--task",
            "quadrant", "--sizes", "16,24", "--train-size", "16", "--eval-samples", "8", "--device", "cpu",
            "--out", str(out), "--no-progress"]
    real = evaluation.evaluate

    def interrupted_run(resume):
        calls = []

        def second_cell_interrupts(*a, **k):
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return real(*a, **k)

        monkeypatch.setattr(evaluation, "evaluate", second_cell_interrupts)
        rc = main(argv + (["--resume"] if resume else []))
        monkeypatch.setattr(evaluation, "evaluate", real)
        return rc

    assert interrupted_run(False) == 130  # one finished cell kept in partial_rows.json
    assert len(json.loads((out / "partial_rows.json").read_text())["rows"]) == 1
    capsys.readouterr()
    # the same checkpoint: the resume is accepted and finishes
    assert main(argv + ["--resume"]) == 0, capsys.readouterr().err
    assert (out / "results.json").is_file()
    (out / "results.json").unlink()
    assert interrupted_run(True) == 130  # a new interrupted evaluation of the same model
    assert (out / "partial_rows.json").is_file()
    # another model at the same path, with the same size and time stamp: refused, naming what changed
    st = os.stat(ckpt)
    torch.manual_seed(1)
    torch.save(R.build_model(v, 4, (16, 16)).state_dict(), ckpt)
    os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(ckpt).st_size == st.st_size and os.stat(ckpt).st_mtime_ns == st.st_mtime_ns
    capsys.readouterr()
    assert main(argv + ["--resume"]) == 2
    err = capsys.readouterr().err
    assert "cannot resume from" in err and "checkpoint_content" in err, err
    assert not (out / "results.json").exists()
