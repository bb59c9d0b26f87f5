"""The second-release families run in `vispos eval resolution` and `vispos train video` by registry name alone."""
import json

import pytest

from vispos.cli import main

NEW = ["alibi", "comrope", "lie_rope"]


@pytest.mark.parametrize("pe", NEW)
def test_eval_resolution_tiny(pe, tmp_path, capsys):
    rc = main(["eval", "resolution", "--pe", pe, "--model-kwargs", "{patch_size: 8, embed_dim: 32, depth: 1, "
               "num_heads: 2}", "--sizes", "16,32", "--train-size", "16", "--eval-samples", "9", "--task", "absolute",
               "--out", str(tmp_path / "r")])
    assert rc == 0 and f"| {pe} |" in capsys.readouterr().out


@pytest.mark.parametrize("pe", NEW)
def test_train_video_tiny(pe, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("pe_kwargs: {}\n")
    out = tmp_path / "v"
    rc = main(["train", "video", "--config", str(cfg), "--out", str(out), "--pe", pe, "--num-videos", "4",
               "--frames", "4", "--size", "8", "--dim", "32", "--depth", "2", "--num-heads", "2", "--steps", "2",
               "--batch-size", "2", "--no-progress"])
    assert rc in (0, None)
    assert (out / "checkpoint.pt").is_file() and json.loads((out / "train.json").read_text())
