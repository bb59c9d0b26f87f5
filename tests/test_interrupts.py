"""What a kill, a second run or a full disk leaves (issue 13, item 7).

* a second run into a folder another live run holds is refused (exit 2, ``vispos: error``, nothing written);
* SIGTERM and Ctrl-C (SIGINT) end a run with a one-line message (exit 143 / 130), no traceback, no temp file;
* temp files a SIGKILLed run left are removed when the next run (the resume) claims the folder;
* a full disk (ENOSPC) is a one-line message, exit 1, the old file intact and no temp file.
"""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from vispos.utils import io as vio

REPO = Path(__file__).resolve().parents[1]
TINY = {"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2, "mlp_ratio": 2.0}


def _cfg(tmp_path: Path, out: Path, steps: int = 100000) -> Path:
    f = tmp_path / f"{out.name}.yaml"
    f.write_text(yaml.safe_dump(dict(model_kwargs=TINY, pe="ape", task="quadrant", sizes="16", train_size=16,
                                     steps=steps, batch_size=4, eval_samples=8, ckpt_every=1, threads=1,
                                     device="cpu", out=str(out))))
    return f


def _start(cfg: Path, *extra) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "vispos.cli", "train", "resolution", "--config", str(cfg),
                             "--no-progress", *extra], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_for_checkpoint(proc, out: Path) -> None:
    ck = out / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if ck.is_dir() and any(p.suffix == ".pt" for p in ck.iterdir()):
            return
        time.sleep(0.02)
    err = proc.stderr.read().decode()[-2000:] if proc.poll() is not None else ""
    proc.kill()
    proc.wait()
    pytest.fail(f"the run never wrote a checkpoint (rc {proc.returncode}): {err}")


def _temps(folder: Path):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(vio.TEMP_PREFIX + "*"))


def _stop(proc, sig) -> str:
    os.kill(proc.pid, sig)
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return err.decode()


@pytest.mark.parametrize("sig, rc, word", [(signal.SIGTERM, 143, "terminated (SIGTERM)"),
                                           (signal.SIGINT, 130, "interrupted (Ctrl-C)")])
def test_sigterm_and_ctrl_c_end_cleanly_and_a_second_run_is_refused(tmp_path, capsys, sig, rc, word):
    from vispos.cli import main

    out = tmp_path / "run"
    cfg = _cfg(tmp_path, out)
    proc = _start(cfg)
    _wait_for_checkpoint(proc, out)
    # the first run holds the folder: a second run into it is refused before any work
    before = sorted(p.name for p in out.rglob("*") if not p.name.startswith(vio.TEMP_PREFIX))  # (in-flight writes)
    assert main(["train", "resolution", "--config", str(cfg), "--no-progress", "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vispos: error: ") and f"is in use by another vispos run (pid {proc.pid})" in err, err
    assert not (out / "results.json").exists()
    # (the running process may add files; the refused one must not have removed any)
    assert set(before) <= {p.name for p in out.rglob("*")}
    err = _stop(proc, sig)
    assert proc.returncode == rc, err
    assert f"vispos: {word}" in err and "Traceback" not in err, err
    assert _temps(out) == []
    # the lock went with the process: the folder is usable again
    vio.ensure_writable_dir(out)
    vio.release_output_locks()


def test_temp_files_of_a_killed_run_are_removed_by_the_resume(tmp_path):
    from vispos.cli import main

    out = tmp_path / "run"
    cfg = _cfg(tmp_path, out, steps=200)
    proc = _start(cfg)
    _wait_for_checkpoint(proc, out)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    # what a SIGKILL during an atomic write leaves (the kill cannot be timed to land inside a write reliably, so
    # the leftovers are planted with exactly the names atomic_path gives its temp files)
    stale = [out / "checkpoints" / f"{vio.TEMP_PREFIX}ape_seed0.pt.k2j4x9.tmp", out / f"{vio.TEMP_PREFIX}results.json.a1b2.tmp"]
    for s in stale:
        s.write_bytes(b"half a file")
    with vio.atomic_path(tmp_path / "probe.bin") as t:  # the names match what atomic_path really makes
        assert Path(t).name.startswith(vio.TEMP_PREFIX + "probe.bin.")
        Path(t).write_bytes(b"x")
    assert not (out / "results.json").exists()
    # the resume claims the folder, removes the leftovers and finishes
    assert main(["train", "resolution", "--config", str(cfg), "--no-progress", "--resume"]) == 0
    assert _temps(out) == []
    assert not any(s.exists() for s in stale)
    assert (out / "results.json").is_file()


def test_lock_is_per_process_and_released(tmp_path):
    import fcntl

    out = tmp_path / "o"
    vio.ensure_writable_dir(out)
    vio.ensure_writable_dir(out)  # the same process may claim its folder again (a demo trains, then evaluates)
    assert (out / vio.LOCK_NAME).read_text().strip() == str(os.getpid())

    def try_lock():  # another open file description competes like another process would
        fd = os.open(out / vio.LOCK_NAME, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        finally:
            os.close(fd)

    assert not try_lock()
    vio.release_output_locks()
    assert try_lock()
    vio.ensure_writable_dir(out, lock=False)  # lock=False only checks writability
    assert try_lock()


def test_disk_full_is_a_clean_message(tmp_path, capsys, monkeypatch):
    from vispos.cli import main

    out = tmp_path / "run"
    cfg = _cfg(tmp_path, out, steps=2)
    real_fsync = os.fsync

    def full(fd):
        name = os.readlink(f"/proc/self/fd/{fd}") if os.path.exists(f"/proc/self/fd/{fd}") else None
        if name and Path(name).name.startswith(vio.TEMP_PREFIX + "ape_seed0.pt"):
            raise OSError(errno.ENOSPC, "No space left on device", name)
        return real_fsync(fd)

    monkeypatch.setattr(vio.os, "fsync", full)
    rc = main(["train", "resolution", "--config", str(cfg), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1, err
    assert err.startswith("vispos: error: no space left on the device writing ") and "Traceback" not in err, err
    assert _temps(out) == []
    assert not (out / "checkpoints" / "ape_seed0.pt").exists() and not (out / "results.json").exists()
