"""Matplotlib figures of sxlab results.

This view module may import matplotlib at import time; the core modules never import it.

* :func:`profile` — per-frame processing time by stage as stacked areas, averaged in
  blocks of frames (the plot of the real-time pipeline's profiling).
* :func:`merging_stats` — CC1/2, CC*, completeness and ⟨I/σ⟩ of merged data against
  resolution, with the CC* = 0.5 cut.
* :func:`run_stats` — the cctbx.xfel run-statistics figure: spots per image, moving-average
  rates, per-image resolution and the per-run statistics bar.
* :func:`unit_cells` — histograms of the six cell parameters, coloured by cluster.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .profiling import STAGES, default_block, profile_blocks

__all__ = ["merging_stats", "profile", "run_stats", "stage_colour", "unit_cells"]


def stage_colour(category: str) -> str:
    """The colour of a profile category, the same in every profile plot.

    A category (``index`` or ``index/asdf-search``) takes the colour of its last stage
    name's place in :data:`sxlab.profiling.STAGES` (tab20 without its greys, then
    tab20b); other names a colour chosen by a hash of the name; ``other`` is grey.

    Examples
    --------
    >>> stage_colour("index") == stage_colour("index")
    True
    >>> stage_colour("other")
    '#b0b0b0'
    """
    import zlib

    from matplotlib import colormaps

    if category == "other":
        return "#b0b0b0"
    name = category.rsplit("/", 1)[-1]
    greys = (14, 15)  # kept for "other"
    palette = [c for i, c in enumerate(colormaps["tab20"].colors) if i not in greys]
    palette += list(colormaps["tab20b"].colors)
    if name in STAGES:
        index = STAGES.index(name)
    else:
        index = len(STAGES) + zlib.crc32(name.encode()) % (len(palette) - len(STAGES))
    r, g, b = palette[index % len(palette)][:3]
    return f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}"


def profile(table: pd.DataFrame, *, block: int | None = None, top: int = 10,
            include_wait: bool = True, level: int = 1, ax=None):
    """Stacked areas of the mean time per frame spent in each stage.

    Records (frames) are taken in completion order and averaged in blocks of ``block``;
    the ``top`` categories with the largest total time are drawn, the rest summed as
    "other" (see :func:`sxlab.profiling.profile_blocks`, which computes the data).

    Parameters
    ----------
    table : pandas.DataFrame
        A profile table (:meth:`sxlab.profiling.Profiler.table`,
        :func:`sxlab.profiling.read_crystfel_profile`).
    block : int, optional
        Block size in records (default :func:`sxlab.profiling.default_block`: about 60
        points, 1 to 133 records each).
    top, level : int
        Categories kept, and depth of the categories (1: first-level stages). Each
        category has its :func:`stage_colour` in every plot.
    include_wait : bool
        Draw the time spent waiting for data; False shows processing time only.
    ax : matplotlib.axes.Axes, optional
        Axes to draw into (default: a new figure).

    Returns
    -------
    matplotlib.axes.Axes
        One area (``PolyCollection``) per category, bottom to top in the order of
        :func:`~sxlab.profiling.profile_blocks` (largest first, "other" last). The x
        axis is the frame number in completion order (block centres), the y axis the mean
        seconds per frame.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> from sxlab.profiling import read_crystfel_profile
    >>> t = read_crystfel_profile([f"0 (root 0.4 (wait 0.1) (index 0.{i % 3 + 1}))"
    ...                            for i in range(300)])
    >>> ax = profile(t, block=50)
    >>> len(ax.collections)
    3
    """
    if block is None:
        block = default_block(int((table["depth"] == 0).sum()) if len(table) else 0)
    data = profile_blocks(table, block, top, include_wait, level=level)
    if not len(data):
        raise ValueError("the profile table has no records")
    wide = data.pivot_table(index=["block", "first_record", "n_records"], columns="category",
                            values="seconds_per_frame", observed=True, sort=True)
    categories = list(data["category"].cat.categories)
    wide = wide[categories]
    first = wide.index.get_level_values("first_record").to_numpy()
    count = wide.index.get_level_values("n_records").to_numpy()
    x = first + (count - 1) / 2.0
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 4.5), layout="constrained")
    if len(x) == 1:
        x = np.array([first[0], first[0] + count[0] - 1], dtype=float)
        values = np.repeat(wide.to_numpy().T, 2, axis=1)
    else:
        values = wide.to_numpy().T
    ax.stackplot(x, values, labels=categories, colors=[stage_colour(c) for c in categories])
    ax.set_xlim(x[0], x[-1])
    ax.set_ylim(bottom=0)
    ax.set_xlabel("frame (completion order)")
    ax.set_ylabel("mean time per frame (s)")
    what = "time per frame" if include_wait else "processing time per frame (wait excluded)"
    ax.set_title(f"{what[0].upper()}{what[1:]}, blocks of {block} frames")
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles[::-1], labels[::-1], loc="upper left", bbox_to_anchor=(1.01, 1.0),
              fontsize="small", frameon=False)
    return ax


def merging_stats(stats: pd.DataFrame, ax=None, *, threshold: float = 0.5):
    """Merging statistics against resolution: CC1/2, CC*, completeness and ⟨I/σ⟩.

    Each shell is drawn at the centre of its reciprocal volume on a ``1/d²`` axis
    labelled in Å. CC1/2, CC* and completeness share the left axis (0–1); mean I/σ(I)
    is on a right-hand axis. A dotted line marks CC* = ``threshold`` and a dashed one
    the resolution where CC* falls below it (``stats.attrs["d_cc_star_A"]``, or
    :func:`sxlab.merging.cc_star_resolution`).

    Parameters
    ----------
    stats : pandas.DataFrame
        Statistics from :func:`sxlab.merge` (:data:`sxlab.tables.STATISTICS`); the
        overall row (``shell`` -1) is left out.
    ax : matplotlib.axes.Axes, optional
        Axes to draw into (default: a new figure).
    threshold : float
        CC* level of the resolution cut. Default 0.5.

    Returns
    -------
    matplotlib.axes.Axes
        The left axes: lines CC1/2, CC* and completeness, in that order; the I/σ axes is
        ``ax.right_ax``.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> t = pd.DataFrame({"shell": [0, 1, 2, -1], "d_max_A": [np.inf, 4.0, 3.0, np.inf],
    ...                   "d_min_A": [4.0, 3.0, 2.5, 2.5], "completeness": [1, 1, 0.9, 0.97],
    ...                   "i_over_sigma": [9.0, 4.0, 1.0, 5.0],
    ...                   "cc_half": [0.9, 0.5, 0.05, 0.8], "cc_star": [0.97, 0.82, 0.31, 0.94]})
    >>> ax = merging_stats(t)
    >>> [line.get_label() for line in ax.get_lines()[:3]]
    ['CC1/2', 'CC*', 'completeness']
    """
    from matplotlib.ticker import FuncFormatter

    from .merging import cc_star_resolution

    t = stats[stats["shell"] >= 0].sort_values("shell")
    if not len(t):
        raise ValueError("the statistics table has no shells")
    d_max = t["d_max_A"].to_numpy(np.float64)
    lo = np.where(np.isfinite(d_max), 1.0 / d_max ** 3, 0.0)
    hi = 1.0 / t["d_min_A"].to_numpy(np.float64) ** 3
    x = (0.5 * (lo + hi)) ** (2.0 / 3.0)
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4), layout="constrained")
    ax.plot(x, t["cc_half"], "o-", label="CC1/2", color="C0")
    ax.plot(x, t["cc_star"], "s-", label="CC*", color="C1")
    ax.plot(x, t["completeness"], "^-", label="completeness", color="C2")
    ax.axhline(threshold, color="0.5", linestyle=":", linewidth=1,
               label=f"CC* = {threshold:g}")
    d_cut = stats.attrs.get("d_cc_star_A")
    if d_cut is None:
        d_cut = cc_star_resolution(stats, threshold)
    if d_cut is not None and np.isfinite(d_cut):
        ax.axvline(1.0 / d_cut ** 2, color="C3", linestyle="--", linewidth=1,
                   label=f"CC* > {threshold:g} to {d_cut:.2f} Å")
    ax.set_ylim(min(0.0, float(np.nanmin(t["cc_half"]))) if len(t) else 0.0, 1.05)
    ax.set_xlabel("resolution (Å)")
    ax.set_ylabel("CC, completeness")
    ax.xaxis.set_major_formatter(FuncFormatter(
        lambda v, _: f"{1.0 / np.sqrt(v):.2f}" if v > 0 else "∞"))
    right = ax.twinx()
    right.plot(x, t["i_over_sigma"], "d--", color="C4", label="⟨I/σ(I)⟩")
    right.set_ylabel("⟨I/σ(I)⟩")
    right.set_ylim(bottom=0)
    ax.right_ax = right
    handles, labels = ax.get_legend_handles_labels()
    h2, l2 = right.get_legend_handles_labels()
    ax.legend(handles + h2, labels + l2, loc="lower left", fontsize="small", frameon=False)
    ax.set_title("Merging statistics")
    return ax


def run_stats(stats, *, tags=None, statuses=None, figsize=(11, 8)):
    """The run-statistics figure of the cctbx.xfel GUI, one column of panels per figure.

    Panels, sharing the shot axis (runs one after the other, separated by vertical lines):

    A. strong spots per image, blue where the image indexed, grey where it did not;
    B. moving averages of the indexing rate and the multi-lattice rate (left, %) and of
       the solvent rate (right, %);
    C. per-image resolution (dots, Å, high resolution at the top) and the high-quality
       rate (right, %: indexed images reaching ``hq_resolution``);
    D. the statistics bar of each run: images / hits, indexed (high quality), solvent % /
       hit %, indexed % (high-quality %), and its tags and job status when given.

    Parameters
    ----------
    stats : sxlab.runstats.RunStats
        From :func:`sxlab.runstats.run_stats` or :meth:`sxlab.experiment.Experiment.run_stats`.
    tags : mapping of run -> list of str, optional
        Tags written above each run's bar.
    statuses : mapping of run -> str, optional
        Job status written next to the tags.
    figsize : tuple
        Figure size in inches.

    Returns
    -------
    matplotlib.figure.Figure
        With ``fig.axes``: A, B, C, D, then the right-hand axes of B and C.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> from sxlab.runstats import run_stats as compute
    >>> f = pd.DataFrame({"run": ["r1"] * 3 + ["r2"] * 3, "frame": [0, 1, 2] * 2,
    ...                   "n_peaks": [40, 2, 60, 30, 45, 1], "n_crystals": [1, 0, 2, 0, 1, 0],
    ...                   "resolution_A": [2.2, np.nan, 3.1, np.nan, 2.0, np.nan],
    ...                   "solvent_ratio": 1.1, "hit": True})
    >>> fig = run_stats(compute(f))
    >>> len(fig.axes)
    6
    """
    frames, runs, params = stats.frames, stats.runs, stats.params
    if not len(frames):
        raise ValueError("no shots to plot")
    fig, (ax_a, ax_b, ax_c, ax_d) = plt.subplots(
        4, 1, sharex=True, figsize=figsize, layout="constrained",
        gridspec_kw={"height_ratios": [3, 2, 2, 1.4], "hspace": 0.0})
    x = frames["shot"].to_numpy()
    idx = frames["indexed"].to_numpy(bool)
    size = max(2.0, min(12.0, 4000.0 / len(x)))
    ax_a.scatter(x[~idx], frames["n_peaks"].to_numpy()[~idx], s=size, color="#bdbdbd",
                 edgecolors="none", label="did not index")
    ax_a.scatter(x[idx], frames["n_peaks"].to_numpy()[idx], s=size, color="tab:blue",
                 edgecolors="none", label="indexed")
    if params.get("min_spots") is not None:
        ax_a.axhline(params["min_spots"], color="0.4", linestyle=":", linewidth=1)
    ax_a.set_ylim(bottom=0)
    ax_a.set_ylabel("strong spots")
    ax_a.legend(loc="upper right", fontsize="small", frameon=False, markerscale=2)

    ax_b.plot(x, 100 * frames["indexing_rate"], color="tab:blue", label="indexed")
    ax_b.plot(x, 100 * frames["multi_lattice_rate"], color="tab:pink",
              label=f"≥ {params.get('n_multiples', 2)} lattices")
    ax_b.set_ylim(bottom=0)
    ax_b.set_ylabel("% of shots")
    b_right = ax_b.twinx()
    b_right.plot(x, 100 * frames["solvent_rate"], color="tab:green", label="solvent")
    b_right.set_ylim(bottom=0)
    b_right.set_ylabel("% solvent", color="tab:green")
    handles = ax_b.get_legend_handles_labels()[0] + b_right.get_legend_handles_labels()[0]
    ax_b.legend(handles=handles, loc="upper left", fontsize="small", frameon=False, ncol=3)

    res = frames["resolution_A"].to_numpy(np.float64)
    has = np.isfinite(res)
    ax_c.scatter(x[has], res[has], s=size, color="tab:orange", edgecolors="none")
    if has.any():
        ax_c.set_ylim(float(np.nanmax(res)) * 1.05, float(np.nanmin(res)) * 0.95)
    ax_c.set_ylabel(f"resolution (Å)\nI/σ ≥ {params.get('i_sigma', 1.0):g}")
    c_right = ax_c.twinx()
    c_right.plot(x, 100 * frames["high_quality_rate"], color="tab:red")
    c_right.set_ylim(0, 105)
    c_right.set_ylabel(f"% indexed ≤ {params.get('hq_resolution', 2.5):g} Å",
                       color="tab:red")

    ax_d.set_yticks([])
    ax_d.set_ylim(0, 1)
    tags = tags or {}
    statuses = statuses or {}
    for r in runs.itertuples():
        if r.shots == 0:
            continue
        for ax in (ax_a, ax_b, ax_c, ax_d):
            ax.axvline(r.first_shot - 0.5, color="k", linewidth=0.8)
        head = ", ".join(tags.get(r.run, []))
        if r.run in statuses:
            head = f"{head} [{statuses[r.run]}]".strip()
        lines = [f"run {r.run}", f"{r.shots} img / {r.hits} hit",
                 f"{r.indexed} ({r.high_quality}) idx",
                 f"{r.solvent_pct:.1f}% solv / {r.hit_pct:.1f}% hit",
                 f"{r.indexed_pct:.1f} ({r.high_quality_pct:.1f})% idx"]
        if head:
            lines.insert(0, head)
        ax_d.text(r.first_shot, 0.95, "\n".join(lines), va="top", ha="left",
                  fontsize="x-small", family="monospace")
    ax_d.set_xlim(-0.5, x[-1] + 0.5)
    ax_d.set_xlabel(f"shot (runs in order); high quality: indexed ≤ "
                    f"{params.get('hq_resolution', 2.5):g} Å")
    return fig


def unit_cells(clusters, *, bins: int = 40, figsize=(11, 5.5)):
    """Histograms of a, b, c, α, β, γ, one colour per unit-cell cluster.

    Parameters
    ----------
    clusters : sxlab.runstats.CellClusters or pandas.DataFrame
        From :func:`sxlab.runstats.cell_clusters`, or a crystals table (one colour).
    bins : int
        Histogram bins per parameter.
    figsize : tuple
        Figure size in inches.

    Returns
    -------
    matplotlib.figure.Figure
        Six axes in the order a, b, c, α, β, γ.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> c = pd.DataFrame({"a": [79.0, 79.2, 61.0], "b": [79.1, 79.0, 61.1],
    ...                   "c": [38.0, 37.9, 98.0], "alpha": 90.0, "beta": 90.0,
    ...                   "gamma": [90.0, 90.0, 120.0]})
    >>> len(unit_cells(c).axes)
    6
    """
    table = getattr(clusters, "crystals", clusters)
    labels = table["cluster"].to_numpy() if "cluster" in table.columns else np.zeros(
        len(table), np.int64)
    fig, axes = plt.subplots(2, 3, figsize=figsize, layout="constrained")
    names = [("a", "a (Å)"), ("b", "b (Å)"), ("c", "c (Å)"), ("alpha", "α (°)"),
             ("beta", "β (°)"), ("gamma", "γ (°)")]
    groups = [k for k in np.unique(labels) if k >= 0]
    for ax, (col, label) in zip(axes.ravel(), names, strict=False):
        values = table[col].to_numpy(np.float64)
        finite = values[np.isfinite(values)]
        if not len(finite):
            ax.set_xlabel(label)
            continue
        lo, hi = float(finite.min()), float(finite.max())
        edges = np.linspace(lo - 0.5, hi + 0.5, bins + 1) if hi - lo < 1e-9 else np.linspace(
            lo, hi, bins + 1)
        for k in groups:
            v = values[(labels == k) & np.isfinite(values)]
            ax.hist(v, bins=edges, histtype="stepfilled", alpha=0.6, color=f"C{k % 10}",
                    label=f"cluster {k} ({len(v)})")
        ax.set_xlabel(label)
    axes[0, 0].set_ylabel("crystals")
    axes[1, 0].set_ylabel("crystals")
    if len(groups) > 1:
        axes[0, 2].legend(fontsize="small", frameon=False)
    fig.suptitle("Unit-cell distribution")
    return fig
