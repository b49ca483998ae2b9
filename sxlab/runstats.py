"""Run statistics with the cctbx.xfel definitions: "have I collected enough data?"

Pure pandas/NumPy: the input is a frames table (one row per frame, one or several runs),
optionally a per-frame resolution-shell table and a crystals table; the output is tidy
tables that the static figure (:func:`sxlab.plots.run_stats`), the interactive RunStats
widget and the experiment database all share.

* :func:`run_stats` — per-frame table (spots, hit, indexed, solvent, multi-lattice,
  per-image resolution, high quality and their moving averages) and the per-run
  statistics bar, as a :class:`RunStats`.
* :func:`frame_resolution` — per-image resolution at a ⟨I/σ(I)⟩ cutoff from the shell table.
* :func:`strongest` — the strongest indexed / unindexed images.
* :func:`cell_clusters` — unit-cell distributions across runs grouped into clusters (to
  spot a second crystal form).

Definitions (cctbx ``xfel/ui/components/run_stats_plotter.py``):

* a shot is a frame processed without error (failed frames are counted apart);
* hit: ``n_peaks >= min_spots`` (the pipeline's own ``hit`` column when ``min_spots`` is
  None); indexed: at least one lattice; multi-lattice: at least ``n_multiples`` lattices;
  solvent: ``solvent_ratio >= solvent_cutoff``;
* per-image resolution: the high-resolution edge of the highest-resolution shell whose
  mean I/σ(I) is at least ``i_sigma`` (NaN for unindexed images); high quality: indexed
  with that resolution ≤ ``hq_resolution`` Å;
* moving averages run over the shots of the selected runs in order (run after run, frame
  after frame), over the shots ``i − h … i + h − 1`` clipped at both ends, with
  ``h = min(50, max(N // 20, 1))`` for the indexing, solvent and multi-lattice rates
  (N shots in all) and ``h = 500`` for the high-quality rate, which is the fraction of
  the indexed shots of its window that are high quality (0 where the window has none).

Tables
------
Per frame (:data:`sxlab.tables.RUN_STATS_FRAMES`) and per run
(:data:`sxlab.tables.RUN_STATS_RUNS`); columns with units carry them as suffixes
(``resolution_A``), rates are fractions 0–1 and ``*_pct`` columns percentages.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from . import tables

__all__ = [
    "CLUSTER_COLUMN",
    "CellClusters",
    "RunStats",
    "cell_clusters",
    "frame_resolution",
    "moving_average",
    "run_stats",
    "strongest",
]

#: The column :func:`cell_clusters` adds to the crystals it is given.
CLUSTER_COLUMN = tables.Column("cluster", "int64", "",
                               "cluster number, 0 = most populated; -1: cell not finite")

_CELL = ["a", "b", "c", "alpha", "beta", "gamma"]


# ------------------------------------------------------------------- moving averages
def moving_average(values, half_window: int, *, weights=None) -> np.ndarray:
    """Windowed mean over ``i - h … i + h - 1`` (clipped at the ends), cctbx.xfel style.

    Parameters
    ----------
    values : array_like of bool or float
        One value per shot, in shot order.
    half_window : int
        ``h`` (≥ 1).
    weights : array_like of bool or float, optional
        Denominator per shot instead of 1 (e.g. "indexed" for the high-quality rate);
        windows whose weights sum to 0 give 0.

    Returns
    -------
    numpy.ndarray of float64

    Examples
    --------
    >>> moving_average([1, 0, 0, 1], 1).tolist()
    [1.0, 0.5, 0.0, 0.5]
    """
    x = np.asarray(values, dtype=np.float64)
    h = int(half_window)
    if h < 1:
        raise ValueError(f"half_window must be >= 1, got {half_window}")
    n = len(x)
    if n == 0:
        return np.zeros(0)
    i = np.arange(n)
    lo = np.maximum(i - h, 0)
    hi = np.minimum(i + h, n)
    csum = np.concatenate([[0.0], np.cumsum(x)])
    num = csum[hi] - csum[lo]
    if weights is None:
        return num / (hi - lo)
    w = np.concatenate([[0.0], np.cumsum(np.asarray(weights, dtype=np.float64))])
    den = w[hi] - w[lo]
    out = np.zeros(n)
    np.divide(num, den, out=out, where=den > 0)
    return out


# -------------------------------------------------------------------- resolution
def frame_resolution(shells: pd.DataFrame, i_sigma: float = 1.0) -> pd.Series:
    """Per-image resolution at a mean I/σ(I) cutoff, from per-frame resolution shells.

    The resolution of a frame is the high-resolution edge (``d_min_A``) of its
    highest-resolution shell with at least one reflection and ``mean_i_sigma >= i_sigma``,
    whether or not lower shells reach it (cctbx.xfel's per-image rule; the same as
    :func:`sxlab.integration.resolution_estimate` on the reflections the shells came from).

    Parameters
    ----------
    shells : DataFrame
        :data:`sxlab.tables.RESOLUTION_SHELLS` columns (``run`` too for several runs).
    i_sigma : float
        Cutoff on the shell's mean I/σ(I).

    Returns
    -------
    Series
        ``resolution_A`` indexed by ``(run, frame)`` (or ``frame`` without a run column),
        NaN for frames where no shell passes.

    Examples
    --------
    >>> s = pd.DataFrame({"frame": [0, 0, 1, 1], "shell": [0, 1, 0, 1],
    ...                   "d_max_A": [9.0, 3.0, 9.0, 3.0], "d_min_A": [3.0, 2.0, 3.0, 2.0],
    ...                   "n": [5, 5, 5, 5], "mean_i_sigma": [4.0, 1.5, 4.0, 0.5]})
    >>> frame_resolution(s, 1.0).tolist()
    [2.0, 3.0]
    >>> bool(frame_resolution(s, 5.0).isna().all())
    True
    """
    keys = ["run", "frame"] if "run" in shells.columns else ["frame"]
    missing = [c for c in [*keys, "d_min_A", "n", "mean_i_sigma"] if c not in shells.columns]
    if missing:
        raise KeyError(f"shell table lacks the column(s) {missing}")
    ok = (shells["n"].to_numpy() > 0) & (shells["mean_i_sigma"].to_numpy() >= float(i_sigma))
    d = shells["d_min_A"].where(ok)
    out = d.groupby([shells[k] for k in keys], sort=True).min()
    out.name = "resolution_A"
    return out


# ----------------------------------------------------------------------- run stats
@dataclass
class RunStats:
    """Run statistics of a selection of frames (see the module docstring).

    Attributes
    ----------
    frames : DataFrame
        One row per shot, :data:`sxlab.tables.RUN_STATS_FRAMES` plus
        ``event``/``filename`` when the input had them (to open an image).
    runs : DataFrame
        The statistics bar, one row per run (:data:`sxlab.tables.RUN_STATS_RUNS`).
    params : dict
        Cutoffs and windows used (``min_spots``, ``solvent_cutoff``, ``n_multiples``,
        ``i_sigma``, ``hq_resolution``, ``half_window``, ``hq_half_window``).

    Notes
    -----
    The figure is :func:`sxlab.plots.run_stats` (``sx.plots.run_stats(stats)``).
    """

    frames: pd.DataFrame
    runs: pd.DataFrame
    params: dict = field(default_factory=dict)

    def total(self) -> pd.DataFrame:
        """The statistics bar of all runs together (one row, run ``"all"``)."""
        f = self.frames.assign(run="all")
        failed = int(self.runs["failed"].sum()) if len(self.runs) else 0
        t = _run_table(f, self.params["hq_resolution"])
        t["failed"] = failed
        return t

    def strongest(self, n: int = 10, *, indexed: bool = True) -> pd.DataFrame:
        """The ``n`` shots with most spots that did (or did not) index; see :func:`strongest`."""
        return strongest(self.frames, n, indexed=indexed)

    def __repr__(self) -> str:
        t = self.total().iloc[0]
        return (f"<RunStats {len(self.runs)} run(s), {t.shots} shots, {t.hits} hits "
                f"({t.hit_pct:.1f} %), {t.indexed} indexed ({t.indexed_pct:.1f} %), "
                f"{t.high_quality} ≤ {self.params.get('hq_resolution')} Å>")

    def _repr_html_(self) -> str:
        table = pd.concat([self.runs, self.total()], ignore_index=True)
        cols = ["run", "shots", "hits", "indexed", "high_quality", "solvent_pct", "hit_pct",
                "indexed_pct", "high_quality_pct", "failed"]
        body = table[cols].to_html(index=False, float_format=lambda v: f"{v:.1f}",
                                   na_rep="–")
        return f"<div><b>sxlab RunStats</b> {html.escape(_params_text(self.params))}{body}</div>"


def _params_text(params: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items())


def _check_columns(frames: pd.DataFrame, needed) -> None:
    missing = [c for c in needed if c not in frames.columns]
    if missing:
        raise KeyError(f"frames table lacks the column(s) {missing}; it needs "
                       f"{list(needed)} (as sxlab.process_run writes them)")


def run_stats(frames: pd.DataFrame, *, shells: pd.DataFrame | None = None, runs=None,
              last: int | None = None, min_spots: int | None = None,
              solvent_cutoff: float = 1.0, n_multiples: int = 2, i_sigma: float = 1.0,
              hq_resolution: float = 2.5, window: int | None = None,
              hq_window: int = 500) -> RunStats:
    """Run statistics of one or several runs with the cctbx.xfel definitions.

    Parameters
    ----------
    frames : DataFrame
        A frames table (:data:`sxlab.tables.FRAMES`): ``frame``, ``n_peaks``,
        ``n_crystals`` (or ``indexed``), ``resolution_A``, ``solvent_ratio``; ``run``
        (one unnamed run without it), ``status`` (failed frames are counted apart),
        ``hit`` (used when ``min_spots`` is None); ``event`` and ``filename`` are kept.
        Runs are taken in order of first appearance, frames in ascending order.
    shells : DataFrame, optional
        Per-frame resolution shells (:data:`sxlab.tables.RESOLUTION_SHELLS`); needed for an
        ``i_sigma``
        other than 1.0, the cutoff of the frames table's ``resolution_A``.
    runs : sequence of str, optional
        Keep these runs (in this order).
    last : int, optional
        Keep the last ``last`` runs of the selection.
    min_spots : int, optional
        Hit threshold on ``n_peaks`` (default: the ``hit`` column).
    solvent_cutoff : float
        Solvent when ``solvent_ratio >= solvent_cutoff``. Default 1.0.
    n_multiples : int
        Lattices that make a multi-lattice shot. Default 2.
    i_sigma : float
        Mean I/σ(I) a resolution shell needs to count. Default 1.0.
    hq_resolution : float
        High-quality resolution limit (Å). Default 2.5.
    window : int, optional
        Half-width ``h`` of the indexing / solvent / multi-lattice moving averages
        (default ``min(50, max(N // 20, 1))``).
    hq_window : int
        Half-width of the high-quality moving average. Default 500.

    Returns
    -------
    RunStats
        ``.frames`` (:data:`sxlab.tables.RUN_STATS_FRAMES`) and ``.runs``
        (:data:`sxlab.tables.RUN_STATS_RUNS`).

    Examples
    --------
    >>> f = pd.DataFrame({"run": ["r1"] * 4, "frame": range(4), "n_peaks": [50, 3, 40, 60],
    ...                   "n_crystals": [1, 0, 0, 2], "resolution_A": [2.1, np.nan, np.nan, 3.0],
    ...                   "solvent_ratio": [1.2, 0.8, 1.1, 0.9], "status": "ok"})
    >>> st = run_stats(f, min_spots=20)
    >>> st.runs[["shots", "hits", "indexed", "high_quality", "solvent"]].iloc[0].tolist()
    [4, 3, 2, 1, 2]
    >>> st.frames["indexing_rate"].round(2).tolist()
    [1.0, 0.5, 0.0, 0.5]
    """
    _check_columns(frames, ["frame", "n_peaks", "resolution_A", "solvent_ratio"])
    if "n_crystals" not in frames.columns and "indexed" not in frames.columns:
        raise KeyError("frames table needs an 'n_crystals' or an 'indexed' column")
    if min_spots is None and "hit" not in frames.columns:
        raise KeyError("frames table has no 'hit' column: give min_spots")
    if int(n_multiples) < 2:
        raise ValueError(f"n_multiples must be >= 2, got {n_multiples}")
    idx, names, run_order, failed = _select(frames, runs, last)
    n = len(idx)

    def col(name, dtype=None):
        return frames[name].to_numpy(dtype)[idx]

    run_col = names[idx]
    frame = col("frame", np.int64)
    n_peaks = col("n_peaks", np.int64)
    if "n_crystals" in frames.columns:
        n_crystals = col("n_crystals", np.int64)
    else:
        n_crystals = col("indexed", bool).astype(np.int64)
    indexed = n_crystals > 0
    hit = (n_peaks >= int(min_spots)) if min_spots is not None else col("hit", bool)
    ratio = col("solvent_ratio", np.float64)
    solvent = np.isfinite(ratio) & (ratio >= float(solvent_cutoff))
    multi = n_crystals >= int(n_multiples)
    if shells is not None:
        res = _resolution_from_shells(run_col, frame, shells, i_sigma)
    elif float(i_sigma) != 1.0:
        raise ValueError(f"i_sigma={i_sigma} needs the per-frame resolution shells "
                         "(shells=...): the frames table's resolution_A is at I/σ >= 1")
    else:
        res = col("resolution_A", np.float64).copy()
    res[~indexed] = np.nan
    hq = indexed & (res <= float(hq_resolution))

    h = int(window) if window is not None else min(50, max(n // 20, 1))
    out = tables.RUN_STATS_FRAMES.make({
        "run": run_col,
        "frame": frame,
        "shot": np.arange(n, dtype=np.int64),
        "n_peaks": n_peaks,
        "hit": hit,
        "indexed": indexed,
        "n_crystals": n_crystals,
        "multi_lattice": multi,
        "solvent_ratio": ratio,
        "solvent": solvent,
        "resolution_A": res,
        "high_quality": hq,
        "indexing_rate": moving_average(indexed, h),
        "solvent_rate": moving_average(solvent, h),
        "multi_lattice_rate": moving_average(multi, h),
        "high_quality_rate": moving_average(hq, int(hq_window), weights=indexed),
    })
    for extra in ("event", "filename"):
        if extra in frames.columns:
            out[extra] = pd.Series(col(extra, object), dtype=object)
    params = {"min_spots": min_spots, "solvent_cutoff": float(solvent_cutoff),
              "n_multiples": int(n_multiples), "i_sigma": float(i_sigma),
              "hq_resolution": float(hq_resolution), "half_window": h,
              "hq_half_window": int(hq_window)}
    table = _run_table(out, float(hq_resolution), run_order)
    table["failed"] = np.array([failed.get(r, 0) for r in table["run"]], dtype=np.int64)
    return RunStats(out, table, params)


def _select(frames: pd.DataFrame, runs, last):
    """Rows of the selected shots in order (failed frames left out), the run name of every
    input row, the runs in order and the failed frames per run."""
    if "run" in frames.columns:
        names = frames["run"].to_numpy(object)
        step = max(1, len(names) // 64)
        if len(names) and not all(isinstance(v, str) for v in names[::step]):
            names = names.astype(str).astype(object)
    else:
        names = np.full(len(frames), "", dtype=object)
    codes, uniq = pd.factorize(names, sort=False)
    uniq = np.asarray(uniq, dtype=object)
    if runs is not None:
        runs = [str(r) for r in ([runs] if isinstance(runs, str) else runs)]
        unknown = [r for r in runs if r not in set(uniq)]
        if unknown:
            raise KeyError(f"run(s) {unknown} not in the frames table")
        pos = {r: k for k, r in enumerate(runs)}
        rank_of_code = np.array([pos.get(u, -1) for u in uniq], dtype=np.int64)
    else:
        rank_of_code = np.arange(len(uniq), dtype=np.int64)
    rank = rank_of_code[codes] if len(codes) else np.zeros(0, np.int64)
    chosen = np.sort(np.unique(rank[rank >= 0]))
    if last is not None:
        chosen = chosen[-int(last):] if int(last) > 0 else chosen[:0]
    keep = np.isin(rank, chosen)
    frame = frames["frame"].to_numpy(np.int64)
    key = rank * (int(frame.max()) + 1 if len(frame) else 1) + frame
    rows = np.flatnonzero(keep)
    if len(rows) > 1 and not bool(np.all(key[rows][1:] >= key[rows][:-1])):
        rows = rows[np.argsort(key[rows], kind="stable")]
    order_of_rank = {r: k for k, r in enumerate(rank_of_code)}
    run_order = [uniq[order_of_rank[r]] for r in chosen]
    ok = (frames["status"].to_numpy(object)[rows] == "ok") if "status" in frames.columns \
        else np.ones(len(rows), bool)
    bad = pd.Series(names[rows[~ok]]).value_counts() if (~ok).any() else pd.Series(dtype=int)
    return rows[ok], names, run_order, bad.to_dict()


def _resolution_from_shells(run_col: np.ndarray, frame: np.ndarray, shells: pd.DataFrame,
                            i_sigma: float) -> np.ndarray:
    by_run = "run" in shells.columns
    res = frame_resolution(shells.assign(run=shells["run"].astype(str)) if by_run else shells,
                           i_sigma)
    if by_run:
        idx = pd.MultiIndex.from_arrays([run_col, frame])
    else:
        if len(set(run_col)) > 1:
            raise KeyError("the shell table needs a 'run' column for several runs")
        idx = pd.Index(frame)
    return res.reindex(idx).to_numpy(np.float64, copy=True)


def _run_table(out: pd.DataFrame, hq_resolution: float, run_order=None) -> pd.DataFrame:
    if run_order is None:
        run_order = list(pd.unique(out["run"]))
    if not run_order:
        return tables.RUN_STATS_RUNS.empty()
    g = out.groupby("run", sort=False)
    agg = pd.DataFrame({
        "first_shot": g["shot"].min(),
        "last_shot": g["shot"].max(),
        "shots": g.size(),
        "hits": g["hit"].sum(),
        "indexed": g["indexed"].sum(),
        "lattices": g["n_crystals"].sum(),
        "multi_lattice": g["multi_lattice"].sum(),
        "high_quality": g["high_quality"].sum(),
        "solvent": g["solvent"].sum(),
        "median_resolution_A": g["resolution_A"].median(),
    }).reindex(run_order)
    ints = ["shots", "hits", "indexed", "lattices", "multi_lattice", "high_quality", "solvent"]
    agg[ints] = agg[ints].fillna(0).astype(np.int64)
    agg[["first_shot", "last_shot"]] = agg[["first_shot", "last_shot"]].fillna(-1).astype(
        np.int64)
    shots = agg["shots"].to_numpy(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        for what in ("hit", "indexed", "high_quality", "solvent", "multi_lattice"):
            col = "hits" if what == "hit" else what
            agg[f"{what}_pct"] = 100.0 * agg[col].to_numpy(np.float64) / shots
        agg["indexed_of_hits_pct"] = (100.0 * agg["indexed"].to_numpy(np.float64)
                                      / agg["hits"].to_numpy(np.float64))
    agg["failed"] = 0
    agg = agg.rename_axis("run").reset_index()
    return tables.RUN_STATS_RUNS.make(agg[list(tables.RUN_STATS_RUNS.names)])


# ---------------------------------------------------------------------- strongest
def strongest(frames: pd.DataFrame, n: int = 10, *, indexed: bool = True) -> pd.DataFrame:
    """The shots with the most spots that indexed (or, ``indexed=False``, did not).

    Parameters
    ----------
    frames : DataFrame
        :attr:`RunStats.frames` (or any table with ``n_peaks`` and ``indexed`` or
        ``n_crystals``).
    n : int
        How many.
    indexed : bool
        Strongest indexed images (True) or strongest images that did not index.

    Returns
    -------
    DataFrame
        The selected rows, most spots first (ties: run and frame order).

    Examples
    --------
    >>> f = pd.DataFrame({"run": "r", "frame": range(4), "n_peaks": [5, 90, 40, 70],
    ...                   "indexed": [True, False, True, False]})
    >>> strongest(f, 1, indexed=False).frame.tolist()
    [1]
    """
    if "indexed" in frames.columns:
        idx = frames["indexed"].to_numpy(bool)
    else:
        idx = frames["n_crystals"].to_numpy() > 0
    sel = frames[idx if indexed else ~idx]
    order = np.argsort(-sel["n_peaks"].to_numpy(np.int64), kind="stable")
    return sel.iloc[order[: int(n)]].reset_index(drop=True)


# ---------------------------------------------------------------------- unit cells
@dataclass
class CellClusters:
    """Unit cells grouped into clusters.

    Attributes
    ----------
    crystals : DataFrame
        The input crystals (cell columns possibly Niggli-reduced) plus ``cluster``
        (0 = most populated, -1 = cell not finite).
    clusters : DataFrame
        One row per cluster: ``cluster``, ``n_crystals``, ``fraction``, the median and
        the robust spread (1.4826 × MAD) of each cell parameter (``a``, ``a_sd`` ...),
        ``runs`` (how many runs contribute when a ``run`` column is present).
    threshold : float
        Distance at which clusters were cut.
    """

    crystals: pd.DataFrame
    clusters: pd.DataFrame
    threshold: float

    def _repr_html_(self) -> str:
        body = self.clusters.to_html(index=False, float_format=lambda v: f"{v:.3g}")
        return f"<div><b>sxlab CellClusters</b> (threshold {self.threshold}){body}</div>"


def _cell_features(cells: np.ndarray) -> np.ndarray:
    """log edges and angles in radians: Euclidean distance ≈ relative cell difference."""
    return np.column_stack([np.log(cells[:, :3]), np.deg2rad(cells[:, 3:])])


def cell_clusters(crystals: pd.DataFrame, *, threshold: float = 0.05, reduce: bool = False,
                  max_points: int = 5000, seed: int = 0) -> CellClusters:
    """Group unit cells into clusters to spot a second crystal form.

    Cells are compared through ``(ln a, ln b, ln c, α, β, γ)`` (angles in radians), so a
    distance of 0.05 is about a 5 % change of an edge or a 2.9° change of an angle
    (CrystFEL's default cell tolerances). Average-linkage hierarchical clustering is cut
    at ``threshold``; above ``max_points`` cells, a seeded random subset is clustered and
    every other cell joins the cluster of its nearest clustered cell.

    Parameters
    ----------
    crystals : DataFrame
        A crystals table (``a b c alpha beta gamma`` in Å and degrees; ``run`` is kept).
    threshold : float
        Linkage distance at which clusters are separated. Default 0.05.
    reduce : bool
        Niggli-reduce every cell first (for cells indexed without a reference cell,
        which come in arbitrary settings; centred cells are reduced as primitive).
    max_points : int
        Largest number of cells clustered directly.
    seed : int
        Seed of the subset choice.

    Returns
    -------
    CellClusters

    Examples
    --------
    >>> c = pd.DataFrame({"a": [79.0, 79.2, 61.0], "b": [79.1, 79.0, 61.1],
    ...                   "c": [38.0, 37.9, 98.0], "alpha": 90.0, "beta": 90.0,
    ...                   "gamma": [90.0, 90.0, 120.0]})
    >>> cell_clusters(c).crystals.cluster.tolist()
    [0, 0, 1]
    """
    from scipy.cluster.hierarchy import fcluster, linkage

    missing = [c for c in _CELL if c not in crystals.columns]
    if missing:
        raise KeyError(f"crystals table lacks the cell column(s) {missing}")
    out = crystals.reset_index(drop=True).copy()
    cells = out[_CELL].to_numpy(np.float64)
    if reduce and len(cells):
        cells = _niggli_cells(cells)
        out[_CELL] = cells
    good = np.all(np.isfinite(cells), axis=1) & np.all(cells[:, :3] > 0, axis=1)
    labels = np.full(len(out), -1, np.int64)
    x = _cell_features(cells[good])
    if len(x) == 1:
        labels[good] = 0
    elif len(x) > 1:
        rng = np.random.default_rng(seed)
        sub = np.sort(rng.choice(len(x), int(max_points), replace=False)) \
            if len(x) > int(max_points) else np.arange(len(x))
        lab = fcluster(linkage(x[sub], method="average"), t=float(threshold),
                       criterion="distance")
        full = np.empty(len(x), np.int64)
        full[sub] = lab
        rest = np.setdiff1d(np.arange(len(x)), sub)
        if len(rest):
            from scipy.spatial import cKDTree

            _, nearest = cKDTree(x[sub]).query(x[rest])
            full[rest] = lab[nearest]
        # Renumber: 0 = most populated (ties: smallest first member).
        uniq, first, counts = np.unique(full, return_index=True, return_counts=True)
        order = np.lexsort((first, -counts))
        remap = np.empty(uniq.max() + 1, np.int64)
        remap[uniq[order]] = np.arange(len(uniq))
        labels[good] = remap[full]
    out["cluster"] = labels
    return CellClusters(out, _cluster_table(out), float(threshold))


def _niggli_cells(cells: np.ndarray) -> np.ndarray:
    from .cell import UnitCell

    red = np.full_like(cells, np.nan)
    for k, p in enumerate(cells):
        try:
            red[k] = UnitCell(*p).niggli().parameters
        except ValueError:
            continue
    return red


def _cluster_table(out: pd.DataFrame) -> pd.DataFrame:
    g = out[out["cluster"] >= 0].groupby("cluster", sort=True)
    n_total = max(int((out["cluster"] >= 0).sum()), 1)
    cols = {"n_crystals": g.size()}
    cols["fraction"] = cols["n_crystals"] / n_total
    for c in _CELL:
        med = g[c].median()
        cols[c] = med
        cols[f"{c}_sd"] = g[c].apply(lambda v: 1.4826 * float(np.median(np.abs(v - v.median()))))
    if "run" in out.columns:
        cols["runs"] = g["run"].nunique()
    table = pd.DataFrame(cols).rename_axis("cluster").reset_index()
    return table.astype({"cluster": np.int64, "n_crystals": np.int64})
