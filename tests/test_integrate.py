"""Tests for sxlab.integration: kernels against NumPy references, prediction and integration
against the simulator's ground truth, profile radius, resolution limits and estimates."""

import inspect
import math

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from reference import integrate as ref

from sxlab import _integration_kernels as kern
from sxlab import datasets
from sxlab.cell import UnitCell
from sxlab.geometry import Beam, Detector, Panel, builtin_geometry
from sxlab.integration import (
    DEFAULT_PROFILE_RADIUS_INVA,
    IntegrationParams,
    Integrator,
    integrate,
    predict,
    resolution_estimate,
    resolution_per_frame,
)
from sxlab.simulate import Simulator, _random_rotations
from sxlab.tables import PREDICTIONS, REFLECTIONS

LYSOZYME = UnitCell(79.1, 79.1, 37.9, 90, 90, 90, space_group="P 43 21 2")
#: Spot positions predicted with the true crystal agree with the simulator's to this many
#: pixels for a monochromatic beam, and for the lysozyme-4m beam (bandwidth 1e-3).
POSITION_TOL_MONO_PX = 0.05
POSITION_TOL_BANDWIDTH_PX = 0.5


# ============================================================================ helpers
def _panel(name, fs, ss, **kw):
    return Panel(name, fs[0], fs[1], ss[0], ss[1], corner_x=-30.0 + fs[0], corner_y=-25.0,
                 clen=0.1, res=1 / 100e-6, **kw)


def small_detector(kind: str) -> Detector:
    """Small detectors for the kernel tests: one panel, two panels sharing rows, stacked."""
    if kind == "plain":
        panels = (_panel("p0", (0, 63), (0, 49), max_adu=400.0),)
    elif kind == "split":
        panels = (_panel("a", (0, 29), (0, 49), adu_per_photon=2.0),
                  _panel("b", (30, 63), (0, 49), max_adu=150.0))
    elif kind == "stacked":
        panels = tuple(
            _panel(f"m{m}{h}", (0, 31), (20 * h, 20 * h + 19), dims=("%", m, "ss", "fs"),
                   adu_per_photon=None, adu_per_eV=0.001 * (m + 1))
            for m in range(3) for h in range(2))
    else:
        raise ValueError(kind)
    return Detector(panels=panels, beam=Beam(1.0), name=kind)


def _predictions_frame(cols: dict) -> pd.DataFrame:
    return PREDICTIONS.make(cols)


def random_prediction_table(det: Detector, n: int, rng) -> pd.DataFrame:
    panel = rng.integers(0, det.n_panels, n)
    fs = np.empty(n)
    ss = np.empty(n)
    for i, p in enumerate(panel):
        pn = det.panels[p]
        fs[i] = rng.uniform(pn.min_fs, pn.max_fs + 1)
        ss[i] = rng.uniform(pn.min_ss, pn.max_ss + 1)
    for i in range(0, n - 1, 4):
        pn = det.panels[panel[i]]
        panel[i + 1] = panel[i]
        fs[i + 1] = np.clip(fs[i] + rng.uniform(-9, 9), pn.min_fs, pn.max_fs + 0.999)
        ss[i + 1] = np.clip(ss[i] + rng.uniform(-9, 9), pn.min_ss, pn.max_ss + 0.999)
    return _predictions_frame({
        "frame": np.zeros(n), "crystal": np.zeros(n), "h": np.arange(n), "k": np.zeros(n),
        "l": np.zeros(n), "fs": fs, "ss": ss, "panel": panel, "d_A": np.full(n, 3.0),
        "partiality": np.ones(n), "excitation_error_invA": np.zeros(n)})


def random_frame(shape, rng, dtype):
    if dtype == "float32":
        img = rng.normal(20.0, 6.0, shape).astype(np.float32)
        img[rng.random(shape) < 0.01] = np.nan
        img[rng.random(shape) < 0.02] += 500.0
    else:
        img = rng.poisson(8.0, shape).astype(dtype)
        img[rng.random(shape) < 0.02] += 300
    return img


def panel_gain(det: Detector) -> np.ndarray:
    e = det.beam.photon_energy_eV
    return np.array([p.adu_per_photon if p.adu_per_photon is not None else p.adu_per_eV * e
                     for p in det.panels])


def merge_truth(refl: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """Reflections with the truth's photons (0 for reflections the simulator did not make)."""
    cols = ["crystal", "h", "k", "l", "photons"]
    m = refl.merge(truth[cols], on=["crystal", "h", "k", "l"], how="left")
    m["photons"] = m["photons"].fillna(0.0)
    return m


def usable(m: pd.DataFrame) -> pd.Series:
    flags = m.flag_masked | m.flag_saturated | m.flag_edge | m.flag_overlap
    return ~flags & np.isfinite(m.I)


# =========================================================================== fixtures
@pytest.fixture(scope="module")
def sim_mono():
    det = builtin_geometry("eiger4m", clen=0.15, wavelength_A=1.0, bandwidth=0.0)
    return Simulator(det, LYSOZYME, seed=31, hit_fraction=1.0)


@pytest.fixture(scope="module")
def sim_bw():
    sim = datasets.simulator("lysozyme-4m")
    return Simulator(sim.detector, sim.cell, seed=sim.seed,
                     params=sim.params.replace(hit_fraction=1.0))


def sim_mask(sim) -> np.ndarray:
    """Good pixels: no flagged pixel and no beam-stop shadow."""
    return (sim.pixel_mask == 0) & (sim.transmission == 1)


# ============================================================================ kernels
@pytest.mark.parametrize("kind", ["plain", "split", "stacked"])
@pytest.mark.parametrize("radii", [(4, 5, 7), (3, 4, 7), (2.5, 3.5, 5.2), (1, 1, 2)])
@pytest.mark.parametrize("dtype", ["float32", "uint16"])
def test_ring_kernel_matches_reference(kind, radii, dtype, rng):
    det = small_detector(kind)
    shape = det.data_shape
    mask = rng.random(shape) > 0.04
    integrator = Integrator(det, mask, radii=radii, saturation=None if kind != "plain" else 300)
    good = mask & (det.maps.panel >= 0) & ~det.bad_pixel_mask()
    sat = np.array([integrator.params.saturation if integrator.params.saturation is not None
                    else p.max_adu for p in det.panels])
    for trial in range(2):
        img = random_frame(shape, rng, dtype)
        bad = rng.random(shape) < 0.03 if trial else None
        pred = random_prediction_table(det, 40, rng)
        got = integrator(img, bad=bad, predictions=pred)
        exp = ref.ring_integrate(img, good, bad, det, pred.fs.to_numpy(), pred.ss.to_numpy(),
                                 pred.panel.to_numpy(np.int64), integrator.params.radii,
                                 panel_gain(det), sat)
        for col, key in (("I", "I"), ("sigma", "sigma"), ("bg", "bg"), ("peak", "peak")):
            np.testing.assert_allclose(got[col], exp[key], rtol=1e-9, atol=1e-6, err_msg=col)
        np.testing.assert_array_equal(got.n_peak_px, exp["n_peak"])
        np.testing.assert_array_equal(got.n_bg_px, exp["n_bg"])
        for flag in ("masked", "saturated", "edge", "overlap"):
            np.testing.assert_array_equal(got[f"flag_{flag}"], exp[flag], err_msg=flag)
        assert got.flag_overlap.any() and got.flag_edge.any() and got.flag_masked.any()
        pd.testing.assert_frame_equal(got[list(PREDICTIONS.names)], pred)


def test_ring_kernel_empty_and_duplicates(rng):
    det = small_detector("plain")
    integrator = Integrator(det)
    img = random_frame(det.data_shape, rng, "float32")
    empty = integrator(img, predictions=random_prediction_table(det, 0, rng))
    assert len(REFLECTIONS.validate(empty)) == 0
    pred = random_prediction_table(det, 2, rng)
    pred.loc[1, ["fs", "ss"]] = pred.loc[0, ["fs", "ss"]].to_numpy()
    out = integrator(img, predictions=pred)
    assert out.flag_overlap.all()
    np.testing.assert_array_equal(out.I[0], out.I[1])
    # an empty region: I = 0 and sigma at its floor of one photon
    zero = integrator(np.zeros(det.data_shape, np.uint16), predictions=pred.iloc[:1])
    assert zero.I[0] == 0 and zero.sigma[0] == 1.0 and zero.bg[0] == 0


@pytest.mark.parametrize("trial", range(6))
def test_lattice_candidates_match_brute_force(trial, rng):
    cell = UnitCell(*rng.uniform(20, 90, 3), *rng.uniform(70, 115, 3))
    amat = cell.reciprocal_basis @ _random_rotations(rng, 1)[0].T
    k0 = rng.uniform(0.6, 1.4)
    r_max = rng.uniform(5e-4, 0.02) if trial < 5 else 1.5 * k0  # the last: the whole ball
    q_max = rng.uniform(0.15, 0.5)
    exp = ref.lattice_candidates(amat, k0, r_max, q_max)
    lengths = np.linalg.norm(np.linalg.inv(amat).T, axis=1)
    for j in range(3):
        i0, i1 = (i for i in range(3) if i != j)
        m_max, n_max = (int(np.floor(lengths[i] * q_max)) for i in (i0, i1))
        out = np.empty((8, 3), np.int32)
        n = kern.lattice_candidates(amat, i0, i1, j, m_max, n_max, k0, r_max, q_max**2, out)
        assert n == len(exp)
        out = np.empty((n, 3), np.int32)
        kern.lattice_candidates(amat, i0, i1, j, m_max, n_max, k0, r_max, q_max**2, out)
        out = out[np.lexsort((out[:, 2], out[:, 1], out[:, 0]))]
        np.testing.assert_array_equal(out, exp)


# ========================================================================= prediction
def _matched(sim, frames, **kw):
    rows = []
    for i in frames:
        ft = sim.frame_truth(i)
        pred = predict(ft.crystals, sim.detector, **kw)
        assert len(pred) > 0
        rows.append(ft.reflections.merge(pred, on=["crystal", "h", "k", "l"], how="left",
                                         suffixes=("_t", "_p")))
    return pd.concat(rows, ignore_index=True)


@pytest.mark.parametrize("model", ["xsphere", "gaussian"])
def test_predict_monochromatic_matches_truth(sim_mono, model):
    m = _matched(sim_mono, range(4), partiality_model=model)
    strong = m[m.partiality_t > 0.5]
    assert len(strong) > 300
    assert (strong.partiality_p > 0.5).mean() >= 0.99
    found = m.dropna(subset=["fs_p"])
    assert len(found) == len(m)  # every simulated reflection is predicted
    assert np.abs(found.fs_t - found.fs_p).max() < POSITION_TOL_MONO_PX
    assert np.abs(found.ss_t - found.ss_p).max() < POSITION_TOL_MONO_PX
    assert (found.panel_t == found.panel_p).all()
    np.testing.assert_allclose(found.excitation_error_invA_p, found.excitation_error_invA_t,
                               atol=1e-12)
    np.testing.assert_allclose(found.d_A_p, found.d_A_t, rtol=1e-9)


def test_predict_with_bandwidth_matches_truth(sim_bw):
    assert sim_bw.bandwidth == pytest.approx(1e-3)
    m = _matched(sim_bw, range(4))
    strong = m[m.partiality_t > 0.5]
    assert (strong.partiality_p > 0.5).mean() >= 0.99
    dist = np.hypot(strong.fs_t - strong.fs_p, strong.ss_t - strong.ss_p)
    assert dist.max() < POSITION_TOL_BANDWIDTH_PX
    assert dist.median() < 0.2


def test_predict_table_contract(sim_mono):
    ft = sim_mono.frame_truth(0)
    pred = predict(ft.crystals, sim_mono.detector, d_min_A=2.5)
    PREDICTIONS.validate(pred)
    assert pred.d_A.min() >= 2.5
    assert pred.partiality.between(0, 1).all()
    assert (pred.excitation_error_invA.abs() <= DEFAULT_PROFILE_RADIUS_INVA).all()
    key = pred[["crystal", "h", "k", "l"]]
    assert not key.duplicated().any()
    assert key.equals(key.sort_values(["crystal", "h", "k", "l"]))
    empty = predict(ft.crystals.iloc[:0], sim_mono.detector)
    assert len(PREDICTIONS.validate(empty)) == 0


def test_profile_radius_sources_and_centering(sim_mono):
    det = sim_mono.detector
    ft = sim_mono.frame_truth(1)
    small = predict(ft.crystals, det, profile_radius_invA=5e-4)
    assert small.excitation_error_invA.abs().max() <= 5e-4
    assert len(small) < len(predict(ft.crystals, det))
    xt = ft.crystals.assign(profile_radius_invA=3e-4)
    col = predict(xt, det, profile_radius_invA=5e-4)
    assert col.excitation_error_invA.abs().max() <= 3e-4
    for centering, rule in (("I", lambda h, k, l: (h + k + l) % 2 == 0),
                            ("F", lambda h, k, l: ((h + k) % 2 == 0) & ((k + l) % 2 == 0)),
                            ("C", lambda h, k, l: (h + k) % 2 == 0)):
        pred = predict(ft.crystals.assign(centering=centering), det)
        assert len(pred) and rule(pred.h, pred.k, pred.l).all()


def test_push_res_uses_the_crystals_apparent_resolution(sim_mono):
    det = sim_mono.detector
    ft = sim_mono.frame_truth(2)
    xt = ft.crystals.iloc[:1]
    d_app = float(ft.reflections.d_A[ft.reflections.crystal == 0].min()) + 0.3
    with_limit = xt.assign(resolution_limit_A=d_app)
    for push in (0.0, -0.1):
        pred = predict(with_limit, det, push_res_invA=push, profile_radius_invA=0.002)
        assert (1 / pred.d_A).max() <= 1 / d_app + push + 1e-12
        assert (1 / pred.d_A).max() > 1 / d_app + push - 0.02
    # A crystal without an apparent resolution (column missing or NaN) keeps d_min.
    full = predict(xt, det, push_res_invA=0.0, profile_radius_invA=0.002)
    assert (1 / full.d_A).max() > 1 / d_app + 0.05
    pd.testing.assert_frame_equal(full, predict(with_limit.assign(resolution_limit_A=np.nan),
                                                det, push_res_invA=0.0,
                                                profile_radius_invA=0.002))
    assert "peaks" not in inspect.signature(integrate).parameters
    assert "peaks" not in inspect.signature(predict).parameters


# ======================================================================== integration
def test_integration_with_poisson_noise(sim_bw):
    integrator = Integrator(sim_bw.detector, sim_mask(sim_bw),
                            saturation=float(sim_bw.saturation_adu[0]))
    rows = []
    for i in range(5):
        data, ft = sim_bw.frame(i)
        refl = integrator(data, ft.crystals)
        REFLECTIONS.validate(refl)
        rows.append(merge_truth(refl, ft.reflections))
    m = pd.concat(rows, ignore_index=True)
    ok = usable(m)
    strong = m[ok & (m.photons >= 200)]
    assert len(strong) > 100
    assert np.corrcoef(strong.I, strong.photons)[0, 1] >= 0.9
    assert np.median(strong.I / strong.photons) == pytest.approx(1.0, abs=0.05)
    weak = m[ok & (m.photons < 20)]
    z = (weak.I - weak.photons) / weak.sigma
    assert len(weak) > 1000
    assert 0.8 <= z.std() <= 1.3
    assert abs(z.mean()) < 0.1


def test_integration_gain_and_sigma():
    base = builtin_geometry("eiger1m", clen=0.08, wavelength_A=1.0)
    det = base.replace(panels=(base.panels[0].replace(adu_per_photon=2.5),))
    sim = Simulator(det, LYSOZYME, seed=5, hit_fraction=1.0, fluence=600.0)
    integrator = Integrator(det, sim_mask(sim))
    rows = []
    for i in range(4):
        data, ft = sim.frame(i)
        rows.append(merge_truth(integrator(data, ft.crystals), ft.reflections))
    m = pd.concat(rows, ignore_index=True)
    ok = usable(m)
    strong = m[ok & (m.photons >= 200)]
    assert np.median(strong.I / (2.5 * strong.photons)) == pytest.approx(1.0, abs=0.05)
    weak = m[ok & (m.photons < 20)]
    z = (weak.I - 2.5 * weak.photons) / weak.sigma
    assert 0.8 <= z.std() <= 1.3


def test_noise_free_isolated_spots(sim_bw):
    integrator = Integrator(sim_bw.detector, sim_mask(sim_bw))
    rows = []
    for i in range(3):
        expected, ft = sim_bw.expected_photons(i)
        m = merge_truth(integrator(expected, ft.crystals), ft.reflections)
        tr = ft.reflections[ft.reflections.photons > 0.5]
        near = np.zeros(len(m), dtype=bool)
        for j, (fs, ss) in enumerate(zip(m.fs, m.ss, strict=True)):
            dist = np.hypot(tr.fs - fs, tr.ss - ss)
            near[j] = np.count_nonzero(dist < 12.0) > (1 if m.photons.iloc[j] > 0.5 else 0)
        rows.append(m[~near])
    m = pd.concat(rows, ignore_index=True)
    iso = m[usable(m) & (m.photons >= 200)]
    assert len(iso) > 50
    np.testing.assert_allclose(iso.I, iso.photons, rtol=0.02)


def test_saturated_and_masked_flags():
    base = builtin_geometry("eiger1m", clen=0.08, wavelength_A=1.0)
    det = base.replace(panels=(base.panels[0].replace(max_adu=120.0),))
    sim = Simulator(det, LYSOZYME, seed=9, hit_fraction=1.0, fluence=3000.0)
    good = sim_mask(sim)
    good[300:340, 200:700] = False  # a painted stripe
    integrator = Integrator(det, good)
    data, ft = sim.frame(0)
    expected, _ = sim.expected_photons(0)
    refl = integrator(data, ft.crystals)
    # saturation from the panel's max_adu: flagged exactly where a used peak pixel is >= 120
    np.testing.assert_array_equal(refl.flag_saturated, refl.peak >= 120)
    assert refl.flag_saturated.sum() > 5
    assert (refl.peak[refl.flag_saturated] == 120).all()
    # reflections whose expected brightest pixel is far above / below the level
    h = 4
    brightest = np.array([expected[max(int(s) - h, 0):int(s) + h + 1,
                                   max(int(f) - h, 0):int(f) + h + 1].max()
                          for f, s in zip(refl.fs, refl.ss, strict=True)])
    clean = ~refl.flag_masked & ~refl.flag_edge
    assert refl.flag_saturated[clean & (brightest > 200)].all()
    assert not refl.flag_saturated[clean & (brightest < 60)].any()
    # masked flag: a peak pixel (integer distance <= 4 from the centre pixel) is not good
    usable_px = integrator.good
    for row in refl.itertuples():
        c, r = int(row.fs), int(row.ss)
        rr, cc = np.mgrid[r - 4:r + 5, c - 4:c + 5]
        disc = (rr - r) ** 2 + (cc - c) ** 2 <= 16
        inside = (rr >= 0) & (rr < det.data_shape[0]) & (cc >= 0) & (cc < det.data_shape[1])
        sel = disc & inside
        masked = not usable_px[rr[sel], cc[sel]].all()
        assert row.flag_masked == masked
        assert row.n_peak_px == np.count_nonzero(usable_px[rr[sel], cc[sel]])
    stripe = refl[(refl.ss > 304) & (refl.ss < 336) & (refl.fs > 204) & (refl.fs < 696)]
    assert len(stripe) and stripe.flag_masked.all()


def test_integrate_function_and_inputs(sim_mono, rng):
    det = sim_mono.detector
    data, ft = sim_mono.frame(3)
    mask = sim_mask(sim_mono)
    integrator = Integrator(det, mask, radii=(3, 4, 7))
    refl = integrator(data, ft.crystals)
    pd.testing.assert_frame_equal(integrate(data, det, ft.crystals, mask=mask, radii=(3, 4, 7)),
                                  refl)
    pred = integrator.predict(ft.crystals)
    pd.testing.assert_frame_equal(integrator(data, predictions=pred), refl)
    # float input with the flagged pixels as a per-frame bad array gives the same numbers
    as_float = integrator(data.astype(np.float32), ft.crystals, bad=sim_mono.pixel_mask != 0)
    pd.testing.assert_frame_equal(as_float, refl)
    image = xr.DataArray(data.astype(np.float32), dims=("ss", "fs"), attrs={"frame": 3})
    pd.testing.assert_frame_equal(integrator(image, ft.crystals), refl)
    with pytest.raises(ValueError, match="several frames"):
        integrator(data, pd.concat([ft.crystals, ft.crystals.assign(frame=4)]))
    assert integrator.n_peak_offsets == 29 and integrator.n_background_offsets == 100
    with pytest.raises(ValueError, match="shape"):
        integrator(data[:-1], ft.crystals)
    with pytest.raises(ValueError, match="crystals or predictions"):
        integrator(data)
    with pytest.raises(TypeError, match="radii"):
        Integrator(det, mask, (4, 5, 7))
    assert "Integrator" in repr(integrator)


def test_params():
    p = IntegrationParams(radii=[3, 4, 7], push_res_invA=0.1)
    assert IntegrationParams.from_dict(p.to_dict()) == p
    assert p.digest() != IntegrationParams().digest()
    assert IntegrationParams().push_res_invA == math.inf
    for bad in ({"radii": (4, 3, 7)}, {"radii": (4, 5, 5)}, {"radii": (0, 5, 7)},
                {"partiality_model": "lorentzian"}, {"profile_radius_invA": -1.0},
                {"d_min_A": 0.0}, {"push_res_invA": float("nan")}):
        with pytest.raises(ValueError):
            IntegrationParams(**bad)


# ========================================================================= resolution
def test_resolution_estimate_finds_the_right_shell(rng):
    n_bins = 10
    x = rng.uniform(20.0**-3, 1.5**-3, 2000)
    x[:2] = (20.0**-3, 1.5**-3)  # the shells span exactly this range
    d = x ** (-1 / 3)
    edges = np.linspace(20.0**-3, 1.5**-3, n_bins + 1)
    shell = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, n_bins - 1)
    level = np.array([9, 8, 6, 5, 4, 3, 2.5, 1.2, 0.8, 0.4])[shell]
    sigma = rng.uniform(1, 3, x.size)
    table = pd.DataFrame({"d_A": d, "I": level * sigma * rng.uniform(0.9, 1.1, x.size),
                          "sigma": sigma})
    got = resolution_estimate(table, n_bins=n_bins)
    assert got == pytest.approx(edges[8] ** (-1 / 3))
    # a higher shell that reaches the threshold wins even if the one below does not
    table.loc[shell == 9, "I"] = 2.0 * table.sigma[shell == 9]
    assert resolution_estimate(table, n_bins=n_bins) == pytest.approx(1.5)
    assert math.isnan(resolution_estimate(table, min_i_over_sigma=100.0))
    assert math.isnan(resolution_estimate(table.iloc[:0]))
    two = pd.concat([table.assign(frame=4), table.assign(frame=2, I=table.I / 2.2),
                     table.assign(frame=7, I=table.I / 100)])
    per = resolution_per_frame(two, n_bins=n_bins)
    assert per.name == "resolution_A" and per.index.tolist() == [2, 4, 7]
    assert per[4] == pytest.approx(1.5)
    assert per[2] == pytest.approx(edges[7] ** (-1 / 3))
    assert math.isnan(per[7])
