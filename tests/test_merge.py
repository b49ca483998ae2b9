"""Merging, scaling, ambiguity resolution, statistics and the MTZ / CrystFEL .hkl files.

The data are the simulator's true reflections turned into observations (photons with
counting noise), so the tests need no image processing; the merged intensities are
compared with the simulator's true intensities.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import gemmi
import numpy as np
import pandas as pd
import pytest

import sxlab as sx
from sxlab import _merging_kernels as kern
from sxlab.geometry import builtin_geometry
from sxlab.merging import (
    MergeParams,
    ambiguity_operators,
    cc_star,
    cc_star_resolution,
    frame_half,
    map_to_asu,
    merging_statistics,
)
from sxlab.symmetry import AsuTable
from sxlab.tables import MERGED, SCALES, STATISTICS

sys.path.insert(0, str(Path(__file__).parent))
from reference import merge as ref  # noqa: E402

NO_JIT = os.environ.get("NUMBA_DISABLE_JIT", "0") not in ("", "0")
LYSOZYME = (79.1, 79.1, 37.9, 90.0, 90.0, 90.0)
BACKGROUND = 20.0
#: Reindexing by the twin law of P 43 in a tetragonal lattice (any of its coset).
TWIN_KHL = np.array([[0, 1, 0], [1, 0, 0], [0, 0, -1]])


def _simulator(space_group: str, seed: int):
    det = builtin_geometry("eiger1m", clen=0.06, wavelength_A=1.0, bandwidth=0.001)
    cell = sx.UnitCell(*LYSOZYME, space_group=space_group)
    return sx.Simulator(det, cell, seed=seed, hit_fraction=1.0, d_min_A=2.0,
                        crystal_scale_sigma=0.0, b_factor_sigma_A2=0.0,
                        multi_lattice_probability=0.1)


@pytest.fixture(scope="module")
def lysozyme():
    """Truth of 600 crystal frames of lysozyme to 2.0 Å, every crystal of scale 1, ΔB 0."""
    return _simulator("P 43 21 2", seed=3).truth(600)


@pytest.fixture(scope="module")
def p43():
    return _simulator("P 43", seed=5).truth(300)


def observations(truth, seed: int, *, gain: float = 1.0, extra_b: float = 0.0,
                 scales=None, b_factors=None) -> pd.DataFrame:
    """Observed intensities: true photons (times optional per-crystal G and exp(-2Bs²))
    plus Gaussian counting noise of variance photons + background."""
    r = truth.reflections
    rng = np.random.default_rng(seed)
    s2 = 0.25 / r["d_A"].to_numpy() ** 2
    photons = r["photons"].to_numpy() * gain * np.exp(-2.0 * extra_b * s2)
    if scales is not None:
        key = r["frame"].to_numpy() * 2 + r["crystal"].to_numpy()
        photons = photons * scales[key] * np.exp(-2.0 * b_factors[key] * s2)
    sigma = np.sqrt(np.maximum(photons, 0.0) + BACKGROUND)
    return pd.DataFrame({
        "frame": r["frame"], "crystal": r["crystal"], "h": r["h"], "k": r["k"], "l": r["l"],
        "I": photons + sigma * rng.standard_normal(len(r)), "sigma": sigma,
        "d_A": r["d_A"], "partiality": r["partiality"],
    })


def cc_truth(merged: pd.DataFrame, truth, hkl_op=None) -> float:
    true = truth.intensities[["h", "k", "l", "I"]]
    if hkl_op is not None:
        mapped = map_to_asu(true[["h", "k", "l"]].to_numpy() @ hkl_op, "P 43")
        true = true.assign(h=mapped[:, 0], k=mapped[:, 1], l=mapped[:, 2])
    both = merged.merge(true, on=["h", "k", "l"], suffixes=("", "_true"))
    assert len(both) == len(merged)
    return float(np.corrcoef(both["I"], both["I_true"])[0, 1])


def cc_truth_per_shell(result, truth) -> np.ndarray:
    merged = result.merged.merge(truth.intensities[["h", "k", "l", "I"]],
                                 on=["h", "k", "l"], suffixes=("", "_true"))
    shells = result.stats[result.stats.shell >= 0]
    shell = np.searchsorted(-shells.d_min_A.to_numpy(), -merged.d_A.to_numpy() * (1 - 1e-12))
    return np.array([np.corrcoef(merged.I[shell == s], merged.I_true[shell == s])[0, 1]
                     for s in range(len(shells))])


# ============================================================== merging against truth
def test_lysozyme_merges_to_the_truth(lysozyme):
    result = sx.merge(observations(lysozyme, 1), "P43212")
    merged, stats = result
    assert merged is result.merged and stats is result.stats
    MERGED.validate(merged)
    STATISTICS.validate(stats)
    SCALES.validate(result.scales)
    shells = stats[stats.shell >= 0]
    assert len(shells) == 20 and stats.shell.iloc[-1] == -1
    assert shells.multiplicity.min() >= 10
    assert shells.d_min_A.min() == pytest.approx(2.0, abs=0.01)
    assert stats.completeness.iloc[-1] > 0.99
    assert np.all(np.diff(merged.d_A) <= 1e-8)
    assert not result.scales.rejected.any() and result.n_reindexed == 0
    # Monte Carlo averaging of partial intensities.
    assert cc_truth(merged, lysozyme) >= 0.95
    # Shells of equal reciprocal volume hold similar numbers of possible reflections.
    assert shells.n_possible.max() < 1.3 * shells.n_possible.min()
    corrected = sx.merge(observations(lysozyme, 1), "P43212", partiality=True)
    assert cc_truth(corrected.merged, lysozyme) >= 0.99
    assert result.cell.space_group == "P 43 21 2"
    np.testing.assert_allclose(result.cell.parameters, LYSOZYME, atol=1e-6)
    assert repr(result).startswith("<MergeResult")


def test_cc_star_estimates_the_cc_with_the_truth(lysozyme):
    # Weaker data (fluence 1/8, B factor +10 Å²): CC1/2 falls with resolution.
    obs = observations(lysozyme, 2, gain=1 / 8, extra_b=10.0)
    result = sx.merge(obs, "P43212", partiality=True, min_partiality=0.5)
    shells = result.stats[result.stats.shell >= 0]
    cc_true = cc_truth_per_shell(result, lysozyme)
    assert shells.cc_half.min() < 0.8  # where CC* and CC1/2 differ by more than 0.1
    sel = (shells.cc_half > 0.3).to_numpy()
    assert sel.sum() >= 15
    np.testing.assert_array_less(np.abs(shells.cc_star.to_numpy()[sel] - cc_true[sel]), 0.05)
    np.testing.assert_allclose(shells.cc_star, cc_star(shells.cc_half))
    d_cut = result.cc_star_resolution_A
    assert d_cut == result.stats.attrs["d_cc_star_A"] == cc_star_resolution(result.stats)
    assert 2.0 <= d_cut < 3.5


def test_scaling_removes_a_spread_of_scales_and_b_factors(lysozyme):
    rng = np.random.default_rng(7)
    n = 2 * (int(lysozyme.reflections.frame.max()) + 1)
    g_true = np.exp(rng.uniform(-0.5 * np.log(3), 0.5 * np.log(3), n))  # 3× spread
    b_true = rng.uniform(-10.0, 10.0, n)
    plain = observations(lysozyme, 3)
    spread = observations(lysozyme, 3, scales=g_true, b_factors=b_true)
    for kwargs in ({}, {"partiality": True}):
        ref_cc = cc_truth(sx.merge(plain, "P43212", **kwargs).merged, lysozyme)
        scaled = sx.merge(spread, "P43212", **kwargs)
        assert abs(cc_truth(scaled.merged, lysozyme) - ref_cc) <= 0.02
        s = scaled.scales
        key = s.frame.to_numpy() * 2 + s.crystal.to_numpy()
        log_g = np.log(s.scale.to_numpy())
        assert np.corrcoef(log_g, np.log(g_true[key]))[0, 1] > 0.8
        assert np.corrcoef(s.b_A2, b_true[key])[0, 1] > 0.85
        assert np.mean(log_g) == pytest.approx(0.0, abs=1e-9)
        assert s.b_A2.mean() == pytest.approx(0.0, abs=1e-9)
    # With the true partialities the scales are recovered closely.
    rel_g = log_g - np.log(g_true[key])
    assert np.std(rel_g) < 0.02
    assert np.std(s.b_A2 - (b_true[key] - b_true[key].mean())) < 0.5
    unscaled = sx.merge(spread, "P43212", partiality=True, scale=False)
    assert cc_truth(unscaled.merged, lysozyme) < cc_truth(scaled.merged, lysozyme) - 0.005


def test_failing_crystals_are_rejected_and_reported(lysozyme):
    obs = observations(lysozyme, 4)
    frames = obs.frame.to_numpy()
    negative = frames == 10
    obs.loc[negative, "I"] = -obs.loc[negative, "I"] - 50.0
    steep = frames == 11
    obs.loc[steep, "I"] *= np.exp(-2.0 * 300.0 * 0.25 / obs.loc[steep, "d_A"] ** 2)
    obs.loc[frames == 13, "I"] = 0.0
    tiny = obs[frames == 12].head(5)
    obs = pd.concat([obs[frames != 12], tiny], ignore_index=True)
    result = sx.merge(obs, "P43212")
    s = result.scales
    assert (s[s.frame == 10].reason == "G <= 0").all()
    assert (s[s.frame == 11].reason == "extreme B").all()
    assert (s[s.frame == 12].reason == "too few reflections").all()
    assert s[s.frame == 13].reason.isin(["G <= 0", "scale not finite"]).all()
    bad = s.frame.isin([10, 11, 12, 13])
    assert s.rejected.to_numpy().tolist() == bad.to_numpy().tolist()
    assert result.counts["crystals_rejected"] == bad.sum()
    assert (s.reason[~s.rejected] == "").all()
    assert np.isnan(s.cc[s.rejected]).all()
    assert result.merged.n_obs.sum() == result.counts["used"]
    assert result.counts["used"] == (s.n_obs[~s.rejected]).sum()


def test_outliers_flags_and_saturation_are_left_out(lysozyme):
    obs = observations(lysozyme, 5)
    clean = sx.merge(obs, "P43212", scale=False, outlier_sigma=6.0)
    bad = obs.copy()
    rows = np.arange(0, len(obs), 2000)
    bad.loc[rows, "I"] = 1e6
    with_outliers = sx.merge(bad, "P43212", scale=False, outlier_sigma=6.0)
    assert with_outliers.counts["outliers"] >= len(rows)
    assert cc_truth(with_outliers.merged, lysozyme) > cc_truth(clean.merged, lysozyme) - 0.01
    flagged = obs.assign(flag_saturated=False, peak=0.0)
    flagged.loc[rows, "flag_saturated"] = True
    flagged.loc[rows + 1, "peak"] = 1e5
    result = sx.merge(flagged, "P43212", max_adu=6e4)
    assert result.counts["flagged"] == len(rows)
    assert result.counts["above_max_adu"] == len(rows)
    assert result.counts["used"] == len(obs) - 2 * len(rows)
    kept = sx.merge(flagged, "P43212", reject_flags=False)
    assert kept.counts["used"] == len(obs)
    nan = obs.copy()
    nan.loc[rows, "I"] = np.nan
    nan.loc[rows + 1, "sigma"] = 0.0
    assert sx.merge(nan, "P43212").counts["invalid_intensity"] == 2 * len(rows)


def test_the_cell_is_fitted_to_d_when_not_given(lysozyme):
    obs = observations(lysozyme, 6).head(20000)
    result = sx.merge(obs, "P 43 21 2", scale=False)
    np.testing.assert_allclose(result.cell.parameters, LYSOZYME, rtol=1e-6)
    assert result.cell.a == result.cell.b
    with_cell = sx.merge(obs, "P 43 21 2", scale=False, cell=LYSOZYME)
    pd.testing.assert_frame_equal(result.merged, with_cell.merged, rtol=1e-6)
    with pytest.raises(KeyError, match="d_A"):
        sx.merge(obs.drop(columns="d_A"), "P43212")


def test_resolution_limits(lysozyme):
    obs = observations(lysozyme, 7).head(30000)
    result = sx.merge(obs, "P43212", d_min=2.5, d_max=20.0, n_shells=10, scale=False)
    assert result.merged.d_A.min() >= 2.5 and result.merged.d_A.max() <= 20.0
    shells = result.stats[result.stats.shell >= 0]
    assert len(shells) == 10
    assert shells.d_min_A.iloc[-1] == pytest.approx(2.5)
    assert shells.d_max_A.iloc[0] == pytest.approx(20.0)
    assert result.counts["outside_resolution"] > 0


# ============================================================ halves and determinism
def test_halves_follow_the_frame_hash_and_not_the_row_order(lysozyme):
    halves = frame_half(np.arange(100_000))
    assert 0.49 < halves.mean() < 0.51
    np.testing.assert_array_equal(frame_half(np.arange(10)), frame_half(np.arange(10)[::-1])[::-1])
    obs = observations(lysozyme, 8).head(40000)
    a = sx.merge(obs, "P43212", cell=LYSOZYME)
    b = sx.merge(obs.sample(frac=1.0, random_state=1), "P43212", cell=LYSOZYME)
    # Only the order of floating-point sums differs.
    pd.testing.assert_frame_equal(a.merged, b.merged, rtol=1e-6, atol=1e-6)
    pd.testing.assert_frame_equal(a.stats, b.stats, rtol=1e-6)
    pd.testing.assert_frame_equal(a.half1, b.half1, rtol=1e-6, atol=1e-6)
    again = sx.merge(obs, "P43212", cell=LYSOZYME)
    pd.testing.assert_frame_equal(a.merged, again.merged, check_exact=True)
    # Half 1 and 2 together hold every observation of the merged reflections.
    both = a.half1.merge(a.half2, on=["h", "k", "l"], how="outer", suffixes=("1", "2"))
    n = both.n_obs1.fillna(0) + both.n_obs2.fillna(0)
    assert n.sum() == a.merged.n_obs.sum()


# ================================================================ ambiguity resolution
def test_ambiguity_operators_come_from_the_lattice():
    tetragonal = LYSOZYME
    hexagonal = (50.0, 50.0, 150.0, 90, 90, 120)
    assert ambiguity_operators("P 43", tetragonal) == ["-h,k,-l"]
    assert ambiguity_operators("P 43 21 2", tetragonal) == []
    assert len(ambiguity_operators("P 3", hexagonal)) == 3
    assert len(ambiguity_operators("P 32 2 1", hexagonal)) == 1
    assert len(ambiguity_operators("P 6", hexagonal)) == 1
    assert ambiguity_operators("P 2 3", (60, 60, 60, 90, 90, 90)) == ["-h,-l,-k"]
    assert ambiguity_operators(sx.UnitCell(40, 50, 60, space_group="P 21 21 21")) == []


def test_ambiguity_resolver_restores_reindexed_crystals(p43):
    rng = np.random.default_rng(9)
    obs = observations(p43, 9)
    key = obs.frame.to_numpy() * 2 + obs.crystal.to_numpy()
    flip = rng.random(key.max() + 1) < 0.5
    hkl = obs[["h", "k", "l"]].to_numpy(copy=True)
    hkl[flip[key]] = hkl[flip[key]] @ TWIN_KHL
    obs[["h", "k", "l"]] = hkl
    result = sx.merge(obs, "P43")
    assert result.ambiguity_operators == ["-h,k,-l"]
    s = result.scales
    reindexed = (s.reindex_op != "h,k,l").to_numpy()
    was_flipped = flip[s.frame.to_numpy() * 2 + s.crystal.to_numpy()]
    agree = np.mean(reindexed == was_flipped)
    restored = max(agree, 1.0 - agree)  # the setting of the whole set is arbitrary
    assert restored >= 0.98
    assert result.n_reindexed == reindexed.sum() <= len(s) / 2
    op = None if agree >= 0.5 else TWIN_KHL
    assert cc_truth(result.merged, p43, op) > 0.85
    unresolved = sx.merge(obs, "P43", resolve_ambiguity=False)
    assert unresolved.n_reindexed == 0 and unresolved.ambiguity_operators == []
    assert cc_truth(unresolved.merged, p43) < cc_truth(result.merged, p43, op) - 0.1


def test_no_ambiguity_without_twin_laws(p43):
    obs = observations(p43, 10).head(20000)
    result = sx.merge(obs, "P43", resolve_ambiguity=False)
    assert result.ambiguity_operators == [] and result.n_reindexed == 0
    with pytest.raises(ValueError, match="resolve_ambiguity"):
        sx.merge(obs, "P43", resolve_ambiguity="yes")


# ==================================================================== anomalous data
def test_anomalous_merging_keeps_friedel_mates_apart(lysozyme):
    obs = observations(lysozyme, 11)
    hkl = obs[["h", "k", "l"]].to_numpy()
    table = AsuTable(gemmi.UnitCell(*LYSOZYME), gemmi.SpaceGroup("P 43 21 2"), 1.99)
    u, friedel = table.lookup(hkl)
    minus = friedel & ~table.centric[u]
    obs.loc[minus, "I"] *= 1.5
    obs.loc[minus, "sigma"] *= 1.5
    merged = sx.merge(obs, "P43212", anomalous=True, scale=False).merged
    acentric = ~table.centric[table.lookup(merged[["h", "k", "l"]].to_numpy())[0]]
    plus = merged[acentric & ~table.lookup(merged[["h", "k", "l"]].to_numpy())[1]]
    mates = merged[acentric & table.lookup(merged[["h", "k", "l"]].to_numpy())[1]]
    pairs = plus.merge(mates.assign(h=-mates.h, k=-mates.k, l=-mates.l), on=["h", "k", "l"],
                       suffixes=("_plus", "_minus"))
    assert len(pairs) > 5000
    ratio = pairs.I_minus.sum() / pairs.I_plus.sum()
    assert ratio == pytest.approx(1.5, rel=0.03)
    stats = sx.merge(obs, "P43212", anomalous=True, scale=False).stats
    overall = stats.iloc[-1]
    inside = AsuTable(gemmi.UnitCell(*LYSOZYME), gemmi.SpaceGroup("P 43 21 2"),
                       overall.d_min_A * (1 - 1e-9))
    acentric = ~inside.centric[inside.d <= overall.d_max_A * (1 + 1e-9)]
    assert overall.n_possible == 2 * acentric.sum() + (~acentric).sum()
    assert stats.completeness.iloc[-1] > 0.95


# ============================================================= asymmetric-unit mapping
@pytest.mark.parametrize("space_group", ["P 1", "P 1 21 1", "C 2 2 21", "P 43 21 2", "P 43",
                                         "P 31 2 1", "P 31 1 2", "P 61 2 2", "R 3",
                                         "I 2 3", "P 4 3 2"])
def test_asu_mapping_matches_gemmi(space_group, rng):
    hkl = rng.integers(-12, 13, size=(3000, 3))
    sg = gemmi.SpaceGroup(space_group)
    expected, friedel = ref.to_asu(hkl, sg)
    absent = np.asarray(sg.operations().systematic_absences(hkl.astype(np.int32)), bool)
    absent |= np.all(hkl == 0, axis=1)
    got = map_to_asu(hkl, space_group)
    np.testing.assert_array_equal(got[~absent], expected[~absent])
    assert np.all(got[absent] == 0)
    anomalous = map_to_asu(hkl, space_group, anomalous=True)
    centric = np.asarray(sg.operations().centric_flag_array(expected.astype(np.int32)), bool)
    sign = np.where(friedel & ~centric, -1, 1)[:, None]
    np.testing.assert_array_equal(anomalous[~absent], (sign * expected)[~absent])


# ======================================================================== statistics
def test_statistics_follow_their_definitions():
    rng = np.random.default_rng(12)
    cell = gemmi.UnitCell(*LYSOZYME)
    sg = gemmi.SpaceGroup("P 43 21 2")
    hkl = np.asarray(gemmi.make_miller_array(cell, sg, 3.0, 0.0, True))
    keep = rng.random(len(hkl)) < 0.8
    hkl = hkl[keep]
    truth = rng.exponential(100.0, len(hkl))
    i1 = truth + rng.normal(0, 30, len(hkl))
    i2 = truth + rng.normal(0, 30, len(hkl))
    table = pd.DataFrame({"h": hkl[:, 0], "k": hkl[:, 1], "l": hkl[:, 2]})
    merged = table.assign(I=(i1 + i2) / 2, sigma=15.0, n_obs=4)
    half1 = table.assign(I=i1, sigma=30.0, n_obs=2)
    half2 = table.assign(I=i2, sigma=30.0, n_obs=2)
    stats = merging_statistics(merged, half1, half2, "P 43 21 2", cell=LYSOZYME, n_shells=5)
    overall = stats.iloc[-1]
    assert overall.shell == -1 and overall.n_unique == len(hkl)
    d_all = cell.calculate_d_array(gemmi.make_miller_array(cell, sg, 3.0 * (1 - 1e-9), 0.0,
                                                           True))
    d = cell.calculate_d_array(hkl.astype(np.int32))
    assert overall.d_min_A == pytest.approx(d.min()) and overall.d_max_A == pytest.approx(d.max())
    expected = np.count_nonzero((d_all >= d.min() * (1 - 1e-9)) & (d_all <= d.max() * (1 + 1e-9)))
    assert overall.n_possible == expected
    assert overall.completeness == pytest.approx(keep.mean(), abs=0.01)
    assert overall.n_obs == 4 * len(hkl) and overall.multiplicity == 4.0
    assert overall.cc_half == pytest.approx(np.corrcoef(i1, i2)[0, 1])
    assert overall.r_split == pytest.approx(
        np.sum(np.abs(i1 - i2)) / (np.sqrt(2) * 0.5 * np.sum(i1 + i2)))
    assert overall.i_over_sigma == pytest.approx(np.mean((i1 + i2) / 2 / 15.0))
    assert overall.cc_star == pytest.approx(np.sqrt(2 * overall.cc_half / (1 + overall.cc_half)))
    shells = stats[stats.shell >= 0]
    inv3 = 1.0 / shells.d_min_A.to_numpy() ** 3
    np.testing.assert_allclose(np.diff(inv3), np.diff(inv3)[0], rtol=1e-9)
    assert shells.n_unique.sum() == overall.n_unique
    assert cc_star(-0.1) == 0.0 and np.isnan(cc_star(np.nan))


def test_cc_star_relation_on_many_reflections():
    """CC* of two noisy halves predicts the CC of their mean with the signal."""
    rng = np.random.default_rng(13)
    cell = gemmi.UnitCell(100.0, 100.0, 100.0, 90, 90, 90)
    hkl = np.asarray(gemmi.make_miller_array(cell, gemmi.SpaceGroup("P 1"), 4.0, 0.0, True))
    signal = rng.exponential(100.0, len(hkl))
    for noise in (60.0, 100.0, 150.0):
        i1 = signal + rng.normal(0, noise, len(hkl))
        i2 = signal + rng.normal(0, noise, len(hkl))
        table = pd.DataFrame({"h": hkl[:, 0], "k": hkl[:, 1], "l": hkl[:, 2],
                              "sigma": noise, "n_obs": 2})
        merged = table.assign(I=(i1 + i2) / 2)
        stats = merging_statistics(merged, table.assign(I=i1), table.assign(I=i2), "P 1",
                                   cell=cell, n_shells=4)
        for s in range(4):
            sel = (stats.d_min_A[s] <= merged_d(cell, hkl)) & (
                merged_d(cell, hkl) < stats.d_max_A[s])
            cc_true = np.corrcoef(merged.I[sel], signal[sel])[0, 1]
            assert stats.cc_half[s] > 0.2
            assert abs(stats.cc_star[s] - cc_true) < 0.03


def merged_d(cell, hkl):
    return cell.calculate_d_array(hkl.astype(np.int32))


def test_cc_star_resolution_interpolates():
    t = pd.DataFrame({"shell": [0, 1, 2, -1], "d_max_A": [np.inf, 4.0, 3.0, np.inf],
                      "d_min_A": [4.0, 3.0, 2.5, 2.5], "cc_star": [0.95, 0.7, 0.3, 0.9]})
    d = cc_star_resolution(t)
    x = [(0.5 * (lo + hi)) ** (2 / 3) for lo, hi in ((1 / 64, 1 / 27), (1 / 27, 1 / 2.5 ** 3))]
    assert 1 / d ** 2 == pytest.approx(x[0] + (0.7 - 0.5) / 0.4 * (x[1] - x[0]))
    assert cc_star_resolution(t.assign(cc_star=[0.9, 0.8, 0.7, 0.8])) == 2.5
    assert np.isnan(cc_star_resolution(t.assign(cc_star=[0.4, 0.3, 0.2, 0.3])))


# ============================================================================ kernels
def _scale_problem(rng, n_cryst=12):
    sizes = rng.integers(0, 60, n_cryst)
    sizes[0] = 1
    stop = np.cumsum(sizes)
    start = stop - sizes
    n = int(stop[-1])
    s2 = rng.uniform(0.0, 0.06, n)
    y = rng.exponential(100.0, n)
    g_true = np.repeat(rng.uniform(0.3, 3.0, n_cryst), sizes)
    b_true = np.repeat(rng.uniform(-15, 15, n_cryst), sizes)
    sigma = rng.uniform(2.0, 10.0, n)
    i_obs = g_true * np.exp(-2 * b_true * s2) * y + sigma * rng.standard_normal(n)
    use = rng.random(n) < 0.9
    return start, stop, i_obs, 1.0 / sigma ** 2, s2, y, use


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_refine_scales_matches_reference(seed):
    rng = np.random.default_rng(seed)
    start, stop, i_obs, w, s2, y, use = _scale_problem(rng)
    g0 = np.ones(len(start))
    b0 = rng.uniform(-5, 5, len(start))
    g, b = g0.copy(), b0.copy()
    n_used = np.zeros(len(start), np.int64)
    kern.refine_scales(start, stop, i_obs, w, s2, y, use, g, b, n_used, 50)
    eg, eb, en = ref.refine_scales(start, stop, i_obs, w, s2, y, use, g0, b0)
    np.testing.assert_array_equal(n_used, en)
    np.testing.assert_allclose(g, eg, rtol=1e-6, equal_nan=True)
    np.testing.assert_allclose(b, eb, rtol=1e-5, atol=1e-6, equal_nan=True)
    assert np.isnan(g[0])


def _ambiguity_problem(rng, n_cryst=40, n_unique=300, n_ops=2):
    truth = rng.exponential(1.0, n_unique)
    perm = np.array([np.arange(n_unique)] + [rng.permutation(n_unique)
                                             for _ in range(n_ops - 1)])
    sizes = rng.integers(3, 40, n_cryst)
    stop = np.cumsum(sizes)
    start = stop - sizes
    n = int(stop[-1])
    setting = np.repeat(rng.integers(0, n_ops, n_cryst), sizes)
    u_true = rng.integers(0, n_unique, n)
    x = truth[u_true] * rng.uniform(0.2, 1.0, n)
    u_alt = np.empty((n_ops, n), np.int64)
    for o in range(n_ops):
        # What the row's index becomes under operator o, when it was misindexed by setting.
        u_alt[o] = perm[(o + setting) % n_ops, u_true]
    u_alt[:, rng.random(n) < 0.05] = -1
    order = np.argsort(-sizes, kind="stable")
    return start, stop, order, u_alt, x, n_unique


@pytest.mark.parametrize("n_ops", [2, 4])
def test_resolve_ambiguity_matches_reference(n_ops):
    rng = np.random.default_rng(20 + n_ops)
    start, stop, order, u_alt, x, n_unique = _ambiguity_problem(rng, n_ops=n_ops)
    assign, best_cc, changes = kern.resolve_ambiguity(start, stop, order, u_alt, x, n_unique,
                                                      5, 10)
    e_assign, e_cc, e_changes = ref.resolve_ambiguity(start, stop, order, u_alt, x, 5, 10)
    np.testing.assert_array_equal(assign, e_assign)
    np.testing.assert_allclose(best_cc, e_cc, rtol=1e-9, equal_nan=True)
    np.testing.assert_array_equal(changes[:len(e_changes)], e_changes)
    assert np.all(changes[len(e_changes):] == -1)


@pytest.mark.skipif(NO_JIT, reason="already running without JIT")
def test_kernels_without_jit():
    """The kernel comparisons once more with NUMBA_DISABLE_JIT=1 (pure Python kernels)."""
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    tests = [f"{Path(__file__).name}::{name}" for name in (
        "test_refine_scales_matches_reference[0]",
        "test_resolve_ambiguity_matches_reference[2]",
    )]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-p", "no:xdist", *tests], cwd=Path(__file__).parent, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"{len(tests)} passed" in proc.stdout


# ============================================================================= files
def test_mtz_round_trip(lysozyme, tmp_path):
    result = sx.merge(observations(lysozyme, 13).head(40000), "P43212")
    path = sx.write_mtz(result.merged, tmp_path / "merged.mtz")
    mtz = gemmi.read_mtz_file(str(path))
    assert mtz.column_labels() == ["H", "K", "L", "I", "SIGI", "N"]
    assert [c.type for c in mtz.columns] == ["H", "H", "H", "J", "Q", "I"]
    assert mtz.spacegroup.hm == "P 43 21 2"
    np.testing.assert_allclose(mtz.cell.parameters, LYSOZYME, rtol=1e-6)
    data = pd.DataFrame(np.asarray(mtz.array), columns=["h", "k", "l", "I_mtz", "SIGI", "N"])
    both = result.merged.merge(data.astype({"h": "int32", "k": "int32", "l": "int32"}),
                               on=["h", "k", "l"])
    assert len(both) == len(result.merged) == mtz.nreflections
    np.testing.assert_allclose(both.I_mtz, both.I, rtol=1e-6, atol=1e-4)
    np.testing.assert_array_equal(both.N, both.n_obs)
    back = sx.read_mtz(path)
    MERGED.validate(back)
    a = result.merged.sort_values(["h", "k", "l"]).reset_index(drop=True)
    b = back.sort_values(["h", "k", "l"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(a[["h", "k", "l", "n_obs"]], b[["h", "k", "l", "n_obs"]])
    np.testing.assert_allclose(b.I, a.I, rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(b.sigma, a.sigma, rtol=1e-6)
    np.testing.assert_allclose(b.d_A, a.d_A, rtol=1e-6)
    assert back.attrs["symmetry"] == "P 43 21 2" and back.attrs["anomalous"] is False
    np.testing.assert_allclose(back.attrs["cell"], LYSOZYME, rtol=1e-6)


def test_anomalous_mtz_round_trip(lysozyme, tmp_path):
    result = sx.merge(observations(lysozyme, 14).head(40000), "P43212", anomalous=True)
    path = sx.write_mtz(result.merged, tmp_path / "anomalous.mtz")
    mtz = gemmi.read_mtz_file(str(path))
    assert mtz.column_labels() == ["H", "K", "L", "I(+)", "SIGI(+)", "N(+)", "I(-)",
                                   "SIGI(-)", "N(-)"]
    back = sx.read_mtz(path)
    assert back.attrs["anomalous"] is True
    a = result.merged.sort_values(["h", "k", "l"]).reset_index(drop=True)
    b = back.sort_values(["h", "k", "l"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(a[["h", "k", "l", "n_obs"]], b[["h", "k", "l", "n_obs"]])
    np.testing.assert_allclose(b.I, a.I, rtol=1e-6, atol=1e-4)


def test_hkl_round_trip_with_half_sets(lysozyme, tmp_path):
    result = sx.merge(observations(lysozyme, 15).head(40000), "P43212")
    files = sx.write_hkl(result.merged, tmp_path / "sx.hkl",
                         half_sets=(result.half1, result.half2))
    assert [f.name for f in files] == ["sx.hkl", "sx.hkl1", "sx.hkl2"]
    lines = files[0].read_text().splitlines()
    assert lines[0] == "CrystFEL reflection list version 2.0"
    assert lines[1] == "Symmetry: 4/mmm"
    assert lines[2].split() == ["h", "k", "l", "I", "phase", "sigma(I)", "nmeas"]
    assert lines[3].split()[4] == "-"
    assert "End of reflections" in lines and lines[-1].startswith("Generated by sxlab")
    back = sx.read_hkl(files[0], cell=result.cell)
    assert back.attrs["crystfel_symmetry"] == "4/mmm"
    MERGED.validate(back)
    a = result.merged.sort_values(["h", "k", "l"]).reset_index(drop=True)
    b = back.sort_values(["h", "k", "l"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(a[["h", "k", "l", "n_obs"]], b[["h", "k", "l", "n_obs"]])
    np.testing.assert_allclose(b.I, a.I, atol=0.005 + 1e-9)
    np.testing.assert_allclose(b.sigma, a.sigma, atol=0.005 + 1e-9)
    np.testing.assert_allclose(b.d_A, a.d_A)
    halves = [sx.read_hkl(f) for f in files[1:]]
    assert len(halves[0]) == len(result.half1) and np.isnan(halves[0].d_A).all()
    stats = merging_statistics(back, *halves, "P 43 21 2", cell=result.cell)
    np.testing.assert_allclose(stats.cc_half, result.stats.cc_half, atol=1e-4)
    np.testing.assert_array_equal(stats.n_unique, result.stats.n_unique)
    # The file written from a table read back names the same symmetry.
    again = sx.write_hkl(back, tmp_path / "again.hkl")[0]
    assert again.read_text().splitlines()[1] == "Symmetry: 4/mmm"


def test_hkl_reader_errors(tmp_path):
    bad = tmp_path / "bad.hkl"
    bad.write_text("CrystFEL reflection list version 2.0\nSymmetry: 1\n   1 2 3 4.0 - 1.0 1\n")
    with pytest.raises(sx.io.HklFileError, match="End of reflections"):
        sx.read_hkl(bad)
    bad.write_text("CrystFEL reflection list version 2.0\nSymmetry: 1\n   1 2 3 4.0 - 1.0 1\n"
                   "   1 2 3 x - 1 1\nEnd of reflections\n")
    with pytest.raises(sx.io.HklFileError, match="line 4") as info:
        sx.read_hkl(bad)
    assert info.value.lineno == 4 and info.value.line.split()[3] == "x"
    # Version 1.0 lists have no header; a phase column may hold values.
    old = tmp_path / "old.hkl"
    old.write_text("   1    2    3     10.00    45.00       1.00       2\nEnd of reflections\n")
    table = sx.read_hkl(old)
    assert table[["h", "k", "l", "n_obs"]].iloc[0].tolist() == [1, 2, 3, 2]
    assert table.I.iloc[0] == 10.0 and table.attrs["crystfel_symmetry"] is None


@pytest.mark.parametrize(("space_group", "anomalous", "name"), [
    ("P 43 21 2", False, "4/mmm"), ("P 43 21 2", True, "422"), ("P 43", False, "4/m"),
    ("P 31 2 1", False, "-3m1"), ("P 31 1 2", True, "312"), ("P 3", False, "-3"),
    ("R 3", False, "-3_H"), ("R 3 2", True, "321_H"), ("R 3:R", False, "-3_R"),
    ("P 1 21 1", False, "2/m"), ("P 1 1 21", False, "2/m_uac"), ("I 2 3", False, "m-3"),
    ("P 61 2 2", False, "6/mmm"), ("C 2 2 21", True, "222"),
])
def test_crystfel_symmetry_names(space_group, anomalous, name):
    assert sx.io.crystfel_symmetry(space_group, anomalous=anomalous) == name


# ====================================================================== end to end
@pytest.fixture(scope="module")
def processed_sample(tmp_path_factory):
    run = sx.datasets.load("lysozyme-sample", progress=False)
    truth = sx.datasets.truth("lysozyme-sample")
    from sxlab.demo import demo_params

    out = tmp_path_factory.mktemp("merge-sample") / "out"
    res = sx.process_run(run, demo_params(truth), executor="serial", out=out, progress=False)
    return res, truth


def test_merge_of_processed_sample(processed_sample):
    res, truth = processed_sample
    result = sx.merge(res.reflections, "P43212", scale=False, min_measurements=1)
    overall = result.stats.iloc[-1]
    assert len(result.merged) > 200
    assert 0.02 < overall.completeness < 0.5
    assert overall.multiplicity >= 1.0
    assert result.counts["crystals"] == 4
    assert cc_truth(result.merged, truth) > 0.5
    # With scaling, four crystals overlap too little to refine scales: all are rejected.
    scaled = sx.merge(res.reflections, "P43212")
    assert scaled.scales.rejected.all() and len(scaled.merged) == 0
    STATISTICS.validate(scaled.stats)


def test_cli_merge(processed_sample, tmp_path, capsys):
    from sxlab import cli

    res, _ = processed_sample
    mtz = tmp_path / "out.mtz"
    hkl = tmp_path / "out.hkl"
    assert cli.main(["merge", str(res.out), "--symmetry", "P43212", "-o", str(mtz),
                     "--hkl", str(hkl), "--no-scale", "--min-measurements", "1",
                     "--shells", "5"]) == 0
    printed = capsys.readouterr().out
    assert "cc_half" in printed and "unique reflections" in printed
    assert gemmi.read_mtz_file(str(mtz)).nreflections > 200
    assert hkl.is_file() and Path(str(hkl) + "1").is_file() and Path(str(hkl) + "2").is_file()


def test_merging_stats_plot(lysozyme):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sxlab import plots

    result = sx.merge(observations(lysozyme, 16).head(40000), "P43212")
    ax = plots.merging_stats(result.stats)
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels[:3] == ["CC1/2", "CC*", "completeness"]
    assert len(ax.get_lines()[0].get_xdata()) == 20
    assert ax.right_ax.get_lines()[0].get_label() == "⟨I/σ(I)⟩"
    plt.close(ax.figure)


def test_merge_parameters_are_one_frozen_set(lysozyme):
    obs = observations(lysozyme, 17).head(3000)
    by_keywords = sx.merge(obs, "P43212", d_min=2.5, scale=False, n_shells=5)
    params = MergeParams(d_min=2.5, scale=False, n_shells=5)
    by_params = sx.merge(obs, "P43212", params=params)
    pd.testing.assert_frame_equal(by_keywords.merged, by_params.merged)
    pd.testing.assert_frame_equal(by_keywords.stats, by_params.stats)
    trial = sx.Params().replace(merge={"d_min": 2.5, "scale": False, "n_shells": 5})
    assert trial.merge == params
    assert sx.Params.from_toml(trial.to_toml()).merge == params
    # keywords override single fields of the parameter set
    assert len(sx.merge(obs, "P43212", params=params, n_shells=3).stats) == 4
    for bad in (dict(resolve_ambiguity="yes"), dict(iterations=-1), dict(n_shells=0),
                dict(d_min=3.0, d_max=2.0), dict(min_partiality=2.0)):
        with pytest.raises(ValueError):
            MergeParams(**bad)
    with pytest.raises(TypeError):
        sx.merge(obs, "P43212", no_such_option=1)


def test_merge_function_and_input_is_checked(lysozyme):
    import sxlab.merging as merging

    assert sx.merge is merging.merge and sx.MergeResult is merging.MergeResult
    assert sx.merge.__doc__.startswith("Scale and merge")
    obs = observations(lysozyme, 17).head(2000)
    with pytest.raises(KeyError, match="sigma"):
        sx.merge(obs.drop(columns="sigma"), "P43212")
    with pytest.raises(ValueError, match="space group"):
        sx.merge(obs, "P 99")
    with pytest.raises(KeyError, match="partiality"):
        sx.merge(obs.drop(columns="partiality"), "P43212", partiality=True)
    with pytest.raises(ValueError, match="pass cell"):
        sx.merge(obs.head(0), "P43212")
    empty = sx.merge(obs.head(0), "P43212", cell=LYSOZYME)
    MERGED.validate(empty.merged)
    SCALES.validate(empty.scales)
    assert len(empty.merged) == 0
    import pickle

    again = pickle.loads(pickle.dumps(sx.merge(obs, "P43212", scale=False)))
    merged, stats = again
    assert len(merged) and again.cell.space_group == "P 43 21 2"
