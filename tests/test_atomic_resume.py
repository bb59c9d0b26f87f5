"""Nothing lost (issue 9): atomic writes survive a crash mid-write; a training killed mid-way resumes with
``--resume`` to the same result as an uninterrupted run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from vispos.utils import io as vio

REPO = Path(__file__).resolve().parents[1]


def _leftovers(folder: Path):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp") or p.name.startswith("."))


class Boom(RuntimeError):
    pass


@pytest.mark.parametrize("where", ["write", "fsync", "replace"])
@pytest.mark.parametrize(
    "writer",
    [
        lambda p: vio.atomic_write_text(p, "new content\n" * 1000),
        lambda p: vio.atomic_write_json(p, {"new": list(range(1000))}),
        lambda p: vio.atomic_write_csv(p, [{"a": i, "b": -i} for i in range(1000)]),
        lambda p: vio.atomic_torch_save({"w": torch.arange(1000)}, p),
    ],
    ids=["text", "json", "csv", "torch"],
)
def test_crash_mid_write_keeps_old_file_and_no_temp(tmp_path, monkeypatch, writer, where):
    target = tmp_path / "result.out"
    target.write_bytes(b"old complete file\n")
    if where == "write":
        real_fdopen = os.fdopen

        class HalfWriter:
            """A file whose write lands half of the bytes in the temp file, then fails (disk full, crash)."""

            def __init__(self, f):
                self.f = f

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.f.close()
                return False

            def write(self, data):
                self.f.write(data[: len(data) // 2])
                self.f.flush()
                raise Boom("disk gone mid-write")

            def __getattr__(self, name):
                return getattr(self.f, name)

        monkeypatch.setattr(vio.os, "fdopen", lambda fd, mode="r", *a, **k: HalfWriter(real_fdopen(fd, mode, *a, **k)))
    elif where == "fsync":
        monkeypatch.setattr(vio.os, "fsync", lambda fd: (_ for _ in ()).throw(Boom("fsync failed")))
    else:
        monkeypatch.setattr(vio.os, "replace", lambda a, b: (_ for _ in ()).throw(Boom("rename failed")))
    with pytest.raises(Boom):
        writer(target)
    assert target.read_bytes() == b"old complete file\n", "the old file was damaged by a failed write"
    assert _leftovers(tmp_path) == [], f"temp files left behind: {_leftovers(tmp_path)}"


def test_crash_on_keyboard_interrupt_also_cleans_up(tmp_path, monkeypatch):
    target = tmp_path / "r.json"
    vio.atomic_write_json(target, {"v": 1})

    def interrupt(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(vio.os, "fsync", interrupt)
    with pytest.raises(KeyboardInterrupt):
        vio.atomic_write_json(target, {"v": 2})
    assert json.loads(target.read_text()) == {"v": 1}
    assert _leftovers(tmp_path) == []


def test_successful_write_replaces_and_leaves_nothing(tmp_path):
    target = tmp_path / "r.json"
    vio.atomic_write_json(target, {"v": 1})
    vio.atomic_write_json(target, {"v": 2})
    assert json.loads(target.read_text()) == {"v": 2}
    assert _leftovers(tmp_path) == []


# ---- kill a training mid-way and resume it -----------------------------------------------------------------------
TINY = {"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2, "mlp_ratio": 2.0}
STEPS = 40


def _config(out: Path) -> dict:
    return dict(model_kwargs=TINY, pe="rope_mixed", task="quadrant", sizes="16,24", train_size=16, steps=STEPS,
                batch_size=8, eval_batch_size=16, eval_samples=24, ckpt_every=2, warmup_steps=2, lr=3e-3,
                seeds=[0], threads=1, device="cpu", out=str(out))


def _argv(cfg_path: Path, resume: bool):
    return ["train", "resolution", "--config", str(cfg_path)] + (["--resume"] if resume else [])


def _load_rows(out: Path):
    rows = json.loads((out / "results.json").read_text())["rows"]
    return [{k: r[k] for k in ("variant", "seed", "size", "n", "correct1", "top1", "correct5", "top5")} for r in rows]


def _kill_when(proc, ready, what: str) -> None:
    """Wait until ``ready()`` (the run is mid-way), then SIGKILL ``proc``; fail if it ended first."""
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None and not ready():
            time.sleep(0.01)
        if proc.poll() is not None:
            pytest.fail(f"the {what} ended (rc {proc.returncode}) before it could be killed: "
                        f"{proc.stderr.read().decode()[-2000:]}")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_killed_training_resumes_to_the_same_result(tmp_path):
    from vispos.cli import COMMANDS, main

    if ("train", "resolution") not in COMMANDS:
        pytest.skip("`vispos train resolution` does not exist")
    # 1. the uninterrupted reference run (in process)
    ref_out = tmp_path / "ref"
    ref_cfg = tmp_path / "ref.yaml"
    ref_cfg.write_text(yaml.safe_dump(_config(ref_out)))
    assert main(_argv(ref_cfg, resume=False)) == 0
    # 2. the same run in a subprocess, killed with SIGKILL once the first checkpoint exists
    out = tmp_path / "run"
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(_config(out)))
    ckpt_dir = out / "checkpoints"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "vispos.cli"] + _argv(cfg, resume=False), cwd=str(tmp_path),
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _kill_when(proc, lambda: ckpt_dir.is_dir() and any(p.suffix == ".pt" for p in ckpt_dir.iterdir()), "training")
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "results.json").exists(), "the killed run must not have finished"
    ckpts = [p for p in ckpt_dir.iterdir() if p.suffix == ".pt"]
    assert len(ckpts) == 1 and not [p for p in ckpt_dir.iterdir() if p.suffix == ".tmp"]
    state = torch.load(str(ckpts[0]), map_location="cpu", weights_only=True)  # a complete, loadable file
    assert 0 < state["step"] < STEPS, f"killed at step {state['step']} of {STEPS}: not mid-way"
    # 3. resume to the end; it reproduces the uninterrupted run exactly
    assert main(_argv(cfg, resume=True)) == 0
    assert _load_rows(out) == _load_rows(ref_out)
    a = torch.load(str(ckpts[0]), map_location="cpu", weights_only=True)
    b = torch.load(str(ref_out / "checkpoints" / ckpts[0].name), map_location="cpu", weights_only=True)
    assert a["step"] == b["step"] == STEPS
    for k in b["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), f"parameter {k} differs after resume"


def test_resume_refuses_a_checkpoint_with_other_settings(tmp_path, capsys):
    from vispos.cli import main

    out = tmp_path / "run"
    c = _config(out)
    c.update(steps=2, ckpt_every=1, sizes="16")
    p = tmp_path / "a.yaml"
    p.write_text(yaml.safe_dump(c))
    assert main(_argv(p, resume=False)) == 0
    c.update(lr=1e-2)
    p.write_text(yaml.safe_dump(c))
    assert main(_argv(p, resume=True)) == 2
    err = capsys.readouterr().err
    assert "cannot resume" in err and "lr" in err


def test_results_get_the_normal_file_mode(tmp_path):
    """mkstemp files are 0600; published results must be readable like any file written with open()."""
    import os

    from vispos.utils.io import atomic_path, atomic_write_json

    umask = os.umask(0o022)
    os.umask(umask)
    atomic_write_json(tmp_path / "r.json", {"a": 1})
    with atomic_path(tmp_path / "v.bin") as tmp:
        open(tmp, "wb").write(b"x")
    for name in ("r.json", "v.bin"):
        assert os.stat(tmp_path / name).st_mode & 0o777 == 0o666 & ~umask


def test_killed_evaluation_resumes_to_the_same_result(tmp_path):
    """`vispos eval resolution` killed (SIGKILL, subprocess) after its first finished cell continues with --resume
    to the result of an uninterrupted run."""
    from vispos.cli import main
    from vispos.eval import resolution as R

    ckpt = tmp_path / "m.pt"
    v = R.parse_variants(R.load_config(None, model_kwargs=TINY, pe="rope_mixed", train_size=16))[0]
    torch.manual_seed(0)
    torch.save(R.build_model(v, 4, (16, 16)).state_dict(), ckpt)
    sizes = "16,24,32,40,48,56,64,72,80,88,96"

    def cfg_file(out: Path) -> Path:
        f = tmp_path / f"{out.name}.yaml"
        f.write_text(yaml.safe_dump(dict(model_kwargs=TINY, pe="rope_mixed", checkpoint=str(ckpt), task="quadrant",
                                         sizes=sizes, train_size=16, eval_samples=400, eval_batch_size=50,
                                         threads=1, device="cpu", out=str(out))))
        return f

    ref_out, out = tmp_path / "ref", tmp_path / "run"
    assert main(["eval", "resolution", "--config", str(cfg_file(ref_out)), "--no-progress"]) == 0
    cfg = cfg_file(out)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "vispos.cli", "eval", "resolution", "--config", str(cfg),
                             "--no-progress"], cwd=str(tmp_path), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    partial = out / "partial_rows.json"
    _kill_when(proc, partial.is_file, "evaluation")
    assert not (out / "results.json").exists(), "the killed run must not have finished"
    done = len(json.loads(partial.read_text())["rows"])
    assert 0 < done < len(sizes.split(","))
    assert main(["eval", "resolution", "--config", str(cfg), "--resume", "--no-progress"]) == 0
    assert _load_rows(out) == _load_rows(ref_out)
