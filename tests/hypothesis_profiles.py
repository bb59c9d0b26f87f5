"""Hypothesis profiles for vispos' property tests (imported by the test files that use hypothesis).

* ``vispos-default``: the everyday run, small and fast (15 examples per test, tiny grids and dims).
* ``vispos-ci``: selected when the environment variable ``CI=true``: 2.7x the examples, still bounded so the whole
  suite stays well under 10 minutes on 2 cores.

``HYPOTHESIS_PROFILE=<name>`` selects a profile explicitly (e.g. ``vispos-ci`` locally). No deadline: the machines
running the suite are shared and timing-noisy; the example counts bound the run time instead.
"""
from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

DEFAULT_EXAMPLES = 15
CI_EXAMPLES = 40

_common = dict(deadline=None, derandomize=False, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

settings.register_profile("vispos-default", max_examples=DEFAULT_EXAMPLES, **_common)
settings.register_profile("vispos-ci", max_examples=CI_EXAMPLES, **_common)


def selected_profile() -> str:
    """The profile for this run: ``HYPOTHESIS_PROFILE``, else ``vispos-ci`` when ``CI=true``, else the default."""
    explicit = os.environ.get("HYPOTHESIS_PROFILE")
    if explicit:
        return explicit
    return "vispos-ci" if os.environ.get("CI", "").strip().lower() == "true" else "vispos-default"


settings.load_profile(selected_profile())


def scaled(fraction: float):
    """``@scaled(0.5)``: this test runs ``fraction`` of the current profile's examples (at least 5)."""
    current = settings()
    return settings(current, max_examples=max(5, int(current.max_examples * fraction)))
