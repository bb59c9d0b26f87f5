"""The ``vispos`` command.

Subcommands are implemented in the modules named in :data:`COMMANDS`; each module provides
``add_<x>_args(parser)`` and ``run_<x>(args) -> int``. Modules are imported only when their command runs.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import logging
import signal
import sys
import threading
from typing import List, Optional

from .utils.extras import MissingExtraError

# (command words) -> (module, suffix, help)
COMMANDS = {
    ("list",): ("vispos.cli", "list", "list the PE families, scaling rules and pairings"),
    ("demo", "rope"): ("vispos.eval.rope_explorer", "demo", "RoPE explorer: score kernel vs offset per scaling rule"),
    ("demo", "resolution"): ("vispos.eval.resolution", "demo", "train tiny ViTs with every 2D PE, sweep resolution"),
    ("demo", "video"): ("vispos.eval.frames", "demo", "train a tiny video DiT, extend frames with every rule"),
    ("demo", "all"): ("vispos.cli", "demo_all", "every demo above, one after the other"),
    ("eval", "resolution"): ("vispos.eval.resolution", "eval", "accuracy vs test resolution per model/PE"),
    ("train", "resolution"): ("vispos.eval.resolution", "train", "train PE variants from scratch for the sweep"),
    ("eval", "pretrained"): ("vispos.eval.pretrained", "pretrained",
                             "a pretrained timm model at many sizes under training-free PE variants (timm transforms)"),
    ("eval", "frames"): ("vispos.eval.frames", "eval", "frame extrapolation: repetition, motion vs length per rule"),
    ("train", "video"): ("vispos.eval.frames", "train", "train a VideoDiT (rectified flow) on synthetic or real video"),
    ("riflex",): ("vispos.integrations.riflex_cli", "riflex", "RIFLEx table: periods, cycles, k, N_k for a model"),
    ("bench",): ("vispos.bench", "bench", "benchmarks against timm and the eager reference"),
}


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Adds ``(default: X)`` to an option's help unless the help already names its default or it has none (``None``,
    ``False``: values that come from a config or are off)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text.lower() or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: {action.default})" if text else f"default: {action.default}"


def add_list_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run_list(args) -> int:
    import json

    from . import PAIRINGS, RULES, list_pes

    rows = [info.as_row() for info in list_pes()]
    if args.json:
        print(json.dumps({"pes": rows, "rules": list(RULES), "pairings": list(PAIRINGS)}, indent=2))
        return 0
    w = max(len(r["name"]) for r in rows)
    print(f"{'name'.ljust(w)}  {'family':<12} {'grids':<8} {'hooks':<22} description")
    for r in rows:
        grids = ",".join(f"{d}D" for d in r["ndims"])
        print(f"{r['name'].ljust(w)}  {r['family']:<12} {grids:<8} {','.join(r['hooks']):<22} {r['description']}")
    print(f"\nscaling rules: {', '.join(RULES)}\npairings: {', '.join(PAIRINGS)}")
    return 0


def add_demo_all_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="results", help="results root folder: <out>/rope, <out>/resolution, <out>/video "
                                                   "(default: results)")
    p.add_argument("--scale", default="cpu", choices=["cpu", "gpu"], help="demo size (default: cpu)")
    p.add_argument("--threads", type=int, help="torch CPU threads for the resolution and video demos (default: "
                                               "their configs')")
    p.add_argument("--device", help="auto | cpu | cuda for the resolution and video demos (default: their configs')")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.add_argument("--overwrite", action="store_true", help="replace earlier demo results under --out")


def run_demo_all(args) -> int:
    """Each demo in turn; stops at the first that fails and returns its exit code."""
    from pathlib import Path

    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    for words in (("demo", "rope"), ("demo", "resolution"), ("demo", "video")):
        argv = list(words) + ["--out", str(Path(args.out) / words[1]), "--scale", args.scale]
        if getattr(args, "overwrite", False):
            argv.append("--overwrite")
        if words != ("demo", "rope"):
            if args.threads is not None:
                argv += ["--threads", str(args.threads)]
            if args.device is not None:
                argv += ["--device", args.device]
            if args.no_progress:
                argv.append("--no-progress")
        ns = build_parser().parse_args(argv)
        rc = int(ns._run(ns) or 0)
        if rc:
            return rc
    return 0


def _resolve(words):
    mod_name, suffix, _ = COMMANDS[words]
    mod = importlib.import_module(mod_name)
    return getattr(mod, f"add_{suffix}_args"), getattr(mod, f"run_{suffix}")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="vispos", description="Positional embeddings for images and video.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    parser.add_argument("--version", action="version", version=f"vispos {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    groups = {}
    for words, (_, _, help_) in COMMANDS.items():
        if len(words) == 1:
            p = sub.add_parser(words[0], help=help_, description=help_)
        else:
            if words[0] not in groups:
                g = sub.add_parser(words[0], help=f"{words[0]} commands")
                groups[words[0]] = g.add_subparsers(dest="subcommand", metavar="WHAT")
            p = groups[words[0]].add_parser(words[1], help=help_, description=help_)
        p.set_defaults(_words=words)
    return _Lazy(parser)


class _Lazy:
    """Adds a command's own arguments only when that command is chosen (so its module imports lazily)."""

    def __init__(self, parser):
        self.parser = parser

    def parse_args(self, argv):
        argv = list(argv)
        words = None
        for w, _ in sorted(COMMANDS.items(), key=lambda kv: -len(kv[0])):
            n = len(w)
            plain = [a for a in argv if not a.startswith("-")][:n]
            if tuple(plain) == w:
                words = w
                break
        if words is None:
            return self.parser.parse_args(argv)
        add, run = _resolve(words)
        p = argparse.ArgumentParser(prog="vispos " + " ".join(words), description=COMMANDS[words][2],
                                    formatter_class=DefaultsHelpFormatter)
        p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
        add(p)
        generic = not any(a.dest == "config" for a in p._actions)
        if generic:
            p.add_argument("--config", help="YAML file of this command's options (keys as the flags, '-' or '_'); "
                                            "flags given on the command line override it")
        rest = list(argv)
        for w in words:
            rest.remove(w)
        if generic:
            rest = _config_tokens(p, rest) + rest
        ns = p.parse_args(rest)
        ns._run = run
        ns._words = words
        return ns


def _config_tokens(parser: argparse.ArgumentParser, argv: List[str]) -> List[str]:
    """``--config`` for commands without their own config handling: the YAML's options become command-line tokens
    placed before the user's (so argparse checks types, choices and required options as usual), skipping the ones
    given on the command line. Unknown keys raise ``ValueError`` naming them and the allowed ones."""
    path = None
    for i, a in enumerate(argv):
        if a == "--config" and i + 1 < len(argv):
            path = argv[i + 1]
        elif a.startswith("--config="):
            path = a.split("=", 1)[1]
    if path is None:
        return []
    from .utils.config import load_yaml

    data = {str(k).replace("-", "_"): v for k, v in load_yaml(path).items()}
    by_dest = {a.dest: a for a in parser._actions if a.option_strings and a.dest not in ("help", "config")}
    unknown = sorted(set(data) - set(by_dest))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in config {path!r}; allowed: {sorted(by_dest)}")
    given = {a.dest for a in by_dest.values() for opt in a.option_strings
             if any(x == opt or x.startswith(opt + "=") for x in argv)}
    tokens: List[str] = []
    for k, v in data.items():
        if k in given or v is None:
            continue
        a = by_dest[k]
        opt = a.option_strings[-1]
        if a.nargs == 0:  # store_true / store_false flags
            if bool(v) != bool(a.default):
                tokens.append(opt)
        else:
            tokens += [opt, ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)]
    return tokens


def main(argv: Optional[List[str]] = None) -> int:
    """Run a command; a closed output pipe (``vispos list --json | head``) ends it quietly."""
    try:
        return _main(argv)
    except BrokenPipeError:
        # the reader went away: point stdout at devnull so the interpreter's final flush does not raise again
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


def _main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    try:
        ns = parser.parse_args(argv)
    except (ValueError, TypeError) as e:  # a bad --config file (argparse itself exits 2 on bad flags)
        if "-v" in argv or "--verbose" in argv:
            raise
        print(f"vispos: error: {e}", file=sys.stderr)
        return 2
    if not hasattr(ns, "_run"):
        parser.parser.print_help()
        return 2 if argv else 0
    logging.basicConfig(level=logging.INFO if getattr(ns, "verbose", False) else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    verbose = getattr(ns, "verbose", False)
    from .utils.io import Terminated, release_output_locks

    with _sigterm_raises(Terminated):
        try:
            return int(ns._run(ns) or 0)
        except (ValueError, TypeError, FileNotFoundError, MissingExtraError) as e:
            if verbose:
                raise
            print(f"vispos: error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            if verbose:
                raise
            print(f"vispos: interrupted (Ctrl-C). {_KEPT}", file=sys.stderr)
            return 130
        except Terminated:
            if verbose:
                raise
            print(f"vispos: terminated (SIGTERM). {_KEPT}", file=sys.stderr)
            return 143
        except OSError as e:
            if verbose or e.errno not in _DISK_FULL:
                raise
            where = f" writing {e.filename!r}" if e.filename else ""
            print(f"vispos: error: no space left on the device{where} ({e.strerror or e}). {_KEPT} Free some space "
                  "(or choose another --out) and rerun with --resume.", file=sys.stderr)
            return 1
        finally:
            release_output_locks()


_KEPT = ("Files written so far are complete (atomic writes; temp files removed); checkpoints and finished cells are "
         "kept for --resume.")
_DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


@contextlib.contextmanager
def _sigterm_raises(exc_type):
    """While the command runs, SIGTERM raises ``exc_type`` (a ``BaseException``) in the main thread, so the run
    unwinds like Ctrl-C: atomic writes remove their temp files and the command exits 143 with a message."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise exc_type(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
