"""The support table of docs/diffusers.md is what the adapters say about the installed diffusers; refusals say why."""
import re
from pathlib import Path

import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason='diffusers is not installed: pip install "vispos[diffusers]"')

import vispos.integrations.diffusers as vd  # noqa: E402
from vispos.integrations.diffusers.support import support_markdown  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_docs_support_table_is_generated_from_the_installed_diffusers():
    text = (ROOT / "docs" / "diffusers.md").read_text()
    table = re.search(r"<!-- support-table:start -->\n(.*?)<!-- support-table:end -->", text, flags=re.S).group(1)
    assert table == support_markdown(), "regenerate: python -m vispos.integrations.diffusers.support"


def test_a_model_that_cannot_be_supported_gets_an_error_naming_why():
    torch.manual_seed(0)
    mochi = diffusers.MochiTransformer3DModel(
        patch_size=1, num_attention_heads=1, attention_head_dim=12, num_layers=1, pooled_projection_dim=8,
        in_channels=2, text_embed_dim=8, time_embed_dim=8, activation_fn="swiglu")
    with pytest.raises(ValueError, match=r"MochiRoPE: learned per-head 3-D frequencies"):
        vd.apply_rule(mochi, time={"name": "riflex", "k": 1}, num_frames=40)
