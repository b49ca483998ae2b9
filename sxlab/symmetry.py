"""Space groups, cells and the reciprocal asymmetric unit, as merging and file formats use them.

* :func:`resolve_symmetry` — a gemmi space group (and the cell a :class:`~sxlab.cell.UnitCell`
  brings) from a symbol, a gemmi object or a UnitCell;
* :func:`as_gemmi_cell`, :func:`cell_d_spacings` — cells in any spelling and the
  resolution of Miller indices in them;
* :func:`point_group_rotations` — the rotations acting on ``hkl``;
* :class:`AsuTable` — every symmetry equivalent and Friedel mate of gemmi's reciprocal
  asymmetric unit, looked up for many reflections at once.

Examples
--------
>>> table = AsuTable(as_gemmi_cell((79.1, 79.1, 37.9, 90, 90, 90)),
...                  resolve_symmetry("P 43 21 2")[0], 5.0)
>>> u, friedel = table.lookup([[0, 2, 1], [2, 0, -1]])
>>> table.hkl[u].tolist(), friedel.tolist()
([[2, 0, 1], [2, 0, 1]], [False, False])
"""

from __future__ import annotations

import numpy as np

from .cell import UnitCell, find_space_group
from .reciprocal import d_spacing

__all__ = ["AsuTable", "as_gemmi_cell", "cell_d_spacings", "point_group_rotations",
           "resolve_symmetry"]


def as_gemmi_cell(cell):
    """A gemmi.UnitCell from a UnitCell, a gemmi.UnitCell or six numbers (None: None).

    Examples
    --------
    >>> as_gemmi_cell((50, 60, 70, 90, 90, 90)).volume
    210000.0
    """
    import gemmi

    if cell is None:
        return None
    if isinstance(cell, gemmi.UnitCell):
        return cell
    if isinstance(cell, UnitCell):
        return cell.to_gemmi()
    values = [float(v) for v in cell]
    if len(values) != 6:
        raise ValueError(f"cell must have six parameters (a, b, c, α, β, γ), got {cell!r}")
    return gemmi.UnitCell(*values)


def resolve_symmetry(symmetry):
    """gemmi.SpaceGroup of ``symmetry`` and the UnitCell it may carry.

    Parameters
    ----------
    symmetry : str, gemmi.SpaceGroup or UnitCell
        A space-group symbol (``"P 43 21 2"``, ``"P43212"``), a gemmi space group, or a
        UnitCell with a space group.

    Returns
    -------
    (gemmi.SpaceGroup, UnitCell or None)

    Examples
    --------
    >>> resolve_symmetry("P43212")[0].hm
    'P 43 21 2'
    """
    if isinstance(symmetry, UnitCell):
        if symmetry.space_group is None:
            raise ValueError("the UnitCell given as symmetry has no space group")
        return symmetry.gemmi_space_group(), symmetry
    sg = find_space_group(symmetry)
    if sg is None:
        raise ValueError("symmetry must name a space group, e.g. 'P 43 21 2'")
    return sg, None


def point_group_rotations(sg) -> np.ndarray:
    """Distinct rotation parts of the point group, as matrices acting on row vectors hkl.

    Examples
    --------
    >>> len(point_group_rotations(resolve_symmetry("P 43 21 2")[0]))
    8
    """
    import gemmi

    rots = np.array([op.rot for op in sg.operations().sym_ops], dtype=np.int64)
    return np.unique(rots // gemmi.Op.DEN, axis=0)


def cell_d_spacings(cell, hkl) -> np.ndarray:
    """d (Å) of rows ``hkl`` (inf for 0 0 0) in ``cell`` (any spelling of
    :func:`as_gemmi_cell`).

    Examples
    --------
    >>> cell_d_spacings((50, 60, 70, 90, 90, 90), [[1, 0, 0], [0, 0, 2]]).tolist()
    [50.0, 35.0]
    """
    gcell = as_gemmi_cell(cell)
    return d_spacing(np.asarray(hkl), UnitCell(*gcell.parameters).reciprocal_basis)


class AsuTable:
    """Every symmetry equivalent (and Friedel mate) of gemmi's reciprocal ASU to ``d_min``.

    ``lookup(hkl)`` gives, for many rows at once, the index of the unique reflection
    each row is equivalent to (-1: systematically absent, 0 0 0 or beyond ``d_min``)
    and whether it is equivalent to its Friedel mate instead (reached only through the
    inversion). Indices of the Laue-group ASU are those of :attr:`hkl`.

    Parameters
    ----------
    gcell : gemmi.UnitCell
    sg : gemmi.SpaceGroup
    d_min : float
        Highest resolution (Å) of the table.

    Attributes
    ----------
    hkl : ndarray of int32 (n, 3)
        The unique reflections (gemmi's reciprocal ASU of the Laue group).
    d : ndarray (n,)
        Their resolution (Å).
    centric : ndarray of bool (n,)
    """

    def __init__(self, gcell, sg, d_min: float):
        import gemmi

        asu = np.asarray(gemmi.make_miller_array(gcell, sg, float(d_min), 0.0, True),
                         dtype=np.int32).reshape(-1, 3)
        self.hkl = asu
        self.d = gcell.calculate_d_array(asu) if len(asu) else np.zeros(0)
        ops = sg.operations()
        self.centric = (np.asarray(ops.centric_flag_array(asu), dtype=bool) if len(asu)
                        else np.zeros(0, dtype=bool))
        rots = point_group_rotations(sg)
        base = asu.astype(np.int64)
        eq = np.concatenate([base @ r for r in rots] + [-(base @ r) for r in rots])
        if not len(eq):
            eq = np.zeros((0, 3), np.int64)
        n_rot = len(rots)
        src = np.tile(np.arange(len(asu), dtype=np.int64), 2 * n_rot)
        friedel = np.repeat(np.array([False, True]), n_rot * len(asu))
        self._half = np.max(np.abs(eq), axis=0) if len(eq) else np.zeros(3, np.int64)
        key = self._key(eq)
        key, first = np.unique(key, return_index=True)
        self._keys = key
        self._src = src[first]
        self._friedel = friedel[first]

    def _key(self, hkl: np.ndarray) -> np.ndarray:
        m = self._half
        return (((hkl[:, 0] + m[0]) * (2 * m[1] + 1) + (hkl[:, 1] + m[1])) * (2 * m[2] + 1)
                + (hkl[:, 2] + m[2]))

    def lookup(self, hkl) -> tuple[np.ndarray, np.ndarray]:
        """Unique reflection of each row of ``hkl`` (-1: none) and whether via Friedel."""
        hkl = np.asarray(hkl, dtype=np.int64).reshape(-1, 3)
        u = np.full(len(hkl), -1, dtype=np.int64)
        friedel = np.zeros(len(hkl), dtype=bool)
        if not len(self._keys) or not len(hkl):
            return u, friedel
        inside = np.all(np.abs(hkl) <= self._half, axis=1)
        key = self._key(hkl[inside])
        pos = np.minimum(np.searchsorted(self._keys, key), len(self._keys) - 1)
        found = self._keys[pos] == key
        idx = np.flatnonzero(inside)[found]
        u[idx] = self._src[pos[found]]
        friedel[idx] = self._friedel[pos[found]]
        return u, friedel

    def group(self, u: np.ndarray, friedel: np.ndarray, anomalous: bool) -> np.ndarray:
        """Merging group of each row: ``u``, or ``2u`` / ``2u + 1`` (I(+) / I(-))."""
        if not anomalous:
            return u.copy()
        minus = friedel & ~self.centric[np.maximum(u, 0)]
        return np.where(u >= 0, 2 * u + minus, -1)

    def group_hkl(self, anomalous: bool) -> np.ndarray:
        """Indices of the merging groups (with anomalous: I(+) and I(-) rows alternate)."""
        if not anomalous:
            return self.hkl
        out = np.empty((2 * len(self.hkl), 3), dtype=np.int32)
        out[0::2] = self.hkl
        out[1::2] = -self.hkl
        return out
