"""The fast read path: bitshuffle-LZ4 decoded in place, one-pass conversion, read_into."""

from __future__ import annotations

import numpy as np
import pytest

from sxlab.io._read_kernels import convert_flagged, flag_in_place
from sxlab.io.compression import BlobError, bslz4_decode_into, compress, decompress
from sxlab.io.hdf5 import open_run, value_flags
from tests.test_io_hdf5 import expected_image, flat_detector, make_frames, write_run


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint32", "int32", "float32"])
@pytest.mark.parametrize("n", [1, 7, 8, 4099, 70001])
def test_bslz4_decode_into_matches_bitshuffle(rng, dtype, n):
    a = (rng.poisson(3.0, n) * rng.integers(1, 50, n)).astype(dtype)
    blob = compress(a, "bslz4")
    out = np.full_like(a, 99)
    bslz4_decode_into(blob, out)
    np.testing.assert_array_equal(out, decompress(blob, "bslz4", a.shape, a.dtype))
    np.testing.assert_array_equal(out, a)


def test_bslz4_decode_into_rejects_damage(rng):
    a = rng.poisson(3.0, 5000).astype("<u2")
    blob = bytearray(compress(a, "bslz4"))
    out = np.empty_like(a)
    with pytest.raises(BlobError, match="header announces"):
        bslz4_decode_into(bytes(blob), np.empty(4999, "<u2"))
    blob[14] ^= 0x7F  # a block length
    with pytest.raises(BlobError, match="bitshuffle-LZ4 blob"):
        bslz4_decode_into(bytes(blob), out)
    with pytest.raises(ValueError, match="C-contiguous"):
        bslz4_decode_into(compress(a, "bslz4"), np.empty((2, 5000), "<u2")[:, 0])


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint32"])
@pytest.mark.parametrize("eiger", [True, False])
@pytest.mark.parametrize("with_mask", [True, False])
def test_convert_flagged_matches_numpy(rng, dtype, eiger, with_mask):
    top = np.iinfo(dtype).max
    raw = rng.integers(0, top, 10_000, dtype=dtype, endpoint=True)
    raw[rng.random(raw.size) < 0.05] = top
    raw[rng.random(raw.size) < 0.05] = top - 1
    pm = rng.random(raw.size) < 0.1
    out = np.full(raw.size, np.nan, np.float32)
    bad = np.zeros(raw.size, bool)
    threshold = raw.dtype.type(top - 1 if eiger else top)
    n = convert_flagged(raw, threshold, pm if with_mask else np.zeros(0, bool), with_mask,
                        out, bad, True)
    flags = value_flags(raw, eiger)
    ref = raw.astype(np.float32)
    ref[flags] = 0
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(bad, flags | pm if with_mask else flags)
    assert n == flags.sum()
    in_place, bad2 = raw.copy(), np.zeros(raw.size, bool)
    n2 = flag_in_place(in_place, threshold, pm if with_mask else np.zeros(0, bool),
                       with_mask, bad2, True)
    np.testing.assert_array_equal(in_place, np.where(flags, 0, raw))
    np.testing.assert_array_equal(bad2, bad)
    assert n2 == n


@pytest.mark.parametrize("compression", ["bslz4", "gzip", None])
@pytest.mark.parametrize("dtype", ["uint16", "uint32", "int32", "float32"])
def test_read_into_equals_read(tmp_path, rng, compression, dtype):
    frames = make_frames(rng, 5, dtype)
    if dtype.startswith("u"):
        frames[:, 3, 4] = np.iinfo(dtype).max
        frames[:, 5, 6] = np.iinfo(dtype).max - 1
    pixel_mask = np.zeros(frames.shape[1:], np.uint32)
    pixel_mask[7, :] = 1
    master = write_run(tmp_path / "r_master.h5", flat_detector(), frames,
                       compression=compression, pixel_mask=pixel_mask)
    run = open_run(master)
    img = np.full(run.frame_shape, np.nan, np.float32)
    bad = np.zeros(run.frame_shape, bool)
    for i in range(len(run)):
        attrs = run.read_into(i, img, bad)
        image, mask = run.read(i)
        assert attrs == image.attrs
        np.testing.assert_array_equal(img, image.values)
        np.testing.assert_array_equal(bad, mask.values)
        np.testing.assert_array_equal(img, expected_image(frames[i], eiger=True))
        flags = value_flags(frames[i], eiger=True)
        np.testing.assert_array_equal(bad, flags | (pixel_mask != 0))
    with pytest.raises(ValueError, match=r"image must be float32( or \w+)? of shape"):
        run.read_into(0, np.empty(run.frame_shape, np.float64))


@pytest.mark.parametrize("dtype", ["uint16", "uint32", "int32", "float32"])
def test_read_into_stored_dtype(tmp_path, rng, dtype):
    """In the stored dtype the frame is read unconverted, flagged pixels zero."""
    frames = make_frames(rng, 4, dtype)
    if dtype.startswith("u"):
        frames[:, 3, 4] = np.iinfo(dtype).max
    pixel_mask = np.zeros(frames.shape[1:], np.uint32)
    pixel_mask[2, :] = 1
    master = write_run(tmp_path / "s_master.h5", flat_detector(), frames,
                       compression="bslz4", pixel_mask=pixel_mask)
    run = open_run(master)
    img = np.empty(run.frame_shape, run.dtype)
    bad = np.empty(run.frame_shape, bool)
    for i in range(len(run)):
        run.read_into(i, img, bad)
        image, mask = run.read(i)
        np.testing.assert_array_equal(img.astype(np.float32), image.values)
        np.testing.assert_array_equal(bad, mask.values)


def test_read_into_other_stored_dtype_is_an_error(tmp_path, rng):
    a = write_run(tmp_path / "a_master.h5", flat_detector(), make_frames(rng, 2, "uint16"),
                  frames_per_file=2)
    b = write_run(tmp_path / "b_master.h5", flat_detector(), make_frames(rng, 2, "uint32"),
                  frames_per_file=2)
    run = open_run([a, b])
    img = np.empty(run.frame_shape, np.uint16)
    run.read_into(0, img)
    with pytest.raises(ValueError, match="stored as uint32, not uint16"):
        run.read_into(2, img)


def test_pipeline_same_results_from_stored_dtype_and_float32():
    """read_frame gives the stored uint16 frame; every stage gives what float32 gives."""
    import pandas as pd

    import sxlab as sx
    from sxlab.demo import demo_params
    from sxlab.pipeline import prepare, process_frame, read_frame

    run = sx.datasets.load("lysozyme-sample", progress=False)
    ctx = prepare(run.geometry, demo_params(sx.datasets.truth("lysozyme-sample")))
    n_indexed = 0
    for i in range(len(run)):
        image, bad, attrs = read_frame(run, i, ctx)
        assert image.dtype == run.dtype == np.uint16
        a = process_frame(image, bad, ctx, frame=i, attrs=attrs)
        b = process_frame(image.astype(np.float32), bad, ctx, frame=i, attrs=attrs)
        for kind in ("peaks", "crystals", "reflections"):
            pd.testing.assert_frame_equal(getattr(a, kind), getattr(b, kind))
        timing = [k for k in a.frame if k.endswith("_s")]
        assert {k: v for k, v in a.frame.items() if k not in timing} == \
            pytest.approx({k: v for k, v in b.frame.items() if k not in timing}, nan_ok=True)
        n_indexed += a.frame["indexed"]
    assert n_indexed > 0
