"""Exporting vispos timm models: torch.export with dynamic height and width (where timm's own model exports), and the
legacy ONNX exporter (onnx, from the dev extra; outputs checked where onnxruntime is installed)."""
import importlib.util

import pytest
import torch
from torch.export import Dim, export

import vispos

KW = dict(embed_dim=64, depth=2, num_heads=2, dynamic_img_size=True)
_SLOW = pytest.mark.slow  # each export traces the model: ~10 s on one CPU core
CASES = [
    pytest.param("vit_base_patch16_224", ["ape", "rope_axial"], 16, id="vit-ape+rope_axial"),
    pytest.param("vit_base_patch16_224", "ape", 16, id="vit-ape", marks=_SLOW),
    pytest.param("vit_base_patch16_224", "rope_mixed", 16, id="vit-rope_mixed", marks=_SLOW),
    pytest.param("vit_base_patch16_224", "vope", 16, id="vit-vope", marks=_SLOW),
    pytest.param("vit_base_patch16_224", "ape_sincos", 16, id="vit-ape_sincos", marks=_SLOW),
    pytest.param("eva02_tiny_patch14_224", ["ape", "rope_axial"], 14, id="eva02-ape+rope_axial", marks=_SLOW),
]


def _model(name, pe, p):
    torch.manual_seed(0)
    m = vispos.create_model(name, pe=pe, img_size=4 * p, **KW).eval()
    with torch.no_grad():
        for n, t in m.named_parameters():
            if "pos_embed" in n:
                t.normal_()
    return m


@pytest.mark.parametrize("name,pe,p", CASES)
def test_torch_export_dynamic_height_width(name, pe, p):
    m = _model(name, pe, p)
    H, W = Dim("H", min=2, max=8), Dim("W", min=2, max=8)
    ep = export(m, (torch.randn(2, 3, 4 * p, 4 * p),), dynamic_shapes={"x": {2: p * H, 3: p * W}})
    for h, w in [(4, 4), (3, 5), (6, 2)]:
        x = torch.randn(2, 3, h * p, w * p)
        with torch.no_grad():
            ref = m(x)
        assert (ep.module()(x) - ref).abs().max() <= 1e-5 * ref.abs().max()


@pytest.mark.parametrize("pe", [None, ["ape", "rope_axial"], "ape", "rope_axial"], ids=lambda p: str(p))
def test_legacy_onnx_export(tmp_path, pe):
    """The TorchScript-based exporter (dynamo=False) with dynamic batch / height / width: timm's own model exports,
    and so do vispos APE and RoPE models (onnx is in the dev extra; the exporter itself needs it)."""
    onnx = pytest.importorskip("onnx")
    if pe is None:
        import timm

        m = timm.create_model("vit_base_patch16_224", img_size=64, **KW).eval()
    else:
        m = _model("vit_base_patch16_224", pe, 16)
    path = tmp_path / "m.onnx"
    torch.onnx.export(m, (torch.randn(1, 3, 64, 64),), str(path), dynamo=False, input_names=["x"],
                      dynamic_axes={"x": {0: "B", 2: "H", 3: "W"}})
    assert path.stat().st_size > 0
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ["B", "", "H", "W"]
    # outputs at the export size through onnx's own reference evaluator (and onnxruntime where installed). Other
    # sizes are not checked: the legacy exporter traces, and timm's own dynamic_img_size model traced this way
    # also fails at another size (shape-dependent python code becomes constants), so nothing is promised there.
    from onnx.reference import ReferenceEvaluator

    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = m(x)
    runs = [lambda a: ReferenceEvaluator(model).run(None, {"x": a})[0]]
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        runs.append(lambda a: sess.run(None, {"x": a})[0])
    for run in runs:
        out = torch.from_numpy(run(x.numpy()))
        assert out.shape == ref.shape and (out - ref).abs().max() <= 1e-5 * ref.abs().max()
