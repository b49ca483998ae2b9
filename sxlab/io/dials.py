"""Detector geometry from DIALS: experiment lists (``.expt``) and NeXus exports (``.nxs``).

DIALS (dxtbx) describes a detector in the imgCIF lab frame, in millimetres: the beam runs
along -z (``sample_to_source`` is +z) and x points the other way from NeXus/CrystFEL, so
``lab = diag(-1, 1, -1) @ imgcif / 1000``. A multi-panel ``.expt`` holds a hierarchy of
groups whose frames compose as in dxtbx: a child's global axes are its local axes
expressed in the parent's (fast, slow, normal) basis, and its origin is added to the
parent's origin the same way.

DIALS does not record where each panel's pixels are in the data array of the file it
came from, so the pixel ranges come from ``like`` (the detector whose data the geometry
belongs to) or, without it, panels are placed one below the other in panel order.

Examples
--------
>>> det = read_dials_geometry("refined.expt", like=sx.builtin_geometry("eiger4m"))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os

import h5py
import numpy as np

from sxlab.geometry import Beam, Detector, Panel
from sxlab.io.nxmx import read_nxmx_geometry, unique_panel_name

__all__ = ["IMGCIF_TO_LAB", "read_dials_expt", "read_dials_geometry"]

#: Axes of the imgCIF frame (DIALS, dxtbx) in the NeXus/CrystFEL lab frame. Its own inverse.
IMGCIF_TO_LAB = np.diag([-1.0, 1.0, -1.0])


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=float)
    return v / np.linalg.norm(v)


def _global_frames(det_json: dict) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(origin_mm, fast, slow) of every panel in the imgCIF frame."""
    panels = det_json["panels"]
    frames: list = [None] * len(panels)

    def local(node) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        fast, slow = _unit(node["fast_axis"]), _unit(node["slow_axis"])
        return np.asarray(node["origin"], dtype=float), fast, slow

    def place(parent_axes, parent_origin, node):
        origin, fast, slow = local(node)
        return parent_origin + parent_axes @ origin, parent_axes @ fast, parent_axes @ slow

    def walk(node, parent_axes, parent_origin):
        origin, fast, slow = place(parent_axes, parent_origin, node)
        axes = np.column_stack([fast, slow, np.cross(fast, slow)])
        for child in node.get("children", []):
            if "panel" in child:
                k = int(child["panel"])
                frames[k] = place(axes, origin, panels[k])
            else:
                walk(child, axes, origin)

    if "hierarchy" in det_json:
        walk(det_json["hierarchy"], np.eye(3), np.zeros(3))
    missing = [k for k, f in enumerate(frames) if f is None]
    for k in missing:
        frames[k] = place(np.eye(3), np.zeros(3), panels[k])
    return frames


def _beam_rotation(direction_lab: np.ndarray) -> np.ndarray:
    """Rotation taking the incident beam direction onto +z (identity when it is there)."""
    z = np.array([0.0, 0.0, 1.0])
    d = _unit(direction_lab)
    axis = np.cross(d, z)
    s, c = np.linalg.norm(axis), float(d @ z)
    if s < 1e-15:
        if c > 0:
            return np.eye(3)
        raise ValueError("the beam runs against +z")
    k = axis / s
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + s * kx + (1 - c) * (kx @ kx)


def read_dials_expt(path: str | os.PathLike, *, experiment: int = 0) -> Detector:
    """Detector geometry and wavelength of one experiment of a DIALS ``.expt`` file.

    Parameters
    ----------
    path : str or path-like
        An experiment list written by DIALS (``dials.import``, ``dials.refine`` ...).
    experiment : int
        Which experiment's detector and beam to read.

    Returns
    -------
    Detector
        One panel per DIALS panel, in DIALS's order, named after the last part of its
        name (``/entry/instrument/detector/p0`` -> ``p0``), placed one below the other
        in a 2-D data array (see :func:`read_dials_geometry` to use another detector's
        data layout). ``max_adu`` is the upper end of the trusted range. A beam that
        refinement has tilted away from the z axis is rotated back onto it together with
        the detector, which keeps every scattering angle.

    Raises
    ------
    ValueError
        If the file is not an experiment list, the experiment does not exist, or a panel
        has non-square pixels.
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
        exp = doc["experiment"][experiment]
        det_json = doc["detector"][exp["detector"]]
        beam_json = doc["beam"][exp["beam"]]
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a DIALS experiment list ({exc})") from None
    except (KeyError, IndexError, TypeError) as exc:
        raise ValueError(f"{path}: no detector/beam for experiment {experiment} "
                         f"({type(exc).__name__}: {exc})") from None
    direction = IMGCIF_TO_LAB @ -_unit(beam_json["direction"])
    rot = _beam_rotation(direction)
    panels, used = [], set()
    row = 0
    for k, ((origin, fast, slow), pj) in enumerate(
            zip(_global_frames(det_json), det_json["panels"], strict=True)):
        px_fast, px_slow = (float(v) for v in pj["pixel_size"])
        if not np.isclose(px_fast, px_slow, rtol=1e-9):
            raise ValueError(f"{path}: panel {k} has non-square pixels {px_fast} x {px_slow} mm")
        width, height = (int(v) for v in pj["image_size"])
        corner = rot @ IMGCIF_TO_LAB @ origin / 1000.0
        res = 1000.0 / px_fast
        trusted = pj.get("trusted_range", [0.0, float("inf")])
        panels.append(Panel(
            name=unique_panel_name(pj.get("name") or f"p{k}", used),
            min_fs=0, max_fs=width - 1, min_ss=row, max_ss=row + height - 1,
            corner_x=float(corner[0] * res), corner_y=float(corner[1] * res),
            fs=tuple(rot @ IMGCIF_TO_LAB @ fast), ss=tuple(rot @ IMGCIF_TO_LAB @ slow),
            res=res, clen=float(corner[2]), data="/entry/data/data",
            max_adu=float(trusted[1]),
        ))
        row += height
    return Detector(
        panels=tuple(panels),
        beam=Beam(float(beam_json["wavelength"])),
        groups=(("all", tuple(p.name for p in panels)),),
        name="from DIALS",
    )


def _with_layout(det: Detector, like: Detector, where: str) -> Detector:
    """``det``'s geometry on ``like``'s panels (pixel ranges, data layout, flags ...)."""
    if det.n_panels != like.n_panels:
        raise ValueError(f"{where} has {det.n_panels} panel(s), like= has {like.n_panels}")
    panels = []
    for k, (g, p) in enumerate(zip(det.panels, like.panels, strict=True)):
        if (g.width, g.height) != (p.width, p.height):
            raise ValueError(
                f"{where}: panel {k} is {g.width} x {g.height} pixels (fast x slow), "
                f"like= panel {p.name!r} is {p.width} x {p.height}"
            )
        panels.append(p.replace(corner_x=g.corner_x * p.res / g.res,
                                corner_y=g.corner_y * p.res / g.res,
                                fs=g.fs, ss=g.ss, res=g.res, clen=g.clen, coffset=0.0))
    return like.replace(panels=tuple(panels)).with_beam(wavelength_A=det.beam.wavelength_A)


def read_dials_geometry(path: str | os.PathLike, *, experiment: int = 0,
                        like: Detector | None = None) -> Detector:
    """Detector geometry from a DIALS experiment list or NeXus export.

    Parameters
    ----------
    path : str or path-like
        ``.expt`` (JSON experiment list) or ``.nxs`` (``dials.export format=nxs``).
    experiment : int
        Which experiment to read (``/entry/experiment_<n>`` of an export).
    like : Detector, optional
        The detector whose data the geometry describes (e.g. the geometry the data were
        imported with). The result is ``like`` with each panel moved to where DIALS puts
        it (panels matched in order, sizes checked) and DIALS's wavelength; pixel ranges,
        stacking, flags, masks and bad regions stay those of ``like``.

    Returns
    -------
    Detector

    Raises
    ------
    ValueError
        If the file is neither format, or ``like`` does not match panel for panel.

    Examples
    --------
    >>> det = sx.builtin_geometry("eiger4m")  # doctest: +SKIP
    >>> refined = read_dials_geometry("refined.expt", like=det)  # doctest: +SKIP
    """
    where = os.fspath(path)
    if h5py.is_hdf5(where):
        det = read_nxmx_geometry(where, entry=f"/entry/experiment_{experiment}",
                                 prefer_embedded=False)
    else:
        det = read_dials_expt(where, experiment=experiment)
    return det if like is None else _with_layout(det, like, where)
