import math
import os
import re

import gemmi
import h5py
import hdf5plugin  # noqa: F401  (registers the bitshuffle filter for h5py)
import numpy as np
import pandas as pd
import pytest
from reference import simulate as ref
from scipy import stats

from sxlab import _simulate_kernels as kern
from sxlab import tables
from sxlab.cell import UnitCell
from sxlab.geometry import BadRegion, Beam, Detector, Panel, builtin_geometry
from sxlab.reciprocal import excitation_error
from sxlab.simulate import (
    SimulationParams,
    Simulator,
    Truth,
    simulate_frame,
    truth_paths,
)

LYSO = UnitCell(79.1, 79.1, 37.9, 90, 90, 90, space_group="P 43 21 2")
QUIET = dict(constant_background=0.0, diffuse_background=0.0, water_ring=0.0,
             bad_pixel_fraction=0.0, beamstop_radius_px=0.0)


def small_detector(n_fs=512, n_ss=480, clen=0.05, wavelength_A=1.0, bandwidth=0.0, **panel):
    p = Panel("p0", 0, n_fs - 1, 0, n_ss - 1, corner_x=-n_fs / 2 + 0.37,
              corner_y=-n_ss / 2 - 0.21, res=1 / 75e-6, clen=clen, data="/entry/data/data",
              **panel)
    return Detector(panels=(p,), beam=Beam(wavelength_A, bandwidth=bandwidth),
                    groups=(("all", ("p0",)),), name="test")


def _kout_unit(truth, detector):
    """Unit k_out predicted from the crystal basis and from the pixel position."""
    r = truth.reflections
    c = truth.crystals.set_index(["frame", "crystal"])
    cols = [f"{v}star_{x}" for v in "abc" for x in "xyz"]
    amat = c.loc[list(zip(r.frame, r.crystal, strict=True)), cols].to_numpy().reshape(-1, 3, 3)
    hkl = r[["h", "k", "l"]].to_numpy(float)
    q = np.einsum("ni,nij->nj", hkl, amat)
    kout = q + np.outer(1.0 / r.wavelength_A.to_numpy(), [0, 0, 1])
    lab = detector.pixel_to_lab(r.fs.to_numpy(), r.ss.to_numpy(), r.panel.to_numpy())
    unit = lambda v: v / np.linalg.norm(v, axis=1, keepdims=True)  # noqa: E731
    return unit(kout), unit(lab), q


# ---------------------------------------------------------------------- intensities
@pytest.mark.parametrize("sg, params", [
    ("P 43 21 2", (79.1, 79.1, 37.9, 90, 90, 90)),
    ("C 1 2 1", (60.0, 40.0, 50.0, 90, 104, 90)),
    ("P 61 2 2", (60.0, 60.0, 90.0, 90, 90, 120)),
    ("I 2 3", (70.0, 70.0, 70.0, 90, 90, 90)),
])
def test_symmetry_equivalents_share_intensity(sg, params):
    cell = UnitCell(*params, space_group=sg)
    sim = Simulator(small_detector(64, 64), cell, seed=3, d_min_A=4.0, **QUIET)
    gsg = gemmi.SpaceGroup(sg)
    ops = gsg.operations()
    table = sim.intensities
    assert not ops.systematic_absences(table[["h", "k", "l"]].to_numpy(np.int32)).any()
    assert (table.I >= 0).all() and (table.I > 0).mean() > 0.99
    asu = table[["h", "k", "l"]].to_numpy()
    for op in ops.sym_ops:
        for sign in (1, -1):
            eq = np.array([op.apply_to_hkl([int(x) for x in sign * h]) for h in asu])
            np.testing.assert_array_equal(sim.true_intensity(eq), table.I.to_numpy())
    # Every hkl to d_min is present exactly when gemmi says it is not absent.
    full = gemmi.make_miller_array(cell.to_gemmi(), gsg, 4.0, unique=False)
    assert np.isfinite(sim.true_intensity(full)).all()
    grid = np.stack(np.meshgrid(*[np.arange(-8, 9)] * 3, indexing="ij"), -1).reshape(-1, 3)
    grid = grid[np.any(grid != 0, axis=1)].astype(np.int32)
    grid = grid[cell.d_spacing(grid) >= 4.0 * (1 + 1e-9)]
    absent = ops.systematic_absences(grid)
    values = sim.true_intensity(grid)
    assert np.isnan(values[absent]).all() and np.isfinite(values[~absent]).all()


def test_wilson_statistics():
    sim = Simulator(small_detector(64, 64), LYSO, seed=5, d_min_A=2.0, wilson_b_A2=0.0,
                    **QUIET)
    t = sim.intensities
    norm = t.I / t.epsilon
    acentric = norm[~t.centric]
    assert abs(acentric.mean() - 1) < 0.05
    assert abs((acentric**2).mean() - 2) < 0.3  # <I²>/<I>² = 2 for acentric
    centric = norm[t.centric]
    assert abs((centric**2).mean() / centric.mean() ** 2 - 3) < 0.8


def test_truth_reflections_carry_symmetric_intensities():
    sim = Simulator(small_detector(), LYSO, seed=2, hit_fraction=1.0, **QUIET)
    truth = sim.truth(4)
    r = truth.reflections.merge(truth.crystals[["frame", "crystal", "scale",
                                                "b_factor_delta_A2"]])
    assert len(r) > 200
    s2 = 1 / (4 * r.d_A**2)
    base = r.I_true / (sim.params.fluence * r.scale * np.exp(-2 * r.b_factor_delta_A2 * s2))
    hkl = r[["h", "k", "l"]].to_numpy()
    np.testing.assert_allclose(base, sim.true_intensity(hkl), rtol=1e-10)
    ops = gemmi.SpaceGroup(LYSO.space_group).operations()
    assert not ops.systematic_absences(hkl.astype(np.int32)).any()
    np.testing.assert_allclose(r.photons, r.I_true * r.partiality * r.polarization)
    assert (r.partiality > sim.params.partiality_min).all() and (r.partiality <= 1).all()


# ------------------------------------------------------------------------ rendering
def _isolated_inside(refl, detector, sigma, margin):
    fs, ss = refl.fs.to_numpy(), refl.ss.to_numpy()
    d = np.hypot(fs[:, None] - fs[None], ss[:, None] - ss[None])
    np.fill_diagonal(d, np.inf)
    p = detector.panels[0]
    inside = ((fs - margin >= p.min_fs) & (fs + margin <= p.max_fs + 1)
              & (ss - margin >= p.min_ss) & (ss + margin <= p.max_ss + 1))
    return inside & (d.min(axis=1) > 2 * margin + 1) & (refl.photons.to_numpy() > 5)


def test_noise_free_spot_centroids_and_photons():
    det = small_detector()
    sigma = 0.8
    sim = Simulator(det, LYSO, seed=11, hit_fraction=1.0, multi_lattice_probability=0.0,
                    poisson=False, spot_sigma_px=sigma, dtype="uint32", fluence=1e6, **QUIET)
    n_checked = 0
    for i in range(3):
        data, ft = sim.frame(i)
        lam, _ = sim.expected_photons(i)
        r = ft.reflections
        ok = _isolated_inside(r, det, sigma, 4 * sigma + 1)
        for fs, ss, photons in r.loc[ok, ["fs", "ss", "photons"]].itertuples(index=False):
            f0, f1 = math.floor(fs - 3 * sigma), math.floor(fs + 3 * sigma)
            s0, s1 = math.floor(ss - 3 * sigma), math.floor(ss + 3 * sigma)
            yy, xx = np.mgrid[s0:s1 + 1, f0:f1 + 1] + 0.5
            g0, g1 = math.floor(fs - 5 * sigma), math.floor(fs + 5 * sigma)
            h0, h1 = math.floor(ss - 5 * sigma), math.floor(ss + 5 * sigma)
            # Exact mean image: every isolated spot.
            w = lam[s0:s1 + 1, f0:f1 + 1].astype(float)
            assert abs((w * xx).sum() / w.sum() - fs) < 0.3
            assert abs((w * yy).sum() / w.sum() - ss) < 0.3
            assert lam[h0:h1 + 1, g0:g1 + 1].sum(dtype=float) == pytest.approx(photons, rel=0.02)
            # The frame itself (rounded to whole ADU): spots well above the rounding.
            if photons > 2000:
                wd = data[s0:s1 + 1, f0:f1 + 1].astype(float)
                assert abs((wd * xx).sum() / wd.sum() - fs) < 0.3
                assert abs((wd * yy).sum() / wd.sum() - ss) < 0.3
                total = data[h0:h1 + 1, g0:g1 + 1].sum(dtype=float)
                assert total == pytest.approx(photons, rel=0.02)
                n_checked += 1
    assert n_checked > 100


@pytest.mark.parametrize("bandwidth", [0.0, 0.01])
def test_spot_positions_follow_kout(bandwidth):
    det = small_detector(bandwidth=bandwidth)
    sim = Simulator(det, LYSO, seed=4, hit_fraction=1.0, **QUIET)
    truth = sim.truth(3)
    kout, lab, q = _kout_unit(truth, det)
    np.testing.assert_allclose(kout, lab, atol=1e-9)
    if bandwidth:
        # Broad spectrum: the spot's wavenumber puts the reciprocal-lattice point near
        # the sphere, closer than the nominal one does.
        k = 1 / truth.reflections.wavelength_A.to_numpy()
        s_star = excitation_error(q, k)
        s0 = truth.reflections.excitation_error_invA.to_numpy()
        assert np.median(np.abs(s_star)) < 0.5 * np.median(np.abs(s0))


def test_stacked_multi_panel_detector():
    det = builtin_geometry("agipd")
    sim = Simulator(det, LYSO, seed=9, hit_fraction=1.0, poisson=False,
                    bad_pixel_fraction=0.0, beamstop_radius_px=0.0)
    data, ft = sim.frame(0)
    assert data.shape == det.data_shape == (16, 512, 128)
    truth = Truth.from_frames([ft], sim.intensities)
    kout, lab, _ = _kout_unit(truth, det)
    np.testing.assert_allclose(kout, lab, atol=1e-9)
    assert ft.reflections.panel.nunique() > 5
    gain = det.panels[0].adu_per_eV * det.beam.photon_energy_eV
    lam, _ = sim.expected_photons(0)
    good = ~sim.bad_pixels
    expect = np.minimum(np.floor(lam[good].astype(float) * gain + 0.5), 65000)
    np.testing.assert_array_equal(data[good], expect)
    assert (data[~good] == 65535).all()


# ---------------------------------------------------------------------- determinism
def test_same_seed_identical_and_order_independent():
    det = small_detector(200, 180)
    kw = dict(hit_fraction=0.7, multi_lattice_probability=0.5, bad_pixel_fraction=1e-3)
    a = Simulator(det, LYSO, seed=21, **kw)
    b = Simulator(det, LYSO, seed=21, **kw)
    run = list(a.frames(4))
    for i in (3, 0, 2, 1):
        data, ft = b.frame(i)
        assert data.tobytes() == run[i][0].tobytes()
        pd.testing.assert_frame_equal(ft.reflections, run[i][1].reflections)
        pd.testing.assert_frame_equal(ft.crystals, run[i][1].crystals)
    pd.testing.assert_frame_equal(a.truth(4).frames, b.truth(4).frames)
    pd.testing.assert_frame_equal(a.intensities, b.intensities)
    np.testing.assert_array_equal(a.bad_pixels, b.bad_pixels)
    c = Simulator(det, LYSO, seed=22, **kw)
    assert not np.array_equal(c.frame(0)[0], run[0][0])
    assert not np.array_equal(c.intensities.I, a.intensities.I)
    assert not np.array_equal(run[0][0], run[1][0])


# ---------------------------------------------------------------------------- noise
@pytest.mark.parametrize("level", [0.3, 4.0, 40.0])
def test_poisson_statistics_on_flat_background(level):
    det = small_detector(128, 128, clen=0.2)
    omega = (75e-6) ** 2 / 0.2**2 * 1e6
    sim = Simulator(det, LYSO, seed=8, hit_fraction=0.0, constant_background=level / omega,
                    diffuse_background=0.0, water_ring=0.0, background_scale_sigma=0.0,
                    polarization_fraction=None, bad_pixel_fraction=0.0,
                    beamstop_radius_px=0.0, dtype="uint32")
    lam = np.concatenate([sim.expected_photons(i)[0].ravel() for i in range(4)]).astype(float)
    counts = np.concatenate([sim.frame(i)[0].ravel() for i in range(4)]).astype(float)
    assert lam.mean() == pytest.approx(level, rel=0.01)
    n = lam.size
    z_mean = (counts - lam).sum() / np.sqrt(lam.sum())
    assert abs(z_mean) < 4
    ratio = ((counts - lam) ** 2).sum() / lam.sum()
    assert abs(ratio - 1) < 5 * np.sqrt((2 + 1 / level) / n)


@pytest.mark.parametrize("lam", [0.05, 1.3, 5.9, 6.1, 9.9, 10.0, 37.5, 1234.5])
def test_poisson_kernel_distribution(lam):
    n = 200_000
    means = np.full((1, n), lam, dtype=np.float32)
    out = np.empty((1, n), dtype=np.uint32)
    with np.errstate(over="ignore"):
        kern.photons_to_adu(out, means, np.array([[0, 1, 0, n]]), np.ones(1),
                            np.array([1e9]), 99, 2**32 - 1)
    x = out.ravel().astype(np.int64)
    lo, hi = stats.poisson.ppf(1e-4, lam), stats.poisson.ppf(1 - 1e-4, lam)
    edges = np.unique(np.linspace(lo, hi + 1, 40).astype(int))
    obs = np.histogram(np.clip(x, edges[0], edges[-1] - 1), bins=edges)[0]
    cdf = stats.poisson.cdf(edges - 1, lam)
    cdf[0], cdf[-1] = 0.0, 1.0
    exp = np.diff(cdf) * n
    keep = exp > 5
    chi2 = ((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum()
    assert stats.chi2.sf(chi2, keep.sum() - 1) > 1e-3
    assert abs(x.mean() - lam) < 5 * np.sqrt(lam / n)


# ------------------------------------------------------------------ detector effects
@pytest.fixture(scope="module")
def eiger_sim():
    return Simulator(builtin_geometry("eiger4m"), LYSO, seed=1, d_min_A=3.0,
                     hit_fraction=1.0)


def test_eiger_gaps_flagged_and_beamstop(eiger_sim):
    det = eiger_sim.detector
    data, ft = eiger_sim.frame(0)
    gaps = det.bad_pixel_mask()
    assert gaps.sum() > 200_000
    assert (data[gaps] == 65535).all()
    assert (data[eiger_sim.bad_pixels] == 65535).all()
    assert (data[~eiger_sim.bad_pixels] < 65535).all()
    n_random = eiger_sim.bad_pixels.sum() - gaps.sum()
    assert n_random == round(1e-4 * (~gaps).sum())
    assert set(np.unique(eiger_sim.pixel_mask)) == {0, 1, 2, 8}
    # Beam stop: shadowed, not flagged, and reported.
    shadow = eiger_sim.transmission < 1
    fs, ss = det.beam_center_px()
    assert shadow[int(ss), int(fs)]
    edge = int(ss + (det.data_shape[1] - fs) * np.tan(np.deg2rad(30)))
    assert shadow[edge - 1, -1] and not shadow[edge - 20, -1]
    assert eiger_sim.beamstop["shadowed_pixels"] == shadow.sum()
    assert (data[shadow & ~eiger_sim.bad_pixels] < 65535).all()
    assert len(ft.reflections) > 50


def test_saturation_and_uint32_flag():
    det = small_detector(160, 160, max_adu=500.0)
    det = det.replace(bad_regions=(BadRegion("strip", 10, 12, 0, 159, panel="p0"),))
    sim = Simulator(det, LYSO, seed=3, hit_fraction=1.0, fluence=1e6, dtype="uint32")
    data, _ = sim.frame(0)
    good = ~sim.bad_pixels
    assert data[good].max() == 500
    assert (data[:, 10:13] == 2**32 - 1).all()
    assert sim.flag_value == 2**32 - 1
    sim16 = Simulator(small_detector(160, 160), LYSO, seed=3, hit_fraction=1.0, fluence=1e8)
    d16, _ = sim16.frame(0)
    assert d16[~sim16.bad_pixels].max() == 65534


def test_hit_fraction_and_lattices():
    sim = Simulator(small_detector(64, 64), LYSO, seed=6, hit_fraction=0.5,
                    multi_lattice_probability=0.3, solvent_probability=0.25, **QUIET)
    f = sim.truth(200).frames
    assert abs(f.hit.mean() - 0.5) < 0.12
    assert abs((f.n_crystals[f.hit] == 2).mean() - 0.3) < 0.15
    assert abs(f.solvent.mean() - 0.25) < 0.1
    assert (f.n_crystals[~f.hit] == 0).all()


def test_orientations_are_rotations_and_spread():
    sim = Simulator(small_detector(32, 32), LYSO, seed=12, hit_fraction=1.0, **QUIET)
    c = sim.truth(300).crystals
    u = c[[f"u_{i}{j}" for i in (1, 2, 3) for j in (1, 2, 3)]].to_numpy().reshape(-1, 3, 3)
    np.testing.assert_allclose(u @ u.transpose(0, 2, 1), np.broadcast_to(np.eye(3), u.shape),
                               atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(u), 1.0)
    assert np.abs(u.mean(axis=0)).max() < 0.12
    astar = c[[f"{v}star_{x}" for v in "abc" for x in "xyz"]].to_numpy().reshape(-1, 3, 3)
    np.testing.assert_allclose(astar, LYSO.reciprocal_basis @ u.transpose(0, 2, 1), atol=1e-15)


# ------------------------------------------------------------------- tables, params
def test_tables_follow_schema():
    sim = Simulator(small_detector(96, 96), LYSO, seed=1, hit_fraction=0.5, **QUIET)
    truth = sim.truth(6)
    for name in ("frames", "crystals", "reflections", "intensities"):
        tables.get(f"truth_{name}").validate(getattr(truth, name))
    empty = Simulator(small_detector(32, 32), LYSO, seed=1, hit_fraction=0.0).frame_truth(0)
    tables.TRUTH_REFLECTIONS.validate(empty.reflections)
    tables.TRUTH_CRYSTALS.validate(empty.crystals)
    doc = Truth.__doc__
    for name in ("frames", "crystals", "reflections", "intensities"):
        for col in tables.get(f"truth_{name}").names:
            assert re.search(rf"\b{col}\b", doc), col


def test_params_round_trip_and_validation():
    p = SimulationParams(fluence=10.0, bandwidth=0.002)
    assert SimulationParams.from_dict(p.to_dict()) == p
    assert p.digest() == SimulationParams(fluence=10.0, bandwidth=0.002).digest()
    assert p.digest() != SimulationParams().digest()
    with pytest.raises(ValueError, match="dtype"):
        SimulationParams(dtype="float32")
    with pytest.raises(ValueError, match="hit_fraction"):
        SimulationParams(hit_fraction=1.5)
    with pytest.raises(ValueError, match="space group"):
        Simulator(small_detector(32, 32), UnitCell(50, 50, 50), seed=0)


def test_simulate_frame_convenience():
    data, ft = simulate_frame(small_detector(128, 128), LYSO, seed=4, frame=2,
                              hit_fraction=1.0)
    assert data.dtype == np.uint16 and ft.frame == 2 and ft.hit


# ------------------------------------------------------------------------- kernels
@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (64, 50)])
def test_compose_background_matches_reference(rng, shape):
    maps = [rng.random(shape, dtype=np.float32) for _ in range(3)]
    a, b, c = rng.random(3) * 5
    out = np.empty(shape, np.float32)
    kern.compose_background(out, *maps, a, b, c)
    np.testing.assert_allclose(out, ref.compose_background(*maps, a, b, c), rtol=1e-6)


@pytest.mark.parametrize("sigma", [0.5, 0.8, 2.3])
def test_add_spots_matches_reference(rng, sigma):
    rows, cols = 90, 70
    lam = rng.random((rows, cols), dtype=np.float32)
    trans = np.where(rng.random((rows, cols)) < 0.2, 1e-3, 1.0).astype(np.float32)
    n = 40
    # Two panels stacked as modules of 45 rows; spots near and across their edges.
    module = rng.integers(0, 2, n)
    row0 = module * 45
    fs_lo = np.full(n, 5)
    fs_hi = np.full(n, 64)
    ss_lo = np.zeros(n, dtype=np.int64)
    ss_hi = np.full(n, 44)
    fs = rng.uniform(2, 68, n)
    ss = rng.uniform(-2, 47, n)
    photons = rng.uniform(0, 1000, n)
    args = (trans, fs, ss, row0.astype(np.int64), fs_lo.astype(np.int64),
            fs_hi.astype(np.int64), ss_lo, ss_hi.astype(np.int64), photons, sigma, 4.0)
    expect = ref.add_spots(lam, *args)
    got = lam.copy()
    kern.add_spots(got, *args)
    np.testing.assert_allclose(got, expect, rtol=2e-5, atol=2e-4)


@pytest.mark.parametrize("n", [0, 1, 5000])
def test_excitation_candidates_match_reference(rng, n):
    hkl = rng.integers(-40, 41, (n, 3)).astype(np.int32)
    rot = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    amat = LYSO.reciprocal_basis @ rot.T
    limit2 = rng.uniform(0, 1e-4, n)
    idx, s0 = kern.excitation_candidates(hkl, amat, 1.0, limit2)
    ref_idx, ref_s0 = ref.excitation_candidates(hkl, amat, 1.0, limit2)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(s0, ref_s0, rtol=1e-12, atol=1e-15)
    if n > 1000:
        assert 0 < len(idx) < n


def test_uniform_stream_matches_reference():
    with np.errstate(over="ignore"):
        got = kern.splitmix64_uniforms(np.uint64(2**63 + 12345), 1000)
    np.testing.assert_array_equal(got, ref.uniforms(2**63 + 12345, 1000))
    assert 0.45 < got.mean() < 0.55


@pytest.mark.parametrize("noise", [True, False])
def test_noise_kernels_match_reference(rng, noise):
    rows, cols = 30, 41
    lam = (rng.random((rows, cols)) * rng.choice([0.1, 2.0, 7.0, 30.0, 3000.0],
                                                 (rows, cols))).astype(np.float32)
    lam[0, :5] = 0.0
    rect = np.array([[0, 15, 0, 41], [15, 30, 3, 38]], dtype=np.int64)
    gain = np.array([1.0, 2.7])
    sat = np.array([65534.0, 2000.0])
    seed = 0x1234_5678_9ABC_DEF0
    out = np.zeros((rows, cols), np.uint16)
    with np.errstate(over="ignore"):
        kern.photons_to_adu(out, lam, rect, gain, sat, seed, 65535, noise=noise)
    expect = ref.noisy_adu(lam, rect, gain, sat, seed, noise=noise)
    inside = np.isfinite(expect)
    np.testing.assert_array_equal(out[inside], expect[inside])
    # Unit gain: leaving out the gain pass changes nothing.
    ones, high = np.ones(2), np.full(2, 65534.0)
    full, fast = np.zeros_like(out), np.zeros_like(out)
    with np.errstate(over="ignore"):
        kern.photons_to_adu(full, lam, rect, ones, high, seed, 65535, noise=noise)
        kern.photons_to_adu(fast, lam, rect, ones, high, seed, 65535, noise=noise,
                            skip_gain=True)
    np.testing.assert_array_equal(fast[inside], full[inside])
    np.testing.assert_array_equal(full[inside], ref.noisy_adu(lam, rect, ones, high, seed,
                                                              noise=noise)[inside])


def test_exp_neg_accuracy():
    x = np.linspace(0, 8, 2001)
    got = np.array([kern.exp_neg(v) for v in x])
    np.testing.assert_allclose(got, np.exp(-x), rtol=1e-9)
    np.testing.assert_array_equal(got, [ref.exp_neg(v) for v in x])


# ---------------------------------------------------------------------------- files
def test_write_nxmx_and_truth_round_trip(tmp_path):
    det = small_detector(64, 48)
    sim = Simulator(det, LYSO, seed=5, hit_fraction=0.6, bad_pixel_fraction=0.01)
    master = tmp_path / "sim_master.h5"
    truth = sim.write(master, 5, frames_per_file=2, progress=False)
    assert len(truth.frames) == 5
    with h5py.File(master, "r") as f:
        stored = f["/entry/data/data"][()]
        mask = f["/entry/instrument/detector/pixel_mask"][()]
    assert stored.dtype == np.uint16 and stored.shape == (5, 48, 64)
    for i in range(5):
        np.testing.assert_array_equal(stored[i], sim.frame(i)[0])
    np.testing.assert_array_equal(mask, sim.pixel_mask)
    assert sorted(p.name for p in tmp_path.iterdir() if "data_" in p.name) == [
        "sim_data_000001.h5", "sim_data_000002.h5", "sim_data_000003.h5"]
    loaded = Truth.load(master)
    for name in ("frames", "crystals", "reflections", "intensities"):
        pd.testing.assert_frame_equal(getattr(loaded, name), getattr(truth, name))
    assert loaded.metadata["seed"] == 5
    assert loaded.metadata["params"] == sim.params.to_dict()
    assert loaded.metadata["geometry"].strip()
    assert all(os.path.exists(p) for p in truth_paths(master).values())


def test_powder_rings_sit_at_their_d_spacings(tmp_path):
    from sxlab.io import open_run
    from sxlab.simulate import write_powder

    det = builtin_geometry("eiger1m", clen=0.15, wavelength_A=1.0)
    truth = write_powder(tmp_path / "agbeh_master.h5", det, d_spacing_A=58.38, n_frames=2,
                         seed=3)
    rings = truth.metadata["powder_rings"]
    assert [r["order"] for r in rings[:3]] == [1, 2, 3]
    run = open_run(tmp_path / "agbeh_master.h5")
    assert len(run) == 2 and not truth.frames.hit.any()
    image, bad = run.read(1)
    q = det.maps.q_A[~bad.values]
    v = image.values[~bad.values]
    dq = 75e-6 / 0.15 / 1.0  # |q| step of one pixel near the beam, 1/Å
    for r in rings[:4]:
        sel = np.abs(q - r["q_invA"]) < 10 * dq
        edges = np.linspace(r["q_invA"] - 10 * dq, r["q_invA"] + 10 * dq, 41)
        s, _ = np.histogram(q[sel], edges, weights=v[sel])
        c, _ = np.histogram(q[sel], edges)
        centre = 0.5 * (edges[1:] + edges[:-1])[np.argmax(s / np.maximum(c, 1))]
        assert abs(centre - r["q_invA"]) < dq, r
