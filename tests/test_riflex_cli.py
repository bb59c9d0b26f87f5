"""`vispos riflex`: the RIFLEx table per host (no diffusers needed)."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vispos.cli import main
from vispos.freqs import ScalingRule, apply_rule, rope_freqs
from vispos.integrations.diffusers.bands import latent_frames
from vispos.integrations.diffusers.report import WAN_COMMUNITY_RIFLEX, riflex_table


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
    with pytest.raises(ValueError, match="unknown RIFLEx mode 'fine'"):
        riflex_table("wan", frames=40, mode="fine")
    with pytest.raises(ValueError, match="RIFLEx option"):
        ScalingRule("pi", mode="finetune")
    with pytest.raises(ValueError, match="fine-tuned at"):
        apply_rule(rope_freqs(8, 1e4), ScalingRule("riflex", k=2, mode="finetune"), 1e4, 8)


def test_acts_from_video_frames_and_extension_guidance(capsys):
    wan = _json(capsys, "--model-class", "wan", "--pixel-frames", "161", "--k", "6")
    assert (wan["N_k"], wan["acts_from_latent_frames"], wan["acts_from_video_frames"]) == (51, 52, 205)
    assert not wan["applied"] and wan["extension"]["ratio"] == 41 / 21 and not wan["extension"]["beyond_guidance"]
    c15 = _json(capsys, "--model-class", "cogvideox1.5", "--frames", "41", "--N", "44")
    assert (c15["k"], c15["N_k"], c15["acts_from_video_frames"]) == (2, 20, 161)  # ceil(41 / 2) = 21 > 20
    far = _json(capsys, "--model-class", "hunyuanvideo", "--frames", "100")
    assert far["extension"]["beyond_guidance"]  # 100 / 33 > 2x, training-free
    assert not _json(capsys, "--model-class", "hunyuanvideo", "--frames", "100", "--k", "4", "--mode", "finetune",
                     "--train-frames", "66")["extension"]["beyond_guidance"]  # 100 / 66 < 3x
    assert main(["riflex", "--model-class", "wan", "--frames", "60", "--k", "6"]) == 0
    out = capsys.readouterr().out
    assert "acts from 205 video frames (52 latent)" in out and "about 2x training-free, 3x with fine-tuning" in out


def test_modes_finetune_and_unchecked(capsys):
    ft = _json(capsys, "--model-class", "hunyuanvideo", "--frames", "40", "--k", "4", "--mode", "finetune",
               "--train-frames", "66")  # official Hunyuan-RIFLEx fine-tuned: k = 4, N_k = 66
    assert ft["adjusted_theta_k"] == 0.9 * 2 * math.pi / 66 and ft["acts_from_video_frames"] is None
    # the community's Wan k = 6 without the check: theta_6 = 0.9 2pi / L' even at the training length (raised)
    un = _json(capsys, "--model-class", "wan", "--frames", "21", "--k", "6", "--mode", "unchecked")
    assert un["adjusted_theta_k"] == 0.9 * 2 * math.pi / 21 > un["theta_k"] and un["applied"]
    assert WAN_COMMUNITY_RIFLEX == {"name": "riflex", "k": 6, "mode": "unchecked"}
    assert main(["riflex", "--model-class", "wan", "--frames", "21", "--k", "6", "--mode", "unchecked"]) == 0
    assert "acts at every length" in capsys.readouterr().out


def test_compact_ltx_view_and_inner_dim(capsys):
    assert main(["riflex", "--model-class", "ltx", "--frames", "32"]) == 0
    out = capsys.readouterr().out
    rows = [ln for ln in out.splitlines() if ln[2:6].strip().isdigit()]
    assert len(rows) == 24 and any(ln.startswith("*") for ln in rows)
    assert "341 components" in out and "--all" in out
    assert main(["riflex", "--model-class", "ltx", "--frames", "32", "--all"]) == 0
    assert len([ln for ln in capsys.readouterr().out.splitlines() if ln[2:6].strip().isdigit()]) == 341
    assert main(["riflex", "--model-class", "ltx", "--frames", "32", "--dim", "64"]) == 0
    out = capsys.readouterr().out
    assert "inner dim 64 (10 bands per axis)" in out and "here base 10000, dim 64" in out
    assert "base 10000, inner dim 2048" not in out


def test_piped_to_head_exits_cleanly():
    """`vispos riflex ... | head -1`: no BrokenPipeError traceback (the output exceeds a pipe's buffer)."""
    cmd = [sys.executable, "-c", "import sys; from vispos.cli import main; sys.exit(main(sys.argv[1:]))", "riflex",
           "--model-class", "ltx", "--frames", "32", "--dim", "30000", "--json"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout.readline().strip() == b"{"
    proc.stdout.close()  # what `head` does after its line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err
