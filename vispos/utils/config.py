"""YAML configs with command-line overrides.

Every command takes ``--config file.yaml``; flags given on the command line override the file, and the file
overrides the built-in defaults. Unknown keys in a file are an error naming them and the allowed keys.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import yaml

__all__ = ["load_yaml", "resolve_config"]


def load_yaml(path) -> Dict[str, Any]:
    """Read a YAML mapping; ``ValueError`` if the file is missing, unreadable or not a mapping."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"config file {str(p)!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"config file {str(p)!r} is not valid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {str(p)!r} must hold a mapping of options, got {type(data).__name__}")
    return data


def resolve_config(
    defaults: Mapping[str, Any], args: Optional[argparse.Namespace] = None, config_path=None,
    extra: Optional[Mapping[str, Any]] = None,
) -> Dict[str, Any]:
    """``defaults`` <- YAML file <- command-line flags that were given (not ``None``) <- ``extra``.

    Keys use underscores (``--train-size`` -> ``train_size``). Raises ``ValueError`` on unknown keys in the file.
    """
    cfg = dict(defaults)
    path = config_path if config_path is not None else getattr(args, "config", None)
    if path:
        data = load_yaml(path)
        data = {k.replace("-", "_"): v for k, v in data.items()}
        unknown = sorted(set(data) - set(cfg))
        if unknown:
            raise ValueError(f"unknown key(s) {unknown} in config {str(path)!r}; allowed: {sorted(cfg)}")
        cfg.update(data)
    if args is not None:
        for k, v in vars(args).items():
            if k in cfg and v is not None:
                cfg[k] = v
    if extra:
        cfg.update(extra)
    return cfg
