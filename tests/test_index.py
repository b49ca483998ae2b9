"""Tests of :mod:`sxlab.indexing`: asdf kernels against the NumPy references, the search, the
refinement, and indexing of simulated frames against the simulator's ground truth."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import gemmi
import numpy as np
import pandas as pd
import pytest
from reference import asdf as ref

import sxlab
from sxlab import tables
from sxlab.cell import UnitCell, cells_equivalent
from sxlab.geometry import builtin_geometry
from sxlab.indexing import (
    AsdfSearch,
    Indexer,
    IndexParams,
    index,
    refine_basis,
)
from sxlab.indexing import _asdf_kernels as kern
from sxlab.indexing.asdf import (
    _random_triplets,
    _rfft_rows,
    expand_subcell,
    generated_lattice,
    integer_row_basis,
    reduce_supercell,
    triplet_indices,
)
from sxlab.reciprocal import excitation_error, peak_vectors, profile_radius, rotation_matrix
from sxlab.simulate import SimulationParams, Simulator

NO_JIT = os.environ.get("NUMBA_DISABLE_JIT", "0") not in ("", "0")
ASTAR = [f"{v}star_{x}" for v in "abc" for x in "xyz"]
U_COLS = [f"u_{i}{j}" for i in (1, 2, 3) for j in (1, 2, 3)]

LYSO = UnitCell(79.1, 79.1, 37.9, 90, 90, 90, space_group="P 43 21 2")
C2221 = UnitCell(46.2, 103.0, 128.7, 90, 90, 90, space_group="C 2 2 21")
P6122 = UnitCell(92.9, 92.9, 130.4, 90, 90, 120, space_group="P 61 2 2")


# ---------------------------------------------------------------------------- helpers
def random_rotation(rng) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def lattice_points(rng, cell: UnitCell, n: int, n_random: int = 0, noise: float = 2e-4,
                   qmax: float = 0.35) -> tuple[np.ndarray, np.ndarray]:
    """Random reciprocal-lattice points of a randomly oriented cell, noise and false points.

    Returns ``(q, astar)``; q is shuffled.
    """
    astar = cell.reciprocal_basis @ random_rotation(rng).T
    lim = np.ceil(qmax / np.linalg.norm(astar, axis=1)).astype(int)
    grid = np.stack(np.meshgrid(*[np.arange(-m, m + 1) for m in lim], indexing="ij"), -1)
    hkl = grid.reshape(-1, 3)
    q = hkl @ astar
    keep = (np.linalg.norm(q, axis=1) < qmax) & np.any(hkl != 0, axis=1)
    q = q[keep]
    q = q[rng.choice(len(q), size=min(n, len(q)), replace=False)]
    q = q + rng.normal(0, noise, q.shape)
    fake = rng.uniform(-qmax, qmax, (n_random, 3))
    q = np.vstack([q, fake])
    return q[rng.permutation(len(q))], astar


def truth_peaks(sim: Simulator, truth, rng, min_photons: float, jitter: float = 0.3,
                false_fraction: float = 0.1) -> pd.DataFrame:
    """Peaks from the simulator's reflections: photons above a level, positions jittered
    by ``jitter`` px, plus ``false_fraction`` as many random false peaks."""
    det = sim.detector
    r = truth.reflections
    r = r[r.photons > min_photons]
    n = len(r)
    n_false = int(round(false_fraction * n))
    panel = rng.integers(0, det.n_panels, n_false)
    lo = np.array([[det.panels[p].min_fs, det.panels[p].min_ss] for p in panel]).reshape(-1, 2)
    size = np.array([[det.panels[p].width, det.panels[p].height] for p in panel]).reshape(-1, 2)
    pos = lo + rng.random((n_false, 2)) * size
    return pd.DataFrame({
        "frame": truth.frame,
        "panel": np.r_[r.panel.to_numpy(), panel].astype(np.int16),
        "fs": np.r_[r.fs.to_numpy() + rng.normal(0, jitter, n), pos[:, 0]],
        "ss": np.r_[r.ss.to_numpy() + rng.normal(0, jitter, n), pos[:, 1]],
        "intensity": np.r_[r.photons.to_numpy(), rng.uniform(min_photons, 3 * min_photons,
                                                             n_false)],
    })


def laue_rotations(cell: UnitCell) -> list[np.ndarray]:
    """Proper rotations of the cell's point group in the cartesian (orthogonal) frame."""
    ops = gemmi.find_spacegroup_by_name(cell.space_group).operations()
    orth = cell.direct_basis.T
    frac = np.linalg.inv(orth)
    out = []
    for op in ops.sym_ops:
        s = orth @ (np.array(op.rot, dtype=float) / gemmi.Op.DEN) @ frac
        if np.linalg.det(s) > 0 and not any(np.allclose(s, x) for x in out):
            out.append(s)
    return out


def orientation_error(row, truth_row, rotations) -> float:
    """Misorientation (deg) between a found crystal and a true one, up to the point group."""
    astar = row[ASTAR].to_numpy(float).reshape(3, 3)
    b = UnitCell(row.a, row.b, row.c, row.alpha, row.beta, row.gamma).reciprocal_basis
    u, _, vt = np.linalg.svd(np.linalg.solve(b, astar).T)
    u_found = u @ vt
    u_true = truth_row[U_COLS].to_numpy(float).reshape(3, 3)
    best = 180.0
    for s in rotations:
        r = u_found @ (u_true @ s).T
        best = min(best, np.degrees(np.arccos(np.clip((np.trace(r) - 1) / 2, -1, 1))))
    return best


def cell_deviation(row, cell: UnitCell) -> tuple[float, float]:
    """Largest relative edge and absolute angle (deg) deviation from a cell."""
    lengths = np.array([row.a / cell.a, row.b / cell.b, row.c / cell.c]) - 1
    angles = np.array([row.alpha - cell.alpha, row.beta - cell.beta, row.gamma - cell.gamma])
    return float(np.abs(lengths).max()), float(np.abs(angles).max())


class Frames:
    """Simulated frames of one crystal: peak tables and truth."""

    def __init__(self, geometry, geometry_args, cell, n_frames, min_photons, seed=11,
                 **params):
        det = builtin_geometry(geometry, **geometry_args)
        sp = SimulationParams(hit_fraction=1.0, **{"multi_lattice_probability": 0.0,
                                                   **params})
        self.sim = Simulator(det, cell, seed=seed, params=sp)
        self.det = det
        self.cell = cell
        rng = np.random.default_rng(seed)
        self.truths, self.peaks = [], []
        for i in range(n_frames):
            truth = self.sim.frame_truth(i)
            peaks = truth_peaks(self.sim, truth, rng, min_photons)
            if len(peaks) >= 25:
                self.truths.append(truth)
                self.peaks.append(peaks)


def evaluate(frames: Frames, indexer: Indexer) -> pd.DataFrame:
    rots = laue_rotations(frames.cell)
    rows = []
    for truth, peaks in zip(frames.truths, frames.peaks, strict=True):
        xt = indexer(peaks)
        if len(xt):
            row = xt.iloc[0]
            err = orientation_error(row, truth.crystals.iloc[0], rots)
            dl, da = cell_deviation(row, frames.cell)
        else:
            err = dl = da = np.nan
        rows.append({"indexed": len(xt) > 0, "error_deg": err, "length_dev": dl,
                     "angle_dev": da})
    return pd.DataFrame(rows)


def check_quality(res: pd.DataFrame, min_rate: float = 0.9) -> None:
    ok = res[res.indexed]
    assert res.indexed.mean() >= min_rate, res
    assert (ok.error_deg > 1.0).sum() < max(1, 0.01 * len(res)), ok.error_deg.max()
    assert ok.error_deg.median() < 0.1
    assert ok.length_dev.max() < 0.005
    assert ok.angle_dev.max() < 0.5


@pytest.fixture(scope="module")
def lyso_frames():
    return Frames("eiger4m", dict(clen=0.15, wavelength_A=1.0, bandwidth=0.001), LYSO,
                  n_frames=100, min_photons=100)


@pytest.fixture(scope="module")
def lyso_indexer():
    return Indexer(builtin_geometry("eiger4m", clen=0.15, wavelength_A=1.0, bandwidth=0.001),
                   LYSO)


# ---------------------------------------------------------------------------- kernels
@pytest.mark.parametrize("n_points", [5, 60, 400])
def test_triplet_histograms_match_reference(n_points, rng):
    q, _ = lattice_points(rng, UnitCell(30.0, 40.0, 50.0, 80, 95, 100), n_points, 5)
    n = len(q)
    trip = _random_triplets(rng, n, 40)
    trip[0] = [0, 1, 1]  # degenerate: two equal points
    for n_bins in (16, 1024):
        hist = np.full((50, n_bins), 7.0, dtype=np.float32)
        normals = np.empty((50, 3))
        widths = np.empty(50)
        kern.triplet_histograms(q, trip, n_bins, hist, normals, widths, np.empty(n))
        e_hist, e_normals, e_widths = ref.triplet_histograms(q, trip, n_bins)
        np.testing.assert_array_equal(hist[: len(trip)], e_hist)
        np.testing.assert_allclose(normals[: len(trip)], e_normals, atol=1e-12)
        np.testing.assert_allclose(widths[: len(trip)], e_widths, rtol=1e-12)
        assert widths[0] == 0 and not hist[0].any()
        assert np.all(hist[1 : len(trip)].sum(axis=1)[widths[1 : len(trip)] > 0] == n)


def test_strongest_frequencies_match_reference(rng):
    q, _ = lattice_points(rng, UnitCell(45.0, 52.0, 61.0), 150, 10)
    trip = _random_triplets(rng, len(q), 64)
    hist = np.empty((64, 1024), dtype=np.float32)
    normals, widths = np.empty((64, 3)), np.empty(64)
    kern.triplet_histograms(q, trip, 1024, hist, normals, widths, np.empty(len(q)))
    spec = np.fft.rfft(hist.astype(np.float64), axis=1)
    np.testing.assert_allclose(_rfft_rows(hist), spec, rtol=1e-4, atol=1e-3)
    widths[3] = 0.0
    for min_len, max_len in ((3.0, 1000.0), (20.0, 180.0), (500.0, 400.0)):
        freqs = np.empty(64)
        kern.strongest_frequencies(spec, widths, min_len, max_len, freqs)
        np.testing.assert_allclose(freqs, ref.strongest_frequencies(spec, widths, min_len,
                                                                    max_len), atol=1e-12)
    assert freqs[3] == -1.0


def test_fit_vector_and_counts_match_reference(rng):
    cell = UnitCell(40.0, 55.0, 70.0, 90, 100, 90)
    q, astar = lattice_points(rng, cell, 200, 20)
    direct = np.linalg.inv(astar).T
    for trial in range(20):
        t0 = direct[trial % 3] * (1 + rng.normal(0, 0.01)) + rng.normal(0, 0.3, 3)
        if trial >= 15:
            t0 = rng.normal(0, 40, 3)  # arbitrary vectors
        for tol, n_iter in ((0.1, 3), (0.2, 1), (0.05, 0)):
            t = t0.copy()
            n_fit = kern.fit_vector(q, t, tol, n_iter)
            e_t, e_n = ref.fit_vector(q, t0, tol, n_iter)
            np.testing.assert_allclose(t, e_t, rtol=1e-9, atol=1e-9)
            assert n_fit == e_n
            assert kern.count_fits(q, *t0, tol) == ref.count_fits(q, t0, tol)
    # A lattice vector refined from a perturbed start fits the lattice points.
    t = direct[1] * 1.004
    assert kern.fit_vector(q, t, 0.1, 3) >= 190
    np.testing.assert_allclose(t, direct[1], rtol=2e-3)


@pytest.mark.parametrize("n_points,n_random", [(40, 0), (150, 30)])
def test_candidate_vectors_match_reference(n_points, n_random, rng):
    q, _ = lattice_points(rng, UnitCell(35.0, 48.0, 62.0, 90, 90, 90), n_points, n_random)
    n = len(q)
    trip = _random_triplets(rng, n, 200)
    hist = np.empty((200, 1024), dtype=np.float32)
    normals, widths, freqs = np.empty((200, 3)), np.empty(200), np.empty(200)
    kern.triplet_histograms(q, trip, 1024, hist, normals, widths, np.empty(n))
    spec = np.fft.rfft(hist.astype(np.float64), axis=1)
    kern.strongest_frequencies(spec, widths, 10.0, 190.0, freqs)
    min_fit = max(7, n // 3 + 1)
    out_t, out_n = np.empty((200, 3)), np.empty(200, dtype=np.int64)
    k = kern.candidate_vectors(q, normals, widths, freqs, 0.1, 3, min_fit, 0.8 * min_fit,
                               10.0, 190.0, out_t, out_n)
    e_t, e_n = ref.candidate_vectors(q, normals, widths, freqs, 0.1, 3, min_fit,
                                     0.8 * min_fit, 10.0, 190.0)
    assert k == len(e_t) > 0
    np.testing.assert_allclose(out_t[:k], e_t, rtol=1e-8, atol=1e-8)
    np.testing.assert_array_equal(out_n[:k], e_n)


def test_merge_vectors_and_count_explained_match_reference(rng):
    base = rng.normal(0, 50, (12, 3))
    new_t = np.vstack([base, -base[:5] * (1 + rng.normal(0, 0.01, (5, 1))),
                       base[5:9] * 1.5, rng.normal(0, 50, (6, 3))])
    new_n = rng.integers(5, 100, len(new_t))
    for capacity in (40, 15):
        store = np.empty((capacity, 3))
        store_n = np.empty(capacity, dtype=np.int64)
        n1, a1 = kern.merge_vectors(store, store_n, 0, new_t[:20], new_n[:20], 20,
                                    np.cos(np.radians(3)), 0.05)
        n2, a2 = kern.merge_vectors(store, store_n, n1, new_t[20:], new_n[20:],
                                    len(new_t) - 20, np.cos(np.radians(3)), 0.05)
        e_s, e_n, e_a1 = ref.merge_vectors([], [], new_t[:20], new_n[:20],
                                           np.cos(np.radians(3)), 0.05, capacity)
        e_s, e_n, e_a2 = ref.merge_vectors(e_s, e_n, new_t[20:], new_n[20:],
                                           np.cos(np.radians(3)), 0.05, capacity)
        assert (n2, a1, a2) == (len(e_s), e_a1, e_a2)
        np.testing.assert_array_equal(store[:n2], e_s)
        np.testing.assert_array_equal(store_n[:n2], e_n)
    q, astar = lattice_points(rng, UnitCell(30.0, 40.0, 50.0), 100, 40)
    for basis in (np.linalg.inv(astar).T, rng.normal(0, 40, (3, 3))):
        for tol in (0.05, 0.25):
            assert kern.count_explained(q, basis, tol) == ref.count_explained(q, basis, tol)


@pytest.mark.skipif(NO_JIT, reason="already running without JIT")
def test_kernels_without_jit():
    """The kernel comparisons once more with NUMBA_DISABLE_JIT=1 (pure Python kernels)."""
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    tests = [f"{Path(__file__).name}::{name}" for name in (
        "test_triplet_histograms_match_reference[60]",
        "test_strongest_frequencies_match_reference",
        "test_fit_vector_and_counts_match_reference",
        "test_candidate_vectors_match_reference[40-0]",
        "test_merge_vectors_and_count_explained_match_reference",
    )]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-p", "no:xdist", *tests], cwd=Path(__file__).parent, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"{len(tests)} passed" in proc.stdout


# ------------------------------------------------------------------- search helpers
def test_triplet_tables(rng):
    t = triplet_indices(7)
    assert len(t) == 35 and np.all((t[:, 0] < t[:, 1]) & (t[:, 1] < t[:, 2]))
    assert triplet_indices(2).shape == (0, 3)
    r = _random_triplets(rng, 4, 500)
    assert r.min() >= 0 and r.max() < 4
    assert np.all((r[:, 0] != r[:, 1]) & (r[:, 0] != r[:, 2]) & (r[:, 1] != r[:, 2]))


def test_supercell_reduction_and_generated_lattice(rng):
    cell = UnitCell(30.0, 41.0, 57.0, 80, 97, 104)
    direct = cell.direct_basis
    hkl = rng.integers(-6, 7, (200, 3))
    for m_super in (np.array([[2, 0, 0], [0, 1, 0], [0, 0, 1]]),
                    np.array([[1, 1, 0], [-1, 1, 0], [0, 0, 3]]),
                    np.array([[2, -2, 1], [1, -3, 1], [3, 0, 4]])):  # index 13
        sup = m_super @ direct
        hkl_sup = hkl @ m_super.T  # indices of the lattice points in the supercell
        if round(abs(np.linalg.det(m_super))) in (2, 6):
            reduced, _ = reduce_supercell(sup, hkl_sup)
            assert np.isclose(abs(np.linalg.det(reduced)), cell.volume)
            assert cells_equivalent(UnitCell.from_direct_basis(reduced), cell)
        finer = generated_lattice(sup, direct[[0, 2]] + direct[1])
        finer = generated_lattice(finer, direct)
        assert np.isclose(abs(np.linalg.det(finer)), cell.volume)
    # A subcell (a vector a half or a third of the lattice's) is enlarged back.
    q = hkl @ cell.reciprocal_basis + rng.normal(0, 1e-4, (len(hkl), 3))
    for m_sub in (np.diag([0.5, 1.0, 1.0]), np.array([[1, 0, 0], [0, 1, 0], [1 / 3] * 3])):
        big = expand_subcell(m_sub @ direct, q)
        m = big @ cell.reciprocal_basis.T
        assert np.allclose(m, np.round(m), atol=1e-6) and np.isclose(abs(np.linalg.det(m)), 1)
    np.testing.assert_array_equal(expand_subcell(direct, q), direct)
    # Peaks in one plane of the basis say nothing about the third direction.
    flat = np.c_[hkl[:, :2], np.zeros(len(hkl), dtype=int)]
    same, idx = reduce_supercell(direct, flat)
    np.testing.assert_array_equal(same, direct)
    # A primitive basis and its true indices stay as they are.
    same, idx = reduce_supercell(direct, hkl)
    np.testing.assert_array_equal(same, direct)
    np.testing.assert_array_equal(idx, hkl)
    assert integer_row_basis([[2, -2, 1], [1, -3, 1], [3, 0, 4]])[2, 2] == 13
    with pytest.raises(ValueError):
        integer_row_basis([[1, 0, 0], [2, 0, 0]])


@pytest.mark.parametrize("cell,volume", [(UnitCell(40.0, 50.0, 60.0), True),
                                         (UnitCell(33.0, 47.0, 58.0, 85, 100, 95), False)])
def test_asdf_search_finds_the_lattice(cell, volume, rng):
    q, astar = lattice_points(rng, cell, 180, 20)
    search = AsdfSearch(target_volume=cell.volume if volume else None, min_len=10.0,
                        max_len=3 * 60.0 if volume else 1000.0)
    basis = search.run(q, np.random.default_rng(0), lambda b: b)
    m = basis @ astar.T  # coordinates of the found vectors in the true lattice
    assert np.allclose(m, np.round(m), atol=0.02)
    assert abs(round(np.linalg.det(np.round(m)))) == 1
    assert search.stats.n_vectors >= 3 and search.stats.n_cells_tried >= 1
    vectors, fits = search.vectors()
    assert len(vectors) == search.stats.n_vectors and np.all(fits >= 7)
    # Random points give no lattice.
    assert search.run(rng.uniform(-0.3, 0.3, (60, 3)), np.random.default_rng(0),
                      lambda b: b) is None or not volume


# --------------------------------------------------------------------- refinement
@pytest.mark.parametrize("mode,lattice,cell", [
    ("lattice", "tetragonal", LYSO),
    ("lattice", "hexagonal", P6122),
    ("lattice", "monoclinic", UnitCell(50.0, 60.0, 70.0, 90, 104, 90)),
    ("lattice", "rhombohedral", UnitCell(60.0, 60.0, 60.0, 75, 75, 75)),
    ("lattice", "triclinic", UnitCell(50.0, 60.0, 70.0, 80, 104, 95)),
    ("unconstrained", "triclinic", UnitCell(50.0, 60.0, 70.0, 80, 104, 95)),
    ("isotropic", "cubic", UnitCell(70.0, 70.0, 70.0)),
    ("orientation", "orthorhombic", UnitCell(45.0, 60.0, 70.0)),
])
def test_refinement_recovers_the_basis(mode, lattice, cell, rng):
    q, astar = lattice_points(rng, cell, 250, 0, noise=0.0, qmax=0.3)
    rot = rotation_matrix(np.array([2e-3, -5e-4, 1e-3]))
    start = astar @ rot.T
    if mode in ("lattice", "isotropic", "unconstrained"):
        start = start * 1.004
    res = refine_basis(q, start, 1.0, mode=mode, lattice=lattice, tol=0.25)
    np.testing.assert_allclose(res.astar, astar, rtol=1e-6, atol=1e-9)
    assert res.indexed.sum() == 250 and res.residual < 1e-8
    found = UnitCell.from_reciprocal_basis(res.astar)
    np.testing.assert_allclose(found.parameters, cell.parameters, rtol=1e-6)


def test_refinement_keeps_symmetry_with_noise(rng):
    q, astar = lattice_points(rng, LYSO, 200, 0, noise=5e-4)
    res = refine_basis(q, astar * 1.003, 1.0, mode="lattice", lattice="tetragonal")
    cell = UnitCell.from_reciprocal_basis(res.astar)
    assert cell.a == pytest.approx(cell.b, rel=1e-12)
    assert cell.alpha == pytest.approx(90) and cell.gamma == pytest.approx(90)
    assert cell.a == pytest.approx(79.1, rel=2e-3) and cell.c == pytest.approx(37.9, rel=2e-3)
    with pytest.raises(ValueError, match="mode"):
        refine_basis(q, astar, 1.0, mode="wild")


# ------------------------------------------------------------------ tables and API
def test_empty_and_small_inputs_keep_the_schema(lyso_indexer):
    empty = tables.CRYSTALS.empty()
    peaks = pd.DataFrame({"frame": 3, "panel": 0, "fs": [100.0, 200.0], "ss": [50.0, 70.0],
                          "intensity": [1.0, 2.0]})
    for table in (lyso_indexer(peaks), lyso_indexer(peaks.iloc[:0]),
                  index(peaks.iloc[:0], lyso_indexer.geometry, LYSO)):
        assert len(table) == 0
        tables.CRYSTALS.validate(table)
        assert table.dtypes.equals(empty.dtypes)


def test_random_peaks_do_not_index(rng, lyso_indexer):
    det = lyso_indexer.geometry
    peaks = pd.DataFrame({"frame": 0, "panel": 0, "fs": rng.uniform(0, 2070, 120),
                          "ss": rng.uniform(0, 2167, 120), "intensity": rng.random(120)})
    assert len(Indexer(det, LYSO, fast=True)(peaks)) == 0


def test_params_validation_and_round_trip():
    p = IndexParams(fast=True, refine_mode="isotropic")
    assert IndexParams.from_dict(p.to_dict()) == p
    assert p.digest() == IndexParams.from_dict(p.to_dict()).digest() != IndexParams().digest()
    assert p.method_name == "asdf-fast" and IndexParams().method_name == "asdf"
    for bad in (dict(method="xgandalf"), dict(refine_mode="all"), dict(n_bins=4),
                dict(index_tolerance=0.6), dict(min_fraction=1.5), dict(max_tries=0),
                dict(seed=-1), dict(n_triplets=2.5), dict(length_tolerance=0.0)):
        with pytest.raises(ValueError):
            IndexParams(**bad)
    with pytest.raises(TypeError):
        IndexParams(unknown=1)
    with pytest.raises(TypeError):
        Indexer(builtin_geometry("eiger1m"), cell=(79.1, 79.1, 37.9))


# --------------------------------------------------------------- simulated frames
def test_lysozyme_normal_and_fast(lyso_frames, lyso_indexer):
    normal = evaluate(lyso_frames, lyso_indexer)
    assert len(normal) >= 90
    check_quality(normal)
    fast = evaluate(lyso_frames, Indexer(lyso_indexer.geometry, LYSO, fast=True))
    check_quality(fast)
    assert fast.indexed.mean() >= normal.indexed.mean() - 0.05


def test_table_contents(lyso_frames, lyso_indexer):
    peaks, truth = lyso_frames.peaks[0], lyso_frames.truths[0]
    table = lyso_indexer(peaks)
    assert len(table) == 1
    row = table.iloc[0]
    assert (row.frame, row.crystal, row.lattice, row.centering, row.method, row.tries) == (
        truth.frame, 0, "tetragonal", "P", "asdf", 1)
    assert row.n_peaks == len(peaks)
    assert row.fraction_indexed == pytest.approx(row.n_peaks_indexed / row.n_peaks)
    assert row.n_peaks_indexed >= 0.85 * len(peaks)
    assert 0 < row.residual_invA < 2e-3
    # The profile radius reflects the simulated excitation errors of the strong spots.
    s = truth.reflections.excitation_error_invA[truth.reflections.photons > 100].abs()
    assert 0.3 < row.profile_radius_invA / np.percentile(s, 80) < 3
    astar = row[ASTAR].to_numpy(float).reshape(3, 3)
    assert np.linalg.det(astar) > 0
    cell = UnitCell.from_reciprocal_basis(astar)
    np.testing.assert_allclose(cell.parameters, row[["a", "b", "c", "alpha", "beta", "gamma"]]
                               .to_numpy(float), rtol=1e-9)
    assert row.alpha == row.beta == row.gamma == 90.0 and row.a == row.b


def test_the_indexer_passes_its_assignment_forward(lyso_frames, lyso_indexer):
    """Peaks leave the indexer with the lattice and hkl it gave them, and the crystals
    table's profile radius and apparent resolution are those of exactly these peaks."""
    det = lyso_frames.sim.detector
    k0 = 1.0 / det.wavelength_A
    for peaks, truth in list(zip(lyso_frames.peaks, lyso_frames.truths, strict=True))[:6]:
        crystals, out = lyso_indexer.index(peaks)
        assert len(crystals) == 1
        assert list(out.columns) == [*peaks.columns, "crystal", "h", "k", "l"]
        pd.testing.assert_frame_equal(out[peaks.columns], peaks)
        assert str(out.crystal.dtype) == "int64" and str(out.h.dtype) == "int32"
        mine = out.crystal == 0
        assert set(out.crystal) <= {-1, 0} and mine.sum() == crystals.n_peaks_indexed[0]
        assert (out.loc[~mine, ["h", "k", "l"]] == 0).all().all()
        # The true spots (the first rows) get the true indices, in the found setting.
        r = truth.reflections[truth.reflections.photons > 100]
        found_a = crystals[ASTAR].to_numpy(float).reshape(3, 3)
        true_a = truth.crystals[ASTAR].to_numpy(float)[0].reshape(3, 3)
        m = true_a @ np.linalg.inv(found_a)
        np.testing.assert_allclose(m, np.round(m), atol=0.02)
        true_rows = mine.to_numpy()[: len(r)]
        assert true_rows.mean() > 0.95
        hkl_true = r[["h", "k", "l"]].to_numpy()[true_rows]
        np.testing.assert_array_equal(out[["h", "k", "l"]].to_numpy()[: len(r)][true_rows],
                                      hkl_true @ np.round(m).astype(int))
        # Profile radius and apparent resolution come from the assigned peaks.
        hkl = out.loc[mine, ["h", "k", "l"]].to_numpy(float)
        s = excitation_error(hkl @ found_a, k0)
        assert crystals.profile_radius_invA[0] == profile_radius(s, 80.0)
        q = peak_vectors(out[mine], det)
        assert crystals.resolution_limit_A[0] == pytest.approx(
            1 / np.linalg.norm(q, axis=1).max(), rel=1e-12)
    nothing = lyso_indexer.index(lyso_frames.peaks[0].iloc[:5])
    assert len(nothing.crystals) == 0 and (nothing.peaks.crystal == -1).all()
    tables.PEAKS.validate(lyso_indexer.index(tables.PEAKS.empty()).peaks)


def test_determinism_and_seeds(lyso_frames):
    det = lyso_frames.sim.detector
    peaks = lyso_frames.peaks[1]
    first = index(peaks, det, LYSO, seed=5)
    again = Indexer(det, LYSO, seed=5)
    again(lyso_frames.peaks[2])  # history must not matter
    pd.testing.assert_frame_equal(first, again(peaks))
    pd.testing.assert_frame_equal(first, index(peaks, det, LYSO, seed=5))
    other = index(peaks, det, LYSO, seed=6)
    assert len(other) == 1
    rots = laue_rotations(LYSO)
    assert orientation_error(other.iloc[0], lyso_frames.truths[1].crystals.iloc[0], rots) < 0.1


def test_index_groups_frames(lyso_frames):
    det = lyso_frames.sim.detector
    peaks = pd.concat(lyso_frames.peaks[3:6][::-1], ignore_index=True)
    table = index(peaks, det, LYSO, fast=True)
    frames = [t.frame for t in lyso_frames.truths[3:6]]
    assert table.frame.tolist() == frames and set(table.method) == {"asdf-fast"}
    pd.testing.assert_frame_equal(sxlab.index(peaks, det, LYSO, fast=True), table)
    assert sxlab.index is index
    unrefined = index(lyso_frames.peaks[3], det, LYSO, refine=False)
    assert len(unrefined) == 1
    orient = index(lyso_frames.peaks[3], det, LYSO, refine_mode="orientation")
    np.testing.assert_allclose(orient[["a", "b", "c"]].to_numpy(float)[0], [79.1, 79.1, 37.9])


def test_without_reference_cell(lyso_frames):
    det = lyso_frames.sim.detector
    indexer = Indexer(det)
    n_ok = 0
    frames = list(zip(lyso_frames.peaks, lyso_frames.truths, strict=True))[:12]
    for peaks, truth in frames:
        table = indexer(peaks)
        if not len(table):
            continue
        row = table.iloc[0]
        # the conventional setting of the Bravais lattice: tetragonal P, c unique
        assert (row.lattice, row.centering) == ("tetragonal", "P")
        np.testing.assert_allclose([row.a, row.b, row.c], [79.1, 79.1, 37.9], rtol=0.01)
        assert row.a == row.b  # refined with the lattice's constraints
        found = UnitCell(row.a, row.b, row.c, row.alpha, row.beta, row.gamma)
        astar = row[ASTAR].to_numpy(float).reshape(3, 3)
        true_astar = truth.crystals[ASTAR].to_numpy(float)[0].reshape(3, 3)
        m = np.linalg.inv(astar).T @ true_astar.T  # found vectors in true lattice coordinates
        same = np.allclose(m, np.round(m), atol=0.02) and abs(np.linalg.det(m)) == (
            pytest.approx(1, abs=0.01))
        n_ok += cells_equivalent(found, LYSO, length_tol=0.01, angle_tol_deg=0.5) and same
    assert n_ok >= 0.9 * len(frames)


def test_retry_drops_the_weakest_peaks(lyso_frames, rng):
    det = lyso_frames.sim.detector
    peaks = lyso_frames.peaks[7]
    strong = peaks.nlargest(40, "intensity").assign(intensity=1000.0)
    n_false = 55
    fake = pd.DataFrame({"frame": strong.frame.iloc[0], "panel": 0,
                         "fs": rng.uniform(0, 2070, n_false), "ss": rng.uniform(0, 2167, n_false),
                         "intensity": rng.uniform(1, 10, n_false)})
    mixed = pd.concat([strong, fake], ignore_index=True)
    assert len(index(mixed, det, LYSO)) == 0
    table = index(mixed, det, LYSO, retry=True)
    assert len(table) == 1 and 1 < table.tries[0] <= 6


@pytest.mark.parametrize("name", ["c2221", "p6122"])
def test_other_crystals(name):
    if name == "c2221":
        frames = Frames("mpccd", dict(clen=0.05, wavelength_A=1.24, bandwidth=0.003), C2221,
                        n_frames=30, min_photons=100)
        expect = ("orthorhombic", "C")
    else:
        frames = Frames("agipd", dict(clen=0.12, wavelength_A=1.3, bandwidth=0.003), P6122,
                        n_frames=30, min_photons=300)
        expect = ("hexagonal", "P")
    assert len(frames.peaks) >= 25
    indexer = Indexer(frames.det, frames.cell)
    check_quality(evaluate(frames, indexer))
    table = indexer(frames.peaks[0])
    assert (table.lattice[0], table.centering[0]) == expect


def test_two_lattices():
    frames = Frames("eiger4m", dict(clen=0.15, wavelength_A=1.0, bandwidth=0.001), LYSO,
                    n_frames=30, min_photons=100, seed=21, multi_lattice_probability=1.0)
    indexer = Indexer(frames.det, LYSO, multi=True, max_lattices=2)
    rots = laue_rotations(LYSO)
    both = 0
    for peaks, truth in zip(frames.peaks, frames.truths, strict=True):
        table, assigned = indexer.index(peaks)
        assert len(table) <= 2 and table.crystal.tolist() == list(range(len(table)))
        counts = assigned.crystal.value_counts()
        assert set(counts.index) <= {-1, *range(len(table))}
        # A peak goes to the first lattice explaining it: the first lattice gets all its own.
        if len(table):
            assert counts.get(0, 0) == table.n_peaks_indexed.iloc[0]
        found = [min((orientation_error(table.iloc[j], truth.crystals.iloc[c], rots)
                      for j in range(len(table))), default=180.0) for c in range(2)]
        both += max(found) < 1.0
    assert both >= 0.6 * len(frames.peaks)
    single = Indexer(frames.det, LYSO, max_lattices=2)
    assert all(len(single(p)) <= 1 for p in frames.peaks[:3])


def test_end_to_end_with_peak_finder():
    from sxlab.datasets import load, truth
    from sxlab.peaks import PeakFinder

    run = load("lysozyme-sample", progress=False)
    det = run.geometry
    true = truth("lysozyme-sample")
    finder = PeakFinder(det, mask=~det.bad_pixel_mask(), adc_threshold=3.0, min_snr=5.0)
    indexer = Indexer(det, LYSO)
    rots = laue_rotations(LYSO)
    hits = true.frames.set_index("frame").hit
    n_hits = n_ok = 0
    for j in range(len(run)):
        image, bad = run.read(j)
        peaks = finder(image.values, bad=bad.values, frame=j)
        table = indexer(peaks)
        if not hits[j]:
            continue
        n_hits += 1
        crystals = true.crystals[true.crystals.frame == j]
        if len(table) and min(orientation_error(table.iloc[0], crystals.iloc[c], rots)
                              for c in range(len(crystals))) < 0.2:
            n_ok += 1
    assert n_hits >= 2 and n_ok >= n_hits - 1
