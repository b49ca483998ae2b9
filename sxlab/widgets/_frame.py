"""The frame canvas shared by ImageViewer, MaskPainter and PeakTuner.

Python keeps the full-resolution frame; the browser asks for the region it shows
(``view``: grid rectangle and canvas size) and receives a screen-sized uint8 image of
colour codes (:meth:`_FrameWidget.render_view`): blocks reduced by maximum (spots stay
visible) or mean, full resolution once zoomed in. Overlays (peaks, reflections and their
integration rings, resolution rings, beam centre) are sent once per frame as grid
coordinates; the hover readout is computed here from the pixel under the cursor.
"""

from __future__ import annotations

import html
import threading
import time

import anywidget
import numpy as np
import pandas as pd
import traitlets as t

from . import _assets
from ._layout import Layout, codes
from ._png import StaticPNG, figure_png

CONTRASTS = ("percentile", "linear", "log")
COLORMAPS = ("viridis", "magma", "inferno", "cividis", "gray", "gray_r", "hot")
#: Candidate resolution rings (Å); those that fall on the detector are drawn.
RING_CANDIDATES_A = (50.0, 20.0, 10.0, 8.0, 6.0, 5.0, 4.0, 3.5, 3.0, 2.5, 2.2, 2.0, 1.8, 1.6,
                     1.5, 1.4, 1.3, 1.2, 1.1, 1.0, 0.9, 0.8)
_SAMPLE = 1 << 18
_DEFAULT_CANVAS = (760, 640)


def colormap_tables() -> dict[str, list[int]]:
    """256 RGB triplets (flattened) of every colour map offered, from matplotlib."""
    import matplotlib

    out = {}
    for name in COLORMAPS:
        rgba = matplotlib.colormaps[name](np.linspace(0.0, 1.0, 256))
        out[name] = np.round(rgba[:, :3] * 255).astype(int).ravel().tolist()
    return out


def code_colour(code: int, colormap: str = "viridis") -> tuple[int, int, int]:
    """RGB of colour code ``code`` (1..255) as the front end draws it."""
    table = np.asarray(colormap_tables()[colormap]).reshape(256, 3)
    return tuple(int(v) for v in table[int(round((code - 1) * 255 / 254))])


def _by_frame(table: pd.DataFrame | None) -> dict[int, np.ndarray]:
    """Row positions of each frame of a table with a ``frame`` column."""
    if table is None or not len(table) or "frame" not in table.columns:
        return {}
    frames = table["frame"].to_numpy()
    order = np.argsort(frames, kind="stable")
    keys, starts = np.unique(frames[order], return_index=True)
    bounds = np.append(starts, frames.size)
    return {int(k): order[bounds[i]:bounds[i + 1]] for i, k in enumerate(keys)}


class _Frames:
    """Frames of a run (anything with ``read(i) -> (image, bad)`` and ``len``) or one image."""

    def __init__(self, source, geometry):
        if hasattr(source, "read") and hasattr(source, "__len__"):
            self.run = source
            self.n = len(source)
            if geometry is None:
                geometry = getattr(source, "geometry", None)
            self._single = None
        else:
            self.run = None
            values = np.asarray(getattr(source, "values", source))
            if values.ndim not in (2, 3):
                raise ValueError(f"an image has 2 or 3 dims, got shape {values.shape}")
            self.n = 1
            self._single = (values, dict(getattr(source, "attrs", {}) or {}))
        self.geometry = geometry
        self._ahead = None  # (index, result or exception) read in advance
        self._thread = None
        if self._single is not None:
            self.shape = self._single[0].shape
        elif geometry is not None:
            self.shape = tuple(geometry.data_shape)
        else:
            self.shape = tuple(source.frame_shape)

    def read(self, i: int):
        """``(data float32 flat, bad bool flat or None, attrs)`` of frame ``i``."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[0] == i:
            if isinstance(ahead[1], BaseException):
                raise ahead[1]
            return ahead[1]
        return self._read(i)

    def prefetch(self, i: int) -> None:
        """Read frame ``i`` in a background thread (the next :meth:`read` waits for it)."""
        if self.run is None or not 0 <= i < self.n or self._thread is not None:
            return

        def work():
            try:
                self._ahead = (i, self._read(i))
            except Exception as exc:  # noqa: BLE001 - raised when the frame is asked for
                self._ahead = (i, exc)

        self._thread = threading.Thread(target=work, daemon=True)
        self._thread.start()

    def _read(self, i: int):
        if self._single is not None:
            values, attrs = self._single
            data = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
            return data, None, {"frame": attrs.get("frame", 0), **attrs}
        image, bad = self.run.read(int(i))
        data = np.ascontiguousarray(np.asarray(image), dtype=np.float32).reshape(-1)
        bad = None if bad is None else np.ascontiguousarray(np.asarray(bad),
                                                            dtype=bool).reshape(-1)
        return data, bad, dict(getattr(image, "attrs", {}) or {})

    def frame_number(self, i: int) -> int:
        if self._single is not None:
            return int(self._single[1].get("frame", 0))
        return int(i)


class _FrameWidget(StaticPNG, anywidget.AnyWidget):
    """Base class: one detector frame in a canvas with overlays (see module docstring)."""

    _esm = _assets.esm("frame.js")
    _css = _assets.css()

    kind = t.Unicode("viewer").tag(sync=True)
    frame = t.Int(0).tag(sync=True)
    n_frames = t.Int(1).tag(sync=True)
    title = t.Unicode("").tag(sync=True)
    grid = t.Dict().tag(sync=True)
    view = t.Dict().tag(sync=True)
    image = t.Bytes(b"").tag(sync=True)
    mask_image = t.Bytes(b"").tag(sync=True)
    image_meta = t.Dict().tag(sync=True)
    contrast = t.Unicode("percentile").tag(sync=True)
    vmin = t.Float(0.0).tag(sync=True)
    vmax = t.Float(1.0).tag(sync=True)
    percentiles = t.List(t.Float(), [1.0, 99.8], minlen=2, maxlen=2).tag(sync=True)
    reduce = t.Unicode("max").tag(sync=True)
    colormap = t.Unicode("viridis").tag(sync=True)
    colormaps = t.Dict().tag(sync=True)
    overlays = t.Dict().tag(sync=True)
    show = t.Dict().tag(sync=True)
    readout = t.Dict().tag(sync=True)
    info_html = t.Unicode("").tag(sync=True)
    nav = t.Dict().tag(sync=True)
    status = t.Unicode("").tag(sync=True)

    def __init__(self, source, geometry=None, *, peaks=None, reflections=None, mask=None,
                 results=None, frame: int = 0, rings=None, **kwargs):
        self._frames = _Frames(source, geometry)
        geometry = self._frames.geometry
        self.geometry = geometry
        self.assembly = _layout_for(geometry, self._frames.shape)
        self.results = results
        self._tables = {
            "frames": getattr(results, "frames", None),
            "peaks": peaks if peaks is not None else getattr(results, "peaks", None),
            "crystals": getattr(results, "crystals", None),
            "reflections": (reflections if reflections is not None
                            else getattr(results, "reflections", None)),
        }
        self._index = {k: _by_frame(v) for k, v in self._tables.items()}
        self._static_bad = None if mask is None else _bad_of(mask, self._frames.shape)
        self._rings_A = rings
        self._data = self._bad = self._overlay_bad = None
        self._attrs: dict = {}
        self._limits_cache: dict = {}
        self._peak_xy = self._refl_xy = np.zeros((0, 2))
        self._sample = _sample_indices(self.assembly)
        super().__init__(**kwargs)
        self.colormaps = colormap_tables()
        self.grid = {"width": self.assembly.width, "height": self.assembly.height,
                     "lab": geometry is not None}
        self.show = {"peaks": True, "reflections": True, "mask": True, "rings": True,
                     "beam": True}
        frames_table = self._tables["frames"]
        self.nav = {"hit": frames_table is not None and "hit" in frames_table.columns,
                    "indexed": frames_table is not None and "indexed" in frames_table.columns}
        self.n_frames = self._frames.n
        self.on_msg(self._handle_message)
        if self._frames.n and frame == 0:
            self._load(0)
        else:
            self.frame = int(frame)

    # ------------------------------------------------------------------- frames
    @t.validate("frame")
    def _valid_frame(self, proposal):
        n = max(self._frames.n, 1)
        return min(max(int(proposal["value"]), 0), n - 1)

    @t.validate("contrast")
    def _valid_contrast(self, proposal):
        if proposal["value"] not in CONTRASTS:
            raise t.TraitError(f"contrast must be one of {CONTRASTS}, got {proposal['value']!r}")
        return proposal["value"]

    @t.validate("colormap")
    def _valid_colormap(self, proposal):
        if proposal["value"] not in COLORMAPS:
            raise t.TraitError(f"colormap must be one of {COLORMAPS}, got {proposal['value']!r}")
        return proposal["value"]

    @t.validate("reduce")
    def _valid_reduce(self, proposal):
        if proposal["value"] not in ("max", "mean"):
            raise t.TraitError(f"reduce must be 'max' or 'mean', got {proposal['value']!r}")
        return proposal["value"]

    @t.observe("frame")
    def _on_frame(self, change):
        self._load(change["new"])

    def _load(self, i: int) -> None:
        t0 = time.perf_counter()
        try:
            data, bad, attrs = self._frames.read(i)
            status = ""
        except Exception as exc:  # noqa: BLE001 - shown in the widget, which stays usable
            data = np.full(int(np.prod(self._frames.shape)), np.nan, np.float32)
            bad, attrs = None, {}
            status = f"frame {i}: {type(exc).__name__}: {exc}"
        self._read_s = time.perf_counter() - t0
        self._direction = -1 if i < getattr(self, "_shown", -1) else 1
        self._shown = i
        self._data, self._bad, self._attrs = data, bad, attrs
        self._limits_cache.clear()
        with self.hold_sync():
            self.status = status
            self._update_overlay_bad()
            self._update_frame_tables()
            self._after_load()
            self.render_view()
        # Frames are mostly stepped through in order: read the next one meanwhile.
        self._frames.prefetch(i + self._direction)

    def _after_load(self) -> None:
        """Hook for subclasses, called when a frame has been loaded (before rendering)."""

    def _update_overlay_bad(self) -> None:
        bad = self._static_bad
        if self._bad is not None:
            bad = self._bad if bad is None else (bad | self._bad)
        self._overlay_bad = bad

    @property
    def run(self):
        """The run shown (None for a single image)."""
        return self._frames.run

    @property
    def frame_number(self) -> int:
        """Frame number (run index, or the image's ``frame`` attribute) shown now."""
        return self._frames.frame_number(self.frame)

    @property
    def data(self) -> np.ndarray:
        """The frame shown, full resolution, in the data shape (read-only view)."""
        out = self._data.reshape(self._frames.shape)
        out.flags.writeable = False
        return out

    def tables(self) -> dict[str, pd.DataFrame]:
        """Rows of the linked tables (frames, peaks, crystals, reflections) for this frame."""
        out = {}
        f = self.frame_number
        for kind, table in self._tables.items():
            if table is None:
                continue
            rows = self._index[kind].get(f)
            if rows is None and "frame" not in table.columns:
                out[kind] = table
            else:
                out[kind] = table.iloc[rows if rows is not None else []]
        return out

    def _update_frame_tables(self) -> None:
        tabs = self.tables()
        lay = self.assembly
        ov: dict = {}
        for kind in ("peaks", "reflections"):
            tab = tabs.get(kind)
            xy = np.zeros((0, 2))
            if tab is not None and len(tab):
                panel = tab["panel"].to_numpy() if "panel" in tab.columns else None
                gx, gy = lay.data_to_grid(tab["fs"].to_numpy(), tab["ss"].to_numpy(), panel)
                xy = np.column_stack([gx, gy])
            setattr(self, "_peak_xy" if kind == "peaks" else "_refl_xy", xy)
            ov[kind] = {"x": np.round(xy[:, 0], 2).tolist(), "y": np.round(xy[:, 1], 2).tolist()}
        radii = None
        if self.results is not None and getattr(self.results, "params", None) is not None:
            radii = list(self.results.params.integrate.radii)
        ov["radii"] = radii or []
        ov["rings"] = self.resolution_rings()
        beam = lay.beam_grid()
        ov["beam"] = list(beam) if beam is not None else None
        self.overlays = ov
        self.info_html = self._info_html(tabs)

    def _info_html(self, tabs: dict) -> str:
        parts = [f"<b>frame {self.frame_number}</b>"]
        event = self._attrs.get("event")
        if event:
            parts[0] += f" <span class='sx-dim'>{html.escape(str(event))}</span>"
        row = tabs.get("frames")
        if row is not None and len(row):
            r = row.iloc[0]
            bits = []
            for col, fmt in (("n_peaks", "{} peaks"), ("hit", "hit: {}"),
                             ("indexed", "indexed: {}"), ("n_crystals", "{} crystals"),
                             ("n_reflections", "{} reflections"),
                             ("resolution_A", "resolution {:.2f} Å")):
                if col in row.columns and pd.notna(r[col]):
                    bits.append(fmt.format(r[col]))
            if "status" in row.columns and r["status"] != "ok":
                bits.append(f"<span class='sx-error'>{html.escape(str(r.get('error', '')))}"
                            "</span>")
            parts.append(", ".join(bits))
        else:
            for kind in ("peaks", "reflections"):
                if tabs.get(kind) is not None:
                    parts.append(f"{len(tabs[kind])} {kind}")
        xt = tabs.get("crystals")
        if xt is not None and len(xt):
            cols = [c for c in ("crystal", "a", "b", "c", "alpha", "beta", "gamma",
                                "n_peaks_indexed", "method") if c in xt.columns]
            parts.append(xt[cols].to_html(index=False, float_format=lambda v: f"{v:.2f}",
                                          classes="sx-table", border=0))
        return "<br>".join(parts)

    def resolution_rings(self) -> list[dict]:
        """Resolution rings drawn: ``{"d": Å, "r": radius in grid cells}`` around the beam."""
        geom = self.geometry
        if geom is None:
            return []
        lam = geom.beam.wavelength_A
        z = float(np.mean([p.clen + p.coffset for p in geom.panels]))
        if not np.isfinite(z) or z <= 0:
            return []
        bx, by = self.assembly.beam_grid()
        corners = np.array([[0, 0], [self.assembly.width, 0], [0, self.assembly.height],
                            [self.assembly.width, self.assembly.height]], float)
        r_max = float(np.hypot(corners[:, 0] - bx, corners[:, 1] - by).max())
        wanted = self._rings_A if self._rings_A is not None else RING_CANDIDATES_A
        rings = []
        for d in wanted:
            s = lam / (2.0 * d)
            if not 0 < s < 1:
                continue
            r = z * np.tan(2.0 * np.arcsin(s)) * self.assembly.res
            if (self._rings_A is not None or 0.08 * r_max < r < 0.97 * r_max) and r < 2 * r_max:
                rings.append({"d": float(d), "r": round(float(r), 2)})
        if self._rings_A is None and len(rings) > 6:
            pick = np.unique(np.round(np.linspace(0, len(rings) - 1, 6)).astype(int))
            rings = [rings[i] for i in pick]
        return rings

    # --------------------------------------------------------------- navigation
    def _flag_frames(self, what: str) -> np.ndarray:
        table = self._tables["frames"]
        if table is None or what not in table.columns:
            raise ValueError(f"no {what!r} column to navigate by: pass results= to the widget")
        ok = table[what].to_numpy(bool).copy()
        if "status" in table.columns:
            ok &= table["status"].to_numpy() == "ok"
        return np.sort(table["frame"].to_numpy()[ok])

    def step(self, direction: int = 1, what: str | None = None) -> int:
        """Move to the next (``direction`` +1) or previous (-1) frame, hit or indexed frame.

        Parameters
        ----------
        direction : {1, -1}
        what : {None, "hit", "indexed"}
            None: the adjacent frame; else the nearest frame with that flag set in the
            linked results' frame table (the frame stays when there is none).

        Returns
        -------
        int
            The frame shown afterwards.
        """
        direction = 1 if direction >= 0 else -1
        if what is None:
            self.frame = self.frame + direction
            return self.frame
        frames = self._flag_frames(what)
        cur = self.frame_number
        pick = frames[frames > cur] if direction > 0 else frames[frames < cur][::-1]
        if pick.size:
            self.frame = int(pick[0])
        return self.frame

    # ---------------------------------------------------------------- rendering
    def _default_view(self) -> dict:
        w, h = _DEFAULT_CANVAS
        return {"x0": 0.0, "y0": 0.0, "x1": float(self.assembly.width),
                "y1": float(self.assembly.height), "width": w, "height": h, "seq": 0}

    def zoom(self, x0: float, y0: float, x1: float, y1: float) -> None:
        """Show the grid region ``[x0, x1] × [y0, y1]`` (grid cells)."""
        v = dict(self.view or self._default_view())
        v.update(x0=float(x0), y0=float(y0), x1=float(x1), y1=float(y1),
                 seq=int(v.get("seq", 0)) + 1)
        self.view = v

    def reset_view(self) -> None:
        """Show the whole detector."""
        self.zoom(0.0, 0.0, float(self.assembly.width), float(self.assembly.height))

    def limits(self) -> tuple[float, float]:
        """(vmin, vmax) of the colour scale for the current frame and contrast settings."""
        if self.contrast != "percentile":
            return float(self.vmin), float(self.vmax)
        key = tuple(self.percentiles)
        if key not in self._limits_cache:
            self._limits_cache[key] = self._percentile_limits(*key)
        return self._limits_cache[key]

    def _percentile_limits(self, lo: float, hi: float) -> tuple[float, float]:
        vals = self._data[self._sample]
        keep = np.isfinite(vals)
        if self._overlay_bad is not None:
            keep &= ~self._overlay_bad[self._sample]
        vals = vals[keep]
        if not vals.size:
            return 0.0, 1.0
        a, b = np.percentile(vals, [lo, hi])
        if not b > a:
            b = a + 1.0
        return float(a), float(b)

    @t.observe("view", "contrast", "percentiles", "reduce", "show")
    def _on_render_setting(self, change):
        if self._data is not None:
            self.render_view()

    @t.observe("vmin", "vmax")
    def _on_limits(self, change):
        if self._data is not None and self.contrast != "percentile":
            self.render_view()

    def render_view(self) -> dict:
        """Render the requested view into ``image`` (and ``mask_image``); returns the meta.

        ``image`` holds ``h × w`` uint8 colour codes (0: no pixel, 1-255: ``vmin`` to
        ``vmax``) of blocks of ``step × step`` grid cells starting at cell ``(col0, row0)``;
        ``mask_image`` holds 1 where a block covers a masked or bad pixel (empty when the
        mask overlay is off or there is no mask).
        """
        t0 = time.perf_counter()
        v = self.view or self._default_view()
        show_mask = bool(self.show.get("mask", True)) and self._overlay_bad is not None
        values, bad, meta = self.assembly.render(
            self._data, self._overlay_bad if show_mask else None, v["x0"], v["y0"], v["x1"],
            v["y1"], v["width"], v["height"], reduce=self.reduce)
        vmin, vmax = self.limits()
        img = codes(values, vmin, vmax, log=self.contrast == "log")
        meta.update(seq=int(v.get("seq", 0)), frame=int(self.frame), vmin=vmin, vmax=vmax,
                    contrast=self.contrast, render_ms=round(1e3 * (time.perf_counter() - t0), 2),
                    read_ms=round(1e3 * getattr(self, "_read_s", 0.0), 2))
        meta["nbytes"] = int(img.nbytes + (bad.nbytes if show_mask else 0))
        self._last = (values, bad if show_mask else None, meta)
        with self.hold_sync():
            if self.contrast == "percentile":
                self.set_trait("vmin", vmin)
                self.set_trait("vmax", vmax)
            self.image = img.tobytes()
            self.mask_image = bad.tobytes() if show_mask else b""
            self.image_meta = meta
        return meta

    # ------------------------------------------------------------------ readout
    def readout_at(self, gx: float, gy: float, tol: float = 4.0) -> dict:
        """What lies under grid point ``(gx, gy)``: pixel, value, resolution, peak, reflection.

        Returns
        -------
        dict
            ``x``, ``y`` (grid), and when a pixel is there: ``panel`` (name), ``module``,
            ``fs``, ``ss`` (integer data-array pixel), ``value``, ``bad``, ``d_A`` (pixel
            centre) and ``x_mm``, ``y_mm`` (lab); ``peak`` (row of the nearest peak within
            ``tol`` grid cells: fs, ss, intensity, snr, npix, d_A) and ``reflection``
            (h, k, l, I, sigma, d_A) when one is that close.
        """
        out: dict = {"x": round(float(gx), 2), "y": round(float(gy), 2)}
        flat = self.assembly.pixel_at(gx, gy)
        if flat >= 0:
            module, ss, fs = self.assembly.unravel(flat)
            out.update(fs=fs, ss=ss, value=_plain(self._data[flat]),
                       bad=bool(self._overlay_bad is not None and self._overlay_bad[flat]))
            geom = self.geometry
            if geom is not None:
                pid = int(geom.maps.panel.reshape(-1)[flat])
                out.update(panel=geom.panels[pid].name if pid >= 0 else None,
                           d_A=_plain(geom.maps.d_A.reshape(-1)[flat]))
                if geom.is_stacked:
                    out["module"] = module
                x, y = self.assembly.grid_to_lab_px(gx, gy)
                out.update(x_mm=round(float(x) / self.assembly.res * 1e3, 3),
                           y_mm=round(float(y) / self.assembly.res * 1e3, 3))
        tabs = None
        for kind, xy, cols in (
                ("peaks", self._peak_xy, ("fs", "ss", "intensity", "snr", "npix", "d_A")),
                ("reflections", self._refl_xy,
                 ("crystal", "h", "k", "l", "I", "sigma", "d_A", "partiality"))):
            if not len(xy):
                continue
            dist = np.hypot(xy[:, 0] - gx, xy[:, 1] - gy)
            j = int(np.argmin(dist))
            if dist[j] <= tol:
                tabs = tabs or self.tables()
                row = tabs[kind].iloc[j]
                out["peak" if kind == "peaks" else "reflection"] = {
                    c: _plain(row[c]) for c in cols if c in row.index}
        return out

    # ----------------------------------------------------------------- messages
    def _handle_message(self, _widget, content, _buffers) -> None:
        kind = content.get("type")
        try:
            if kind == "hover":
                self.readout = self.readout_at(content["x"], content["y"],
                                               float(content.get("tol", 4.0)))
            elif kind == "step":
                self.step(int(content.get("direction", 1)), content.get("what") or None)
            else:
                self._message(kind, content)
            if self.status.startswith("error:"):
                self.status = ""
        except Exception as exc:  # noqa: BLE001 - reported in the widget, not lost in a log
            self.status = f"error: {type(exc).__name__}: {exc}"

    def _message(self, kind: str, content: dict) -> None:
        """Messages of the subclasses' tools."""
        raise ValueError(f"unknown message {kind!r}")

    # --------------------------------------------------------------- static PNG
    def _draw_static(self, ax) -> None:
        """Draw the current view (image, mask, overlays) into matplotlib axes."""
        from matplotlib.colors import ListedColormap

        values, bad, meta = self._last
        vmin, vmax = meta["vmin"], meta["vmax"]
        img = codes(values, vmin, vmax, log=meta["contrast"] == "log")
        table = np.asarray(self.colormaps[self.colormap], float).reshape(256, 3) / 255.0
        lut = np.vstack([[0.16, 0.16, 0.18], table[np.round(np.arange(255) * 255 / 254)
                                                   .astype(int)]])
        s, c0, r0 = meta["step"], meta["col0"], meta["row0"]
        extent = (c0, c0 + s * meta["w"], r0 + s * meta["h"], r0)
        ax.imshow(img, cmap=ListedColormap(lut), vmin=-0.5, vmax=255.5, extent=extent,
                  interpolation="nearest")
        if bad is not None and bad.any():
            over = np.zeros(bad.shape + (4,))
            over[bad.astype(bool)] = (1.0, 0.1, 0.1, 0.45)
            ax.imshow(over, extent=extent, interpolation="nearest")
        ov = self.overlays
        if self.show.get("rings", True) and ov.get("beam"):
            from matplotlib.patches import Circle

            bx, by = ov["beam"]
            for ring in ov.get("rings", []):
                ax.add_patch(Circle((bx, by), ring["r"], fill=False, color="w", lw=0.6,
                                    alpha=0.7))
                ax.text(bx + ring["r"] * 0.7071, by - ring["r"] * 0.7071, f"{ring['d']:g} Å",
                        color="w", fontsize=7)
        if self.show.get("beam", True) and ov.get("beam"):
            ax.plot(*ov["beam"], "+", color="w", ms=10)
        if self.show.get("reflections", True) and len(self._refl_xy):
            ax.scatter(self._refl_xy[:, 0], self._refl_xy[:, 1], s=40, facecolors="none",
                       edgecolors="#39d0ff", linewidths=0.7)
        if self.show.get("peaks", True) and len(self._peak_xy):
            ax.scatter(self._peak_xy[:, 0], self._peak_xy[:, 1], s=60, facecolors="none",
                       edgecolors="#ff4d4d", linewidths=0.8, marker="s")
        v = self.view or self._default_view()
        ax.set_xlim(v["x0"], v["x1"])
        ax.set_ylim(v["y1"], v["y0"])
        ax.set_aspect("equal")
        ax.set_axis_off()

    def to_png(self, *, dpi: int = 96) -> bytes:
        """A static picture of the widget as shown (saved notebooks and HTML show it)."""
        def draw(fig):
            ax = fig.add_axes((0, 0, 1, 1))
            self._draw_static(ax)
            ax.text(0.01, 0.99, self._png_title(), transform=ax.transAxes, va="top",
                    ha="left", color="w", fontsize=8,
                    bbox={"facecolor": "k", "alpha": 0.5, "lw": 0})

        return figure_png(draw, (6.4, 6.4 * self._aspect()), dpi=dpi)

    def _aspect(self) -> float:
        v = self.view or self._default_view()
        return float(np.clip((v["y1"] - v["y0"]) / max(v["x1"] - v["x0"], 1e-9), 0.3, 2.0))

    def _png_title(self) -> str:
        return f"{type(self).__name__} — frame {self.frame_number}"

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} frame {self.frame_number} of {self._frames.n}, "
                f"grid {self.assembly.width}×{self.assembly.height}>")


_LAYOUTS: dict = {}


def _layout_for(geometry, shape) -> Layout:
    """Layouts are cached per geometry (the lookup table of a 16M detector is 72 MB)."""
    key = (id(geometry), tuple(shape))
    hit = _LAYOUTS.get(key)
    if hit is not None and hit.geometry is geometry:
        return hit
    lay = Layout(geometry, shape)
    if len(_LAYOUTS) >= 4:
        _LAYOUTS.pop(next(iter(_LAYOUTS)))
    _LAYOUTS[key] = lay
    return lay


def _sample_indices(layout: Layout) -> np.ndarray:
    """A fixed, evenly strided sample of shown pixels for the percentile limits."""
    shown = layout.lut[layout.lut >= 0]
    stride = max(1, shown.size // _SAMPLE)
    return np.sort(shown[::stride]).astype(np.int64)


def _bad_of(mask, shape) -> np.ndarray:
    """Flat bool array, True = bad, of a Mask (``.good``) or a bool array (True = bad)."""
    if hasattr(mask, "good"):
        bad = ~np.asarray(mask.good)
    else:
        bad = np.asarray(mask)
        if bad.dtype != bool:
            raise TypeError(f"mask must be an sx.Mask or a boolean array (True = bad), "
                            f"got dtype {bad.dtype}")
    if bad.shape != tuple(shape):
        raise ValueError(f"mask shape {bad.shape} does not match the frame shape {tuple(shape)}")
    return np.ascontiguousarray(bad, dtype=bool).reshape(-1)


def _plain(v):
    """A JSON-able Python scalar (NaN and inf as None)."""
    if isinstance(v, (np.integer, int, np.bool_, bool)):
        return v.item() if hasattr(v, "item") else v
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    return round(f, 6) if np.isfinite(f) else None
