import json
import subprocess
import sys

import pytest
import torch

import vispos
from vispos.cli import main
from vispos.eval.rope_explorer import explore, kernel


def test_list_pes_rows_and_unknown_name():
    infos = {i.name: i for i in vispos.list_pes()}
    for name in ("rope_axial", "rope_mixed", "vope"):
        assert name in infos
        assert infos[name].hooks and infos[name].description
        assert 2 in infos[name].ndims and 3 in infos[name].ndims
    with pytest.raises(ValueError, match="unknown PE 'rope_axis'.*rope_axial"):
        vispos.build_pe("rope_axis", dim=64, num_heads=4)
    with pytest.raises(TypeError, match="bogus"):
        vispos.build_pe("rope_axial", dim=64, num_heads=4, grid=(4, 4), bogus=1)


def test_build_pe_geometry_and_combination_errors():
    pe = vispos.build_pe("rope_axial", dim=64, num_heads=4, grid=(2, 3, 4))
    assert pe.head_dim == 16 and len(pe.dims) == 3 and pe.train_shape == (2, 3, 4)
    with pytest.raises(ValueError, match="incompatible PE combination"):
        vispos.build_pe(["rope_axial", "vope"], dim=64, num_heads=4, depth=2, grid=(4, 4))
    with pytest.raises(ValueError, match="twice"):
        vispos.build_pe(["rope_axial", "rope_axial"], dim=64, num_heads=4, grid=(4, 4))


def test_cli_list_json(capsys):
    assert main(["list", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"rope_axial", "rope_mixed", "vope"} <= {r["name"] for r in data["pes"]}
    assert data["rules"] == list(vispos.RULES)


def test_cli_bad_value_is_clean_error(capsys, tmp_path):
    rc = main(["demo", "rope", "--out", str(tmp_path), "--train-len", "1"])
    assert rc == 2
    assert "train_len must be an int >= 2, got 1" in capsys.readouterr().err


def test_rope_explorer_kernel_and_rows(tmp_path):
    f = vispos.rope_freqs(16, 256.0)
    K = kernel(f, torch.arange(3, dtype=torch.float64))
    assert K[0] == 1.0 and K[1] < 1
    res = explore(256.0, 16, 33, 66)
    rows = {r["rule"]: r for r in res["rows"]}
    assert rows["none"]["changed"] == [] and rows["none"]["new_loops"] == [4]  # repetition at N_k = 50
    assert rows["riflex"]["changed"] == [4] and rows["riflex"]["new_loops"] == []
    assert rows["pi"]["top_ratio"] == pytest.approx(0.5) and rows["pi"]["new_loops"] == []
    # official YaRN keeps the finest band (ramp over band indices 0..3); the paper's ramp interpolates it
    assert rows["yarn"]["top_ratio"] == 1.0 and rows["yarn"]["changed"] == [2, 3, 4, 5, 6, 7, 8]
    assert rows["yarn (paper ramp)"]["top_ratio"] < 0.6


def test_vispos_demo_rope_writes_outputs(tmp_path):
    out = tmp_path / "rope"
    r = subprocess.run([sys.executable, "-m", "vispos.cli", "demo", "rope", "--out", str(out)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (out / "rope_kernel.png").stat().st_size > 1000
    table = (out / "table.md").read_text()
    assert table.count("\n") == 2 + len(vispos.RULES) + 1  # + the YaRN paper-ramp row
    from PIL import Image

    with Image.open(out / "rope_kernel.png") as im:
        assert im.size[0] > 100


def test_every_command_takes_config(tmp_path, capsys):
    """Commands without their own config handling get --config: YAML keys fill the flags not given (required ones
    included); flags override the file; unknown keys are a clean error."""
    cfg = tmp_path / "rope.yaml"
    cfg.write_text("base: 10000\ndim: 16\ntrain-len: 13\ntest_len: 26\n")
    assert main(["demo", "rope", "--config", str(cfg), "--out", str(tmp_path / "r"), "--test-len", "40"]) == 0
    res = json.loads((tmp_path / "r" / "results.json").read_text())
    assert (res["base"], res["dim"], res["train_len"], res["test_len"]) == (10000.0, 16, 13, 40)
    rf = tmp_path / "rf.yaml"
    rf.write_text("model_class: hunyuanvideo\nframes: 66\nN: 48\njson: true\n")
    capsys.readouterr()
    assert main(["riflex", "--config", str(rf)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["k"], out["N_k"]) == (4, 50)
    bad = tmp_path / "bad.yaml"
    bad.write_text("bogus: 1\n")
    assert main(["demo", "rope", "--config", str(bad), "--out", str(tmp_path / "x")]) == 2
    assert "unknown key(s) ['bogus']" in capsys.readouterr().err
