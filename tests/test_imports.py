"""Every vispos module imports on its own (no import-order dependence, no cycle), and ``python -m vispos`` is the
``vispos`` command."""
import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import vispos

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(m.name for m in pkgutil.walk_packages(vispos.__path__, "vispos."))

# A fresh interpreter that has imported only third-party packages (never vispos) forks one child per module;
# each child imports that one module into an empty vispos state and reports the traceback, if any. The heavy
# third-party imports (torch, timm, diffusers) are paid once instead of once per module.
_FORK_IMPORTS = r"""
import importlib, json, os, sys, traceback
for dep in ("numpy", "torch", "yaml", "einops", "timm", "diffusers", "transformers"):
    try:
        importlib.import_module(dep)
    except ImportError:
        pass
assert not any(m == "vispos" or m.startswith("vispos.") for m in sys.modules)
out = {}
for name in sys.argv[1:]:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            if ":" in name:  # "pkg:attr.attr": import pkg alone, then reach the attribute
                mod, attrs = name.split(":")
                obj = importlib.import_module(mod)
                for a in attrs.split("."):
                    obj = getattr(obj, a)
            else:
                importlib.import_module(name)
            msg = ""
        except BaseException:
            msg = traceback.format_exc() or "failed"
        os.write(w, msg.encode())
        os.close(w)
        os._exit(0)
    os.close(w)
    data = b""
    while True:
        chunk = os.read(r, 1 << 16)
        if not chunk:
            break
        data += chunk
    os.close(r)
    _, status = os.waitpid(pid, 0)
    out[name] = data.decode() if status == 0 else f"child exited with status {status}: {data.decode()}"
print(json.dumps(out))
"""


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def test_walk_finds_the_package():
    assert {"vispos.freqs", "vispos.eval.resolution.experiment", "vispos.eval.frames.training",
            "vispos.utils.checks", "vispos.__main__"} <= set(MODULES)


@pytest.fixture(scope="module")
def fork_results():
    if not hasattr(os, "fork"):
        pytest.skip("needs os.fork")
    p = subprocess.run([sys.executable, "-c", _FORK_IMPORTS, *MODULES, "vispos:models.VideoDiT"], capture_output=True, text=True,
                       env=_env(), cwd=str(ROOT), timeout=900)
    assert p.returncode == 0, p.stderr[-4000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_on_its_own(module, fork_results):
    assert module in fork_results
    assert fork_results[module] == "", f"import {module} alone failed:\n{fork_results[module]}"


@pytest.mark.slow
@pytest.mark.parametrize("module", MODULES)
def test_module_imports_in_a_fresh_interpreter(module):
    p = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, env=_env(),
                       cwd=str(ROOT), timeout=600)
    assert p.returncode == 0, p.stderr[-4000:]


def test_vispos_models_after_import_vispos(fork_results):
    """``import vispos; vispos.models.VideoDiT`` in an interpreter that imported nothing else of vispos."""
    assert fork_results["vispos:models.VideoDiT"] == "", fork_results["vispos:models.VideoDiT"]


def test_python_m_vispos_equals_the_command(capsys):
    from vispos.cli import main

    assert main(["list", "--json"]) == 0
    in_process = capsys.readouterr().out
    p = subprocess.run([sys.executable, "-m", "vispos", "list", "--json"], capture_output=True, text=True,
                       env=_env(), cwd=str(ROOT), timeout=600)
    assert p.returncode == 0, p.stderr[-4000:]
    assert p.stdout == in_process
    assert any(r["name"] == "rope_axial" for r in json.loads(p.stdout)["pes"])
    script = Path(sys.executable).with_name("vispos")  # the installed console script, where there is one
    if script.is_file():
        c = subprocess.run([str(script), "list", "--json"], capture_output=True, text=True, env=_env(),
                           cwd=str(ROOT), timeout=600)
        assert c.returncode == 0 and c.stdout == p.stdout
