"""The Bravais lattice of a basis and its conventional setting.

An indexer without a reference cell finds *a* basis of the crystal's lattice; the
lattice's symmetry is a property of the lattice, not of that basis. :func:`bravais_setting`
finds it as cctbx (``lattice_symmetry``) and DIALS (``dials.refine_bravais_settings``)
do, after Le Page (1982): the basis is Niggli-reduced, the lattice's twofold axes are
found with gemmi (:func:`gemmi.find_lattice_2fold_ops`, axes within ``max_obliquity_deg``
of a lattice row and a reciprocal-lattice row), and their number and arrangement give
the crystal family; the conventional cell is then built from those axes (International
Tables A, chapter 3.1):

========= ========== ================ ==================================================
twofolds  family     centerings       conventional axes
========= ========== ================ ==================================================
0         triclinic  P                the Niggli cell
1         monoclinic P, C             b along the twofold; a, c the shortest pair
                                      perpendicular to it, β ≥ 90°
3 (⊥)     orthorh.   P, C, I, F       along the three twofolds; a ≤ b ≤ c (C: the
                                      centred face is ab, a ≤ b)
3 (120°)  rhombohed. R (hex. axes)    c along the threefold, a and b along twofolds,
                                      obverse setting
5         tetragonal P, I             c along the fourfold, a along a twofold
7         hexagonal  P                c along the sixfold, a and b at 120°
9         cubic      P, I, F          along the three fourfolds
========= ========== ================ ==================================================

The result is right-handed, and says how indices change: ``hkl_new = hkl_old @ T.T`` for
the transformation ``T`` from the input basis (:attr:`LatticeSetting.transform`).

:func:`lattice_mismatch` says in words how a cell breaks the metric rules of its lattice
type (``a = b`` for tetragonal, right angles, ...).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from .cell import UnitCell, niggli_reduce

__all__ = ["LatticeSetting", "bravais_setting", "lattice_mismatch"]

#: Largest angle (degrees) between a lattice row and a reciprocal-lattice row still taken
#: as a twofold axis of the lattice (the indexer's ``angle_tolerance_deg``; cctbx offers
#: settings up to 3°, DIALS up to 5°, for a user to choose from).
MAX_OBLIQUITY_DEG = 1.5


@dataclass(frozen=True)
class LatticeSetting:
    """A lattice in its conventional setting.

    Attributes
    ----------
    lattice_type : str
        CrystFEL naming: triclinic, monoclinic, orthorhombic, tetragonal, hexagonal
        (also rhombohedral lattices on hexagonal axes, centering ``R``), cubic.
    centering : str
        P, C, I, F or R (R: obverse rhombohedral centering on hexagonal axes).
    unique_axis : str or None
        ``b`` for monoclinic, ``c`` for tetragonal and hexagonal, else None.
    basis : numpy.ndarray, shape (3, 3)
        Conventional direct basis vectors as rows (Å), in the frame of the input.
    transform : numpy.ndarray, shape (3, 3), int
        ``basis = transform @ input_basis``; Miller indices change as
        ``hkl_new = hkl_old @ transform.T``.
    obliquity_deg : float
        Largest obliquity of the twofold axes used (0 for triclinic).
    """

    lattice_type: str
    centering: str
    unique_axis: str | None
    basis: np.ndarray
    transform: np.ndarray
    obliquity_deg: float

    @property
    def cell(self) -> UnitCell:
        """The cell of :attr:`basis` with its lattice type, centering and unique axis."""
        return UnitCell.from_direct_basis(self.basis, lattice_type=self.lattice_type,
                                          centering=self.centering,
                                          unique_axis=self.unique_axis)

    @property
    def symbol(self) -> str:
        """Bravais symbol: ``aP mP mC oP oC oI oF tP tI hP hR cP cI cF``."""
        family = {"triclinic": "a", "monoclinic": "m", "orthorhombic": "o",
                  "tetragonal": "t", "hexagonal": "h", "cubic": "c"}[self.lattice_type]
        return family + self.centering

    def __repr__(self) -> str:
        a, b, c, al, be, ga = self.cell.parameters
        return (f"LatticeSetting({self.symbol}: {a:.2f} {b:.2f} {c:.2f} Å, "
                f"{al:.2f} {be:.2f} {ga:.2f}°)")


# ------------------------------------------------------------------------- helpers
def _primitive_int(v) -> np.ndarray:
    v = np.asarray(np.rint(v), dtype=np.int64)
    g = int(np.gcd.reduce(np.abs(v))) if np.any(v) else 1
    return v // max(g, 1)


def _axis_of(rot: np.ndarray) -> np.ndarray:
    """Direct-lattice row (integers, reduced-cell coordinates) a twofold rotation keeps."""
    # (R - I) u = 0 for the axis u; R acts on fractional coordinates (columns).
    m = rot - np.eye(3)
    u = np.linalg.svd(m)[2][-1]
    u = u / np.abs(u).max()
    for k in range(1, 13):
        if np.allclose(u * k, np.rint(u * k), atol=1e-6):
            return _primitive_int(u * k)
    raise ValueError("twofold axis is not a lattice row")


def _angle(u: np.ndarray, v: np.ndarray) -> float:
    c = abs(float(u @ v)) / (np.linalg.norm(u) * np.linalg.norm(v))
    return math.degrees(math.acos(min(1.0, c)))


def _perpendicular(u, v, tol_deg: float = 10.0) -> bool:
    return _angle(u, v) > 90.0 - tol_deg


def _centering(m: np.ndarray) -> str | None:
    """Centering letter of the conventional rows ``m`` (reduced-cell coordinates)."""
    det = round(abs(np.linalg.det(m)))
    if det == 1:
        return "P"
    rows = np.linalg.inv(m.astype(float))  # the reduced basis in conventional coordinates
    points = set()
    for k in itertools.product(range(det), repeat=3):  # the lattice points in the cell
        frac = np.round((np.array(k) @ rows) % 1.0, 6) % 1.0
        if np.any(frac > 1e-6):
            points.add(tuple(frac))
    pts = {tuple(round(x * 6) for x in p) for p in points}  # sixths: halves and thirds
    table = {frozenset({(3, 3, 0)}): "C", frozenset({(0, 3, 3)}): "A",
             frozenset({(3, 0, 3)}): "B", frozenset({(3, 3, 3)}): "I",
             frozenset({(3, 3, 0), (0, 3, 3), (3, 0, 3)}): "F",
             frozenset({(4, 2, 2), (2, 4, 4)}): "R", frozenset({(2, 4, 2), (4, 2, 4)}): "Rrev"}
    return table.get(frozenset(pts))


def _right_handed(m: np.ndarray, flip: int = 2) -> np.ndarray:
    m = m.copy()
    if np.linalg.det(m) < 0:
        m[flip] = -m[flip]
    return m


def _lengths(m: np.ndarray, reduced: np.ndarray) -> np.ndarray:
    return np.linalg.norm(m @ reduced, axis=1)


# ------------------------------------------------------------------ per family
def _orthorhombic(axes, reduced):
    m = np.array(axes, dtype=np.int64)
    cen = _centering(m)
    if cen in ("A", "B"):  # cyclic permutation: the centred face becomes ab
        m = m[[1, 2, 0]] if cen == "A" else m[[2, 0, 1]]
        cen = "C"
    lengths = _lengths(m, reduced)
    if cen == "C":
        order = [0, 1] if lengths[0] <= lengths[1] else [1, 0]
        m = m[[*order, 2]]
        if order == [1, 0]:
            m[2] = -m[2]
    else:
        order = np.argsort(lengths, kind="stable")
        m = m[order]
    return _right_handed(m), cen


def _tetragonal(principal, others, reduced):
    best = None
    for ua in others:
        for ub in others:
            if ua is ub or not _perpendicular(ua @ reduced, ub @ reduced):
                continue
            m = _right_handed(np.array([ua, ub, principal], dtype=np.int64), flip=1)
            det = round(abs(np.linalg.det(m)))
            cen = _centering(m)
            if cen in ("P", "I") and (best is None or det < best[0]):
                best = (det, m, cen)
    if best is None:
        raise ValueError("no tetragonal setting")
    return best[1], best[2]


def _hexagonal(principal, others, reduced):
    lengths = [float(np.linalg.norm(u @ reduced)) for u in others]
    a = others[int(np.argmin(lengths))]
    ta = a @ reduced
    for u in others:
        for s in (1, -1):
            tb = s * u @ reduced
            cosang = float(ta @ tb) / (np.linalg.norm(ta) * np.linalg.norm(tb))
            if abs(cosang + 0.5) < 0.1 and abs(np.linalg.norm(tb) / np.linalg.norm(ta) - 1) < 0.1:
                m = np.array([a, s * u, principal], dtype=np.int64)
                if _centering(m) == "P":
                    return _right_handed(m), "P"
    raise ValueError("no hexagonal setting")


def _threefold(axes, reduced) -> np.ndarray:
    """The lattice row perpendicular to three coplanar twofold axes."""
    n = np.cross(axes[0] @ reduced, axes[1] @ reduced)
    coeff = n @ np.linalg.inv(reduced)  # n in reduced-cell coordinates
    coeff = coeff / np.abs(coeff).max()
    for k in range(1, 13):
        if np.allclose(coeff * k, np.rint(coeff * k), atol=0.05 * k):
            return _primitive_int(coeff * k)
    raise ValueError("no threefold lattice row")


def _rhombohedral(axes, reduced):
    c = _threefold(axes, reduced)
    for ua, ub in itertools.permutations(axes, 2):
        for s in (1, -1):
            ta, tb = ua @ reduced, s * ub @ reduced
            cosang = float(ta @ tb) / (np.linalg.norm(ta) * np.linalg.norm(tb))
            if abs(cosang + 0.5) > 0.1:
                continue
            for sc in (1, -1):
                m = np.array([ua, s * ub, sc * c], dtype=np.int64)
                if np.linalg.det(m) <= 0:
                    continue
                cen = _centering(m)
                if cen == "Rrev":
                    m = np.array([-ua, -s * ub, sc * c], dtype=np.int64)
                    cen = _centering(m)
                if cen == "R":
                    return m, "R"
    raise ValueError("no rhombohedral setting")


def _monoclinic(b_axis, reduced, tol_deg):
    tb = b_axis @ reduced
    # lattice rows perpendicular to b, from small combinations of the reduced basis
    grid = np.array([v for v in itertools.product(range(-3, 4), repeat=3) if any(v)])
    t = grid @ reduced
    cos = np.abs(t @ tb) / (np.linalg.norm(t, axis=1) * np.linalg.norm(tb))
    perp = grid[cos < math.sin(math.radians(tol_deg))]
    if len(perp) < 2:
        raise ValueError("no lattice rows perpendicular to the twofold axis")
    lengths = np.linalg.norm(perp @ reduced, axis=1)
    order = np.argsort(lengths, kind="stable")
    v1 = perp[order[0]]
    area = None
    v2 = None
    for j in order[1:]:
        cr = np.linalg.norm(np.cross(v1 @ reduced, perp[j] @ reduced))
        if cr < 1e-6 * lengths[order[0]] ** 2:
            continue
        if area is None or cr < area * (1 - 1e-6):
            area, v2 = cr, perp[j]
    best = None
    for i1, j1, i2, j2 in itertools.product((-1, 0, 1), repeat=4):
        if abs(i1 * j2 - j1 * i2) != 1:
            continue
        a = i1 * v1 + j1 * v2
        c = i2 * v1 + j2 * v2
        m = np.array([a, b_axis, c], dtype=np.int64)
        if np.linalg.det(m) < 0:
            m[1] = -m[1]
        cen = _centering(m)
        if cen not in ("P", "C"):
            continue
        ta, tc = a @ reduced, c @ reduced
        beta = math.degrees(math.acos(float(ta @ tc) / (np.linalg.norm(ta) * np.linalg.norm(tc))))
        if beta < 90.0 - 1e-9:
            continue
        score = (np.linalg.norm(ta) + np.linalg.norm(tc), beta)
        if best is None or score < best[0]:
            best = (score, m, cen)
    if best is None:
        raise ValueError("no monoclinic setting")
    return best[1], best[2]


def _cubic(axes, reduced):
    counts = [sum(_perpendicular(u @ reduced, v @ reduced) for v in axes if v is not u)
              for u in axes]
    four = [u for u, n in zip(axes, counts, strict=True) if n == 4]
    if len(four) != 3:
        raise ValueError("no cubic setting")
    m = _right_handed(np.array(four, dtype=np.int64))
    cen = _centering(m)
    if cen not in ("P", "I", "F"):
        raise ValueError("no cubic setting")
    return m, cen


def _setting(axes, reduced, tol_deg):
    """(family, rows, centering) for a set of twofold axes, or None when inconsistent."""
    n = len(axes)
    t = [u @ reduced for u in axes]
    if n == 0:
        return "triclinic", np.eye(3, dtype=np.int64), "P"
    if n == 1:
        m, cen = _monoclinic(axes[0], reduced, tol_deg)
        return "monoclinic", m, cen
    if n == 3:
        if all(_perpendicular(t[i], t[j]) for i, j in ((0, 1), (0, 2), (1, 2))):
            m, cen = _orthorhombic(axes, reduced)
            return "orthorhombic", m, cen
        normal = np.cross(t[0], t[1])
        if np.linalg.norm(normal) == 0 or not _perpendicular(normal, t[2], tol_deg):
            return None
        m, cen = _rhombohedral(axes, reduced)
        return "hexagonal", m, cen
    if n in (5, 7):
        principal = [u for u, tu in zip(axes, t, strict=True)
                     if all(_perpendicular(tu, tv) for tv in t if tv is not tu)]
        if len(principal) != 1:
            return None
        others = [u for u in axes if u is not principal[0]]
        if n == 5:
            m, cen = _tetragonal(principal[0], others, reduced)
            return "tetragonal", m, cen
        m, cen = _hexagonal(principal[0], others, reduced)
        return "hexagonal", m, cen
    if n == 9:
        m, cen = _cubic(axes, reduced)
        return "cubic", m, cen
    return None


def bravais_setting(basis, *, max_obliquity_deg: float = MAX_OBLIQUITY_DEG
                    ) -> LatticeSetting:
    """The Bravais lattice of a basis and the basis in its conventional setting.

    Parameters
    ----------
    basis : array_like, shape (3, 3)
        Direct basis vectors as rows (Å) of a primitive basis of the lattice (an
        indexer's; any orientation).
    max_obliquity_deg : float
        Tolerance of the lattice symmetry: largest angle between a lattice row and a
        reciprocal-lattice row taken as a twofold axis.

    Returns
    -------
    LatticeSetting

    Notes
    -----
    When the twofold axes found within the tolerance do not form a lattice point group
    (noise near the tolerance), the axes of largest obliquity are dropped one by one
    until they do, so a lattice is never given more symmetry than its metric supports.
    The result depends only on the lattice, not on the input basis (up to the
    symmetry-equivalent choices of axes).

    Examples
    --------
    >>> cell = UnitCell(37.9, 79.1, 79.1, 90, 90, 90)       # a tetragonal lattice, axes
    >>> s = bravais_setting(cell.direct_basis)             # in the wrong order
    >>> s.symbol, [round(x, 1) for x in s.cell.parameters]
    ('tP', [79.1, 79.1, 37.9, 90.0, 90.0, 90.0])
    >>> s.transform.tolist()
    [[0, 1, 0], [0, 0, 1], [1, 0, 0]]
    """
    import gemmi

    basis = np.asarray(basis, dtype=float)
    reduced, t_red = niggli_reduce(basis)
    cell = UnitCell.from_direct_basis(reduced)
    found = gemmi.find_lattice_2fold_ops(gemmi.UnitCell(*cell.parameters),
                                         float(max_obliquity_deg))
    found = sorted(found, key=lambda item: item[1])
    axes_all = []
    for op, obliquity in found:
        rot = np.array(op.rot, dtype=float) / gemmi.Op.DEN
        axes_all.append((_axis_of(rot), float(obliquity)))
    # gemmi works in the coordinates of the cell it is given: the reduced cell's
    # standard orientation, whose rows are the reduced basis rotated; the integer axes
    # are the same in both.
    for n in range(len(axes_all), -1, -1):
        axes = [u for u, _ in axes_all[:n]]
        try:
            got = _setting(axes, reduced, 2.0 * max_obliquity_deg + 0.5)
        except ValueError:
            got = None
        if got is None or got[2] not in ("P", "C", "I", "F", "R"):
            continue
        family, m, cen = got
        conv = UnitCell.from_direct_basis(m @ reduced, lattice_type=family, centering=cen)
        if lattice_mismatch(conv, family, "b" if family == "monoclinic" else "c",
                            length_tol=0.05, angle_tol_deg=4.0 * max_obliquity_deg + 0.5):
            continue  # axes within the tolerance that do not make the lattice's metric
        transform = m @ t_red
        conv = m @ reduced
        unique = {"monoclinic": "b", "tetragonal": "c", "hexagonal": "c"}.get(family)
        obliq = max((o for _, o in axes_all[:n]), default=0.0)
        if family == "triclinic":
            unique = None
        return LatticeSetting(family, cen, unique, conv, transform.astype(np.int64), obliq)
    raise ValueError("no lattice setting found")  # n = 0 always succeeds


# --------------------------------------------------------------------- metric rules
def lattice_mismatch(cell: UnitCell, lattice_type: str | None = None,
                     unique_axis: str | None = None, *, length_tol: float = 0.01,
                     angle_tol_deg: float = 1.0) -> str | None:
    """How a cell breaks the metric rules of a lattice type, in words (None if it obeys).

    Parameters
    ----------
    cell : UnitCell
    lattice_type, unique_axis : str, optional
        Default: the cell's own.
    length_tol : float
        Relative tolerance of equal edges.
    angle_tol_deg : float
        Tolerance of the fixed angles (90°, 120°, equal angles).

    Examples
    --------
    >>> lattice_mismatch(UnitCell(37.9, 79.1, 79.1, 90, 90, 90), "tetragonal", "c")
    'has a = 37.9 Å but b = 79.1 Å; a tetragonal lattice with unique axis c needs a = b'
    >>> lattice_mismatch(UnitCell(79.1, 79.1, 37.9, 90, 90, 90), "tetragonal", "c") is None
    True
    """
    lat = lattice_type or cell.lattice_type or "triclinic"
    ua = unique_axis or cell.unique_axis or ("b" if lat == "monoclinic" else "c")
    p = dict(zip(("a", "b", "c", "alpha", "beta", "gamma"), cell.parameters, strict=True))
    angle_of = {"a": "alpha", "b": "beta", "c": "gamma"}
    others = [x for x in "abc" if x != ua]
    what = f"a {lat} lattice" + (f" with unique axis {ua}" if lat in (
        "monoclinic", "tetragonal", "hexagonal") else "")

    def equal_lengths(names):
        ref = np.mean([p[n] for n in names])
        for x, y in itertools.combinations(names, 2):
            if abs(p[x] - p[y]) > length_tol * ref:
                return (f"has {x} = {p[x]:.1f} Å but {y} = {p[y]:.1f} Å; {what} needs "
                        f"{' = '.join(names)}")
        return None

    def angles(names, value):
        for n in names:
            if abs(p[n] - value) > angle_tol_deg:
                return f"has {n} = {p[n]:.2f}°; {what} needs {n} = {value:g}°"
        return None

    checks = {
        "triclinic": [],
        "monoclinic": [lambda: angles([angle_of[x] for x in others], 90.0)],
        "orthorhombic": [lambda: angles(["alpha", "beta", "gamma"], 90.0)],
        "tetragonal": [lambda: equal_lengths(others),
                       lambda: angles(["alpha", "beta", "gamma"], 90.0)],
        "hexagonal": [lambda: equal_lengths(others),
                      lambda: angles([angle_of[x] for x in others], 90.0),
                      lambda: angles([angle_of[ua]], 120.0)],
        "rhombohedral": [lambda: equal_lengths(["a", "b", "c"]),
                         lambda: angles(["beta", "gamma"], p["alpha"])],
        "cubic": [lambda: equal_lengths(["a", "b", "c"]),
                  lambda: angles(["alpha", "beta", "gamma"], 90.0)],
    }
    if lat not in checks:
        raise ValueError(f"unknown lattice type {lat!r}")
    for check in checks[lat]:
        problem = check()
        if problem:
            return problem
    return None
