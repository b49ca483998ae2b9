"""Unit cells: parameters, bases, centering, Niggli reduction and cell comparison.

Basis convention: :attr:`UnitCell.direct_basis` holds the direct vectors **a, b, c as
rows** (Å), in the standard orthogonal setting of the PDB/gemmi (a along x, b in the x–y
plane, c* along z); :attr:`UnitCell.reciprocal_basis` holds **a*, b*, c* as rows** (1/Å,
no 2π), so a reflection's scattering vector is ``hkl @ reciprocal_basis`` and
``direct_basis @ reciprocal_basis.T`` is the identity.

A change of basis is a 3×3 matrix ``T`` acting on those rows: ``new = T @ old``. Miller
indices then change as ``hkl_new = hkl_old @ T.T`` and reciprocal bases as
``inv(T).T @ old_reciprocal``.

Centering letters follow CrystFEL: ``P A B C I F`` as usual; ``R`` is a rhombohedral
lattice on hexagonal axes (obverse setting, the gemmi/PDB ``R 3`` cell) unless the lattice
type is ``rhombohedral``, in which case the cell is the primitive rhombohedral one; ``H``
is CrystFEL's name for the same obverse hexagonal-axes cell as hexagonal ``R``.

Contents:

* :class:`UnitCell` with :meth:`~UnitCell.g6`, :meth:`~UnitCell.niggli`,
  :meth:`~UnitCell.primitive` and :meth:`~UnitCell.to_primitive`;
* :func:`niggli_reduce` (Křivý & Gruber 1976 with the epsilon comparisons of
  Grosse-Kunstleve, Sauter & Adams 2004);
* :func:`uncentering_matrix`, :func:`centering_matrix`, :func:`to_primitive`,
  :func:`to_centered`;
* :class:`CellMatcher`, :func:`match_cell`, :class:`CellMatch` and
  :func:`cells_equivalent`: find the setting of an arbitrary basis (as an indexer
  returns it) that matches a reference cell.
"""

from __future__ import annotations

import functools
import html
import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "LATTICE_TYPES",
    "CellMatch",
    "CellMatcher",
    "UnitCell",
    "cells_equivalent",
    "centering_matrix",
    "find_space_group",
    "g6_from_basis",
    "match_cell",
    "niggli_reduce",
    "to_centered",
    "to_primitive",
    "uncentering_matrix",
]

LATTICE_TYPES = (
    "triclinic",
    "monoclinic",
    "orthorhombic",
    "tetragonal",
    "rhombohedral",
    "hexagonal",
    "cubic",
)

_CRYSTAL_SYSTEM_TO_LATTICE = {
    "triclinic": "triclinic",
    "monoclinic": "monoclinic",
    "orthorhombic": "orthorhombic",
    "tetragonal": "tetragonal",
    "trigonal": "hexagonal",
    "hexagonal": "hexagonal",
    "cubic": "cubic",
}

# Primitive basis rows in terms of the centred basis rows, as integer rows over a common
# denominator: primitive = rows / denominator @ centred.
_UNCENTERING = {
    "P": (((1, 0, 0), (0, 1, 0), (0, 0, 1)), 1),
    "A": (((2, 0, 0), (0, 1, 1), (0, -1, 1)), 2),
    "B": (((1, 0, 1), (0, 2, 0), (-1, 0, 1)), 2),
    "C": (((1, 1, 0), (-1, 1, 0), (0, 0, 2)), 2),
    "I": (((-1, 1, 1), (1, -1, 1), (1, 1, -1)), 2),
    "F": (((0, 1, 1), (1, 0, 1), (1, 1, 0)), 2),
    "R": (((2, 1, 1), (-1, 1, 1), (-1, -2, 1)), 3),
}
_MULTIPLICITY = {"P": 1, "A": 2, "B": 2, "C": 2, "I": 2, "F": 4, "R": 3}


def find_space_group(name):
    """gemmi.SpaceGroup of a symbol (cached; a gemmi.SpaceGroup passes, None gives None).

    Raises ValueError for an unknown symbol.

    Examples
    --------
    >>> find_space_group("P 43 21 2").number
    96
    """
    import gemmi

    if name is None:
        return None
    if isinstance(name, gemmi.SpaceGroup):
        return name
    return _space_group_by_name(str(name))


@functools.lru_cache(maxsize=256)
def _space_group_by_name(name: str):
    import gemmi

    sg = gemmi.find_spacegroup_by_name(name)
    if sg is None:
        raise ValueError(f"unknown space group {name!r}")
    return sg


def _centering_key(centering, lattice_type=None) -> str:
    """Key of :data:`_UNCENTERING` for a CrystFEL centering letter and lattice type."""
    if centering is None:
        return "P"
    cen = str(centering).upper()
    if cen not in "PABCIFRH" or len(cen) != 1:
        raise ValueError(f"unknown centering {centering!r}; expected one of P A B C I F R H")
    if cen == "H":
        return "R"
    if cen == "R" and lattice_type == "rhombohedral":
        return "P"
    return cen


def _as_basis(basis, what="basis") -> np.ndarray:
    m = np.asarray(basis, dtype=float)
    if m.shape != (3, 3):
        raise ValueError(f"{what} must be a 3×3 array (rows a, b, c), got shape {m.shape}")
    if not np.isfinite(m).all():
        raise ValueError(f"{what} has non-finite entries")
    det = float(np.linalg.det(m))
    scale = math.sqrt(float(np.prod(np.einsum("ij,ij->i", m, m))))
    if scale == 0.0 or abs(det) <= 1e-12 * scale:
        raise ValueError(f"{what} vectors are linearly dependent")
    return m


def _parameters_from_basis(basis) -> tuple[float, float, float, float, float, float]:
    """Cell parameters (Å, degrees) of direct basis rows."""
    (a0, a1, a2), (b0, b1, b2), (c0, c1, c2) = np.asarray(basis, dtype=float).tolist()
    la = math.sqrt(a0 * a0 + a1 * a1 + a2 * a2)
    lb = math.sqrt(b0 * b0 + b1 * b1 + b2 * b2)
    lc = math.sqrt(c0 * c0 + c1 * c1 + c2 * c2)

    def ang(dot, l1, l2):
        return math.degrees(math.acos(max(-1.0, min(1.0, dot / (l1 * l2)))))

    return (la, lb, lc, ang(b0 * c0 + b1 * c1 + b2 * c2, lb, lc),
            ang(a0 * c0 + a1 * c1 + a2 * c2, la, lc), ang(a0 * b0 + a1 * b1 + a2 * b2, la, lb))


def g6_from_basis(basis) -> np.ndarray:
    """G6 vector of a direct basis (rows a, b, c).

    Parameters
    ----------
    basis : array_like, shape (3, 3)
        Direct basis vectors as rows (Å).

    Returns
    -------
    numpy.ndarray, shape (6,)
        ``(a·a, b·b, c·c, 2 b·c, 2 a·c, 2 a·b)`` in Å² (Andrews & Bernstein 1988).

    Examples
    --------
    >>> g6_from_basis(np.diag([10.0, 20.0, 30.0])).tolist()
    [100.0, 400.0, 900.0, 0.0, 0.0, 0.0]
    """
    m = np.asarray(basis, dtype=float)
    g = m @ m.T
    return np.array([g[0, 0], g[1, 1], g[2, 2], 2 * g[1, 2], 2 * g[0, 2], 2 * g[0, 1]])


# --------------------------------------------------------------------------- centering
def uncentering_matrix(centering: str, *, lattice_type: str | None = None) -> np.ndarray:
    """Matrix taking a centred basis to a primitive basis of the same lattice.

    Parameters
    ----------
    centering : str
        One of ``P A B C I F R H`` (see the module notes for ``R`` and ``H``).
    lattice_type : str, optional
        ``"rhombohedral"`` makes ``R`` the primitive rhombohedral cell (identity matrix).

    Returns
    -------
    numpy.ndarray, shape (3, 3)
        ``U`` with ``primitive_basis = U @ centred_basis``; entries are multiples of 1/2
        (A, B, C, I, F) or 1/3 (R, H) and ``det(U) = 1 / n`` for ``n`` lattice points per
        centred cell. The primitive rows are a' = (a + b)/2, b' = (−a + b)/2, c' = c for
        C (A and B alike), a' = (−a + b + c)/2 … for I, a' = (b + c)/2 … for F, and
        a' = (2a + b + c)/3, b' = (−a + b + c)/3, c' = (−a − 2b + c)/3 for R (obverse).

    Examples
    --------
    >>> uncentering_matrix("C")
    array([[ 0.5,  0.5,  0. ],
           [-0.5,  0.5,  0. ],
           [ 0. ,  0. ,  1. ]])
    >>> round(float(np.linalg.det(uncentering_matrix("F"))), 6)
    0.25
    """
    rows, den = _UNCENTERING[_centering_key(centering, lattice_type)]
    return np.array(rows, dtype=float) / den


def centering_matrix(centering: str, *, lattice_type: str | None = None) -> np.ndarray:
    """Integer matrix taking the primitive basis of :func:`uncentering_matrix` back.

    Parameters
    ----------
    centering : str
        One of ``P A B C I F R H``.
    lattice_type : str, optional
        As for :func:`uncentering_matrix`.

    Returns
    -------
    numpy.ndarray, shape (3, 3), float
        ``C = inv(uncentering_matrix(centering))``, integer valued with ``det(C) = n``:
        ``centred_basis = C @ primitive_basis``.

    Examples
    --------
    >>> centering_matrix("I")
    array([[0., 1., 1.],
           [1., 0., 1.],
           [1., 1., 0.]])
    """
    inverse = np.linalg.inv(uncentering_matrix(centering, lattice_type=lattice_type))
    return np.round(inverse) + 0.0


def to_primitive(basis, centering: str, *, lattice_type: str | None = None):
    """Primitive basis of the lattice of a centred basis.

    Parameters
    ----------
    basis : array_like, shape (3, 3)
        Centred direct basis, rows a, b, c (Å), any orientation.
    centering : str
        Centering of ``basis`` (``P A B C I F R H``).
    lattice_type : str, optional
        As for :func:`uncentering_matrix`.

    Returns
    -------
    primitive_basis : numpy.ndarray, shape (3, 3)
        ``U @ basis``.
    U : numpy.ndarray, shape (3, 3)
        :func:`uncentering_matrix` of ``centering``.

    Examples
    --------
    >>> cell = UnitCell(78.0, 78.0, 78.0, space_group="I 2 3")
    >>> p, u = to_primitive(cell.direct_basis, "I")
    >>> round(abs(float(np.linalg.det(p))) / cell.volume, 6)
    0.5
    """
    u = uncentering_matrix(centering, lattice_type=lattice_type)
    return u @ _as_basis(basis), u


def to_centered(primitive_basis, centering: str, *, lattice_type: str | None = None):
    """Centred basis from the primitive basis made by :func:`to_primitive`.

    This inverts :func:`to_primitive` only; for an arbitrary primitive basis of the
    lattice (e.g. from an indexer) use :func:`match_cell` to find the centred setting.

    Parameters
    ----------
    primitive_basis : array_like, shape (3, 3)
        Rows of the primitive basis in the convention of :func:`uncentering_matrix`.
    centering : str
        Centering of the wanted basis.
    lattice_type : str, optional
        As for :func:`uncentering_matrix`.

    Returns
    -------
    basis : numpy.ndarray, shape (3, 3)
        ``C @ primitive_basis``.
    C : numpy.ndarray, shape (3, 3)
        :func:`centering_matrix` of ``centering`` (integer valued).

    Examples
    --------
    >>> cell = UnitCell(46.2, 103.0, 128.7, space_group="C 2 2 21")
    >>> p, _ = to_primitive(cell.direct_basis, "C")
    >>> back, _ = to_centered(p, "C")
    >>> bool(np.allclose(back, cell.direct_basis))
    True
    """
    c = centering_matrix(centering, lattice_type=lattice_type)
    return c @ _as_basis(primitive_basis, "primitive basis"), c


# ---------------------------------------------------------------- Niggli reduction
def _sign_eps(x, eps):
    if x > eps:
        return 1
    if x < -eps:
        return -1
    return 0


def _metric(m, g0):
    """``m @ g0 @ m.T`` for nested-list 3×3 ``m`` (integers) and ``g0`` (floats)."""
    rows = [[sum(mi[k] * g0[k][j] for k in range(3)) for j in range(3)] for mi in m]
    return [[sum(rows[i][k] * m[j][k] for k in range(3)) for j in range(3)] for i in range(3)]


def _size_reduce(g, m, eps):
    """Cheap pairwise size reduction (b_j -= round(b_i·b_j / b_i·b_i) b_i) before Křivý–Gruber."""
    for _ in range(200):
        changed = False
        for i in range(3):
            for j in range(3):
                if i == j:
                    continue
                q = round(g[i][j] / g[i][i])
                if q == 0:
                    continue
                new_jj = g[j][j] - 2 * q * g[i][j] + q * q * g[i][i]
                if new_jj >= g[j][j] - eps:
                    continue
                for k in range(3):
                    if k != j:
                        g[j][k] -= q * g[i][k]
                        g[k][j] = g[j][k]
                g[j][j] = new_jj
                m[j] = [m[j][k] - q * m[i][k] for k in range(3)]
                changed = True
        if not changed:
            break


def _niggli_matrix(basis: np.ndarray, tol: float, max_iter: int = 1000):
    """Integer rows (nested lists) ``M`` with ``M @ basis`` Niggli reduced, and its G6."""
    g0 = (basis @ basis.T).tolist()
    volume = abs(float(np.linalg.det(basis)))
    eps = tol * volume ** (2.0 / 3.0)
    m = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    g = [row[:] for row in g0]
    _size_reduce(g, m, eps)
    g = _metric(m, g0)
    m0, m1, m2 = m
    a, b, c = g[0][0], g[1][1], g[2][2]
    xi, eta, zeta = 2 * g[1][2], 2 * g[0][2], 2 * g[0][1]
    for _ in range(max_iter):
        # N1: A <= B, and |xi| <= |eta| when A = B.
        if a > b + eps or (abs(a - b) <= eps and abs(xi) > abs(eta) + eps):
            a, b = b, a
            xi, eta = eta, xi
            m0, m1, m2 = [-v for v in m1], [-v for v in m0], [-v for v in m2]
        # N2: B <= C, and |eta| <= |zeta| when B = C.
        if b > c + eps or (abs(b - c) <= eps and abs(eta) > abs(zeta) + eps):
            b, c = c, b
            eta, zeta = zeta, eta
            m0, m1, m2 = [-v for v in m0], [-v for v in m2], [-v for v in m1]
            continue
        # N3/N4: xi, eta, zeta all positive (type I) or all non-positive (type II),
        # reached by sign changes of whole vectors with i*j*k = +1 (so xi' = i*xi ...).
        ls, ms, ns = _sign_eps(xi, eps), _sign_eps(eta, eps), _sign_eps(zeta, eps)
        if ls * ms * ns == 1:
            i, j, k = ls, ms, ns
        else:
            i = -1 if ls == 1 else 1
            j = -1 if ms == 1 else 1
            k = -1 if ns == 1 else 1
            if i * j * k == -1:
                if ls == 0:
                    i = -i
                elif ms == 0:
                    j = -j
                else:
                    k = -k
        if i == -1:
            m0 = [-v for v in m0]
            xi = -xi
        if j == -1:
            m1 = [-v for v in m1]
            eta = -eta
        if k == -1:
            m2 = [-v for v in m2]
            zeta = -zeta
        # N5: |xi| <= B.
        if (abs(xi) > b + eps or (abs(xi - b) <= eps and 2 * eta < zeta - eps)
                or (abs(xi + b) <= eps and zeta < -eps)):
            s = 1 if xi > 0 else -1
            c = b + c - s * xi
            eta = eta - s * zeta
            xi = xi - 2 * s * b
            m2 = [m2[t] - s * m1[t] for t in range(3)]
            continue
        # N6: |eta| <= A.
        if (abs(eta) > a + eps or (abs(eta - a) <= eps and 2 * xi < zeta - eps)
                or (abs(eta + a) <= eps and zeta < -eps)):
            s = 1 if eta > 0 else -1
            c = a + c - s * eta
            xi = xi - s * zeta
            eta = eta - 2 * s * a
            m2 = [m2[t] - s * m0[t] for t in range(3)]
            continue
        # N7: |zeta| <= A.
        if (abs(zeta) > a + eps or (abs(zeta - a) <= eps and 2 * xi < eta - eps)
                or (abs(zeta + a) <= eps and eta < -eps)):
            s = 1 if zeta > 0 else -1
            b = a + b - s * zeta
            xi = xi - s * eta
            zeta = zeta - 2 * s * a
            m1 = [m1[t] - s * m0[t] for t in range(3)]
            continue
        # N8: xi + eta + zeta + A + B >= 0.
        t8 = xi + eta + zeta + a + b
        if t8 < -eps or (abs(t8) <= eps and 2 * (a + eta) + zeta > eps):
            c = a + b + c + xi + eta + zeta
            xi = 2 * b + xi + zeta
            eta = 2 * a + eta + zeta
            m2 = [m2[t] + m0[t] + m1[t] for t in range(3)]
            continue
        return [m0, m1, m2]
    raise RuntimeError(f"Niggli reduction did not converge in {max_iter} iterations")


def niggli_reduce(basis, *, tol: float = 1e-5):
    """Niggli-reduce a direct basis.

    Parameters
    ----------
    basis : array_like, shape (3, 3)
        Direct basis vectors as rows (Å), any orientation, treated as primitive (use
        :func:`to_primitive` first for a centred cell).
    tol : float, optional
        Relative tolerance of the comparisons; the absolute epsilon is
        ``tol * V**(2/3)`` in Å² for a cell of volume V.

    Returns
    -------
    reduced_basis : numpy.ndarray, shape (3, 3)
        ``M @ basis``: the Niggli cell, in the same (lab) frame as ``basis``.
    M : numpy.ndarray, shape (3, 3), int
        Unimodular integer matrix with ``det(M) = +1``, so the reduced basis has the
        handedness of the input (right-handed in, right-handed out).

    Raises
    ------
    ValueError
        If the basis is not 3×3, not finite or degenerate.

    Notes
    -----
    The Křivý & Gruber (1976) algorithm on the G6 vector ``(A, B, C, ξ, η, ζ)``, with every
    comparison made with an epsilon as in Grosse-Kunstleve, Sauter & Adams (2004), so that
    cells on the boundaries of the Niggli conditions (right angles, equal edges) reduce
    stably. Each step is applied to the basis through an integer matrix of determinant +1.
    A pairwise size reduction runs first so that strongly skewed bases converge in a few
    steps. The Niggli cell is unique: every basis of the same lattice gives the same G6
    vector (:func:`g6_from_basis` of ``reduced_basis``).

    Examples
    --------
    >>> basis = np.array([[10.0, 0, 0], [30.0, 10.0, 0], [10.0, 10.0, 10.0]])
    >>> reduced, m = niggli_reduce(basis)
    >>> g6_from_basis(reduced).round(6).tolist()
    [100.0, 100.0, 100.0, 0.0, 0.0, 0.0]
    >>> int(round(np.linalg.det(m)))
    1
    """
    b = _as_basis(basis)
    m = np.array(_niggli_matrix(b, float(tol)), dtype=np.int64)
    return m @ b, m


@dataclass(frozen=True)
class UnitCell:
    """A unit cell with optional symmetry.

    Parameters
    ----------
    a, b, c : float
        Cell edges in Å.
    alpha, beta, gamma : float
        Cell angles in degrees.
    space_group : str, optional
        Space-group symbol understood by gemmi (e.g. ``"P 43 21 2"``, ``"P43212"``);
        sets ``lattice_type``, ``centering`` and ``unique_axis`` when they are not given.
    lattice_type : str, optional
        One of :data:`LATTICE_TYPES` (CrystFEL naming; trigonal space groups in the
        hexagonal setting are ``hexagonal``, rhombohedral setting ``rhombohedral``).
    centering : str, optional
        One of ``P A B C I F R H``. ``R`` with a ``hexagonal`` (or unset) lattice type is
        the obverse hexagonal-axes cell of a rhombohedral lattice (gemmi's ``R 3``), as is
        CrystFEL's ``H``; ``R`` with the ``rhombohedral`` lattice type is the primitive
        rhombohedral cell (``R 3:R``, whose space group is kept as ``"R 3:R"``).
    unique_axis : str, optional
        ``a``, ``b`` or ``c`` for monoclinic, tetragonal and hexagonal lattices.

    Examples
    --------
    >>> cell = UnitCell(79.1, 79.1, 37.9, 90, 90, 90, space_group="P 43 21 2")
    >>> cell.lattice_type, cell.centering, cell.unique_axis
    ('tetragonal', 'P', 'c')
    >>> round(cell.d_spacing([1, 0, 0]), 2)
    79.1
    """

    a: float
    b: float
    c: float
    alpha: float = 90.0
    beta: float = 90.0
    gamma: float = 90.0
    space_group: str | None = None
    lattice_type: str | None = None
    centering: str | None = None
    unique_axis: str | None = None

    def __post_init__(self):
        for name in ("a", "b", "c", "alpha", "beta", "gamma"):
            v = float(getattr(self, name))
            if not np.isfinite(v) or v <= 0:
                raise ValueError(f"cell parameter {name} must be positive, got {v}")
            object.__setattr__(self, name, v)
        if not (self.alpha + self.beta + self.gamma < 360.0):
            raise ValueError("cell angles must sum to less than 360°")
        if self.space_group is not None:
            sg = find_space_group(self.space_group)
            rhombohedral_axes = sg.ext == "R"
            object.__setattr__(self, "space_group", sg.xhm() if rhombohedral_axes else sg.hm)
            if self.centering is None:
                cen = "R" if rhombohedral_axes else sg.centring_type()
                object.__setattr__(self, "centering", cen)
            if self.lattice_type is None:
                lat = _CRYSTAL_SYSTEM_TO_LATTICE[sg.crystal_system_str()]
                if rhombohedral_axes:
                    lat = "rhombohedral"
                object.__setattr__(self, "lattice_type", lat)
            if self.unique_axis is None and self.lattice_type in (
                "monoclinic",
                "tetragonal",
                "hexagonal",
            ):
                ua = "b" if self.lattice_type == "monoclinic" else "c"
                if self.lattice_type == "monoclinic":
                    q = sg.qualifier.lstrip("-")[:1] if sg.qualifier else ""
                    ua = q if q in ("a", "b", "c") else "b"
                object.__setattr__(self, "unique_axis", ua)
        if self.lattice_type is not None and self.lattice_type not in LATTICE_TYPES:
            raise ValueError(f"unknown lattice type {self.lattice_type!r}")
        if self.centering is not None and self.centering not in "PABCIFRH":
            raise ValueError(f"unknown centering {self.centering!r}")
        if self.unique_axis is not None and self.unique_axis not in ("a", "b", "c"):
            raise ValueError(f"unique axis must be a, b or c, got {self.unique_axis!r}")

    # ------------------------------------------------------------------ bases
    @property
    def parameters(self) -> tuple[float, float, float, float, float, float]:
        return (self.a, self.b, self.c, self.alpha, self.beta, self.gamma)

    @property
    def direct_basis(self) -> np.ndarray:
        """Rows a, b, c in Å (a along x, b in the x–y plane)."""
        al, be, ga = np.deg2rad([self.alpha, self.beta, self.gamma])
        ca, cb, cg, sg = np.cos(al), np.cos(be), np.cos(ga), np.sin(ga)
        cx = self.c * cb
        cy = self.c * (ca - cb * cg) / sg
        cz = np.sqrt(max(self.c**2 - cx**2 - cy**2, 0.0))
        return np.array(
            [[self.a, 0.0, 0.0], [self.b * cg, self.b * sg, 0.0], [cx, cy, cz]]
        )

    @property
    def reciprocal_basis(self) -> np.ndarray:
        """Rows a*, b*, c* in 1/Å (no 2π)."""
        return np.linalg.inv(self.direct_basis).T

    @property
    def volume(self) -> float:
        """Cell volume in Å³."""
        return float(abs(np.linalg.det(self.direct_basis)))

    def d_spacing(self, hkl) -> np.ndarray | float:
        """Resolution d (Å) of reflections ``hkl`` (shape (3,) or (n, 3))."""
        h = np.asarray(hkl, dtype=float)
        q = h @ self.reciprocal_basis
        with np.errstate(divide="ignore"):
            d = 1.0 / np.linalg.norm(q, axis=-1)
        return float(d) if np.ndim(d) == 0 else d

    @property
    def multiplicity(self) -> int:
        """Lattice points per cell: 1 (P, rhombohedral R), 2 (A B C I), 3 (R, H), 4 (F)."""
        return _MULTIPLICITY[_centering_key(self.centering, self.lattice_type)]

    def g6(self) -> np.ndarray:
        """G6 vector ``(a², b², c², 2bc cos α, 2ac cos β, 2ab cos γ)`` of this cell (Å²).

        Examples
        --------
        >>> UnitCell(10, 20, 30, 90, 90, 120).g6().round(6).tolist()
        [100.0, 400.0, 900.0, 0.0, 0.0, -200.0]
        """
        ca, cb, cg = np.cos(np.deg2rad([self.alpha, self.beta, self.gamma]))
        return np.array([self.a**2, self.b**2, self.c**2, 2 * self.b * self.c * ca,
                         2 * self.a * self.c * cb, 2 * self.a * self.b * cg])

    def to_primitive(self) -> tuple[UnitCell, np.ndarray]:
        """Primitive cell of this cell's lattice and the matrix that makes it.

        Returns
        -------
        cell : UnitCell
            Parameters of ``U @ direct_basis``, without space group; lattice type and
            centering describe the new setting as CrystFEL does (A/B/C orthorhombic →
            monoclinic P, I/F cubic and R/H → rhombohedral R, other centred → triclinic P).
        U : numpy.ndarray, shape (3, 3)
            :func:`uncentering_matrix` of this cell's centering.

        Examples
        --------
        >>> p, u = UnitCell(50.0, 50.0, 150.0, 90, 90, 120, space_group="R 3").to_primitive()
        >>> p.lattice_type, p.centering, round(p.a, 3), round(p.alpha, 3)
        ('rhombohedral', 'R', 57.735, 51.318)
        """
        key = _centering_key(self.centering, self.lattice_type)
        if key == "P":
            return UnitCell(*self.parameters, lattice_type=self.lattice_type,
                            centering=self.centering, unique_axis=self.unique_axis), np.eye(3)
        u = uncentering_matrix(key)
        unique = None
        if key == "R" or (key in "IF" and self.lattice_type == "cubic"):
            lattice, cen = "rhombohedral", "R"
        elif key in "ABC" and self.lattice_type == "orthorhombic":
            lattice, cen, unique = "monoclinic", "P", key.lower()
        else:
            lattice, cen = "triclinic", "P"
        cell = UnitCell.from_direct_basis(u @ self.direct_basis, lattice_type=lattice,
                                          centering=cen, unique_axis=unique)
        return cell, u

    def primitive(self) -> UnitCell:
        """Primitive cell of this cell's lattice (first item of :meth:`to_primitive`).

        Examples
        --------
        >>> p = UnitCell(78.0, 78.0, 78.0, space_group="I 2 3").primitive()
        >>> round(p.a, 3), round(p.alpha, 2)
        (67.55, 109.47)
        """
        return self.to_primitive()[0]

    def niggli(self, *, tol: float = 1e-5) -> UnitCell:
        """Niggli cell of this cell's lattice (its primitive cell, reduced).

        Parameters
        ----------
        tol : float, optional
            Relative tolerance of :func:`niggli_reduce`.

        Returns
        -------
        UnitCell
            Triclinic P cell with the unique Niggli parameters of the lattice.

        Examples
        --------
        >>> UnitCell(79.1, 79.1, 37.9, 90, 90, 90).niggli()
        UnitCell(37.900, 79.100, 79.100, 90.00, 90.00, 90.00)
        >>> f = UnitCell(100.0, 100.0, 100.0, space_group="F 2 3").niggli()
        >>> round(f.a, 3), round(f.alpha, 2)
        (70.711, 60.0)
        """
        prim, _ = to_primitive(self.direct_basis, self.centering or "P",
                               lattice_type=self.lattice_type)
        reduced, _ = niggli_reduce(prim, tol=tol)
        return UnitCell.from_direct_basis(reduced, lattice_type="triclinic", centering="P")

    # ----------------------------------------------------------------- gemmi
    def to_gemmi(self):
        """``gemmi.UnitCell`` with the same parameters."""
        import gemmi

        return gemmi.UnitCell(*self.parameters)

    def gemmi_space_group(self):
        """``gemmi.SpaceGroup`` or None."""
        return find_space_group(self.space_group)

    @classmethod
    def from_gemmi(cls, cell, space_group=None) -> UnitCell:
        """Build from a ``gemmi.UnitCell`` (and optional ``gemmi.SpaceGroup`` or name)."""
        sg = None
        if space_group is not None:
            sg = space_group.hm if hasattr(space_group, "hm") else str(space_group)
        return cls(cell.a, cell.b, cell.c, cell.alpha, cell.beta, cell.gamma, space_group=sg)

    @classmethod
    def from_reciprocal_basis(cls, astar, **kwargs) -> UnitCell:
        """Cell parameters of a reciprocal basis (rows a*, b*, c* in 1/Å, any orientation)."""
        direct = np.linalg.inv(np.asarray(astar, dtype=float)).T
        return cls.from_direct_basis(direct, **kwargs)

    @classmethod
    def from_direct_basis(cls, basis, **kwargs) -> UnitCell:
        """Cell parameters of a direct basis (rows a, b, c in Å, any orientation)."""
        return cls(*_parameters_from_basis(basis), **kwargs)

    # --------------------------------------------------------------- display
    def __repr__(self) -> str:
        sym = f" {self.space_group}" if self.space_group else ""
        return (
            f"UnitCell({self.a:.3f}, {self.b:.3f}, {self.c:.3f}, {self.alpha:.2f}, "
            f"{self.beta:.2f}, {self.gamma:.2f}{sym})"
        )

    def _repr_html_(self) -> str:
        sym = html.escape(self.space_group or "—")
        lat = html.escape(
            f"{self.lattice_type or '?'} {self.centering or '?'}"
            + (f", unique axis {self.unique_axis}" if self.unique_axis else "")
        )
        return (
            "<table><tr><th>a (Å)</th><th>b (Å)</th><th>c (Å)</th><th>α (°)</th>"
            "<th>β (°)</th><th>γ (°)</th><th>space group</th><th>lattice</th>"
            f"<th>V (Å³)</th></tr><tr><td>{self.a:.3f}</td><td>{self.b:.3f}</td>"
            f"<td>{self.c:.3f}</td><td>{self.alpha:.2f}</td><td>{self.beta:.2f}</td>"
            f"<td>{self.gamma:.2f}</td><td>{sym}</td><td>{lat}</td>"
            f"<td>{self.volume:.0f}</td></tr></table>"
        )


# ---------------------------------------------------------------------- comparison
@functools.lru_cache(maxsize=128)
def _coefficient_grid(k0: int, k1: int, k2: int) -> np.ndarray:
    """All integer triples in the box ``|x_i| <= k_i`` except zero, shape (n, 3), as floats."""
    axes = [np.arange(-k, k + 1) for k in (k0, k1, k2)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    grid = grid[np.any(grid != 0, axis=1)].astype(np.float64)
    grid.setflags(write=False)
    return grid


@dataclass(frozen=True, eq=False)
class CellMatch:
    """The setting of a found basis that matches a reference cell.

    Attributes
    ----------
    matrix : numpy.ndarray, shape (3, 3)
        ``T`` with ``basis = T @ found_basis``. Integer valued when the found basis is
        primitive (``det(T)`` is then the reference's lattice points per cell); for a
        found basis given with a centering, multiples of 1/2 or 1/3.
    basis : numpy.ndarray, shape (3, 3)
        Direct basis in the reference setting, rows a, b, c (Å), in the frame of the found
        basis (the lab frame for an indexer's basis); always right-handed.
    cell : UnitCell
        Parameters of ``basis`` with the reference's space group, lattice type, centering
        and unique axis.
    length_dev : float
        Largest relative deviation of a, b, c from the reference (fraction, 0.01 = 1 %).
    angle_dev_deg : float
        Largest absolute deviation of α, β, γ from the reference (degrees).

    Notes
    -----
    Miller indices of the found basis map to the reference setting as
    ``hkl_ref = hkl_found @ matrix.T``; :attr:`reciprocal_basis` gives a*, b*, c*.
    """

    matrix: np.ndarray
    basis: np.ndarray
    cell: UnitCell
    length_dev: float
    angle_dev_deg: float

    def __post_init__(self):
        for name in ("matrix", "basis"):
            value = np.array(getattr(self, name), dtype=float)
            value.setflags(write=False)
            object.__setattr__(self, name, value)

    @property
    def reciprocal_basis(self) -> np.ndarray:
        """Rows a*, b*, c* (1/Å, no 2π) of :attr:`basis`."""
        return np.linalg.inv(self.basis).T

    def __repr__(self) -> str:
        return (f"CellMatch({self.cell!r}, length_dev={self.length_dev:.4f}, "
                f"angle_dev_deg={self.angle_dev_deg:.3f})")


class CellMatcher:
    """Prepared comparison of found bases with one reference cell.

    Parameters
    ----------
    reference : UnitCell
        Target cell in its conventional setting; its centering (and lattice type, for
        ``R``) sets the number of lattice points per cell.
    length_tol : float, optional
        Largest allowed relative deviation of each of a, b, c (default 0.05, i.e. 5 %).
    angle_tol_deg : float, optional
        Largest allowed deviation of each of α, β, γ in degrees (default 1.5).
    allow_reindex : bool, optional
        If False, the found basis must already be in the reference setting: only ``T = I``
        (or ``−I`` to make it right-handed) is tried.

    Notes
    -----
    Per reference (once): the reference lengths, the cosine windows of its angles, its
    primitive volume and the volume window the tolerances allow.

    Per found basis (:meth:`__call__`):

    1. make it primitive (with the given centering) and reject it if its volume is
       outside the window (a supercell or subcell of the reference lattice);
    2. Niggli-reduce it (:func:`niggli_reduce`), which makes the coefficients of every
       short lattice vector small;
    3. enumerate every lattice vector whose length matches a reference edge within
       ``length_tol`` (coefficients bounded through the reciprocal Niggli vectors, so the
       enumeration is exhaustive);
    4. form triples with the three reference angles within ``angle_tol_deg`` whose integer
       coefficient determinant equals the reference's lattice points per cell, with the
       sign that makes the basis right-handed;
    5. keep the triple with the smallest ``Σ(δl/length_tol)² + Σ(δα/angle_tol)²``. Exact
       ties (settings related by the lattice symmetry, e.g. a and b of a tetragonal cell)
       go to the matrix closest to the identity, then to the lexicographically largest
       matrix, so the result is deterministic.

    Comparing Niggli cells directly would fail near the boundaries of the Niggli domain
    (right angles, equal edges), where a small error switches between different reduced
    forms; the exhaustive search in step 3 and 4 has no such boundary. Ambiguities that
    the lattice cannot resolve (e.g. P 4 versus its twin setting) are not resolved here.

    Examples
    --------
    >>> ref = UnitCell(46.2, 103.0, 128.7, 90, 90, 90, space_group="C 2 2 21")
    >>> matcher = CellMatcher(ref)
    >>> prim = uncentering_matrix("C") @ ref.direct_basis
    >>> m = matcher(prim)
    >>> m.matrix
    array([[ 1., -1.,  0.],
           [ 1.,  1.,  0.],
           [ 0.,  0.,  1.]])
    >>> np.round(m.cell.parameters, 3).tolist()
    [46.2, 103.0, 128.7, 90.0, 90.0, 90.0]
    """

    def __init__(self, reference: UnitCell, *, length_tol: float = 0.05,
                 angle_tol_deg: float = 1.5, allow_reindex: bool = True):
        if not isinstance(reference, UnitCell):
            raise TypeError(f"reference must be a UnitCell, got {type(reference).__name__}")
        if not 0 < length_tol < 0.5:
            raise ValueError(f"length_tol must be in (0, 0.5), got {length_tol}")
        if not 0 < angle_tol_deg < 30:
            raise ValueError(f"angle_tol_deg must be in (0, 30), got {angle_tol_deg}")
        self.reference = reference
        self.length_tol = float(length_tol)
        self.angle_tol_deg = float(angle_tol_deg)
        self.allow_reindex = bool(allow_reindex)
        self._symmetry = {
            "space_group": reference.space_group,
            "lattice_type": reference.lattice_type,
            "centering": reference.centering,
            "unique_axis": reference.unique_axis,
        }
        self._lengths = np.array([reference.a, reference.b, reference.c])
        # Reference angles ordered as the pairs (a, b), (a, c), (b, c): gamma, beta, alpha.
        self._pair_angles = np.array([reference.gamma, reference.beta, reference.alpha])
        lo = np.deg2rad(np.minimum(self._pair_angles + self.angle_tol_deg, 180.0))
        hi = np.deg2rad(np.maximum(self._pair_angles - self.angle_tol_deg, 0.0))
        self._cos_lo = np.cos(lo) - 1e-12
        self._cos_hi = np.cos(hi) + 1e-12
        self._n_points = reference.multiplicity
        self._primitive_volume = reference.volume / self._n_points
        self._max_length = float(self._lengths.max() * (1.0 + self.length_tol))
        self._volume_window = self._volume_bounds()

    def _volume_bounds(self) -> tuple[float, float]:
        """Range of V / V_ref that cells within the tolerances can reach (with margin)."""
        base = np.deg2rad([self.reference.alpha, self.reference.beta, self.reference.gamma])
        steps = np.deg2rad(self.angle_tol_deg) * np.array([-1.0, 0.0, 1.0])
        ang = np.stack(np.meshgrid(steps, steps, steps, indexing="ij"), -1).reshape(-1, 3) + base
        ang = np.clip(ang, 1e-6, np.pi - 1e-6)
        c = np.cos(ang)
        f = 1 - (c**2).sum(1) + 2 * c.prod(1)
        f0 = f[len(f) // 2]
        ratio = np.sqrt(np.clip(f, 0.0, None) / f0)
        lt = self.length_tol
        return (float((1 - lt) ** 3 * ratio.min() * 0.98),
                float((1 + lt) ** 3 * ratio.max() * 1.02))

    def __repr__(self) -> str:
        return (f"CellMatcher({self.reference!r}, length_tol={self.length_tol}, "
                f"angle_tol_deg={self.angle_tol_deg}, allow_reindex={self.allow_reindex})")

    # ---------------------------------------------------------------- per frame
    def __call__(self, basis, *, centering: str = "P") -> CellMatch | None:
        """Find the setting of ``basis`` that matches the reference.

        Parameters
        ----------
        basis : array_like, shape (3, 3)
            Found direct basis, rows a, b, c (Å), any frame, setting and handedness.
        centering : str, optional
            Centering of ``basis`` (``"P"`` for the primitive basis an indexer such as
            asdf returns; ``A B C I F R H`` for a centred basis from another program).

        Returns
        -------
        CellMatch or None
            The best matching setting, or None when no basis of the found lattice has the
            reference's parameters within the tolerances.
        """
        found = _as_basis(basis, "found basis")
        if not self.allow_reindex:
            return self._match_direct(found)
        rows, den = _UNCENTERING[_centering_key(centering)]
        u_int = np.array(rows, dtype=np.int64)
        prim = (u_int @ found) / den
        det_prim = float(np.linalg.det(prim))
        ratio = abs(det_prim) / self._primitive_volume
        if not self._volume_window[0] <= ratio <= self._volume_window[1]:
            return None
        m = np.array(_niggli_matrix(prim, 1e-5), dtype=np.int64)
        reduced = m @ prim
        g = reduced @ reduced.T
        bounds = np.floor(self._max_length * np.sqrt(np.diag(np.linalg.inv(g))) + 1e-9)
        k = tuple(int(v) for v in bounds)
        if (2 * k[0] + 1) * (2 * k[1] + 1) * (2 * k[2] + 1) > 400_000:
            return None
        x = _coefficient_grid(*k)
        lengths = np.sqrt(((x @ g) * x).sum(axis=1))
        idx = []
        for i in range(3):
            sel = np.flatnonzero(np.abs(lengths - self._lengths[i])
                                 <= self.length_tol * self._lengths[i])
            if sel.size == 0:
                return None
            idx.append(sel)
        units = [(x[s] @ reduced) / lengths[s, None] for s in idx]
        cos_ab = units[0] @ units[1].T
        pa, pb = np.nonzero((cos_ab >= self._cos_lo[0]) & (cos_ab <= self._cos_hi[0]))
        if pa.size == 0:
            return None
        cos_ac = units[0][pa] @ units[2].T
        cos_bc = units[1][pb] @ units[2].T
        ok = ((cos_ac >= self._cos_lo[1]) & (cos_ac <= self._cos_hi[1])
              & (cos_bc >= self._cos_lo[2]) & (cos_bc <= self._cos_hi[2]))
        p, kc = np.nonzero(ok)
        if p.size == 0:
            return None
        ia, ib, ic = idx[0][pa[p]], idx[1][pb[p]], idx[2][kc]
        xa, xb, xc = x[ia], x[ib], x[ic]
        det = (xa[:, 0] * (xb[:, 1] * xc[:, 2] - xb[:, 2] * xc[:, 1])
               + xa[:, 1] * (xb[:, 2] * xc[:, 0] - xb[:, 0] * xc[:, 2])
               + xa[:, 2] * (xb[:, 0] * xc[:, 1] - xb[:, 1] * xc[:, 0]))
        want = self._n_points if det_prim > 0 else -self._n_points
        keep = np.abs(det - want) < 0.5
        if not keep.any():
            return None
        ia, ib, ic = ia[keep], ib[keep], ic[keep]
        cosines = np.stack([cos_ab[pa[p], pb[p]][keep], cos_ac[p, kc][keep],
                            cos_bc[p, kc][keep]], axis=1)
        angle_dev = np.degrees(np.arccos(np.clip(cosines, -1.0, 1.0))) - self._pair_angles
        length_dev = np.stack([lengths[ia], lengths[ib], lengths[ic]], axis=1) / self._lengths - 1
        score = (((length_dev / self.length_tol) ** 2).sum(1)
                 + ((angle_dev / self.angle_tol_deg) ** 2).sum(1))
        tied = np.flatnonzero(score <= score.min() + 1e-9)
        coeff = np.stack([x[ia[tied]], x[ib[tied]], x[ic[tied]]], axis=1).astype(np.int64)
        t_int = coeff @ (m @ u_int)  # T * den, integer
        if tied.size > 1:
            dist = ((t_int - den * np.eye(3, dtype=np.int64)) ** 2).sum(axis=(1, 2))
            flat = t_int.reshape(len(tied), 9)
            order = np.lexsort(tuple(-flat[:, j] for j in range(8, -1, -1)) + (dist,))
            best = order[0]
        else:
            best = 0
        t = t_int[best] / den
        choice = tied[best]
        new_basis = t @ found
        return CellMatch(
            matrix=t,
            basis=new_basis,
            cell=UnitCell.from_direct_basis(new_basis, **self._symmetry),
            length_dev=float(np.abs(length_dev[choice]).max()),
            angle_dev_deg=float(np.abs(angle_dev[choice]).max()),
        )

    def _match_direct(self, found: np.ndarray) -> CellMatch | None:
        sign = 1.0 if np.linalg.det(found) > 0 else -1.0
        basis = sign * found
        cell = UnitCell.from_direct_basis(basis, **self._symmetry)
        length_dev = np.abs(np.array([cell.a, cell.b, cell.c]) / self._lengths - 1).max()
        angle_dev = np.abs(np.array([cell.gamma, cell.beta, cell.alpha])
                           - self._pair_angles).max()
        if length_dev > self.length_tol or angle_dev > self.angle_tol_deg:
            return None
        return CellMatch(matrix=sign * np.eye(3), basis=basis, cell=cell,
                         length_dev=float(length_dev), angle_dev_deg=float(angle_dev))


def match_cell(found_basis, reference: UnitCell, *, length_tol: float = 0.05,
               angle_tol_deg: float = 1.5, allow_reindex: bool = True,
               centering: str = "P") -> CellMatch | None:
    """Find the setting of a found basis that matches a reference cell.

    Convenience wrapper of :class:`CellMatcher`; build one ``CellMatcher`` and call it for
    every frame when matching many bases against the same reference.

    Parameters
    ----------
    found_basis : array_like, shape (3, 3)
        Direct basis, rows a, b, c (Å), e.g. in the lab frame as an indexer returns it:
        any setting (primitive for a centred lattice, not reduced) and either handedness.
    reference : UnitCell
        Target cell in its conventional setting.
    length_tol : float, optional
        Relative tolerance on a, b, c (default 0.05).
    angle_tol_deg : float, optional
        Tolerance on α, β, γ in degrees (default 1.5).
    allow_reindex : bool, optional
        If False, only the found basis itself (or its negative) is compared.
    centering : str, optional
        Centering of ``found_basis`` (default ``"P"``).

    Returns
    -------
    CellMatch or None
        ``matrix`` T with ``basis = T @ found_basis`` right-handed and within tolerance of
        the reference, or None.

    Examples
    --------
    >>> ref = UnitCell(79.1, 79.1, 37.9, 90, 90, 90, space_group="P 43 21 2")
    >>> found = np.array([[1, 1, 0], [0, 1, 0], [0, 1, -1]]) @ ref.direct_basis
    >>> m = match_cell(found, ref)
    >>> m.matrix
    array([[ 0., -1.,  0.],
           [-1.,  1.,  0.],
           [ 0., -1.,  1.]])
    >>> np.round(m.cell.parameters, 3).tolist(), m.cell.space_group
    ([79.1, 79.1, 37.9, 90.0, 90.0, 90.0], 'P 43 21 2')
    >>> bool(np.linalg.det(m.basis) > 0)
    True
    >>> match_cell(found * 1.08, ref) is None
    True
    """
    matcher = CellMatcher(reference, length_tol=length_tol, angle_tol_deg=angle_tol_deg,
                          allow_reindex=allow_reindex)
    return matcher(found_basis, centering=centering)


def cells_equivalent(a: UnitCell, b: UnitCell, *, length_tol: float = 0.05,
                     angle_tol_deg: float = 1.5) -> bool:
    """Whether two cells describe the same lattice within tolerances, in any setting.

    Parameters
    ----------
    a, b : UnitCell
        Cells with their centerings; ``b`` is the reference: true if some basis of
        ``a``'s lattice has ``b``'s parameters within the tolerances.
    length_tol : float, optional
        Relative tolerance on the edges (default 0.05).
    angle_tol_deg : float, optional
        Tolerance on the angles in degrees (default 1.5).

    Returns
    -------
    bool

    Examples
    --------
    >>> hexagonal = UnitCell(50.0, 50.0, 150.0, 90, 90, 120, space_group="R 3")
    >>> cells_equivalent(hexagonal.primitive(), hexagonal)
    True
    >>> cells_equivalent(UnitCell(50.0, 50.0, 150.0, 90, 90, 120), hexagonal)
    False
    """
    cen = _centering_key(a.centering, a.lattice_type)
    matcher = CellMatcher(b, length_tol=length_tol, angle_tol_deg=angle_tol_deg)
    return matcher(a.direct_basis, centering=cen) is not None
