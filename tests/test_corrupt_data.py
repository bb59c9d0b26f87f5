"""Corrupt and odd data files are skipped, counted and named, never a crash (issue 13, items 2 and 8)."""
from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vispos.data.files import scan_files
from vispos.data.image_folder import CheckedImageFolder, check_image, load_rgb


def png_bomb(w: int = 65535, h: int = 65535) -> bytes:
    """A valid-looking 100-byte PNG whose header claims ``w x h`` pixels."""
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def _encoded(fmt: str, seed: int = 0) -> bytes:
    arr = (np.random.default_rng(seed).random((24, 32, 3)) * 255).astype(np.uint8)
    b = io.BytesIO()
    Image.fromarray(arr).save(b, fmt)
    return b.getvalue()


BAD = {
    "zero.jpg": lambda: b"",
    "text.png": lambda: b"hello, this is not an image\n" * 3,
    "trunc.jpg": lambda: _encoded("JPEG")[: len(_encoded("JPEG")) // 2],
    "trunc.png": lambda: _encoded("PNG")[: len(_encoded("PNG")) // 2],
    "bomb.png": png_bomb,
}
REASONS = {"zero.jpg": "empty file", "text.png": "not an image", "trunc.jpg": "runcated", "trunc.png": "corrupt",
           "bomb.png": "decompression-bomb"}


def make_folder(root: Path, bad=True) -> Path:
    for c, k in (("a", 0), ("b", 1)):
        (root / c).mkdir(parents=True)
        for i in range(3):
            (root / c / f"ok{i}.png").write_bytes(_encoded("PNG", seed=10 * k + i))
        (root / c / "ok.jpg").write_bytes(_encoded("JPEG", seed=99 + k))
    if bad:
        for name, make in BAD.items():
            (root / "a" / name).write_bytes(make())
    return root


@pytest.mark.parametrize("name", sorted(BAD))
def test_check_image_names_the_problem(tmp_path, name):
    p = tmp_path / name
    p.write_bytes(BAD[name]())
    reason = check_image(p)
    assert REASONS[name] in reason, reason
    assert check_image(tmp_path.joinpath("x.png").write_bytes(_encoded("PNG")) and tmp_path / "x.png") == ""


def test_checked_image_folder_skips_and_names_bad_files(tmp_path):
    root = make_folder(tmp_path / "imgs")
    with pytest.warns(RuntimeWarning, match="CheckedImageFolder: skipping") as rec:
        ds = CheckedImageFolder(root)
    assert ds.classes == ["a", "b"] and len(ds) == 8
    names = sorted(Path(p).name for p, _ in ds.skipped)
    assert names == sorted(BAD), ds.skipped
    assert len([w for w in rec if "skipping" in str(w.message)]) == len(BAD)
    for i in range(len(ds)):
        img, y = ds[i]
        assert img.mode == "RGB" and img.size == (32, 24) and y in (0, 1)


def _png_bad_pixels() -> bytes:
    """A PNG whose chunks all have valid CRCs (verify() passes) but whose pixel stream is not zlib data."""
    data = _encoded("PNG")
    i = data.index(b"IDAT")
    n = struct.unpack(">I", data[i - 4:i])[0]
    junk = bytes((7 * k + 3) % 256 for k in range(n))
    return data[:i + 4] + junk + struct.pack(">I", zlib.crc32(b"IDAT" + junk) & 0xFFFFFFFF) + data[i + 8 + n:]


def test_a_file_that_fails_only_when_decoded_is_replaced_deterministically(tmp_path):
    root = make_folder(tmp_path / "imgs", bad=False)
    (root / "a" / "ok1.png").write_bytes(_png_bad_pixels())
    assert check_image(root / "a" / "ok1.png") == ""  # the cheap checks cannot see it
    ds = CheckedImageFolder(root)
    assert ds.samples[2][0].endswith("ok1.png")
    with pytest.warns(RuntimeWarning, match="ok1.png.*failed to decode when loaded"):
        img, y = ds[2]
    assert np.array_equal(np.asarray(img), np.asarray(load_rgb(ds.samples[3][0]))) and y == ds.samples[3][1]
    assert [Path(p).name for p, _ in ds.skipped] == ["ok1.png"]
    # a fresh dataset (a resumed run) makes the same substitution: a resume cannot loop on the file
    ds2 = CheckedImageFolder(root)
    with pytest.warns(RuntimeWarning):
        img2, y2 = ds2[2]
    assert np.array_equal(np.asarray(img2), np.asarray(img)) and y2 == y


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    a16 = (np.arange(24 * 32, dtype=np.uint32).reshape(24, 32) * 85).astype(np.uint16)  # 0 .. 65195
    p = tmp_path / "g16.png"
    Image.fromarray(a16).save(p)
    assert Image.open(p).mode.startswith("I")
    naive = np.asarray(Image.open(p).convert("RGB"))[..., 0]
    assert (naive == 255).mean() > 0.9  # what PIL's convert does: almost everything white
    got = np.asarray(load_rgb(p))
    assert got.shape == (24, 32, 3) and (got[..., 0] == got[..., 2]).all()
    np.testing.assert_array_equal(got[..., 0], np.rint(a16 * (255 / 65535)).astype(np.uint8))


def test_16_bit_png_in_eval_data_is_scaled_not_clipped(tmp_path):
    """``--data`` goes through timm's ImageDataset: its items are decoded like --train-data's (16-bit scaled)."""
    from vispos.eval.timm_data import image_dataset

    a16 = (np.arange(24 * 32, dtype=np.uint32).reshape(24, 32) * 85).astype(np.uint16)
    for c in ("a", "b"):
        (tmp_path / "d" / c).mkdir(parents=True)
        Image.fromarray(a16).save(tmp_path / "d" / c / "g16.png")
    ds = image_dataset(tmp_path / "d")
    img, target = ds[1]
    got = np.asarray(img)
    assert target == 1 and got.shape == (24, 32, 3)
    np.testing.assert_array_equal(got[..., 0], np.rint(a16 * (255 / 65535)).astype(np.uint8))
    assert (got[..., 0] == 255).mean() < 0.01  # not PIL's clip to white
    import pickle

    again = pickle.loads(pickle.dumps(ds))
    np.testing.assert_array_equal(np.asarray(again[1][0]), got)


def test_empty_class_folder_is_named(tmp_path):
    root = make_folder(tmp_path / "imgs", bad=False)
    (root / "c_empty").mkdir()
    with pytest.raises(ValueError, match=r"class folder\(s\) \['c_empty'\] hold no files"):
        CheckedImageFolder(root)
    (root / "c_empty" / "zero.png").write_bytes(b"")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(ValueError, match=r"class folder\(s\) \['c_empty'\] hold no usable image"):
            CheckedImageFolder(root)


def test_scan_lists_dangling_symlinks_loops_and_folders_named_like_files(tmp_path):
    root = tmp_path / "v"
    root.mkdir()
    (root / "good.mp4").write_bytes(b"x")
    os.symlink(root / "missing.mp4", root / "dangling.mp4")
    os.symlink(root / "loop.mp4", root / "loop.mp4")
    (root / "dir.mp4").mkdir()
    (root / "sub").mkdir()
    os.symlink(root, root / "sub" / "up")  # a folder loop
    (root / "notes.txt").write_text("ignored: other extension")
    files, skipped = scan_files(root, (".mp4",))
    assert [f.name for f in files] == ["good.mp4"]
    why = {Path(p).name: r for p, r in skipped}
    assert "dangling symlink" in why["dangling.mp4"]
    assert "symlink loop" in why["loop.mp4"]
    assert "directory" in why["dir.mp4"]
    assert "symlink loop" in why["up"]


def test_training_on_a_folder_with_corrupt_images_finishes_also_after_a_resume(tmp_path):
    """train resolution on ImageFolders holding every kind of bad file (and one that fails only when decoded):
    the run finishes, results.json names the skipped files, and a --resume of the finished run finishes too."""
    import json

    from vispos.cli import main

    train = make_folder(tmp_path / "train")
    (train / "b" / "ok1.png").write_bytes(_png_bad_pixels())  # passes the scan, fails when decoded
    evald = make_folder(tmp_path / "eval")
    out = tmp_path / "out"
    argv = ["train", "resolution", "--model-kwargs", "{patch_size: 8, embed_dim: 32, depth: 1, num_heads: 2}",
            "--pe", "ape", "--sizes", "16", "--train-size", "16", "--steps", "3", "--batch-size", "4",
            "--ckpt-every", "1", "--train-data", str(train), "--data", str(evald), "--device", "cpu", "--out",
            str(out), "--no-progress"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert main(argv) == 0
        first = json.loads((out / "results.json").read_text())
        assert main(argv + ["--resume"]) == 0
    again = json.loads((out / "results.json").read_text())
    sk = first["skipped_images"]
    assert sorted(Path(p).name for p, _ in sk["data"]) == sorted(BAD)
    names = {Path(p).name for p, _ in sk["train_data"]}
    assert set(BAD) <= names <= set(BAD) | {"ok1.png"}  # scan-time skips, plus the decode failure if drawn
    assert [r["top1"] for r in again["rows"]] == [r["top1"] for r in first["rows"]]
    assert again["skipped_images"]["data"] == sk["data"]


def test_short_videos_are_skipped_not_scored_and_decoders_stay_quiet(tmp_path):
    """1- and 2-frame videos are listed as skipped (they used to be scored with every metric None, diluting the
    summary), and decord/ffmpeg print nothing on stderr for broken files: the reasons are in ``skipped``."""
    import subprocess
    import sys

    from vispos.data.video import write_video

    root = tmp_path / "v"
    root.mkdir()
    rng = np.random.default_rng(0)
    write_video(root / "good.mp4", (rng.random((12, 32, 32, 3)) * 255).astype(np.uint8))
    write_video(root / "one.mp4", (rng.random((1, 32, 32, 3)) * 255).astype(np.uint8))
    write_video(root / "two.mp4", (rng.random((2, 32, 32, 3)) * 255).astype(np.uint8))
    data = (root / "good.mp4").read_bytes()
    (root / "trunc.mp4").write_bytes(data[: len(data) // 3])
    (root / "junk.mp4").write_bytes(b"\x00junk" * 100)
    code = f"""
import json, warnings
from vispos.data.video import VideoFolder
from vispos.eval.video_metrics import score_folder
warnings.simplefilter("ignore")
rows, skipped = score_folder({str(root)!r}, 4)
ds = VideoFolder({str(root)!r}, 4)
print(json.dumps(dict(rows=[r["path"] for r in rows], skipped=skipped, folder_skipped=ds.skipped)))
"""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    import json

    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert [Path(p).name for p in out["rows"]] == ["good.mp4"]
    why = {Path(p).name: reason for p, reason in out["skipped"]}
    assert set(why) == {"one.mp4", "two.mp4", "trunc.mp4", "junk.mp4"}, why
    assert "too short to score: 1 frame" in why["one.mp4"] and "2 frame" in why["two.mp4"]
    assert {Path(p).name for p, _ in out["folder_skipped"]} == {"one.mp4", "two.mp4", "trunc.mp4", "junk.mp4"}
    for noise in ("moov atom", "partial file", "ERROR opening", "video_reader.cc", "Invalid data"):
        assert noise not in r.stderr, r.stderr


def test_train_video_on_a_folder_with_bad_files_finishes_and_names_them(tmp_path):
    import json

    from vispos.data.video import write_video
    from vispos.eval import frames as FR

    root = tmp_path / "v"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        write_video(root / f"good{i}.mp4", (rng.random((8, 16, 16, 3)) * 255).astype(np.uint8))
    (root / "junk.mp4").write_bytes(b"\x00junk" * 100)
    os.symlink(root / "gone.mp4", root / "dangling.mp4")
    cfg = dict(data=str(root), frames=4, size=8, patch=[1, 4, 4], dim=32, depth=1, num_heads=2, batch_size=2,
               pe_kwargs={"dims": [8, 4, 4], "base": 10.0}, steps=2, warmup=1, ckpt_every=1, ema=0.0, device="cpu",
               out=str(tmp_path / "out"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        s = FR.train_video(dict(cfg, stop_after=1), progress=False)
        assert not s["done"]
        s = FR.train_video(cfg, resume=True, progress=False)  # the resume finishes past the bad files too
    assert s["done"] and s["steps"] == 2
    names = sorted(Path(p).name for p, _ in s["skipped_videos"])
    assert names == ["dangling.mp4", "junk.mp4"]
    written = json.loads((tmp_path / "out" / "train.json").read_text())["summary"]["skipped_videos"]
    assert sorted(Path(p).name for p, _ in written) == names
