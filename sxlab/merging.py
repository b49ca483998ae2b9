"""Merging of still-shot intensities and data-quality statistics.

:func:`merge` turns a reflection table (one row per measured reflection of one crystal,
see :data:`sxlab.tables.REFLECTIONS`) into one intensity per symmetry-unique
reflection, as CrystFEL's partialator does with its ``unity`` model:

0. **cells**: given the crystals table, each crystal's cell is checked against the space
   group's lattice; a crystal indexed in another setting of a lattice of the right kind
   (a triclinic basis of a tetragonal lattice, axes in another order) is reindexed to
   the conventional setting (:func:`sxlab.lattice.bravais_setting`), one whose lattice
   is of another kind is rejected, as is one whose cell is far from the others'; the
   merge refuses to go on when most crystals are rejected;
1. **selection**: flagged, saturated, non-finite and (with partiality correction) low
   partiality observations are left out, as are those outside the resolution limits;
   each crystal's indices must give the measured ``d_A`` with the cell used (given,
   or fitted to ``d_A`` and said so in ``notes``): crystals whose indices do not are
   rejected, and most crystals failing stops the merge (:class:`MergeError`);
2. **asymmetric unit**: every observation is mapped to gemmi's reciprocal asymmetric
   unit of the Laue group (``anomalous=False``) or to that unit and its Friedel mate
   (``anomalous=True``, I(+) and I(-) kept apart) by one table look-up of all its
   symmetry equivalents; systematic absences have no entry and are left out;
3. **indexing ambiguity**: for point groups with a twin law (4, 3, 6, 32, 23, ... in a
   lattice of higher symmetry) each crystal's setting is chosen by correlating it with
   the merged set of the others (:func:`ambiguity_operators`);
4. **scaling**: per crystal a linear scale ``G`` and relative B factor,
   ``I_obs ≈ G exp(-2 B s²) I_merged`` with ``s = 1/(2d)``, refined by weighted least
   squares against the merged set and iterated; crystals whose fit fails are rejected;
5. **Monte Carlo merge**: the mean of the scaled observations of each unique reflection;
6. **statistics** in resolution shells of equal reciprocal volume
   (:func:`merging_statistics`): completeness, multiplicity, ⟨I/σ⟩, CC1/2, CC*,
   Rsplit, and the resolution where CC* falls below 0.5 (:func:`cc_star_resolution`);
   the shells never reach beyond the highest resolution of the observations.

The notebook spelling is ``sx.merge(reflections, "P43212")``, this module's :func:`merge`.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from . import _merging_kernels as _k
from . import tables
from ._frozen import FrozenParams
from .cell import UnitCell
from .symmetry import (
    AsuTable,
    as_gemmi_cell,
    cell_d_spacings,
    point_group_rotations,
    resolve_symmetry,
)

__all__ = [
    "MergeError",
    "MergeParams",
    "MergeResult",
    "ambiguity_operators",
    "cc_star",
    "cc_star_resolution",
    "frame_half",
    "map_to_asu",
    "merge",
    "merging_statistics",
]

@dataclass(frozen=True)
class MergeParams(FrozenParams):
    """Parameters of :func:`merge` (frozen, serialisable; the ``[merge]`` section of a trial).

    Parameters
    ----------
    scale : bool
        Refine a scale ``G`` and relative B per crystal. Default True.
    iterations : int
        Cycles of merging and refining scales. Default 3.
    min_measurements : int
        Unique reflections with fewer observations are left out of the output, and
        (at least 2) of the reference the scales are refined against. Default 2.
    partiality : bool
        Divide each observation by its ``partiality`` (observations below
        ``min_partiality`` are left out). Default False: Monte Carlo averaging of
        partial intensities.
    min_partiality : float
        Default 0.1.
    anomalous : bool
        Keep Friedel mates apart (I(+) and I(-) of acentric reflections; the point
        group's asymmetric unit). Default False: merge them (the Laue group's).
    resolve_ambiguity : {"auto", True, False}
        Choose each crystal's indexing among the twin laws of the lattice
        (:func:`ambiguity_operators`); ``"auto"`` and True do so whenever there are
        twin laws. Default "auto".
    n_shells : int
        Resolution shells of equal reciprocal volume for the statistics. Default 20.
    d_min, d_max : float or None
        Resolution limits (Å) of the observations merged and of the shells. Default None.
    max_adu : float or None
        Leave out observations whose largest peak pixel (``peak``) exceeds this.
    reject_flags : bool
        Leave out observations with any ``flag_*`` column set. Default True.
    outlier_sigma : float or None
        Leave out, once before the final merge, observations more than this many
        standard deviations from the mean of the reflection's other observations (their
        standard deviation; reflections with at least 4 observations). Default None:
        keep all.
    max_b_A2 : float
        Crystals whose relative B exceeds this in magnitude (Å²) are rejected.
        Default 100.
    min_crystal_reflections : int
        Crystals with fewer observations of reference reflections are rejected.
        Default 10.
    model : {"unity", "gaussian", "xsphere"}
        Partiality model. ``unity``: partialator's unity model, Monte Carlo averaging of
        the partial intensities. ``gaussian`` and ``xsphere``: post-refinement
        (:mod:`sxlab.postrefinement`) of every crystal's scale, B, orientation (about
        the two axes across the beam) and profile width, and of the data set's size,
        mosaic and spectral widths, against the merged full intensities; the merge
        divides the modelled partialities out. Needs the crystals (their reciprocal
        bases) and the beam (:func:`merge`'s ``crystals`` and ``beam``). Default "unity".
    postrefine_cycles : int
        Merge-and-refine cycles of post-refinement. Default 6.

    Examples
    --------
    >>> p = MergeParams(d_min=2.0)
    >>> p.replace(scale=False).scale, MergeParams.from_dict(p.to_dict()) == p
    (False, True)
    """

    scale: bool = True
    iterations: int = 3
    min_measurements: int = 2
    partiality: bool = False
    min_partiality: float = 0.1
    anomalous: bool = False
    resolve_ambiguity: bool | str = "auto"
    n_shells: int = 20
    d_min: float | None = None
    d_max: float | None = None
    max_adu: float | None = None
    reject_flags: bool = True
    outlier_sigma: float | None = None
    max_b_A2: float = 100.0
    min_crystal_reflections: int = 10
    model: str = "unity"
    postrefine_cycles: int = 6

    def __post_init__(self):
        from .postrefinement import MODELS

        if self.model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {self.model!r}")
        if self.resolve_ambiguity not in ("auto", True, False):
            raise ValueError("resolve_ambiguity must be 'auto', True or False, got "
                             f"{self.resolve_ambiguity!r}")
        for name in ("scale", "partiality", "anomalous", "reject_flags"):
            object.__setattr__(self, name, bool(getattr(self, name)))
        for name, low in (("iterations", 0), ("min_measurements", 1), ("n_shells", 1),
                          ("min_crystal_reflections", 0), ("postrefine_cycles", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
            object.__setattr__(self, name, int(value))
        if not 0 <= float(self.min_partiality) <= 1:
            raise ValueError(f"min_partiality must be within [0, 1], got {self.min_partiality}")
        object.__setattr__(self, "min_partiality", float(self.min_partiality))
        if not float(self.max_b_A2) > 0:
            raise ValueError(f"max_b_A2 must be positive, got {self.max_b_A2}")
        object.__setattr__(self, "max_b_A2", float(self.max_b_A2))
        for name in ("d_min", "d_max", "max_adu", "outlier_sigma"):
            value = getattr(self, name)
            if value is not None:
                if not (math.isfinite(float(value)) and float(value) > 0):
                    raise ValueError(f"{name} must be positive or None, got {value}")
                object.__setattr__(self, name, float(value))
        if self.d_min is not None and self.d_max is not None and self.d_min >= self.d_max:
            raise ValueError(f"d_min ({self.d_min}) must be below d_max ({self.d_max})")


# Indexing-ambiguity resolver: passes after the first, and the overlap (reflections in
# common with the reference) below which a crystal keeps its setting.
_AMBIGUITY_PASSES = 5
_AMBIGUITY_MIN_OVERLAP = 10
#: Largest obliquity (degrees) of a lattice symmetry operator still taken as a twin law.
MAX_OBLIQUITY_DEG = 3.0
_GAUSS_NEWTON_STEPS = 20
#: Fewest reflections measured in both halves for a CC1/2 (NaN with fewer).
MIN_PAIRS = 10
#: A crystal's indices fit the cell when the median of |d(cell, hkl) / d_A - 1| over its
#: observations is at most this.
D_FIT_TOLERANCE = 0.02
#: A crystal's cell agrees with the others' when every edge is within this fraction, and
#: every angle within ``CELL_ANGLE_TOLERANCE_DEG``, of their median (after reindexing).
CELL_LENGTH_TOLERANCE = 0.05
CELL_ANGLE_TOLERANCE_DEG = 3.0


class MergeError(ValueError):
    """Reflections that cannot be merged as asked (most crystals do not fit the space group
    or the cell); the message says how many and why."""
_REQUIRED = ("frame", "crystal", "h", "k", "l", "I", "sigma")


# =========================================================================== symmetry
def _symmetrize_metric(gstar: np.ndarray, rots: np.ndarray) -> np.ndarray:
    """Average of ``R G* Rᵀ`` over the point group (the metric it leaves invariant)."""
    r = rots.astype(np.float64)
    return np.mean(r @ gstar @ np.transpose(r, (0, 2, 1)), axis=0)


def _fit_cell(hkl: np.ndarray, d_A: np.ndarray, sg):
    """Cell whose metric fits ``1/d² = hkl G* hklᵀ`` best, symmetrised by the point group."""
    import gemmi

    ok = np.isfinite(d_A) & (d_A > 0) & np.any(hkl != 0, axis=1)
    h = hkl[ok].astype(np.float64)
    y = 1.0 / d_A[ok] ** 2
    step = max(1, len(y) // 200_000)
    h, y = h[::step], y[::step]
    a = np.column_stack([h[:, 0] ** 2, h[:, 1] ** 2, h[:, 2] ** 2, 2 * h[:, 1] * h[:, 2],
                         2 * h[:, 0] * h[:, 2], 2 * h[:, 0] * h[:, 1]])
    if len(y) < 6 or np.linalg.matrix_rank(a) < 6:
        raise ValueError("too few distinct reflections to fit a cell from d_A; pass cell=")
    c = np.linalg.lstsq(a, y, rcond=None)[0]
    gstar = np.array([[c[0], c[5], c[4]], [c[5], c[1], c[3]], [c[4], c[3], c[2]]])
    gstar = _symmetrize_metric(gstar, point_group_rotations(sg))
    if np.any(np.linalg.eigvalsh(gstar) <= 0):
        raise ValueError("the d_A column does not fit a unit cell; pass cell=")
    g = np.linalg.inv(gstar)
    a_, b_, c_ = np.sqrt(np.diag(g))
    alpha = math.degrees(math.acos(g[1, 2] / (b_ * c_)))
    beta = math.degrees(math.acos(g[0, 2] / (a_ * c_)))
    gamma = math.degrees(math.acos(g[0, 1] / (a_ * b_)))
    return gemmi.UnitCell(a_, b_, c_, alpha, beta, gamma)


def _twin_laws(sg, gcell, max_obliquity: float) -> list:
    import gemmi

    return list(gemmi.find_twin_laws(gcell, sg, float(max_obliquity), False))


def ambiguity_operators(symmetry, cell=None, *, max_obliquity: float = MAX_OBLIQUITY_DEG
                        ) -> list[str]:
    """Indexing-ambiguity (twin-law) operators of a space group in a lattice.

    They are the rotations of the lattice's holohedry (found by gemmi for the cell, up
    to ``max_obliquity`` degrees) that are not in the point group, one per coset:
    reindexing a crystal by one of them gives an equally valid indexing that merges
    differently.

    Parameters
    ----------
    symmetry : str, gemmi.SpaceGroup or UnitCell
        Space group (a UnitCell brings its cell too).
    cell : UnitCell, gemmi.UnitCell or sequence of 6 floats, optional
        Needed unless ``symmetry`` is a UnitCell.
    max_obliquity : float
        Tolerance (degrees) for pseudo-symmetric lattices. Default 3.

    Returns
    -------
    list of str
        The operators as hkl triplets (``"-h,k,-l"``); empty when there is no ambiguity.

    Examples
    --------
    >>> ambiguity_operators("P 43", (79.1, 79.1, 37.9, 90, 90, 90))
    ['-h,k,-l']
    >>> ambiguity_operators("P 43 21 2", (79.1, 79.1, 37.9, 90, 90, 90))
    []
    """
    sg, sym_cell = resolve_symmetry(symmetry)
    gcell = as_gemmi_cell(cell if cell is not None else sym_cell)
    if gcell is None:
        raise ValueError("pass the cell")
    return [op.as_hkl().triplet() for op in _twin_laws(sg, gcell, max_obliquity)]


def map_to_asu(hkl, symmetry, *, anomalous: bool = False, cell=None):
    """Map Miller indices to gemmi's reciprocal asymmetric unit, all rows at once.

    Parameters
    ----------
    hkl : array_like of int, shape (n, 3)
    symmetry : str, gemmi.SpaceGroup or UnitCell
    anomalous : bool
        Keep Friedel mates apart: a row equivalent to the Friedel mate of an ASU
        reflection (and not centric) maps to that mate, ``-hkl_asu``.
    cell : optional
        Only sets the resolution the table reaches; default: a cubic cell that covers
        every row.

    Returns
    -------
    ndarray of int32, shape (n, 3)
        The ASU indices; ``0 0 0`` for systematic absences and ``0 0 0`` rows.

    Examples
    --------
    >>> map_to_asu([[-2, 1, 3], [1, 2, -3], [0, 0, 1]], "P 43 21 2").tolist()
    [[2, 1, 3], [2, 1, 3], [0, 0, 0]]
    """
    import gemmi

    sg, sym_cell = resolve_symmetry(symmetry)
    hkl = np.asarray(hkl, dtype=np.int64).reshape(-1, 3)
    gcell = as_gemmi_cell(cell if cell is not None else sym_cell)
    if gcell is None:
        gcell = gemmi.UnitCell(10, 10, 10, 90, 90, 90) if sg.crystal_system_str() not in (
            "trigonal", "hexagonal") else gemmi.UnitCell(10, 10, 10, 90, 90, 120)
        if sg.ext == "R":
            gcell = gemmi.UnitCell(10, 10, 10, 80, 80, 80)
    d = cell_d_spacings(gcell, hkl)
    d_min = float(np.min(d[np.isfinite(d)])) * (1 - 1e-6) if np.isfinite(d).any() else 1.0
    table = AsuTable(gcell, sg, d_min)
    u, friedel = table.lookup(hkl)
    g = table.group(u, friedel, anomalous)
    out = np.zeros((len(hkl), 3), dtype=np.int32)
    ok = g >= 0
    out[ok] = table.group_hkl(anomalous)[g[ok]]
    return out


# ========================================================================= halves
def frame_half(frame) -> np.ndarray:
    """Half data set (0 or 1) of each frame: the top bit of the SplitMix64 hash of its id.

    The split depends on nothing but the frame number, so it is the same whatever the
    number of workers or the order of the rows, and all crystals of a frame fall in one
    half.

    Examples
    --------
    >>> frame_half([0, 1, 2, 3]).tolist()
    [1, 1, 1, 0]
    """
    z = np.atleast_1d(np.asarray(frame, dtype=np.int64)).astype(np.uint64)
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(63)).astype(np.int8)


# ======================================================================== statistics
def cc_star(cc_half):
    """CC* = sqrt(2 CC1/2 / (1 + CC1/2)) (Karplus & Diederichs, 2012); 0 where CC1/2 <= 0.

    Examples
    --------
    >>> round(float(cc_star(0.5)), 4)
    0.8165
    """
    cc = np.asarray(cc_half, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(cc > 0, np.sqrt(2 * cc / (1 + cc)), 0.0)
    return np.where(np.isfinite(cc), out, np.nan)


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < MIN_PAIRS:
        return float("nan")
    dx = x - x.mean()
    dy = y - y.mean()
    den = math.sqrt(float(np.dot(dx, dx)) * float(np.dot(dy, dy)))
    return float(np.dot(dx, dy)) / den if den > 0 else float("nan")


def _shell_edges(d_min: float, d_max: float, n_shells: int) -> np.ndarray:
    """Edges in 1/d³ (ascending) of ``n_shells`` shells of equal reciprocal volume."""
    lo = 0.0 if not np.isfinite(d_max) else 1.0 / d_max ** 3
    return np.linspace(lo, 1.0 / d_min ** 3, n_shells + 1)


def _shell_table(d, i, sig, n, i1, i2, pair, possible_d, possible_w, n_shells, d_min,
                 d_max) -> pd.DataFrame:
    """Statistics per shell (and overall) of merged reflections with resolution ``d``."""
    if not len(d) and (d_min is None or d_max is None):
        return tables.STATISTICS.empty()
    d_min = float(np.min(d)) if d_min is None else float(d_min)
    d_max = float(np.max(d)) if d_max is None else float(d_max)
    edges = _shell_edges(d_min, d_max, n_shells)
    tol = 1e-9 * edges[-1]

    def shell_of(dd):
        x = 1.0 / dd ** 3
        s = np.searchsorted(edges, x, side="right") - 1
        s = np.where(np.abs(x - edges[-1]) <= tol, n_shells - 1, s)
        inside = (x >= edges[0] - tol) & (x <= edges[-1] + tol)
        return np.where(inside, np.clip(s, 0, n_shells - 1), -1)

    shell = shell_of(d)
    pshell = shell_of(possible_d)
    rows = []
    for s in [*range(n_shells), -1]:
        sel = shell == s if s >= 0 else shell >= 0
        psel = pshell == s if s >= 0 else pshell >= 0
        n_unique = int(np.count_nonzero(sel))
        n_obs = int(n[sel].sum())
        n_possible = int(possible_w[psel].sum())
        with np.errstate(invalid="ignore", divide="ignore"):
            ios = i[sel] / sig[sel]
        ios = ios[np.isfinite(ios)]
        both = sel & pair
        a, b = i1[both], i2[both]
        cc = _pearson(a, b)
        den = 0.5 * float(np.sum(a + b))
        rsplit = (float(np.sum(np.abs(a - b))) / (math.sqrt(2.0) * den)
                  if len(a) and den > 0 else float("nan"))
        if s >= 0:
            hi, lo = edges[s + 1], edges[s]
        else:
            hi, lo = edges[-1], edges[0]
        rows.append({
            "shell": s,
            "d_max_A": 1.0 / lo ** (1 / 3) if lo > 0 else float("inf"),
            "d_min_A": 1.0 / hi ** (1 / 3),
            "n_obs": n_obs,
            "n_unique": n_unique,
            "n_possible": n_possible,
            "completeness": n_unique / n_possible if n_possible else float("nan"),
            "multiplicity": n_obs / n_unique if n_unique else float("nan"),
            "i_over_sigma": float(ios.mean()) if len(ios) else float("nan"),
            "n_pairs": int(len(a)),
            "cc_half": cc,
            "cc_star": float(cc_star(cc)),
            "r_split": rsplit,
        })
    stats = tables.STATISTICS.make({c: [r[c] for r in rows] for c in tables.STATISTICS.names})
    stats.attrs["d_cc_star_A"] = cc_star_resolution(stats)
    return stats


def cc_star_resolution(stats: pd.DataFrame, threshold: float = 0.5) -> float:
    """Resolution (Å) where CC* falls below ``threshold``, interpolated between shells.

    Going from low to high resolution over the shells with a CC1/2, the first shell
    whose CC* is below the threshold and the one before it are joined by a straight line
    in ``1/d²`` (each shell at the centre of its reciprocal volume), and the crossing is
    returned. When CC* never falls below the threshold, the data's high-resolution limit
    (``d_min_A`` of the last shell) is returned; NaN when the first shell is below.

    Parameters
    ----------
    stats : DataFrame
        A statistics table (:data:`sxlab.tables.STATISTICS`).
    threshold : float
        Default 0.5.

    Examples
    --------
    >>> t = pd.DataFrame({"shell": [0, 1, 2, -1], "d_max_A": [np.inf, 4.0, 3.0, np.inf],
    ...                   "d_min_A": [4.0, 3.0, 2.5, 2.5],
    ...                   "cc_star": [0.95, 0.7, 0.3, 0.9]})
    >>> round(cc_star_resolution(t), 2)
    2.98
    """
    t = stats[(stats["shell"] >= 0) & np.isfinite(stats["cc_star"])]
    t = t.sort_values("shell")
    if not len(t):
        return float("nan")
    lo = np.where(np.isfinite(t["d_max_A"]), 1.0 / t["d_max_A"].to_numpy() ** 3, 0.0)
    hi = 1.0 / t["d_min_A"].to_numpy() ** 3
    x = (0.5 * (lo + hi)) ** (2.0 / 3.0)
    cc = t["cc_star"].to_numpy()
    below = np.flatnonzero(cc < threshold)
    if not len(below):
        return float(t["d_min_A"].iloc[-1])
    j = int(below[0])
    if j == 0:
        return float("nan")
    x0, x1, c0, c1 = x[j - 1], x[j], cc[j - 1], cc[j]
    xc = x0 + (c0 - threshold) / (c0 - c1) * (x1 - x0)
    return float(1.0 / math.sqrt(xc))


def _possible(table: AsuTable, anomalous: bool) -> tuple[np.ndarray, np.ndarray]:
    w = np.ones(len(table.hkl), dtype=np.int64)
    if anomalous:
        w = np.where(table.centric, 1, 2)
    return table.d, w


@tables.documented
def merging_statistics(merged: pd.DataFrame, half1: pd.DataFrame, half2: pd.DataFrame,
                       symmetry, *, cell=None, anomalous: bool | None = None,
                       n_shells: int = 20, d_min: float | None = None,
                       d_max: float | None = None) -> pd.DataFrame:
    """Data-quality statistics in resolution shells of equal reciprocal volume.

    Works on any merged data and its two half data sets, for example CrystFEL's
    ``.hkl``, ``.hkl1`` and ``.hkl2`` read with :func:`sxlab.io.read_hkl`, to compare
    with the output of :func:`merge` (which calls it).

    Parameters
    ----------
    merged, half1, half2 : DataFrame
        Tables with ``h, k, l, I, sigma, n_obs`` (:data:`sxlab.tables.MERGED`); the halves
        are paired with ``merged`` after mapping to the asymmetric unit.
    symmetry : str, gemmi.SpaceGroup or UnitCell
    cell : optional
        UnitCell, gemmi.UnitCell or six parameters; needed unless ``symmetry`` is a
        UnitCell or ``merged.attrs["cell"]`` is set.
    anomalous : bool, optional
        Friedel mates counted apart; default ``merged.attrs.get("anomalous", False)``.
    n_shells : int
        Default 20.
    d_min, d_max : float, optional
        Limits (Å) of the shells; default the range of ``merged``.

    Returns
    -------
    DataFrame
        One row per shell from low to high resolution and a last row (``shell`` -1) for
        all of them (:data:`sxlab.tables.STATISTICS`; ``cc_half`` is NaN with fewer than
        10 pairs):

        [columns: statistics]

        ``attrs["d_cc_star_A"]`` holds :func:`cc_star_resolution` of the table.

    Examples
    --------
    >>> import sxlab as sx
    >>> result = sx.merge(refl, "P 43 21 2")  # doctest: +SKIP
    >>> merging_statistics(result.merged, result.half1, result.half2, "P 43 21 2",
    ...                    cell=result.cell)  # doctest: +SKIP
    """
    sg, sym_cell = resolve_symmetry(symmetry)
    if cell is None:
        cell = sym_cell if sym_cell is not None else merged.attrs.get("cell")
    gcell = as_gemmi_cell(cell)
    if gcell is None:
        raise ValueError("pass the cell")
    if anomalous is None:
        anomalous = bool(merged.attrs.get("anomalous", False))
    hkl = merged[["h", "k", "l"]].to_numpy(np.int64)
    d = cell_d_spacings(gcell, hkl)
    finite = d[np.isfinite(d)]
    lim = min(finite.min() if len(finite) else np.inf, d_min or np.inf)
    if not np.isfinite(lim):
        return tables.STATISTICS.empty()
    table = AsuTable(gcell, sg, lim * (1 - 1e-6))

    def groups(t):
        u, fr = table.lookup(t[["h", "k", "l"]].to_numpy(np.int64))
        return table.group(u, fr, anomalous)

    g = groups(merged)
    keep = g >= 0
    if d_min is not None:
        keep &= d >= d_min * (1 - 1e-9)
    if d_max is not None:
        keep &= d <= d_max * (1 + 1e-9)
    n_groups = 2 * len(table.hkl) if anomalous else len(table.hkl)
    half_i = []
    half_has = []
    for half in (half1, half2):
        gh = groups(half)
        ok = gh >= 0
        vals = np.full(n_groups, np.nan)
        vals[gh[ok]] = half["I"].to_numpy(np.float64)[ok]
        has = np.zeros(n_groups, dtype=bool)
        has[gh[ok]] = True
        half_i.append(vals)
        half_has.append(has)
    gk = g[keep]
    pair = half_has[0][gk] & half_has[1][gk]
    pd_, pw = _possible(table, anomalous)
    return _shell_table(d[keep], merged["I"].to_numpy(np.float64)[keep],
                        merged["sigma"].to_numpy(np.float64)[keep],
                        merged["n_obs"].to_numpy(np.int64)[keep],
                        np.where(pair, half_i[0][gk], 0.0), np.where(pair, half_i[1][gk], 0.0),
                        pair, pd_, pw, n_shells, d_min, d_max)


# ============================================================================ result
class MergeResult(tuple):
    """What :func:`merge` returns: the pair ``(merged, stats)`` with more attributes.

    It unpacks like a tuple (``merged, stats = sx.merge(...)``); the per-crystal scales
    and the half data sets are attributes.

    Attributes
    ----------
    merged : DataFrame
        Merged reflections (:data:`sxlab.tables.MERGED`); ``attrs`` hold ``symmetry``,
        ``cell`` (six parameters) and ``anomalous``.
    stats : DataFrame
        Statistics in shells (:func:`merging_statistics`).
    scales : DataFrame
        One row per crystal (:data:`sxlab.tables.SCALES`): G, relative B, the reindexing
        operator, CC with the merged data, whether and why it was rejected.
    half1, half2 : DataFrame
        The two half data sets (:data:`sxlab.tables.MERGED`) of the reflections in ``merged``,
        split by :func:`frame_half`, for CrystFEL's ``.hkl1`` / ``.hkl2``.
    cell : UnitCell
        The cell used (with the space group).
    anomalous : bool
    cc_star_resolution_A : float
        Resolution where CC* falls below 0.5 (:func:`cc_star_resolution`).
    n_reindexed : int
        Crystals whose indexing was changed by the ambiguity resolver.
    ambiguity_operators : list of str
        Operators the resolver chose from besides the identity (empty: none was run).
    ambiguity_changes : list of int
        Crystals that changed setting in each pass after the first.
    notes : list of str
        What the merge decided that a user should know: the cell and where it came from
        (given, or fitted to the observations' resolutions), crystals reindexed into the
        space group's setting or rejected and why.
    counts : dict
        Observations ``read``; left out as ``flagged``, ``above_max_adu``,
        ``invalid_intensity`` (non-finite I or σ, σ <= 0), ``low_partiality``,
        ``outside_resolution``, ``absent_or_000`` (systematic absences, 0 0 0) and
        ``outliers`` (each key present when its step ran); ``used`` in the merge;
        ``crystals`` and ``crystals_rejected``.

    Examples
    --------
    >>> obs = pd.DataFrame({"frame": [0, 0, 1, 1], "crystal": 0, "h": [2, 2, -2, 1],
    ...                     "k": [0, 1, 0, 2], "l": [1, 3, -1, -3],
    ...                     "I": [10.0, 5.0, 12.0, 6.0], "sigma": 1.0})
    >>> result = merge(obs, "P 43 21 2", cell=(79.1, 79.1, 37.9, 90, 90, 90), scale=False)
    >>> merged, stats = result
    >>> merged[["h", "k", "l", "I", "n_obs"]]
       h  k  l     I  n_obs
    0  2  0  1  11.0      2
    1  2  1  3   5.5      2
    >>> result.scales[["frame", "crystal", "scale", "rejected"]]
       frame  crystal  scale  rejected
    0      0        0    1.0     False
    1      1        0    1.0     False
    """

    def __new__(cls, merged, stats, **attributes):
        self = super().__new__(cls, (merged, stats))
        self.__dict__.update(attributes)
        return self

    def __getnewargs__(self):
        return (self[0], self[1])

    @property
    def merged(self) -> pd.DataFrame:
        return self[0]

    @property
    def stats(self) -> pd.DataFrame:
        return self[1]

    def __repr__(self) -> str:
        overall = self.stats[self.stats["shell"] == -1]
        text = f"<MergeResult {len(self.merged)} unique reflections"
        if len(overall):
            o = overall.iloc[0]
            text += (f", completeness {100 * o.completeness:.1f} %, multiplicity "
                     f"{o.multiplicity:.1f}, CC1/2 {o.cc_half:.3f}")
        scales = getattr(self, "scales", None)
        if scales is not None:
            text += (f", {int((~scales.rejected).sum())} crystal(s) merged, "
                     f"{int(scales.rejected.sum())} rejected")
        return text + f", CC* > 0.5 to {getattr(self, 'cc_star_resolution_A', np.nan):.2f} Å>"

    def _repr_html_(self) -> str:
        table = self.stats.to_html(index=False, float_format=lambda v: f"{v:.3g}")
        return f"<div><b>{html.escape(repr(self)[1:-1])}</b>{table}</div>"


# ========================================================================== merging
def _group_means(g, values, sigma, n_groups):
    """Per group: count, mean, and σ = sqrt(max(sample variance, mean σ_i²) / n)."""
    n = np.bincount(g, minlength=n_groups)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        total = np.bincount(g, weights=values, minlength=n_groups)
        mean = total / n
        dev = values - mean[g]
        ss = np.bincount(g, weights=dev * dev, minlength=n_groups)
        s2 = np.bincount(g, weights=sigma * sigma, minlength=n_groups)
        var = np.where(n >= 2, np.maximum(ss / np.maximum(n - 1, 1), s2 / n), s2)
        sig = np.sqrt(var / n)
    return n, mean, sig


def _select(reflections: pd.DataFrame, *, reject_flags, max_adu, partiality,
            min_partiality, counts):
    missing = [c for c in _REQUIRED if c not in reflections.columns]
    if missing:
        raise KeyError(f"the reflection table lacks the columns {missing}")
    if partiality and "partiality" not in reflections.columns:
        raise KeyError("partiality=True needs a 'partiality' column")
    if max_adu is not None and "peak" not in reflections.columns:
        raise KeyError("max_adu needs a 'peak' column (largest peak pixel)")
    n = len(reflections)
    keep = np.ones(n, dtype=bool)
    counts["read"] = n
    if reject_flags:
        flags = [c for c in reflections.columns if str(c).startswith("flag_")]
        bad = np.zeros(n, dtype=bool)
        for c in flags:
            bad |= reflections[c].to_numpy(dtype=bool)
        counts["flagged"] = int(np.count_nonzero(bad & keep))
        keep &= ~bad
    if max_adu is not None:
        over = reflections["peak"].to_numpy(np.float64) > max_adu
        counts["above_max_adu"] = int(np.count_nonzero(over & keep))
        keep &= ~over
    i = reflections["I"].to_numpy(np.float64)
    s = reflections["sigma"].to_numpy(np.float64)
    bad = ~(np.isfinite(i) & np.isfinite(s) & (s > 0))
    counts["invalid_intensity"] = int(np.count_nonzero(bad & keep))
    keep &= ~bad
    if partiality:
        p = reflections["partiality"].to_numpy(np.float64)
        low = ~(p >= min_partiality)
        counts["low_partiality"] = int(np.count_nonzero(low & keep))
        keep &= ~low
    return keep


_BASIS_COLUMNS = [f"{v}star_{x}" for v in "abc" for x in "xyz"]


def _cell_text(parameters) -> str:
    a, b, c, al, be, ga = parameters
    return f"{a:.2f} {b:.2f} {c:.2f} Å {al:.2f} {be:.2f} {ga:.2f}°"


def _target_lattice(sg) -> UnitCell:
    """A unit cell carrying the lattice type, centering and unique axis of a space group."""
    return UnitCell(1.0, 1.0, 1.0, space_group=sg.xhm() if sg.ext == "R" else sg.hm)


def _crystal_settings(crystals: pd.DataFrame, sg) -> tuple[np.ndarray, list[str], list]:
    """Per crystal: the index transformation into the space group's setting, or why not.

    Returns ``(transforms, reasons, changed_from)``: ``transforms[i]`` is a 3×3 matrix
    (``hkl_new = hkl @ T.T``; NaN for a rejected crystal), ``reasons[i]`` empty or why
    crystal ``i`` is rejected, ``changed_from[i]`` the ``(lattice, centering)`` a
    reindexed crystal had (None when kept as it was).
    """
    from .cell import to_primitive
    from .lattice import bravais_setting, lattice_mismatch

    missing = [c for c in ("frame", "crystal", *_BASIS_COLUMNS) if c not in crystals.columns]
    if missing:
        raise KeyError(f"the crystals table lacks the columns {missing}")
    target = _target_lattice(sg)
    want = (target.lattice_type, target.centering)
    astar = crystals[_BASIS_COLUMNS].to_numpy(np.float64).reshape(-1, 3, 3)
    lattices = (crystals["lattice"].astype(str).to_numpy() if "lattice" in crystals
                else np.full(len(crystals), "triclinic"))
    centerings = (crystals["centering"].astype(str).to_numpy() if "centering" in crystals
                  else np.full(len(crystals), "P"))
    n = len(crystals)
    transforms = np.full((n, 3, 3), np.nan)
    reasons = [""] * n
    changed: list = [None] * n
    for i in range(n):
        lat = lattices[i] if lattices[i] in ("triclinic", "monoclinic", "orthorhombic",
                                             "tetragonal", "hexagonal", "rhombohedral",
                                             "cubic") else "triclinic"
        cen = centerings[i] if centerings[i] in tuple("PABCIFRH") else "P"
        try:
            basis = np.linalg.inv(astar[i]).T
            cell = UnitCell.from_direct_basis(basis)
        except (ValueError, np.linalg.LinAlgError):
            reasons[i] = "no valid reciprocal basis"
            continue
        if cen == target.centering and lattice_mismatch(
                cell, *want[:1], target.unique_axis, length_tol=0.02,
                angle_tol_deg=2.0) is None:
            transforms[i] = np.eye(3)
            continue
        try:
            prim, u = to_primitive(basis, cen, lattice_type=lat)
            setting = bravais_setting(prim)
        except (ValueError, RuntimeError, np.linalg.LinAlgError):
            reasons[i] = f"{lat} {cen} cell {_cell_text(cell.parameters)} is no lattice"
            continue
        fits = (setting.lattice_type, setting.centering) == want or (
            setting.centering == target.centering and lattice_mismatch(
                setting.cell, target.lattice_type, target.unique_axis, length_tol=0.02,
                angle_tol_deg=2.0) is None)
        if fits:
            transforms[i] = setting.transform @ u
            changed[i] = (lat, cen)
        else:
            reasons[i] = (f"its lattice is {setting.lattice_type} {setting.centering} "
                          f"({_cell_text(setting.cell.parameters)}), not "
                          f"{target.lattice_type} {target.centering}")
    return transforms, reasons, changed


def _reindex_crystals(reflections: pd.DataFrame, crystals: pd.DataFrame, sg, notes: list,
                      counts: dict):
    """Put every crystal in the space group's setting (see :func:`merge`, step 0).

    Returns the reflections and crystals in that setting, and a boolean per reflection
    row: its crystal was rejected.
    """
    transforms, reasons, changed = _crystal_settings(crystals, sg)
    target = _target_lattice(sg)
    n = len(crystals)
    ok = np.array([not r for r in reasons], dtype=bool)
    # the cells in the new setting, checked against their median
    astar = crystals[_BASIS_COLUMNS].to_numpy(np.float64).reshape(-1, 3, 3)
    params6 = np.full((n, 6), np.nan)
    new_astar = astar.copy()
    for i in np.flatnonzero(ok):
        basis = transforms[i] @ np.linalg.inv(astar[i]).T
        new_astar[i] = np.linalg.inv(basis).T
        params6[i] = UnitCell.from_direct_basis(basis).parameters
    if ok.any():
        median = np.median(params6[ok], axis=0)
        far = ok & ((np.abs(params6[:, :3] / median[:3] - 1) > CELL_LENGTH_TOLERANCE).any(1)
                    | (np.abs(params6[:, 3:] - median[3:]) > CELL_ANGLE_TOLERANCE_DEG).any(1))
        for i in np.flatnonzero(far):
            reasons[i] = (f"its cell {_cell_text(params6[i])} is far from the others' median "
                          f"{_cell_text(median)}")
        ok &= ~far
    n_bad = int(np.count_nonzero(~ok))
    counts["crystals_cell_rejected"] = n_bad
    counts["crystals_cell_reindexed"] = int(sum(c is not None for c in np.asarray(
        changed, dtype=object)[ok]))
    sg_name = sg.xhm() if sg.ext == "R" else sg.hm
    if n_bad:
        why: dict[str, int] = {}
        for i in np.flatnonzero(~ok):
            kind = reasons[i].split(" (")[0] if "far from" not in reasons[i] else \
                "cell far from the others' median"
            why[kind] = why.get(kind, 0) + 1
        summary = "; ".join(f"{k}: {v}" for k, v in sorted(why.items(), key=lambda x: -x[1]))
        if n_bad > n / 2:
            example = reasons[int(np.flatnonzero(~ok)[0])]
            raise MergeError(
                f"{n_bad} of {n} crystals do not fit {sg_name} ({summary}); e.g. "
                f"frame {int(crystals['frame'].iloc[int(np.flatnonzero(~ok)[0])])}: "
                f"{example}. Is the space group right? Else process again with the cell "
                "(sxlab process --cell) or the symmetry (--symmetry)")
        notes.append(f"{n_bad} of {n} crystals rejected: {summary}")
    if counts["crystals_cell_reindexed"]:
        kinds: dict[str, int] = {}
        for i in np.flatnonzero(ok):
            if changed[i] is not None:
                key = " ".join(changed[i])
                kinds[key] = kinds.get(key, 0) + 1
        frm = ", ".join(f"{v} {k}" for k, v in kinds.items())
        notes.append(f"{counts['crystals_cell_reindexed']} crystals reindexed into the "
                     f"{target.lattice_type} {target.centering} setting of {sg_name} (from "
                     f"{frm})")
    # reflections: new indices per crystal
    key = pd.MultiIndex.from_frame(crystals[["frame", "crystal"]].astype(np.int64))
    pos = key.get_indexer(pd.MultiIndex.from_arrays([
        reflections["frame"].to_numpy(np.int64), reflections["crystal"].to_numpy(np.int64)]))
    unknown = pos < 0
    counts["crystal_not_in_table"] = int(np.count_nonzero(unknown))
    t = np.where(unknown[:, None, None], np.eye(3), transforms[np.maximum(pos, 0)])
    hkl = reflections[["h", "k", "l"]].to_numpy(np.float64)
    new = np.einsum("nij,nj->ni", t, hkl)
    rejected = ~unknown & ~ok[np.maximum(pos, 0)]
    whole = np.all(np.abs(new - np.rint(np.where(np.isfinite(new), new, 0))) < 1e-3, axis=1)
    rejected |= ~rejected & ~whole
    new = np.where(rejected[:, None], hkl, np.rint(np.where(np.isfinite(new), new, 0)))
    out = reflections.copy()
    out[["h", "k", "l"]] = new.astype(reflections["h"].dtype)
    xt = crystals.copy()
    xt[_BASIS_COLUMNS] = new_astar.reshape(-1, 9)
    for j, name in enumerate(("a", "b", "c", "alpha", "beta", "gamma")):
        if name in xt:
            xt[name] = np.where(ok, params6[:, j], xt[name].to_numpy(np.float64))
    if "lattice" in xt:
        xt["lattice"] = np.where(ok, target.lattice_type, xt["lattice"].astype(str))
        xt["centering"] = np.where(ok, target.centering, xt["centering"].astype(str))
    return out, xt, rejected


def _shell_d_min(d_min: float | None, d: np.ndarray) -> float | None:
    """The shells' high-resolution limit: ``d_min``, but never beyond the data's (1 %)."""
    if d_min is None or not len(d):
        return d_min
    highest = float(np.min(d))
    return highest if highest > d_min * 1.01 else d_min


def _fit_check(hkl, d_a, cidx, n_crystals, gcell, keep, notes, counts, cell_source):
    """Reject crystals whose indices do not give their measured d with the cell."""
    d = cell_d_spacings(gcell, hkl)
    with np.errstate(invalid="ignore", divide="ignore"):
        dev = np.abs(d / d_a - 1.0)
    usable = keep & np.isfinite(dev)
    if not usable.any():
        return keep
    frame_dev = pd.Series(dev[usable]).groupby(cidx[usable]).median()
    bad_c = frame_dev.index[frame_dev.to_numpy() > D_FIT_TOLERANCE].to_numpy()
    n_checked = len(frame_dev)
    counts["crystals_d_mismatch"] = len(bad_c)
    overall = float(np.median(dev[usable]))
    if len(bad_c) > n_checked / 2:
        raise MergeError(
            f"{len(bad_c)} of {n_checked} crystals have indices that do not give their "
            f"measured resolutions with the cell {_cell_text(gcell.parameters)} "
            f"({cell_source}; median |d(hkl)/d - 1| = {100 * overall:.1f} %): the crystals "
            "are indexed in another setting or another lattice than the space group's. "
            "Merge an output directory (its crystals are then checked and reindexed), or "
            "process again with the cell (sxlab process --cell) or the symmetry (--symmetry)")
    if len(bad_c):
        notes.append(f"{len(bad_c)} of {n_checked} crystals rejected: their indices do not "
                     f"give their measured resolutions with the cell (more than "
                     f"{100 * D_FIT_TOLERANCE:.0f} % off)")
        keep = keep & ~np.isin(cidx, bad_c)
    return keep


def _crystal_index(frame: np.ndarray, crystal: np.ndarray):
    """Dense crystal number of each row and the (frame, crystal) of each number."""
    span = int(crystal.max()) + 1 if len(crystal) else 1
    key = frame.astype(np.int64) * span + crystal.astype(np.int64)
    keys, inverse = np.unique(key, return_inverse=True)
    return inverse.astype(np.int64), keys // span, keys % span


def _normalised(values: np.ndarray, s2: np.ndarray, n_bins: int = 20) -> np.ndarray:
    """Values divided by their mean in bins of equal count in s² (no resolution fall-off)."""
    if not len(values):
        return values.copy()
    order = np.argsort(s2, kind="stable")
    bins = np.empty(len(values), dtype=np.int64)
    bins[order] = np.arange(len(values)) * n_bins // len(values)
    total = np.bincount(bins, weights=values, minlength=n_bins)
    count = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / count
    mean = np.where(np.isfinite(mean) & (mean > 0), mean, 1.0)
    return values / mean[bins]


def _coset_table(ops: list[np.ndarray], rots: np.ndarray) -> np.ndarray | None:
    """``table[a, b]``: the operator equivalent to applying ``a`` then ``b``⁻¹."""
    rot_set = {tuple(r.ravel()) for r in rots}
    inv = [np.rint(np.linalg.inv(o)).astype(np.int64) for o in ops]
    n = len(ops)
    table = np.full((n, n), -1, dtype=np.int64)
    for a in range(n):
        for b in range(n):
            m = ops[a] @ inv[b]
            for k in range(n):
                if tuple((inv[k] @ m).ravel()) in rot_set:
                    table[a, b] = k
                    break
    return None if np.any(table < 0) else table


def _resolve(start, stop, hkl, intensity, s2, table, ops, rots):
    """Operator index per crystal chosen by the ambiguity resolver (0: identity)."""
    u_alt = np.empty((len(ops), len(hkl)), dtype=np.int64)
    friedel_alt = np.empty((len(ops), len(hkl)), dtype=bool)
    for o, r in enumerate(ops):
        u_alt[o], friedel_alt[o] = table.lookup(hkl @ r)
    x = _normalised(intensity, s2)
    n_obs = stop - start
    order = np.argsort(-n_obs, kind="stable")
    assign, best_cc, changes = _k.resolve_ambiguity(
        start, stop, order, u_alt, x, len(table.hkl), _AMBIGUITY_PASSES,
        _AMBIGUITY_MIN_OVERLAP)
    decided = np.isfinite(best_cc)
    cosets = _coset_table(ops, rots)
    if cosets is not None and decided.any():
        ref = int(np.bincount(assign[decided], minlength=len(ops)).argmax())
        assign = np.where(decided, cosets[assign, ref], 0)
    return assign, u_alt, friedel_alt, changes


@dataclass
class _Observations:
    """The observations selected for merging, sorted by crystal.

    Crystal ``c`` (numbered densely, in (frame, crystal) order) owns rows
    ``start[c]:stop[c]``; ``d`` is each row's resolution from the cell (Å).
    """

    frame: np.ndarray
    cidx: np.ndarray
    start: np.ndarray
    stop: np.ndarray
    hkl: np.ndarray
    intensity: np.ndarray
    sigma: np.ndarray
    part: np.ndarray
    d: np.ndarray
    c_frame: np.ndarray
    c_crystal: np.ndarray

    @property
    def n_crystals(self) -> int:
        return len(self.c_frame)


def _observations(reflections, keep, gcell, d_min, d_max, partiality, counts
                  ) -> _Observations:
    """Rows of ``keep`` within the resolution limits, sorted by crystal."""
    hkl = reflections[["h", "k", "l"]].to_numpy(np.int64)
    d = cell_d_spacings(gcell, hkl)
    in_range = np.isfinite(d)
    if d_min is not None:
        in_range &= d >= d_min
    if d_max is not None:
        in_range &= d <= d_max
    counts["outside_resolution"] = int(np.count_nonzero(keep & ~in_range))
    rows = np.flatnonzero(keep & in_range)
    frame = reflections["frame"].to_numpy(np.int64)[rows]
    crystal = reflections["crystal"].to_numpy(np.int64)[rows]
    cidx, c_frame, c_crystal = _crystal_index(frame, crystal)
    order = np.argsort(cidx, kind="stable")
    rows, cidx = rows[order], cidx[order]
    bounds = np.searchsorted(cidx, np.arange(len(c_frame) + 1)).astype(np.int64)
    return _Observations(
        frame=frame[order], cidx=cidx, start=bounds[:-1], stop=bounds[1:], hkl=hkl[rows],
        intensity=reflections["I"].to_numpy(np.float64)[rows],
        sigma=reflections["sigma"].to_numpy(np.float64)[rows],
        part=(reflections["partiality"].to_numpy(np.float64)[rows] if partiality
              else np.ones(len(rows))),
        d=d[rows], c_frame=c_frame, c_crystal=c_crystal)


def _relative_error(intensity, sigma, model, use, min_strong=100):
    """Robust relative scatter of observations about the model, beyond their σ."""
    strong = use & (model > 5.0 * sigma)
    if np.count_nonzero(strong) < min_strong:
        return 0.5
    ratio = np.abs(intensity[strong] - model[strong]) / model[strong]
    return float(np.clip(1.4826 * np.median(ratio), 0.02, 2.0))


def _scale(obs: _Observations, g, s2, n_groups, active, reason, *, iterations, ref_min,
           min_reflections, max_b):
    """Iterate merging and per-crystal scale refinement (see :func:`merge`, Notes).

    ``active`` and ``reason`` are updated in place as crystals are rejected. Returns G,
    B and the observations used in the last fit of each crystal.
    """
    n_cryst = obs.n_crystals
    gscale = np.ones(n_cryst)
    bscale = np.zeros(n_cryst)
    n_scaled = np.zeros(n_cryst, dtype=np.int64)
    present = g >= 0
    for _ in range(iterations):
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            # Rejected crystals may hold any (G, B); their rows are not used.
            shape = gscale[obs.cidx] * np.exp(-2.0 * bscale[obs.cidx] * s2)
            factor = shape * obs.part
            i_corr, s_corr = obs.intensity / factor, obs.sigma / factor
        gg = np.where(active[obs.cidx] & present, g, n_groups)
        n, mean, _ = _group_means(gg, i_corr, s_corr, n_groups + 1)
        ref_ok = n >= ref_min
        ref_ok[-1] = False
        y = mean[gg] * obs.part
        use = ref_ok[gg] & np.isfinite(y)
        model = shape * y
        kappa = _relative_error(obs.intensity, obs.sigma, model, use)
        w = 1.0 / (obs.sigma ** 2 + (kappa * model) ** 2)
        g_new, b_new = gscale.copy(), bscale.copy()
        n_used = np.zeros(n_cryst, dtype=np.int64)
        _k.refine_scales(obs.start, obs.stop, obs.intensity, w, s2, y, use, g_new, b_new,
                         n_used, _GAUSS_NEWTON_STEPS)
        fitted = active.copy()
        n_scaled[fitted] = n_used[fitted]
        gscale[fitted] = g_new[fitted]
        bscale[fitted] = b_new[fitted]
        for failed, why in (
            (n_used < min_reflections, "too few reflections"),
            (~(np.isfinite(g_new) & np.isfinite(b_new)), "scale not finite"),
            (~(g_new > 0), "G <= 0"),
            (~(np.abs(b_new) <= max_b), "extreme B"),
        ):
            reason[active & failed] = why
            active &= ~failed
        if active.any():
            gscale[active] /= np.exp(np.mean(np.log(gscale[active])))
            bscale[active] -= np.mean(bscale[active])
    return gscale, bscale, n_scaled


def _outliers(g, values, n_groups, limit) -> np.ndarray:
    """Rows more than ``limit`` standard deviations from the mean of their group's others.

    Groups of fewer than 4 rows have no outliers.
    """
    n = np.bincount(g, minlength=n_groups)[g]
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        total = np.bincount(g, weights=values, minlength=n_groups)[g]
        dev = values - total / np.maximum(n, 1)
        ss = np.bincount(g, weights=dev * dev, minlength=n_groups)[g]
        others = (total - values) / (n - 1)
        ss_others = ss - dev * dev * n / (n - 1)
        z = np.abs(values - others) / np.sqrt(ss_others / (n - 2))
    return (n >= 4) & (z > limit)


def _crystal_cc(cidx, n_cryst, use, x, y) -> np.ndarray:
    """Pearson CC per crystal of ``x`` with ``y`` over its rows with ``use`` (NaN if < 3)."""
    x = np.where(use, x, 0.0)
    y = np.where(use, y, 0.0)

    def total(v):
        return np.bincount(cidx, weights=v, minlength=n_cryst)

    n = total(use.astype(np.float64))
    sx, sy = total(x), total(y)
    with np.errstate(invalid="ignore", divide="ignore"):
        vx = total(x * x) - sx * sx / n
        vy = total(y * y) - sy * sy / n
        cc = (total(x * y) - sx * sy / n) / np.sqrt(vx * vy)
    return np.where((n >= 3) & (vx > 0) & (vy > 0), cc, np.nan)


@tables.documented
def merge(reflections: pd.DataFrame, symmetry, *, cell=None, crystals=None, beam=None,
          params: MergeParams | None = None, **overrides) -> MergeResult:
    """Scale and merge a reflection table into unique intensities with statistics.

    Parameters
    ----------
    reflections : DataFrame
        One row per observation with ``frame, crystal, h, k, l, I, sigma``
        (:data:`sxlab.tables.REFLECTIONS`); ``d_A`` is used to fit the cell
        when none is given, ``partiality`` with ``partiality=True``, ``peak`` with
        ``max_adu`` and the ``flag_*`` columns with ``reject_flags``.
    symmetry : str, gemmi.SpaceGroup or UnitCell
        Space group of the data (``"P43212"``, ``"P 43 21 2"``); a UnitCell with a
        space group also gives the cell.
    cell : UnitCell, gemmi.UnitCell or sequence of 6 floats, optional
        Cell for resolutions and completeness. Default: the UnitCell given as
        ``symmetry``, else the cell whose metric fits ``hkl`` and ``d_A`` of the
        observations best, made to obey the point group.
    crystals : DataFrame, optional
        The crystals table (:data:`sxlab.tables.CRYSTALS`) the reflections were
        integrated with: each crystal's cell is checked against the space group's
        lattice and the others' (step 0 of the module notes), crystals in another
        setting are reindexed, the others rejected. Post-refinement (``model`` other
        than ``unity``) needs it with the reciprocal basis ``astar_x`` ... ``cstar_z``.
    beam : Beam or Detector, optional
        Wavelength and bandwidth (a geometry gives its beam); needed by post-refinement.
    params : MergeParams, optional
        The merging parameters (default :class:`MergeParams` (), the ``[merge]`` section
        of a trial).
    **overrides
        Single fields of :class:`MergeParams`: ``scale``, ``iterations``,
        ``min_measurements``, ``partiality``, ``min_partiality``, ``anomalous``,
        ``resolve_ambiguity``, ``n_shells``, ``d_min``, ``d_max``, ``max_adu``,
        ``reject_flags``, ``outlier_sigma``, ``max_b_A2``, ``min_crystal_reflections``,
        ``model``, ``postrefine_cycles``
        (``sx.merge(refl, "P43212", d_min=2.0, scale=False)``).

    Returns
    -------
    MergeResult
        Unpacks as ``(merged, stats)``; the per-crystal scales are ``.scales``, the
        half data sets ``.half1`` and ``.half2``.

        ``merged`` (:data:`sxlab.tables.MERGED`), one row per unique reflection with at least
        ``min_measurements`` observations, sorted by resolution (low first); ``I`` and
        ``sigma`` are on the scale of the mean crystal:

        [columns: merged]

        ``stats``: see :func:`merging_statistics`.

        ``scales`` (:data:`sxlab.tables.SCALES`), one row per crystal; ``scale`` has a
        geometric mean of 1 and ``b_A2`` a mean of 0 over the merged crystals; ``reason``
        is one of "too few reflections", "scale not finite", "G <= 0", "extreme B" or
        "no reflection in the asymmetric unit":

        [columns: scales]

    Notes
    -----
    Scaling follows partialator's ``unity`` model: all scales start at ``G = 1``,
    ``B = 0``; each iteration merges with the current scales, then refines every crystal
    by weighted least squares of ``G exp(-2 B s²) p I_merged`` (``p`` the partiality
    when corrected, else 1; ``s = 1/(2d)``) against its observations of reference
    reflections (those with at least ``max(min_measurements, 2)`` observations). The
    weights are ``1 / (σ² + (κ m)²)`` with ``m`` the model intensity and ``κ`` the
    robust relative scatter of the strong observations about the model (1.48 times the
    median of ``|I - m| / m`` where ``m > 5σ``): uncorrected partialities scatter
    Monte Carlo data in proportion to the intensity, far beyond the counting error σ,
    and weighting by 1/σ² alone would let the weakest reflections decide the scales.
    Failed crystals are rejected; the scales of the rest are normalised to a
    geometric-mean G of 1 and mean B of 0.

    The half data sets for CC1/2 and Rsplit are split by a hash of the frame number
    (:func:`frame_half`), so both crystals of a frame are in the same half and the
    split does not depend on how the data were processed.

    The ambiguity resolver compares intensities normalised by their mean in resolution
    bins. Its first pass merges crystals one by one (most observations first), each in
    the setting that correlates best with the crystals merged before it; later passes
    take every crystal out of the merged set and put it back in its best setting, until
    nothing changes (at most 5 passes). Finally the setting most crystals agree on is
    made the identity, so ``n_reindexed`` counts the minority.

    Post-refinement (``model="gaussian"`` or ``"xsphere"``) starts from the unity
    scales and the indexed orientations and runs ``postrefine_cycles`` cycles of a
    weighted least-squares merge of full intensities and Gauss–Newton steps of the
    parameters (:class:`sxlab.postrefinement.PostRefinement`); the output, its halves
    and the statistics come from the same partiality-corrected merge, and the result
    carries the refinement as ``.postrefinement``.

    Examples
    --------
    >>> import sxlab as sx
    >>> run = sx.datasets.load("lysozyme-demo", progress=False)  # doctest: +SKIP
    >>> res = sx.process_run(run, executor="serial", progress=False)  # doctest: +SKIP
    >>> merged, stats = sx.merge(res.reflections, "P43212")  # doctest: +SKIP
    >>> result = sx.merge(res.reflections, "P43212")  # doctest: +SKIP
    >>> result.scales[["frame", "scale", "b_A2", "rejected"]]  # doctest: +SKIP
    >>> sx.write_mtz(result.merged, "merged.mtz")  # doctest: +SKIP

    A small table, merged without scaling:

    >>> obs = pd.DataFrame({"frame": [0, 0, 1, 1], "crystal": 0, "h": [2, 2, -2, 1],
    ...                     "k": [0, 1, 0, 2], "l": [1, 3, -1, -3],
    ...                     "I": [10.0, 5.0, 12.0, 6.0], "sigma": 1.0})
    >>> merged, stats = merge(obs, "P43212", cell=(79.1, 79.1, 37.9, 90, 90, 90),
    ...                       scale=False)
    >>> merged[["h", "k", "l", "I", "sigma", "n_obs"]].round(3)
       h  k  l     I  sigma  n_obs
    0  2  0  1  11.0  1.000      2
    1  2  1  3   5.5  0.707      2
    """
    p = (params or MergeParams()).replace(**overrides)
    sg, sym_cell = resolve_symmetry(symmetry)
    counts: dict = {}
    notes: list[str] = []
    cell_rejected = None
    if crystals is not None:
        reflections, crystals, cell_rejected = _reindex_crystals(reflections, crystals, sg,
                                                                 notes, counts)
    keep = _select(reflections, reject_flags=p.reject_flags, max_adu=p.max_adu,
                   partiality=p.partiality, min_partiality=p.min_partiality, counts=counts)
    if cell_rejected is not None:
        counts["cell_rejected"] = int(np.count_nonzero(keep & cell_rejected))
        keep &= ~cell_rejected
    if cell is None and sym_cell is None:
        if "d_A" not in reflections.columns:
            raise KeyError("pass cell= or give the reflections a 'd_A' column")
        if not keep.any():
            raise ValueError("no usable observation to fit a cell to; pass cell=")
        gcell = _fit_cell(reflections[["h", "k", "l"]].to_numpy(np.int64)[keep],
                          reflections["d_A"].to_numpy(np.float64)[keep], sg)
        cell_source = (f"fitted to the resolutions (d_A) of {int(keep.sum())} observations "
                       "and the space group")
    else:
        gcell = as_gemmi_cell(cell if cell is not None else sym_cell)
        cell_source = "given"
    ucell = UnitCell(*gcell.parameters, space_group=sg.xhm() if sg.ext == "R" else sg.hm)
    if "d_A" in reflections.columns and keep.any():
        cidx_all, _, _ = _crystal_index(reflections["frame"].to_numpy(np.int64),
                                        reflections["crystal"].to_numpy(np.int64))
        keep = _fit_check(reflections[["h", "k", "l"]].to_numpy(np.int64),
                          reflections["d_A"].to_numpy(np.float64), cidx_all,
                          int(cidx_all.max()) + 1, gcell, keep, notes, counts, cell_source)
    notes.insert(0, f"cell {_cell_text(gcell.parameters)} ({cell_source})")

    obs = _observations(reflections, keep, gcell, p.d_min, p.d_max, p.partiality, counts)
    lim = float(obs.d.min()) if len(obs.d) else (p.d_min or 10.0)
    table = AsuTable(gcell, sg, lim * (1 - 1e-6))
    ops, op_names = [np.eye(3, dtype=np.int64)], ["h,k,l"]
    if p.resolve_ambiguity and obs.n_crystals > 1:
        import gemmi

        for op in _twin_laws(sg, gcell, MAX_OBLIQUITY_DEG):
            ops.append(np.array(op.rot, dtype=np.int64) // gemmi.Op.DEN)
            op_names.append(op.as_hkl().triplet())
    assign = np.zeros(obs.n_crystals, dtype=np.int64)
    changes = np.zeros(0, dtype=np.int64)
    if len(ops) > 1:
        assign, u_alt, friedel_alt, changes = _resolve(
            obs.start, obs.stop, obs.hkl, obs.intensity / obs.part, 0.25 / obs.d ** 2,
            table, ops, point_group_rotations(sg))
        pick = assign[obs.cidx], np.arange(len(obs.cidx))
        u, friedel = u_alt[pick], friedel_alt[pick]
    else:
        u, friedel = table.lookup(obs.hkl)
    g = table.group(u, friedel, p.anomalous)
    counts["absent_or_000"] = int(np.count_nonzero(g < 0))
    n_groups = 2 * len(table.hkl) if p.anomalous else len(table.hkl)
    s2 = 0.25 / table.d[np.maximum(u, 0)] ** 2

    n_obs_c = np.bincount(obs.cidx[g >= 0], minlength=obs.n_crystals)
    active = n_obs_c > 0
    reason = np.where(active, "", "no reflection in the asymmetric unit").astype(object)
    gscale, bscale, n_scaled = _scale(
        obs, g, s2, n_groups, active, reason, iterations=int(p.iterations) if p.scale else 0,
        ref_min=max(int(p.min_measurements), 2), min_reflections=int(p.min_crystal_reflections),
        max_b=p.max_b_A2)

    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        factor = gscale[obs.cidx] * np.exp(-2.0 * bscale[obs.cidx] * s2) * obs.part
        i_corr = obs.intensity / factor
        s_corr = obs.sigma / factor
    use = active[obs.cidx] & (g >= 0)
    if p.outlier_sigma is not None:
        outlier = use & _outliers(np.where(use, g, n_groups), i_corr, n_groups + 1,
                                  p.outlier_sigma)
        counts["outliers"] = int(np.count_nonzero(outlier))
        use &= ~outlier
    counts["used"] = int(np.count_nonzero(use))
    half = frame_half(obs.frame)
    refinement = None
    if p.model == "unity":
        n, mean, sig = _group_means(np.where(use, g, n_groups), i_corr, s_corr,
                                    n_groups + 1)
        halves = [_group_means(np.where(use & (half == h), g, n_groups), i_corr, s_corr,
                               n_groups + 1) for h in (0, 1)]
    else:
        refinement = _postrefine(obs, g, s2, n_groups, active, gscale, bscale, crystals,
                                 beam, p)
        gscale, bscale = np.exp(refinement.log_g), refinement.b
        n, mean, sig = refinement.merge(use, refinement.reference, p.min_partiality)
        halves = [refinement.merge(use & (half == h), refinement.reference, p.min_partiality)
                  for h in (0, 1)]
        with np.errstate(divide="ignore", invalid="ignore"):
            i_corr = obs.intensity / refinement.factor()

    group_hkl = table.group_hkl(p.anomalous)
    group_d = np.repeat(table.d, 2) if p.anomalous else table.d
    out = np.flatnonzero(n[:-1] >= int(p.min_measurements))
    # Low resolution first; ties (to 1e-9 Å) by the ASU order, whatever the cell's last bits.
    out = out[np.argsort(-np.round(group_d[out], 9), kind="stable")]
    attrs = {"symmetry": ucell.space_group, "cell": list(ucell.parameters),
             "anomalous": bool(p.anomalous)}

    def merged_table(nn, mm, ss):
        idx = out[nn[out] > 0]
        t = tables.MERGED.make({
            "h": group_hkl[idx, 0], "k": group_hkl[idx, 1], "l": group_hkl[idx, 2],
            "I": mm[idx], "sigma": ss[idx], "n_obs": nn[idx], "d_A": group_d[idx]})
        t.attrs.update(attrs)
        return t

    merged = merged_table(n, mean, sig)
    half1, half2 = (merged_table(*h) for h in halves)
    pair = (halves[0][0][out] > 0) & (halves[1][0][out] > 0)
    possible_d, possible_w = _possible(table, p.anomalous)
    stats = _shell_table(group_d[out], mean[out], sig[out], n[out],
                         np.where(pair, halves[0][1][out], 0.0),
                         np.where(pair, halves[1][1][out], 0.0), pair,
                         possible_d, possible_w, int(p.n_shells),
                         _shell_d_min(p.d_min, obs.d), p.d_max)

    ref = mean[np.where(g >= 0, g, n_groups)]
    scales = tables.SCALES.make({
        "frame": obs.c_frame, "crystal": obs.c_crystal, "n_obs": n_obs_c,
        "n_scaled": n_scaled, "scale": gscale, "b_A2": bscale,
        "reindex_op": np.asarray(op_names, dtype=object)[assign],
        "cc": _crystal_cc(obs.cidx, obs.n_crystals, use, i_corr, ref),
        "rejected": ~active, "reason": reason,
    })
    counts["crystals"] = int(obs.n_crystals)
    counts["crystals_rejected"] = int(np.count_nonzero(~active))
    return MergeResult(
        merged, stats, scales=scales, half1=half1, half2=half2, cell=ucell,
        anomalous=bool(p.anomalous),
        cc_star_resolution_A=float(stats.attrs.get("d_cc_star_A", np.nan)),
        n_reindexed=int(np.count_nonzero(assign != 0)), ambiguity_operators=op_names[1:],
        ambiguity_changes=[int(c) for c in changes if c >= 0], counts=counts, notes=notes,
        postrefinement=refinement,
    )


def _postrefine(obs, g, s2, n_groups, active, gscale, bscale, crystals, beam, p):
    """Post-refinement of the selected observations (see :func:`merge`, Notes)."""
    from .postrefinement import PostRefinement

    if crystals is None or beam is None:
        raise ValueError(f"model={p.model!r} needs crystals= (the crystals table) and "
                         "beam= (the geometry or its Beam)")
    beam = getattr(beam, "beam", beam)
    k0 = 1.0 / float(beam.wavelength_A)
    names = [f"{v}star_{x}" for v in "abc" for x in "xyz"]
    missing = [c for c in ("frame", "crystal", *names) if c not in crystals.columns]
    if missing:
        raise KeyError(f"the crystals table lacks the columns {missing}")
    key = pd.MultiIndex.from_frame(crystals[["frame", "crystal"]].astype(np.int64))
    pos = key.get_indexer(pd.MultiIndex.from_arrays([obs.c_frame, obs.c_crystal]))
    if np.any(pos < 0):
        lost = [(int(f), int(c)) for f, c, q in zip(obs.c_frame, obs.c_crystal, pos,
                                                     strict=True) if q < 0][:5]
        raise ValueError(f"reflections of crystals missing from the crystals table: {lost}")
    astar = crystals[names].to_numpy(np.float64).reshape(-1, 3, 3)[pos]
    lattice = np.einsum("ni,nij->nj", obs.hkl.astype(np.float64), astar[obs.cidx])
    group = np.where(g >= 0, g, n_groups)
    pr = PostRefinement(obs.cidx, lattice, s2, obs.intensity, obs.sigma, group, n_groups,
                        k0, float(beam.bandwidth) * k0, model=p.model)
    pr.log_g = np.log(np.where(gscale > 0, gscale, 1.0))
    pr.b = np.where(np.isfinite(bscale), bscale, 0.0)
    use = active[obs.cidx] & (g >= 0)
    ref_min = max(int(p.min_measurements), 2)
    reference = None
    for _ in range(int(p.postrefine_cycles)):
        n, reference, _ = pr.merge(use, reference, p.min_partiality)
        reference = np.where(n >= ref_min, reference, np.nan)[:-1]
        pr.refine(reference, active, max_b=p.max_b_A2)
    n, reference, _ = pr.merge(use, reference, p.min_partiality)
    pr.reference = np.where(n >= ref_min, reference, np.nan)[:-1]
    return pr

