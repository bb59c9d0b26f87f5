"""Synthetic videos, video I/O (PyAV write -> decord read), video grids and the VideoFolder clip reader."""
import warnings

import numpy as np
import pytest
import torch

from vispos.data.video import (
    SyntheticVideos,
    VideoFolder,
    read_video,
    to_float,
    to_uint8,
    video_grid,
    write_gif,
    write_video,
)


def _centroid(video: torch.Tensor, bg: float) -> np.ndarray:
    """Intensity centroid of |video - background| per frame: (T, 2) (x, y)."""
    w = (video - (bg * 2 - 1)).abs().sum(0).numpy()  # (T, H, W)
    T, H, W = w.shape
    xs, ys = np.arange(W), np.arange(H)
    m = w.sum((1, 2))
    return np.stack([(w.sum(1) * xs).sum(1) / m, (w.sum(2) * ys).sum(1) / m], axis=1)


# ------------------------------------------------------------------------------------------------ synthetic videos


def test_synthetic_shape_range_and_determinism():
    a = SyntheticVideos(3, 16, size=(24, 32), seed=5)
    b = SyntheticVideos(3, 16, size=(24, 32), seed=5)
    c = SyntheticVideos(3, 16, size=(24, 32), seed=6)
    item = a[1]
    assert item["index"] == 1
    v = item["video"]
    assert v.shape == (3, 16, 24, 32) and v.dtype == torch.float32
    assert v.min() >= -1 and v.max() <= 1
    assert torch.equal(v, b[1]["video"])
    assert not torch.equal(v, c[1]["video"])
    assert not torch.equal(a[0]["video"], a[1]["video"])
    assert len(a) == 3


def test_synthetic_prefix_consistent_and_render_from_start():
    short = SyntheticVideos(2, 8, size=(20, 20), seed=1)
    long = SyntheticVideos(2, 30, size=(20, 20), seed=1)
    assert torch.equal(short[1]["video"], long[1]["video"][:, :8])
    full = long.render(1, 30)
    torch.testing.assert_close(long.render(1, 10, start=17), full[:, 17:27])
    np.testing.assert_allclose(long.trajectories(1, 10, start=17), long.trajectories(1, 30)[17:27])
    # 2x slower: every second frame at time_scale 0.5 is the normal-speed video
    half = long.trajectories(1, 19, time_scale=0.5)
    np.testing.assert_allclose(half[::2], long.trajectories(1, 10), atol=1e-9)


def test_trajectories_match_rendered_centroids_and_stay_inside():
    for seed in range(4):
        ds = SyntheticVideos(1, 40, size=(24, 24), num_objects=1, seed=seed, channels=1)
        info = ds.objects(0)
        tr = ds.trajectories(0, 40)  # (T, 1, 2)
        assert tr.shape == (40, 1, 2)
        cen = _centroid(ds.render(0, 40), info["background"])
        np.testing.assert_allclose(cen, tr[:, 0], atol=0.15)
        r = info["objects"][0]["radius"]
        assert tr.min() >= r - 0.5 - 1e-9 and tr.max() <= 24 - 0.5 - r + 1e-9
    # straight lines without bouncing: constant velocity
    ds = SyntheticVideos(1, 20, size=(16, 16), num_objects=2, bounce=False, seed=3)
    tr = ds.trajectories(0, 20)
    np.testing.assert_allclose(np.diff(tr, axis=0), np.broadcast_to(np.diff(tr, axis=0)[:1], (19, 2, 2)), atol=1e-9)


def test_synthetic_speed_scales_velocity_exactly():
    a = SyntheticVideos(1, 4, size=(32, 32), seed=2, max_speed=2.0)
    b = SyntheticVideos(1, 4, size=(32, 32), seed=2, max_speed=1.0)
    va = np.array([o["velocity"] for o in a.objects(0)["objects"]])
    vb = np.array([o["velocity"] for o in b.objects(0)["objects"]])
    np.testing.assert_allclose(vb, va / 2)


@pytest.mark.parametrize("kw, err", [
    (dict(num_videos=0, length=4), ValueError),
    (dict(num_videos=2, length=4.0), TypeError),
    (dict(num_videos=2, length=4, num_objects=(3, 2)), ValueError),
    (dict(num_videos=2, length=4, num_objects=9), ValueError),
    (dict(num_videos=2, length=4, channels=2), ValueError),
    (dict(num_videos=2, length=4, size=(16, 16), radius=8), ValueError),
    (dict(num_videos=2, length=4, seed=-1), ValueError),
])
def test_synthetic_bad_args(kw, err):
    with pytest.raises(err):
        SyntheticVideos(**kw)


def test_synthetic_index_errors():
    ds = SyntheticVideos(2, 4, size=(16, 16))
    with pytest.raises(IndexError):
        ds[2]
    with pytest.raises(TypeError):
        ds[0.5]


# ------------------------------------------------------------------------------------------------ conversions, I/O


def test_to_uint8_and_back():
    v = SyntheticVideos(1, 5, size=(16, 16), channels=1)[0]["video"]
    f = to_uint8(v)
    assert f.shape == (5, 16, 16, 3) and f.dtype == np.uint8
    back = to_float(f)
    assert back.shape == (3, 5, 16, 16)
    torch.testing.assert_close(back[0], v[0], atol=1 / 127.5, rtol=0)
    with pytest.raises(TypeError):
        to_uint8(f)  # uint8 is not a [-1, 1] float video
    with pytest.raises(ValueError):
        to_uint8(torch.zeros(2, 5, 16, 16))


def test_pyav_write_decord_read_roundtrip(tmp_path):
    f = to_uint8(SyntheticVideos(1, 20, size=(32, 32), seed=3)[0]["video"])
    path = write_video(tmp_path / "a.mp4", f, fps=8)
    assert path.exists() and not list(tmp_path.glob(".*"))  # no temp file left
    r = read_video(path)
    assert r.shape == f.shape and r.dtype == np.uint8
    err = np.abs(r.astype(np.float64) - f)
    assert err.mean() < 6, err.mean()  # lossy yuv420p; tiny colourful frames are the worst case
    grey = lambda x: x.astype(np.float64) @ [0.299, 0.587, 0.114]  # noqa: E731
    assert np.abs(grey(r) - grey(f)).mean() < 3
    assert np.abs(r.astype(np.float64) - f[::-1]).mean() > 3 * err.mean()  # frame order kept
    # mpeg4 path too
    r2 = read_video(write_video(tmp_path / "b.mp4", f, codec="mpeg4"))
    assert r2.shape == f.shape and np.abs(r2.astype(np.float64) - f).mean() < 8


def test_odd_size_padded_and_gif_roundtrip(tmp_path):
    f = to_uint8(SyntheticVideos(1, 6, size=(17, 21))[0]["video"])
    r = read_video(write_video(tmp_path / "odd.mp4", f))
    assert r.shape == (6, 18, 22, 3)
    assert np.abs(r[:, :17, :21].astype(np.float64) - f).mean() < 8
    g = read_video(write_gif(tmp_path / "a.gif", f, fps=4))
    assert g.shape == f.shape
    assert np.abs(g.astype(np.float64) - f).mean() < 3


def test_write_bad_input(tmp_path):
    f = np.zeros((4, 16, 16, 3), np.uint8)
    with pytest.raises(TypeError):
        write_video(tmp_path / "a.mp4", f.astype(np.float32))
    with pytest.raises(ValueError):
        write_video(tmp_path / "a.gif", f)
    with pytest.raises(ValueError):
        write_video(tmp_path / "a.mp4", np.zeros((4, 16, 16, 2), np.uint8))
    with pytest.raises(ValueError):
        write_video(tmp_path / "a.mp4", f, fps=0)
    with pytest.raises(ValueError):
        write_gif(tmp_path / "a.mp4", f)
    assert not list(tmp_path.iterdir())


def test_read_video_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        read_video(tmp_path / "nope.mp4")
    (tmp_path / "junk.mp4").write_bytes(b"not a video at all" * 20)
    with pytest.raises(ValueError, match="junk.mp4"):
        read_video(tmp_path / "junk.mp4")


def test_video_grid():
    a = np.full((4, 8, 10, 3), 100, np.uint8)
    b = np.full((6, 8, 10, 3), 200, np.uint8)
    g = video_grid([a, b], pad=2)
    assert g.shape == (6, 18, 10, 3)
    assert (g[5, :8] == 100).all()  # shorter row holds its last frame
    assert (g[:, 8:10] == 0).all()  # black gap
    g = video_grid([a, b], pad=2, fill="black")
    assert (g[5, :8] == 0).all() and (g[3, :8] == 100).all()
    g = video_grid([[a, a], b], pad=1)  # cells side by side; narrower row padded on the right
    assert g.shape == (6, 17, 21, 3) and (g[:, 9:, 10:] == 0).all()
    gl = video_grid([a, b], labels=["none", "riflex"], pad=2)
    assert gl.shape[0] == 6 and gl.shape[1] == 18 and gl.shape[2] > 10
    assert gl[:, :8, : gl.shape[2] - 10].max() > 128  # white label text (clipped to the 8 px row)
    with pytest.raises(ValueError):
        video_grid([a], labels=["x", "y"])
    with pytest.raises(ValueError):
        video_grid([])
    with pytest.raises(TypeError):
        video_grid([a.astype(np.float32)])


# ------------------------------------------------------------------------------------------------ VideoFolder


def _make_folder(tmp_path):
    ds = SyntheticVideos(3, 24, size=(16, 24), seed=0)
    root = tmp_path / "videos"
    (root / "sub").mkdir(parents=True)
    write_video(root / "a.mp4", to_uint8(ds[0]["video"]))
    write_video(root / "sub" / "b.mp4", to_uint8(ds[1]["video"]))
    write_gif(root / "c.gif", to_uint8(ds[2]["video"]), fps=8)
    write_video(root / "short.mp4", to_uint8(ds[0]["video"][:, :3]))
    good = (root / "a.mp4").read_bytes()
    (root / "trunc.mp4").write_bytes(good[: len(good) // 2])  # moov first (faststart), media cut
    (root / "trunc_tail.mp4").write_bytes(good[: len(good) // 2 + 200])
    (root / "fake.avi").write_bytes(b"this is not a video file" * 10)
    (root / "notes.txt").write_text("ignored: not a video extension")
    return root


def test_video_folder_skips_bad_files_with_warning(tmp_path):
    root = _make_folder(tmp_path)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        vf = VideoFolder(root, clip_length=8, stride=2, seed=1)
    skipped = {p.split("/")[-1]: reason for p, reason in vf.skipped}
    assert set(skipped) == {"short.mp4", "trunc.mp4", "trunc_tail.mp4", "fake.avi"}, vf.skipped
    assert "too short" in skipped["short.mp4"]
    msgs = [str(x.message) for x in w if issubclass(x.category, RuntimeWarning)]
    for name in skipped:
        assert any(name in m for m in msgs), (name, msgs)
    assert [p.split("/")[-1] for p in vf.files] == ["a.mp4", "c.gif", "b.mp4"]
    assert len(vf) == 3
    item = vf[0]
    assert item["video"].shape == (3, 8, 16, 24) and item["video"].dtype == torch.float32
    assert -1 <= item["video"].min() and item["video"].max() <= 1
    assert 0 <= item["start"] <= 24 - 15
    # the clip is the file's frames start, start+2, ...
    ref = to_float(read_video(root / "a.mp4"))[:, item["start"]: item["start"] + 15: 2]
    torch.testing.assert_close(item["video"], ref)
    # deterministic per (seed, epoch, index)
    with pytest.warns(RuntimeWarning, match="skipping"):
        again = VideoFolder(root, clip_length=8, stride=2, seed=1)
    assert again.skipped == vf.skipped
    assert again[2]["start"] == vf[2]["start"]


def test_video_folder_resize_and_first_clip(tmp_path):
    root = _make_folder(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        sq = VideoFolder(root, clip_length=4, size=8, random_start=False, clips_per_video=2)
        rect = VideoFolder(root, clip_length=4, size=(12, 10))
    assert len(sq) == 6
    it = sq[1]
    assert it["video"].shape == (3, 4, 8, 8) and it["start"] == 0 and it["path"].endswith("a.mp4")
    assert rect[0]["video"].shape == (3, 4, 12, 10)


def test_video_folder_missing_empty_or_bad_args(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        VideoFolder(tmp_path / "missing", clip_length=4)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match="empty"):
        VideoFolder(tmp_path / "empty", clip_length=4)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.mp4").write_bytes(b"\0" * 100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(ValueError, match="none of its 1 video files"):
            VideoFolder(tmp_path / "bad", clip_length=4)
    with pytest.raises(ValueError):
        VideoFolder(tmp_path / "empty", clip_length=0)
    with pytest.raises(TypeError):
        VideoFolder(tmp_path / "empty", clip_length=4, extensions=".mp4")
