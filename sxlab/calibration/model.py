"""Rigid-body changes of a detector: the parameters geometry refinement and calibration fit.

A :class:`DetectorModel` describes small moves of a :class:`~sxlab.geometry.Detector`
as a parameter vector, all zeros for the geometry as given:

* whole detector: a shift in lab x and y (moving the detector across the beam, so the
  beam centre moves the other way), a shift along z (the camera length), and a tilt about
  lab x and y through the point where the beam meets the detector;
* each group of panels (a panel, a module, a quadrant: CrystFEL's rigid groups): a shift
  in lab x and y, a shift along z (the group's height) and a rotation about lab z around
  the group's centre.

A point ``X`` of a panel of group ``g`` moves to

``X' = pivot + T (C_g + R_g (X - C_g) + s_g - pivot) + t``

with ``R_g`` the group's rotation about z, ``C_g`` its centre, ``s_g`` its shift, ``T``
the detector tilt, ``pivot`` the beam point and ``t`` the detector shift; the fast- and
slow-scan vectors turn with ``T R_g``. Internally the parameters are in metres and
radians; :attr:`DetectorModel.units` converts them to what a crystallographer reads
(pixels of the group's first panel, mm, degrees).

Examples
--------
>>> from sxlab.geometry import builtin_geometry
>>> det = builtin_geometry("eiger1m", clen=0.1)
>>> model = DetectorModel(det)
>>> theta = model.zeros()
>>> theta[model.index("beam_x")] = 75e-6          # one pixel along +x
>>> moved = model.apply(theta)
>>> round(moved.beam_center_px()[0] - det.beam_center_px()[0], 9)
-1.0
"""

from __future__ import annotations

import html

import numpy as np

from ..geometry import Detector

__all__ = ["GLOBAL_PARAMETERS", "GROUP_PARAMETERS", "DetectorModel", "GeometryReport",
           "intersect", "panel_groups", "write_geometry"]

#: Whole-detector parameters.
GLOBAL_PARAMETERS = ("beam_x", "beam_y", "distance", "tilt_x", "tilt_y")
#: Per-group parameters.
GROUP_PARAMETERS = ("shift_x", "shift_y", "height", "rotation")


def panel_groups(detector: Detector, groups=None) -> dict[str, tuple[int, ...]]:
    """Panels moved together: group name -> panel indices.

    Parameters
    ----------
    detector : Detector
    groups : None, "panels", int or mapping
        ``None`` or ``"panels"``: every panel on its own. An int: a level of the
        detector's group hierarchy (CrystFEL ``group_*`` lines): 0 the whole detector, 1
        the children of the top group (e.g. quadrants), 2 their children (e.g. modules),
        ...; panels below that level move with their ancestor, a panel reached earlier
        stays on its own. A mapping: name -> panel names (or indices); panels not listed
        each form their own group.

    Examples
    --------
    >>> from sxlab.geometry import builtin_geometry
    >>> det = builtin_geometry("agipd")
    >>> g = panel_groups(det, 2)
    >>> len(g), g["p0"][:3]
    (16, (0, 1, 2))
    >>> len(panel_groups(det, 1)), len(panel_groups(det))
    (4, 128)
    """
    names = detector.panel_names
    if groups is None or (isinstance(groups, str) and groups == "panels"):
        return {n: (i,) for i, n in enumerate(names)}
    if isinstance(groups, str):
        raise ValueError(f"groups must be None, 'panels', a level (int) or a mapping, "
                         f"got {groups!r}")
    if isinstance(groups, (int, np.integer)) and not isinstance(groups, bool):
        level = int(groups)
        if level < 0:
            raise ValueError(f"group level must be >= 0, got {level}")
        tree = detector.group_dict
        if not tree:
            tree = {"all": tuple(names)}
        children = {g for members in tree.values() for g in members}
        tops = [g for g in tree if g not in children] or ["all"]
        current = list(tops)
        for _ in range(level):
            nxt = []
            for g in current:
                nxt.extend(tree.get(g, (g,)))
            current = nxt

        def leaves(g):
            if g not in tree:
                return [g]
            return [leaf for m in tree[g] for leaf in leaves(m)]

        out = {}
        for g in current:
            members = tuple(names.index(leaf) for leaf in leaves(g) if leaf in names)
            if members:
                out[g] = members
        return out
    out, used = {}, set()
    for name, members in dict(groups).items():
        idx = tuple(detector.panel_index(m) if isinstance(m, str) else int(m)
                    for m in members)
        if not idx:
            raise ValueError(f"group {name!r} has no panels")
        twice = used & set(idx)
        if twice:
            raise ValueError(f"panels {sorted(names[i] for i in twice)} are in two groups")
        used |= set(idx)
        out[str(name)] = idx
    for i, n in enumerate(names):
        if i not in used:
            out[n] = (i,)
    return out


def _rot_z(angle: np.ndarray) -> np.ndarray:
    """Rotation matrices about z, shape (..., 3, 3)."""
    c, s = np.cos(angle), np.sin(angle)
    out = np.zeros((*np.shape(angle), 3, 3))
    out[..., 0, 0] = c
    out[..., 0, 1] = -s
    out[..., 1, 0] = s
    out[..., 1, 1] = c
    out[..., 2, 2] = 1.0
    return out


def _tilt(tx: float, ty: float) -> np.ndarray:
    """Rotation about lab x by ``tx``, then about lab y by ``ty``."""
    cx, sx, cy, sy = np.cos(tx), np.sin(tx), np.cos(ty), np.sin(ty)
    rx = np.array([[1.0, 0.0, 0.0], [0.0, cx, -sx], [0.0, sx, cx]])
    ry = np.array([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])
    return ry @ rx


class DetectorModel:
    """A detector and the rigid-body parameters that move it (see the module notes).

    Parameters
    ----------
    detector : Detector
        The geometry at parameters zero; every panel needs a numeric camera length.
    groups : see :func:`panel_groups`
        How panels move together when group parameters are used.

    Attributes
    ----------
    detector : Detector
    groups : dict
        Group name -> panel indices.
    group_of_panel : ndarray of int
        Group index of every panel.
    names : list of str
        Parameter names: the global ones, then ``<group>:<parameter>`` per group.
    units : ndarray
        Factor from the internal unit (m, rad) to the unit shown (px, mm, deg) of each
        parameter.
    unit_names : list of str
    group_centres : ndarray (G, 3)
        Lab position (m) of each group's centre at parameters zero (its pivot of rotation).
    """

    def __init__(self, detector: Detector, groups=None):
        self.detector = detector
        z = np.array([p.clen + p.coffset for p in detector.panels], dtype=float)
        if not np.all(np.isfinite(z)):
            bad = [p.name for p in detector.panels if not np.isfinite(p.clen + p.coffset)]
            raise ValueError(f"panels {bad[:5]} have no numeric camera length (clen from a "
                             "file header?): set it before refining the geometry")
        self.groups = panel_groups(detector, groups)
        self.group_names = list(self.groups)
        self.group_of_panel = np.full(detector.n_panels, -1, dtype=np.int64)
        for gi, members in enumerate(self.groups.values()):
            self.group_of_panel[list(members)] = gi
        corner = np.array([p.corner_m() for p in detector.panels])
        fs = np.array([p.fs_m() for p in detector.panels])
        ss = np.array([p.ss_m() for p in detector.panels])
        self._corner0, self._fs0, self._ss0 = corner, fs, ss
        width = np.array([p.width for p in detector.panels], dtype=float)
        height = np.array([p.height for p in detector.panels], dtype=float)
        centre = corner + 0.5 * width[:, None] * fs + 0.5 * height[:, None] * ss
        self.group_centres = np.array([centre[list(m)].mean(axis=0)
                                       for m in self.groups.values()])
        try:
            self._pivot = np.reshape(detector.pixel_to_lab(*detector.beam_center_px(0), 0), 3)
        except (np.linalg.LinAlgError, ValueError):
            self._pivot = np.array([0.0, 0.0, float(np.mean(z))])
        if not np.all(np.isfinite(self._pivot)):
            self._pivot = np.array([0.0, 0.0, float(np.mean(z))])
        self.n_global = len(GLOBAL_PARAMETERS)
        self.n_groups = len(self.groups)
        self.names = list(GLOBAL_PARAMETERS) + [f"{g}:{p}" for g in self.group_names
                                                for p in GROUP_PARAMETERS]
        first = [detector.panels[m[0]] for m in self.groups.values()]
        pix0 = detector.panels[0].res
        self.units = np.array([pix0, pix0, 1e3, np.degrees(1.0), np.degrees(1.0)]
                              + [u for p in first for u in (p.res, p.res, 1e3,
                                                            np.degrees(1.0))])
        self.unit_names = ["px", "px", "mm", "deg", "deg"] + ["px", "px", "mm", "deg"] * len(
            first)

    # ------------------------------------------------------------------ layout
    @property
    def size(self) -> int:
        """Number of parameters."""
        return self.n_global + len(GROUP_PARAMETERS) * self.n_groups

    def zeros(self) -> np.ndarray:
        """The parameter vector of the geometry as given."""
        return np.zeros(self.size)

    def index(self, name: str) -> int:
        """Position of parameter ``name`` (``"distance"``, ``"p3:rotation"``, ...)."""
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"no parameter {name!r}; e.g. {self.names[:7]}") from None

    def group_slice(self, kind: str) -> np.ndarray:
        """Positions of group parameter ``kind`` (e.g. ``"rotation"``) of every group."""
        j = GROUP_PARAMETERS.index(kind)
        return self.n_global + j + len(GROUP_PARAMETERS) * np.arange(self.n_groups)

    # --------------------------------------------------------------- transforms
    def panel_vectors(self, theta: np.ndarray):
        """Per-panel corner (m), fs and ss step vectors (m) at parameters ``theta``.

        ``theta`` may also have a leading batch axis of shape (m, size): the arrays then
        have shape (m, n_panels, 3).
        """
        theta = np.asarray(theta, dtype=float)
        if theta.ndim == 2:
            out = [self.panel_vectors(t) for t in theta]
            return tuple(np.stack(a) for a in zip(*out, strict=True))
        ng = len(GROUP_PARAMETERS)
        grp = theta[self.n_global:].reshape(self.n_groups, ng)
        gp = self.group_of_panel
        rz = _rot_z(grp[:, 3])[gp]                                 # (P, 3, 3)
        centre = self.group_centres[gp]
        shift = np.stack([grp[:, 0], grp[:, 1], grp[:, 2]], axis=1)[gp]
        corner = centre + np.einsum("pij,pj->pi", rz, self._corner0 - centre) + shift
        fs = np.einsum("pij,pj->pi", rz, self._fs0)
        ss = np.einsum("pij,pj->pi", rz, self._ss0)
        bx, by, dz, tx, ty = theta[:self.n_global]
        if tx != 0.0 or ty != 0.0:
            t = _tilt(tx, ty)
            corner = self._pivot + (corner - self._pivot) @ t.T
            fs = fs @ t.T
            ss = ss @ t.T
        corner = corner + np.array([bx, by, dz])
        return corner, fs, ss

    def apply(self, theta: np.ndarray) -> Detector:
        """The detector moved by ``theta`` (a new :class:`~sxlab.geometry.Detector`).

        The whole-detector z shift goes into every panel's ``clen``, what differs between
        panels into ``coffset``; corners into ``corner_x``/``corner_y``, directions into
        ``fs``/``ss``.
        """
        theta = np.asarray(theta, dtype=float)
        corner, fs, ss = self.panel_vectors(theta)
        dz = float(theta[2])
        panels = []
        for i, p in enumerate(self.detector.panels):
            clen = p.clen + dz
            panels.append(p.replace(
                corner_x=float(corner[i, 0] * p.res), corner_y=float(corner[i, 1] * p.res),
                clen=clen, coffset=float(corner[i, 2] - clen),
                fs=tuple(float(v) for v in fs[i] * p.res),
                ss=tuple(float(v) for v in ss[i] * p.res)))
        return self.detector.replace(panels=tuple(panels))

    def describe(self, theta: np.ndarray, sigma: np.ndarray | None = None,
                 free: np.ndarray | None = None):
        """One row per parameter: name, group, value and σ in the units shown, refined."""
        import pandas as pd

        theta = np.asarray(theta, dtype=float)
        sigma = np.full(self.size, np.nan) if sigma is None else np.asarray(sigma, float)
        free = np.ones(self.size, bool) if free is None else np.asarray(free, bool)
        groups = ["detector"] * self.n_global + [g for g in self.group_names
                                                 for _ in GROUP_PARAMETERS]
        kinds = list(GLOBAL_PARAMETERS) + list(GROUP_PARAMETERS) * self.n_groups
        return pd.DataFrame({"group": groups, "parameter": kinds,
                             "value": theta * self.units, "sigma": sigma * self.units,
                             "unit": self.unit_names, "refined": free})


def intersect(direction: np.ndarray, panel: np.ndarray, corner: np.ndarray,
              fs: np.ndarray, ss: np.ndarray):
    """Panel coordinates where rays from the origin meet their panels' planes.

    Parameters
    ----------
    direction : ndarray (n, 3)
        Ray directions (any length).
    panel : ndarray of int (n,)
        Panel of each ray.
    corner, fs, ss : ndarray (P, 3)
        Panel corners and step vectors (m), as :meth:`DetectorModel.panel_vectors`.

    Returns
    -------
    u, v : ndarray (n,)
        Panel-relative fast- and slow-scan coordinates (pixels from the corner); NaN
        where a ray runs parallel to its panel or away from it.

    Examples
    --------
    >>> c = np.array([[-0.05, -0.05, 0.1]]); a = np.array([[1e-4, 0, 0]])
    >>> b = np.array([[0, 1e-4, 0]])
    >>> intersect(np.array([[0.0, 0.0, 1.0]]), np.array([0]), c, a, b)
    (array([500.]), array([500.]))
    """
    c, a, b = corner[panel], fs[panel], ss[panel]
    n = np.cross(a, b)
    dn = np.einsum("ij,ij->i", direction, n)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.einsum("ij,ij->i", c, n) / dn
        t = np.where(t > 0, t, np.nan)
    p = t[:, None] * direction - c
    aa = np.einsum("ij,ij->i", a, a)
    bb = np.einsum("ij,ij->i", b, b)
    ab = np.einsum("ij,ij->i", a, b)
    pa = np.einsum("ij,ij->i", p, a)
    pb = np.einsum("ij,ij->i", p, b)
    det = aa * bb - ab * ab
    return (pa * bb - pb * ab) / det, (pb * aa - pa * ab) / det


def write_geometry(geometry: Detector, path=None, *, nxmx=None) -> None:
    """Write ``geometry`` as a CrystFEL ``.geom`` file and/or an NXmx master without frames.

    The NXmx file holds the instrument (beam, detector modules and their transformations,
    the embedded CrystFEL text) and no frames, for DIALS or any NeXus reader.

    Examples
    --------
    >>> write_geometry(refined, "refined.geom", nxmx="refined_master.h5")  # doctest: +SKIP
    """
    from ..io import NXmxWriter, write_geom

    if path is not None:
        write_geom(geometry, path)
    if nxmx is not None:
        NXmxWriter(nxmx, geometry, n_frames=0).close()


class GeometryReport:
    """What a geometry fit found: the geometry, the one given and a summary.

    Subclasses (dataclasses) have ``geometry``, ``initial`` and ``summary``; they share
    :meth:`write` and the summary table of their HTML view.
    """

    title = "Geometry"

    def write(self, path=None, *, nxmx=None) -> None:
        """Write the fitted geometry: CrystFEL ``.geom`` to ``path``, NXmx to ``nxmx``
        (see :func:`write_geometry`)."""
        write_geometry(self.geometry, path, nxmx=nxmx)

    def _summary_html(self) -> str:
        def fmt(v):
            return f"{v:.4g}" if isinstance(v, float) else html.escape(str(v))

        rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{fmt(v)}</td></tr>"
                       for k, v in self.summary.items())
        return f"<b>{html.escape(self.title)}</b><table>{rows}</table>"

    def _repr_html_(self) -> str:
        return f"<div>{self._summary_html()}</div>"
