"""Refinement of a crystal's reciprocal basis against its peaks, and the peak check.

Conventions as in :mod:`sxlab.simulate`: a crystal's reciprocal basis in the lab frame is
``A = B Uᵀ`` (rows a*, b*, c* in 1/Å, no 2π), with ``B`` the reciprocal basis of the cell
in the standard orthogonal setting (:attr:`sxlab.cell.UnitCell.reciprocal_basis`) and ``U``
a rotation; reflection ``hkl`` sits at ``g = hkl @ A``. The incident beam is ``k ẑ`` with
``k = 1/λ``.

Residual
--------
A peak's scattering vector ``q`` is computed at the nominal wavelength on the Ewald sphere,
so it differs from its lattice point ``g`` mostly along the diffracted ray
``u = (q + k ẑ) / |q + k ẑ|``: a lattice point at excitation error ``s`` is seen where the
ray from the sphere's centre through it meets the sphere, ``s`` away from it along ``u``.
The refinement minimises

``Σ |r - (1 - w) (r · u) u|²,  r = q - hkl @ A``

over the peaks whose fractional indices are all within ``tol`` of integers: the component of
the residual across the ray (what the detector position measures) with full weight, the
excitation-error component along the ray with weight ``w`` (``excitation_weight``;
``w = 1`` is the plain distance to the nearest lattice point). Indices are reassigned and
the fit repeated ``n_cycles`` times; each fit is a Gauss–Newton iteration with analytic
derivatives for the orientation and numerical ones for the cell parameters.

Models (``mode``):

``"orientation"``
    Three rotation angles; the cell stays as given.
``"isotropic"``
    Rotation and one overall scale of the cell.
``"lattice"``
    Rotation and the free parameters of the lattice type (cubic a; tetragonal and
    hexagonal a, c; rhombohedral a, α; orthorhombic a, b, c; monoclinic a, b, c and the
    angle of the unique axis; triclinic all six), so the refined cell keeps the lattice
    symmetry.
``"unconstrained"``
    The nine elements of ``A`` (a linear least-squares problem).
"""

from __future__ import annotations

import numpy as np

from ..reciprocal import assign_indices, nearest_rotation, rotation_matrix

__all__ = [
    "REFINE_MODES",
    "RefineResult",
    "refine_basis",
]

REFINE_MODES = ("orientation", "isotropic", "lattice", "unconstrained")

_LENGTH_SLOT = {"a": 0, "b": 1, "c": 2}


# ------------------------------------------------------------------------ cell models
def _cell_template(lattice: str, unique: str | None):
    """(free-parameter indices into (a, b, c, α, β, γ), function p -> 6 parameters)."""
    ua = _LENGTH_SLOT.get(unique or "c", 2)
    others = [i for i in range(3) if i != ua]
    if lattice == "cubic":
        return lambda c6: np.array([c6[:3].mean()]), lambda p: np.array(
            [p[0], p[0], p[0], 90.0, 90.0, 90.0])
    if lattice in ("tetragonal", "hexagonal"):
        gamma = 120.0 if lattice == "hexagonal" else 90.0

        def expand(p):
            out = np.array([p[0], p[0], p[0], 90.0, 90.0, 90.0])
            out[ua] = p[1]
            out[3 + ua] = gamma
            return out

        return lambda c6: np.array([c6[others].mean(), c6[ua]]), expand
    if lattice == "rhombohedral":
        return lambda c6: np.array([c6[:3].mean(), c6[3:].mean()]), lambda p: np.array(
            [p[0], p[0], p[0], p[1], p[1], p[1]])
    if lattice == "orthorhombic":
        return lambda c6: c6[:3].copy(), lambda p: np.array([p[0], p[1], p[2], 90, 90, 90.0])
    if lattice == "monoclinic":
        def expand_m(p):
            out = np.array([p[0], p[1], p[2], 90.0, 90.0, 90.0])
            out[3 + ua] = p[3]
            return out

        return lambda c6: np.array([c6[0], c6[1], c6[2], c6[3 + ua]]), expand_m
    return lambda c6: np.asarray(c6, dtype=float).copy(), lambda p: np.asarray(p, dtype=float)


def _reciprocal(c6: np.ndarray) -> np.ndarray:
    """Reciprocal basis (rows, 1/Å) of cell parameters in the standard setting."""
    a, b, c = c6[:3]
    ca, cb, cg = np.cos(np.deg2rad(c6[3:]))
    sg = np.sin(np.deg2rad(c6[5]))
    cx = c * cb
    cy = c * (ca - cb * cg) / sg
    cz = np.sqrt(max(c * c - cx * cx - cy * cy, 1e-12))
    direct = np.array([[a, 0.0, 0.0], [b * cg, b * sg, 0.0], [cx, cy, cz]])
    return np.linalg.inv(direct).T


def _cell_of(astar: np.ndarray) -> np.ndarray:
    d = np.linalg.inv(astar).T
    lengths = np.linalg.norm(d, axis=1)

    def ang(i, j):
        return np.degrees(np.arccos(np.clip(d[i] @ d[j] / (lengths[i] * lengths[j]), -1, 1)))

    return np.array([*lengths, ang(1, 2), ang(0, 2), ang(0, 1)])


class RefineResult:
    """Outcome of :func:`refine_basis`.

    Attributes
    ----------
    astar : ndarray (3, 3)
        Refined reciprocal basis (rows a*, b*, c*, 1/Å, lab frame).
    parameters : tuple of 6 floats
        Its cell parameters ``(a, b, c, α, β, γ)`` (Å, degrees), as the model has them
        (constrained ones exactly equal).
    hkl : ndarray of int64 (n, 3)
        Indices of every point with the refined basis.
    indexed : ndarray of bool (n,)
        Points indexed within the tolerance.
    residual : float
        RMS ``|q - hkl @ A|`` of the indexed points (1/Å).
    """

    __slots__ = ("astar", "parameters", "hkl", "indexed", "residual")

    def __init__(self, astar, parameters, hkl, indexed, residual):
        self.astar = astar
        self.parameters = parameters
        self.hkl = hkl
        self.indexed = indexed
        self.residual = residual


def _weighted(r: np.ndarray, u: np.ndarray, w: float) -> np.ndarray:
    """``r - (1 - w) (r · u) u`` for arrays ``r`` (n, 3, ...) and unit rows ``u`` (n, 3)."""
    if w == 1.0:
        return r
    if r.ndim == 2:
        return r - (1.0 - w) * (r * u).sum(axis=1)[:, None] * u
    proj = np.einsum("nij,ni->nj", r, u)
    return r - (1.0 - w) * u[:, :, None] * proj[:, None, :]


def _gauss_newton(q, h, u, w, astar, mode, lattice, unique, n_iter):
    """Refine ``astar`` against fixed indices ``h``.

    Returns the new reciprocal basis and its cell parameters (exactly those of the model:
    e.g. ``a == b`` and right angles for a tetragonal lattice).
    """
    n = q.shape[0]
    if mode == "unconstrained":
        # r = q - h A, linear in A: solve the weighted normal equations for A's 9 elements.
        jac = np.zeros((n, 3, 9))
        for m in range(3):
            for c in range(3):
                jac[:, c, 3 * m + c] = h[:, m]
        jw = _weighted(jac, u, w).reshape(3 * n, 9)
        qw = _weighted(q, u, w).reshape(3 * n)
        sol, *_ = np.linalg.lstsq(jw, qw, rcond=None)
        amat = sol.reshape(3, 3)
        if not abs(np.linalg.det(amat)) > 1e-15:
            raise np.linalg.LinAlgError("singular reciprocal basis")
        return amat, _cell_of(amat)

    to_free, expand = _cell_template(lattice if mode == "lattice" else "triclinic", unique)
    c6 = _cell_of(astar)
    if mode == "lattice":
        p = to_free(c6)
        c6 = expand(p)
    b0 = _reciprocal(c6)
    rot = nearest_rotation(np.linalg.solve(b0, astar).T)  # A = B Uᵀ
    scale = 1.0
    for _ in range(n_iter):
        if mode == "lattice":
            bmat = _reciprocal(expand(p))
        else:
            bmat = b0 * scale
        amat = bmat @ rot.T
        g = h @ amat
        r = q - g
        cols = [np.stack([np.zeros(n), g[:, 2], -g[:, 1]], axis=1),
                np.stack([-g[:, 2], np.zeros(n), g[:, 0]], axis=1),
                np.stack([g[:, 1], -g[:, 0], np.zeros(n)], axis=1)]  # -(e_k × g)
        if mode == "isotropic":
            cols.append(-g / scale)
        elif mode == "lattice":
            for j in range(p.size):
                step = 1e-6 * max(abs(p[j]), 1.0)
                dp = p.copy()
                dp[j] += step
                dm = p.copy()
                dm[j] -= step
                db = (_reciprocal(expand(dp)) - _reciprocal(expand(dm))) / (2 * step)
                cols.append(-(h @ (db @ rot.T)))
        jac = np.stack(cols, axis=2)
        jw = _weighted(jac, u, w).reshape(3 * n, -1)
        rw = _weighted(r, u, w).reshape(3 * n)
        delta, *_ = np.linalg.lstsq(jw, -rw, rcond=None)
        rot = rotation_matrix(delta[:3]) @ rot
        if mode == "isotropic":
            scale += delta[3]
            params = np.array([scale])
        elif mode == "lattice":
            p = p + delta[3:]
            params = p
        else:
            params = np.zeros(0)
        if np.all(np.abs(delta) <= 1e-9 * np.maximum(1.0, np.abs(np.r_[np.zeros(3), params]))):
            break
    if mode == "lattice":
        c6 = expand(p)
        bmat = _reciprocal(c6)
    else:
        c6 = np.r_[c6[:3] / scale, c6[3:]]
        bmat = b0 * scale
    return bmat @ rot.T, c6


def refine_basis(q: np.ndarray, astar: np.ndarray, k: float, *, mode: str = "lattice",
                 lattice: str = "triclinic", unique_axis: str | None = None,
                 tol: float = 0.25, excitation_weight: float = 1.0, n_cycles: int = 3,
                 n_iter: int = 5) -> RefineResult:
    """Least-squares refinement of a reciprocal basis against peaks.

    Parameters
    ----------
    q : ndarray (n, 3)
        Scattering vectors of the peaks (1/Å) at the nominal wavenumber ``k``.
    astar : ndarray (3, 3)
        Starting reciprocal basis (rows a*, b*, c*, 1/Å, lab frame), right-handed and in
        the setting of ``lattice`` when ``mode="lattice"``.
    k : float
        Wavenumber ``1/λ`` (1/Å).
    mode : {"orientation", "isotropic", "lattice", "unconstrained"}
        What is refined (see the module notes).
    lattice : str
        Lattice type (:data:`sxlab.cell.LATTICE_TYPES`) for ``mode="lattice"``.
    unique_axis : {"a", "b", "c"} or None
        Unique axis of monoclinic, tetragonal and hexagonal lattices (default c, and b
        for monoclinic when None).
    tol : float
        Points whose fractional indices are all within ``tol`` of integers take part.
    excitation_weight : float
        Weight ``w`` of the residual component along the diffracted ray.
    n_cycles : int
        Most index assignments (each followed by a fit); the cycles stop when the
        assignment no longer changes, or when the indexed points do not span three
        dimensions or the fit fails (the basis of the last good cycle is kept).
    n_iter : int
        Gauss–Newton iterations per fit.

    Returns
    -------
    RefineResult

    Examples
    --------
    >>> from sxlab.cell import UnitCell
    >>> cell = UnitCell(50.0, 60.0, 70.0)
    >>> hkl = np.array([(h, k, l) for h in range(-3, 4) for k in range(-3, 4)
    ...                 for l in range(-3, 4)])
    >>> q = hkl @ cell.reciprocal_basis
    >>> res = refine_basis(q, cell.reciprocal_basis * 1.01, 1.0, mode="lattice",
    ...                    lattice="orthorhombic")
    >>> np.allclose(res.astar, cell.reciprocal_basis), bool(res.indexed.all())
    (True, True)
    """
    if mode not in REFINE_MODES:
        raise ValueError(f"mode must be one of {REFINE_MODES}, got {mode!r}")
    q = np.asarray(q, dtype=float)
    if unique_axis is None:
        unique_axis = "b" if lattice == "monoclinic" else "c"
    ray = q.copy()
    ray[:, 2] += k
    ray /= np.linalg.norm(ray, axis=1, keepdims=True)
    amat = np.array(astar, dtype=float)
    cell = _cell_of(amat)
    previous = None
    for _ in range(n_cycles):
        hkl, ok, _ = assign_indices(q, amat, tol)
        if np.count_nonzero(ok) < 6:
            break
        key = (ok, hkl[ok])
        if previous is not None and np.array_equal(previous[0], ok) and np.array_equal(
                previous[1], key[1]):
            break
        previous = key
        h = hkl[ok].astype(float)
        if np.linalg.matrix_rank(h) < 3:
            break  # the indexed points do not span three dimensions
        try:
            new, new_cell = _gauss_newton(q[ok], h, ray[ok], excitation_weight, amat, mode,
                                          lattice, unique_axis, n_iter)
        except np.linalg.LinAlgError:
            break
        if not np.all(np.isfinite(new)) or not abs(np.linalg.det(new)) > 1e-15:
            break
        amat, cell = new, new_cell
    hkl, ok, _ = assign_indices(q, amat, tol)
    if ok.any():
        r = q[ok] - hkl[ok] @ amat
        residual = float(np.sqrt((r * r).sum(axis=1).mean()))
    else:
        residual = float("nan")
    return RefineResult(amat, tuple(float(v) for v in cell), hkl, ok, residual)
