"""Videos are decoded in bounded memory (issue 13, item 4).

``read_video(path, max_short_side=s)`` decodes in order with PyAV and downsamples every frame as soon as it is
decoded; ``score_folder`` (``vispos eval frames --videos``) uses it. The slow test scores a 48-frame 2048x2048 MP4
in a subprocess and measures its peak RSS (``VmHWM``, reset after the imports via ``/proc/self/clear_refs``) above
the interpreter's RSS after imports.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vispos.data import video as V

REPO = Path(__file__).resolve().parents[1]


def _write_mp4(path: Path, size: int, frames: int) -> None:
    """A disc moving right over black, encoded frame by frame (the test never holds the whole video)."""
    import av

    with av.open(str(path), "w") as c:
        st = c.add_stream(V._pick_codec(), rate=8)
        st.width = st.height = size
        st.pix_fmt = "yuv420p"
        if st.codec_context.name == "libx264":
            st.options = {"crf": "30", "preset": "ultrafast"}
        yy, xx = np.mgrid[0:size, 0:size]
        r = size // 12
        for t in range(frames):
            f = np.zeros((size, size, 3), np.uint8)
            f[(xx - (size // 8 + t * size // 64)) ** 2 + (yy - size // 2) ** 2 < r * r] = (230, 40, 40)
            for p in st.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in st.encode():
            c.mux(p)


def test_streamed_decode_equals_whole_decode_then_downsample(tmp_path):
    p = tmp_path / "v.mp4"
    _write_mp4(p, 192, 10)
    full = V.read_video(p)
    assert full.shape == (10, 192, 192, 3)
    small = V.read_video(p, max_short_side=64)
    assert small.shape == (10, 64, 64, 3)
    np.testing.assert_array_equal(small, V.shrink_frames(full, 64))
    # chunks of one frame give the same frames as one big chunk
    chunks = list(V.iter_video(p, max_short_side=64, chunk_bytes=1))
    assert len(chunks) == 10 and all(c.shape[0] == 1 for c in chunks)
    np.testing.assert_array_equal(np.concatenate(chunks), small)
    # the decord clip reader (VideoFolder's) sees the same pixels as the sequential PyAV reader
    clip = V._decode(V._open_reader(p), range(10), p)
    assert np.abs(clip.astype(int) - full.astype(int)).max() <= 2
    assert V.read_video(p, max_short_side=500).shape == full.shape  # never upsampled


def test_gif_header_claiming_huge_frames_is_refused_before_decoding(tmp_path):
    import struct

    root = tmp_path / "videos"
    root.mkdir()
    bomb = root / "bomb.gif"
    hdr = b"GIF89a" + struct.pack("<HHBBB", 65535, 65535, 0xF0, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    bomb.write_bytes(hdr + b"\x2c" + struct.pack("<HHHHB", 0, 0, 65535, 65535, 0) + b"\x02\x02\x44\x01\x00\x3b")
    with pytest.raises(V.VideoReadError, match=r"bomb.gif.*(65535x65535|decompression-bomb)"):
        V.read_video(bomb)
    frames = np.zeros((6, 16, 16, 3), np.uint8)
    for t in range(6):
        frames[t, :, 2 * t:2 * t + 3] = 255  # frames differ (PIL merges identical GIF frames)
    good = V.write_gif(root / "good.gif", frames)
    from vispos.eval.video_metrics import score_folder

    with pytest.warns(RuntimeWarning, match="bomb.gif"):
        rows, skipped = score_folder(root, 4)
    assert [Path(r["path"]).name for r in rows] == [Path(good).name]
    assert [Path(p).name for p, _ in skipped] == ["bomb.gif"]


@pytest.mark.slow
def test_scoring_a_2048px_48_frame_video_stays_under_1gb_above_baseline(tmp_path):
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc/self/clear_refs to reset the peak RSS")
    root = tmp_path / "videos"
    root.mkdir()
    _write_mp4(root / "big.mp4", 2048, 48)
    code = f"""
import json, resource, sys
from vispos.eval.video_metrics import score_folder

def status(key):  # kB from /proc/self/status
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])

import_peak = status("VmHWM")
base = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:  # reset the high-water mark to the current RSS (Linux)
    f.write("5")
rows, skipped = score_folder({str(root)!r}, 16, fit_trajectories=True)
peak = status("VmHWM")
print(json.dumps(dict(base_mb=base / 1024, peak_mb=peak / 1024, import_peak_mb=import_peak / 1024,
                      frames=rows[0]["num_frames"], decoded=rows[0]["decoded_size"], motion=rows[0]["motion"])))
"""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads(r.stdout.strip().splitlines()[-1])
    print(m)
    assert m["frames"] == 48 and m["decoded"] == [256, 256] and m["motion"] > 0
    assert m["peak_mb"] - m["base_mb"] < 1024, m  # see docs/robustness.md for the measured numbers
