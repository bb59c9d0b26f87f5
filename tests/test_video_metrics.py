"""Model-free frame-extrapolation metrics on constructed videos whose answer is known."""
import json
import warnings

import numpy as np
import pytest

from vispos.data.video import SyntheticVideos, to_uint8, write_video
from vispos.eval.video_metrics import (
    estimate_repetition_frame,
    extrapolate_centres,
    frame_difference,
    motion,
    no_repeat,
    object_centres,
    preprocess,
    score_folder,
    score_video,
    self_similarity,
    slowdown_ratio,
    summarize_scores,
    tail_novelty,
    trajectory_error,
)

L = 12  # "training length" of the constructed clips


def _video(seed, length=36, **kw):
    kw.setdefault("size", (32, 32))
    ds = SyntheticVideos(1, length, seed=seed, **kw)
    return ds, to_uint8(ds.render(0, length))


def _loop(frames, P, T):
    return np.concatenate([frames[:P]] * (T // P + 1))[:T]


def test_preprocess_grey_and_area_downsample():
    f = np.zeros((2, 96, 128, 3), np.uint8)
    f[..., 0] = 255
    x = preprocess(f)
    assert x.shape == (2, 64, 85) and x.dtype == np.float32
    np.testing.assert_allclose(x, 0.299 * 255, rtol=1e-5)
    small = preprocess(np.full((3, 20, 30), 7, np.uint8))  # grey input, never upsampled
    assert small.shape == (3, 20, 30) and np.all(small == 7)
    # area downsampling averages: a 2x2 checker becomes flat grey
    c = np.zeros((1, 128, 128, 3), np.uint8)
    c[:, ::2, ::2] = 255
    c[:, 1::2, 1::2] = 255
    np.testing.assert_allclose(preprocess(c), 127.5, atol=0.01)
    with pytest.raises(TypeError):
        preprocess(f.astype(np.float32))
    with pytest.raises(TypeError, match="to_uint8"):
        motion(np.zeros((3, 8, 8, 3), np.float32))


@pytest.mark.parametrize("P", [5, 7, 10])
def test_looped_clip_period_and_score(P):
    _, full = _video(seed=P, length=40)
    loop = _loop(full, P, 40)
    r = self_similarity(loop)
    assert r["period"] == P
    assert r["score"] > 0.95 and r["rise"] > 0.5
    assert len(r["lag_profile"]) == 40 - 10 + 1 and r["lag_profile"][0] == pytest.approx(1.0)
    assert estimate_repetition_frame(loop) == P


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_non_repeating_clip_scores_low(seed):
    _, full = _video(seed=seed, length=40)
    r = self_similarity(full)
    assert r["score"] < 0.4, r
    assert estimate_repetition_frame(full) is None


def test_repetition_frame_survives_codec_noise(tmp_path):
    from vispos.data.video import read_video

    _, full = _video(seed=11, length=40)
    loop = read_video(write_video(tmp_path / "loop.mp4", _loop(full, 8, 40)))
    assert estimate_repetition_frame(loop) == 8
    assert no_repeat(loop, 8)["repetitive"] is True


def test_no_repeat_flags_loop_not_novel():
    for seed in range(3):
        _, full = _video(seed=seed, length=36)
        P = 9
        loop = _loop(full, P, 36)
        r = no_repeat(loop, N_k=P)
        assert r["repetitive"] is True and r["s_star"] == P and r["D"] < 1e-6
        # an N_k off by a couple of frames still finds the loop inside the window
        assert no_repeat(loop, N_k=P + 2)["s_star"] == P
        n = no_repeat(full, N_k=P)
        assert n["repetitive"] is False and n["non_repetitive"] is True and n["D"] > 3 * n["tau"]
    short = no_repeat(full[:5], N_k=20)
    assert short["D"] is None and short["repetitive"] is None
    with pytest.raises(ValueError):
        no_repeat(full, N_k=0)
    with pytest.raises(ValueError):
        no_repeat(full, N_k=8, tau=-1)


def test_frame_difference_known_values():
    f = np.zeros((4, 8, 8, 3), np.uint8)
    assert frame_difference(f) == 0.0 and motion(f) == 0.0
    f[1::2] = 255
    assert frame_difference(f) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        frame_difference(f[:1])
    with pytest.raises(ValueError):
        motion(f[:1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_slowdown_ratio(seed):
    ds, full = _video(seed=seed, length=36, num_objects=1)
    same = slowdown_ratio(full, L)
    slow = np.concatenate([full[:L], to_uint8(ds.render(0, 24, start=L, time_scale=0.5))])
    frozen = np.concatenate([full[:L], np.repeat(full[L - 1: L], 24, axis=0)])
    assert same == pytest.approx(1.0, abs=0.1)
    assert slowdown_ratio(slow, L) == pytest.approx(0.5, abs=0.07)
    assert slowdown_ratio(frozen, L) == pytest.approx(0.0, abs=1e-5)
    assert np.isnan(slowdown_ratio(np.repeat(full[:1], 20, 0), L))
    with pytest.raises(ValueError):
        slowdown_ratio(full[: L + 1], L)


def test_tail_novelty():
    _, full = _video(seed=4, length=36)
    loop = _loop(full, L, 36)
    frozen = np.concatenate([full[:L], np.repeat(full[L - 1: L], 24, axis=0)])
    assert tail_novelty(loop, L)["novelty"] == pytest.approx(0.0, abs=1e-6)
    assert tail_novelty(frozen, L)["novelty"] == pytest.approx(0.0, abs=1e-6)
    r = tail_novelty(full, L)
    assert r["novelty"] > 0.5 and len(r["per_frame"]) == 24 and r["head_spread"] > 0


def test_object_centres_match_trajectories():
    for seed in range(3):
        ds, full = _video(seed=seed, length=30, num_objects=1)
        c, radii = object_centres(full, return_radii=True)
        tr = ds.trajectories(0, 30)
        assert c.shape == (30, 1, 2)
        np.testing.assert_allclose(c, tr, atol=0.2)
        assert abs(radii[0] - ds.objects(0)["objects"][0]["radius"]) <= 0.5
    ds, full = _video(seed=5, length=30, num_objects=3)
    te = trajectory_error(object_centres(full), ds.trajectories(0, 30))
    assert te["mean_px"] < 1.0 and te["missing"] < 0.1
    assert sorted(te["matching"]) == [0, 1, 2]


def test_trajectory_error_matching_and_offsets():
    true = np.zeros((5, 2, 2))
    true[:, 1] = 10.0
    pred = true[:, ::-1].copy()  # detections in the other order
    pred[3:, 0, 0] += 3.0  # pred 0 (= true 1) drifts by 3 px from frame 3
    r = trajectory_error(pred, true, start=3)
    assert r["matching"] == [1, 0]
    assert r["mean_px"] == pytest.approx(1.5) and r["final_px"] == pytest.approx(1.5)
    assert r["per_frame"][:3] == [0.0, 0.0, 0.0]
    pred[4, 1] = np.nan  # a lost detection
    r = trajectory_error(pred, true, start=3)
    assert r["missing"] == pytest.approx(0.25)
    with pytest.raises(ValueError):
        trajectory_error(pred[:4], true)


def test_extrapolate_centres_predicts_bouncing_continuation():
    for seed in range(3):
        ds, full = _video(seed=seed, length=36, num_objects=1)
        c, radii = object_centres(full[:L], return_radii=True)
        ex = extrapolate_centres(c, 36, (32, 32), radii=radii)
        assert trajectory_error(ex, ds.trajectories(0, 36), start=L)["mean_px"] < 1.0


def test_score_video_keys_json_and_verdicts():
    ds, full = _video(seed=2, length=36)
    loop = _loop(full, 9, 36)
    rows = [score_video(v, L, N_k=9, true_centres=ds.trajectories(0, 36)) for v in (full, loop)]
    json.dumps(rows, allow_nan=False)
    novel, looped = rows
    assert novel["norepeat_repeats"] is False and looped["norepeat_repeats"] is True
    assert looped["repetition_frame"] == 9 and novel["repetition_frame"] is None
    assert looped["selfsim_score"] > 0.95 > 0.4 > novel["selfsim_score"]
    assert novel["traj_tail_px"] < 1.0 < looped["traj_tail_px"]
    assert novel["tail_novelty"] > 0.5 > looped["tail_novelty"]
    fit = score_video(full, L, fit_trajectories=True)
    assert fit["traj_source"] == "constant_velocity_fit" and fit["norepeat_D"] is None
    at_train_len = score_video(full[:L], L)  # s = 1: tail metrics are undefined, not an error
    assert at_train_len["slowdown_ratio"] is None and at_train_len["tail_novelty"] is None
    s = summarize_scores(rows)
    assert s["n"] == 2 and s["norepeat_share"] == 0.5 and s["repeat_share"] == 0.5
    assert s["mean_motion"] == pytest.approx((novel["motion"] + looped["motion"]) / 2)


def test_score_folder(tmp_path):
    _, full = _video(seed=1, length=24)
    write_video(tmp_path / "a.mp4", full)
    write_video(tmp_path / "b.mp4", _loop(full, 6, 24))
    (tmp_path / "bad.mp4").write_bytes(b"junk" * 50)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        rows, skipped = score_folder(tmp_path, train_len=8, N_k=6)
    assert [r["path"].split("/")[-1] for r in rows] == ["a.mp4", "b.mp4"]
    assert len(skipped) == 1 and skipped[0][0].endswith("bad.mp4")
    assert any("bad.mp4" in str(x.message) for x in w)
    assert rows[1]["repetition_frame"] == 6 and rows[1]["norepeat_repeats"] is True
    with pytest.raises(ValueError, match="does not exist"):
        score_folder(tmp_path / "missing", train_len=8)
    with pytest.raises(ValueError):
        score_folder(tmp_path, train_len=8, N_k=-3)
