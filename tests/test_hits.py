"""Tests for sxlab.hits: hit decisions, radial profiles, solvent ratio, run statistics."""

import numpy as np
import pandas as pd
import pytest
from reference import hits as ref

from sxlab import _hits_kernels as kern
from sxlab import tables
from sxlab.geometry import Beam, Detector, Panel, builtin_geometry
from sxlab.hits import (
    HitParams,
    RadialProfiler,
    RunStatistics,
    SolventRatio,
    has_solvent,
    hit_rule,
    hit_table,
    is_hit,
    radial_profile,
    run_statistics,
    solvent_ratio,
    virtual_powder,
)
from sxlab.io.hdf5 import open_run
from sxlab.io.nxmx import NXmxWriter
from sxlab.masks import Mask, mask_beamstop, mask_from_geometry


def small_detector(n_fs=48, n_ss=40, clen=0.02, wavelength_A=1.3):
    p = Panel("p0", 0, n_fs - 1, 0, n_ss - 1, corner_x=-n_fs / 2 + 0.3, corner_y=-n_ss / 2 - 0.2,
              res=1 / 450e-6, clen=clen, data="/entry/data/data")
    return Detector(panels=(p,), beam=Beam(wavelength_A), groups=(("all", ("p0",)),),
                    name="small")


# ----------------------------------------------------------------------- hits
def peaks_table(counts: dict[int, int]) -> pd.DataFrame:
    frames = np.repeat(list(counts), list(counts.values()))
    return pd.DataFrame({"frame": frames.astype(np.int64), "fs": np.arange(frames.size) + 0.5,
                         "ss": 0.5, "intensity": 1.0})


def test_is_hit_one_frame_and_many():
    assert is_hit(16) and not is_hit(15)
    assert is_hit(0, min_peaks=0)
    assert not is_hit(50, max_peaks=40)
    one = peaks_table({3: 20})
    assert is_hit(one) is True
    assert is_hit(one, min_peaks=21) is False
    many = peaks_table({0: 5, 1: 20, 2: 45})
    hits = is_hit(many, min_peaks=10, max_peaks=40)
    assert isinstance(hits, pd.Series) and hits.name == "hit"
    assert hits.to_dict() == {0: False, 1: True, 2: False}
    assert is_hit(many, by_frame=False) is True  # 70 peaks in the whole table
    assert is_hit(one, by_frame=True).to_dict() == {3: True}
    counts = pd.Series([3, 30], index=pd.Index([7, 8], name="frame"))
    assert is_hit(counts).tolist() == [False, True]
    assert is_hit(pd.DataFrame({"frame": []})) is False
    with pytest.raises(ValueError):
        is_hit(10, min_peaks=5, max_peaks=2)
    with pytest.raises(TypeError):
        is_hit("many")
    with pytest.raises(ValueError, match="frame"):
        is_hit(pd.DataFrame({"fs": [1.0]}), by_frame=True)


def test_one_hit_rule():
    n = np.arange(0, 60)
    np.testing.assert_array_equal(hit_rule(n, 16, 40), (n >= 16) & (n <= 40))
    np.testing.assert_array_equal(hit_rule(n, 16), n >= 16)
    assert hit_rule(16) is True and hit_rule(15) is False
    peaks = peaks_table({0: 20, 1: 45})
    assert is_hit(peaks, 16, 40).tolist() == hit_rule(np.array([20, 45]), 16, 40).tolist()
    p = HitParams(min_peaks=10, max_peaks=30)
    assert HitParams.from_dict(p.to_dict()) == p and HitParams().max_peaks is None
    for bad in (dict(max_peaks=0), dict(min_peaks=-1), dict(min_peaks=2.5),
                dict(solvent_d_low_A=-6.0)):
        with pytest.raises(ValueError):
            HitParams(**bad)


def test_hit_table():
    peaks = peaks_table({0: 16, 2: 3, 4: 100})
    t = hit_table(peaks, 5, min_peaks=16, max_peaks=50)
    tables.HITS.validate(t)
    assert t["n_peaks"].tolist() == [16, 0, 3, 0, 100]
    assert t["hit"].tolist() == [True, False, False, False, False]
    t = hit_table(peaks, [4, 2, 0, 9])
    assert t["frame"].tolist() == [4, 2, 0, 9] and t["n_peaks"].tolist() == [100, 3, 16, 0]
    empty = hit_table(peaks.iloc[:0], 3)
    assert not tables.HITS.validate(empty)["hit"].any()
    assert len(hit_table(peaks.iloc[:0], [])) == 0
    with pytest.raises(ValueError, match="not in"):
        hit_table(peaks, 3)


# ------------------------------------------------------------ radial profiles
def test_radial_sums_kernel_matches_bincount(rng):
    for n, n_bins in ((1, 1), (1000, 7), (54321, 300)):
        img = rng.normal(size=n).astype(np.float32)
        img[rng.random(n) < 0.01] = np.nan
        img[rng.random(n) < 0.01] = np.inf
        bins = rng.integers(-1, n_bins, n).astype(np.int32)
        bad = rng.random(n) < 0.1
        for has_bad in (False, True):
            sums = np.empty(n_bins)
            counts = np.empty(n_bins, np.int64)
            kern.radial_sums(img, bins, bad, has_bad, sums, counts)
            es, ec = ref.radial_sums(img, bins, bad if has_bad else None, n_bins)
            np.testing.assert_array_equal(counts, ec)
            np.testing.assert_allclose(sums, es, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("axis", ["q", "two_theta", "d"])
def test_radial_profile_matches_np_histogram(axis, rng):
    det = builtin_geometry("eiger1m", clen=0.1, wavelength_A=1.0)
    mask = mask_from_geometry(det) & mask_beamstop(det, 20, rod_width_px=6)
    img = rng.exponential(10.0, det.data_shape).astype(np.float32)
    bad = rng.random(det.data_shape) < 0.02
    prof = RadialProfiler(det, mask, axis=axis, bins=64)
    p = prof(img, bad)
    var = (det.maps.q_A if axis != "two_theta"
           else np.rad2deg(det.maps.two_theta_rad.astype(np.float64)))
    good = mask.good & ~bad
    v = var[good].astype(np.float64)
    sums, _ = np.histogram(v, bins=prof.edges, weights=img[good].astype(np.float64))
    counts, _ = np.histogram(v, bins=prof.edges)
    np.testing.assert_array_equal(p["count"].values, counts)
    with np.errstate(invalid="ignore"):
        np.testing.assert_allclose(p.values, sums / counts, rtol=1e-10)
    assert p.dims == (axis,)
    units = {"q": "1/Å", "two_theta": "deg", "d": "Å"}[axis]
    assert p[axis].attrs["units"] == units and p[axis].attrs["long_name"]
    assert p.attrs["units"] == "ADU"
    assert prof.n_pixels.sum() == np.count_nonzero(mask.good)
    # equal bins cover exactly the usable pixels' range
    assert prof.edges[0] == pytest.approx(v.min()) or prof.edges[0] <= v.min()


def test_radial_profile_explicit_edges_and_loop(rng):
    det = small_detector(clen=0.05, wavelength_A=1.0)
    img = rng.normal(50, 5, det.data_shape).astype(np.float32)
    img[3, 4] = np.nan
    bad = np.zeros(det.data_shape, bool)
    bad[10:12, :] = True
    d = det.maps.d_A.astype(np.float64)
    edges_d = [30.0, 12.0, 8.0, 6.5, 5.0, 4.8]  # any order, in Å
    p = radial_profile(img, det, axis="d", bins=edges_d, bad=bad)
    lo_hi = sorted(edges_d)
    expected, count = [], []
    # explicit loop, bins in q = 1/d: [1/30, 1/12), ..., last bin closed
    qe = sorted(1.0 / np.array(edges_d))
    for k in range(len(qe) - 1):
        sel = []
        for s in range(det.data_shape[0]):
            for f in range(det.data_shape[1]):
                q = 1.0 / d[s, f]
                inside = qe[k] <= q < qe[k + 1] or (k == len(qe) - 2 and q == qe[-1])
                if inside and not bad[s, f] and np.isfinite(img[s, f]):
                    sel.append(float(img[s, f]))
        count.append(len(sel))
        expected.append(np.mean(sel) if sel else np.nan)
    np.testing.assert_array_equal(p["count"].values, count)
    np.testing.assert_allclose(p.values, expected, rtol=1e-10)
    np.testing.assert_allclose(p["d_hi"].values, lo_hi[::-1][:-1])  # high-q edge is low d
    assert np.all(np.diff(p["d"].values) < 0)
    # default bins: one per pixel of radius
    auto = RadialProfiler(det)
    r = det.maps.r_px
    assert auto.n_bins == int(np.ceil(r.max() - r.min()))
    with pytest.raises(ValueError):
        RadialProfiler(det, axis="chi")
    with pytest.raises(ValueError):
        RadialProfiler(det, bins=[1.0])
    with pytest.raises(TypeError):
        radial_profile(img, det, mask=np.ones(det.data_shape, bool))
    with pytest.raises(ValueError, match="shape"):
        radial_profile(img[:-1], det)


def test_radial_profile_of_a_stacked_detector(rng):
    det = builtin_geometry("agipd")
    img = rng.random(det.data_shape).astype(np.float32)
    p = radial_profile(img, det, axis="two_theta", bins=40)
    tt = np.rad2deg(det.maps.two_theta_rad).ravel()
    counts, edges = np.histogram(tt, bins=40)
    np.testing.assert_array_equal(p["count"].values, counts)
    np.testing.assert_allclose(p["two_theta_lo"].values, edges[:-1])


# -------------------------------------------------------------------- solvent
def ring_image(det, centre_deg, amplitude=2.0, sigma_deg=1.2, base=1.0):
    tt = np.rad2deg(det.maps.two_theta_rad.astype(np.float64))
    return (base + amplitude * np.exp(-0.5 * ((tt - centre_deg) / sigma_deg) ** 2)).astype(
        np.float32)


def test_solvent_ratio_on_synthetic_rings(rng):
    det = builtin_geometry("eiger4m", clen=0.1, wavelength_A=1.3)
    tt = np.rad2deg(det.maps.two_theta_rad)
    assert tt.max() > 24.0
    # The bands are d-spacings: 3.2 Å and 6 Å, at this wavelength these angles.
    high = np.degrees(2 * np.arcsin(1.3 / (2 * 3.2)))
    low_angle = np.degrees(2 * np.arcsin(1.3 / (2 * 6.0)))
    sr = SolventRatio(det)
    assert (sr.two_theta_high_deg, sr.two_theta_low_deg) == pytest.approx((high, low_angle))
    water = ring_image(det, high)
    ratio = solvent_ratio(water, det)
    band_hi = np.abs(tt - high) <= 0.25
    band_lo = np.abs(tt - low_angle) <= 0.25
    expected = water[band_hi].astype(np.float64).mean() / water[band_lo].astype(
        np.float64).mean()
    assert ratio == pytest.approx(expected, rel=1e-9)
    assert ratio > 2.5 and has_solvent(water, det)
    low = ring_image(det, low_angle)
    assert solvent_ratio(low, det) < 0.5 and not has_solvent(low, det)
    # The same bands as angles, or at another wavelength as d-spacings.
    assert solvent_ratio(water, det, two_theta_high_deg=high,
                         two_theta_low_deg=low_angle) == pytest.approx(ratio, rel=1e-12)
    det_1a = det.with_beam(wavelength_A=1.0)
    high_1a = np.degrees(2 * np.arcsin(1.0 / 6.4))
    assert solvent_ratio(ring_image(det_1a, high_1a), det_1a) > 2.5
    with pytest.raises(ValueError, match="d_high_A"):
        SolventRatio(det, d_high_A=0.0)
    flat = np.ones(det.data_shape, np.float32)
    assert solvent_ratio(flat, det) == pytest.approx(1.0)
    assert has_solvent(flat, det, cutoff=1.0) and not has_solvent(flat, det, cutoff=1.01)
    # a prepared test with a mask and per-frame bad pixels
    mask = mask_from_geometry(det)
    sr = SolventRatio(det, mask, two_theta_high_deg=22.8, two_theta_low_deg=12.5,
                      width_deg=1.0)
    bad = rng.random(det.data_shape) < 0.1
    good = mask.good & ~bad
    hi = water[good & (np.abs(tt - 22.8) <= 0.5)].astype(np.float64).mean()
    lo = water[good & (np.abs(tt - 12.5) <= 0.5)].astype(np.float64).mean()
    assert sr(water, bad) == pytest.approx(hi / lo, rel=1e-9)
    assert sr.has_solvent(water, bad) and "SolventRatio" in repr(sr)
    # angles are parameters: a ring at another wavelength's water angle
    assert solvent_ratio(ring_image(det, 18.0), det, two_theta_high_deg=18.0) > 2.5


def test_solvent_ratio_out_of_range_is_nan():
    det = small_detector(clen=1.0)  # the detector covers less than 2°
    img = np.ones(det.data_shape, np.float32)
    assert np.isnan(solvent_ratio(img, det))
    assert not has_solvent(img, det)
    with pytest.raises(ValueError):
        SolventRatio(det, width_deg=0)


# ------------------------------------------------------------- run statistics
@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """21 uint16 frames of a small detector in 3 bitshuffle-LZ4 files, with flags."""
    rng = np.random.default_rng(7)
    det = small_detector()
    frames = rng.poisson(20.0, size=(21, *det.data_shape)).astype(np.uint16)
    frames[rng.random(frames.shape) < 0.01] = 65535    # per-frame flagged pixels
    frames[:, 5, 7] = 65534                            # an always-flagged pixel (EIGER)
    pixel_mask = np.zeros(det.data_shape, np.uint32)
    pixel_mask[0, :3] = 1
    path = tmp_path_factory.mktemp("run") / "stats_master.h5"
    with NXmxWriter(path, det, frames_per_file=8, pixel_mask=pixel_mask) as w:
        w.write_many(frames)
    return open_run(path, geometry=det), det


def expected_stats(run, mask=None):
    images, bads = zip(*(run.read(i) for i in range(len(run))), strict=True)
    stack = np.stack([im.values for im in images]).reshape(len(run), -1)
    bad = np.stack([b.values for b in bads]).reshape(len(run), -1)
    static = np.zeros(stack.shape[1], bool) if mask is None else mask.bad.ravel()
    return ref.stats(stack, bad, static)


def check_stats(ds, run, mask=None):
    count, mean, std, vmax, nbad = expected_stats(run, mask)
    shape = run.frame_shape
    np.testing.assert_array_equal(ds["count"].values, count.reshape(shape))
    np.testing.assert_array_equal(ds["n_bad"].values, nbad.reshape(shape))
    np.testing.assert_allclose(ds["mean"].values, mean.reshape(shape), rtol=1e-12)
    np.testing.assert_allclose(ds["std"].values, std.reshape(shape), rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(ds["max"].values, vmax.reshape(shape).astype(np.float32))
    # pixels good in every frame: plain np.mean / np.std / np.max over the stacked frames
    stack = np.stack([run[i].values for i in range(len(run))]).astype(np.float64)
    clean = ds["count"].values == len(run)
    assert clean.sum() > 0.5 * clean.size
    np.testing.assert_allclose(ds["mean"].values[clean], np.mean(stack, axis=0)[clean],
                               rtol=1e-12)
    np.testing.assert_allclose(ds["std"].values[clean], np.std(stack, axis=0)[clean],
                               rtol=1e-9)
    np.testing.assert_array_equal(ds["max"].values[clean], np.max(stack, axis=0)[clean])


def test_run_statistics_matches_numpy(small_run):
    run, det = small_run
    ds = run_statistics(run, chunk_size=4, n_workers=1, progress=False)
    check_stats(ds, run)
    assert ds.attrs["n_frames"] == 21 and ds.attrs["failed_frames"] == []
    assert ds["mean"].dims == ("ss", "fs") and ds["mean"].attrs["units"] == "ADU"
    assert ds["count"].values[5, 7] == 0 and np.isnan(ds["mean"].values[5, 7])
    assert ds["n_bad"].values[0, 0] == 21  # NXmx pixel_mask
    # a static mask removes pixels entirely
    static = np.zeros(det.data_shape, bool)
    static[:, :10] = True
    mask = Mask.from_bad(static)
    ds = run_statistics(run, mask=mask, chunk_size=16, n_workers=1, progress=False)
    check_stats(ds, run, mask)
    assert np.isnan(ds["std"].values[:, :10]).all() and (ds["n_bad"].values[:, :10] == 0).all()


def test_run_statistics_in_parallel(small_run):
    run, _ = small_run
    serial = run_statistics(run, chunk_size=5, n_workers=1, progress=False)
    threads = run_statistics(run, chunk_size=5, n_workers=3, executor="threads", progress=False)
    procs = run_statistics(run, chunk_size=5, n_workers=2, executor="local", progress=True)
    import distributed

    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        viadask = run_statistics(run, chunk_size=5, n_workers=2, executor=client,
                                 progress=False)
    for ds in (threads, procs, viadask):
        check_stats(ds, run)
        for var in ("count", "n_bad", "max"):
            np.testing.assert_array_equal(ds[var].values, serial[var].values)
        np.testing.assert_allclose(ds["mean"].values, serial["mean"].values, rtol=1e-13)
    assert procs.attrs["n_workers"] == 2 and threads.attrs["n_workers"] == 3
    sub = run_statistics(run[3:9], n_workers=2, executor="threads", progress=False)
    check_stats(sub, run[3:9])
    np.testing.assert_array_equal(viadask["mean"].values, procs["mean"].values)
    with pytest.raises(ValueError, match="executor"):
        run_statistics(run, executor="dask", progress=False)


def test_run_statistics_accumulator_and_kernel(rng):
    shape = (6, 7)
    frames = rng.normal(5, 2, size=(30, *shape))
    frames[rng.random(frames.shape) < 0.05] = np.nan
    bad = rng.random(frames.shape) < 0.1
    static = np.zeros(shape, bool)
    static[0, 0] = True
    mask = Mask.from_bad(static)
    one = RunStatistics(shape, mask)
    one.add(frames, bad)
    parts = [RunStatistics(shape, mask) for _ in range(3)]
    for p, sl in zip(parts, (slice(0, 11), slice(11, 12), slice(12, 30)), strict=True):
        for k in range(sl.start, sl.stop):  # single frames too
            p.add(frames[k], bad[k])
    merged = parts[0].merge(parts[1]).merge(parts[2])
    count, mean, std, vmax, nbad = ref.stats(frames.reshape(30, -1), bad.reshape(30, -1),
                                             static.ravel())
    for acc in (one, merged):
        ds = acc.to_dataset()
        np.testing.assert_array_equal(ds["count"].values.ravel(), count)
        np.testing.assert_array_equal(ds["n_bad"].values.ravel(), nbad)
        np.testing.assert_allclose(ds["mean"].values.ravel(), mean, rtol=1e-12)
        np.testing.assert_allclose(ds["std"].values.ravel(), std, rtol=1e-10)
        np.testing.assert_allclose(ds["max"].values.ravel(), vmax, rtol=1e-6)
        assert acc.n_frames == 30
    with pytest.raises(ValueError):
        one.add(np.zeros((2, 3, 3)))
    with pytest.raises(ValueError):
        one.merge(RunStatistics((3, 3)))


# -------------------------------------------------------------- virtual powder
def test_virtual_powder(rng):
    det = builtin_geometry("eiger1m", clen=0.1, wavelength_A=1.0)
    n = 500
    fs = rng.uniform(0, det.data_shape[1], n)
    ss = rng.uniform(0, det.data_shape[0], n)
    inten = rng.exponential(100.0, n)
    peaks = pd.DataFrame({"frame": rng.integers(0, 20, n), "panel": np.zeros(n, np.int64),
                          "fs": fs, "ss": ss, "intensity": inten,
                          "d_A": det.resolution_A(fs, ss, np.zeros(n, np.int64))})
    vp = virtual_powder(peaks, det, bins=50)
    img = np.zeros(det.data_shape)
    np.add.at(img, (ss.astype(int), fs.astype(int)), inten)
    np.testing.assert_allclose(vp["powder"].values, img)
    q = 1.0 / peaks["d_A"].to_numpy()
    qmap = det.maps.q_A.astype(np.float64)
    counts, edges = np.histogram(q, bins=np.linspace(qmap.min(), qmap.max(), 51))
    np.testing.assert_array_equal(vp["histogram"].values, counts)
    np.testing.assert_allclose(vp["d_hi"].values, 1.0 / edges[:-1])
    assert vp.attrs["n_peaks"] == n and vp.attrs["n_frames"] == peaks["frame"].nunique()
    # without d_A: computed from the geometry; without panel: looked up; counts as weight
    vp2 = virtual_powder(peaks.drop(columns=["d_A", "panel"]), det, weight=None, bins=50)
    np.testing.assert_array_equal(vp2["histogram"].values, counts)
    assert vp2["powder"].sum() == n


def test_virtual_powder_stacked(rng):
    det = builtin_geometry("agipd")
    pid = rng.integers(0, det.n_panels, 50)
    fs = np.array([det.panels[i].min_fs + 10.5 for i in pid])
    ss = np.array([det.panels[i].min_ss + 20.5 for i in pid])
    peaks = pd.DataFrame({"panel": pid, "fs": fs, "ss": ss, "intensity": 1.0})
    vp = virtual_powder(peaks, det, axis="two_theta", bins=30)
    assert vp["powder"].dims == ("module", "ss", "fs") and vp["powder"].sum() == 50
    slabs = np.array([det.panels[i].slab for i in pid])
    assert all(vp["powder"].values[m, int(s), int(f)] >= 1 for m, s, f in zip(
        slabs, ss, fs, strict=True))
    tt = np.rad2deg(det.two_theta_rad(fs, ss, pid))
    tmap = np.rad2deg(det.maps.two_theta_rad)
    counts, _ = np.histogram(tt, bins=np.linspace(np.nanmin(tmap), np.nanmax(tmap), 31))
    np.testing.assert_array_equal(vp["histogram"].values, counts)
    with pytest.raises(ValueError, match="panel"):
        virtual_powder(peaks.drop(columns="panel"), det)


@pytest.mark.parametrize("dtype", [np.float32, np.uint16, np.int32])
def test_band_mean_kernel_matches_numpy(dtype, rng):
    from sxlab import _hits_kernels

    flat = (rng.random(20_000) * 50).astype(dtype)
    if flat.dtype.kind == "f":
        flat[rng.random(flat.size) < 0.01] = np.nan
        flat[rng.random(flat.size) < 0.01] = np.inf
    idx = rng.choice(flat.size, 3_000, replace=False)
    bad = rng.random(flat.size) < 0.1
    for has_bad in (False, True):
        v = flat[idx].astype(np.float64)
        keep = np.isfinite(v)
        if has_bad:
            keep &= ~bad[idx]
        got = _hits_kernels.band_mean(flat, idx, bad, has_bad)
        assert got == pytest.approx(v[keep].mean(), rel=1e-12)
    assert np.isnan(_hits_kernels.band_mean(flat, idx[:0], bad, True))
