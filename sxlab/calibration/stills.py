"""Detector geometry refinement from the indexed peaks of many stills.

What it solves (as CrystFEL's ``align_detector`` and DIALS' joint refinement of stills):
every indexed peak is an observation of where the ray from the sample through its
lattice point meets the detector. The crystal of a still is seen at one orientation; its
lattice point ``g = hkl @ A`` generally lies off the Ewald sphere, and the spot appears
where the ray of direction ``g + k ẑ`` (from the sphere's centre through the point, ``k =
1/λ``) meets the detector (the convention of :mod:`sxlab.indexing.refine` and
:mod:`sxlab.simulate`). The predicted spot of a peak therefore depends on

* the geometry (:class:`~sxlab.calibration.model.DetectorModel`: detector shift across
  the beam, distance, tilt; each panel group's shift, height and in-plane rotation), and
* its crystal's orientation ``U`` (``A = B Uᵀ`` with the reference cell's basis ``B``),

and the refinement minimises the robust sum of squared pixel distances between the
observed and predicted spots over both at once.

Spot model: with a polychromatic beam the spot of a lattice point off the sphere is not
on the ray of the nominal wavenumber but on that of the most probable one, between the
nominal and the Bragg wavenumber (:func:`sxlab.reciprocal.spot_wavenumber`); at high
angles and 0.1 % of bandwidth the two rays differ by pixels. From the second cycle on
(``spectrum=True``) the prediction uses it, with one ratio of spectral to mosaic width
refined with the geometry (``α`` in :class:`_Problem`); this brings the residuals of
every panel down to the centroid noise and the panel parameters to their statistical
precision (reported as ``spectral_alpha_A2`` and ``bandwidth_over_mosaicity``).

Why the reference cell is held fixed: at small angles a spot lies ``D |g| / k`` from the
beam, so the detector distance ``D`` and the scale of the cell are one parameter; the
known cell (and wavelength) sets the distance. A rotation of the whole detector about the
beam is the same as rotating every crystal, so with panel groups free to move, their
rotations are constrained to sum to zero; with the beam (distance) refined too, their
shifts (heights) are constrained to sum to zero, so that the whole-detector parameters
carry the common part.

Method: Gauss–Newton with Levenberg–Marquardt damping on the pixel residuals, the
crystal orientations eliminated per iteration by the Schur complement (a 3 × 3 block per
crystal, as in bundle adjustment), the gauge constraints imposed exactly (Lagrange
multipliers), Cauchy weights against outliers (wrong index assignments, overlapped
spots) with the scale re-estimated each iteration. Derivatives are central differences,
each taken for all crystals (or all panel groups) at once since a peak depends only on its
own crystal and group. Between cycles every peak of the refined frames is assigned again
with the refined geometry and orientations (the indices of a mis-set geometry are not all
right), and the fit repeated.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .. import tables
from ..cell import UnitCell
from ..geometry import Detector
from ..reciprocal import (
    assign_indices,
    nearest_rotation,
    peak_vectors,
    spot_wavenumber,
)
from .model import GROUP_PARAMETERS, DetectorModel, GeometryReport, intersect

__all__ = ["GeometryRefinement", "REFINABLE", "refine_geometry"]

#: What ``refine=`` may name.
REFINABLE = ("beam", "distance", "tilt", "panels")

_ASTAR = [f"{v}star_{x}" for v in "abc" for x in "xyz"]
_STEP_M = 2e-7            # numerical-derivative steps: shifts (m) ...
_STEP_RAD = 2e-6          # ... and angles (rad)


# ====================================================================== observations
@dataclass
class _Observations:
    """The indexed peaks of the crystals being refined, as arrays."""

    frame: np.ndarray           # (N,) frame of each peak
    crystal: np.ndarray         # (N,) crystal index 0..C-1
    panel: np.ndarray           # (N,) panel index
    fs: np.ndarray              # (N,) observed data-array coordinates
    ss: np.ndarray
    hkl: np.ndarray             # (N, 3)
    row: np.ndarray             # (N,) row in the peaks table


def _vectorised_rotations(omega: np.ndarray) -> np.ndarray:
    """Rodrigues rotation matrices of rotation vectors ``omega`` (C, 3) -> (C, 3, 3)."""
    theta = np.linalg.norm(omega, axis=1)
    safe = np.where(theta > 0, theta, 1.0)
    k = omega / safe[:, None]
    kx = np.zeros((len(omega), 3, 3))
    kx[:, 0, 1], kx[:, 0, 2] = -k[:, 2], k[:, 1]
    kx[:, 1, 0], kx[:, 1, 2] = k[:, 2], -k[:, 0]
    kx[:, 2, 0], kx[:, 2, 1] = -k[:, 1], k[:, 0]
    s = np.sin(theta)[:, None, None]
    c = (1 - np.cos(theta))[:, None, None]
    return np.eye(3) + s * kx + c * (kx @ kx)


class _Problem:
    """Forward model and normal equations of one set of observations.

    The parameter vector is the detector model's, then one spectral parameter ``α``
    (Å²): a spot is predicted on the ray of wavenumber ``k* = k0 + (k_B - k0) w`` with
    ``w = α |q|² / (1 + α |q|²)``, the share of the Bragg wavenumber ``k_B`` in the most
    probable wavenumber of a mosaic lattice point (variance ``η² |q|²``) seen through a
    Gaussian spectrum (width ``σ_k``): ``α = (σ_k / (2 η k²))²``
    (:func:`sxlab.reciprocal.spot_wavenumber`). ``α = 0`` is the nominal wavenumber.
    """

    def __init__(self, model: DetectorModel, obs: _Observations, bmat: np.ndarray,
                 orientations: np.ndarray, k: float):
        self.model = model
        self.obs = obs
        self.k = k
        self.bmat = bmat
        self.u = orientations.copy()                    # (C, 3, 3)
        self.n_crystals = len(orientations)
        self.size = model.size + 1
        self.alpha = model.size                         # position of α
        self.units = np.r_[model.units, 1.0]
        self.min_fs = np.array([p.min_fs for p in model.detector.panels], dtype=float)
        self.min_ss = np.array([p.min_ss for p in model.detector.panels], dtype=float)
        self.group = model.group_of_panel[obs.panel]
        self._hb = obs.hkl.astype(float) @ bmat         # h B, (N, 3)

    def lattice_points(self, omega: np.ndarray | None = None) -> np.ndarray:
        """``g = U_c Bᵀ h`` of every observation, after small rotations ``omega``."""
        rot = self.u if omega is None else _vectorised_rotations(omega) @ self.u
        return np.einsum("nij,nj->ni", rot[self.obs.crystal], self._hb)

    def wavenumbers(self, g: np.ndarray, alpha: float) -> np.ndarray:
        """Wavenumber of the ray each spot is predicted on (see the class notes)."""
        if not alpha > 0:
            return np.full(len(g), self.k)
        q2 = np.sum(g * g, axis=1)
        return spot_wavenumber(g, self.k, q2 / (4.0 * self.k ** 4 * alpha), 1.0, q2=q2)

    def predict(self, theta: np.ndarray, omega: np.ndarray | None = None):
        """Predicted data-array coordinates (fs, ss) of every observation."""
        corner, fs, ss = self.model.panel_vectors(theta[:self.alpha])
        d = self.lattice_points(omega)
        d[:, 2] += self.wavenumbers(d, theta[self.alpha])
        u, v = intersect(d, self.obs.panel, corner, fs, ss)
        return u + self.min_fs[self.obs.panel], v + self.min_ss[self.obs.panel]

    def residuals(self, theta, omega=None) -> np.ndarray:
        """Observed minus predicted, (N, 2) pixels."""
        pf, ps = self.predict(theta, omega)
        return np.stack([self.obs.fs - pf, self.obs.ss - ps], axis=1)

    def jacobians(self, theta: np.ndarray, free: np.ndarray):
        """Derivatives of the predicted spots: crystals (N, 2, 3) and free columns.

        Returns ``(jc, jg, cols)``: ``jg`` (N, 2, m) holds, per observation, the
        derivatives by the ``m`` free parameters that can move it, ``cols`` (N, m) their
        positions among the free parameters.
        """
        model = self.model
        n = len(self.obs.fs)
        zero = np.zeros((self.n_crystals, 3))
        jc = np.zeros((n, 2, 3))
        for j in range(3):
            dp, dm = zero.copy(), zero.copy()
            dp[:, j] = _STEP_RAD
            dm[:, j] = -_STEP_RAD
            jc[:, :, j] = self._central(theta, theta, dp, dm, _STEP_RAD)
        free_pos = np.full(self.size, -1, dtype=np.int64)
        free_pos[free] = np.arange(int(free.sum()))
        blocks, cols = [], []
        for i in np.flatnonzero(free[:model.n_global]):
            blocks.append(self._difference(theta, np.array([i])))
            cols.append(np.full(n, free_pos[i]))
        for j, kind in enumerate(GROUP_PARAMETERS):
            idx = model.group_slice(kind)
            if not free[idx].any():
                continue
            blocks.append(self._difference(theta, idx[free[idx]]))
            col = free_pos[model.n_global + j + len(GROUP_PARAMETERS) * self.group]
            cols.append(col)
        if free[self.alpha]:
            blocks.append(self._difference(theta, np.array([self.alpha])))
            cols.append(np.full(n, free_pos[self.alpha]))
        if not blocks:
            return jc, np.zeros((n, 2, 0)), np.zeros((n, 0), dtype=np.int64)
        jg = np.stack(blocks, axis=2)
        cols = np.stack(cols, axis=1)
        jg *= (cols >= 0)[:, None, :]
        return jc, jg, np.maximum(cols, 0)

    def _central(self, tp, tm, op, om, h) -> np.ndarray:
        fp, sp = self.predict(tp, op)
        fm, sm = self.predict(tm, om)
        return np.stack([(fp - fm) / (2 * h), (sp - sm) / (2 * h)], axis=1)

    def _difference(self, theta, idx) -> np.ndarray:
        if idx[0] == self.alpha:
            h = 1e-3 * max(abs(theta[self.alpha]), 1e-2)
        else:
            kinds = {self.model.names[i].split(":")[-1] for i in idx}
            h = _STEP_RAD if kinds & {"rotation", "tilt_x", "tilt_y"} else _STEP_M
        tp, tm = theta.copy(), theta.copy()
        tp[idx] += h
        tm[idx] -= h
        return self._central(tp, tm, None, None, h)


def _cauchy(r: np.ndarray, scale: float) -> tuple[np.ndarray, float]:
    """Per-observation weights and the robust cost of residuals ``r`` (N, 2)."""
    x2 = np.sum(r * r, axis=1) / (scale * scale)
    return 1.0 / (1.0 + x2), float(np.sum(np.log1p(x2)))


def _robust_scale(r: np.ndarray) -> float:
    """σ per axis from the median residual length (Rayleigh: median = 1.1774 σ)."""
    lengths = np.sqrt(np.sum(r * r, axis=1))
    med = float(np.median(lengths)) if len(lengths) else 0.0
    return max(med / 1.1774, 1e-3)


def _constraints(problem: _Problem, free: np.ndarray, refine: set) -> np.ndarray:
    """Gauge constraints on the free parameters: rows ``c`` with ``c · θ_free = 0``."""
    model = problem.model
    rows = []

    def group_rows(kind, weights=None):
        idx = model.group_slice(kind)
        if not free[idx].all():
            return
        row = np.zeros(problem.size)
        row[idx] = 1.0 if weights is None else weights
        rows.append(row)

    if "panels" in refine and model.n_groups:
        if free[model.group_slice("shift_x")].all():
            group_rows("rotation")
            if "beam" in refine or model.n_groups == 1:
                group_rows("shift_x")
                group_rows("shift_y")
        if "distance" in refine or model.n_groups == 1:
            group_rows("height")
        if "tilt" in refine:
            # a tilt moves the groups along z in proportion to x and y
            group_rows("height", model.group_centres[:, 0])
            group_rows("height", model.group_centres[:, 1])
    if not rows:
        return np.zeros((0, int(free.sum())))
    c = np.array(rows)[:, free]
    return c[np.any(c != 0, axis=1)]


def _normal_equations(problem: _Problem, r, w, jc, jg, cols, n_free):
    """Crystal blocks, geometry block, coupling and right-hand sides (``Jᵀ W J``, ``Jᵀ W r``)."""
    n_c = problem.n_crystals
    crystal = problem.obs.crystal
    wr = w[:, None] * r
    ucc = np.empty((n_c, 3, 3))
    for i in range(3):
        for j in range(i, 3):
            v = np.bincount(crystal, w * np.einsum("na,na->n", jc[:, :, i], jc[:, :, j]),
                            minlength=n_c)
            ucc[:, i, j] = ucc[:, j, i] = v
    bc = np.stack([np.bincount(crystal, np.einsum("na,na->n", jc[:, :, i], wr),
                               minlength=n_c) for i in range(3)], axis=1)
    m = jg.shape[2]
    hgg = np.zeros(n_free * n_free)
    bg = np.zeros(n_free)
    wgc = np.zeros(n_free * n_c * 3)
    for a in range(m):
        ca = cols[:, a]
        ja = jg[:, :, a]
        bg += np.bincount(ca, np.einsum("na,na->n", ja, wr), minlength=n_free)
        jaw = ja * w[:, None]
        for b in range(m):
            hgg += np.bincount(ca * n_free + cols[:, b],
                               np.einsum("na,na->n", jaw, jg[:, :, b]),
                               minlength=n_free * n_free)
        for i in range(3):
            wgc += np.bincount((ca * n_c + crystal) * 3 + i,
                               np.einsum("na,na->n", jaw, jc[:, :, i]),
                               minlength=n_free * n_c * 3)
    return ucc, bc, hgg.reshape(n_free, n_free), bg, wgc.reshape(n_free, n_c, 3)


def _solve(problem: _Problem, theta: np.ndarray, free: np.ndarray, constraints: np.ndarray,
           *, max_iterations: int, robust: bool, tolerance: float = 1e-4):
    """Gauss–Newton / Levenberg–Marquardt on the free parameters and the orientations.

    Returns ``(theta, covariance of the free parameters, iterations, cost history,
    scale)``; the problem's orientations are updated in place.
    """
    n_free = int(free.sum())
    n_c = problem.n_crystals
    lam = 1e-3
    history = []
    s = np.zeros((n_free, n_free))
    r = problem.residuals(theta)
    iterations = 0
    scale = _robust_scale(r)
    for iterations in range(1, max_iterations + 1):  # noqa: B007 - the count is returned
        scale = _robust_scale(r) if robust else 1.0
        w, cost = _cauchy(r, scale) if robust else (np.ones(len(r)), float(np.sum(r * r)))
        history.append(cost)
        jc, jg, cols = problem.jacobians(theta, free)
        ucc, bc, hgg, bg, wgc = _normal_equations(problem, r, w, jc, jg, cols, n_free)
        accepted = False
        for _ in range(12):
            damped = ucc + lam * (np.einsum("nii->ni", ucc)[:, :, None] * np.eye(3)
                                  + 1e-12 * np.eye(3))
            uinv = np.linalg.inv(damped)
            dg = np.zeros(n_free)
            if n_free:
                t = np.einsum("gci,cij->gcj", wgc, uinv)
                s = hgg - t.reshape(n_free, -1) @ wgc.reshape(n_free, -1).T
                rhs = bg - np.einsum("gcj,cj->g", t, bc)
                d = np.sqrt(np.maximum(np.diag(hgg), 1e-300))
                nc = len(constraints)
                cs = constraints / d[None, :]
                kkt = np.zeros((n_free + nc, n_free + nc))
                kkt[:n_free, :n_free] = s / np.outer(d, d) + lam * np.eye(n_free)
                kkt[:n_free, n_free:] = cs.T
                kkt[n_free:, :n_free] = cs
                # the constrained combinations of the total parameters stay at zero
                target = -constraints @ theta[free]
                sol = np.linalg.lstsq(kkt, np.r_[rhs / d, target], rcond=None)[0]
                dg = sol[:n_free] / d
            domega = np.einsum("cij,cj->ci", uinv, bc - np.einsum("gci,g->ci", wgc, dg))
            new_theta = theta.copy()
            new_theta[free] += dg
            new_theta[problem.alpha] = max(new_theta[problem.alpha], 0.0)
            r_new = problem.residuals(new_theta, domega)
            new_cost = _cauchy(r_new, scale)[1] if robust else float(np.sum(r_new * r_new))
            if np.isfinite(new_cost) and new_cost <= cost:
                accepted = True
                break
            lam *= 10.0
        if not accepted:
            break
        problem.u = _vectorised_rotations(domega) @ problem.u
        theta, r = new_theta, r_new
        lam = max(lam / 10.0, 1e-9)
        step = np.abs(dg * problem.units[free]) if n_free else np.zeros(1)
        if (np.max(step, initial=0.0) < tolerance
                and np.max(np.abs(domega), initial=0.0) < 1e-7) or (
                cost - new_cost < 1e-9 * max(cost, 1.0)):
            break
    cov = np.full((n_free, n_free), np.nan)
    if n_free:
        # σ² times the constrained inverse of the reduced normal matrix at the solution
        w = _cauchy(r, scale)[0] if robust else np.ones(len(r))
        dof = max(2 * len(r) - n_free - 3 * n_c, 1)
        sigma2 = float(np.sum(w[:, None] * r * r)) / dof
        nc = len(constraints)
        d = np.sqrt(np.maximum(np.diag(s), 1e-300))
        kkt = np.zeros((n_free + nc, n_free + nc))
        kkt[:n_free, :n_free] = s / np.outer(d, d)
        kkt[:n_free, n_free:] = (constraints / d[None, :]).T
        kkt[n_free:, :n_free] = constraints / d[None, :]
        try:
            cov = sigma2 * np.linalg.pinv(kkt)[:n_free, :n_free] / np.outer(d, d)
        except np.linalg.LinAlgError:
            pass
    return theta, cov, iterations, history, scale


# ======================================================================== input side
def _tables(results):
    """(peaks, crystals, geometry, cell) from Results, a results directory or a pair."""
    if isinstance(results, tuple | list) and len(results) == 2:
        return results[0], results[1], None, None
    if isinstance(results, str) or hasattr(results, "__fspath__"):
        from ..results import Results

        results = Results.load(results)
    peaks = getattr(results, "peaks", None)
    crystals = getattr(results, "crystals", None)
    if peaks is None or crystals is None:
        raise TypeError("results must be Results, a results directory or a (peaks, "
                        f"crystals) pair, got {type(results).__name__}")
    params = getattr(results, "params", None)
    return peaks, crystals, getattr(results, "geometry", None), getattr(params, "cell", None)


def _orientations(crystals: pd.DataFrame, bmat: np.ndarray):
    """Orientation ``U`` of each crystal (A = B Uᵀ) and whether its basis fits ``B``."""
    astar = crystals[_ASTAR].to_numpy(float).reshape(-1, 3, 3)
    us, ok = [], []
    for a in astar:
        if not np.all(np.isfinite(a)):
            us.append(np.eye(3))
            ok.append(False)
            continue
        u = nearest_rotation(np.linalg.solve(bmat, a).T)
        us.append(u)
        ok.append(np.linalg.norm(bmat @ u.T - a) <= 0.05 * np.linalg.norm(a))
    return np.array(us).reshape(-1, 3, 3), np.array(ok, dtype=bool)


def _assign(peaks: pd.DataFrame, crystals: pd.DataFrame, astar: np.ndarray,
            geometry: Detector, wavelength_A: float, tol: float):
    """Crystal (-1: none) and hkl of every peak of the crystals' frames."""
    q = peak_vectors(peaks, geometry, wavelength_A)
    frame = peaks["frame"].to_numpy(np.int64)
    best = np.full(len(peaks), np.inf)
    owner = np.full(len(peaks), -1, dtype=np.int64)
    hkl = np.zeros((len(peaks), 3), dtype=np.int64)
    finite = np.all(np.isfinite(q), axis=1)
    by_frame = pd.Series(np.arange(len(peaks))).groupby(frame).indices
    for ci, fr in enumerate(crystals["frame"].to_numpy(np.int64)):
        rows = by_frame.get(fr)
        if rows is None:
            continue
        rows = rows[finite[rows]]
        h, ok, dev = assign_indices(q[rows], astar[ci], tol)
        better = ok & (dev < best[rows])
        sel = rows[better]
        best[sel] = dev[better]
        owner[sel] = ci
        hkl[sel] = h[better]
    return owner, hkl


# ============================================================================ report
@dataclass
class GeometryRefinement(GeometryReport):
    """What :func:`refine_geometry` did: parameters, residuals per panel, crystals.

    Attributes
    ----------
    geometry : Detector
        The refined geometry.
    initial : Detector
        The geometry as given.
    parameters : DataFrame
        One row per model parameter: ``group`` (``detector`` or the panel group),
        ``parameter``, ``value`` and ``sigma`` (the change, in ``unit``: px of the group's
        panels, mm, deg), ``refined``.
    panels : DataFrame
        One row per panel, the residuals before and after
        (:data:`sxlab.tables.GEOMETRY_RESIDUALS`).
    crystals : DataFrame
        The refined crystals (:data:`sxlab.tables.CRYSTALS`): orientation refined with the
        reference cell, in the refined geometry.
    summary : dict
        Crystals and peaks used, robust scale, iterations, RMS residual before and after,
        beam-centre change (px of panel 0), distance change (mm).
    history : list of float
        Robust cost after each iteration of each cycle.
    """

    geometry: Detector
    initial: Detector
    parameters: pd.DataFrame
    panels: pd.DataFrame
    crystals: pd.DataFrame
    summary: dict = field(default_factory=dict)
    history: list = field(default_factory=list)

    title = "Geometry refinement"

    def __repr__(self) -> str:
        s = self.summary
        return (f"<GeometryRefinement {s.get('n_crystals', 0)} crystals, "
                f"{s.get('n_peaks', 0)} peaks; RMS {s.get('rms_before_px', np.nan):.3f} → "
                f"{s.get('rms_after_px', np.nan):.3f} px; beam Δ("
                f"{s.get('beam_shift_fs_px', 0):+.3f}, {s.get('beam_shift_ss_px', 0):+.3f}) px,"
                f" distance Δ {s.get('distance_shift_mm', 0):+.4f} mm>")

    def _repr_html_(self) -> str:
        refined = self.parameters[self.parameters.refined]
        return (f"<div>{self._summary_html()}"
                f"<details><summary>parameters ({len(refined)} refined)</summary>"
                f"{refined.to_html(index=False, float_format=lambda v: f'{v:.4f}')}"
                f"</details><details><summary>residuals per panel</summary>"
                f"{self.panels.to_html(index=False, float_format=lambda v: f'{v:.3f}')}"
                f"</details></div>")


def _panel_residuals(panel_names, model, obs, r_before, r_after, w_after) -> pd.DataFrame:
    npan = len(panel_names)
    out = {"panel": np.arange(npan), "name": panel_names,
           "group": [model.group_names[g] for g in model.group_of_panel]}
    counts = np.bincount(obs.panel, minlength=npan)
    out["n_peaks"] = counts
    inlier = w_after > 0.5 / (1 + 9.0)  # within 3 robust σ
    for tag, r in (("before", r_before), ("after", r_after)):
        with np.errstate(invalid="ignore", divide="ignore"):
            sel = inlier & np.all(np.isfinite(r), axis=1)
            n = np.bincount(obs.panel[sel], minlength=npan)
            ss2 = np.bincount(obs.panel[sel], weights=np.sum(r[sel] ** 2, axis=1),
                              minlength=npan)
            out[f"rms_{tag}_px"] = np.sqrt(ss2 / n)
            out[f"mean_dfs_{tag}_px"] = np.bincount(obs.panel[sel], weights=r[sel, 0],
                                                    minlength=npan) / n
            out[f"mean_dss_{tag}_px"] = np.bincount(obs.panel[sel], weights=r[sel, 1],
                                                    minlength=npan) / n
    return tables.GEOMETRY_RESIDUALS.make(out)


# ========================================================================== public
@tables.documented
def refine_geometry(results, geometry: Detector | None = None, cell: UnitCell | None = None,
                    *, refine=("beam", "distance", "panels"), groups=None,
                    group_parameters=("shift", "rotation", "height"), min_peaks: int = 10,
                    min_group_peaks: int = 30, n_cycles: int = 3, max_iterations: int = 30,
                    index_tolerance: float = 0.25, robust: bool = True,
                    spectrum: bool = True, wavelength_A: float | None = None):
    """Refine the detector geometry from the indexed peaks of many stills.

    Parameters
    ----------
    results : Results, path or (peaks, crystals)
        Processed frames: the peaks table (with ``crystal, h, k, l`` as the indexer
        assigned them; assigned here when missing) and the crystals table. A results
        directory is read with :meth:`sxlab.results.Results.load`.
    geometry : Detector, optional
        The geometry the peaks were indexed with; default ``results.geometry``.
    cell : UnitCell, optional
        The reference cell (its constants fix the distance scale); default
        ``results.params.cell``, else the median cell of the crystals.
    refine : sequence of {"beam", "distance", "tilt", "panels"}
        ``beam``: the detector's shift across the beam (the beam centre); ``distance``:
        the camera length; ``tilt``: the detector's tilt about lab x and y; ``panels``:
        each panel group's parameters (``group_parameters``).
    groups : None, "panels", int or mapping
        Panel groups moved as rigid bodies (see
        :func:`sxlab.calibration.model.panel_groups`): every panel, a level of the
        geometry's group hierarchy (CrystFEL rigid groups), or explicit groups.
    group_parameters : sequence of {"shift", "rotation", "height"}
        What each group may do: shift in the detector plane, rotate about the beam axis
        (around its centre), move along the beam.
    min_peaks : int
        Crystals with fewer indexed peaks are left out.
    min_group_peaks : int
        Groups with fewer peaks keep their place (reported as not refined).
    n_cycles : int
        Refinement cycles; the peaks are assigned again between cycles.
    max_iterations : int
        Most Gauss–Newton iterations per cycle.
    index_tolerance : float
        A peak belongs to a crystal when its fractional indices are all within this of
        integers (when re-assigning).
    robust : bool
        Cauchy weights on the residuals (outliers count little).
    spectrum : bool
        From the second cycle on, predict each spot on the ray of the most probable
        wavenumber of the beam's spectrum and its mosaic lattice point instead of the
        nominal one, with their ratio of widths refined (``α``, see the module notes);
        at high angles and with 0.1 % of bandwidth the two rays differ by pixels.
    wavelength_A : float, optional
        Default the geometry's.

    Returns
    -------
    geometry : Detector
        The refined geometry.
    report : GeometryRefinement
        Parameters with standard uncertainties, residuals per panel before and after
        (the "before" residuals are those of the given geometry with the crystal
        orientations refined in it), the refined crystals and a summary. Its ``panels``
        table:

        [columns: geometry_residuals]

    Raises
    ------
    ValueError
        Nothing to refine (no indexed crystal with ``min_peaks`` peaks), an unknown
        ``refine`` item, or a geometry without a numeric camera length.

    Notes
    -----
    See the module documentation for the model. Crystal cells are held at the reference
    (the distance and the cell scale cannot both be refined from stills); with
    ``"panels"`` and ``"beam"`` the group shifts sum to zero (and with ``"distance"`` the
    heights), and group rotations always sum to zero (a common rotation about the beam is
    a rotation of every crystal).

    Examples
    --------
    >>> new_geometry, report = refine_geometry(results, refine=("beam", "distance"))
    ... # doctest: +SKIP
    >>> report.panels[["name", "rms_before_px", "rms_after_px"]]  # doctest: +SKIP
    """
    peaks, crystals, geom0, cell0 = _tables(results)
    geometry = geometry if geometry is not None else geom0
    if geometry is None:
        raise ValueError("refine_geometry needs the geometry the frames were processed with")
    refine = {refine} if isinstance(refine, str) else set(refine)
    unknown = refine - set(REFINABLE)
    if unknown:
        raise ValueError(f"unknown refine items {sorted(unknown)}; choose from {REFINABLE}")
    gp_unknown = set(group_parameters) - {"shift", "rotation", "height"}
    if gp_unknown:
        raise ValueError(f"unknown group_parameters {sorted(gp_unknown)}")
    for col in ("frame", "fs", "ss"):
        if col not in peaks:
            raise ValueError(f"the peaks table has no {col!r} column")
    missing = [c for c in ("frame", "crystal", *_ASTAR) if c not in crystals]
    if missing:
        raise ValueError(f"the crystals table lacks columns {missing}")
    cell = cell if cell is not None else cell0
    if cell is None:
        if not len(crystals):
            raise ValueError("no crystals to refine against")
        med = crystals[["a", "b", "c", "alpha", "beta", "gamma"]].median()
        cell = UnitCell(*med.to_numpy(float))
    lam = geometry.beam.wavelength_A if wavelength_A is None else float(wavelength_A)
    k = 1.0 / lam
    bmat = cell.reciprocal_basis

    peaks = peaks.reset_index(drop=True)
    if "panel" not in peaks:
        if geometry.is_stacked:
            raise ValueError("the peaks table needs a panel column for a stacked detector")
        peaks = peaks.assign(panel=geometry.panel_of_pixel(peaks["fs"], peaks["ss"]))
    crystals = crystals.reset_index(drop=True)
    if not len(crystals):
        raise ValueError("no indexed crystal to refine the geometry against")
    u0, fits = _orientations(crystals, bmat)
    crystals, u0 = crystals[fits].reset_index(drop=True), u0[fits]
    model = DetectorModel(geometry, groups)

    free = np.zeros(model.size, dtype=bool)
    if "beam" in refine:
        free[[model.index("beam_x"), model.index("beam_y")]] = True
    if "distance" in refine:
        free[model.index("distance")] = True
    if "tilt" in refine:
        free[[model.index("tilt_x"), model.index("tilt_y")]] = True
    if "panels" in refine:
        kinds = {"shift": ("shift_x", "shift_y"), "rotation": ("rotation",),
                 "height": ("height",)}
        for gp in group_parameters:
            for kind in kinds[gp]:
                free[model.group_slice(kind)] = True

    # starting assignment: the indexer's, else from the crystals in the given geometry
    astar_of = np.einsum("ij,cjk->cik", bmat, np.transpose(u0, (0, 2, 1)))
    key = pd.MultiIndex.from_frame(crystals[["frame", "crystal"]])
    if "crystal" in peaks and (peaks["crystal"] >= 0).any():
        pk = pd.MultiIndex.from_arrays([peaks["frame"].to_numpy(np.int64),
                                        peaks["crystal"].to_numpy(np.int64)])
        owner = key.get_indexer(pk)
        hkl = peaks[["h", "k", "l"]].to_numpy(np.int64)
    else:
        owner, hkl = _assign(peaks, crystals, astar_of, geometry, lam, index_tolerance)

    theta = np.r_[model.zeros(), 0.0]          # geometry, then the spectral α
    u_start = u0.copy()
    history: list = []
    iterations = 0
    for cycle in range(max(int(n_cycles), 1)):
        sel = (owner >= 0) & np.any(hkl != 0, axis=1)
        counts = np.bincount(owner[sel], minlength=len(crystals))
        sel &= (counts >= max(int(min_peaks), 3))[np.maximum(owner, 0)]
        if not sel.any():
            raise ValueError(f"no indexed crystal with at least {min_peaks} assigned peaks")
        used = np.unique(owner[sel])
        remap = np.full(len(crystals), -1, dtype=np.int64)
        remap[used] = np.arange(len(used))
        rows = np.flatnonzero(sel)
        obs = _Observations(frame=peaks["frame"].to_numpy(np.int64)[rows],
                            crystal=remap[owner[rows]],
                            panel=peaks["panel"].to_numpy(np.int64)[rows],
                            fs=peaks["fs"].to_numpy(float)[rows],
                            ss=peaks["ss"].to_numpy(float)[rows],
                            hkl=hkl[rows], row=rows)
        problem = _Problem(model, obs, bmat, u0[used], k)
        free_now = np.r_[free, spectrum and cycle > 0]
        if "panels" in refine:
            group_counts = np.bincount(problem.group, minlength=model.n_groups)
            for kind in GROUP_PARAMETERS:
                free_now[model.group_slice(kind)] &= group_counts >= min_group_peaks
        if free_now[problem.alpha] and theta[problem.alpha] == 0:
            # start where the Bragg and nominal wavenumbers weigh alike at the median |q|
            g = problem.lattice_points()
            theta[problem.alpha] = 1.0 / float(np.median(np.sum(g * g, axis=1)))
        cons = _constraints(problem, free_now, refine)
        theta, cov, its, hist, scale = _solve(problem, theta, free_now, cons,
                                              max_iterations=max_iterations, robust=robust)
        iterations += its
        history.extend(hist)
        u0 = u0.copy()
        u0[used] = problem.u
        if cycle + 1 < n_cycles:
            astar_of = np.einsum("ij,cjk->cik", bmat, np.transpose(u0, (0, 2, 1)))
            owner, hkl = _assign(peaks, crystals, astar_of, model.apply(theta[:-1]), lam,
                                 index_tolerance)
    refined = model.apply(theta[:-1])
    r_after = problem.residuals(theta)
    w_after = _cauchy(r_after, scale)[0] if robust else np.ones(len(r_after))
    # the given geometry, the same peaks and spot model, the orientations refined in it
    before = _Problem(model, obs, bmat, u_start[used], k)
    theta0 = np.r_[model.zeros(), theta[-1]]
    _solve(before, theta0, np.zeros(before.size, bool), np.zeros((0, 0)),
           max_iterations=max_iterations, robust=robust)
    r_b = before.residuals(theta0)
    panels = _panel_residuals(geometry.panel_names, model, obs, r_b, r_after, w_after)

    sigma = np.full(problem.size, np.nan)
    if cov.size:
        sigma[free_now] = np.sqrt(np.maximum(np.diag(cov), 0.0))
    params = model.describe(theta[:-1], sigma[:-1], free_now[:-1])
    out_crystals = crystals.copy()
    astar_new = np.einsum("ij,cjk->cik", bmat, np.transpose(u0, (0, 2, 1)))
    out_crystals[_ASTAR] = astar_new.reshape(-1, 9)
    for name, val in zip(("a", "b", "c", "alpha", "beta", "gamma"), cell.parameters,
                         strict=True):
        out_crystals[name] = float(val)
    out_crystals = tables.CRYSTALS.cast(out_crystals)

    def rms(r, w):
        ok = np.all(np.isfinite(r), axis=1) & (w > 0.1)
        return float(np.sqrt(np.mean(np.sum(r[ok] ** 2, axis=1)))) if ok.any() else np.nan

    try:
        b0 = np.array(geometry.beam_center_px(0))
        b1 = np.array(refined.beam_center_px(0))
    except (np.linalg.LinAlgError, ValueError):
        b0 = b1 = np.full(2, np.nan)
    summary = {
        "n_crystals": int(problem.n_crystals), "n_peaks": len(obs.fs),
        "n_outliers": int(np.sum(w_after <= 0.1)),
        "robust_sigma_px": float(scale), "iterations": int(iterations),
        "rms_before_px": rms(r_b, w_after), "rms_after_px": rms(r_after, w_after),
        "beam_shift_fs_px": float(b1[0] - b0[0]), "beam_shift_ss_px": float(b1[1] - b0[1]),
        "distance_shift_mm": float(theta[model.index("distance")] * 1e3),
        "spectral_alpha_A2": float(theta[-1]),
        "bandwidth_over_mosaicity": float(2.0 * k * np.sqrt(theta[-1])),
        "refined": ", ".join(sorted(refine)),
    }
    report = GeometryRefinement(refined, geometry, params, panels, out_crystals, summary,
                                history)
    return refined, report


