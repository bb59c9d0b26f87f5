"""Host integrations: timm (:mod:`vispos.integrations.timm`) and diffusers (:mod:`vispos.integrations.diffusers`).

This package imports nothing by itself, so that an optional dependency (diffusers) is only needed by the code that
uses it. ``import vispos`` imports :mod:`vispos.integrations.timm`, which registers the ``vispos_*`` timm entrypoints.
"""
