"""PeakTuner: peak-search parameters re-run on the shown frame as they change."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pandas as pd
import traitlets as t

from .. import tables
from ..hits import hit_rule
from ..masks import build_mask
from ..params import HitParams, Params
from ..peaks import PeakFinder, PeakFinderParams
from ._frame import _by_frame, _FrameWidget

__all__ = ["PeakTuner"]

# (name, label, kind, min, max, step, help); kinds: range, select, check.
_COMMON = [
    ("method", "method", "select", None, None, None, "pixel classification"),
]
_PEAKFINDER8 = [
    ("adc_threshold", "ADC threshold", "range", 0.0, 50.0, 0.5,
     "candidate pixels exceed this value (ADU) as well as the annulus threshold"),
    ("min_snr", "min SNR", "range", 1.0, 20.0, 0.1,
     "annulus threshold mean + min_snr·σ, and smallest accepted peak SNR"),
    ("n_sigma_iterations", "σ-clip iterations", "range", 1, 10, 1, "annulus statistics"),
    ("fast", "fast statistics", "check", None, None, None, "annulus statistics from a sample"),
]
_DISPERSION = [
    ("sigma_background", "σ background", "range", 1.0, 20.0, 0.5,
     "dispersion threshold of non-background regions"),
    ("sigma_strong", "σ strong", "range", 1.0, 20.0, 0.5, "signal above the local mean"),
    ("global_threshold", "global threshold", "range", 0.0, 100.0, 0.5, "ADU"),
    ("kernel_size", "kernel half size", "range", 1, 10, 1, "box of (2k + 1)² pixels"),
    ("min_local", "min local pixels", "range", 0, 50, 1, "fewest good pixels in the box"),
    ("gain", "gain", "range", 0.1, 10.0, 0.1, "ADU per photon"),
]
_PEAK = [
    ("min_pix_count", "min pixels", "range", 1, 20, 1, "smallest accepted peak"),
    ("max_pix_count", "max pixels", "range", 2, 500, 1, "largest accepted peak"),
    ("local_bg_radius", "background radius", "range", 1, 10, 1,
     "distance of the local background ring"),
]
_HITS = [("min_peaks", "hit: min peaks", "range", 0, 200, 1, "hit when n_peaks ≥ this")]


class PeakTuner(_FrameWidget):
    """Tune the peak search interactively: every change re-runs it on the shown frame.

    Sliders and fields for the peakfinder8 or dispersion parameters and the hit
    threshold; each change (debounced in the browser) re-runs the prepared
    :class:`~sxlab.peaks.PeakFinder` on the frame shown
    (:meth:`~sxlab.peaks.PeakFinder.with_params` keeps the preparation when only
    per-frame parameters change) and updates the peak count, the hit decision and the
    overlay. With ``sample=N`` the same parameters also run on N frames spread over the
    run, for the hit rate and a histogram of peaks per frame.

    Parameters
    ----------
    source : Run or xarray.DataArray or ndarray
        Frames to tune on (see :class:`ImageViewer`).
    geometry : Detector, optional
        Default: the run's geometry.
    params : Params or PeakFinderParams, optional
        Starting parameters (default ``Params()``).
    mask : Mask, optional
        Static mask; default: the one ``params.mask`` describes
        (:func:`sxlab.masks.build_mask`).
    frame : int
        Frame shown first.
    sample : int
        Number of frames of the run evaluated with every change (0: none).

    Attributes
    ----------
    params : Params
        The starting parameters with the tuned ``peaks`` and ``hits`` sections: save it
        as a trial with ``tuner.params.save("trial.toml")``.
    peak_params : PeakFinderParams
    peaks : DataFrame
        Peaks of the shown frame with the current parameters.
    settings : dict
        Current values of the controls (set it, or single keys via :meth:`set`).
    tuner_state : dict
        ``n_peaks``, ``hit``, ``recompute_ms`` (peak search on the shown frame) and
        ``sample`` (``n_frames``, ``hit_rate``, ``median_peaks``, histogram ``edges`` and
        ``counts``, ``min_peaks``) when sampling.

    Examples
    --------
    >>> import sxlab as sx
    >>> run = sx.datasets.load("lysozyme-sample", progress=False)
    >>> tuner = sx.widgets.PeakTuner(run, params=sx.Params().replace(
    ...     peaks={"adc_threshold": 3.0, "min_snr": 6.0}))
    >>> n = tuner.tuner_state["n_peaks"]
    >>> tuner.set(min_snr=12.0).tuner_state["n_peaks"] < n
    True
    >>> tuner.params.peaks.min_snr
    12.0
    """

    controls = t.List(t.Dict()).tag(sync=True)
    settings = t.Dict().tag(sync=True)
    tuner_state = t.Dict().tag(sync=True)

    def __init__(self, source, geometry=None, params=None, *, mask=None, frame: int = 0,
                 sample: int = 0, **kwargs):
        geometry = geometry if geometry is not None else getattr(source, "geometry", None)
        if geometry is None:
            raise ValueError("PeakTuner needs a geometry: pass geometry= or a run that "
                             "carries one")
        if params is None:
            params = Params()
        elif isinstance(params, PeakFinderParams):
            params = Params(peaks=params)
        elif not isinstance(params, Params):
            raise TypeError(f"params must be Params or PeakFinderParams, got "
                            f"{type(params).__name__}")
        self._base_params = params
        if mask is None:
            mask = build_mask(geometry, params.mask)
        self._finder = PeakFinder(geometry, mask, params.peaks)
        self._peaks = None
        self._sample_n = int(sample)
        self._sample_rows = None
        settings = {f.name: getattr(params.peaks, f.name)
                    for f in dataclasses.fields(PeakFinderParams)}
        settings["min_peaks"] = params.hits.min_peaks
        self._ready = False
        super().__init__(source, geometry, mask=mask, frame=frame, kind="tuner", **kwargs)
        self.controls = self._controls(settings)
        self._ready = True
        self.settings = settings

    # -------------------------------------------------------------- controls
    def _controls(self, settings: dict) -> list[dict]:
        specs = _COMMON + (_PEAKFINDER8 if settings["method"] == "peakfinder8"
                           else _DISPERSION) + _PEAK + _HITS
        out = []
        for name, label, kind, lo, hi, step, help_ in specs:
            c = {"name": name, "label": label, "kind": kind, "help": help_}
            if kind == "select":
                c["options"] = ["peakfinder8", "dispersion"]
            elif kind == "range":
                value = float(settings[name])
                c.update(min=lo, max=max(hi, value), step=step)
            out.append(c)
        return out

    @property
    def peak_params(self) -> PeakFinderParams:
        values = {k: v for k, v in self.settings.items() if k != "min_peaks"}
        for f in dataclasses.fields(PeakFinderParams):
            if f.name in values and isinstance(getattr(self._base_params.peaks, f.name), int) \
                    and not isinstance(getattr(self._base_params.peaks, f.name), bool):
                values[f.name] = int(round(float(values[f.name])))
        return self._base_params.peaks.replace(**values)

    @property
    def hit_params(self) -> HitParams:
        return dataclasses.replace(self._base_params.hits,
                                   min_peaks=int(round(float(self.settings["min_peaks"]))))

    @property
    def params(self) -> Params:
        return self._base_params.replace(peaks=self.peak_params, hits=self.hit_params)

    def set(self, **values) -> PeakTuner:
        """Change some controls (as the sliders do); returns the tuner."""
        unknown = set(values) - set(self.settings)
        if unknown:
            raise KeyError(f"unknown parameter(s) {sorted(unknown)}; tunable: "
                           f"{sorted(self.settings)}")
        self.settings = {**self.settings, **values}
        return self

    @t.observe("settings")
    def _on_settings(self, change):
        if not self._ready:
            return
        old, new = change["old"] or {}, change["new"]
        if old.get("method") != new.get("method"):
            self.controls = self._controls(new)
        self._recompute()
        if self._sample_n:
            self._recompute_sample()

    # ------------------------------------------------------------ computing
    def _after_load(self) -> None:
        if getattr(self, "_ready", False):
            self._recompute()

    @property
    def peaks(self) -> pd.DataFrame:
        return self._peaks

    def _is_hit(self, n: int) -> bool:
        h = self.hit_params
        return bool(hit_rule(n, h.min_peaks, h.max_peaks))

    def _recompute(self) -> None:
        self._finder = self._finder.with_params(self.peak_params)
        shape = self._frames.shape
        bad = None if self._bad is None else self._bad.reshape(shape)
        t0 = time.perf_counter()
        peaks = self._finder(self._data.reshape(shape), bad, frame=self.frame_number)
        dt = time.perf_counter() - t0
        self._peaks = peaks
        self._tables["peaks"] = peaks
        self._index["peaks"] = _by_frame(peaks)
        state = {"n_peaks": len(peaks), "hit": self._is_hit(len(peaks)),
                 "recompute_ms": round(1e3 * dt, 2), "frame": self.frame_number}
        if "sample" in self.tuner_state:
            state["sample"] = self.tuner_state["sample"]
        with self.hold_sync():
            self.tuner_state = state
            self._update_frame_tables()

    def sample_table(self) -> pd.DataFrame:
        """Peaks per frame of the sampled frames with the current parameters.

        The :data:`sxlab.tables.HITS` table (``frame``, ``n_peaks``, ``hit``); empty when
        ``sample`` is 0.
        """
        if self._sample_rows is None:
            self._recompute_sample()
        return self._sample_rows

    def _recompute_sample(self) -> None:
        n = min(self._sample_n, self._frames.n)
        frames = np.unique(np.round(np.linspace(0, self._frames.n - 1, n)).astype(int)) \
            if n > 0 else np.zeros(0, int)
        shape = self._frames.shape
        rows = []
        for i in frames:
            try:
                data, bad, _ = self._frames.read(int(i))
            except Exception:  # noqa: BLE001 - an unreadable frame is left out of the sample
                continue
            peaks = self._finder(data.reshape(shape), None if bad is None else bad.reshape(shape),
                                 frame=int(i))
            rows.append({"frame": int(i), "n_peaks": len(peaks), "hit": self._is_hit(len(peaks))})
        table = tables.HITS.make({k: [r[k] for r in rows] for k in ("frame", "n_peaks", "hit")})
        self._sample_rows = table
        if not len(table):
            return
        counts = table["n_peaks"].to_numpy()
        top = max(int(counts.max()), self.hit_params.min_peaks, 1)
        edges = np.linspace(0, top + 1, min(20, top + 1) + 1)
        hist, _ = np.histogram(counts, bins=edges)
        self.tuner_state = {**self.tuner_state, "sample": {
            "n_frames": len(table), "hit_rate": float(table["hit"].mean()),
            "median_peaks": float(np.median(counts)), "edges": edges.round(3).tolist(),
            "counts": hist.tolist(), "min_peaks": self.hit_params.min_peaks}}

    def _png_title(self) -> str:
        s = self.tuner_state
        return (f"PeakTuner — frame {self.frame_number}: {s.get('n_peaks', 0)} peaks, "
                f"{'hit' if s.get('hit') else 'not a hit'}")
