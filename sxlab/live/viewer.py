"""Follow a live run from a notebook: :func:`tail` and the :class:`Tail` poller behind it.

:func:`tail` updates one output cell in place (HTML) with the latest hit frame and its
peaks, rolling hit / indexing / solvent rates, frames/s and, from a broker, the lag of
every consumer group, until interrupted or the run is finished. It reads either the
broker (the ``results`` derived stream and the frame stream for the hit's pixels) or a
live output directory (its committed parts). Give ``view=`` a callable to draw the
:class:`TailState` snapshots yourself (a widget, for instance) instead of the HTML.
"""

from __future__ import annotations

import base64
import html
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["Tail", "TailState", "tail"]


@dataclass
class TailState:
    """One snapshot of a live run.

    Attributes
    ----------
    run : str
    state : str
        ``receiving``, ``ended``, ``finished`` (every frame committed) or ``waiting``.
    frames : int
        Frames processed so far.
    window : pandas.DataFrame
        The last frames (columns ``frame, status, hit, indexed, n_peaks,
        solvent_ratio, resolution_A, t_committed``), oldest first.
    hit_rate, indexing_rate, solvent_rate : float
        Over ``window`` (indexing rate: of the hits; solvent: ratio >= cutoff).
    rate_hz : float
        Frames committed per second (last 10 s).
    latest_hit : int or None
        Frame number of the newest hit.
    peaks : pandas.DataFrame
        Its peaks (``fs, ss, intensity``).
    image : ndarray or None
        Its pixels (from the broker while cached), else None.
    status : pandas.DataFrame or None
        :meth:`Broker.status` of the run (lag per consumer group).
    """

    run: str = ""
    state: str = "waiting"
    frames: int = 0
    window: pd.DataFrame = field(default_factory=pd.DataFrame)
    hit_rate: float = np.nan
    indexing_rate: float = np.nan
    solvent_rate: float = np.nan
    rate_hz: float = np.nan
    latest_hit: int | None = None
    peaks: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(
        {"fs": [], "ss": [], "intensity": []}))
    image: np.ndarray | None = None
    status: pd.DataFrame | None = None

    def _repr_html_(self) -> str:
        return render_html(self)

    def __repr__(self) -> str:
        return (f"<TailState {self.run!r} {self.state}: {self.frames} frames, "
                f"hits {_pct(self.hit_rate)}, indexed {_pct(self.indexing_rate)}, "
                f"{self.rate_hz:.1f} frames/s>")


def _pct(v: float) -> str:
    return "–" if v is None or not np.isfinite(v) else f"{100 * v:.1f} %"


class Tail:
    """Poll a live run (broker or output directory) into :class:`TailState` snapshots.

    Parameters
    ----------
    source : Broker, str or path
        A :class:`~sxlab.live.broker.Broker`, a ``redis://`` URL, or an output directory.
    run : str, optional
        Run name or stream key (broker; default: the newest run).
    window : int
        Frames in the rolling rates.
    solvent_cutoff : float
        Solvent-ring ratio above which a frame counts as showing solvent.
    """

    def __init__(self, source, run: str | None = None, *, window: int = 200,
                 solvent_cutoff: float = 1.0, beamtime: str = "local"):
        from .broker import Broker

        self.window = int(window)
        self.solvent_cutoff = float(solvent_cutoff)
        self.broker = None
        self.dir = None
        self._own_broker = False
        if isinstance(source, Broker):
            self.broker = source
        elif isinstance(source, str) and source.startswith(("redis://", "rediss://",
                                                            "unix://")):
            self.broker = Broker(source, beamtime=beamtime)
            self._own_broker = True
        else:
            self.dir = Path(source)
        self.run = run
        self.key = None
        self._rows: list[dict] = []
        self._last_id = "-"
        self._reader = None
        self._peaks: dict[int, pd.DataFrame] = {}
        self._t0 = time.time()
        self._n = 0
        self._times: list[tuple[float, int]] = []

    def close(self) -> None:
        if self._own_broker and self.broker is not None:
            self.broker.close()

    # ----------------------------------------------------------------- sources
    def _poll_broker(self) -> tuple[str, list[dict]]:
        from .broker import derived_key

        b = self.broker
        if self.key is None:
            keys = b.run_keys()
            if self.run:
                key = b.resolve(self.run)
                self.key = key if key in keys else None
            elif keys:
                self.key = keys[-1]
            if self.key is None:
                return "waiting", []
        rkey = derived_key(self.key, "results")
        start = "-" if self._last_id == "-" else f"({self._last_id}"
        new = []
        for eid, f in b.client.xrange(rkey, start, "+", count=5000):
            self._last_id = eid.decode()
            row = {k.decode(): v.decode() for k, v in f.items()}
            r = {"frame": int(row["frame"]), "status": row["status"],
                 "hit": row["hit"] == "1", "indexed": row["indexed"] == "1",
                 "n_peaks": int(row["n_peaks"]), "solvent_ratio": float(row["solvent_ratio"]),
                 "resolution_A": float(row["resolution_A"]),
                 "t_committed": float(row["t_committed"])}
            if "peaks" in row:
                self._peaks = {r["frame"]: pd.DataFrame(json.loads(row["peaks"]))}
            new.append(r)
        state = b.info(self.key).get("state", "receiving")
        if state == "ended" and b.finished(self.key, "process"):
            state = "finished"
        return state, new

    def _poll_dir(self) -> tuple[str, list[dict]]:
        from sxlab.results import ResultsReader

        if self._reader is None:
            self._reader = ResultsReader(self.dir)
        t = self._reader.poll()
        f = t["frames"]
        now = time.time()
        rows = [{"frame": int(r.frame), "status": r.status, "hit": bool(r.hit),
                 "indexed": bool(r.indexed), "n_peaks": int(r.n_peaks),
                 "solvent_ratio": float(r.solvent_ratio),
                 "resolution_A": float(r.resolution_A), "t_committed": now}
                for r in f.itertuples()]
        hits = f[f.hit]
        if len(hits):
            last = int(hits.frame.max())
            p = t["peaks"]
            self._peaks = {last: p[p.frame == last][["fs", "ss", "intensity"]]}
        if self.run is None and len(f):
            self.run = str(f.run.iloc[0])
        if not self._reader.parts:
            return "waiting", rows
        state = "finished" if (self.dir / "frames.parquet").exists() else "receiving"
        return state, rows

    # -------------------------------------------------------------------- poll
    def poll(self) -> TailState:
        """Read what is new and return the current snapshot."""
        state, new = self._poll_broker() if self.broker is not None else self._poll_dir()
        self._rows = (self._rows + new)[-self.window:]
        self._n += len(new)
        now = time.time()
        self._times = [(t, n) for t, n in self._times if now - t < 10.0] + [(now, self._n)]
        t_first, n_first = self._times[0]
        fps = (self._n - n_first) / (now - t_first) if now - t_first > 0.5 else np.nan
        win = pd.DataFrame(self._rows, columns=["frame", "status", "hit", "indexed",
                                                "n_peaks", "solvent_ratio", "resolution_A",
                                                "t_committed"])
        ok = win[win.status == "ok"] if len(win) else win
        hits = int(ok.hit.sum()) if len(ok) else 0
        s = TailState(run=self.run or (self.key or "").rsplit(":", 1)[-1], state=state,
                      frames=self._n, window=win, rate_hz=fps)
        if len(ok):
            s.hit_rate = hits / len(ok)
            s.indexing_rate = float(ok.indexed.sum()) / hits if hits else np.nan
            s.solvent_rate = float((ok.solvent_ratio >= self.solvent_cutoff).mean())
        if self._peaks:
            s.latest_hit, s.peaks = next(iter(self._peaks.items()))
            if self.broker is not None:
                s.image = self._hit_image(s.latest_hit)
        if self.broker is not None and self.key is not None:
            s.status = self.broker.status(self.key)
        return s

    def _hit_image(self, frame: int):
        from .broker import Entry, frame_id
        from .worker import decode_frame

        if getattr(self, "_image_frame", None) == frame:
            return self._image
        got = self.broker.client.xrange(self.key, frame_id(frame), frame_id(frame))
        img = None
        if got:
            try:
                img = decode_frame(Entry(got[0][0].decode(), got[0][1]))[0].values
            except Exception:  # noqa: BLE001 - a frame that does not decode: no picture
                img = None
        self._image_frame, self._image = frame, img
        return img


# ------------------------------------------------------------------------ display
def _png(image: np.ndarray, size: int = 320) -> tuple[str, float]:
    """Log-scaled, binned greyscale PNG (base64) of an image and its scale factor."""
    from PIL import Image

    step = max(1, int(np.ceil(max(image.shape) / size)))
    ny, nx = (image.shape[0] // step) * step, (image.shape[1] // step) * step
    small = image[:ny, :nx].reshape(ny // step, step, nx // step, step).max(axis=(1, 3))
    v = np.log1p(np.clip(small, 0, None))
    hi = np.percentile(v, 99.8) or 1.0
    g = (255 - np.clip(v / hi, 0, 1) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(g).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode(), 1.0 / step


def render_html(s: TailState) -> str:
    """HTML of a snapshot: statistics bar, latest hit with its peaks, group lag table."""
    stats = (f"<b>{html.escape(s.run or 'run')}</b> — {html.escape(s.state)} · "
             f"{s.frames} frames · {s.rate_hz:.1f} frames/s · "
             f"hits {_pct(s.hit_rate)} · indexed {_pct(s.indexing_rate)} of hits · "
             f"solvent {_pct(s.solvent_rate)} (last {len(s.window)} frames)")
    pic = ""
    if s.latest_hit is not None:
        title = f"latest hit: frame {s.latest_hit}, {len(s.peaks)} peaks"
        if s.image is not None:
            data, scale = _png(s.image)
            h, w = int(s.image.shape[0] * scale), int(s.image.shape[1] * scale)
            circles = "".join(
                f'<circle cx="{(fs + 0.5) * scale:.1f}" cy="{(ss + 0.5) * scale:.1f}" r="4" '
                'fill="none" stroke="#d62728" stroke-width="1"/>'
                for fs, ss in zip(s.peaks.fs, s.peaks.ss, strict=False))
            pic = (f'<div>{html.escape(title)}</div><svg width="{w}" height="{h}">'
                   f'<image href="data:image/png;base64,{data}" width="{w}" height="{h}"/>'
                   f"{circles}</svg>")
        else:
            pic = f"<div>{html.escape(title)}</div>"
    lag = ""
    if s.status is not None and len(s.status):
        cols = ["group", "consumers", "pending", "lag", "trimmed", "rate_hz"]
        lag = s.status[cols].to_html(index=False, float_format=lambda v: f"{v:.1f}")
    return f"<div class='sxlab-tail'><div>{stats}</div>{pic}{lag}</div>"


def tail(source, run: str | None = None, *, interval_s: float = 1.0, window: int = 200,
         until_finished: bool = False, timeout_s: float | None = None, view=None,
         beamtime: str = "local") -> TailState:
    """Show a live run in the notebook cell, updated in place, until interrupted.

    Parameters
    ----------
    source : Broker, str or path
        A broker, a ``redis://`` URL or a live output directory.
    run : str, optional
        Run name or stream key (default: the newest run).
    interval_s : float
        Seconds between updates.
    window : int
        Frames in the rolling rates.
    until_finished : bool
        Return once every frame of the run is committed.
    timeout_s : float, optional
        Return after this long.
    view : callable, optional
        Called with each :class:`TailState` instead of the HTML display (hook for
        widgets).

    Returns
    -------
    TailState
        The last snapshot.

    Examples
    --------
    >>> import sxlab as sx
    >>> sx.live.tail("results/")  # doctest: +SKIP
    """
    poller = Tail(source, run, window=window, beamtime=beamtime)
    handle = None
    if view is None:
        from IPython.display import HTML, display

        handle = display(HTML("<div class='sxlab-tail'>waiting for frames…</div>"),
                         display_id=True)
    t0 = time.monotonic()
    state = TailState()
    try:
        while True:
            state = poller.poll()
            if view is not None:
                view(state)
            elif handle is not None:
                from IPython.display import HTML

                handle.update(HTML(render_html(state)))
            if until_finished and state.state == "finished":
                break
            if timeout_s is not None and time.monotonic() - t0 > timeout_s:
                break
            time.sleep(interval_s)
    except KeyboardInterrupt:
        pass
    finally:
        poller.close()
    return state
