"""timm integration: any timm ViT / EVA / NaFlexViT with any vispos PE, pretrained checkpoints included.

NaFlexViT (:mod:`vispos.integrations.timm.naflex`) also takes NaFlex batches (``patches`` / ``patch_coord`` /
``patch_valid``: a grid per sample, a :class:`~vispos.grid.PackedLayout`).

Three ways in:

* :func:`create_model` -- ``vispos.create_model("vit_small_patch16_224", pe="rope_axial")`` builds the timm model and
  installs the PE.
* ``timm.create_model("vispos_<timm name>", pe=...)`` -- after ``import vispos`` every entrypoint of timm's
  ``vision_transformer``, ``deit``, ``eva`` and ``naflexvit`` modules has a ``vispos_`` twin
  (``timm.list_models(module="vispos")``)
  that takes ``pe=`` / ``pe_kwargs=`` and goes through timm's own pretrained-config machinery (tags such as
  ``vispos_vit_base_patch16_224.augreg_in21k``, ``pretrained_cfg_overlay=dict(file=...)``).
* :func:`install_pe` -- put a PE into a timm model you already have (e.g. one loaded with pretrained weights); the
  timm PE is converted where a conversion exists.

How the PE reaches the model (no state-dict key of timm changes; the PE's parameters appear under ``pe.``):

* the model's class is swapped for a subclass whose ``_pos_embed`` builds the :class:`~vispos.grid.GridLayout`
  from the patch grid (``(H, W)`` from the NHWC patch embedding with ``dynamic_img_size=True``, else
  ``patch_embed.grid_size``) after concatenating the prefix tokens (class, distillation, registers), applies
  the PE's ``token`` hook and ``prepare`` step;
* each attention's class is swapped for a subclass that runs the ``attn_input``, ``bias``, ``qk`` and ``value``
  hooks around SDPA (:func:`vispos.attention.attend`), with the same projections as timm's;
* each block's class is swapped for a subclass that runs the ``block`` hook after the block.

The layout travels with the call: each forward hands a :class:`PECall` (the model's PE and the layout of these
tokens) to every block and attention as an argument -- EVA's ``rope=`` (timm's own EVA loops pass it on, under
gradient checkpointing too), a ViT's ``attn_mask=`` (the ViT forwards run the block loop themselves) -- so a
checkpointed block is recomputed with its own forward's layout, and threads or ``nn.DataParallel`` replicas share
no per-forward state. The PE is registered once, at ``model.pe``. timm's own PE is removed (``pos_embed`` / EVA
``rope`` become ``None``): the vispos PE is the model's only PE. A learned APE is kept by asking for it, e.g.
``pe=["ape", "rope_axial"]``.

Conversion (:func:`install_pe` with ``convert=True``, implied by ``pretrained=True`` / ``checkpoint_path=``): the
host describes timm's own PE once, by role (:class:`vispos.pe.host.HostPE`: ``abs_table`` = ``pos_embed``,
``rotary`` = EVA's ``rope`` module, ``mixed_freqs`` = its RoPE-Mixed ``rope.freqs``), and asks every PE module of
the vispos PE, generically: ``options_from_host`` gives the build defaults (an APE's prefix rows and antialias, a
RoPE's base / pairing / axis order / grid offset / reference grid / DINOv3 coordinates / augmentation, PEG's
``zero_init``), ``state_from_host`` takes the state it can use (``pos_embed`` with prefix rows added as zeros or
dropped to match ``embed_prefix``; ``rope.freqs`` with rows as stored, ``axis_order`` following timm's
``grid_indexing``), ``identity_state`` / ``resize_state`` serve checkpoints that lack a parameter or were saved at
another grid. A role no member takes is reported as dropped. One ``INFO`` log line per converted, dropped or new key (logger ``vispos.integrations.timm``);
what a family cannot reproduce is a ``WARNING`` at conversion and at every ``load_state_dict`` of a checkpoint
without ``pe.*`` keys. vispos models carry their ``vispos_<name>`` architecture and PE arguments in
``pretrained_cfg`` / model args, so ``save_for_hf`` then ``timm.create_model("local-dir:...", pretrained=True)``
rebuilds them; ``features_only=True`` wraps the PE-carrying model in timm's feature getter.
"""
from . import naflex  # noqa: F401  (registers the NaFlexVit host in HOSTS / SUPPORTED)
from .convert import load_timm_checkpoint
from .factory import (
    ENTRYPOINT_PREFIX,
    SUPPORTED_TIMM_MODULES,
    create_model,
    install_pe,
    register_timm_entrypoints,
    timm_entrypoint_name,
)
from .hooks import HOSTS, SUPPORTED, PECall, TimmHost, find_host

__all__ = [
    "ENTRYPOINT_PREFIX",
    "HOSTS",
    "PECall",
    "SUPPORTED",
    "SUPPORTED_TIMM_MODULES",
    "TimmHost",
    "create_model",
    "find_host",
    "install_pe",
    "load_timm_checkpoint",
    "register_timm_entrypoints",
    "timm_entrypoint_name",
]
