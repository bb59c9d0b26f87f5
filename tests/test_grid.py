import pytest
import torch

from vispos.grid import GridLayout, axis_positions, grid_coords


def test_index_coords_row_major_2d_and_3d():
    c = grid_coords((2, 3))
    assert c.shape == (6, 2) and c.dtype == torch.float32
    assert c.tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]
    c3 = grid_coords((2, 2, 3))
    assert c3.shape == (12, 3)
    assert c3[7].tolist() == [1, 0, 1]  # t=1, h=0, w=1 -> 1*6 + 0*3 + 1


def test_interpolated_matches_eva_rule():
    c = grid_coords((4, 8), mode="interpolated", ref_shape=(2, 2))
    # p * ref / size
    assert torch.allclose(c[:, 0].unique(), torch.arange(4) * 2 / 4)
    assert torch.allclose(c[:, 1].unique(), torch.arange(8) * 2 / 8)


def test_normalized_is_centred_and_spans_reference_extent():
    for size in (3, 4, 7, 16):
        p = axis_positions(size, "normalized", ref=8)
        assert abs(p.mean().item()) < 1e-9
        # first and last token centres sit half a cell inside [-ref/2, ref/2]
        assert torch.isclose(p[0], torch.tensor(-4 + 4 / size, dtype=p.dtype))
        assert torch.isclose(p[-1], torch.tensor(4 - 4 / size, dtype=p.dtype))
    # at the reference size the spacing is 1
    p = axis_positions(8, "normalized", ref=8)
    assert torch.allclose(p[1:] - p[:-1], torch.ones(7, dtype=p.dtype))


def test_cropped_full_box_is_index_and_box_samples_reference():
    assert torch.allclose(axis_positions(6, "cropped", ref=6), torch.arange(6, dtype=torch.float64))
    p = axis_positions(4, "cropped", ref=8, crop=(0.5, 0.5))  # right half of an 8-grid, 4 samples
    assert torch.allclose(p, torch.tensor([4.0, 5.0, 6.0, 7.0], dtype=torch.float64))


def test_explicit_positions_non_contiguous_frames():
    lay = GridLayout((3, 2, 2), positions=((0, 4, 8), None, None))
    c = grid_coords(lay)
    assert c[:, 0].unique().tolist() == [0, 4, 8]
    assert c.shape == (12, 3)


def test_per_axis_modes():
    c = grid_coords((4, 2, 2), mode=("index", "normalized", "normalized"), ref_shape=(4, 4, 4))
    assert c[:, 0].unique().tolist() == [0, 1, 2, 3]
    assert torch.allclose(c[:, 1].unique(), torch.tensor([-1.0, 1.0]))


def test_layout_counts_and_errors():
    lay = GridLayout((3, 4), num_prefix=2)
    assert lay.num_tokens == 14 and lay.num_patches == 12 and lay.ndim == 2
    lay.check_tokens(14)
    with pytest.raises(ValueError, match="13 tokens"):
        lay.check_tokens(13)
    with pytest.raises(ValueError, match="positive"):
        GridLayout((0, 4))
    with pytest.raises(ValueError, match="num_prefix"):
        GridLayout((2, 2), num_prefix=-1)
    with pytest.raises(TypeError):
        GridLayout((2.5, 2))
    with pytest.raises(ValueError, match="1, 2 or 3 axes"):
        GridLayout((2, 2, 2, 2))
    with pytest.raises(ValueError, match="axis 0 must have 3"):
        GridLayout((3, 2), positions=((0, 1), None))
    with pytest.raises(ValueError, match="unknown coordinate mode"):
        grid_coords((2, 2), mode="pixels")
    with pytest.raises(ValueError, match="reference size"):
        grid_coords((2, 2), mode="interpolated")
