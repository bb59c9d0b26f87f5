"""Which of the installed diffusers' transformers take vispos rules, found by the adapters themselves.

``python -m vispos.integrations.diffusers.support`` prints the Markdown support table of ``docs/diffusers.md``.
For every transformer class of ``diffusers.models.transformers`` it finds the RoPE module its ``__init__`` builds
(``self.<name> = <RopeClass>(...)``), builds that module with the arguments the transformer's defaults give, and asks
:func:`~vispos.integrations.diffusers.adapters.find_adapter` and the adapter's own check (a rule ``none`` installed
and removed) whether it is served. Nothing is looked up by class name except the refusal reasons of
:data:`REFUSED`, which only explain why a RoPE no adapter matches cannot be served.
"""
from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import textwrap
from typing import Dict, List, Optional

import torch

from .adapters import _ALLEGRO_SIGNATURE, _COG_SIGNATURE, find_adapter

__all__ = ["REFUSED", "support_rows", "support_markdown"]

#: why a RoPE layout that no adapter matches is not served (message text only)
REFUSED: Dict[str, str] = {
    "Kandinsky5RoPE1D": "1-D text RoPE: left unchanged (the transformer's visual 3-D RoPE is served, "
                        "kandinsky-style)",
    "Kandinsky6RoPE1D": "1-D text / audio RoPE: left unchanged (the transformer's visual 3-D RoPE is served, "
                        "kandinsky-style)",
    "LTX2AudioVideoRotaryPosEmbed": "audio stream / audio-video cross-attention RoPE: left unchanged (the video "
                                    "stream's `rope` is served, ltx2-video)",
    "SanaWMLTX2AudioVideoRotaryPosEmbed": "audio stream / audio-video cross-attention RoPE (a copy of LTX-2's): left "
                                          "unchanged (the video stream's `rope` is served, ltx2-video)",
    "CogView4RotaryPosEmbed": "positions squeezed into a fixed `rope_axes_dim` grid (row index * R // H): its own "
                              "built-in interpolation, not integer grid positions; not yet an adapter",
}

_ROPE_NAME = ("Rot", "RoPE", "Rope", "PosEmbed")


def _rope_assignments(cls) -> List[tuple]:
    """``(attribute, rope class name, call node)`` for each ``self.x = RopeClass(...)`` in ``cls.__init__``."""
    try:
        src = textwrap.dedent(inspect.getsource(cls.__init__))
    except (OSError, TypeError):
        return []
    out = []
    for node in ast.walk(ast.parse(src)):
        if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Attribute)
                and isinstance(node.value, ast.Call) and isinstance(node.value.func, ast.Name)
                and any(k in node.value.func.id for k in _ROPE_NAME)):
            out.append((node.targets[0].attr, node.value.func.id, node.value))
    return out


def _build_rope(module, cls, call: ast.Call):
    """The rope module built as ``cls.__init__`` builds it, with the transformer's default arguments: the simple
    ``name = expression`` statements of ``__init__`` before it (``inner_dim = heads * head_dim``) are evaluated
    first; one that fails is left out (the rope call then fails and the table says so)."""
    ns = dict(vars(module))
    ns.update({k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
               if p.default is not inspect.Parameter.empty})
    body = ast.parse(textwrap.dedent(inspect.getsource(cls.__init__))).body[0].body
    for stmt in body:
        if call in list(ast.walk(stmt)):
            break
        if isinstance(stmt, ast.Assign) and all(isinstance(t, (ast.Name, ast.Tuple)) for t in stmt.targets):
            try:
                exec(compile(ast.Module(body=[stmt], type_ignores=[]), "<init>", "exec"), ns)  # noqa: S102
            except Exception:  # noqa: S112 - a statement needing more than the defaults is skipped, see above
                continue
    return eval(compile(ast.Expression(body=call), "<rope>", "eval"), ns)  # noqa: S307 - diffusers' own source


def _status(holder, model_cls) -> tuple:
    from . import apply_rule

    adapter = find_adapter(holder)
    if adapter is None:
        return None, None
    try:
        apply_rule(holder, time="none").remove()
    except ValueError as err:
        return adapter.name, f"refused: {err}"
    return adapter.name, None


def support_rows() -> List[dict]:
    """One row per diffusers transformer class with a RoPE: ``model``, ``rope``, ``adapter`` (or None), ``note``."""
    import diffusers.models.transformers as pkg
    from diffusers.models.modeling_utils import ModelMixin

    rows = []
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        try:
            module = importlib.import_module(f"{pkg.__name__}.{info.name}")
        except Exception as err:  # an optional dependency of that module is missing: say so in the table
            rows.append(dict(model=info.name, rope="?", adapter=None, note=f"module not importable: {err}"))
            continue
        for name, cls in sorted(vars(module).items()):
            if not (isinstance(cls, type) and issubclass(cls, ModelMixin) and cls.__module__ == module.__name__):
                continue
            for attr, rope_name, call in _rope_assignments(cls):
                row = dict(model=name, rope=rope_name, adapter=None, note="")
                try:
                    rope = _build_rope(module, cls, call)
                except Exception as err:  # reported in the table, never hidden
                    row["note"] = f"rope not buildable from the defaults ({type(err).__name__})"
                    rows.append(row)
                    continue
                holder = torch.nn.Module()
                setattr(holder, attr, rope)
                adapter, note = _status(holder, cls)
                row["adapter"] = adapter
                row["note"] = note or ""
                if adapter is None:
                    fwd = getattr(type(rope), "forward", None) or type(rope).__call__
                    params = list(inspect.signature(fwd).parameters)[1:] if fwd is not None else []
                    row["note"] = REFUSED.get(rope_name) or (
                        f"no adapter matches `{attr}`: {type(rope).__name__}({', '.join(params)})")
                if row not in rows:  # one row per distinct (model, rope, outcome)
                    rows.append(row)
    return rows


#: the pipeline-side adapters by the signature of the pipeline's RoPE method
_PIPELINE_SIGNATURES = {tuple(_COG_SIGNATURE): "cogvideox-pipeline", tuple(_ALLEGRO_SIGNATURE): "allegro-pipeline"}


def _pipeline_built() -> List[tuple]:
    """``(pipeline, adapter or None)`` for the pipelines that build RoPE themselves
    (``_prepare_rotary_positional_embeddings``), as CogVideoX and Allegro do; the adapter is the one whose method
    signature it has (the adapter still checks the method's output at ``apply_rule``)."""
    import diffusers

    out = []
    for name in sorted(n for n in dir(diffusers) if n.endswith("Pipeline")):
        try:
            cls = getattr(diffusers, name)
        except Exception:  # noqa: S112 - a pipeline whose optional dependency is missing is not listed
            continue
        method = getattr(cls, "_prepare_rotary_positional_embeddings", None)
        if callable(method):
            params = tuple(inspect.signature(method).parameters)[1:]
            out.append((name, _PIPELINE_SIGNATURES.get(params)))
    return out


def support_markdown(rows: Optional[List[dict]] = None) -> str:
    """The support table (Markdown)."""
    import diffusers

    rows = support_rows() if rows is None else rows
    lines = [f"Generated by `python -m vispos.integrations.diffusers.support` from diffusers {diffusers.__version__}.",
             "", "| transformer | RoPE module | vispos | why / note |", "|---|---|---|---|"]
    for r in rows:
        status = f"served ({r['adapter']})" if r["adapter"] and not r["note"] else "refused"
        lines.append(f"| `{r['model']}` | `{r['rope']}` | {status} | {r['note'].replace('|', '/')} |")
    pipes = _pipeline_built()
    lines += ["", "Pipelines that build RoPE themselves (served by the adapter named when their method reproduces "
              "that adapter's RoPE, checked at `apply_rule`): "
              + ", ".join(f"`{p}` ({a or 'refused: no adapter has its method signature'})" for p, a in pipes) + "."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover - exercised by tests/test_diffusers_support.py
    print(support_markdown(), end="")
