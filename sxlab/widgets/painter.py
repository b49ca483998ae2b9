"""MaskPainter: paint a pixel mask on the assembled detector; the mask is what is shown."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import traitlets as t

from .. import masks
from ._frame import _FrameWidget

__all__ = ["MaskPainter"]

TOOLS = ("pan", "rectangle", "circle", "polygon", "brush", "beamstop")


class MaskPainter(_FrameWidget):
    """Paint a mask with the mouse: rectangle, circle, polygon, brush, eraser, beam stop.

    Shapes are drawn on the detector assembled in lab coordinates and mark the pixels of
    every panel whose centre lies inside them (:func:`sxlab.masks.mask_lab_shape`); the
    beam-stop tool masks a disc and an optional rod in lab coordinates
    (:func:`sxlab.masks.mask_beamstop`). With ``erase`` set, a shape marks its pixels
    good instead. The red overlay is drawn from :attr:`mask` itself, so what is shown is
    exactly the mask that is saved.

    Parameters
    ----------
    source : Run or xarray.DataArray or ndarray
        The frames to paint on (see :class:`ImageViewer`).
    geometry : Detector, optional
        Default: the run's geometry. Required.
    mask : Mask, optional
        Starting mask, e.g. ``sx.mask_from_geometry(geom)`` or a saved mask reopened with
        ``sx.Mask.load(path)``; default: every pixel good.
    frame : int
        Frame shown first.

    Attributes
    ----------
    mask : Mask
        The painted mask (provenance: the starting mask's steps, then one per stroke).
    tool : {"pan", "rectangle", "circle", "polygon", "brush", "beamstop"}
        Tool used by the mouse (shift-drag always pans, the wheel always zooms).
    erase : bool
        Shapes mark pixels good instead of bad.
    brush_radius : float
        Brush radius in pixels.
    rod_width : float
        Width in pixels of the beam-stop rod (0: disc only); the rod runs from the centre
        in the direction of the drag.

    Notes
    -----
    Coordinates of the methods are lab (x, y) in pixels of the first panel, x to the
    right, y up, origin on the beam axis (the grid coordinates the browser sends are
    converted by :meth:`grid_to_lab`). Every stroke is recorded with the pixels it
    changed, so :meth:`undo` and :meth:`redo` restore exactly the earlier masks.

    Examples
    --------
    >>> import sxlab as sx
    >>> run = sx.datasets.load("lysozyme-sample", progress=False)
    >>> painter = sx.widgets.MaskPainter(run)
    >>> painter.rectangle(-60, -40, -40.1, -30.1).n_bad     # 20 x 10 pixel centres
    200
    >>> painter.undo().n_bad
    0
    """

    tool = t.Unicode("rectangle").tag(sync=True)
    erase = t.Bool(False).tag(sync=True)
    brush_radius = t.Float(6.0).tag(sync=True)
    rod_width = t.Float(0.0).tag(sync=True)
    mask_state = t.Dict().tag(sync=True)

    def __init__(self, source, geometry=None, *, mask=None, frame: int = 0, **kwargs):
        geometry = geometry if geometry is not None else getattr(source, "geometry", None)
        if geometry is None:
            raise ValueError("MaskPainter needs a geometry: pass geometry= or a run that "
                             "carries one")
        shape = tuple(geometry.data_shape)
        base = masks.Mask.all_good(shape) if mask is None else mask
        if not isinstance(base, masks.Mask):
            raise TypeError(f"mask must be an sx.Mask, got {type(base).__name__}")
        if base.shape != shape:
            raise ValueError(f"mask shape {base.shape} does not match the geometry's data "
                             f"shape {shape}")
        self._base = base
        self._painted = np.array(base.bad, dtype=bool).reshape(-1)
        self._ops: list[tuple[str, np.ndarray, np.ndarray, bool]] = []
        self._redo: list[tuple[str, np.ndarray, np.ndarray, bool]] = []
        super().__init__(source, geometry, frame=frame, kind="painter", **kwargs)
        self._update_state()

    @t.validate("tool")
    def _valid_tool(self, proposal):
        if proposal["value"] not in TOOLS:
            raise t.TraitError(f"tool must be one of {TOOLS}, got {proposal['value']!r}")
        return proposal["value"]

    # The overlay is the painted mask only (not the frame's own bad pixels).
    def _update_overlay_bad(self) -> None:
        self._overlay_bad = self._painted

    # ------------------------------------------------------------------ state
    @property
    def mask(self) -> masks.Mask:
        """The painted mask (a copy: later strokes do not change it)."""
        steps = list(self._base.provenance) + [op[0] for op in self._ops]
        return masks.Mask.from_bad(self._painted.reshape(self.geometry.data_shape).copy(),
                                   provenance=steps)

    def _update_state(self) -> None:
        n_bad = int(self._painted.sum())
        self.mask_state = {"n_bad": n_bad, "fraction_bad": n_bad / max(self._painted.size, 1),
                           "can_undo": bool(self._ops), "can_redo": bool(self._redo),
                           "n_operations": len(self._ops)}

    def _apply(self, shape_mask: masks.Mask, erase: bool) -> masks.Mask:
        sel = np.flatnonzero(shape_mask.bad.reshape(-1))
        old = self._painted[sel].copy()
        what = shape_mask.provenance[0] + (" (erase)" if erase else "")
        self._ops.append((what, sel, old, not erase))
        self._redo.clear()
        self._painted[sel] = not erase
        return self._changed()

    def _changed(self) -> masks.Mask:
        with self.hold_sync():
            self._update_state()
            self.render_view()
        return self.mask

    def undo(self) -> masks.Mask:
        """Take back the last stroke; returns the mask."""
        if self._ops:
            op = self._ops.pop()
            self._painted[op[1]] = op[2]
            self._redo.append(op)
        return self._changed()

    def redo(self) -> masks.Mask:
        """Apply again the last stroke taken back; returns the mask."""
        if self._redo:
            op = self._redo.pop()
            self._painted[op[1]] = op[3]
            self._ops.append(op)
        return self._changed()

    def clear(self) -> masks.Mask:
        """Forget every stroke (back to the starting mask)."""
        while self._ops:
            self.undo()
        self._redo.clear()
        return self._changed()

    # ------------------------------------------------------------------ tools
    def shape(self, kind: str, points, *, radius: float = 0.0,
              erase: bool | None = None) -> masks.Mask:
        """Paint one shape (lab pixels; see :func:`sxlab.masks.mask_lab_shape`)."""
        # Lab pixels of the first panel -> metres, so that panels of other pixel sizes
        # are painted where the shape is drawn.
        res = self.assembly.res
        m = masks.mask_lab_shape(self.geometry, kind, np.asarray(points, dtype=float) / res,
                                 radius=radius / res, units="m")
        return self._apply(m, self.erase if erase is None else erase)

    def rectangle(self, x0: float, y0: float, x1: float, y1: float, *,
                  erase: bool | None = None) -> masks.Mask:
        """Paint the rectangle with corners (x0, y0) and (x1, y1)."""
        return self.shape("rectangle", [(x0, y0), (x1, y1)], erase=erase)

    def circle(self, x: float, y: float, radius: float, *,
               erase: bool | None = None) -> masks.Mask:
        """Paint the disc of ``radius`` around (x, y)."""
        return self.shape("circle", [(x, y)], radius=radius, erase=erase)

    def polygon(self, vertices, *, erase: bool | None = None) -> masks.Mask:
        """Paint the polygon through ``vertices`` (closed automatically)."""
        return self.shape("polygon", vertices, erase=erase)

    def brush(self, points, radius: float | None = None, *,
              erase: bool | None = None) -> masks.Mask:
        """Paint a stroke through ``points``, ``radius`` (default :attr:`brush_radius`) wide."""
        r = self.brush_radius if radius is None else radius
        return self.shape("brush", points, radius=r, erase=erase)

    def beamstop(self, x: float, y: float, radius: float, *, rod_width: float = 0.0,
                 rod_angle_deg: float = 0.0, erase: bool | None = None) -> masks.Mask:
        """Mask a beam-stop shadow: disc around (x, y) and a rod towards ``rod_angle_deg``."""
        res = self.assembly.res
        m = masks.mask_beamstop(self.geometry, radius / res, rod_width_px=rod_width / res or None,
                                rod_angle_deg=rod_angle_deg, center=(x / res, y / res),
                                units="m")
        return self._apply(m, self.erase if erase is None else erase)

    def grid_to_lab(self, points) -> np.ndarray:
        """Lab (x, y) pixels of grid points (as sent by the browser), shape (n, 2)."""
        pts = np.atleast_2d(np.asarray(points, dtype=float))
        x, y = self.assembly.grid_to_lab_px(pts[:, 0], pts[:, 1])
        return np.column_stack([x, y])

    def _message(self, kind: str, content: dict) -> None:
        if kind == "undo":
            self.undo()
        elif kind == "redo":
            self.redo()
        elif kind == "shape":
            pts = self.grid_to_lab(content["points"])
            erase = bool(content.get("erase", False))
            shape = content["kind"]
            if shape == "beamstop":
                (x0, y0), (x1, y1) = pts[0], pts[-1]
                self.beamstop(x0, y0, float(np.hypot(x1 - x0, y1 - y0)),
                              rod_width=float(content.get("rod_width", 0.0)),
                              rod_angle_deg=math.degrees(math.atan2(y1 - y0, x1 - x0)),
                              erase=erase)
            elif shape == "circle":
                (x0, y0), (x1, y1) = pts[0], pts[-1]
                self.circle(x0, y0, float(np.hypot(x1 - x0, y1 - y0)), erase=erase)
            elif shape == "brush":
                self.brush(pts, float(content.get("radius", self.brush_radius)), erase=erase)
            else:
                self.shape(shape, pts, erase=erase)
        else:
            super()._message(kind, content)

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike, *, dataset: str = "mask",
             overwrite: bool = False) -> Path:
        """Save the mask as an HDF5 dataset (1 = bad; see :meth:`sxlab.Mask.save`)."""
        self.mask.save(path, dataset=dataset, overwrite=overwrite)
        return Path(path)

    def geom_lines(self, *, prefix: str = "sxmask", exclude_geometry: bool = True) -> str:
        """CrystFEL ``bad_<prefix><n>/...`` lines of the mask (exact rectangles).

        By default the pixels the geometry already declares bad are left out.
        """
        return masks.mask_to_geom_lines(self.mask, self.geometry, prefix=prefix,
                                        exclude_geometry=exclude_geometry)

    def save_geom_lines(self, path: str | os.PathLike, **kwargs) -> Path:
        """Write :meth:`geom_lines` to a text file (append it to a ``.geom`` file)."""
        Path(path).write_text(self.geom_lines(**kwargs), encoding="utf-8")
        return Path(path)

    @classmethod
    def from_file(cls, path: str | os.PathLike, source, geometry=None, *, dataset: str = "mask",
             **kwargs) -> MaskPainter:
        """Reopen a mask saved by :meth:`save` for editing."""
        return cls(source, geometry, mask=masks.Mask.load(path, dataset=dataset), **kwargs)

    def _png_title(self) -> str:
        s = self.mask_state
        return (f"MaskPainter — {s.get('n_bad', 0):,} masked pixels, "
                f"{s.get('n_operations', 0)} strokes")
