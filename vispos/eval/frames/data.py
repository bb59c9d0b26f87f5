"""``vispos train video`` data: synthetic moving objects or a folder of video files."""
from __future__ import annotations

from typing import Any, Dict

import numpy as np
import torch

from ...utils.checks import check_size


def build_dataset(cfg: Dict[str, Any]):
    """The training videos: ``(tensor (N, C, T, H, W) in [-1, 1], None)`` for synthetic data (precomputed, small)
    or ``(None, dataset)`` for a folder (:class:`vispos.data.video.VideoFolder`, read on the fly)."""
    from ...data import video as V

    H, W = check_size(cfg["size"])
    if cfg["data"] == "synthetic":
        ds = V.SyntheticVideos(cfg["num_videos"], cfg["frames"], size=(H, W), num_objects=cfg["num_objects"],
                               seed=cfg["data_seed"])
        data = torch.stack([item_video(ds[i]) for i in range(len(ds))])
        return data, None
    ds = V.VideoFolder(cfg["data"], clip_length=cfg["frames"], stride=cfg["clip_stride"], size=(H, W))
    if len(ds) == 0:
        raise ValueError(f"no clips of {cfg['frames']} frames found in {cfg['data']!r}")
    return None, ds


def item_video(item) -> torch.Tensor:
    v = item["video"] if isinstance(item, dict) else item
    v = torch.as_tensor(v)
    if v.dim() != 4:
        raise ValueError(f"a dataset item must be a video (C, T, H, W), got shape {tuple(v.shape)}")
    return v.float()


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """``(C, T, H, W)`` in ``[-1, 1]`` -> ``(T, H, W, 3)`` uint8."""
    from ...data import video as V

    return V.to_uint8(video)
