"""Scoring indexing results against the truth of simulated data.

A found lattice is **correct** when its orientation is within ``max_deg`` of a true
crystal of its frame, up to the symmetry of the lattice (an indexer cannot tell apart
settings related by a lattice symmetry; merging resolves them). Every other found lattice
is a **false indexing**: on a frame without crystals, a wrong cell or orientation, or a
second solution for a crystal already found.

Examples
--------
>>> from sxlab.cell import UnitCell
>>> cell = UnitCell(79.1, 79.1, 37.9, 90, 90, 90)
>>> len(lattice_rotations(cell))  # 4/mmm holohedry, proper part
8
"""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pandas as pd

from .. import tables
from ..cell import UnitCell
from ..reciprocal import nearest_rotation

__all__ = ["lattice_rotations", "misorientation_deg", "score_indexing"]

_ASTAR = [f"{v}star_{x}" for v in "abc" for x in "xyz"]


@functools.lru_cache(maxsize=32)
def _rotations_of(params: tuple) -> tuple:
    cell = UnitCell(*params)
    g = cell.reciprocal_basis @ cell.reciprocal_basis.T
    out = []
    for entries in itertools.product((-1, 0, 1), repeat=9):
        r = np.array(entries, dtype=float).reshape(3, 3)
        if round(np.linalg.det(r)) != 1:
            continue
        if np.allclose(r @ g @ r.T, g, rtol=1e-3, atol=1e-9 * np.abs(g).max()):
            out.append(r)
    return tuple(out)


def lattice_rotations(cell: UnitCell) -> list[np.ndarray]:
    """Proper symmetry operations of the lattice (integer matrices acting on hkl rows).

    The matrices ``R`` with entries in {-1, 0, 1}, determinant 1 and ``R G* Rᵀ = G*``
    (the reciprocal metric, to 0.1 %): basis changes that map the lattice onto itself.
    """
    return [r.copy() for r in _rotations_of(tuple(float(v) for v in cell.parameters))]


def misorientation_deg(astar_found, astar_true, cell: UnitCell, rotations=None) -> float:
    """Smallest rotation (deg) taking a found lattice onto a true one, up to symmetry.

    Parameters
    ----------
    astar_found, astar_true : ndarray (3, 3)
        Reciprocal bases (rows a*, b*, c*), both in the setting of ``cell``.
    cell : UnitCell
        Reference cell (its basis ``B``; ``A = B Uᵀ``).
    rotations : list of ndarray, optional
        :func:`lattice_rotations` of the cell (computed when not given).

    Examples
    --------
    >>> from sxlab.reciprocal import rotation_matrix
    >>> cell = UnitCell(50, 60, 70)
    >>> b = cell.reciprocal_basis
    >>> r = rotation_matrix([0.0, 0.0, np.radians(0.3)])
    >>> round(misorientation_deg(b @ r.T, b, cell), 6)
    0.3
    """
    b = cell.reciprocal_basis
    rots = lattice_rotations(cell) if rotations is None else rotations
    u_found = nearest_rotation(np.linalg.solve(b, np.asarray(astar_found, float)).T)
    best = 180.0
    for r in rots:
        u_true = nearest_rotation(np.linalg.solve(b, r @ np.asarray(astar_true, float)).T)
        c = (np.trace(u_found @ u_true.T) - 1.0) / 2.0
        best = min(best, float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0)))))
    return best


@tables.documented
def score_indexing(crystals: pd.DataFrame, truth_crystals: pd.DataFrame, cell: UnitCell,
                   *, max_deg: float = 1.0, length_tolerance: float = 0.05) -> pd.DataFrame:
    """Match found lattices to the simulated crystals of their frames.

    Parameters
    ----------
    crystals : DataFrame
        Found lattices (:data:`sxlab.tables.CRYSTALS`, or any table with ``frame``, the
        cell and ``astar_x`` ... ``cstar_z``).
    truth_crystals : DataFrame
        The simulated crystals (:data:`sxlab.tables.TRUTH_CRYSTALS`).
    cell : UnitCell
        The reference cell both are in.
    max_deg : float
        Largest misorientation of a correct lattice.
    length_tolerance : float
        Relative tolerance on the cell edges of a correct lattice.

    Returns
    -------
    DataFrame
        One row per found lattice, in the input order; each true crystal is matched at
        most once (the closest found lattice wins):

        [columns: indexing_scores]

    Examples
    --------
    >>> scores = score_indexing(res.crystals, truth.crystals, cell)  # doctest: +SKIP
    >>> scores.correct.sum(), scores.false.sum()  # doctest: +SKIP
    """
    rots = lattice_rotations(cell)
    ref = np.array([cell.a, cell.b, cell.c])
    truth_by_frame = {int(f): g for f, g in truth_crystals.groupby("frame")}
    rows = []
    taken: dict[tuple[int, int], tuple[float, int]] = {}
    for i, (_, row) in enumerate(crystals.iterrows()):
        frame = int(row["frame"])
        a = row[_ASTAR].to_numpy(float).reshape(3, 3)
        edges = np.array([row["a"], row["b"], row["c"]], dtype=float)
        cell_ok = bool(np.all(np.abs(np.sort(edges) / np.sort(ref) - 1) <= length_tolerance))
        best, match = np.inf, -1
        for _, t in truth_by_frame.get(frame, pd.DataFrame()).iterrows():
            err = misorientation_deg(a, t[_ASTAR].to_numpy(float).reshape(3, 3), cell, rots)
            if err < best:
                best, match = err, int(t["crystal"])
        rows.append({"frame": frame, "crystal": int(row.get("crystal", i)),
                     "true_crystal": match, "misorientation_deg": best,
                     "correct": bool(cell_ok and best <= max_deg), "false": False})
        if rows[-1]["correct"]:
            key = (frame, match)
            if key in taken and taken[key][0] <= best:
                rows[-1]["correct"] = False          # a second solution for one crystal
            else:
                if key in taken:
                    rows[taken[key][1]]["correct"] = False
                    rows[taken[key][1]]["false"] = True
                taken[key] = (best, i)
        rows[-1]["false"] = not rows[-1]["correct"]
    if not rows:
        return tables.INDEXING_SCORES.empty()
    out = tables.INDEXING_SCORES.make({k: [r[k] for r in rows] for k in rows[0]})
    out["misorientation_deg"] = out["misorientation_deg"].replace(np.inf, np.nan)
    return out
