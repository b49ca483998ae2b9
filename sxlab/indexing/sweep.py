"""Direction sweep: lattice search with the reference cell's vector lengths.

asdf finds direct-lattice vectors from the normals of triplets of peaks; with a few tens
of peaks, some of them spurious, few triplets lie in a low-index lattice plane and the
search fails although the peaks determine the lattice. With a reference cell the lengths
of the direct-lattice vectors are known, which leaves only their directions to find
(the idea of XGANDALF, Gevorkov et al. 2019, implemented here from its description in a
cheaper form):

1. **Sweep.** For every direction ``d`` of a quasi-uniform grid on the half sphere and
   every edge length ``L`` of the reference cell, the score ``Σ_i w_i g(L q_i · d)``
   with a periodic kernel ``g`` (1 at integers, mean 0; a parabola, a cheap stand-in for
   ``cos 2π y``: the Fourier component of the points' projections at the lattice
   period) reaches ``Σ w_i`` when ``L d`` is a lattice vector. Each point's weight
   ``w_i = exp(-(π L |q_i| δ)² / 2)`` accounts for the grid spacing ``δ``: a point far
   from the origin moves through many periods within one grid cell, so the coarse grid
   sees the peak of every point, low-resolution points most sharply. All points take
   part at once; spurious ones only add noise.
2. **Refinement.** The ``n_candidates`` best separated directions of each length are
   refined by iteratively reweighted least squares on ``q_i · t = round(q_i · t)`` with
   narrowing weights (:func:`~sxlab.indexing._sweep_kernels.refine_vectors`), first on the
   points below the median ``|q|``, then on all.
3. **Cells.** Triples of refined vectors whose lengths and angles match the reference
   cell's edges (within ``length_tol`` and ``angle_tol_deg``, signs chosen, right-handed).
4. **Completion.** A few points are enough for one vector but not always for the other
   two to rank among the best directions of the sweep. So each of the ``n_complete``
   refined vectors that fit most points is also taken as an edge of the cell: the second
   edge is searched on the cone of directions at the reference angle around it (a
   one-dimensional sweep in 0.15° steps), refined, and the third edge follows from its
   length and angles to the first two (right-handed), refined in turn.
5. **Verification.** All these cells are scored by the points they index (all three
   indices within ``tol``); for the best, the reference cell in the orientation that
   fits the three edges best (orthogonal Procrustes: the edges were refined one by one
   and their angles are only near the reference's) is handed, as a primitive basis, to
   the verification callback of :class:`sxlab.indexing.Indexer` (cell match,
   refinement, acceptance).

The search is deterministic (no random sampling). Its cost is the sweep, about
``n_directions × n_points × n_lengths`` cosines; :class:`SweepSearch` prepares the grid
once.

Examples
--------
>>> from sxlab.cell import UnitCell
>>> from sxlab.reciprocal import rotation_matrix
>>> cell = UnitCell(79.1, 79.1, 37.9, 90, 90, 90, space_group="P 43 21 2")
>>> rng = np.random.default_rng(0)
>>> hkl = rng.integers(-6, 7, (25, 3))
>>> q = hkl @ cell.reciprocal_basis @ rotation_matrix([0.3, -1.2, 0.4]).T
>>> found = SweepSearch(cell).run(q, lambda basis: basis)
>>> bool(abs(abs(np.linalg.det(found)) - cell.volume) < 1)
True
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..cell import UnitCell, to_primitive
from ..reciprocal import nearest_rotation
from . import _sweep_kernels as _k

__all__ = ["SweepSearch", "SweepStats", "hemisphere_directions"]


def hemisphere_directions(n: int) -> np.ndarray:
    """``n`` quasi-uniform unit vectors on the half sphere ``z >= 0`` (Fibonacci lattice).

    Neighbouring directions are about ``sqrt(2π / n)`` radians apart.

    Examples
    --------
    >>> d = hemisphere_directions(1000)
    >>> d.shape, bool(np.allclose(np.linalg.norm(d, axis=1), 1)), bool((d[:, 2] >= 0).all())
    ((1000, 3), True, True)
    """
    i = np.arange(n, dtype=float) + 0.5
    z = 1.0 - i / n
    r = np.sqrt(1.0 - z * z)
    phi = i * math.pi * (3.0 - math.sqrt(5.0))
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


@dataclass
class SweepStats:
    """What one search did: points, directions scored, vectors refined, cells tried."""

    n_points: int = 0
    n_directions: int = 0
    n_vectors: int = 0
    n_cells: int = 0
    n_verified: int = 0


class SweepSearch:
    """The direction sweep prepared for one reference cell (see the module notes).

    Parameters
    ----------
    cell : UnitCell
        Reference cell with its centering.
    spacing_deg : float
        Spacing of the direction grid.
    n_points : int
        The strongest points used in the sweep (all points are used afterwards).
    n_candidates : int
        Directions refined per edge length.
    length_tol : float
        Relative tolerance of a refined vector's length against its edge's.
    angle_tol_deg : float
        Tolerance of the angles between the vectors of a cell.
    tol : float
        A point fits a vector (a cell) when its index (all three) is within this of an
        integer.
    n_verify : int
        Most cells handed to the verification, best first.
    n_complete : int
        Refined vectors (those fitting most points) each completed into cells.

    Attributes
    ----------
    stats : SweepStats
        Of the last :meth:`run`.
    """

    def __init__(self, cell: UnitCell, *, spacing_deg: float = 0.8, n_points: int = 80,
                 n_candidates: int = 16, length_tol: float = 0.05,
                 angle_tol_deg: float = 3.0, tol: float = 0.2, n_verify: int = 6,
                 n_complete: int = 4):
        if cell is None:
            raise ValueError("the direction sweep needs a reference cell")
        self.cell = cell
        self.spacing = math.radians(spacing_deg)
        self.n_points = int(n_points)
        self.n_candidates = int(n_candidates)
        self.length_tol = float(length_tol)
        self.angle_tol = math.radians(angle_tol_deg)
        self.tol = float(tol)
        self.n_verify = int(n_verify)
        self.directions = hemisphere_directions(int(round(2 * math.pi / self.spacing ** 2)))
        edges = np.array([cell.a, cell.b, cell.c])
        self.lengths, self.role = np.unique(np.round(edges, 6), return_inverse=True)
        self.reference = cell.direct_basis
        ref = self.reference / edges[:, None]
        self._cos = np.array([ref[1] @ ref[2], ref[0] @ ref[2], ref[0] @ ref[1]])
        self._centering = cell.centering or "P"
        self._lattice = cell.lattice_type
        self._scores = np.empty((len(self.directions), len(self.lengths)))
        self.n_complete = int(n_complete)
        # angles around a vector for the second one (0.15° steps)
        self._dphi = math.radians(0.15)
        self._phi = np.arange(0.0, 2 * math.pi, self._dphi)
        self.stats = SweepStats()

    # -------------------------------------------------------------------- steps
    def _candidates(self, q: np.ndarray) -> list[np.ndarray]:
        """Best separated directions per length, as vectors ``L d``."""
        qn = np.linalg.norm(q, axis=1)
        blur = np.exp(-0.5 * (math.pi * self.lengths[:, None] * qn[None, :]
                              * self.spacing) ** 2)
        _k.direction_scores(np.ascontiguousarray(q.T), np.ascontiguousarray(blur),
                            self.directions, self.lengths, self._scores)
        cos_sep = math.cos(2.5 * self.spacing)
        n_top = min(40 * self.n_candidates, len(self.directions))
        picked = np.empty(self.n_candidates, dtype=np.int64)
        out = []
        for li, length in enumerate(self.lengths):
            col = self._scores[:, li]
            top = np.argpartition(-col, n_top - 1)[:n_top]
            top = top[np.argsort(-col[top], kind="stable")]
            n = _k.pick_separated(self.directions, top, cos_sep, self.n_candidates, picked)
            out.append(length * self.directions[top[picked[:n]]])
        return out

    def _refine(self, q: np.ndarray, starts: np.ndarray):
        """Refined vectors and their fit counts (first on low-resolution points)."""
        t = np.ascontiguousarray(starts, dtype=np.float64)
        n = np.empty(len(t), dtype=np.int64)
        qn = np.linalg.norm(q, axis=1)
        low = q[qn <= np.median(qn)]
        if len(low) >= 6:
            _k.refine_vectors(np.ascontiguousarray(low), t.copy(), np.array([0.2, 0.12]),
                              t, n, self.tol)
        _k.refine_vectors(q, t.copy(), np.array([0.2, 0.12, 0.08]), t, n, self.tol)
        return t, n

    def _cells(self, vectors) -> list[np.ndarray]:
        """Right-handed bases (rows a, b, c) of candidate vectors matching the cell."""
        lengths = np.linalg.norm(vectors, axis=1)
        unit = vectors / lengths[:, None]
        edges = np.linalg.norm(self.reference, axis=1)
        role_of = [np.flatnonzero(np.abs(lengths / e - 1) <= self.length_tol) for e in edges]
        angle = np.arccos(np.clip(unit @ unit.T, -1.0, 1.0))     # with the sign flipped:
        alpha, beta, gamma = np.arccos(np.clip(self._cos, -1.0, 1.0))  # π - angle
        tol = self.angle_tol

        def signs(a, target):
            return [s for s, x in ((1.0, a), (-1.0, math.pi - a)) if abs(x - target) <= tol]

        cells = []
        for i in role_of[0]:
            for j in role_of[1]:
                if j == i:
                    continue
                s_j = signs(angle[i, j], gamma)
                if not s_j:
                    continue
                for k in role_of[2]:
                    if k in (i, j):
                        continue
                    for sk in signs(angle[i, k], beta):
                        for sj in s_j:
                            bc = angle[j, k] if sj * sk > 0 else math.pi - angle[j, k]
                            if abs(bc - alpha) > tol:
                                continue
                            basis = np.array([vectors[i], sj * vectors[j], sk * vectors[k]])
                            cells.append(-basis if np.linalg.det(basis) < 0 else basis)
        return cells

    def _complete(self, q: np.ndarray, v: np.ndarray) -> list[np.ndarray]:
        """Cells built around one refined vector ``v`` (see the module notes, step 4)."""
        length = float(np.linalg.norm(v))
        edges = np.linalg.norm(self.reference, axis=1)
        u = v / length
        helper = np.eye(3)[int(np.argmin(np.abs(u)))]
        e1 = np.cross(u, helper)
        e1 /= np.linalg.norm(e1)
        e2 = np.cross(u, e1)
        qn = np.linalg.norm(q, axis=1)
        out = []
        for r in np.flatnonzero(np.abs(length / edges - 1) <= self.length_tol):
            r2, r3 = [x for x in range(3) if x != r]
            ref = self.reference
            cos_t = ref[r] @ ref[r2] / (edges[r] * edges[r2])
            sin_t = math.sqrt(max(1.0 - cos_t * cos_t, 0.0))
            dirs = (cos_t * u + sin_t * (np.cos(self._phi)[:, None] * e1
                                         + np.sin(self._phi)[:, None] * e2))
            l2 = np.array([edges[r2]])
            w = np.exp(-0.5 * (math.pi * l2[:, None] * qn[None, :] * self._dphi
                               * sin_t) ** 2)
            scores = np.empty((len(dirs), 1))
            _k.direction_scores(np.ascontiguousarray(q.T), w, np.ascontiguousarray(dirs),
                                l2, scores)
            w2, _ = self._refine(q, edges[r2] * dirs[[int(np.argmax(scores[:, 0]))]])
            w2 = w2[0]
            # the third vector from its angles to the first two and its length
            basis = np.zeros((3, 3))
            basis[r], basis[r2] = v, w2
            g = np.array([[v @ v, v @ w2], [v @ w2, w2 @ w2]])
            rhs = edges[r3] * np.array([ref[r3] @ ref[r] / edges[r3] * length / edges[r],
                                        ref[r3] @ ref[r2] / edges[r3]
                                        * np.linalg.norm(w2) / edges[r2]])
            try:
                xy = np.linalg.solve(g, rhs)
            except np.linalg.LinAlgError:
                continue
            inplane = xy[0] * v + xy[1] * w2
            normal = np.cross(v, w2)
            rest = edges[r3] ** 2 - inplane @ inplane
            if rest <= 0 or not np.linalg.norm(normal) > 0:
                continue
            third = inplane + math.sqrt(rest) * normal / np.linalg.norm(normal)
            t3, _ = self._refine(q, third[None, :])
            basis[r3] = t3[0]
            if np.linalg.det(basis) < 0:
                basis[r3] = inplane - math.sqrt(rest) * normal / np.linalg.norm(normal)
                t3, _ = self._refine(q, basis[r3][None, :])
                basis[r3] = t3[0]
            out.append(basis if np.linalg.det(basis) > 0 else -basis)
        return out

    # -------------------------------------------------------------------- search
    def run(self, q: np.ndarray, verify: Callable[[np.ndarray], object | None],
            quality: Callable[[object], float] | None = None):
        """Search for a lattice.

        Parameters
        ----------
        q : array_like (n, 3)
            Reciprocal-space points (1/Å), strongest first.
        verify : callable
            ``verify(basis)`` with a candidate primitive direct basis (3 × 3, rows in Å,
            lab frame) returns a result, or None to reject it.
        quality : callable, optional
            ``quality(result)``: of several verified cells the best is returned (default:
            the first).

        Returns
        -------
        object or None
        """
        q = np.ascontiguousarray(np.asarray(q, dtype=np.float64))
        self.stats = SweepStats(n_points=len(q), n_directions=len(self.directions))
        if len(q) < 4:
            return None
        starts = self._candidates(q[: self.n_points])
        vectors, counts = self._refine(q, np.concatenate(starts))
        lengths = np.linalg.norm(vectors, axis=1)
        sane = (lengths > 0.5 * self.lengths.min()) & (lengths < 2.0 * self.lengths.max())
        vectors, counts = vectors[sane], counts[sane]
        order = np.argsort(-counts, kind="stable")
        vectors, counts = vectors[order], counts[order]
        # merge duplicates (parallel or antiparallel within 1°, length within 2 %)
        keep = []
        unit = vectors / np.linalg.norm(vectors, axis=1)[:, None]
        for i in range(len(vectors)):
            if counts[i] < 4:
                continue
            if all(abs(unit[i] @ unit[j]) < math.cos(math.radians(1.0))
                   or abs(np.linalg.norm(vectors[i]) / np.linalg.norm(vectors[j]) - 1) > 0.02
                   for j in keep):
                keep.append(i)
        vectors, counts = vectors[keep], counts[keep]
        self.stats.n_vectors = len(vectors)
        cells = self._cells(vectors)
        for v in vectors[: self.n_complete]:
            cells.extend(self._complete(q, v))
        self.stats.n_cells = len(cells)
        if not cells:
            return None
        bases = np.ascontiguousarray(np.array(cells))
        scores = np.empty(len(bases), dtype=np.int64)
        _k.count_indexed(q, bases, self.tol, scores)
        best = None
        best_quality = -np.inf
        for c in np.argsort(-scores, kind="stable")[: self.n_verify]:
            if scores[c] < 6:
                break
            # the reference cell in the orientation that fits the candidate best
            # (orthogonal Procrustes): its edges were refined one by one
            rot = nearest_rotation(bases[c].T @ self.reference)
            primitive, _ = to_primitive(self.reference @ rot.T, self._centering,
                                        lattice_type=self._lattice)
            result = verify(primitive)
            if result is None:
                continue
            self.stats.n_verified += 1
            if quality is None:
                return result
            value = quality(result)
            if value > best_quality:
                best, best_quality = result, value
        return best
