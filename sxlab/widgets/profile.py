"""ProfileView: the per-stage time profile as stacked areas, updating as frames arrive."""

from __future__ import annotations

import anywidget
import numpy as np
import pandas as pd
import traitlets as t

from .. import tables
from ..profiling import profile_blocks
from ..results import ResultsReader
from . import _assets
from ._follow import Poller
from ._png import StaticPNG, figure_png

__all__ = ["ProfileView"]


class ProfileView(StaticPNG, anywidget.AnyWidget):
    """Mean time per frame spent in each stage, in blocks of frames, as stacked areas.

    The interactive twin of :func:`sxlab.plots.profile` (same data:
    :func:`sxlab.profiling.profile_blocks`). Rows can be fed as they arrive
    (:meth:`append`), or the view can follow the output directory of a running
    :func:`sxlab.process_run` (:meth:`poll`, :meth:`follow`).

    Parameters
    ----------
    table : DataFrame, optional
        A profile table (:data:`sxlab.profiling.PROFILE_SCHEMA`), e.g.
        ``results.profile``.
    path : str or Path, optional
        Results directory to read committed parts from as they appear
        (:class:`sxlab.results.ResultsReader`; see :meth:`poll`).
    block, top, level : int
        Frames per block, categories kept (the others summed as "other") and depth of
        the categories, as in :func:`sxlab.plots.profile`.
    include_wait : bool
        Include the time spent waiting for data.
    follow : float, optional
        Start :meth:`follow` with this interval in seconds.

    Attributes
    ----------
    table : DataFrame
        Every profile row received so far.
    data : dict
        What is drawn: ``x`` (block centres, frames in completion order), ``categories``,
        ``values`` (seconds per frame, one list per category), ``n_records``.

    Examples
    --------
    >>> from sxlab.profiling import read_crystfel_profile
    >>> t = read_crystfel_profile([f"0 (root 0.4 (wait 0.1) (index 0.{i % 3 + 1}))"
    ...                            for i in range(300)])
    >>> view = ProfileView(t, block=50)
    >>> view.data["categories"], len(view.data["x"])
    (['index', 'root', 'wait'], 6)
    >>> view.append(t.assign(worker=1)).data["n_records"]   # a second worker's frames
    600
    """

    _esm = _assets.esm("profile.js")
    _css = _assets.css()

    data = t.Dict().tag(sync=True)
    title = t.Unicode("").tag(sync=True)
    block = t.Int(133).tag(sync=True)
    top = t.Int(10).tag(sync=True)
    level = t.Int(1).tag(sync=True)
    include_wait = t.Bool(True).tag(sync=True)
    following = t.Bool(False).tag(sync=True)

    def __init__(self, table: pd.DataFrame | None = None, *, path=None, block: int = 133,
                 top: int = 10, level: int = 1, include_wait: bool = True,
                 follow: float | None = None, **kwargs):
        self._table = (tables.PROFILE.empty() if table is None
                       else table.reset_index(drop=True))
        self._follower = ResultsReader(path) if path is not None else None
        self._poller = None
        super().__init__(block=int(block), top=int(top), level=int(level),
                         include_wait=bool(include_wait), **kwargs)
        if self._follower is not None:
            self.poll()
        self._recompute()
        if follow is not None:
            self.follow(follow)

    @property
    def table(self) -> pd.DataFrame:
        return self._table

    def append(self, rows: pd.DataFrame) -> ProfileView:
        """Add profile rows (e.g. the profile of newly processed frames) and redraw."""
        if rows is not None and len(rows):
            self._table = pd.concat([self._table, rows], ignore_index=True)
            self._recompute()
        return self

    def poll(self) -> int:
        """Read the parts committed in the output directory since the last call.

        Returns the number of new profile rows.
        """
        if self._follower is None:
            raise ValueError("this ProfileView follows no directory: pass path=")
        new = self._follower.poll()["profile"]
        self.append(new)
        return len(new)

    def follow(self, interval_s: float = 2.0) -> ProfileView:
        """Poll the output directory every ``interval_s`` seconds until :meth:`stop`."""
        self.stop()
        self._poller = Poller(self.poll, interval_s)
        self.following = True
        return self

    def stop(self) -> None:
        """Stop following the output directory."""
        if self._poller is not None:
            self._poller.stop()
            self._poller = None
        self.following = False

    @t.observe("block", "top", "level", "include_wait")
    def _on_settings(self, change):
        self._recompute()

    def _recompute(self) -> None:
        data = profile_blocks(self._table, max(int(self.block), 1), max(int(self.top), 1),
                              self.include_wait, level=max(int(self.level), 1))
        if not len(data):
            self.data = {"x": [], "categories": [], "values": [], "n_records": 0}
            return
        wide = data.pivot_table(index=["block", "first_record", "n_records"],
                                columns="category", values="seconds_per_frame",
                                observed=True, sort=True)
        categories = [str(c) for c in data["category"].cat.categories]
        wide = wide.reindex(columns=categories).fillna(0.0)
        first = wide.index.get_level_values("first_record").to_numpy()
        count = wide.index.get_level_values("n_records").to_numpy()
        x = first + (count - 1) / 2.0
        self.data = {"x": np.round(x, 3).tolist(), "categories": categories,
                     "values": np.round(wide.to_numpy().T, 9).tolist(),
                     "n_records": int(count.sum())}

    # -------------------------------------------------------------- static PNG
    def to_png(self, *, dpi: int = 96) -> bytes:
        """The static figure (:func:`sxlab.plots.profile`) as PNG bytes."""
        from .. import plots

        def draw(fig):
            ax = fig.add_subplot()
            if len(self._table):
                plots.profile(self._table, block=self.block, top=self.top,
                              include_wait=self.include_wait, level=self.level, ax=ax)
            else:
                ax.text(0.5, 0.5, "no profile rows yet", ha="center", va="center")
                ax.set_axis_off()

        return figure_png(draw, (8, 4.5), dpi=dpi, layout="constrained")

