"""Package layout (everything else is in pyproject.toml).

The demo and example configurations live in the repository's top-level ``configs/`` folder (so that
``--config configs/resolution/demo_cpu.yaml`` works in a checkout) and are shipped inside the wheel as package data
of ``vispos.configs`` (read them with :func:`vispos.utils.resources.config_path`).
"""
from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).resolve().parent
config_dirs = sorted(p.name for p in (here / "configs").iterdir() if p.is_dir())

setup(
    packages=find_packages(include=["vispos", "vispos.*"]) + ["vispos.configs"]
    + [f"vispos.configs.{d}" for d in config_dirs],
    package_dir={"vispos.configs": "configs"},
    package_data={"vispos.configs": ["*.yaml"], **{f"vispos.configs.{d}": ["*.yaml"] for d in config_dirs}},
)
