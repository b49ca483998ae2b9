"""Tests for sxlab.binning: kernels against NumPy references, layouts, geometry, peaks."""

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from reference import binning as ref

from sxlab import _binning_kernels as kern
from sxlab.binning import Binner, _Layout, bin_frame, bin_geometry, bin_mask, unbin_peaks
from sxlab.geometry import BadRegion, Beam, Detector, Panel, builtin_geometry
from sxlab.masks import Mask, mask_beamstop, mask_from_geometry

NO_BAD = np.zeros((1, 1, 1), dtype=bool)


def odd_detector():
    """Three panels at offsets that are not multiples of 2, 3 or 4, one rotated."""
    common = dict(clen=0.1, res=1 / 100e-6)
    panels = (
        Panel("a", 0, 36, 0, 28, corner_x=-40.0, corner_y=-30.0, **common),
        Panel("b", 37, 77, 0, 22, corner_x=5.0, corner_y=-30.0, **common),
        Panel("c", 41, 77, 23, 53, corner_x=5.0, corner_y=10.0, fs=(0.1, 1.0, 0.05),
              ss=(-1.0, 0.1, 0.0), coffset=0.002, **common),
    )
    bad = (BadRegion("row", 0, 77, 5, 6), BadRegion("blk", 40, 45, 25, 30, panel="c"),
           BadRegion("lab", min_x=-5.0, max_x=20.0, min_y=-40.0, max_y=-20.0))
    return Detector(panels=panels, beam=Beam(1.0), bad_regions=bad,
                    groups=(("all", ("a", "b", "c")),), name="odd")


def stacked_detector():
    """Three modules of two 17 x 22 (ss x fs) ASICs each in a (3, 36, 22) stack, rotated."""
    panels = []
    for m in range(3):
        a = np.deg2rad(20.0 * m + 3.0)
        fs = (np.cos(a), np.sin(a), 0.0)
        ss = (-np.sin(a), np.cos(a), 0.0)
        for k in range(2):
            panels.append(Panel(f"m{m}a{k}", 0, 21, k * 19, k * 19 + 16,
                                corner_x=30.0 * m - 40 - 19 * k * np.sin(a),
                                corner_y=-10.0 + 19 * k * np.cos(a), fs=fs, ss=ss, clen=0.1,
                                dims=("%", m, "ss", "fs")))
    return Detector(panels=tuple(panels), beam=Beam(1.0), name="stacked")


def random_frame(shape, rng, dtype=np.float32, nan_fraction=0.01):
    img = rng.normal(100, 30, size=shape).astype(dtype)
    if dtype == np.float32:
        img[rng.random(shape) < nan_fraction] = np.nan
    return img


# ------------------------------------------------------------------- kernels
@pytest.mark.parametrize("factor", [1, 2, 3, 4])
@pytest.mark.parametrize("geometry", ["plain", "odd", "stacked", "stack"])
def test_bin_sum_kernel_matches_reference(factor, geometry, rng):
    if geometry == "plain":
        layout = _Layout((37, 53), factor)
    elif geometry == "stack":
        layout = _Layout((3, 19, 23), factor)
    elif geometry == "odd":
        layout = _Layout(odd_detector(), factor)
    else:
        layout = _Layout(stacked_detector(), factor)
    shape = layout.shape3
    for trial in range(3):
        img = random_frame(shape, rng)
        bad1 = rng.random(shape) < 0.05
        bad2 = rng.random(shape) < 0.02
        max_bad = [0, factor * factor // 2, factor * factor - 1][trial]
        rescale = trial != 1
        out = np.empty(layout.binned_shape3, np.float32)
        out_bad = np.empty(layout.binned_shape3, bool)
        kern.bin_sum(img, bad1, True, bad2, True, layout.table, factor, max_bad, rescale,
                     out, out_bad)
        layout.finish(out, out_bad)
        exp, exp_bad = ref.bin_sum(img, bad1 | bad2, layout.table, factor, max_bad, rescale)
        np.testing.assert_array_equal(out_bad, exp_bad)
        np.testing.assert_allclose(out, exp, rtol=1e-6, atol=1e-3)

        counts = np.zeros(layout.binned_shape3, np.int32)
        kern.count_bad(bad1, layout.table, factor, counts)
        np.testing.assert_array_equal(counts, ref.count_bad(bad1, layout.table, factor))
    # no bad arrays, integer image
    raw = rng.integers(0, 60000, size=shape).astype(np.uint16)
    kern.bin_sum(raw, NO_BAD, False, NO_BAD, False, layout.table, factor, 0, False, out, out_bad)
    layout.finish(out, out_bad)
    exp, _ = ref.bin_sum(raw, None, layout.table, factor, 0, False)
    np.testing.assert_array_equal(out, exp)

@pytest.mark.parametrize("factor", [1, 2, 3, 4])
@pytest.mark.parametrize("geometry", ["plain", "odd", "stacked"])
@pytest.mark.parametrize("dtype", ["uint16", "uint32"])
def test_bin_raw_kernel_matches_reference(factor, geometry, dtype, rng):
    """Stored frames binned in one pass equal the reference on the converted frame."""
    layout = _Layout({"plain": (37, 53), "odd": odd_detector(),
                      "stacked": stacked_detector()}[geometry], factor)
    shape = layout.shape3
    top = np.iinfo(dtype).max
    for trial in range(3):
        raw = rng.integers(0, 5000 if trial else top, shape, dtype=dtype, endpoint=True)
        raw[rng.random(shape) < 0.03] = top
        raw[rng.random(shape) < 0.03] = top - 1
        static = rng.random(shape) < 0.05
        max_bad = [0, factor * factor // 2, factor * factor - 1][trial]
        rescale = trial != 1
        out = np.empty(layout.binned_shape3, np.float32)
        out_bad = np.empty(layout.binned_shape3, bool)
        kern.bin_raw(raw, raw.dtype.type(top - 1), static.view(np.uint8), layout.table,
                     factor, max_bad, rescale, out, out_bad)
        layout.finish(out, out_bad)
        exp, exp_bad = ref.bin_sum(raw, static | (raw >= top - 1), layout.table, factor,
                                   max_bad, rescale)
        np.testing.assert_array_equal(out_bad, exp_bad)
        np.testing.assert_allclose(out, exp, rtol=1e-6)



def test_bin_frame_plain_is_reshape_sum(rng):
    for shape, f in (((12, 8), 2), ((13, 11), 3), ((4362 // 20, 4148 // 20), 4), ((2, 9, 10), 3)):
        img = rng.random(shape).astype(np.float32)
        h, w = shape[-2] // f, shape[-1] // f
        cut = img[..., : h * f, : w * f]
        expect = cut.reshape(*shape[:-2], h, f, w, f).sum(axis=(-3, -1), dtype=np.float64)
        np.testing.assert_allclose(bin_frame(img, f), expect, rtol=1e-6)
    da = xr.DataArray(np.ones((6, 6), np.float32), dims=("ss", "fs"), attrs={"frame": 7})
    out = bin_frame(da, 3)
    assert isinstance(out, xr.DataArray) and out.attrs == {"frame": 7, "binning": 3}
    assert out.values.tolist() == [[9.0, 9.0], [9.0, 9.0]]
    with pytest.raises(ValueError, match="factor"):
        bin_frame(np.ones((4, 4)), 0)
    with pytest.raises(ValueError, match="smaller"):
        bin_frame(np.ones((4, 4)), 5)


def test_bin_frame_bad_pixels_and_rescale():
    img = np.arange(16, dtype=np.float32).reshape(4, 4)
    bad = np.zeros((4, 4), bool)
    bad[0, 0] = True
    img[3, 3] = np.inf  # non-finite counts as bad
    out = bin_frame(img, 2, bad=bad)
    assert out.tolist() == [[1 + 4 + 5, 18], [42, 10 + 11 + 14]]
    out = bin_frame(img, 2, mask=Mask.from_bad(bad), rescale=True)
    assert out[0, 0] == pytest.approx(10 * 4 / 3)
    assert out[1, 1] == pytest.approx(35 * 4 / 3)
    with pytest.raises(TypeError):
        bin_frame(img, 2, bad=bad.astype(int))


def test_bin_mask_fraction():
    bad = np.zeros((6, 6), bool)
    bad[0, 0] = True                 # 1 of 9 in block (0, 0)
    bad[3:5, 3:6] = True             # 6 of 9 in block (1, 1)
    m = Mask.from_bad(bad, "test")
    assert bin_mask(m, 3).bad.tolist() == [[True, False], [False, True]]
    assert bin_mask(m, 3, bad_fraction=0.2).bad.tolist() == [[False, False], [False, True]]
    assert bin_mask(m, 3, bad_fraction=0.7).n_bad == 0
    assert bin_mask(m, 3).provenance[-1].startswith("bin_mask")
    full = Mask.from_bad(np.ones((6, 6), bool))
    assert bin_mask(full, 3, bad_fraction=0.99).fraction_bad == 1.0
    with pytest.raises(ValueError, match="bad_fraction"):
        bin_mask(m, 3, bad_fraction=1.0)


# ------------------------------------------------------------------ geometry
def test_binned_shapes_of_the_eiger16m():
    det = builtin_geometry("eiger16m")
    assert det.data_shape == (4362, 4148)
    shapes = {f: bin_geometry(det, f).data_shape for f in (2, 3, 4)}
    assert shapes == {2: (2181, 2074), 3: (1454, 1382), 4: (1090, 1037)}
    assert bin_geometry(det, 1) is det
    b = bin_geometry(det, 4)
    assert b.panels[0].res == pytest.approx(det.panels[0].res / 4)
    assert "binned 4x4" in b.name


@pytest.mark.parametrize("name", ["eiger4m", "agipd", "mpccd", "odd", "stacked"])
@pytest.mark.parametrize("factor", [2, 3, 4])
def test_binned_pixel_centre_is_mean_of_its_pixels(name, factor, rng):
    det = {"odd": odd_detector, "stacked": stacked_detector}.get(
        name, lambda: builtin_geometry(name))()
    binned = bin_geometry(det, factor)
    assert binned.n_panels == det.n_panels
    for i, (p, pb) in enumerate(zip(det.panels, binned.panels, strict=True)):
        assert pb.width == p.width // factor and pb.height == p.height // factor
        bs = rng.integers(0, pb.height, 5)
        bf = rng.integers(0, pb.width, 5)
        lab_b = binned.pixel_to_lab(pb.min_fs + bf + 0.5, pb.min_ss + bs + 0.5, np.full(5, i))
        k = np.arange(factor)
        fs = p.min_fs + bf[:, None, None] * factor + k[None, None, :] + 0.5
        ss = p.min_ss + bs[:, None, None] * factor + k[None, :, None] + 0.5
        fs, ss = np.broadcast_arrays(fs, ss)
        lab = det.pixel_to_lab(fs.ravel(), ss.ravel(), np.full(fs.size, i))
        mean = lab.reshape(5, factor * factor, 3).mean(axis=1)
        np.testing.assert_allclose(lab_b, mean, rtol=0, atol=1e-9)
    # binned panels never overlap
    occupied = np.zeros(binned.data_shape, np.int32)
    for i in range(binned.n_panels):
        occupied[binned.panel_slice(i)] += 1
    assert occupied.max() == 1


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_binned_pixel_bad_regions_match_binned_mask(factor):
    det = builtin_geometry("eiger4m")  # module gaps are pixel bad regions
    binned = bin_geometry(det, factor)
    assert len(binned.bad_regions) == len(det.bad_regions)
    assert mask_from_geometry(binned) == bin_mask(mask_from_geometry(det), factor, geometry=det)
    odd = odd_detector()
    binned = bin_geometry(odd, factor)
    pix = [r for r in binned.bad_regions if not r.is_lab]
    assert {r.panel for r in pix} == {"a", "b", "c"}  # the panel-less row spans a and b
    only_pix = odd.replace(bad_regions=tuple(r for r in odd.bad_regions if not r.is_lab))
    assert mask_from_geometry(bin_geometry(only_pix, factor)) == bin_mask(
        mask_from_geometry(only_pix), factor, geometry=only_pix)
    lab = [r for r in binned.bad_regions if r.is_lab][0]
    assert lab.min_x == pytest.approx(-5.0 / factor)


def test_bin_geometry_settings():
    p = Panel("p", 0, 99, 0, 49, corner_x=-50, corner_y=-25, max_adu=1000.0,
              flag_equal=-1.0, mask_edge_pixels=3)
    det = Detector(panels=(p,), beam=Beam(1.0))
    b = bin_geometry(det, 2).panels[0]
    assert b.max_adu == 4000.0 and b.flag_equal is None and b.mask_edge_pixels == 2
    assert (b.min_fs, b.max_fs, b.min_ss, b.max_ss) == (0, 49, 0, 24)
    assert (b.corner_x, b.corner_y) == (-25.0, -12.5)
    with pytest.raises(ValueError, match="smaller"):
        bin_geometry(det, 60)


# --------------------------------------------------------------------- Binner
@pytest.mark.parametrize("name", ["odd", "stacked"])
def test_binner_matches_reference(name, rng):
    det = odd_detector() if name == "odd" else stacked_detector()
    mask = mask_from_geometry(det) & mask_beamstop(det, 12)
    for factor, frac in ((2, 0.0), (3, 0.3), (4, 0.5)):
        binner = Binner(det, mask, factor, bad_fraction=frac)
        assert binner.geometry.data_shape == binner.mask.shape
        img = random_frame(det.data_shape, rng)
        bad = rng.random(det.data_shape) < 0.03
        out, out_bad = binner(xr.DataArray(img, dims=det.dims, attrs={"frame": 3}), bad)
        assert out.dims == binner.geometry.dims and out.attrs["binning"] == factor
        assert out.attrs["frame"] == 3 and out.dtype == np.float32
        lay = _Layout(det, factor)
        max_bad = int(np.floor(frac * factor**2 + 1e-9))
        exp, exp_bad = ref.bin_sum(lay.as3(img), lay.as3(bad | mask.bad), lay.table, factor,
                                   max_bad, True)
        np.testing.assert_array_equal(out_bad.values, exp_bad.reshape(out.shape))
        np.testing.assert_allclose(out.values, exp.reshape(out.shape), rtol=1e-6, atol=1e-3)
        # the static part of the binned bad pixels is the binned mask
        assert not (binner.mask.bad & ~out_bad.values).any()
        # without per-frame bad pixels: the static mask (and the NaN pixels)
        out2, bad2 = binner(img)
        exp2, exp_bad2 = ref.bin_sum(lay.as3(img), lay.as3(mask.bad), lay.table, factor,
                                     max_bad, True)
        np.testing.assert_array_equal(bad2.values, exp_bad2.reshape(out.shape))
        np.testing.assert_allclose(out2.values, exp2.reshape(out.shape), rtol=1e-6, atol=1e-3)
        clean = np.nan_to_num(img, nan=1.0)
        np.testing.assert_array_equal(binner(clean)[1].values, binner.mask.bad)
    assert "Binner" in repr(binner)


@pytest.mark.parametrize("name", ["odd", "stacked"])
@pytest.mark.parametrize("dtype", ["uint16", "int32"])
def test_binner_bin_stored_into_equals_binning_the_read_frame(name, dtype, rng):
    """One pass over the stored frame = Run.read's conversion, then Binner.__call__."""
    from sxlab.io.hdf5 import convert_frame

    det = odd_detector() if name == "odd" else stacked_detector()
    mask = mask_from_geometry(det) & mask_beamstop(det, 12)
    for factor, frac in ((2, 0.0), (3, 0.3), (4, 0.5)):
        binner = Binner(det, mask, factor, bad_fraction=frac)
        raw = rng.integers(0, 3000, det.data_shape).astype(dtype)
        flag = np.iinfo(np.uint16).max if dtype == "uint16" else -1
        raw[rng.random(det.data_shape) < 0.03] = flag
        image = np.empty(det.data_shape, np.float32)
        bad = np.empty(det.data_shape, bool)
        convert_frame(raw, True, None, image, bad)
        exp, exp_bad = binner(image, bad)
        out = np.full(binner.geometry.data_shape, np.nan, np.float32)
        out_bad = np.zeros(out.shape, bool)
        binner.bin_stored_into(raw, out, out_bad)
        np.testing.assert_array_equal(out_bad, exp_bad.values)
        np.testing.assert_array_equal(out, exp.values)
    with pytest.raises(ValueError, match="out must be float32"):
        binner.bin_stored_into(raw, np.empty((2, 2), np.float32), out_bad)


def test_binner_without_mask_on_eiger():
    det = builtin_geometry("eiger1m")
    binner = Binner(det, factor=2)
    img, bad = binner(np.ones(det.data_shape, np.float32))
    assert img.shape == (532, 515) and float(img.min()) == 4.0 and not bad.values.any()


# ---------------------------------------------------------------------- peaks
def test_unbin_peaks_centre_convention():
    peaks = pd.DataFrame({"frame": [0, 0], "panel": [0, 0], "fs": [0.5, 10.5],
                          "ss": [3.5, 0.0], "intensity": [1.0, 2.0]})
    for f in (2, 3, 4):
        out = unbin_peaks(peaks, f)
        assert out["fs"].tolist() == [f * 0.5, f * 10.5]
        assert out["ss"].tolist() == [f * 3.5, 0.0]
        assert out["intensity"].tolist() == [1.0, 2.0]
    assert peaks["fs"].tolist() == [0.5, 10.5]  # input untouched


def test_unbin_peaks_with_panel_offsets():
    det = odd_detector()
    f = 3
    binned = bin_geometry(det, f)
    # the centre of binned pixel (b, c) of every panel maps to the centre of its block
    rows = []
    for i, pb in enumerate(binned.panels):
        rows.append({"panel": i, "fs": pb.min_fs + 2 + 0.5, "ss": pb.min_ss + 1 + 0.5})
    peaks = pd.DataFrame(rows)
    out = unbin_peaks(peaks, f, geometry=det)
    for i, p in enumerate(det.panels):
        assert out["fs"][i] == pytest.approx(p.min_fs + f * 2.5)
        assert out["ss"][i] == pytest.approx(p.min_ss + f * 1.5)
        # same lab position before and after
        lab_b = binned.pixel_to_lab([peaks["fs"][i]], [peaks["ss"][i]], [i])
        lab = det.pixel_to_lab([out["fs"][i]], [out["ss"][i]], [i])
        np.testing.assert_allclose(lab_b, lab, atol=1e-12)
    binner = Binner(det, factor=f)
    pd.testing.assert_frame_equal(binner.unbin_peaks(peaks), out)
    with pytest.raises(ValueError, match="panel column"):
        binner.unbin_peaks(peaks.drop(columns="panel"))
    with pytest.raises(TypeError):
        unbin_peaks(peaks.assign(panel=["a", "b", "c"]), f, geometry=det)
