"""Video metrics on natural content with known answers: pans and zooms over scikit-image's photographs (exact
sub-pixel camera paths), with sensor noise and H.264 compression (PyAV)."""
import json

import numpy as np
import pytest

pytest.importorskip("cv2")
pytest.importorskip("skimage")

from natural_clips import h264, loop_phase, noisy, pan, photo, zoom  # noqa: E402

from vispos.cli import main  # noqa: E402
from vispos.data.video import write_video  # noqa: E402
from vispos.eval.video_metrics import (  # noqa: E402
    estimate_repetition_frame,
    find_loop,
    frame_difference,
    motion,
    no_repeat,
    score_folder,
    score_video,
    self_similarity,
    slowdown_ratio,
    static_check,
    summarize_scores,
)

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera")


@pytest.fixture(scope="module")
def photos():
    return {n: photo(n) for n in PHOTOS}


@pytest.mark.parametrize("P", range(4, 31))
def test_loop_period_exact_under_noise_and_h264(P, photos, tmp_path):
    img = photos[PHOTOS[P % len(PHOTOS)]]
    T = max(40, 3 * P + 8)
    clip = pan(img, loop_phase(T, P)) if P % 2 else zoom(img, loop_phase(T, P), rate=1.015)
    clip = h264(noisy(clip, 3, seed=P), tmp_path, crf=28)
    assert estimate_repetition_frame(clip) == P
    r = find_loop(clip)
    assert r["score"] > 0.75 and abs(r["period_subframe"] - P) < 0.1


@pytest.mark.parametrize("name", PHOTOS)
def test_no_loop_in_novel_pans_and_zooms(name, photos, tmp_path):
    img = photos[name]
    for clip in (pan(img, np.arange(64)), zoom(img, np.arange(64), rate=1.02)):
        clip = h264(noisy(clip, 3), tmp_path)
        assert find_loop(clip)["score"] < 0.4
        assert estimate_repetition_frame(clip) is None


@pytest.mark.parametrize("novel,P", [(32, 8), (24, 12), (40, 6)])
def test_loop_after_novel_frames_detected(novel, P, photos, tmp_path):
    clip = h264(noisy(pan(photos["chelsea"], loop_phase(64, P, novel)), 3), tmp_path)
    # over the whole clip the loop is diluted by the novel frames (the old detector's failure)
    assert self_similarity(clip)["score"] < 0.5
    row = score_video(clip, train_len=novel)
    assert row["repetition_frame"] == P and row["loop_score"] > 0.9
    assert novel - 8 <= row["loop_start"] <= novel + 2


@pytest.mark.parametrize("period,kind", [(10.5, "pan"), (10.5, "zoom"), (7.5, "pan")])
def test_non_integer_period(period, kind, photos, tmp_path):
    img = photos["astronaut"]
    ph = loop_phase(48, period)
    clip = h264(noisy(pan(img, ph) if kind == "pan" else zoom(img, ph, rate=1.02), 3), tmp_path)
    N = estimate_repetition_frame(clip)
    assert N == pytest.approx(period, abs=0.05)  # not 2 x period, where the frames line up exactly
    assert 10 <= estimate_repetition_frame(clip) <= 11 if period == 10.5 else True
    # with only one period in range the sub-frame peak still finds it
    short = h264(noisy(pan(img, loop_phase(28, period)), 3), tmp_path)
    r = self_similarity(short, max_lag=int(period) + 3)
    assert r["period_subframe"] == pytest.approx(period, abs=0.3)


def test_flow_speed_reads_pan_speed(photos):
    for v in (0.5, 1.0, 2.0, 4.0):
        clip = pan(photos["coffee"], np.arange(12), speed=(v, 0.0))
        assert motion(clip) == pytest.approx(100 * v / 64, rel=0.1)


def _slowed_set(photos, tmp_path, names, L=16, crf=23):
    """Reference clips (L frames) and generated clips of 2L frames: same speed, 2x slower, 3x slower."""
    ref_dir, gen = tmp_path / "ref", {s: tmp_path / f"gen_{s}" for s in (1, 2, 3)}
    for i, (name, kind) in enumerate(names):
        img = photos[name]

        def f(ph, img=img, kind=kind):
            return pan(img, ph, speed=(2.0, 0.8)) if kind == "pan" else zoom(img, ph, rate=1.03)
        stem = f"{name}_{kind}"
        write_video(ref_dir / f"{stem}.mp4", noisy(f(np.arange(L)), 3, seed=i), crf=crf)
        for s, d in gen.items():
            write_video(d / f"{stem}.mp4", noisy(f(np.arange(2 * L) / s), 3, seed=10 + i), crf=crf)
    return ref_dir, gen


def _check_slowed(ref_dir, gen, n):
    by = {}
    for s, d in gen.items():
        rows, skipped = score_folder(d, 16, reference=ref_dir)
        assert not skipped and len(rows) == n
        by[s] = {r["path"].split("/")[-1]: r["speed_vs_reference"] for r in rows}
    for name, v in by[2].items():
        assert v == pytest.approx(0.5, abs=0.1), name
    for name, v in by[3].items():
        assert v == pytest.approx(1 / 3, abs=0.08), name
    for name, v in by[1].items():
        assert v == pytest.approx(1.0, abs=0.25), name
    # uniform slow motion has no head/tail contrast: the within-clip ratio cannot see it
    rows, _ = score_folder(gen[2], 16)
    assert all(r["slowdown_ratio"] == pytest.approx(1.0, abs=0.25) for r in rows)


def test_slowed_clips_read_against_reference(photos, tmp_path):
    ref_dir, gen = _slowed_set(photos, tmp_path, [("astronaut", "pan"), ("rocket", "zoom")])
    _check_slowed(ref_dir, gen, 2)
    # the same through `vispos eval frames --videos DIR --reference DIR`
    out = tmp_path / "scored"
    assert main(["eval", "frames", "--videos", str(gen[3]), "--reference", str(ref_dir), "--train-len", "16",
                 "--out", str(out), "--n-k", "12", "--norepeat-window", "2", "--scale-free"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert {r["file"]: r["reference"] for r in res["per_video"]} == {"astronaut_pan.mp4": "astronaut_pan.mp4",
                                                                     "rocket_zoom.mp4": "rocket_zoom.mp4"}
    for r in res["per_video"]:
        assert r["speed_vs_reference"] == pytest.approx(1 / 3, abs=0.08)
        assert r["norepeat_N_k"] == 12 and r["norepeat_window"] == 2 and r["norepeat_scale_free"] is True
        assert r["norepeat_repeats"] is False
    assert res["summary"]["mean_speed_vs_reference"] == pytest.approx(1 / 3, abs=0.08)
    assert "speed_vs_reference" in (out / "table.md").read_text()
    (gen[2] / "extra.mp4").write_bytes((gen[2] / "rocket_zoom.mp4").read_bytes())
    with pytest.raises(ValueError, match="no reference video"):
        score_folder(gen[2], 16, reference=ref_dir)
    with pytest.raises(ValueError, match="reference folder"):
        score_folder(gen[1], 16, reference=tmp_path / "nope")


@pytest.mark.slow
def test_slowed_clips_read_against_reference_all_photos(photos, tmp_path):
    names = [(n, k) for n in PHOTOS for k in ("pan", "zoom")]
    ref_dir, gen = _slowed_set(photos, tmp_path, names)
    _check_slowed(ref_dir, gen, len(names))


def test_static_with_noise_reads_static(photos, tmp_path):
    for i, name in enumerate(PHOTOS[:3]):
        still = pan(photos[name], np.zeros(32))
        for sigma in (5, 10):
            clip = h264(noisy(still, sigma, seed=i), tmp_path, crf=23)
            r = static_check(clip)
            assert r["static"], (name, sigma, r)
            assert frame_difference(noisy(still, sigma, seed=i)) > 0.01  # a frame difference reads noise as change
            assert np.isnan(slowdown_ratio(clip, 16))
        # a slow pan (0.1 px per frame, 3 px over the clip) is not static
        slow = h264(noisy(pan(photos[name], np.arange(32) * 0.1, speed=(1.0, 0.0)), 5, seed=i), tmp_path)
        assert not static_check(slow)["static"]
    row = score_video(h264(noisy(pan(photos["coffee"], np.zeros(40)), 8), tmp_path), 16)
    assert row["static"] is True and row["slowdown_ratio"] is None and row["repetition_frame"] is None
    with pytest.raises(ValueError, match="floor"):
        static_check(still, floor=0)


def test_scale_free_norepeat_where_the_absolute_threshold_fails(photos, tmp_path):
    img = photos["coffee"]
    loop = noisy(pan(img, loop_phase(48, 12)), 16, seed=1)  # a true loop under strong sensor noise
    dim = (pan(img, np.arange(48)) * 0.15 + 100).astype(np.uint8)  # novel, but low contrast (fog, dusk)
    dim = h264(noisy(dim, 2, seed=2), tmp_path, crf=23)
    novel = h264(noisy(pan(img, np.arange(48)), 3, seed=3), tmp_path, crf=23)
    a_loop, a_dim, a_novel = (no_repeat(v, 12) for v in (loop, dim, novel))
    r_loop, r_dim, r_novel = (no_repeat(v, 12, scale_free=True) for v in (loop, dim, novel))
    # absolute tau = 10 grey levels: the noisy loop reads non-repetitive, the dim novel clip repetitive
    assert a_loop["repetitive"] is False and a_loop["D"] > 10
    assert a_dim["repetitive"] is True and a_dim["D"] < 10
    assert a_novel["repetitive"] is False
    # scale-free: D over the clip's own typical frame distance gets all three right
    assert r_loop["repetitive"] is True and r_loop["D_rel"] < 0.45
    assert r_dim["repetitive"] is False and r_novel["repetitive"] is False
    assert min(r_dim["D_rel"], r_novel["D_rel"]) > 0.7
    # a settable tau also fixes the noisy loop
    assert no_repeat(loop, 12, tau=1.5 * a_loop["D"])["repetitive"] is True
    with pytest.raises(ValueError, match="tau"):
        no_repeat(loop, 12, tau=-0.1, scale_free=True)
    with pytest.raises(TypeError, match="scale_free"):
        no_repeat(loop, 12, scale_free="yes")


def test_summary_loop_statistics_over_detected_loops_only(photos, tmp_path):
    img = photos["camera"]
    rows = [score_video(pan(img, loop_phase(40, P)), 12) for P in (6, 10)]
    rows += [score_video(pan(img, np.arange(40)), 12), score_video(pan(img, np.zeros(40)), 12)]
    assert [r["repetition_frame"] for r in rows] == [6, 10, None, None]
    assert rows[2]["selfsim_period"] is None and rows[2]["loop_period"] is None
    s = summarize_scores(rows)
    assert s["n"] == 4 and s["n_loops"] == 2 and s["repeat_share"] == 0.5
    assert s["mean_loop_period"] == pytest.approx(8.0) and s["median_loop_period"] == pytest.approx(8.0)
    assert s["mean_repetition_frame"] == pytest.approx(8.0) and s["n_static"] == 1
    assert s["static_share"] == 0.25


def test_videos_mode_latent_frames_of_a_causal_vae(tmp_path, capsys):
    """HunyuanVideo: 129 video frames = (129 - 1) / 4 + 1 = 33 latent frames -> RIFLEx k = 4, N_k = 50 latent."""
    from vispos.eval import frames as FR

    vdir = tmp_path / "v"
    write_video(vdir / "a.mp4", pan(photo("camera"), np.arange(20)))
    res = FR.eval_frames(dict(videos=str(vdir), train_len=129, temporal_patch=4, rope_base=256, rope_dim=16,
                              out=str(tmp_path / "o")), progress=False)
    assert res["train_len_latent"] == 33
    assert (res["identified"]["default_k"], res["identified"]["default_N_k"]) == (4, 50)
    assert res["N_k"] == 200  # a period of 50 latent frames spans 200 video frames
    res = FR.eval_frames(dict(videos=str(vdir), train_len=33, temporal_patch=4, rope_base=256, rope_dim=16,
                              out=str(tmp_path / "o2")), progress=False)
    assert res["train_len_latent"] == 9
    with pytest.raises(ValueError, match="latent frames"):
        FR.eval_frames(dict(videos=str(vdir), train_len=130, temporal_patch=4, out=str(tmp_path / "o3")))
    with pytest.raises(ValueError, match="reference"):
        FR.eval_frames(dict(videos=str(vdir), train_len=8, reference=str(tmp_path / "nope"),
                            out=str(tmp_path / "o4")))
    with pytest.raises(ValueError, match="videos mode only"):
        FR.check_eval_config(dict(FR.EVAL_DEFAULTS, checkpoint="x.pt", tau=3.0), need_file=False)
