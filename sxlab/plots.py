"""Matplotlib figures of sxlab results.

This view module may import matplotlib at import time; the core modules never import it.

* :func:`profile` — per-frame processing time by stage as stacked areas, averaged in
  blocks of frames (the plot of the real-time pipeline's profiling).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .profiling import profile_blocks

__all__ = ["profile"]


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
