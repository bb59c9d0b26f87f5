"""torchrun: a 2-process CPU run (gloo) gives the same training and exactly the same accuracy as 1 process."""
import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from vispos.eval import resolution as R
from vispos.utils.dist import ShardSampler, all_reduce_sum, init_distributed, shard_indices

CFG = dict(model_kwargs={"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2, "mlp_ratio": 2.0},
           pe="ape+rope_axial", task="quadrant", sizes="16,24", train_size=16, steps=3, batch_size=8,
           eval_samples=13, eval_batch_size=4, ckpt_every=3, lr=3e-3, device="cpu", threads=1)


def test_shards_cover_every_index_once():
    for n in (0, 1, 5, 13):
        for world in (1, 2, 3):
            shards = [shard_indices(range(n), r, world) for r in range(world)]
            assert sorted(sum(shards, [])) == list(range(n))
            assert [len(ShardSampler(n, r, world)) for r in range(world)] == [len(s) for s in shards]
    with pytest.raises(ValueError, match="rank"):
        shard_indices(range(4), 2, 2)


def test_single_process_defaults():
    info = init_distributed("cpu")
    assert (info.rank, info.world_size, info.distributed, info.initialized_here) == (0, 1, False, False)
    t = torch.tensor([3, 4])
    assert torch.equal(all_reduce_sum(t), torch.tensor([3, 4]))
    with pytest.raises(ValueError, match="device"):
        init_distributed("tpu:0")


def test_torchrun_two_processes_match_one(tmp_path):
    one = R.run_experiment(R.load_config(None, **CFG, out=str(tmp_path / "one")), train=True, progress=False)
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(dict(CFG, out=str(tmp_path / "two"))))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "vispos.cli",
           "train", "resolution", "--config", str(cfg_file)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("Top-1 accuracy (%)") == 1  # one table: rank 0 writes and prints
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert two["world_size"] == 2 and one["world_size"] == 1
    # every sample counted once (13 is odd: a padded DistributedSampler would count 14)
    assert [r["n"] for r in two["rows"]] == [13, 13]
    # DDP training = the 1-process update (each global batch split over the ranks), up to float rounding
    a = torch.load(tmp_path / "one" / "checkpoints" / "ape+rope_axial_seed0.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "two" / "checkpoints" / "ape+rope_axial_seed0.pt", weights_only=True)["model"]
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-4)  # Adam steps amplify reduction-order rounding
    # the sharded evaluation is exact: the 2-process counts equal a 1-process evaluation of the same weights
    ck = str(tmp_path / "two" / "checkpoints" / "ape+rope_axial_seed0.pt")
    ev = R.run_experiment(R.load_config(None, **dict(CFG, checkpoint=ck), out=str(tmp_path / "ev")), train=False,
                          progress=False)
    assert [(r["n"], r["correct1"]) for r in ev["rows"]] == [(r["n"], r["correct1"]) for r in two["rows"]]
    assert [r["correct1"] for r in one["rows"]] == [r["correct1"] for r in two["rows"]]
