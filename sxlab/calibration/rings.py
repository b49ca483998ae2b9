"""Detector calibration from powder rings of known d-spacings.

An average of frames of a calibrant (silver behenate, LaB6, ...) or the solvent ring of a
known ``d`` shows rings at the Bragg angles ``2θ_i = 2 asin(λ / 2 d_i)``. In a wrong
geometry the rings are off-centre and of the wrong radii; :func:`calibrate_rings` moves the
detector (:class:`~sxlab.calibration.model.DetectorModel`: beam position, distance, tilt)
until the rings sit at their angles, as pyFAI's calibration and CrystFEL's
``detector-shift`` do.

Method
------
1. **Control points.** With the geometry as it stands, the pixels within ``window_px``
   of each ring are split into ``n_sectors`` azimuthal sectors. In each (ring, sector)
   the background is the median of the pixels in the outer parts of the window, and the
   ring's position is the signal-weighted mean of the pixels' 2θ and azimuth (the signal
   above background, over a core around the ring that is narrowed twice about the
   previous mean). Averaging in angles rather than pixel positions avoids the chord bias
   of an arc; the point on the detector at that 2θ and azimuth is the control point.
   Sectors without a clear ring (too little signal against the background's scatter,
   too few pixels, the window cut by a mask) give none.
2. **Fit.** Gauss–Newton on the model's parameters, with the residual of a control point
   its 2θ in the moved geometry minus the ring's, converted to radial pixels; Cauchy
   weights make stray points (a diffraction spot in the window, a dead region) count
   little.
3. Repeat with the refined geometry and a narrower window (``n_cycles``).

Examples
--------
>>> from sxlab.geometry import builtin_geometry
>>> from sxlab.simulate import simulate_powder
>>> det = builtin_geometry("eiger4m", clen=0.3)
>>> data, rings = simulate_powder(det, d_spacing_A=58.38, seed=1)  # doctest: +SKIP
>>> geom, report = calibrate_rings(data, wrong_geometry, rings.d_A)  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .. import tables
from ..geometry import Detector
from .model import DetectorModel, GeometryReport

__all__ = ["RingCalibration", "calibrate_rings", "ring_d_spacings"]

_CALIBRANTS = {
    # lamellar d001 (Å) of silver behenate; orders n give d / n
    "agbeh": 58.38,
    "silver behenate": 58.38,
}
#: LaB6 (Pm-3m, a = 4.15689 Å, NIST SRM 660c): d of the first reflections.
_LAB6_A = 4.15689


def ring_d_spacings(calibrant: str, n: int = 12) -> np.ndarray:
    """d-spacings (Å) of the first ``n`` rings of a calibrant.

    Parameters
    ----------
    calibrant : {"agbeh", "silver behenate", "lab6"}
    n : int

    Examples
    --------
    >>> ring_d_spacings("agbeh", 3).round(3).tolist()
    [58.38, 29.19, 19.46]
    >>> ring_d_spacings("lab6", 3).round(4).tolist()
    [4.1569, 2.9394, 2.4]
    """
    name = calibrant.lower()
    if name in _CALIBRANTS:
        return _CALIBRANTS[name] / np.arange(1, n + 1)
    if name == "lab6":
        s = sorted({h * h + k * k + l * l for h in range(8) for k in range(8)
                    for l in range(8) if h * h + k * k + l * l > 0})  # noqa: E741
        return _LAB6_A / np.sqrt(np.array(s[:n], dtype=float))
    raise ValueError(f"unknown calibrant {calibrant!r}; known: "
                     f"{sorted([*_CALIBRANTS, 'lab6'])}")


# ========================================================================== points
def _lab(model: DetectorModel, theta, panel, fs, ss, min_fs, min_ss):
    corner, a, b = model.panel_vectors(theta)
    return (corner[panel] + (fs - min_fs[panel])[:, None] * a[panel]
            + (ss - min_ss[panel])[:, None] * b[panel])


def _angles(xyz: np.ndarray):
    two_theta = np.arctan2(np.hypot(xyz[:, 0], xyz[:, 1]), xyz[:, 2])
    return two_theta, np.arctan2(xyz[:, 1], xyz[:, 0])


def _control_points(image, good, geometry: Detector, two_theta_rings, window_px: float,
                    n_sectors: int, min_snr: float) -> pd.DataFrame:
    """Control points of the rings in ``geometry`` (see the module notes)."""
    maps = geometry.maps
    tt = maps.two_theta_rad
    valid = good & np.isfinite(tt) & np.isfinite(image)
    # radial pixels per radian of 2θ at each ring: D / (p cos² 2θ)
    dist = float(np.nanmedian(maps.z_m[maps.panel >= 0]))
    pix = geometry.panels[0].pixel_size_m
    per_rad = dist / (pix * np.cos(two_theta_rings) ** 2)
    half = window_px / per_rad                                   # half-window in 2θ
    order = np.argsort(two_theta_rings)
    edges = two_theta_rings[order]
    flat_idx = np.flatnonzero(valid)
    t = tt.ravel()[flat_idx].astype(np.float64)
    nearest = np.clip(np.searchsorted(edges, t), 1, len(edges) - 1)
    left = edges[nearest - 1]
    right = edges[nearest]
    pick = np.where(t - left < right - t, nearest - 1, nearest)
    if len(edges) == 1:
        pick = np.zeros_like(pick)
    ring = order[pick]
    inside = np.abs(t - two_theta_rings[ring]) < half[ring]
    flat_idx, ring = flat_idx[inside], ring[inside]
    if not len(flat_idx):
        return tables.RING_POINTS.empty()
    # float64 angles of the selected pixels' centres
    coords = np.unravel_index(flat_idx, geometry.data_shape)
    ss_px, fs_px = coords[-2] + 0.5, coords[-1] + 0.5
    panel = maps.panel.ravel()[flat_idx].astype(np.int64)
    xyz = geometry.pixel_to_lab(fs_px, ss_px, panel)
    t, phi = _angles(xyz)
    value = np.asarray(image, dtype=np.float64).ravel()[flat_idx]
    sector = np.floor((phi + np.pi) / (2 * np.pi) * n_sectors).astype(np.int64) % n_sectors
    key = ring * n_sectors + sector
    rows = []
    order_k = np.argsort(key, kind="stable")
    bounds = np.flatnonzero(np.diff(key[order_k])) + 1
    for grp in np.split(order_k, bounds):
        if len(grp) < 12:
            continue
        i = int(ring[grp[0]])
        dt = (t[grp] - two_theta_rings[i]) * per_rad[i]              # radial px
        v = value[grp]
        outer = np.abs(dt) > 0.6 * window_px
        if outer.sum() < 5:
            continue
        bg = float(np.median(v[outer]))
        noise = 1.4826 * float(np.median(np.abs(v[outer] - bg))) + 1e-12
        centre = 0.0
        core = window_px * 0.6
        w = None
        for _ in range(3):
            sel = np.abs(dt - centre) <= core
            w = np.clip(v[sel] - bg, 0.0, None)
            if w.sum() <= 0:
                break
            centre = float(np.sum(w * dt[sel]) / w.sum())
            core = max(core * 0.5, 2.0)
        sel = np.abs(dt - centre) <= core
        w = np.clip(v[sel] - bg, 0.0, None)
        signal = float(np.sum(v[sel] - bg))
        if w.sum() <= 0 or signal < min_snr * noise * np.sqrt(sel.sum()):
            continue
        wt = w / w.sum()
        t_mean = float(np.sum(wt * t[grp][sel]))
        # mean azimuth of the sector's ring pixels (unwrapped around the first one)
        ph = phi[grp][sel]
        ph = ph[0] + np.angle(np.exp(1j * (ph - ph[0])))
        p_mean = float(np.sum(wt * ph))
        rows.append((i, int(sector[grp[0]]), t_mean, p_mean, signal))
    if not rows:
        return tables.RING_POINTS.empty()
    arr = np.array(rows)
    two_theta, azimuth = arr[:, 2], arr[:, 3]
    direction = np.stack([np.sin(two_theta) * np.cos(azimuth),
                          np.sin(two_theta) * np.sin(azimuth), np.cos(two_theta)], axis=1)
    pn, fs, ss = geometry.lab_to_pixel(direction)
    ok = pn >= 0
    return tables.RING_POINTS.make({
        "ring": arr[ok, 0].astype(np.int64), "d_A": np.nan, "sector": arr[ok, 1],
        "panel": pn[ok], "fs": fs[ok], "ss": ss[ok], "intensity": arr[ok, 4],
        "residual_before_deg": np.nan, "residual_after_deg": np.nan, "used": True})


# ============================================================================= fit
def _radial_residuals(model: DetectorModel, points: pd.DataFrame, two_theta_rings):
    """Function of the parameters: 2θ of the points minus their rings', in radial px."""
    det = model.detector
    min_fs = np.array([p.min_fs for p in det.panels], dtype=float)
    min_ss = np.array([p.min_ss for p in det.panels], dtype=float)
    panel = points["panel"].to_numpy(np.int64)
    fs = points["fs"].to_numpy(float)
    ss = points["ss"].to_numpy(float)
    target = two_theta_rings[points["ring"].to_numpy(np.int64)]
    dist = float(np.mean([p.clen + p.coffset for p in det.panels]))
    per_rad = dist / (det.panels[0].pixel_size_m * np.cos(target) ** 2)

    def residual(th):
        return (_angles(_lab(model, th, panel, fs, ss, min_fs, min_ss))[0] - target) * per_rad

    return residual


def _fit(model: DetectorModel, points: pd.DataFrame, two_theta_rings, free, theta,
         *, max_iterations: int = 30, robust: bool = True):
    """Gauss–Newton with Cauchy weights on the radial pixel residuals of the points."""
    residual = _radial_residuals(model, points, two_theta_rings)
    idx = np.flatnonzero(free)
    steps = np.array([2e-6 if model.names[i].startswith("tilt") else 2e-7 for i in idx])
    r = residual(theta)
    lam = 1e-3
    scale = 1.0
    cov = np.full((len(idx), len(idx)), np.nan)
    for _ in range(max_iterations):
        scale = max(1.4826 * float(np.median(np.abs(r))), 0.02) if robust else 1.0
        w = 1.0 / (1.0 + (r / scale) ** 2) if robust else np.ones_like(r)
        cost = float(np.sum(np.log1p((r / scale) ** 2))) if robust else float(r @ r)
        jac = np.empty((len(r), len(idx)))
        for j, (i, h) in enumerate(zip(idx, steps, strict=True)):
            tp, tm = theta.copy(), theta.copy()
            tp[i] += h
            tm[i] -= h
            jac[:, j] = (residual(tp) - residual(tm)) / (2 * h)
        hmat = jac.T @ (w[:, None] * jac)
        g = jac.T @ (w * r)
        d = np.sqrt(np.maximum(np.diag(hmat), 1e-300))
        accepted = False
        for _ in range(12):
            step = -np.linalg.solve(hmat / np.outer(d, d) + lam * np.eye(len(idx)), g / d) / d
            trial = theta.copy()
            trial[idx] += step
            r_new = residual(trial)
            new = (float(np.sum(np.log1p((r_new / scale) ** 2))) if robust
                   else float(r_new @ r_new))
            if np.isfinite(new) and new <= cost:
                accepted = True
                break
            lam *= 10
        if not accepted:
            break
        theta, r = trial, r_new
        lam = max(lam / 10, 1e-9)
        if np.max(np.abs(step * model.units[idx])) < 1e-5 or cost - new < 1e-10 * cost:
            break
    w = 1.0 / (1.0 + (r / scale) ** 2) if robust else np.ones_like(r)
    dof = max(len(r) - len(idx), 1)
    try:
        cov = float(np.sum(w * r * r)) / dof * np.linalg.inv(hmat)
    except (np.linalg.LinAlgError, UnboundLocalError):
        pass
    return theta, cov, r, w, scale


# ========================================================================== report
@dataclass
class RingCalibration(GeometryReport):
    """What :func:`calibrate_rings` found.

    Attributes
    ----------
    geometry, initial : Detector
        Calibrated and given geometry.
    points : DataFrame
        Control points (:data:`sxlab.tables.RING_POINTS`) of the last cycle, with their
        2θ residuals in the given and calibrated geometry.
    parameters : DataFrame
        The model's parameters (changes in px, mm, deg) with σ, as
        :meth:`~sxlab.calibration.model.DetectorModel.describe`.
    summary : dict
        Beam centre (px of panel 0) and distance (mm) before and after, tilt (deg),
        points used, RMS radial residual (px) before and after.
    """

    geometry: Detector
    initial: Detector
    points: pd.DataFrame
    parameters: pd.DataFrame
    summary: dict = field(default_factory=dict)

    title = "Ring calibration"

    def __repr__(self) -> str:
        s = self.summary
        return (f"<RingCalibration {s.get('n_points', 0)} points on {s.get('n_rings', 0)} "
                f"rings; beam ({s.get('beam_fs_px', np.nan):.2f}, "
                f"{s.get('beam_ss_px', np.nan):.2f}) px, distance "
                f"{s.get('distance_mm', np.nan):.3f} mm; RMS {s.get('rms_before_px', np.nan):.2f}"
                f" → {s.get('rms_after_px', np.nan):.3f} px>")


# ========================================================================== public
@tables.documented
def calibrate_rings(image, geometry: Detector, d_spacings, *, mask=None, bad=None,
                    refine=("beam", "distance", "tilt"), n_sectors: int = 72,
                    window_px=(15.0, 6.0, 4.0), min_snr: float = 5.0,
                    robust: bool = True, wavelength_A: float | None = None):
    """Calibrate beam centre, distance and tilt from powder rings of known d-spacings.

    Parameters
    ----------
    image : array_like or xarray.DataArray
        An image with rings (e.g. the mean of calibrant frames), detector data shape.
    geometry : Detector
        The starting geometry (a few pixels and millimetres off is fine).
    d_spacings : array_like or str
        d (Å) of the rings, or a calibrant name for :func:`ring_d_spacings`
        (``"agbeh"``, ``"lab6"``). Rings off the detector are ignored.
    mask : Mask or array_like of bool, optional
        Pixels to use (True: good; e.g. :func:`sxlab.masks.mask_beamstop`); the pixels
        the geometry declares bad are never used.
    bad : array_like of bool, optional
        True for bad pixels of this image (flagged, saturated).
    refine : sequence of {"beam", "distance", "tilt"}
        What to fit.
    n_sectors : int
        Azimuthal sectors per ring (one control point each).
    window_px : float or sequence of float
        Half-width of the search window around each ring, one per cycle: wide first (the
        geometry may be off), narrow later.
    min_snr : float
        A sector's ring signal must exceed this many times the background noise of its
        pixels.
    robust : bool
        Cauchy weights on the residuals.
    wavelength_A : float, optional
        Default the geometry's.

    Returns
    -------
    geometry : Detector
        The calibrated geometry.
    report : RingCalibration
        Control points, parameters with σ and a summary. Its ``points`` table:

        [columns: ring_points]

    Raises
    ------
    ValueError
        No ring on the detector, or too few control points for the parameters.

    Examples
    --------
    >>> geom, report = calibrate_rings(mean_image, geometry, "agbeh")  # doctest: +SKIP
    >>> report.summary["beam_fs_px"], report.summary["distance_mm"]  # doctest: +SKIP
    """
    refine = {refine} if isinstance(refine, str) else set(refine)
    unknown = refine - {"beam", "distance", "tilt"}
    if unknown:
        raise ValueError(f"unknown refine items {sorted(unknown)}; "
                         "choose from ('beam', 'distance', 'tilt')")
    if isinstance(d_spacings, str):
        d_spacings = ring_d_spacings(d_spacings, 40)
    d = np.atleast_1d(np.asarray(d_spacings, dtype=float))
    lam = geometry.beam.wavelength_A if wavelength_A is None else float(wavelength_A)
    if wavelength_A is not None:
        geometry = geometry.with_beam(wavelength_A=lam)
    img = np.asarray(getattr(image, "values", image), dtype=np.float64)
    if img.shape != tuple(geometry.data_shape):
        raise ValueError(f"image has shape {img.shape}, the geometry expects "
                         f"{geometry.data_shape}")
    good = ~geometry.bad_pixel_mask()
    if mask is not None:
        good &= np.asarray(getattr(mask, "good", getattr(mask, "values", mask)), dtype=bool)
    if bad is not None:
        good &= ~np.asarray(getattr(bad, "values", bad), dtype=bool)
    with np.errstate(invalid="ignore"):
        two_theta = 2 * np.arcsin(lam / (2 * d))
    tt_map = geometry.maps.two_theta_rad
    tt_max = float(np.nanmax(tt_map)) if np.isfinite(tt_map).any() else 0.0
    tt_min = float(np.nanmin(tt_map)) if np.isfinite(tt_map).any() else 0.0
    on = np.isfinite(two_theta) & (two_theta < tt_max) & (two_theta > tt_min)
    if not on.any():
        raise ValueError(f"no ring of d = {d.round(4).tolist()} Å falls on the detector")
    ring_ids = np.flatnonzero(on)
    rings = two_theta[on]
    windows = np.atleast_1d(np.asarray(window_px, dtype=float))

    model = DetectorModel(geometry)
    free = np.zeros(model.size, dtype=bool)
    if "beam" in refine:
        free[[model.index("beam_x"), model.index("beam_y")]] = True
    if "distance" in refine:
        free[model.index("distance")] = True
    if "tilt" in refine:
        free[[model.index("tilt_x"), model.index("tilt_y")]] = True
    theta = model.zeros()
    current = geometry
    points = tables.RING_POINTS.empty()
    r = w = None
    cov = np.zeros((0, 0))
    for window in windows:
        points = _control_points(img, good, current, rings, float(window), n_sectors,
                                 min_snr)
        if len(points) < max(3 * int(free.sum()), 6):
            raise ValueError(f"only {len(points)} control points found on "
                             f"{len(rings)} ring(s) (window {window:g} px): is the "
                             "geometry far off, or the rings too weak?")
        # the points' positions are pixels: fit from the given geometry's parameters
        theta, cov, r, w, _ = _fit(model, points, rings, free, theta, robust=robust)
        current = model.apply(theta)
    r_before = _radial_residuals(model, points, rings)(model.zeros())
    per_deg = np.degrees(1.0)
    dist = float(np.mean([p.clen + p.coffset for p in geometry.panels]))
    to_deg = (geometry.panels[0].pixel_size_m * np.cos(rings[points["ring"].to_numpy()]) ** 2
              / dist * per_deg)
    points = points.assign(ring=ring_ids[points["ring"].to_numpy()],
                           d_A=d[ring_ids[points["ring"].to_numpy()]],
                           residual_before_deg=r_before * to_deg,
                           residual_after_deg=r * to_deg, used=w > 0.1)
    points = tables.RING_POINTS.cast(points)
    sigma = np.full(model.size, np.nan)
    if cov.size:
        sigma[free] = np.sqrt(np.maximum(np.diag(cov), 0.0))
    params = model.describe(theta, sigma, free)
    b0 = geometry.beam_center_px(0)
    b1 = current.beam_center_px(0)
    used = w > 0.1
    summary = {
        "n_rings": int(len(np.unique(points["ring"]))), "n_points": int(used.sum()),
        "beam_fs_px": float(b1[0]), "beam_ss_px": float(b1[1]),
        "beam_shift_fs_px": float(b1[0] - b0[0]), "beam_shift_ss_px": float(b1[1] - b0[1]),
        "distance_mm": float(np.reshape(current.pixel_to_lab(*b1, 0), 3)[2] * 1e3),
        "distance_shift_mm": float(theta[model.index("distance")] * 1e3),
        "tilt_x_deg": float(np.degrees(theta[model.index("tilt_x")])),
        "tilt_y_deg": float(np.degrees(theta[model.index("tilt_y")])),
        "rms_before_px": float(np.sqrt(np.mean(r_before[used] ** 2))),
        "rms_after_px": float(np.sqrt(np.mean(r[used] ** 2))),
    }
    return current, RingCalibration(current, geometry, points, params, summary)
