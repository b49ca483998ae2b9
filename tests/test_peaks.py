"""Tests of :mod:`sxlab.peaks`: kernels against the NumPy references, API, simulator truth."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from reference import peakfinder8 as ref
from scipy.spatial import cKDTree

from sxlab.cell import UnitCell
from sxlab.geometry import Beam, Detector, Panel, builtin_geometry
from sxlab.peaks import (
    PeakFinder,
    PeakFinderParams,
    find_peaks,
)
from sxlab.simulate import Simulator
from sxlab.tables import ANNULI, PEAKS

LYSO = UnitCell(79.1, 79.1, 37.9, 90, 90, 90, space_group="P 43 21 2")
REF_PARAMS = dict(adc_threshold=0.0, min_snr=4.0, min_pix_count=2, max_pix_count=60,
                  local_bg_radius=2, n_sigma_iterations=5)
REF_COLUMNS = ("panel", "fs", "ss", "intensity", "snr", "npix", "background", "max_value")
NO_JIT = os.environ.get("NUMBA_DISABLE_JIT", "0") not in ("", "0")


# ------------------------------------------------------------------------ geometries
def single_panel() -> Detector:
    p = Panel("p0", 0, 199, 0, 179, corner_x=-93.3, corner_y=-87.6, res=1 / 75e-6, clen=0.05)
    return Detector(panels=(p,), beam=Beam(1.0), name="single")


def multi_panel() -> Detector:
    """Three sensors stacked along ss in one 2-D array (like an MPCCD crop), tilted."""
    panels = [
        Panel(f"q{k}", 0, 149, k * 60, k * 60 + 59, corner_x=-75 + 3 * k,
              corner_y=-100 + k * 65.5, fs=(1, 0.02 * k, 0), ss=(-0.02 * k, 1, 0),
              res=1 / 75e-6, clen=0.05)
        for k in range(3)
    ]
    return Detector(panels=tuple(panels), beam=Beam(1.0), name="multi")


def stacked() -> Detector:
    """Four modules of two ASICs in a (module, ss, fs) stack (like a small AGIPD)."""
    panels = []
    for m in range(4):
        sx = -1 if m < 2 else 1
        for a in range(2):
            panels.append(Panel(f"m{m}a{a}", 0, 63, a * 20, a * 20 + 19,
                                corner_x=sx * (5 + a * 22), corner_y=-70 + (m % 2) * 72,
                                fs=(0, 1, 0), ss=(sx, 0, 0), res=1 / 200e-6, clen=0.03,
                                dims=("%", m, "ss", "fs")))
    return Detector(panels=tuple(panels), beam=Beam(1.0), name="stacked")


GEOMETRIES = {"single": single_panel, "multi": multi_panel, "stacked": stacked}


def random_frame(det: Detector, rng: np.random.Generator, kind: str, n_spots: int = 40):
    """A frame with radial background, noise and Gaussian spots; a static and a frame mask.

    Returns ``(image, good, bad)``: ``good`` True = usable, ``bad`` True = bad this frame.
    """
    shape = det.data_shape
    r = np.nan_to_num(det.maps.r_px)
    level = 5 + 20 * np.exp(-r / 60)
    if kind == "float":
        image = rng.normal(level, np.sqrt(level))
    else:
        image = rng.poisson(level).astype(np.float64)
    flat = rng.integers(0, image.size, n_spots)
    where = np.unravel_index(flat, shape)
    yy, xx = np.mgrid[0:shape[-2], 0:shape[-1]]
    for k in range(n_spots):
        amp = rng.uniform(20, 400)
        sig = rng.uniform(0.6, 1.5)
        dy, dx = rng.uniform(size=2)
        blob = amp * np.exp(-((yy - where[-2][k] - dy) ** 2 + (xx - where[-1][k] - dx) ** 2)
                            / (2 * sig**2))
        if len(shape) == 3:
            image[where[0][k]] += blob
        else:
            image += blob
    image = image.astype(np.float32 if kind == "float" else np.uint16)
    good = rng.random(shape) > 0.01
    bad = rng.random(shape) < 0.005
    return image, good, bad


def as_table(d: dict) -> pd.DataFrame:
    return pd.DataFrame({c: d[c] for c in REF_COLUMNS})


def assert_same_peaks(got: pd.DataFrame, expected: dict):
    assert len(got) == len(expected["fs"])
    assert len(got) > 0
    np.testing.assert_array_equal(got["panel"].to_numpy(), expected["panel"])
    np.testing.assert_array_equal(got["npix"].to_numpy(), expected["npix"])
    np.testing.assert_allclose(got["fs"].to_numpy(), expected["fs"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(got["ss"].to_numpy(), expected["ss"], rtol=0, atol=1e-4)
    for col in ("intensity", "background", "max_value", "snr"):
        np.testing.assert_allclose(got[col].to_numpy(), expected[col], rtol=1e-4, atol=1e-9)


def assert_stats_match_reference(stats, image, finder, bad, sample=None):
    """An annulus statistics table against the reference's; returns its mean, sigma, count."""
    annulus = ref.annuli(finder.geometry, finder.good)
    p = finder.params
    mean, sigma, count = ref.annulus_stats(image, finder.good, bad, annulus, finder.n_annuli,
                                           p.min_snr, p.n_sigma_iterations, sample)
    np.testing.assert_array_equal(stats["n_used"].to_numpy(), count)
    np.testing.assert_allclose(stats["mean"].to_numpy(), mean, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(stats["sigma"].to_numpy(), sigma, rtol=1e-9, atol=1e-9)
    return mean, sigma, count


def fast_sample(finder: PeakFinder) -> list[np.ndarray]:
    off, idx = finder._s_off, finder._s_idx.astype(np.int64)
    return [idx[off[a]:off[a + 1]] for a in range(finder.n_annuli)]


# ------------------------------------------------------------- kernels vs reference
@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
@pytest.mark.parametrize("kind", ["float", "int"])
@pytest.mark.parametrize("fast", [False, True], ids=["full", "fast"])
def test_peakfinder8_matches_reference(geometry, kind, fast, rng):
    det = GEOMETRIES[geometry]()
    image, good, bad = random_frame(det, rng, kind)
    finder = PeakFinder(det, mask=good, fast=fast, fast_n_pixels=30, **REF_PARAMS)
    got = finder(image, bad)
    sample = fast_sample(finder) if fast else None
    expected = ref.peakfinder8(image, finder.good, bad, det, sample=sample, **REF_PARAMS)
    assert_same_peaks(got, expected)


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
@pytest.mark.parametrize("kind", ["float", "int"])
@pytest.mark.parametrize("fast", [False, True], ids=["full", "fast"])
def test_annulus_stats_match_reference(geometry, kind, fast, rng):
    det = GEOMETRIES[geometry]()
    image, good, bad = random_frame(det, rng, kind)
    finder = PeakFinder(det, mask=good, fast=fast, fast_n_pixels=30, **REF_PARAMS)
    stats = finder.annulus_stats(image, bad)
    ANNULI.validate(stats)
    mean, sigma, count = assert_stats_match_reference(
        stats, image, finder, bad, fast_sample(finder) if fast else None)
    has = count > 0
    np.testing.assert_allclose(stats["threshold"].to_numpy()[has],
                               np.maximum(0.0, mean + 4.0 * sigma)[has], rtol=1e-9)
    assert np.isinf(stats["threshold"].to_numpy()[~has]).all()


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
@pytest.mark.parametrize("dtype", ["uint16", "uint32", "int32"])
def test_counted_statistics_of_integer_frames_match_reference(geometry, dtype, rng):
    """Integer frames whose background lies below adc_threshold take the counting pass
    (values counted per annulus, the rest listed); statistics and peaks equal the
    reference's. int32 frames carry negative values (a subtracted pedestal), listed."""
    det = GEOMETRIES[geometry]()
    image, good, bad = random_frame(det, rng, "int")
    image = image.astype(dtype)
    if dtype == "int32":
        image -= 2
    params = dict(REF_PARAMS, adc_threshold=60.0)
    finder = PeakFinder(det, mask=good, **params)
    stats = finder.annulus_stats(image, bad)
    assert finder.stats_pass == "counted"
    assert_stats_match_reference(stats, image, finder, bad)
    expected = ref.peakfinder8(image, finder.good, bad, det, **params)
    assert_same_peaks(finder(image, bad), expected)
    assert finder.stats_pass == "counted"  # the second frame without a sample
    image[rng.random(image.shape) < 0.125] = 61  # an eighth of the pixels listed
    expected = ref.peakfinder8(image, finder.good, bad, det, **params)
    for how in ("counted", "general"):  # exact, then the sample says: general pass
        assert_same_peaks(finder(image, bad), expected)
        assert finder.stats_pass == how


def test_counting_pass_only_where_it_pays(rng):
    """Float frames, a negative adc_threshold or a background mostly above the counted
    values take the general pass; fast mode the sample."""
    det = single_panel()
    image, good, bad = random_frame(det, rng, "int")
    finder = PeakFinder(det, mask=good, **dict(REF_PARAMS, adc_threshold=30.0))
    for frame, params, how in ((image, {}, "counted"),
                               (image.astype(np.float32), {}, "general"),
                               (image, {"adc_threshold": -1.0}, "general"),
                               (image, {"adc_threshold": 3.0}, "general"),  # background 5-25
                               (image, {"fast": True}, "sample")):
        f = finder.with_params(**params)
        f.annulus_stats(frame, bad)
        assert f.stats_pass == how, params


def test_full_statistics_exact_where_bounds_fail(rng):
    """Annuli whose clipping falls below the pass's bound are recomputed exactly."""
    det = single_panel()
    image, good, bad = random_frame(det, rng, "float")
    # A tiny sample gives poor bounds, so that some annuli take the exact fallback.
    finder = PeakFinder(det, mask=good, fast_n_pixels=3, **REF_PARAMS)
    stats = finder.annulus_stats(image, bad)
    assert finder._fallback.any() and not finder._fallback.all()
    assert_stats_match_reference(stats, image, finder, bad)
    expected = ref.peakfinder8(image, finder.good, bad, det, **REF_PARAMS)
    assert_same_peaks(finder(image, bad), expected)


def test_non_finite_pixels_count_as_bad(rng):
    det = single_panel()
    image, good, bad = random_frame(det, rng, "float")
    holes = rng.random(image.shape) < 0.003
    image[holes] = np.nan
    image[rng.random(image.shape) < 0.002] = np.inf
    image[rng.random(image.shape) < 0.002] = -np.inf
    for fast in (False, True):
        finder = PeakFinder(det, mask=good, fast=fast, **REF_PARAMS)
        got = finder(image, bad)
        sample = fast_sample(finder) if fast else None
        expected = ref.peakfinder8(image, finder.good, bad, det, sample=sample, **REF_PARAMS)
        assert_same_peaks(got, expected)


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
@pytest.mark.parametrize("kind", ["float", "int"])
def test_dispersion_matches_reference(geometry, kind, rng):
    det = GEOMETRIES[geometry]()
    image, good, bad = random_frame(det, rng, kind)
    params = dict(min_pix_count=2, max_pix_count=60, local_bg_radius=2)
    finder = PeakFinder(det, mask=good, method="dispersion", **params)
    got = finder(image, bad)
    p = finder.params
    cand = ref.dispersion_candidates(image, finder.good, bad, det, p.kernel_size, p.gain,
                                     p.sigma_background, p.sigma_strong, p.global_threshold,
                                     p.min_local)
    expected = ref.measure(image, finder.good, bad, det, cand, 2, 60, 2, -np.inf)
    assert_same_peaks(got, expected)


@pytest.mark.parametrize("options", [dict(kernel_size=1, min_local=0, gain=2.0),
                                     dict(kernel_size=2, global_threshold=30.0,
                                          sigma_strong=2.0, sigma_background=3.0)])
def test_dispersion_options_match_reference(options, rng):
    det = multi_panel()
    image, good, bad = random_frame(det, rng, "float")
    finder = PeakFinder(det, mask=good, method="dispersion", max_pix_count=60, **options)
    p = finder.params
    cand = ref.dispersion_candidates(image, finder.good, bad, det, p.kernel_size, p.gain,
                                     p.sigma_background, p.sigma_strong, p.global_threshold,
                                     p.min_local)
    expected = ref.measure(image, finder.good, bad, det, cand, 2, 60, 3, -np.inf)
    assert_same_peaks(finder(image, bad), expected)


@pytest.mark.skipif(NO_JIT, reason="already running without JIT")
def test_kernels_without_jit():
    """The reference comparisons once more with NUMBA_DISABLE_JIT=1 (pure Python kernels)."""
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    tests = [f"{Path(__file__).name}::{name}" for name in (
        "test_peakfinder8_matches_reference[full-float-single]",
        "test_peakfinder8_matches_reference[fast-int-stacked]",
        "test_full_statistics_exact_where_bounds_fail",
        "test_non_finite_pixels_count_as_bad",
        "test_dispersion_matches_reference[int-multi]",
        "test_masked_pixels_and_panel_edges_never_produce_peaks",
        "test_counted_statistics_of_integer_frames_match_reference[int32-multi]",
        "test_annulus_kernels_match_numpy[float32]",
    )]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-p", "no:xdist", *tests], cwd=Path(__file__).parent, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"{len(tests)} passed" in proc.stdout


# ---------------------------------------------------------------------- fast mode
def test_fast_mode_reproducible_by_seed(rng):
    det = single_panel()
    image, good, bad = random_frame(det, rng, "float")
    a = PeakFinder(det, mask=good, fast=True, fast_n_pixels=20, seed=3)
    b = PeakFinder(det, mask=good, fast=True, fast_n_pixels=20, seed=3)
    c = PeakFinder(det, mask=good, fast=True, fast_n_pixels=20, seed=4)
    sa, sb, sc = (f.annulus_stats(image, bad) for f in (a, b, c))
    pd.testing.assert_frame_equal(sa, sb)
    assert not np.allclose(sa["mean"], sc["mean"])
    pd.testing.assert_frame_equal(a(image, bad), b(image, bad))
    # Annuli of at most fast_n_pixels pixels are used whole: identical for every seed.
    annulus = ref.annuli(det, a.good)
    small = np.bincount(annulus[annulus >= 0], minlength=a.n_annuli) <= 20
    pd.testing.assert_frame_equal(sa[small], sc[small])


def test_results_do_not_depend_on_history(rng):
    """A finder gives bit-identical results for a frame whatever it processed before."""
    det = single_panel()
    frames = [random_frame(det, rng, "float") for _ in range(3)]
    good = frames[0][1]
    for params in (dict(), dict(fast=True), dict(method="dispersion")):
        fresh = [PeakFinder(det, mask=good, **params)(im, bad) for im, _, bad in frames]
        finder = PeakFinder(det, mask=good, **params)
        for _ in range(2):
            for (im, _, bad), expected in zip(frames, fresh, strict=True):
                pd.testing.assert_frame_equal(finder(im, bad), expected, check_exact=True)


# --------------------------------------------------------------------------- API
def test_params_validation_and_round_trip():
    p = PeakFinderParams(min_snr=6, d_min_A=2.0, fast=True)
    assert PeakFinderParams.from_dict(p.to_dict()) == p
    assert p.replace(min_snr=7).min_snr == 7.0
    assert p.digest() == PeakFinderParams.from_dict(p.to_dict()).digest()
    assert p.digest() != p.replace(seed=1).digest()
    for bad in (dict(method="dials"), dict(min_pix_count=0), dict(max_pix_count=1,
                min_pix_count=3), dict(local_bg_radius=1.5), dict(min_res=-1),
                dict(d_min_A=0.0), dict(gain=0.0), dict(min_snr=np.inf), dict(fast_n_pixels=0)):
        with pytest.raises(ValueError):
            PeakFinderParams(**bad)
    with pytest.raises(TypeError):
        p.replace(no_such_field=1)


def test_empty_result_keeps_schema():
    det = single_panel()
    peaks = find_peaks(np.zeros(det.data_shape, np.float32), det, frame=3)
    assert len(peaks) == 0
    PEAKS.validate(peaks)


def test_table_schema_frame_and_geometry_columns(rng):
    det = multi_panel()
    image, good, bad = random_frame(det, rng, "float")
    da = xr.DataArray(image, dims=det.dims, attrs={"frame": 42})
    finder = PeakFinder(det, mask=good, **REF_PARAMS)
    peaks = finder(da, bad)
    PEAKS.validate(peaks)
    assert (peaks["frame"] == 42).all()
    assert (peaks["crystal"] == -1).all() and (peaks[["h", "k", "l"]] == 0).all().all()
    assert (finder(image, bad, frame=7)["frame"] == 7).all()
    assert (finder(image, bad)["frame"] == -1).all()
    d = det.resolution_A(peaks.fs, peaks.ss, peaks.panel.astype(int))
    np.testing.assert_allclose(peaks["d_A"], d, rtol=1e-12)
    tth = np.degrees(det.two_theta_rad(peaks.fs, peaks.ss, peaks.panel.astype(int)))
    np.testing.assert_allclose(peaks["two_theta_deg"], tth, rtol=1e-12)
    # Order: panel, then intensity descending.
    key = list(zip(peaks.panel, -peaks.intensity, strict=True))
    assert key == sorted(key)


def test_mask_forms_and_frame_types(rng):
    det = single_panel()
    image, good, bad = random_frame(det, rng, "int")

    class MaskLike:
        def __init__(self, good):
            self.good = good

    base = PeakFinder(det, mask=good, **REF_PARAMS)(image, bad)
    pd.testing.assert_frame_equal(PeakFinder(det, mask=MaskLike(good), **REF_PARAMS)(
        image, bad), base)
    import sxlab.masks as masks
    pd.testing.assert_frame_equal(PeakFinder(det, mask=masks.Mask(good), **REF_PARAMS)(
        image, bad), base)
    pd.testing.assert_frame_equal(find_peaks(image, det, good, bad=bad, **REF_PARAMS), base)
    # Bad pixels given in the mask or per frame are the same thing.
    pd.testing.assert_frame_equal(PeakFinder(det, mask=good & ~bad, **REF_PARAMS)(image), base)
    # Raw integer frames, float32, float64 and other integer types give the same peaks.
    for dtype in (np.float32, np.float64, np.int32, np.uint32, np.int64, np.uint8):
        img = np.minimum(image, 255) if dtype == np.uint8 else image
        expected = base if dtype != np.uint8 else PeakFinder(det, mask=good, **REF_PARAMS)(
            img, bad)
        got = PeakFinder(det, mask=good, **REF_PARAMS)(img.astype(dtype), bad.astype(np.uint8))
        pd.testing.assert_frame_equal(got, expected)
    with pytest.raises(TypeError, match="True = good"):
        PeakFinder(det, mask=good.astype(np.uint8))
    with pytest.raises(ValueError, match="shape"):
        PeakFinder(det, mask=good[:10])
    finder = PeakFinder(det)
    with pytest.raises(ValueError, match="shape"):
        finder(image[:10])
    with pytest.raises(ValueError, match="shape"):
        finder(image, bad[:10])
    with pytest.raises(TypeError):
        finder(image.astype(bool))
    with pytest.raises(TypeError):
        PeakFinder("eiger")
    with pytest.raises(ValueError, match="peakfinder8"):
        PeakFinder(det, method="dispersion").annulus_stats(image)
    assert "PeakFinder peakfinder8 fast" in repr(PeakFinder(det, fast=True))


# ------------------------------------------------------------- masks, panels, limits
def test_masked_pixels_and_panel_edges_never_produce_peaks(rng):
    det = multi_panel()
    shape = det.data_shape
    image = rng.normal(10.0, 1.0, shape).astype(np.float32)
    good = np.ones(shape, bool)
    good[30:40, 20:30] = False
    image[33:36, 23:26] = 500.0          # bright blob on masked pixels
    bad = np.zeros(shape, bool)
    bad[20:24, 100:104] = True
    image[21:23, 101:103] = 500.0        # on pixels bad in this frame only
    image[58:62, 70:73] = 300.0          # blob across the edge of panels q0 and q1
    image[0, 120:124] = 300.0            # blob on the first row of q0
    for params in (dict(), dict(fast=True), dict(method="dispersion")):
        finder = PeakFinder(det, mask=good, min_pix_count=1, **params)
        peaks = finder(image, bad)
        rows = np.floor(peaks["ss"]).astype(int)
        cols = np.floor(peaks["fs"]).astype(int)
        assert not ((rows >= 29) & (rows <= 40) & (cols >= 19) & (cols <= 30)).any()
        assert not ((rows >= 19) & (rows <= 24) & (cols >= 99) & (cols <= 104)).any()
        for _, pk in peaks.iterrows():
            pn = det.panels[int(pk.panel)]
            assert pn.min_fs <= pk.fs <= pn.max_fs + 1 and pn.min_ss <= pk.ss <= pn.max_ss + 1
        across = peaks[(rows >= 57) & (rows <= 62) & (cols >= 69) & (cols <= 73)]
        assert sorted(across["panel"]) == [0, 1]
        assert sorted(across["npix"]) == [6, 6]
        np.testing.assert_allclose(sorted(across["ss"]), [59.0, 61.0])
    # With one edge pixel masked per panel the first-row blob and the split blob lose their
    # edge rows: the split blob's halves keep one row each, the first-row blob vanishes.
    edged = det.replace(panels=tuple(p.replace(mask_edge_pixels=1) for p in det.panels))
    peaks = PeakFinder(edged, min_pix_count=1)(image, bad)
    rows = np.floor(peaks["ss"]).astype(int)
    assert not (rows == 0).any()
    assert not np.isin(rows, [59, 60]).any()


def test_components_never_span_panels_in_stacks():
    det = stacked()
    image = np.full(det.data_shape, 10.0, np.float32)
    image += np.random.default_rng(5).normal(0, 1, image.shape).astype(np.float32)
    image[1, 18:22, 30:33] = 400.0       # across the ASIC boundary at ss 20 of module 1
    image[1, 37:40, 10:12] = 400.0       # at the last rows of module 1 ...
    image[2, 0:2, 10:12] = 400.0         # ... and the first rows of module 2
    peaks = PeakFinder(det, min_pix_count=1)(image)
    assert sorted(peaks["npix"]) == [4, 6, 6, 6]
    assert sorted(peaks["panel"]) == [2, 3, 3, 4]


def test_cap_per_panel_keeps_the_strongest(rng):
    det = multi_panel()
    image, good, bad = random_frame(det, rng, "float", n_spots=120)
    full = PeakFinder(det, mask=good, max_peaks_per_panel=0, **REF_PARAMS)(image, bad)
    capped = PeakFinder(det, mask=good, max_peaks_per_panel=5, **REF_PARAMS)(image, bad)
    assert full.groupby("panel").size().min() > 5
    expected = full.groupby("panel", sort=True).head(5).reset_index(drop=True)
    pd.testing.assert_frame_equal(capped, expected)


def test_resolution_limits(rng):
    det = single_panel()
    image, good, bad = random_frame(det, rng, "float", n_spots=80)
    params = dict(REF_PARAMS, min_pix_count=1)
    everything = PeakFinder(det, mask=good, **params)(image, bad)
    r = det.maps.r_px
    limited = PeakFinder(det, mask=good, min_res=40, max_res=100, **params)
    peaks = limited(image, bad)
    assert 0 < len(peaks) < len(everything)
    assert not limited.good[(r < 40) | (r > 100)].any()
    r_peak = np.hypot(*(det.pixel_to_lab(peaks.fs, peaks.ss)[:, :2].T)) * det.panels[0].res
    assert r_peak.max() <= 100 and r_peak.min() > 39
    # The same limits as a mask give the same peaks.
    same = PeakFinder(det, mask=good & (r >= 40) & (r <= 100), **params)(image, bad)
    pd.testing.assert_frame_equal(peaks, same)
    d = det.maps.d_A
    lo, hi = np.percentile(d[np.isfinite(d)], [20, 70])
    by_d = PeakFinder(det, mask=good, d_min_A=lo, d_max_A=hi, **params)(image, bad)
    assert len(by_d) > 0
    assert by_d["d_A"].min() >= lo * 0.99 and by_d["d_A"].max() <= hi * 1.01
    same = PeakFinder(det, mask=good & (d >= lo) & (d <= hi), **params)(image, bad)
    pd.testing.assert_frame_equal(by_d, same)


# ------------------------------------------------------------------ simulator truth
@pytest.fixture(scope="module")
def simulated():
    """Twelve EIGER 4M frames (raw uint16, Poisson noise, defaults: about half are hits)."""
    det = builtin_geometry("eiger4m")
    sim = Simulator(det, LYSO, seed=11)
    frames = []
    for i in range(12):
        raw, truth = sim.frame(i)
        expected, _ = sim.expected_photons(i)
        frames.append((raw, truth, expected))
    return det, sim, frames


def true_spots(expected: np.ndarray, reflections: pd.DataFrame, good: np.ndarray):
    """Centres of the reflections that are true spots, shape (n, 2) as (fs, ss).

    The signal ``S`` of a reflection is the expected photons (without noise, from
    :meth:`Simulator.expected_photons`) in the pixel holding its centre, the brightest
    pixel of the spot, minus the local background ``B``, the median expected photons of
    the good pixels 4 to 6 pixels from that pixel. Its true peak SNR is
    ``S / sqrt(max(B, 1))`` (the background's Poisson noise, at least one photon); a true
    spot has true peak SNR >= 5 and a good centre pixel.
    """
    ny, nx = expected.shape
    dy, dx = np.mgrid[-6:7, -6:7]
    ring = (np.hypot(dy, dx) >= 4) & (np.hypot(dy, dx) <= 6)
    dy, dx = dy[ring], dx[ring]
    keep = []
    for fs, ss in zip(reflections["fs"], reflections["ss"], strict=True):
        row, col = int(ss), int(fs)
        rr, cc = row + dy, col + dx
        inside = (rr >= 0) & (rr < ny) & (cc >= 0) & (cc < nx)
        rr, cc = rr[inside], cc[inside]
        ok = good[rr, cc]
        background = float(np.median(expected[rr[ok], cc[ok]])) if ok.any() else 0.0
        signal = expected[row, col] - background
        keep.append(good[row, col] and signal >= 5 * np.sqrt(max(background, 1.0)))
    return reflections[["fs", "ss"]].to_numpy()[np.asarray(keep, bool)]


@pytest.mark.parametrize("params", [dict(), dict(fast=True)], ids=["full", "fast"])
def test_simulated_recall_and_false_peaks(simulated, params):
    """Recall >= 0.9 of true spots (see :func:`true_spots`), matched within 2 px, and at most
    one peak per blank frame on average, with min_snr 6 and a 3-photon ADC threshold
    (with CrystFEL's min_snr 5, Poisson pairs of bright background pixels give a few
    false peaks per low-background 4M frame)."""
    det, sim, frames = simulated
    finder = PeakFinder(det, mask=~sim.bad_pixels, adc_threshold=3.0, min_snr=6.0, **params)
    found = n_true = 0
    blank_peaks = []
    for raw, truth, expected in frames:
        peaks = finder(raw, frame=truth.frame)
        if not truth.hit:
            blank_peaks.append(len(peaks))
            continue
        spots = true_spots(expected, truth.reflections, ~sim.bad_pixels)
        dist, _ = cKDTree(peaks[["fs", "ss"]].to_numpy()).query(spots)
        found += int((dist <= 2.0).sum())
        n_true += len(spots)
    assert len(blank_peaks) >= 4 and n_true > 300
    assert found / n_true >= 0.9
    assert np.mean(blank_peaks) <= 1.0


def test_simulated_reader_and_raw_frames_agree(simulated):
    """A raw frame with a mask and the reader's float32 frame with ``bad`` agree."""
    det, sim, frames = simulated
    raw, truth, _ = next(f for f in frames if f[1].hit)
    flagged = raw == sim.flag_value
    image = np.where(flagged, 0, raw).astype(np.float32)
    geometry_good = ~det.bad_pixel_mask()
    for params in (dict(), dict(method="dispersion")):
        a = PeakFinder(det, mask=~sim.bad_pixels, adc_threshold=3.0, **params)(raw)
        b = PeakFinder(det, mask=geometry_good, adc_threshold=3.0, **params)(image, flagged)
        pd.testing.assert_frame_equal(a, b)
        assert len(a) > 20
    # Fast mode samples the static mask's pixels: the same mask, flags per frame.
    fast = PeakFinder(det, mask=~sim.bad_pixels, adc_threshold=3.0, fast=True)
    pd.testing.assert_frame_equal(fast(raw), fast(image, flagged))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_annulus_kernels_match_numpy(dtype, rng):
    """The annulus map of a finder's set-up against NumPy on random radii and masks."""
    from sxlab import _peaks_kernels as k

    r = (rng.random(50_000) * 700).astype(dtype)
    good = rng.random(r.size) < 0.8
    r[~good & (rng.random(r.size) < 0.5)] = np.nan  # unusable pixels may have any radius
    n_ann = k.annulus_extent(r, good)
    assert n_ann == int(np.floor(r[good].max())) + 1
    ann = np.empty(r.size, np.int16)
    counts = np.zeros(n_ann + 1, np.int64)
    k.fill_annuli(r, good, n_ann, ann, counts)
    np.testing.assert_array_equal(ann, np.where(good, np.floor(np.where(good, r, 0)), n_ann))
    np.testing.assert_array_equal(counts, np.bincount(ann, minlength=n_ann + 1))
    assert k.annulus_extent(r, np.zeros(r.size, bool)) == 0
    # pixels of chosen ranks within their annulus (ranks increasing per annulus)
    take = np.minimum(counts[:n_ann], 7)
    r_off = np.concatenate([[0], np.cumsum(take)])
    ranks = np.concatenate([np.sort(rng.choice(c, t, replace=False))
                            for c, t in zip(counts[:n_ann], take, strict=True)])
    out = np.full(ranks.size, -1, np.int64)
    k.sample_members(ann, n_ann, ranks, r_off, out)
    want = np.concatenate([np.flatnonzero(ann == a)[ranks[r_off[a]:r_off[a + 1]]]
                           for a in range(n_ann)])
    np.testing.assert_array_equal(out, want)
