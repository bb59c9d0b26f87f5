"""Packaging: a wheel built from a clean checkout ships the configs and the license and runs the demo command; the
CLI's small things (--version, a closed pipe, demo all flags, demo rope with a short test length)."""
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from vispos.cli import main
from vispos.utils.resources import config_dir, config_path, list_configs

ROOT = Path(__file__).resolve().parents[1]


def _git(*args, cwd=ROOT):
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """A wheel of the committed tree (``git clone`` of HEAD, so untracked files cannot leak in)."""
    if subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True).returncode:
        pytest.skip("not a git checkout")
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    _git("clone", "-q", "--no-hardlinks", str(ROOT), str(src))
    _git("checkout", "-q", _git("rev-parse", "HEAD").strip(), cwd=src)
    dist = tmp / "dist"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(dist), str(src)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    (whl,) = dist.glob("vispos-*.whl")
    return whl


def test_wheel_ships_configs_and_license(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(n[len("vispos/configs/"):] for n in names if n.startswith("vispos/configs/")
                     and n.endswith(".yaml"))
    in_repo = sorted(str(p.relative_to(ROOT / "configs")) for p in (ROOT / "configs").rglob("*.yaml"))
    assert shipped == in_repo and "resolution/demo_cpu.yaml" in shipped
    lic = [n for n in names if n.endswith("licenses/LICENSE")]
    assert lic, names[-10:]
    text = zipfile.ZipFile(wheel).read(lic[0]).decode()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert (ROOT / "LICENSE").read_text() == text
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in meta


@pytest.mark.slow
def test_wheel_runs_the_demo_help_without_a_checkout(wheel, tmp_path):
    # run the installed layout: the unpacked wheel first on the path, from a folder with no configs/ around it
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = dict(os.environ, PYTHONPATH=str(site))
    code = ("import sys, vispos\n"
            "from vispos.cli import main\n"
            "from vispos.utils.resources import config_path\n"
            "assert vispos.__file__.startswith(sys.argv[1]), vispos.__file__\n"
            "print('CONFIG', config_path('resolution', 'demo_cpu.yaml'))\n"
            "from vispos.eval.resolution import demo_config_path\n"
            "print('DEMO', demo_config_path('cpu'))\n"
            "for cmd in (['demo', 'resolution', '--help'], ['demo', 'video', '--help']):\n"
            "    try:\n"
            "        main(cmd)\n"
            "    except SystemExit as e:\n"
            "        assert e.code == 0, (cmd, e.code)\n")
    r = subprocess.run([sys.executable, "-c", code, str(site)], cwd=tmp_path, env=env, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    assert f"CONFIG {site / 'vispos' / 'configs' / 'resolution' / 'demo_cpu.yaml'}" in r.stdout
    assert f"DEMO {site / 'vispos' / 'configs' / 'resolution' / 'demo_cpu.yaml'}" in r.stdout
    assert r.stdout.count("usage: vispos demo") == 2


def test_config_path_finds_the_checkout_configs_and_names_bad_ones():
    assert config_dir() == ROOT / "configs"
    assert config_path("resolution", "demo_cpu.yaml") == ROOT / "configs" / "resolution" / "demo_cpu.yaml"
    assert "video/demo_cpu.yaml" in list_configs()
    with pytest.raises(ValueError, match="no shipped config 'resolution/nope.yaml'.*demo_cpu"):
        config_path("resolution", "nope.yaml")


def test_broken_pipe_is_quiet_in_process(monkeypatch):
    import vispos.cli as cli

    def closed_pipe(argv):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli, "_main", closed_pipe)
    dup = []
    monkeypatch.setattr(os, "dup2", lambda a, b: dup.append((a, b)))
    monkeypatch.setattr(sys, "stdout", type("S", (), {"fileno": lambda self: 1})())
    assert cli.main(["list"]) == 0 and dup and dup[0][1] == 1


def test_version_flag(capsys):
    import vispos

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"vispos {vispos.__version__}"


@pytest.mark.slow
def test_list_json_into_a_closed_pipe_exits_quietly():
    r = subprocess.run(f"{sys.executable} -m vispos.cli list --json | head -n 1", shell=True, capture_output=True,
                       text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.stdout.strip() == "{"
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, r.stderr


def test_demo_all_takes_threads_device_and_no_progress(monkeypatch, tmp_path):
    import vispos.cli as cli

    parsed = cli.build_parser().parse_args(["demo", "all", "--threads", "2", "--no-progress"])
    assert parsed.threads == 2 and parsed.no_progress
    seen = []

    class Recorder:
        def parse_args(self, argv):
            seen.append(list(argv))
            return cli.argparse.Namespace(_run=lambda ns: 0)

    monkeypatch.setattr(cli, "build_parser", Recorder)
    ns = cli.argparse.Namespace(out=str(tmp_path), scale="cpu", threads=1, device="cpu", no_progress=True,
                                overwrite=False)
    assert cli.run_demo_all(ns) == 0
    assert seen[0][:2] == ["demo", "rope"] and "--threads" not in seen[0]
    for argv in seen[1:]:
        assert argv[argv.index("--threads") + 1] == "1" and "--no-progress" in argv
        assert argv[argv.index("--device") + 1] == "cpu"


def test_demo_rope_with_a_test_length_below_the_training_length(tmp_path, capsys):
    from vispos.eval.rope_explorer import explore

    res = explore(train_len=33, test_len=20)
    assert len(res["offsets"]) == 33
    assert all(r["changed"] == [] for r in res["rows"])  # nothing to extend: every rule is the identity
    assert main(["demo", "rope", "--test-len", "20", "--out", str(tmp_path / "rope")]) == 0
    out = capsys.readouterr().out
    assert "Test length 20 <= training length 33" in out
    assert (tmp_path / "rope" / "table.md").is_file() and (tmp_path / "rope" / "rope_kernel.png").is_file()


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "rope", "--help"])
    out = capsys.readouterr().out
    assert "(default: results/rope)" in out or "default results/rope" in out
