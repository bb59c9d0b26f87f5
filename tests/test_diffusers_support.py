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
    from diffusers.models.transformers.transformer_cogview4 import CogView4RotaryPosEmbed

    holder = torch.nn.Module()
    holder.rope = CogView4RotaryPosEmbed(8, 2, (32, 32))
    with pytest.raises(ValueError, match=r"CogView4RotaryPosEmbed: positions squeezed into a fixed"):
        vd.apply_rule(holder, space="pi", height=40)
