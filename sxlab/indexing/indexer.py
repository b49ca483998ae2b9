"""Indexing of single frames: parameters, the prepared :class:`Indexer` and :func:`index`.

A frame's peaks are mapped to reciprocal space at the nominal wavelength, a lattice is
searched with asdf (:mod:`sxlab.indexing.asdf`), matched to the reference cell
(:class:`sxlab.cell.CellMatcher`), refined (:mod:`sxlab.indexing.refine`) and accepted if it
explains enough peaks. The result is the crystals table, one row per lattice
(:data:`sxlab.tables.CRYSTALS`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from time import perf_counter_ns
from typing import NamedTuple

import numpy as np
import pandas as pd

from .. import profiling, tables
from .._frozen import FrozenParams
from .._prepared import PreparedCache
from ..cell import CellMatcher, UnitCell, niggli_reduce
from ..geometry import Detector
from ..lattice import bravais_setting
from ..reciprocal import (
    apparent_resolution,
    assign_indices,
    excitation_error,
    peak_vectors,
    profile_radius,
)
from .asdf import AsdfSearch, expand_subcell, reduce_supercell
from .refine import REFINE_MODES, refine_basis
from .sweep import SweepSearch

__all__ = ["METHODS", "IndexParams", "Indexer", "Indexing", "index"]

#: The indexing methods (the registry): name -> (searches run in turn, the default
#: acceptance rule).
METHODS = {
    "asdf": (("asdf",), "fraction"),
    "sweep": (("sweep",), "significance"),
    "asdf-sweep": (("asdf", "sweep"), "significance"),
}
_ACCEPTANCE = ("auto", "fraction", "significance")

_ASTAR_COLUMNS = [f"{v}star_{x}" for v in "abc" for x in "xyz"]


@dataclass(frozen=True)
class IndexParams(FrozenParams):
    """Parameters of the indexer (frozen, serialisable).

    Parameters
    ----------
    method : {"asdf", "sweep", "asdf-sweep"}
        Indexing method (:data:`METHODS`): ``asdf`` (the triplet-FFT search of the
        source paper), ``sweep`` (the direction sweep with the reference cell's edge
        lengths, :mod:`sxlab.indexing.sweep`; needs a reference cell) or ``asdf-sweep``
        (asdf first; the sweep when asdf finds nothing). Default "asdf".
    fast : bool
        asdf fast mode: fewer reflections and triplets. Default False.
    n_reflections, n_triplets : int
        Normal mode: the strongest ``n_reflections`` peaks are used and at most
        ``n_triplets`` random triplets of them (all triplets when they are fewer).
        Defaults 2000 and 20 000.
    fast_n_reflections, fast_n_triplets : int
        The same in fast mode. Defaults 120 and 10 000.
    n_bins : int
        Histogram bins per triplet. Default 1024.
    vector_tolerance : float
        A direct-lattice vector fits a peak when ``q · t`` is within this of an integer
        (and a cell explains a peak in the search when all three indices are). Default 0.1.
    min_angle_deg : float
        Smallest angle between two vectors of a cell. Default 20.
    max_vector_factor : float
        With a reference cell, longest vector considered as a multiple of its longest
        edge. Default 3.
    max_vector_A : float
        Longest vector without a reference cell (Å). Default 1000.
    min_vector_A : float
        Shortest vector considered (Å); with a reference cell at least 0.4 times its
        shortest edge. Default 3.
    volume_tolerance : float
        With a reference cell, relative tolerance of the cell volume against the
        reference's volume per lattice point. Default 0.1.
    length_tolerance, angle_tolerance_deg : float
        Tolerances of the cell match (relative on a, b, c; degrees on α, β, γ), before and
        after refinement. Defaults 0.05 and 1.5.
    refine : bool
        Refine the lattice against the peaks. Default True.
    refine_mode : {"orientation", "isotropic", "lattice", "unconstrained"}
        What the refinement fits (see :mod:`sxlab.indexing.refine`); ``"lattice"`` keeps the
        lattice type of the reference cell (triclinic without one). Default "lattice".
    excitation_weight : float
        Weight of the residual along the diffracted ray in the refinement. Default 1.
    index_tolerance : float
        A peak is explained by a lattice when its three fractional indices are within this
        of integers. Default 0.25.
    acceptance : {"auto", "fraction", "significance"}
        When a refined lattice is accepted. ``fraction`` (CrystFEL's peak check): it
        explains at least ``min_fraction`` of the peaks in play. ``significance``: the
        peaks it explains within ``tight_tolerance`` are too many to be chance (the
        binomial tail of that count among the peaks in play, each point falling within
        the tolerance with probability ``(2 tight_tolerance)³``, is below
        ``10**-min_significance``), at least ``min_indexed`` of them, and they are at
        least ``significance_fraction`` of the peaks the lattice explains within
        ``index_tolerance`` (a wrong lattice close to the right one explains many peaks
        loosely); with ``refine`` the lattice must also refine as the reference lattice
        (a pseudo-symmetric lattice close to the right one does not). ``auto``: the
        method's rule (:data:`METHODS`). Default "auto".
    tight_tolerance : float
        Default 0.12.
    min_significance : float
        Default 12 (a chance of 1e-12).
    min_indexed : int
        Default 7.
    significance_fraction : float
        Default 0.7.
    sweep_spacing_deg : float
        Spacing of the sweep's direction grid. Default 0.8.
    sweep_points : int
        Strongest peaks used in the sweep. Default 80.
    min_fraction : float
        Single-lattice mode: the lattice must explain at least this fraction of the peaks
        searched. Default 0.5.
    multi_min_fraction : float
        Multi-lattice mode: the same for every lattice, counted over the peaks left by the
        lattices before it. Default 0.3.
    min_peaks : int
        Frames (or remaining peak sets) with fewer peaks are not indexed. Default 10.
    retry : bool
        On failure, delete the weakest ``retry_drop_fraction`` of the peaks and try again,
        up to ``max_tries`` attempts in all. Default False.
    max_tries : int
        Default 6.
    retry_drop_fraction : float
        Default 0.1.
    multi : bool
        Look for further lattices among the peaks the found ones leave unexplained.
        Default False.
    max_lattices : int
        Most lattices per frame in multi-lattice mode. Default 2.
    seed : int
        Seed of the triplet sampling. Default 0.
    profile_percentile : float
        Percentile of the indexed peaks' ``|excitation error|`` reported as the profile
        radius. Default 80.
    batch : int
        Triplets per batch; the search can stop after each. Default 256.

    Examples
    --------
    >>> p = IndexParams(fast=True)
    >>> p.replace(seed=3).seed
    3
    >>> IndexParams.from_dict(p.to_dict()) == p
    True
    """

    method: str = "asdf"
    fast: bool = False
    n_reflections: int = 2000
    n_triplets: int = 20000
    fast_n_reflections: int = 120
    fast_n_triplets: int = 10000
    n_bins: int = 1024
    vector_tolerance: float = 0.1
    min_angle_deg: float = 20.0
    max_vector_factor: float = 3.0
    max_vector_A: float = 1000.0
    min_vector_A: float = 3.0
    volume_tolerance: float = 0.1
    length_tolerance: float = 0.05
    angle_tolerance_deg: float = 1.5
    refine: bool = True
    refine_mode: str = "lattice"
    excitation_weight: float = 1.0
    index_tolerance: float = 0.25
    acceptance: str = "auto"
    tight_tolerance: float = 0.12
    min_significance: float = 12.0
    min_indexed: int = 7
    significance_fraction: float = 0.7
    sweep_spacing_deg: float = 0.8
    sweep_points: int = 80
    min_fraction: float = 0.5
    multi_min_fraction: float = 0.3
    min_peaks: int = 10
    retry: bool = False
    max_tries: int = 6
    retry_drop_fraction: float = 0.1
    multi: bool = False
    max_lattices: int = 2
    seed: int = 0
    profile_percentile: float = 80.0
    batch: int = 256

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {tuple(METHODS)}, got {self.method!r}")
        if self.acceptance not in _ACCEPTANCE:
            raise ValueError(f"acceptance must be one of {_ACCEPTANCE}, "
                             f"got {self.acceptance!r}")
        if self.refine_mode not in REFINE_MODES:
            raise ValueError(f"refine_mode must be one of {REFINE_MODES}, "
                             f"got {self.refine_mode!r}")
        for name in ("fast", "refine", "retry", "multi"):
            object.__setattr__(self, name, bool(getattr(self, name)))
        for name in ("n_reflections", "n_triplets", "fast_n_reflections", "fast_n_triplets",
                     "n_bins", "min_peaks", "max_tries", "max_lattices", "batch", "seed",
                     "min_indexed", "sweep_points"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value:
                raise ValueError(f"{name} must be an integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        for name in ("n_reflections", "n_triplets", "fast_n_reflections", "fast_n_triplets",
                     "max_tries", "max_lattices", "batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_bins < 8:
            raise ValueError(f"n_bins must be >= 8, got {self.n_bins}")
        if self.seed < 0 or self.min_peaks < 0:
            raise ValueError("seed and min_peaks must be >= 0")
        for name in ("vector_tolerance", "index_tolerance", "tight_tolerance"):
            if not 0 < getattr(self, name) < 0.5:
                raise ValueError(f"{name} must be in (0, 0.5), got {getattr(self, name)}")
        for name in ("min_fraction", "multi_min_fraction", "retry_drop_fraction",
                     "excitation_weight", "volume_tolerance", "significance_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be within [0, 1], got {getattr(self, name)}")
        if not 0 < self.length_tolerance < 0.5 or not 0 < self.angle_tolerance_deg < 30:
            raise ValueError("length_tolerance must be in (0, 0.5) and angle_tolerance_deg "
                             "in (0, 30)")
        if not 0 < self.min_vector_A < self.max_vector_A or not self.max_vector_factor > 0:
            raise ValueError("need 0 < min_vector_A < max_vector_A and max_vector_factor > 0")
        if not 0 <= self.profile_percentile <= 100:
            raise ValueError("profile_percentile must be within [0, 100]")
        if not 0 < self.min_angle_deg < 90:
            raise ValueError("min_angle_deg must be in (0, 90)")
        if not self.min_significance >= 0 or not 0 < self.sweep_spacing_deg <= 5:
            raise ValueError("min_significance must be >= 0 and sweep_spacing_deg in (0, 5]")

    @property
    def method_name(self) -> str:
        """Name written to the ``method`` column (``asdf``, ``asdf-fast``, ``sweep``,
        ``asdf-sweep``, ``asdf-fast-sweep``)."""
        if "asdf" not in METHODS[self.method][0] or not self.fast:
            return self.method
        return self.method.replace("asdf", "asdf-fast")

    @property
    def acceptance_rule(self) -> str:
        """The acceptance rule in force (``acceptance``, or the method's for ``auto``)."""
        return METHODS[self.method][1] if self.acceptance == "auto" else self.acceptance


class Indexing(NamedTuple):
    """What :meth:`Indexer.index` returns for one frame.

    Attributes
    ----------
    crystals : DataFrame
        One row per lattice (:data:`sxlab.tables.CRYSTALS`).
    peaks : DataFrame
        The frame's peaks with the lattice (``crystal``) and ``h, k, l`` each was
        assigned (-1 and 0 0 0 when none explains it).
    """

    crystals: pd.DataFrame
    peaks: pd.DataFrame


class _Found:
    """A verified lattice: refined reciprocal basis, cell and peak statistics."""

    __slots__ = ("astar", "cell", "centering", "indexed", "lattice", "residual")

    def __init__(self, astar, cell, indexed, residual, lattice, centering):
        self.astar = astar
        self.cell = cell
        self.indexed = indexed
        self.residual = residual
        self.lattice = lattice
        self.centering = centering


class Indexer:
    """Indexing prepared for one detector geometry, reference cell and parameter set.

    Parameters
    ----------
    geometry : Detector
        Detector geometry; its beam's wavelength is the nominal wavelength.
    cell : UnitCell or None
        Reference cell with its lattice type and centering (e.g. from a space group).
        Without one, each lattice is reported in its conventional setting: the Bravais
        lattice of its reduced cell (:func:`sxlab.lattice.bravais_setting`, twofold axes
        within ``angle_tolerance_deg``), refined with that lattice's constraints.
    params : IndexParams, optional
        Parameters; keyword arguments override single fields
        (``Indexer(det, cell, fast=True)``).

    Attributes
    ----------
    geometry : Detector
    cell : UnitCell or None
    params : IndexParams
    last_stats : list of AsdfStats
        What each search of the last call did (one per attempt).

    Notes
    -----
    Prepared once: the reference's cell matcher, lattice constraints and primitive volume,
    the vector-length window, the asdf buffers and the triplet tables; peak positions
    become scattering vectors through the geometry's cached per-panel vectors
    (:func:`sxlab.reciprocal.peak_vectors`).

    Per frame (:meth:`__call__`): peaks without a finite position are dropped, the rest
    are ordered by decreasing ``intensity`` (stable; the table order without that column)
    and mapped to ``q``. Each attempt runs the asdf search on the strongest
    ``n_reflections`` (or ``fast_n_reflections``) of the peaks in play; every cell the
    search proposes is **verified**: its three vectors are fitted to the peaks (linear
    least squares), it is matched to the reference (``length_tolerance``,
    ``angle_tolerance_deg``; without a reference a supercell is reduced with
    :func:`~sxlab.indexing.asdf.reduce_supercell`, a subcell enlarged with
    :func:`~sxlab.indexing.asdf.expand_subcell` and the basis Niggli-reduced), refined,
    checked against the reference again, and accepted if it explains (all fractional
    indices within ``index_tolerance``) at least ``min_fraction`` of the peaks in play
    (``multi_min_fraction`` in multi-lattice mode). The refinement is kept unless it
    explains fewer than 90 % of the peaks the unrefined lattice explains or its cell
    leaves the tolerances (a diverged fit). With ``retry`` a failed attempt is
    repeated without the weakest ``retry_drop_fraction`` of the peaks, up to ``max_tries``
    attempts. In multi-lattice mode the peaks a lattice explains are removed and the
    search repeated on the rest, up to ``max_lattices``.

    Inside an open frame of a :class:`~sxlab.profiling.Profiler`, each frame's indexing
    records the source paper's phases as segments below ``index``: ``asdf-triplets``
    (projections, histograms and Fourier transforms), ``asdf-search`` (vector
    refinement and merging), ``asdf-findcell`` (cells from vectors),
    ``prerefine-cell-check`` (fit to the peaks and match to the reference),
    ``refine`` and ``postrefine-cell-check``; phases that alternate batch by batch are
    summed into one segment each (:attr:`last_stats` has them per search).

    The triplets come from ``numpy.random.default_rng(seed)`` created afresh for every
    frame, so a frame's result depends only on its peaks and the parameters. An Indexer
    reuses buffers: it is not thread-safe; give each worker its own.

    Examples
    --------
    >>> from sxlab.geometry import builtin_geometry
    >>> from sxlab.simulate import Simulator
    >>> det = builtin_geometry("eiger4m", clen=0.15)
    >>> cell = UnitCell(79.1, 79.1, 37.9, 90, 90, 90, space_group="P 43 21 2")
    >>> truth = Simulator(det, cell, seed=1, hit_fraction=1.0).frame_truth(0)
    >>> refl = truth.reflections
    >>> peaks = refl[refl.photons > 50][["frame", "panel", "fs", "ss"]].assign(
    ...     intensity=refl.photons[refl.photons > 50])
    >>> indexer = Indexer(det, cell)
    >>> xtals = indexer(peaks)
    >>> len(xtals), xtals.lattice[0], round(float(xtals.c[0]), 1)
    (1, 'tetragonal', 37.9)
    """

    def __init__(self, geometry: Detector, cell: UnitCell | None = None,
                 params: IndexParams | None = None, *, symmetry: str | None = None,
                 **overrides):
        if cell is not None and not isinstance(cell, UnitCell):
            raise TypeError(f"cell must be a UnitCell or None, got {type(cell).__name__}")
        self.geometry = geometry
        self.cell = cell
        # Without a reference cell, a space group restricts the lattices accepted.
        self._wanted = None
        if symmetry is not None and cell is None:
            hint = UnitCell(1.0, 1.0, 1.0, space_group=symmetry)
            self._wanted = (hint.lattice_type, hint.centering)
        self.params = (params or IndexParams()).replace(**overrides)
        p = self.params
        self.last_stats: list = []
        self._phase_ns = [0, 0, 0]

        geometry.pixel_to_q(0.5, 0.5, 0)  # the geometry's per-panel vectors, cached once

        if cell is not None:
            self._matcher = CellMatcher(cell, length_tol=p.length_tolerance,
                                        angle_tol_deg=p.angle_tolerance_deg)
            edges = np.array([cell.a, cell.b, cell.c])
            target_volume = cell.volume / cell.multiplicity
            max_len = p.max_vector_factor * edges.max()
            min_len = max(p.min_vector_A, 0.4 * edges.min())
            self._lattice = cell.lattice_type or "triclinic"
            self._unique = cell.unique_axis
            self._centering = cell.centering or "P"
        else:
            self._matcher = None
            target_volume = None
            max_len = p.max_vector_A
            min_len = p.min_vector_A
            self._lattice, self._unique, self._centering = "triclinic", None, "P"
        self._search = AsdfSearch(
            n_reflections=p.fast_n_reflections if p.fast else p.n_reflections,
            n_triplets=p.fast_n_triplets if p.fast else p.n_triplets,
            n_bins=p.n_bins, tol=p.vector_tolerance, min_len=min_len,
            max_len=max(max_len, 2 * min_len), target_volume=target_volume,
            volume_tol=p.volume_tolerance, min_angle_deg=p.min_angle_deg, batch=p.batch)
        self._searches = METHODS[p.method][0]
        self._sweep = None
        if "sweep" in self._searches:
            if cell is None:
                raise ValueError(f"method {p.method!r} needs a reference cell")
            self._sweep = SweepSearch(cell, spacing_deg=p.sweep_spacing_deg,
                                      n_points=p.sweep_points,
                                      length_tol=p.length_tolerance,
                                      angle_tol_deg=max(p.angle_tolerance_deg, 3.0))
        self._significance = p.acceptance_rule == "significance"
        self._p_chance = (2.0 * p.tight_tolerance) ** 3

    def __repr__(self) -> str:
        return (f"Indexer({self.geometry.name!r}, {self.cell!r}, "
                f"method={self.params.method_name!r})")

    def _verify(self, basis, q_play, q_all, k, min_fraction):
        """A verified lattice from a candidate cell, or None (timed in three phases)."""
        t0 = perf_counter_ns()
        setting = self._prerefine_check(basis, q_play, k)
        t1 = perf_counter_ns()
        self._phase_ns[0] += t1 - t0
        if setting is None:
            return None
        start, lattice, unique, centering = setting
        astar, parameters, ok0 = self._refine(start, lattice, unique, q_play, k)
        t2 = perf_counter_ns()
        self._phase_ns[1] += t2 - t1
        found = self._postrefine_check(astar, parameters, ok0, q_play, q_all, min_fraction)
        if found is not None:
            found.lattice, found.centering = lattice, centering
        self._phase_ns[2] += perf_counter_ns() - t2
        return found

    def _prerefine_check(self, basis, q_play, k):
        """The candidate fitted to the peaks and matched to the reference (or reduced).

        Returns ``(direct basis, lattice type, unique axis, centering)`` or None.
        """
        p = self.params
        # Least-squares fit of the candidate's three vectors to the peaks first: a cell
        # made of long vectors carries their errors into every reduced vector.
        pre = refine_basis(q_play, np.linalg.inv(basis).T, k, mode="unconstrained",
                           tol=p.index_tolerance, n_cycles=2)
        if pre.indexed.sum() >= 6 and abs(np.linalg.det(pre.astar)) > 0:
            basis = np.linalg.inv(pre.astar).T
        try:
            if self._matcher is not None:
                match = self._matcher(basis)
                if match is None:
                    return None
                return (np.array(match.basis), self._lattice, self._unique,
                        self._centering)
            hkl, ok, _ = assign_indices(q_play, np.linalg.inv(basis).T, p.vector_tolerance)
            reduced, _ = reduce_supercell(basis, hkl[ok])
            reduced = expand_subcell(reduced, q_play, tol=p.vector_tolerance)
            start, _ = niggli_reduce(reduced)
            if np.linalg.norm(start[0]) < self._search.min_len:
                return None  # a dense lattice that explains any point
            if np.linalg.det(start) < 0:
                start = -start
            setting = bravais_setting(start, max_obliquity_deg=p.angle_tolerance_deg)
            if self._wanted is not None and self._wanted != (setting.lattice_type,
                                                             setting.centering):
                return None  # not a lattice of the crystal form asked for
            return (setting.basis, setting.lattice_type, setting.unique_axis,
                    setting.centering)
        except (ValueError, RuntimeError, np.linalg.LinAlgError):
            return None  # a degenerate candidate: not a lattice

    def _refine(self, start, lattice, unique, q_play, k):
        """Refined reciprocal basis, its model's cell parameters and the unrefined fit."""
        p = self.params
        astar0 = np.linalg.inv(start).T
        _, ok0, _ = assign_indices(q_play, astar0, p.index_tolerance)
        astar = astar0
        parameters = None
        if p.refine:
            mode = p.refine_mode
            if mode in ("orientation", "isotropic") and self.cell is not None:
                bref = self.cell.reciprocal_basis
                m = np.linalg.solve(bref, astar0).T
                u, _, vt = np.linalg.svd(m)
                astar0 = bref @ (u @ vt).T
            res = refine_basis(q_play, astar0, k, mode=mode, lattice=lattice,
                               unique_axis=unique, tol=p.index_tolerance,
                               excitation_weight=p.excitation_weight)
            if res.indexed.sum() >= 0.9 * ok0.sum() and self._cell_ok(res.astar):
                astar, parameters = res.astar, res.parameters
        return astar, parameters, ok0

    def _postrefine_check(self, astar, parameters, ok0, q_play, q_all, min_fraction):
        """The refined lattice if it passes the acceptance rule and matches the reference."""
        p = self.params
        _, ok, dev = assign_indices(q_play, astar, p.index_tolerance)
        if not self._cell_ok(astar):
            return None
        if self._significance:
            # only a lattice that refines as the reference lattice (not one kept
            # unrefined because the constrained fit lost its peaks) and is significant
            if (p.refine and parameters is None) or not self._significant(dev, ok):
                return None
        elif ok.sum() < max(min_fraction * len(q_play), 1):
            return None
        hkl, ok_all, _ = assign_indices(q_all, astar, p.index_tolerance)
        r = q_all[ok_all] - hkl[ok_all] @ astar
        residual = float(np.sqrt((r * r).sum(axis=1).mean())) if ok_all.any() else np.nan
        cell = UnitCell.from_reciprocal_basis(astar)
        if parameters is not None and np.allclose(parameters, cell.parameters, rtol=1e-6):
            cell = UnitCell(*parameters)  # the model's exact values (a == b, right angles)
        return _Found(astar, cell, ok_all, residual, self._lattice, self._centering)

    def _significant(self, dev: np.ndarray, ok: np.ndarray) -> bool:
        """The ``significance`` acceptance rule (see :class:`IndexParams`)."""
        from scipy.special import betainc

        p = self.params
        n_tight = int(np.count_nonzero(dev < p.tight_tolerance))
        if n_tight < p.min_indexed or n_tight < p.significance_fraction * ok.sum():
            return False
        # P(X >= n_tight) for X ~ Binomial(n, p0) is the regularised incomplete beta
        # function I_p0(n_tight, n - n_tight + 1)
        tail = float(betainc(n_tight, len(dev) - n_tight + 1, self._p_chance))
        return tail <= 10.0 ** -p.min_significance

    def _cell_ok(self, astar) -> bool:
        if self.cell is None:
            return True
        c = UnitCell.from_reciprocal_basis(astar)
        p = self.params
        ref = self.cell
        lengths = np.array([c.a, c.b, c.c]) / np.array([ref.a, ref.b, ref.c]) - 1
        angles = np.array([c.alpha - ref.alpha, c.beta - ref.beta, c.gamma - ref.gamma])
        return bool(np.all(np.abs(lengths) <= p.length_tolerance)
                    and np.all(np.abs(angles) <= p.angle_tolerance_deg)
                    and np.linalg.det(astar) > 0)

    # ------------------------------------------------------------------ per frame
    @tables.documented
    def __call__(self, peaks: pd.DataFrame, *, frame: int | None = None,
                 wavelength_A: float | None = None) -> pd.DataFrame:
        """Index one frame's peaks: the crystals table (see :meth:`index`).

        Parameters
        ----------
        peaks, frame, wavelength_A
            As for :meth:`index`.

        Returns
        -------
        DataFrame
            The crystals table (:data:`sxlab.tables.CRYSTALS`), one row per lattice found
            (none if the frame did not index):

            [columns: crystals]
        """
        return self._index(peaks, frame, wavelength_A, assign=False)[0]

    @tables.documented
    def index(self, peaks: pd.DataFrame, *, frame: int | None = None,
              wavelength_A: float | None = None) -> Indexing:
        """Index one frame's peaks; the crystals and the peaks with their assignment.

        Parameters
        ----------
        peaks : DataFrame
            One row per peak with ``fs``, ``ss`` (data-array pixels, pixel centres at
            +0.5), ``panel`` (index; optional for single-module detectors) and optionally
            ``intensity`` (strongest first is used) and ``frame``.
        frame : int, optional
            Frame number written to the table; default the peaks' ``frame`` column (its
            first value), else 0.
        wavelength_A : float, optional
            Wavelength of this frame; default the geometry's nominal wavelength.

        Returns
        -------
        Indexing
            ``crystals``: the crystals table (:data:`sxlab.tables.CRYSTALS`), one row per
            lattice found (none if the frame did not index). The cell is in the
            reference's setting (right-handed); without a reference it is the Niggli cell
            of the lattice. ``profile_radius_invA`` is the ``profile_percentile`` of the
            ``|excitation error|`` of the lattice points the indexed peaks were assigned
            to, ``resolution_limit_A`` the resolution of the highest-resolution indexed
            peak (both at the nominal wavelength):

            [columns: crystals]

            ``peaks``: the input table, rows and columns in their order, with
            ``crystal``, ``h``, ``k``, ``l`` set (added when missing): the first
            lattice that explains the peak (all fractional indices within
            ``index_tolerance``) and its indices there; -1 and 0 0 0 for the others.
        """
        return Indexing(*self._index(peaks, frame, wavelength_A, assign=True))

    def _index(self, peaks, frame, wavelength_A, *, assign: bool):
        """The crystals table and, with ``assign``, the peaks with their assignment."""
        p = self.params
        if frame is None:
            frame = int(peaks["frame"].iloc[0]) if "frame" in peaks and len(peaks) else 0
        lam = self.geometry.beam.wavelength_A if wavelength_A is None else wavelength_A
        q = peak_vectors(peaks, self.geometry, lam)
        finite = np.all(np.isfinite(q), axis=1)
        if "intensity" in peaks:
            inten = np.asarray(peaks["intensity"], dtype=float)[finite]
            inten = np.where(np.isfinite(inten), inten, -np.inf)
            order = np.argsort(-inten, kind="stable")
        else:
            order = np.arange(int(finite.sum()))
        row_of = np.flatnonzero(finite)[order]  # table row of each point of q
        q = np.ascontiguousarray(q[finite][order])
        n_peaks = q.shape[0]
        self.last_stats = []
        self._phase_ns = [0, 0, 0]
        owner = np.full(len(peaks), -1, dtype=np.int64)
        hkl_of = np.zeros((len(peaks), 3), dtype=np.int32)
        rows = []
        if n_peaks >= max(p.min_peaks, 4):
            k = 1.0 / lam
            rng = np.random.default_rng(p.seed)
            remaining = np.arange(n_peaks)
            n_lattices = p.max_lattices if p.multi else 1
            threshold = p.multi_min_fraction if p.multi else p.min_fraction
            for crystal in range(n_lattices):
                if remaining.size < max(p.min_peaks, 4):
                    break
                found, tries = self._attempts(q[remaining], q, k, rng, threshold)
                if found is None:
                    break
                q_ind = q[found.indexed]
                hkl, _, _ = assign_indices(q_ind, found.astar, p.index_tolerance)
                s = excitation_error(hkl.astype(float) @ found.astar, k)
                rows.append(self._row(frame, crystal, found, tries, n_peaks,
                                      profile_radius(s, p.profile_percentile),
                                      apparent_resolution(q_ind)))
                rows_ind = row_of[found.indexed]
                free = owner[rows_ind] < 0
                owner[rows_ind[free]] = crystal
                hkl_of[rows_ind[free]] = hkl[free]
                remaining = remaining[~found.indexed[remaining]]
        if profiling.active():
            self._record_phases()
        crystals = tables.CRYSTALS.make(
            {c: [r[c] for r in rows] for c in tables.CRYSTALS.names} if rows else None)
        if not assign:
            return crystals, None
        # one DataFrame build instead of four column insertions (assign): per-frame cost
        columns = {c: peaks[c].array for c in peaks.columns}
        columns.update(crystal=owner, h=hkl_of[:, 0], k=hkl_of[:, 1], l=hkl_of[:, 2])
        return crystals, pd.DataFrame(columns, index=peaks.index)

    def _record_phases(self) -> None:
        """The frame's asdf and cell-check phases as segments of the open profiler."""
        stats = self.last_stats
        for name, seconds in (
                (profiling.ASDF_TRIPLETS, sum(st.triplets_s for st in stats)),
                (profiling.ASDF_SEARCH, sum(st.search_s for st in stats)),
                (profiling.ASDF_FINDCELL, sum(st.findcell_s for st in stats)),
                (profiling.PREREFINE_CELL_CHECK, self._phase_ns[0] / 1e9),
                (profiling.REFINE, self._phase_ns[1] / 1e9),
                (profiling.POSTREFINE_CELL_CHECK, self._phase_ns[2] / 1e9)):
            if stats:
                profiling.record(name, seconds)

    def _row(self, frame, crystal, found, tries, n_peaks, radius, resolution) -> dict:
        p = self.params
        c = found.cell
        n_ind = int(found.indexed.sum())
        row = {"frame": frame, "crystal": crystal, "a": c.a, "b": c.b, "c": c.c,
               "alpha": c.alpha, "beta": c.beta, "gamma": c.gamma,
               "lattice": found.lattice, "centering": found.centering,
               "n_peaks_indexed": n_ind, "n_peaks": n_peaks,
               "fraction_indexed": n_ind / n_peaks, "method": p.method_name,
               "tries": tries, "profile_radius_invA": radius,
               "resolution_limit_A": resolution, "residual_invA": found.residual}
        row.update(zip(_ASTAR_COLUMNS, found.astar.ravel(), strict=True))
        return row

    def _attempts(self, q_play, q_all, k, rng, threshold):
        p = self.params
        n_tries = p.max_tries if p.retry else 1
        n_use = q_play.shape[0]
        for attempt in range(1, n_tries + 1):
            if attempt > 1:
                n_use = int(math.floor(n_use * (1.0 - p.retry_drop_fraction)))
            if n_use < max(p.min_peaks, 4):
                break
            qt = q_play[:n_use]

            def verify(basis, qt=qt):
                return self._verify(basis, qt, q_all, k, threshold)

            for search in self._searches:
                if search == "asdf":
                    found = self._search.run(qt, rng, verify,
                                             quality=lambda result: int(result.indexed.sum()))
                    self.last_stats.append(self._search.stats)
                else:
                    found = self._sweep.run(qt, verify,
                                            quality=lambda result: int(result.indexed.sum()))
                    self.last_stats.append(self._sweep.stats)
                if found is not None:
                    return found, attempt
        return None, 0


@tables.documented
def index(peaks: pd.DataFrame, geometry: Detector, cell: UnitCell | None = None, *,
          method: str = "asdf", fast: bool = False, seed: int = 0, retry: bool = False,
          multi: bool = False, max_lattices: int = 2, tolerances=(0.05, 1.5),
          refine: bool = True, min_peaks: int = 10, wavelength_A: float | None = None,
          **options) -> pd.DataFrame:
    """Index the peaks of one or more frames.

    The :class:`Indexer` is prepared on the first call and reused by later calls with the
    same geometry, cell and parameters (the last two per thread), so a loop over frames
    costs what a prepared Indexer does. Its assignment of peaks to lattices is
    :meth:`Indexer.index`'s.

    Parameters
    ----------
    peaks : DataFrame
        Peak table (``fs``, ``ss``, ``panel``, ``intensity``, ``frame``; see
        :meth:`Indexer.__call__`). Frames are indexed one by one (grouped by ``frame``).
    geometry : Detector
        Detector geometry and nominal wavelength.
    cell : UnitCell, optional
        Reference cell with its symmetry (lattice type and centering).
    method : {"asdf"}
        Indexing method.
    fast : bool
        asdf fast mode (120 strongest peaks, 10 000 triplets).
    seed : int
        Seed of the random triplets.
    retry : bool
        Retry without the weakest 10 % of the peaks, up to 6 attempts.
    multi : bool
        Look for more lattices among the peaks left unexplained.
    max_lattices : int
        Most lattices per frame in multi-lattice mode.
    tolerances : (float, float)
        Cell-match tolerances: relative on the edges, degrees on the angles.
    refine : bool
        Refine each lattice against its peaks.
    min_peaks : int
        Frames with fewer peaks are not indexed.
    wavelength_A : float, optional
        Wavelength instead of the geometry's nominal one.
    **options
        Further :class:`IndexParams` fields (e.g. ``refine_mode="orientation"``).

    Returns
    -------
    DataFrame
        The crystals table (:data:`sxlab.tables.CRYSTALS`), one row per lattice, ordered
        by frame and crystal:

        [columns: crystals]

    See Also
    --------
    Indexer : the prepared indexer for many frames.

    Examples
    --------
    >>> from sxlab.geometry import builtin_geometry
    >>> from sxlab.simulate import Simulator
    >>> det = builtin_geometry("eiger4m", clen=0.15)
    >>> cell = UnitCell(79.1, 79.1, 37.9, 90, 90, 90, space_group="P 43 21 2")
    >>> refl = Simulator(det, cell, seed=1, hit_fraction=1.0).frame_truth(0).reflections
    >>> strong = refl[refl.photons > 50]
    >>> peaks = strong[["frame", "panel", "fs", "ss"]].assign(intensity=strong.photons)
    >>> xtals = index(peaks, det, cell)
    >>> xtals[["frame", "crystal", "lattice", "centering", "method"]]
       frame  crystal     lattice centering method
    0      0        0  tetragonal         P   asdf
    """
    length_tol, angle_tol = tolerances
    p = IndexParams(method=method, fast=fast, seed=seed, retry=retry, multi=multi,
                    max_lattices=max_lattices, length_tolerance=length_tol,
                    angle_tolerance_deg=angle_tol, refine=refine, min_peaks=min_peaks,
                    **options)
    indexer = _INDEXERS.get(geometry, None, cell, p)
    if "frame" not in peaks or len(peaks) == 0:
        return indexer(peaks, wavelength_A=wavelength_A)
    return tables.CRYSTALS.concat(indexer(group, frame=int(fr), wavelength_A=wavelength_A)
                                  for fr, group in peaks.groupby("frame", sort=True))


#: The prepared indexers of :func:`index`.
_INDEXERS = PreparedCache(lambda geometry, mask, cell, params: Indexer(geometry, cell, params))
