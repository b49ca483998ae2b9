"""asdf: lattice search by Fourier analysis of peak projections.

The search (source paper, section 4; the idea of CrystFEL's asdf indexer, implemented
here from its description) works on reciprocal-space points ``q`` (1/Å), one per peak,
strongest first:

1. **Triplets.** Three points span a plane; if they are reciprocal-lattice points the
   plane is a lattice plane and its normal is the direction of a direct-lattice vector
   ``t``. All triplets of the first ``n_reflections`` points are used (in a random order)
   when there are at most ``n_triplets`` of them, else ``n_triplets`` random ones.
   Triplets are processed in batches of ``batch``.
2. **Projections.** Every point is projected on the normal. Lattice points project to
   integer multiples of ``1 / |t|``, so the histogram of the projections (``n_bins`` bins
   spanning their minimum to maximum) is periodic.
3. **Fourier transform.** The strongest non-zero frequency ``f`` of the histogram (real
   FFT) within the window of allowed vector lengths, refined to a fraction of a bin by a
   parabola through the neighbouring magnitudes, gives the period ``width / f`` and hence
   the candidate ``t = normal · f / width`` (Å).
4. **Vector refinement.** A candidate that already fits (``q · t`` within ``tol`` of an
   integer) at least ``pre_fit`` times the required number of points is refined by least
   squares on the points near integers, harmonics are corrected (a vector that is a
   fraction or a multiple of a better-fitting one is replaced by it) and the vector is
   accepted if it fits more than 6 points and more than a third of them. Parallel or
   antiparallel vectors of similar length (3°, 5 %) are merged, keeping the better fit.
5. **Cell.** Whenever the set of usable vectors changes (accepted vectors fitting at
   least ``rel_fit`` times as many points as the best one; the ``max_cell_vectors``
   shortest), triples of them are tried in order of length (the longest member first,
   then the others). A triple is a cell if every pair makes an angle of at least
   ``min_angle_deg`` (and at most its supplement), its volume is at least
   ``min_volume_fraction`` of ``|a| |b| |c|`` and matches the target volume within
   ``volume_tol`` (when given), and it explains (all three indices within ``tol`` of
   integers) at least as many points as a vector must fit. Each cell is handed to a
   verification callback (in :class:`sxlab.indexing.Indexer`: cell matching, refinement,
   peak check); lattices that fail it are remembered and not tried again.

With a target volume (a reference cell) the search ends at the first verified cell: on
good frames after a few hundred triplets, which is what makes it fast. Without one, cells
are tried in order of increasing volume, and a cell is first replaced by the lattice it
generates together with the usable vectors (:func:`generated_lattice`), which removes
supercells made of long vectors; after the first verified cell the search goes on until
``patience`` times as many triplets have been processed (at least ``patience`` more
batches), and the verified cell of smallest volume wins.

The histogram and vector kernels are in :mod:`sxlab.indexing._asdf_kernels`; the FFTs are
batched over the rows of a 2-D array (``scipy.fft``, single precision: the histograms hold
small integer counts, exact in float32).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter_ns

import numpy as np
from scipy import fft as _fft

from . import _asdf_kernels as _k

__all__ = [
    "AsdfSearch",
    "AsdfStats",
    "expand_subcell",
    "generated_lattice",
    "integer_row_basis",
    "reduce_supercell",
    "triplet_indices",
]



def _rfft_rows(hist: np.ndarray) -> np.ndarray:
    """Real FFT of each row (single precision in, single precision out)."""
    return _fft.rfft(hist, axis=1, workers=1)


def triplet_indices(n: int) -> np.ndarray:
    """All index triplets ``i < j < k`` of ``n`` points, lexicographic, shape (C(n,3), 3).

    Examples
    --------
    >>> triplet_indices(4).tolist()
    [[0, 1, 2], [0, 1, 3], [0, 2, 3], [1, 2, 3]]
    """
    if n < 3:
        return np.zeros((0, 3), dtype=np.int64)
    i, j, k = np.meshgrid(np.arange(n), np.arange(n), np.arange(n), indexing="ij")
    sel = (i < j) & (j < k)
    return np.stack([i[sel], j[sel], k[sel]], axis=1).astype(np.int64)


def _random_triplets(rng: np.random.Generator, n: int, count: int) -> np.ndarray:
    """``count`` triplets of distinct indices below ``n`` (uniform, with replacement)."""
    trip = rng.integers(0, n, size=(count, 3))
    while True:
        bad = np.flatnonzero((trip[:, 0] == trip[:, 1]) | (trip[:, 0] == trip[:, 2])
                             | (trip[:, 1] == trip[:, 2]))
        if bad.size == 0:
            return trip
        trip[bad] = rng.integers(0, n, size=(bad.size, 3))


def _congruences(m: int) -> np.ndarray:
    """One representative ``a`` of each line of (Z/m)³ \\ 0 (``m`` prime), shape (k, 3)."""
    seen, out = set(), []
    for a in np.ndindex(m, m, m):
        if a == (0, 0, 0) or a in seen:
            continue
        out.append(a)
        for s in range(1, m):
            seen.add(tuple((s * np.asarray(a)) % m))
    return np.array(out, dtype=np.int64)


_CONGRUENCES = {m: _congruences(m) for m in (2, 3)}


def _sublattice(a: np.ndarray, m: int) -> np.ndarray:
    """Rows spanning ``{h in Z³ : a · h = 0 mod m}`` (``m`` prime, ``a`` not 0 mod m)."""
    i = int(np.flatnonzero(a % m)[0])
    inv = pow(int(a[i]), -1, m)
    rows = np.eye(3, dtype=np.int64)
    for j in range(3):
        if j != i:
            rows[j, i] = -((int(a[j]) * inv) % m)
    rows[i] = 0
    rows[i, i] = m
    return rows


def reduce_supercell(basis: np.ndarray, hkl: np.ndarray, *, min_agreement: float = 0.95,
                     max_steps: int = 8):
    """Reduce a direct basis that spans a supercell of the lattice its peaks come from.

    For a congruence ``a · hkl = 0 mod m`` (``m`` = 2 or 3, ``a`` a non-zero vector with
    components in ``0 .. m-1``), the informative peaks are those with ``a · hkl != 0``.
    If there are at least ``max(10, n / 5)`` of them and at least ``min_agreement`` of
    them satisfy the congruence, the observed reciprocal points lie on a sublattice of
    index ``m`` of the basis's reciprocal lattice, i.e. the basis is an ``m``-fold
    supercell: it is replaced by the basis of that sublattice (volume divided by ``m``),
    the indices are converted, and the test repeated (at most ``max_steps`` times).
    Peaks confined to a plane of the basis (``a · hkl = 0`` for all) say nothing about
    the third direction and never trigger a reduction.

    Parameters
    ----------
    basis : ndarray (3, 3)
        Direct basis, rows (Å).
    hkl : ndarray of int (n, 3)
        Indices of the peaks the basis explains.
    min_agreement : float
        Fraction of the informative peaks that must satisfy the congruence.
    max_steps : int
        Most reductions.

    Returns
    -------
    basis : ndarray (3, 3)
        The reduced direct basis (the input when nothing was found).
    hkl : ndarray of int64 (n, 3)
        Indices in the new basis (rounded; peaks that broke the congruence get the
        nearest indices).

    Examples
    --------
    >>> basis = np.diag([10.0, 20.0, 30.0])  # a is twice the lattice's
    >>> hkl = np.array([[0, 0, 2], [8, -4, -3], [6, 4, -2], [-4, 3, -1], [-4, 3, -2],
    ...                 [-2, 1, 0], [-8, -4, 3], [4, 3, 0], [6, -2, 0], [6, -3, -2],
    ...                 [-6, 0, 4], [-6, -1, -1]])
    >>> reduced, new = reduce_supercell(basis, hkl)
    >>> np.diag(reduced).round(6).tolist(), new[:2].tolist()
    ([5.0, 20.0, 30.0], [[0, 0, 2], [4, -4, -3]])
    """
    basis = np.asarray(basis, dtype=float)
    hkl = np.asarray(hkl, dtype=np.int64)
    min_informative = max(10, len(hkl) // 5)
    for _ in range(max_steps):
        for m, cong in _CONGRUENCES.items():
            dots = hkl @ cong.T
            informative = dots != 0
            n_inf = informative.sum(axis=0)
            agree = (informative & (dots % m == 0)).sum(axis=0)
            ok = (n_inf >= min_informative) & (agree >= min_agreement * n_inf)
            if ok.any():
                best = int(np.argmax(np.where(ok, agree / np.maximum(n_inf, 1), -1.0)))
                rows = _sublattice(cong[best], m)
                inv = np.linalg.inv(rows.astype(float))
                hkl = np.round(hkl @ inv).astype(np.int64)
                basis = inv.T @ basis
                break
        else:
            break
    return basis, hkl
    changed = True
    while changed:
        changed = False
        for m, cong in _CONGRUENCES.items():
            agree = ((hkl @ cong.T) % m == 0).mean(axis=0)
            best = int(np.argmax(agree))
            if agree[best] >= min_agreement:
                rows = _sublattice(cong[best], m)
                inv = np.linalg.inv(rows.astype(float))
                hkl = np.round(hkl @ inv).astype(np.int64)
                basis = inv.T @ basis
                changed = True
                break
    return basis, hkl


def integer_row_basis(rows) -> np.ndarray:
    """Basis (Hermite normal form, upper triangular) of the lattice spanned by integer rows.

    Parameters
    ----------
    rows : array_like of int, shape (n, 3)
        Generators; they must span a 3-dimensional lattice.

    Returns
    -------
    ndarray of int64, shape (3, 3)

    Examples
    --------
    >>> integer_row_basis([[2, 0, 0], [0, 2, 0], [0, 0, 2], [1, 1, 1]]).tolist()
    [[1, 1, 1], [0, 2, 0], [0, 0, 2]]
    """
    m = [[int(v) for v in r] for r in np.asarray(rows)]
    out = []
    for col in range(3):
        live = [r for r in m if r[col] != 0]
        rest = [r for r in m if r[col] == 0]
        while len(live) > 1:
            live.sort(key=lambda r: abs(r[col]))
            pivot = live[0]
            nxt = [pivot]
            for r in live[1:]:
                f = r[col] // pivot[col]
                r = [a - f * b for a, b in zip(r, pivot, strict=True)]
                (nxt if r[col] != 0 else rest).append(r)
            live = nxt
        if not live:
            raise ValueError("the rows do not span three dimensions")
        pivot = live[0] if live[0][col] > 0 else [-a for a in live[0]]
        out.append(pivot)
        m = rest
    for i in range(3):
        for j in range(i):
            f = out[j][i] // out[i][i]
            out[j] = [a - f * b for a, b in zip(out[j], out[i], strict=True)]
    return np.array(out, dtype=np.int64)


def generated_lattice(basis: np.ndarray, vectors: np.ndarray, *, max_denominator: int = 16,
                      tol: float = 0.05) -> np.ndarray:
    """Basis of the lattice generated by a basis and further lattice vectors.

    Each vector's coordinates ``x = v @ inv(basis)`` are tested for a denominator
    ``d <= max_denominator`` with ``|d x - round(d x)| < tol``; vectors with none are
    ignored. The rows ``round(D x)`` (``D`` the least common multiple of the denominators)
    and ``D`` times the unit vectors span ``D`` times the generated lattice (in basis
    coordinates); its :func:`integer_row_basis` divided by ``D`` gives the result. A
    supercell basis and a vector it misses give the finer lattice.

    Examples
    --------
    >>> basis = np.diag([20.0, 10.0, 10.0])
    >>> generated_lattice(basis, np.array([[10.0, 0.0, 0.0]])).round(6).tolist()
    [[10.0, 0.0, 0.0], [0.0, 10.0, 0.0], [0.0, 0.0, 10.0]]
    """
    basis = np.asarray(basis, dtype=float)
    x = np.asarray(vectors, dtype=float).reshape(-1, 3) @ np.linalg.inv(basis)
    dens, keep = [], []
    for row in x:
        for d in range(1, max_denominator + 1):
            if np.all(np.abs(d * row - np.round(d * row)) < tol):
                if d > 1:
                    dens.append(d)
                    keep.append(row)
                break
    if not keep:
        return basis
    common = math.lcm(*dens)
    if common > 1000:
        return basis
    gens = np.vstack([common * np.eye(3), common * np.array(keep)])
    h = integer_row_basis(np.round(gens).astype(np.int64))
    return (h / common) @ basis


def expand_subcell(basis: np.ndarray, q: np.ndarray, *, tol: float = 0.1,
                   min_count: int | None = None, max_steps: int = 4) -> np.ndarray:
    """Enlarge a direct basis that spans a subcell of the lattice the points come from.

    A subcell (e.g. one edge half as long as the lattice's) leaves the reciprocal points
    with a fractional index ``1/m`` between integers unexplained. For ``m`` = 2 and 3,
    the points whose fractional indices ``q · basis`` are all within ``tol`` of
    multiples of ``1/m`` are grouped by their residue class ``round(m · hkl) mod m``; if
    the most common class other than 0 holds at least ``min_count`` points (default
    ``max(6, n / 10)``), the reciprocal lattice is extended by that class (the direct
    cell grows ``m``-fold) and the test repeated (at most ``max_steps`` times).

    Parameters
    ----------
    basis : ndarray (3, 3)
        Direct basis, rows (Å).
    q : ndarray (n, 3)
        Reciprocal-space points (1/Å).
    tol : float
        Tolerance on ``m · hkl`` being integer.
    min_count : int, optional
        Points a residue class needs.
    max_steps : int
        Most enlargements.

    Returns
    -------
    ndarray (3, 3)
        The enlarged direct basis (the input when nothing was found).

    Examples
    --------
    >>> lattice = np.diag([10.0, 20.0, 30.0])
    >>> hkl = np.array([(h, k, l) for h in range(-2, 3) for k in range(-2, 3)
    ...                 for l in range(-2, 3)])
    >>> q = hkl @ np.linalg.inv(lattice).T
    >>> sub = np.diag([10.0, 10.0, 30.0])  # b halved
    >>> np.diag(expand_subcell(sub, q)).round(6).tolist()
    [10.0, 20.0, 30.0]
    """
    basis = np.asarray(basis, dtype=float)
    q = np.asarray(q, dtype=float)
    if min_count is None:
        min_count = max(6, len(q) // 10)
    for _ in range(max_steps):
        frac = q @ basis.T
        for m in (2, 3):
            r = m * frac
            near = np.all(np.abs(r - np.round(r)) < tol, axis=1)
            cls = np.mod(np.round(r[near]).astype(np.int64), m)
            cls = cls[np.any(cls != 0, axis=1)]
            if len(cls) < min_count:
                continue
            keys, counts = np.unique(cls, axis=0, return_counts=True)
            best = int(np.argmax(counts))
            if counts[best] >= min_count:
                rows = integer_row_basis(np.vstack([m * np.eye(3, dtype=np.int64),
                                                    keys[best]]))
                astar = (rows / m) @ np.linalg.inv(basis).T
                basis = np.linalg.inv(astar).T
                break
        else:
            break
    return basis


@dataclass
class _Best:
    """The best verified cell so far."""

    result: object = None
    basis: np.ndarray | None = None
    volume: float = np.inf
    score: float = 0.0


@dataclass
class AsdfStats:
    """What one search did.

    Attributes
    ----------
    n_points : int
        Points used (the strongest ``n_reflections``).
    n_triplets : int
        Triplets processed.
    n_vectors : int
        Distinct accepted vectors.
    n_cells_tried : int
        Cells handed to the verification callback.
    triplets_s : float
        Seconds in the triplets' projections, histograms and Fourier transforms
        (``asdf-triplets``).
    search_s : float
        Seconds refining, correcting and merging the candidate vectors (``asdf-search``).
    findcell_s : float
        Seconds forming cells from the vectors (``asdf-findcell``), the verification
        callback excluded.
    verify_s : float
        Seconds in the verification callback.
    """

    n_points: int = 0
    n_triplets: int = 0
    n_vectors: int = 0
    n_cells_tried: int = 0
    triplets_s: float = 0.0
    search_s: float = 0.0
    findcell_s: float = 0.0
    verify_s: float = 0.0


class AsdfSearch:
    """A prepared asdf lattice search (buffers and constants reused between frames).

    Parameters
    ----------
    n_reflections : int
        Use at most this many points (the first ones: order them by intensity).
    n_triplets : int
        Process at most this many triplets; all of them when the points give no more.
    n_bins : int
        Histogram bins.
    tol : float
        A vector fits a point when ``q · t`` is within ``tol`` of an integer.
    min_len, max_len : float
        Shortest and longest direct-lattice vector considered (Å).
    target_volume : float or None
        Primitive cell volume (Å³) a cell must match within ``volume_tol``; None: no
        constraint (and no early end at the first verified cell).
    volume_tol : float
        Relative volume tolerance.
    min_angle_deg : float
        Smallest angle between two cell vectors.
    min_volume_fraction : float
        Smallest ``V / (|a| |b| |c|)`` of a cell.
    rel_fit : float
        Vectors fitting fewer than ``rel_fit`` times the best vector's points are not used
        for cells.
    max_cell_vectors : int
        Cells are formed from at most this many of the shortest usable vectors.
    batch : int
        Triplets per batch (the search can end after each batch).
    n_iter : int
        Least-squares iterations of each vector.
    pre_fit : float
        A raw candidate vector is refined only if it already fits ``pre_fit`` times the
        points an accepted vector must fit (most candidates from triplets whose lattice
        vector is too long fit about a fifth of the points and are dropped here).
    patience : int
        Without a target volume, the search goes on until ``patience`` times the triplets
        used to find the first verified cell (at least ``patience`` more batches).
    capacity : int
        Most distinct vectors kept.

    Notes
    -----
    Not thread-safe (work buffers are reused); give each worker its own.

    Examples
    --------
    >>> from sxlab.cell import UnitCell
    >>> cell = UnitCell(40.0, 50.0, 60.0)
    >>> hkl = np.array([(h, k, l) for h in range(-4, 5) for k in range(-4, 5)
    ...                 for l in range(-4, 5) if (h, k, l) != (0, 0, 0)])
    >>> q = (hkl @ cell.reciprocal_basis)[:150]
    >>> search = AsdfSearch(target_volume=cell.volume, min_len=20.0, max_len=180.0)
    >>> basis = search.run(q, np.random.default_rng(0), lambda b: b)
    >>> m = basis @ cell.reciprocal_basis.T  # the found vectors in lattice coordinates
    >>> bool(np.allclose(m, np.round(m))), round(float(abs(np.linalg.det(m))), 6)
    (True, 1.0)
    """

    def __init__(self, *, n_reflections: int = 2000, n_triplets: int = 20000,
                 n_bins: int = 1024, tol: float = 0.1, min_len: float = 3.0,
                 max_len: float = 1000.0, target_volume: float | None = None,
                 volume_tol: float = 0.1, min_angle_deg: float = 20.0,
                 min_volume_fraction: float = 0.2, rel_fit: float = 0.6,
                 max_cell_vectors: int = 30, batch: int = 256, n_iter: int = 3,
                 pre_fit: float = 0.8, patience: int = 4, capacity: int = 2048):
        if n_bins < 8:
            raise ValueError(f"n_bins must be at least 8, got {n_bins}")
        if not 0 < min_len < max_len:
            raise ValueError(f"need 0 < min_len < max_len, got {min_len}, {max_len}")
        if not 0 < tol < 0.5:
            raise ValueError(f"tol must be in (0, 0.5), got {tol}")
        self.n_reflections = int(n_reflections)
        self.n_triplets = int(n_triplets)
        self.n_bins = int(n_bins)
        self.tol = float(tol)
        self.min_len = float(min_len)
        self.max_len = float(max_len)
        self.target_volume = None if target_volume is None else float(target_volume)
        self.volume_tol = float(volume_tol)
        self.cos_max = math.cos(math.radians(min_angle_deg))
        self.min_volume_fraction = float(min_volume_fraction)
        self.rel_fit = float(rel_fit)
        self.max_cell_vectors = int(max_cell_vectors)
        self.batch = int(batch)
        self.n_iter = int(n_iter)
        self.pre_fit = float(pre_fit)
        self.patience = int(patience)
        self.capacity = int(capacity)
        self.stats = AsdfStats()
        self._verify_ns = 0

        b = self.batch
        self._hist = np.empty((b, self.n_bins), dtype=np.float32)
        self._normals = np.empty((b, 3))
        self._widths = np.empty(b)
        self._freqs = np.empty(b)
        self._new_t = np.empty((b, 3))
        self._new_n = np.empty(b, dtype=np.int64)
        self._store = np.empty((self.capacity, 3))
        self._store_n = np.empty(self.capacity, dtype=np.int64)
        self._proj = np.empty(0)
        self._all_triplets: dict[int, np.ndarray] = {}
        self._cell_triples: dict[int, np.ndarray] = {}

    # ------------------------------------------------------------------ helpers
    def _triplet_table(self, n: int) -> np.ndarray:
        if n not in self._all_triplets:
            self._all_triplets[n] = triplet_indices(n)
        return self._all_triplets[n]

    def _triples(self, k: int) -> np.ndarray:
        """Index triples i < j < k' of k sorted vectors, ordered by k', then j, then i."""
        if k not in self._cell_triples:
            t = triplet_indices(k)
            order = np.lexsort((t[:, 0], t[:, 1], t[:, 2]))
            self._cell_triples[k] = t[order]
        return self._cell_triples[k]

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """Accepted vectors of the last search (rows, Å) and the points each fits."""
        n = self.stats.n_vectors
        return self._store[:n].copy(), self._store_n[:n].copy()

    def _usable(self, n_store: int) -> np.ndarray:
        """Stored vectors fitting at least ``rel_fit`` times the best one's points, shortest
        first (at most ``max_cell_vectors``)."""
        vec = self._store[:n_store]
        nfit = self._store_n[:n_store]
        use = np.flatnonzero(nfit >= self.rel_fit * nfit.max())
        lengths = np.sqrt((vec[use] ** 2).sum(axis=1))
        return vec[use[np.argsort(lengths, kind="stable")][: self.max_cell_vectors]]

    def _cells(self, q: np.ndarray, n_store: int, min_fit: int):
        """Candidate cells (direct bases, rows) from the stored vectors, in search order."""
        v = self._usable(n_store)
        if v.shape[0] < 3:
            return
        length = np.sqrt((v * v).sum(axis=1))
        tri = self._triples(v.shape[0])
        a, b, c = v[tri[:, 0]], v[tri[:, 1]], v[tri[:, 2]]
        la, lb, lc = length[tri[:, 0]], length[tri[:, 1]], length[tri[:, 2]]
        ok = np.abs((a * b).sum(axis=1)) <= self.cos_max * la * lb
        ok &= np.abs((a * c).sum(axis=1)) <= self.cos_max * la * lc
        ok &= np.abs((b * c).sum(axis=1)) <= self.cos_max * lb * lc
        vol = np.abs((np.cross(a, b) * c).sum(axis=1))
        ok &= vol >= self.min_volume_fraction * la * lb * lc
        if self.target_volume is not None:
            ok &= np.abs(vol - self.target_volume) <= self.volume_tol * self.target_volume
        cand = np.flatnonzero(ok)
        if self.target_volume is None:
            cand = cand[np.argsort(vol[cand], kind="stable")]
        for i in cand:
            basis = np.stack([a[i], b[i], c[i]])
            if _k.count_explained(q, basis, self.tol) >= min_fit:
                yield basis, float(vol[i])

    def _verify(self, basis, rejected, verify):
        """``verify(basis)`` unless the lattice was rejected before; remembers rejections."""
        if self._same_lattice(basis, rejected):
            return None
        self.stats.n_cells_tried += 1
        t0 = perf_counter_ns()
        result = verify(basis)
        self._verify_ns += perf_counter_ns() - t0
        if result is None:
            rejected.append(np.linalg.inv(basis).T)
        return result

    @staticmethod
    def _same_lattice(basis: np.ndarray, others: list[np.ndarray]) -> bool:
        """Whether ``basis`` spans the same lattice as one of ``others`` (reciprocal bases)."""
        for recip in others:
            m = basis @ recip.T
            r = np.round(m)
            if np.all(np.abs(m - r) < 0.1) and abs(round(np.linalg.det(r))) == 1:
                return True
        return False

    # --------------------------------------------------------------------- search
    def _offer(self, basis, rejected, verify, quality, best: _Best) -> bool:
        """Verify ``basis`` if it would improve on ``best``; True if it became the best."""
        volume = abs(float(np.linalg.det(basis)))
        if volume >= 0.95 * best.volume:
            return False
        result = self._verify(basis, rejected, verify)
        if result is None:
            return False
        score = float(quality(result)) if quality is not None else 0.0
        if best.result is not None and score < 0.9 * best.score:
            rejected.append(np.linalg.inv(basis).T)
            return False
        best.result, best.basis, best.volume, best.score = result, basis, volume, score
        return True

    def _search_cells(self, q, n_store, min_fit, usable, rejected, verify, quality,
                      best: _Best) -> bool:
        """Offer the candidate cells in search order; True if the best cell changed."""
        improved = False
        if best.result is not None:
            improved = self._offer(generated_lattice(best.basis, usable), rejected, verify,
                                   quality, best)
        for basis, volume in self._cells(q, n_store, min_fit):
            if volume >= 0.95 * best.volume:
                break
            tries = [basis]
            if self.target_volume is None:
                finer = generated_lattice(basis, usable)
                if abs(np.linalg.det(finer)) < 0.95 * volume:
                    tries.insert(0, finer)
            if any(self._offer(c, rejected, verify, quality, best) for c in tries):
                return True
        return improved

    def run(self, q: np.ndarray, rng: np.random.Generator,
            verify: Callable[[np.ndarray], object | None],
            quality: Callable[[object], float] | None = None):
        """Search for a lattice.

        Parameters
        ----------
        q : array_like (n, 3)
            Reciprocal-space points (1/Å), strongest first.
        rng : numpy.random.Generator
            Source of the random triplets (and of the order of all triplets).
        verify : callable
            ``verify(basis)`` with a candidate direct basis (3×3, rows a, b, c in Å, lab
            frame, primitive) returns a result, or None to reject the lattice.
        quality : callable, optional
            Without a target volume: ``quality(result)`` (e.g. the number of peaks the
            lattice explains); a verified cell of smaller volume replaces the best one
            only if its quality is at least 0.9 times the best one's (a subcell made
            with a spurious short vector explains fewer peaks than the lattice).

        Returns
        -------
        object or None
            The first verified result (with a target volume), or the verified result of
            smallest cell volume; None if no cell was verified.
        """
        q = np.ascontiguousarray(np.asarray(q, dtype=np.float64)[: self.n_reflections])
        n = q.shape[0]
        self.stats = AsdfStats(n_points=n)
        if n < 4:
            return None
        if self._proj.shape[0] < n:
            self._proj = np.empty(n)
        min_fit = max(7, n // 3 + 1)
        if math.comb(n, 3) <= self.n_triplets:
            table = self._triplet_table(n)
            all_trips = table[rng.permutation(table.shape[0])]
            total = all_trips.shape[0]
        else:
            all_trips = None
            total = self.n_triplets

        n_store = 0
        rejected: list[np.ndarray] = []
        best = _Best()
        previous = deadline = None
        done = 0
        # Phase times (ns): triplets, vector search, cell search with its verifications.
        t_trip = t_search = t_cells = 0
        self._verify_ns = 0
        while done < total:
            t0 = perf_counter_ns()
            nb = min(self.batch, total - done)
            if all_trips is not None:
                trip = all_trips[done : done + nb]
            else:
                trip = _random_triplets(rng, n, nb)
            done += nb
            _k.triplet_histograms(q, trip, self.n_bins, self._hist, self._normals,
                                  self._widths, self._proj)
            spec = _rfft_rows(self._hist[:nb])
            _k.strongest_frequencies(spec, self._widths, self.min_len, self.max_len,
                                     self._freqs)
            t1 = perf_counter_ns()
            n_new = _k.candidate_vectors(q, self._normals, self._widths, self._freqs[:nb],
                                         self.tol, self.n_iter, min_fit,
                                         self.pre_fit * min_fit, self.min_len,
                                         self.max_len, self._new_t, self._new_n)
            n_store, n_added = _k.merge_vectors(self._store, self._store_n, n_store,
                                                self._new_t, self._new_n, n_new,
                                                math.cos(math.radians(3.0)), 0.05)
            self.stats.n_triplets = done
            self.stats.n_vectors = n_store
            usable = self._usable(n_store) if n_added else previous
            t2 = perf_counter_ns()
            t_trip += t1 - t0
            t_search += t2 - t1
            if usable is not previous and (previous is None
                                           or not np.array_equal(usable, previous)):
                previous = usable
                found = self._search_cells(q, n_store, min_fit, usable, rejected, verify,
                                           quality, best)
                t_cells += perf_counter_ns() - t2
                if found:
                    if self.target_volume is not None:
                        break
                    if deadline is None:
                        deadline = max(self.patience * done,
                                       done + self.patience * self.batch)
            if deadline is not None and done >= deadline:
                break
        self.stats.triplets_s = t_trip / 1e9
        self.stats.search_s = t_search / 1e9
        self.stats.findcell_s = (t_cells - self._verify_ns) / 1e9
        self.stats.verify_s = self._verify_ns / 1e9
        return best.result
