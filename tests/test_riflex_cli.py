"""`vispos riflex`: the RIFLEx table per host (no diffusers needed)."""
import json

import pytest

from vispos.cli import main
from vispos.integrations.diffusers.bands import latent_frames
from vispos.integrations.diffusers.report import riflex_table


def _json(capsys, *argv):
    assert main(["riflex", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_hunyuanvideo_anchor(capsys):
    rep = _json(capsys, "--model-class", "hunyuanvideo", "--frames", "66", "--N", "48")
    assert (rep["k"], rep["N_k"]) == (4, 50)
    assert (rep["base"], rep["dim"], rep["train_len"]) == (256.0, 16, 33.0)
    assert rep["adjusted_theta_k"] == pytest.approx(min(256 ** (-6 / 16), 0.9 * 2 * 3.141592653589793 / 66))
    same = _json(capsys, "--base", "256", "--dim", "16", "--N", "48", "--train-frames", "33", "--frames", "66")
    assert (same["k"], same["N_k"]) == (4, 50)


def test_default_rule_and_other_hosts(capsys):
    assert (_json(capsys, "--model-class", "hunyuanvideo", "--frames", "66")["k"]) == 4  # L = 33
    cog = _json(capsys, "--model-class", "cogvideox", "--frames", "26")
    assert (cog["k"], cog["N_k"]) == (2, 20)
    wan = _json(capsys, "--model-class", "wan", "--frames", "42", "--N", "51")
    assert wan["k"] == 6 and wan["N_k"] == 51 and not wan["applied"]  # L' = 42 <= N_k: RoPE left untouched
    c15 = _json(capsys, "--model-class", "cogvideox1.5", "--frames", "41")
    assert c15["p_t"] == 2 and c15["test_len"] == 21 and c15["train_len"] == 11  # ceil(F / 2) positions
    ltx = _json(capsys, "--model-class", "ltx", "--frames", "32")
    assert len(ltx["components"]) == 2048 // 6 and ltx["components"][0]["theta"] > ltx["components"][-1]["theta"]


def test_pixel_frames_and_table(capsys):
    rep = _json(capsys, "--model-class", "hunyuanvideo", "--pixel-frames", "257", "--N", "48")
    assert rep["test_len"] == 65 and rep["notes"] == ["257 video frames -> (257 - 1) / 4 + 1 = 65 latent frames"]
    assert main(["riflex", "--model-class", "hunyuanvideo", "--frames", "66", "--k", "4"]) == 0
    out = capsys.readouterr().out
    assert "k = 4 (given), N_k = 50" in out and "\n*    4 " in out
    assert len([ln for ln in out.splitlines() if ln[2:6].strip().isdigit()]) == 8


def test_bad_input(capsys):
    assert main(["riflex", "--model-class", "wan", "--pixel-frames", "80"]) == 2
    assert "4*m + 1" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--base, --dim and --train-frames"):
        riflex_table(None, frames=40)
    with pytest.raises(ValueError, match="out of range"):
        riflex_table("ltx", frames=40, k=400)
    assert latent_frames(129, 4) == 33
