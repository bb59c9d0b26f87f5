"""The `--scale gpu` resolution config (configs/resolution/demo_gpu.yaml) has never run on a GPU here: it must at
least load, build every variant's model at the config's size and run the config's data, and a 1-step run of the
same config with tiny overrides must finish on CPU (issue 15)."""
import pytest
import torch

from vispos.eval.resolution import demo_config_path, load_config, parse_variants, resolve_sizes, run_experiment
from vispos.eval.resolution.data import plan_data, train_batch, train_step_plan
from vispos.eval.resolution.models import build_model, patch_size_of


def _gpu_cfg(**over):
    return resolve_sizes(load_config(demo_config_path("gpu"), **over))


def test_gpu_config_builds_every_variant_at_its_size():
    cfg = _gpu_cfg()
    variants = parse_variants(cfg)
    assert [v.name for v in variants] == ["ape", "ape_sincos", "peg", "glpe", "lape", "rel_decomposed", "rope_axial",
                                          "rope_mixed", "vope", "ape+rope_axial"]
    assert cfg["train_size"] == [112, 112] and cfg["steps"] == 3000 and cfg["amp"] is True
    assert [s[0] for s in cfg["sizes"]] == [48, 112, 192, 256, 336]
    data = plan_data(cfg, train=False)
    assert data.num_classes == 12
    x = torch.randn(1, 3, 112, 112)
    for v in variants:
        m = build_model(v, data.num_classes, cfg["train_size"]).eval()
        assert patch_size_of(m) == (8, 8) and m.embed_dim == 192 and len(m.blocks) == 6, v.name
        n = sum(p.numel() for p in m.parameters())
        assert 2.5e6 < n < 3.2e6, (v.name, n)  # ViT-Ti width (192), 6 of its 12 blocks
        with torch.no_grad():
            assert m(x).shape == (1, 12), v.name


def test_gpu_config_training_batch_has_the_config_shape():
    cfg = _gpu_cfg()
    data = plan_data(cfg, train=True)
    idx, size = train_step_plan(cfg, data, 0, 0)
    assert len(idx) == 256 and size == (112, 112)
    xb, yb = train_batch(cfg, data, 0, idx[:32], size, 0)
    assert xb.shape == (32, 3, 112, 112) and yb.min() >= 0 and yb.max() < 12
    assert float(xb.std()) > 0.1  # photo crops, not blank


@pytest.mark.slow
def test_gpu_config_runs_one_step_on_cpu_with_tiny_overrides(tmp_path):
    """The config itself (its variants, task, sizes, amp, warm-up longer than the run, 3 seeds cut to 1) with a
    tiny model, 1 step and a few test images: trains and evaluates every variant end to end on CPU."""
    cfg = _gpu_cfg(steps=1, batch_size=4, eval_samples=12, eval_batch_size=12, seeds=[0], device="cpu",
                   model_kwargs={"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2, "mlp_ratio": 2.0},
                   out=str(tmp_path / "gpu_tiny"))
    res = run_experiment(cfg, train=True, progress=False)
    assert len(res["rows"]) == 10 * 5
    assert {r["size"] for r in res["rows"]} == {"48", "112", "192", "256", "336"}
    assert all(r["n"] == 12 for r in res["rows"])
    assert (tmp_path / "gpu_tiny" / "results.json").is_file()
