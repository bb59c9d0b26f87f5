"""Progress bars for the CLIs (tqdm) that stay readable in a log file.

On a terminal a bar redraws in place. When stderr is not a terminal (``make demo > log``, CI, a notebook's captured
stream) tqdm would write one line per refresh -- hundreds of KB for a demo -- so there the bar prints at most one
line every :data:`LOG_INTERVAL_S` seconds (plus the final one). ``enabled=False`` (``--no-progress``) hides it.
"""
from __future__ import annotations

import sys

__all__ = ["LOG_INTERVAL_S", "progress_bar", "is_terminal"]

#: seconds between progress lines when stderr is not a terminal
LOG_INTERVAL_S = 30.0


def is_terminal(stream=None) -> bool:
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty / closed stream: not a terminal
        return False


def progress_bar(total=None, desc: str = "", enabled: bool = True, **kwargs):
    """A ``tqdm`` bar: hidden unless ``enabled``; throttled to one line per :data:`LOG_INTERVAL_S` off a terminal."""
    from tqdm.auto import tqdm

    if not is_terminal(kwargs.get("file")):
        kwargs.setdefault("mininterval", LOG_INTERVAL_S)
        kwargs.setdefault("maxinterval", max(LOG_INTERVAL_S, 60.0))
        kwargs.setdefault("dynamic_ncols", False)
        kwargs.setdefault("ncols", 100)
    return tqdm(total=total, desc=desc, disable=not enabled, **kwargs)
