"""Matplotlib figures of sxlab results.

This view module may import matplotlib at import time; the core modules never import it.

* :func:`profile` — per-frame processing time by stage as stacked areas, averaged in
  blocks of frames (the plot of the real-time pipeline's profiling).
* :func:`merging_stats` — CC1/2, CC*, completeness and ⟨I/σ⟩ of merged data against
  resolution, with the CC* = 0.5 cut.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .profiling import profile_blocks

__all__ = ["merging_stats", "profile"]


def profile(table: pd.DataFrame, *, block: int = 133, top: int = 10,
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
    block, top, level : int
        Block size in records, categories kept, and depth of the categories (1:
        first-level stages).
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
    ax.stackplot(x, values, labels=categories)
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
    :func:`sxlab.merge.cc_star_resolution`).

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

    from .merge import cc_star_resolution

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
    ax.axhline(threshold, color="0.5", linestyle=":", linewidth=1)
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
