"""RO-ViT cropped PE: RandomResizedCrop box statistics and the two pixel conventions (TF/torchvision RoIAlign)."""
import math

import pytest
import torch

from vispos.pe.absolute import AbsolutePE, crop_resample_abs_pe, sample_crop_boxes

tv = pytest.importorskip("torchvision")
from torchvision.ops import roi_align  # noqa: E402
from torchvision.transforms import RandomResizedCrop  # noqa: E402

N = 6000


def _tv_boxes(H, W, n, scale=(0.1, 1.0), ratio=(0.5, 2.0)):
    torch.manual_seed(0)
    img = torch.empty(1, H, W)
    out = []
    for _ in range(n):
        i, j, h, w = RandomResizedCrop.get_params(img, list(scale), list(ratio))
        out.append((i / H, h / H, j / W, w / W))
    return torch.tensor(out, dtype=torch.float64)


def _stats(area, log_aspect):
    return area.mean().item(), area.std().item(), log_aspect.mean().item(), log_aspect.std().item()


@pytest.mark.parametrize("H,W,scale", [(1000, 1000, (0.1, 1.0)), (600, 1000, (0.1, 1.0)), (1000, 1000, (0.5, 1.0))])
def test_box_statistics_match_torchvision_random_resized_crop(H, W, scale):
    ref = _tv_boxes(H, W, N, scale)
    ours = sample_crop_boxes(N, scale, generator=torch.Generator().manual_seed(1), size=(H, W)).double()
    ra, rla = ref[:, 1] * ref[:, 3], torch.log((ref[:, 3] * W) / (ref[:, 1] * H))
    oa, ola = ours[:, 0, 1] * ours[:, 1, 1], torch.log((ours[:, 1, 1] * W) / (ours[:, 0, 1] * H))
    rm, rs, rlm, rls = _stats(ra, rla)
    om, os_, olm, ols = _stats(oa, ola)
    se = math.sqrt(2 / N)  # two independent samples
    assert abs(om - rm) < 5 * rs * se, (om, rm)
    assert abs(olm - rlm) < 5 * rls * se, (olm, rlm)
    assert abs(os_ - rs) < 0.05 * rs and abs(ols - rls) < 0.05 * rls
    # start positions: uniform where the box fits -> mean centre 0.5 on both axes, as torchvision
    for a in range(2):
        centre = ours[:, a, 0] + ours[:, a, 1] / 2
        assert abs(centre.mean().item() - 0.5) < 0.01
    assert (ours[:, :, 0] >= 0).all() and (ours[:, :, 0] + ours[:, :, 1] <= 1 + 1e-6).all()


def test_redraw_not_clip():
    # RO-ViT's ranges: redrawing gives mean area ~0.43 (RandomResizedCrop); clipping extents to 1 would give ~0.52
    b = sample_crop_boxes(20000, generator=torch.Generator().manual_seed(0)).double()
    area = (b[:, 0, 1] * b[:, 1, 1]).mean().item()
    assert 0.41 < area < 0.45
    u = torch.rand(20000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a, r = 0.1 + 0.9 * u[:, 0], torch.exp(math.log(0.5) + math.log(4) * u[:, 1])
    clipped = (torch.sqrt(a * r).clamp(max=1) * torch.sqrt(a / r).clamp(max=1)).mean().item()
    assert clipped > 0.5


def test_fallback_is_torchvision_central_crop():
    # no draw can fit (area >= 0.99 with aspect 3-4 on a square): torchvision's fallback, the whole side cut to 3:1
    b = sample_crop_boxes(8, scale=(0.99, 1.0), ratio=(3.0, 4.0), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(b[:, 1], torch.tensor([0.0, 1.0]).expand(8, 2))
    torch.testing.assert_close(b[:, 0], torch.tensor([1 / 3, 1 / 3]).expand(8, 2))


def _roi(table_hw, boxes, out_hw, aligned):
    """torchvision RoIAlign, one sample per bin, boxes in table pixels (x1, y1, x2, y2)."""
    S_h, S_w = table_hw.shape[-2:]
    rois = torch.stack([torch.arange(boxes.shape[0], dtype=torch.float32),
                        boxes[:, 1, 0] * S_w, boxes[:, 0, 0] * S_h,
                        (boxes[:, 1, 0] + boxes[:, 1, 1]) * S_w, (boxes[:, 0, 0] + boxes[:, 0, 1]) * S_h], dim=1)
    return roi_align(table_hw.expand(boxes.shape[0], -1, -1, -1).contiguous(), rois, out_hw, spatial_scale=1.0,
                     sampling_ratio=1, aligned=aligned)


@pytest.mark.parametrize("sampling,aligned", [("roi_align", False), ("center", True)])
def test_pixel_conventions_equal_roi_align(sampling, aligned):
    torch.manual_seed(0)
    C, grid, new = 5, (7, 9), (4, 6)
    table = torch.randn(1, 1 + 63, C)
    boxes = sample_crop_boxes(16, generator=torch.Generator().manual_seed(2), size=grid)
    out = crop_resample_abs_pe(table, grid, new, boxes, 1, upsample=grid, sampling=sampling)
    patch = table[:, 1:].reshape(1, *grid, C).permute(0, 3, 1, 2)
    ref = _roi(patch, boxes, new, aligned).permute(0, 2, 3, 1).reshape(16, -1, C)
    torch.testing.assert_close(out[:, 1:], ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[:, 0], table[:, 0].expand(16, -1))
    # the two conventions differ by half a table pixel
    other = crop_resample_abs_pe(table, grid, new, boxes, 1, upsample=grid,
                                 sampling="center" if sampling == "roi_align" else "roi_align")
    assert (other - out).abs().max() > 1e-2


def test_module_option_and_errors():
    pe = AbsolutePE(8, (4, 4), crop_aug=True, crop_sampling="roi_align")
    assert pe.crop_sampling == "roi_align"
    pe.train()(torch.zeros(2, 16, 8), (4, 4))
    with pytest.raises(ValueError, match="crop_sampling"):
        AbsolutePE(8, (4, 4), crop_aug=True, crop_sampling="tf")
    with pytest.raises(ValueError, match="sampling"):
        crop_resample_abs_pe(torch.zeros(1, 16, 2), (4, 4), (4, 4), torch.zeros(1, 2, 2), sampling="corner")
    with pytest.raises(ValueError, match="attempts"):
        sample_crop_boxes(2, attempts=0)
