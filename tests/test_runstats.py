"""Run statistics (sxlab.runstats) against shot-by-shot references, and its figure."""

from __future__ import annotations

import doctest

import matplotlib
import numpy as np
import pandas as pd
import pytest
from reference import runstats as ref

import sxlab as sx
from sxlab import runstats, tables
from sxlab.integration import resolution_per_frame, resolution_shells
from sxlab.runstats import cell_clusters, frame_resolution, run_stats, strongest

matplotlib.use("Agg")


def _frames(rng, runs=(("r3", 120), ("r1", 90), ("r7", 40))):
    """A frames table of several runs with random outcomes (runs listed out of order)."""
    parts = []
    for name, n in runs:
        n_peaks = rng.integers(0, 120, n)
        n_crystals = np.where(n_peaks > 30, rng.integers(0, 4, n), 0)
        res = np.where(n_crystals > 0, rng.uniform(1.6, 4.0, n), np.nan)
        parts.append(pd.DataFrame({
            "frame": np.arange(n), "run": name, "n_peaks": n_peaks,
            "hit": n_peaks >= 16, "indexed": n_crystals > 0, "n_crystals": n_crystals,
            "resolution_A": res, "solvent_ratio": rng.uniform(0.6, 1.4, n),
            "status": np.where(rng.random(n) < 0.03, "failed", "ok"),
            "event": [f"//{i}" for i in range(n)]}))
    f = pd.concat(parts, ignore_index=True)
    return f.sample(frac=1.0, random_state=1).reset_index(drop=True)  # order must not matter


def test_rates_match_the_shot_by_shot_reference(rng):
    f = _frames(rng)
    st = run_stats(f, min_spots=25, solvent_cutoff=1.05, hq_resolution=2.4)
    ok = f[f.status == "ok"]
    # shots: runs in order of first appearance, frames ascending, failed frames left out
    order = list(pd.unique(f.run))
    assert list(st.runs.run) == order
    expected = pd.concat([ok[ok.run == r].sort_values("frame") for r in order])
    assert st.frames.frame.tolist() == expected.frame.tolist()
    assert st.frames.shot.tolist() == list(range(len(expected)))
    n = len(expected)
    half = min(50, max(n // 20, 1))
    assert st.params["half_window"] == half > 1
    indexed = (expected.n_crystals > 0).tolist()
    solvent = (expected.solvent_ratio >= 1.05).tolist()
    multi = (expected.n_crystals >= 2).tolist()
    hq = [bool(i and r <= 2.4) for i, r in zip(indexed, expected.resolution_A, strict=False)]
    want = ref.windowed_rates(indexed, solvent, multi, hq, half, 500)
    got = st.frames[["indexing_rate", "solvent_rate", "multi_lattice_rate",
                     "high_quality_rate"]].to_numpy().T
    np.testing.assert_allclose(got, np.array(want), rtol=0, atol=1e-12)
    assert st.frames.hit.tolist() == (expected.n_peaks >= 25).tolist()
    assert st.frames.high_quality.tolist() == hq


def test_run_table_counts(rng):
    f = _frames(rng)
    st = run_stats(f)  # hit from the table's own column
    for row in st.runs.itertuples():
        g = f[(f.run == row.run) & (f.status == "ok")]
        assert row.shots == len(g)
        assert row.failed == int((f[f.run == row.run].status != "ok").sum())
        assert row.hits == int(g.hit.sum())
        assert row.indexed == int((g.n_crystals > 0).sum())
        assert row.lattices == int(g.n_crystals.sum())
        assert row.multi_lattice == int((g.n_crystals >= 2).sum())
        assert row.high_quality == int(((g.n_crystals > 0) & (g.resolution_A <= 2.5)).sum())
        assert row.solvent == int((g.solvent_ratio >= 1.0).sum())
        assert row.hit_pct == pytest.approx(100 * row.hits / row.shots)
        assert row.indexed_pct == pytest.approx(100 * row.indexed / row.shots)
        assert row.high_quality_pct == pytest.approx(100 * row.high_quality / row.shots)
        assert row.solvent_pct == pytest.approx(100 * row.solvent / row.shots)
        assert row.indexed_of_hits_pct == pytest.approx(100 * row.indexed / row.hits)
        assert row.median_resolution_A == pytest.approx(g.resolution_A.median())
        assert st.frames.shot[row.first_shot] == row.first_shot
        assert (st.frames.run[row.first_shot:row.last_shot + 1] == row.run).all()
    total = st.total().iloc[0]
    assert total.shots == st.runs.shots.sum() and total.failed == st.runs.failed.sum()
    assert total.indexed == st.runs.indexed.sum()
    tables.RUN_STATS_RUNS.validate(st.runs)
    tables.RUN_STATS_FRAMES.validate(st.frames, extra=True)
    assert "RunStats" in st._repr_html_() and "3 run(s)" in repr(st)


def test_selection_by_runs_and_last(rng):
    f = _frames(rng)
    st = run_stats(f, runs=["r7", "r1"])
    assert list(st.runs.run) == ["r7", "r1"]
    assert set(st.frames.run) == {"r7", "r1"}
    # the window follows the selection's size
    n = int(st.runs.shots.sum())
    assert st.params["half_window"] == min(50, max(n // 20, 1))
    last = run_stats(f, last=2)
    assert list(last.runs.run) == list(pd.unique(f.run))[-2:]
    assert run_stats(f, window=3).params["half_window"] == 3
    with pytest.raises(KeyError, match="r99"):
        run_stats(f, runs=["r99"])


def test_bad_input_names_what_is_missing(rng):
    f = _frames(rng)
    with pytest.raises(KeyError, match="solvent_ratio"):
        run_stats(f.drop(columns="solvent_ratio"))
    with pytest.raises(KeyError, match="min_spots"):
        run_stats(f.drop(columns="hit"))
    with pytest.raises(ValueError, match="shells"):
        run_stats(f, i_sigma=2.0)
    with pytest.raises(ValueError, match="n_multiples"):
        run_stats(f, n_multiples=1)


def _reflections(rng, n_frames=40):
    rows = []
    for frame in range(n_frames):
        m = int(rng.integers(0, 60))
        d = rng.uniform(1.5, 8.0, m)
        i_over_s = rng.gamma(2.0, 4.0, m) * (d / 4.0) ** 2 - 1.0
        rows.append(pd.DataFrame({"frame": frame, "d_A": d, "I": i_over_s * 10.0,
                                  "sigma": 10.0}))
    return pd.concat(rows, ignore_index=True)


@pytest.mark.parametrize("cutoff", [0.5, 1.0, 2.0, 4.0])
def test_frame_resolution_from_shells(rng, cutoff):
    refl = _reflections(rng)
    shells = resolution_shells(refl)
    got = frame_resolution(shells, cutoff)
    want = resolution_per_frame(refl, min_i_over_sigma=cutoff).dropna()
    # frames whose every shell fails are NaN in both; compare where defined
    pd.testing.assert_series_equal(got.dropna(), want, check_names=False)
    for frame, g in shells.groupby("frame"):
        r = ref.resolution(zip(g.d_min_A, g.n, g.mean_i_sigma, strict=False), cutoff)
        assert (np.isnan(r) and np.isnan(got[frame])) or r == got[frame]


def test_i_sigma_cutoff_through_shells(rng):
    refl = _reflections(rng, 30)
    shells = resolution_shells(refl).assign(run="r1")
    res1 = resolution_per_frame(refl)
    f = pd.DataFrame({"run": "r1", "frame": np.arange(30), "n_peaks": 50, "hit": True,
                      "n_crystals": 1, "resolution_A": res1.reindex(range(30)).to_numpy(),
                      "solvent_ratio": 1.0})
    a = run_stats(f, shells=shells, i_sigma=1.0)
    b = run_stats(f)
    np.testing.assert_array_equal(a.frames.resolution_A, b.frames.resolution_A)
    strict = run_stats(f, shells=shells, i_sigma=3.0, hq_resolution=3.0)
    want = resolution_per_frame(refl, min_i_over_sigma=3.0).reindex(range(30))
    np.testing.assert_array_equal(strict.frames.resolution_A, want.to_numpy())
    # a stricter cutoff never improves the resolution
    both = np.isfinite(strict.frames.resolution_A) & np.isfinite(a.frames.resolution_A)
    assert (strict.frames.resolution_A[both] >= a.frames.resolution_A[both]).all()


def test_strongest(rng):
    f = _frames(rng)
    st = run_stats(f)
    top = st.strongest(5)
    assert len(top) == 5 and top.indexed.all()
    assert top.n_peaks.tolist() == sorted(st.frames[st.frames.indexed].n_peaks,
                                          reverse=True)[:5]
    bottom = strongest(st.frames, 3, indexed=False)
    assert not bottom.indexed.any()
    assert bottom.n_peaks.iloc[0] == st.frames[~st.frames.indexed].n_peaks.max()
    assert "event" in top.columns  # enough to open the image


def test_cell_clusters_find_a_second_form(rng):
    n1, n2 = 300, 60
    form1 = np.column_stack([rng.normal(79.1, 0.4, n1), rng.normal(79.1, 0.4, n1),
                             rng.normal(37.9, 0.2, n1), np.full((n1, 3), 90.0)])
    form2 = np.column_stack([rng.normal(93.0, 0.5, n2), rng.normal(93.0, 0.5, n2),
                             rng.normal(130.5, 0.6, n2), np.full((n2, 2), 90.0),
                             np.full(n2, 120.0)])
    cells = np.vstack([form1, form2])
    crystals = pd.DataFrame(cells, columns=["a", "b", "c", "alpha", "beta", "gamma"])
    crystals["run"] = np.where(np.arange(n1 + n2) < n1, "r1", "r2")
    crystals.loc[5, "a"] = np.nan
    out = cell_clusters(crystals)
    truth = np.r_[np.zeros(n1, int), np.ones(n2, int)]
    truth[5] = -1
    np.testing.assert_array_equal(out.crystals.cluster, truth)
    c = out.clusters.set_index("cluster")
    assert c.loc[0, "n_crystals"] == n1 - 1 and c.loc[1, "n_crystals"] == n2
    assert c.loc[1, "gamma"] == pytest.approx(120.0)
    assert abs(c.loc[0, "a"] - 79.1) < 0.1 and abs(c.loc[0, "a_sd"] - 0.4) < 0.1
    # clustering a subset and assigning the rest gives the same answer
    sub = cell_clusters(crystals, max_points=100, seed=3)
    np.testing.assert_array_equal(sub.crystals.cluster, truth)


def test_cell_clusters_after_niggli_reduction():
    # the same lattice in two settings only clusters together once reduced
    crystals = pd.DataFrame({"a": [40.0, 40.0], "b": [50.0, 50.0], "c": [60.0, 60.0],
                             "alpha": [90.0, 90.0], "beta": [90.0, 90.0],
                             "gamma": [90.0, 90.0]})
    crystals.loc[1, ["a", "b", "gamma"]] = [40.0, np.hypot(40.0, 50.0),
                                            np.degrees(np.arctan2(50.0, 40.0))]
    assert cell_clusters(crystals).crystals.cluster.tolist() == [0, 1]
    red = cell_clusters(crystals, reduce=True)
    assert red.crystals.cluster.tolist() == [0, 0]
    np.testing.assert_allclose(red.crystals.loc[1, ["a", "b", "c"]], [40, 50, 60], rtol=1e-6)


def test_run_stats_figure(rng):
    f = _frames(rng)
    st = run_stats(f, min_spots=20)
    fig = sx.plots.run_stats(st, tags={"r1": ["thermolysin"]}, statuses={"r1": "done"})
    ax_a, ax_b, ax_c, ax_d = fig.axes[:4]
    grey, blue = ax_a.collections[:2]
    assert len(blue.get_offsets()) == int(st.frames.indexed.sum())
    assert len(grey.get_offsets()) == int((~st.frames.indexed).sum())
    np.testing.assert_allclose(ax_b.get_lines()[0].get_ydata(),
                               100 * st.frames.indexing_rate)
    texts = [t.get_text() for t in ax_d.texts]
    assert len(texts) == len(st.runs)
    r1 = st.runs.set_index("run").loc["r1"]
    t1 = next(t for t in texts if "run r1" in t)
    assert f"{int(r1.shots)} img / {int(r1.hits)} hit" in t1 and "thermolysin [done]" in t1
    lo, hi = ax_c.get_ylim()
    assert lo > hi  # high resolution at the top
    fig2 = sx.plots.unit_cells(cell_clusters(pd.DataFrame(
        {"a": [79.0, 61.0], "b": [79.0, 61.0], "c": [38.0, 98.0], "alpha": 90.0,
         "beta": 90.0, "gamma": [90.0, 120.0]})))
    assert len(fig2.axes) == 6
    matplotlib.pyplot.close("all")


def test_docstring_examples():
    for module in (runstats,):
        result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
        assert result.failed == 0 and result.attempted > 0
