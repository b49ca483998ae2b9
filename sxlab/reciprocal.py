"""Reciprocal-space maths shared by simulation, indexing, integration and merging.

Conventions (as :mod:`sxlab.geometry`): the scattering vector is ``q = k_out - k_in`` in
1/Å without a factor 2π, the beam runs along +z, ``k_in = k ẑ`` with ``k = 1/λ``; a
crystal's reciprocal basis ``A`` has rows a*, b*, c* in the lab frame and reflection
``hkl`` sits at ``q = hkl @ A``; ``|q| = 1/d``.

* the **excitation error** ``s = k - |q + k ẑ|``, positive when the lattice point lies
  inside the Ewald sphere (:func:`excitation_error`); its slope ``ds/dk`` on the sphere,
  ``g = |q|² / (2 k²) = 2 sin²θ`` (:func:`ewald_slope`);
* the wavenumbers that put a point on the sphere (:func:`bragg_wavenumber`) and that a
  spot is drawn at (:func:`spot_wavenumber`);
* **partiality** of a Gaussian (:func:`partiality_gaussian`) or uniform-ball
  (:func:`partiality_xsphere`) lattice point;
* peaks to reciprocal space (:func:`peak_vectors`), **index assignment**
  (:func:`assign_indices`) and what the indexed peaks tell about a crystal: its
  **profile radius** (:func:`profile_radius`) and **apparent resolution**
  (:func:`apparent_resolution`); ``d`` of Miller indices (:func:`d_spacing`).

Examples
--------
>>> q = np.array([[0.0, 0.0, -0.1]])
>>> float(excitation_error(q, 1.0)[0])  # |q + k ẑ| = 0.9
0.09999999999999998
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "apparent_resolution",
    "assign_indices",
    "bragg_wavenumber",
    "d_spacing",
    "effective_variance",
    "ewald_slope",
    "excitation_error",
    "nearest_rotation",
    "partiality_gaussian",
    "partiality_xsphere",
    "peak_vectors",
    "profile_radius",
    "rotation_matrix",
    "spot_wavenumber",
]


# ========================================================================= Ewald sphere
def excitation_error(q, k) -> np.ndarray:
    """Excitation error ``s = k - |q + k ẑ|`` (1/Å), positive inside the Ewald sphere.

    Parameters
    ----------
    q : array_like, shape (..., 3)
        Scattering vectors (1/Å, lab frame).
    k : float or array_like
        Wavenumber(s) ``1/λ`` (1/Å), broadcast against ``q[..., 0]``.

    Examples
    --------
    >>> round(float(excitation_error([0.0, 0.0, -0.1], 1.0)), 12)
    0.1
    """
    q = np.asarray(q, dtype=float)
    k = np.asarray(k, dtype=float)
    kz = q[..., 2] + k
    return k - np.sqrt(q[..., 0] ** 2 + q[..., 1] ** 2 + kz * kz)


def ewald_slope(q2, k) -> np.ndarray:
    """``g = |q|² / (2 k²) = 2 sin²θ``: the change of the excitation error with ``k``.

    Parameters
    ----------
    q2 : array_like
        ``|q|²`` (1/Å²).
    k : float
        Wavenumber (1/Å).

    Examples
    --------
    >>> float(ewald_slope(0.5, 1.0))
    0.25
    """
    return np.asarray(q2, dtype=float) / (2.0 * k * k)


def bragg_wavenumber(q, *, q2=None) -> np.ndarray:
    """Wavenumber ``k_B = -|q|² / (2 q_z)`` (1/Å) putting ``q`` on the Ewald sphere.

    NaN where ``q_z >= 0`` (no wavelength brings such a point into diffraction);
    ``q2``: ``|q|²`` when already known.

    Examples
    --------
    >>> q = np.array([0.1, 0.0, -0.005])
    >>> kb = bragg_wavenumber(q)
    >>> bool(np.isclose(np.linalg.norm(q + [0, 0, kb]), kb))
    True
    """
    q = np.asarray(q, dtype=float)
    qz = q[..., 2]
    if q2 is None:
        q2 = np.sum(q * q, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(qz < 0, -q2 / (2.0 * qz), np.nan)


def spot_wavenumber(q, k0: float, var_r, sigma_k: float, *, q2=None) -> np.ndarray:
    """Wavenumber ``k*`` maximising spectrum × lattice-point profile (1/Å).

    For a Gaussian spectrum (width ``σ_k``) and a Gaussian profile (variance ``σ_r²``):
    ``k* = (k0 σ_r² + k_B g² σ_k²) / (σ_r² + g² σ_k²)`` with ``k_B`` from
    :func:`bragg_wavenumber` and ``g = |q|²/(2 k_B²)``, the slope of the excitation error
    at ``k_B``; ``k0`` for a monochromatic beam and where ``k_B`` does not exist. The
    spot of ``q`` is where ``q + k* ẑ`` meets the detector.

    Parameters
    ----------
    q : array_like, shape (n, 3)
    k0 : float
        Nominal wavenumber (1/Å).
    var_r : float or array_like
        Variance ``σ_r²`` of the lattice point's profile (1/Å²).
    sigma_k : float
        Spectral width in ``k`` (1/Å).
    q2 : array_like, optional
        ``|q|²`` when already known.

    Examples
    --------
    >>> q = np.array([[0.2, 0.0, -0.0201]])
    >>> float(spot_wavenumber(q, 1.0, 1e-8, 0.0)[0])  # monochromatic: k0
    1.0
    """
    q = np.atleast_2d(np.asarray(q, dtype=float))
    if sigma_k == 0:
        return np.full(q.shape[0], float(k0))
    if q2 is None:
        q2 = np.sum(q * q, axis=-1)
    kb = bragg_wavenumber(q, q2=q2)
    wr = np.broadcast_to(np.asarray(var_r, dtype=float), q2.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        wb = (ewald_slope(q2, kb) * sigma_k) ** 2
        ks = (k0 * wr + kb * wb) / (wr + wb)
    return np.where(np.isfinite(ks), ks, k0)


# =========================================================================== partiality
def effective_variance(var_r, g, sigma_k) -> np.ndarray:
    """``σ_eff² = σ_r² + (g σ_k)²``: a Gaussian lattice point seen through the spectrum.

    Near the sphere ``s(k) ≈ s0 + g (k - k0)``, so a Gaussian spectrum of width ``σ_k``
    spreads the excitation error by ``g σ_k`` on top of the profile's variance ``σ_r²``.

    Examples
    --------
    >>> float(effective_variance(3.0, 2.0, 2.0))
    19.0
    """
    return np.asarray(var_r, dtype=float) + (np.asarray(g, dtype=float) * sigma_k) ** 2


def partiality_gaussian(s, var_r, g, sigma_k) -> np.ndarray:
    """``exp(-s² / (2 σ_eff²))`` with ``σ_eff² = σ_r² + (g σ_k)²``.

    The overlap of a Gaussian lattice point (variance ``σ_r²``) with the band of Ewald
    spheres of a Gaussian spectrum (width ``σ_k``, the excitation error moving by
    ``g = 2 sin²θ`` per unit of ``k``), normalised to 1 on the sphere.

    Examples
    --------
    >>> float(partiality_gaussian(0.0, 1e-6, 0.1, 1e-3))
    1.0
    >>> round(float(partiality_gaussian(1e-3, 1e-6, 0.0, 0.0)), 6)
    0.606531
    """
    s = np.asarray(s, dtype=float)
    return np.exp(-(s * s) / (2.0 * effective_variance(var_r, g, sigma_k)))


def partiality_xsphere(s, radius, half_width) -> np.ndarray:
    """Swept fraction of a uniformly filled lattice ball, normalised to 1 at ``s = 0``.

    Between the limiting spheres the Ewald sphere sweeps the slab of the ball (radius
    ``R``) between the planes at ``s ∓ w`` from its centre (``w = half_width``, clipped
    to ``[-R, R]``); the ball's volume below a plane at ``u`` is ``F(x) = x²(3 - 2x)``,
    ``x = (u + R)/(2R)``. The result is ``F(x2) - F(x1)`` over its value for ``s = 0``;
    for a monochromatic beam (``w = 0``) it tends to ``1 - (s/R)²``, the cross-section
    at ``s`` relative to the largest.

    Examples
    --------
    >>> partiality_xsphere(np.array([0.0, 0.5, 1.0]), 1.0, 0.0).tolist()
    [1.0, 0.75, 0.0]
    """
    s = np.asarray(s, dtype=float)
    mono = half_width <= 1e-9 * radius
    p_mono = np.clip(1.0 - (s / radius) ** 2, 0.0, 1.0)
    t = np.where(mono, 0.0, half_width)
    two_r = 2.0 * radius
    x1 = (np.clip(s - t, -radius, radius) + radius) / two_r
    x2 = (np.clip(s + t, -radius, radius) + radius) / two_r
    num = (x2 - x1) * (3.0 * (x1 + x2) - 2.0 * (x1 * x1 + x1 * x2 + x2 * x2))
    c = np.minimum(t, radius)
    y1 = (radius - c) / two_r
    y2 = (radius + c) / two_r
    den = (y2 - y1) * (3.0 * (y1 + y2) - 2.0 * (y1 * y1 + y1 * y2 + y2 * y2))
    with np.errstate(invalid="ignore", divide="ignore"):
        p_band = np.clip(num / den, 0.0, 1.0)
    return np.where(mono, p_mono, p_band)


# ============================================================================= indexing
def peak_vectors(peaks, geometry, wavelength_A: float | None = None) -> np.ndarray:
    """Scattering vectors (1/Å, shape (n, 3)) of a peak table's ``fs, ss, panel``.

    Parameters
    ----------
    peaks : DataFrame
        ``fs``, ``ss`` (data-array pixels, centres at +0.5) and ``panel`` (index or
        name; may be left out for single-module detectors: the panel under the pixel).
    geometry : Detector
    wavelength_A : float, optional
        Default the geometry's beam.

    Returns
    -------
    ndarray (n, 3)
        One row per peak, in table order; NaN rows for positions on no panel.

    Examples
    --------
    >>> import pandas as pd
    >>> from sxlab.geometry import builtin_geometry
    >>> det = builtin_geometry("eiger1m")
    >>> fs, ss = det.beam_center_px()
    >>> q = peak_vectors(pd.DataFrame({"fs": [fs, fs + 100], "ss": [ss, ss], "panel": 0}), det)
    >>> bool(np.abs(q[0]).max() < 1e-12), round(float(np.linalg.norm(q[1])), 6)
    (True, 0.074842)
    """
    fs = np.asarray(peaks["fs"], dtype=float)
    ss = np.asarray(peaks["ss"], dtype=float)
    if "panel" in peaks:
        col = peaks["panel"]
        if np.asarray(col).dtype.kind in "iuf":
            pid = np.asarray(col, dtype=float)
            pid = np.where(np.isfinite(pid), pid, -1).astype(np.int64)
        else:
            lut = {name: i for i, name in enumerate(geometry.panel_names)}
            pid = np.array([lut.get(str(x), -1) for x in col], dtype=np.int64)
    elif geometry.is_stacked:
        raise ValueError("peaks need a panel column for a stacked detector")
    else:
        pid = None
    if fs.size == 0:
        return np.zeros((0, 3))
    return geometry.pixel_to_q(fs, ss, pid, wavelength_A=wavelength_A)


def assign_indices(q: np.ndarray, astar: np.ndarray, tol: float):
    """Nearest Miller indices of points and whether they are indexed.

    Parameters
    ----------
    q : ndarray (n, 3)
        Scattering vectors (1/Å).
    astar : ndarray (3, 3)
        Reciprocal basis, rows a*, b*, c* (1/Å).
    tol : float
        A point is indexed when all three fractional indices are within ``tol`` of
        integers (strictly).

    Returns
    -------
    hkl : ndarray of int64 (n, 3)
        Rounded indices.
    indexed : ndarray of bool (n,)
    frac_dev : ndarray (n,)
        Largest ``|h - round(h)|`` of the three indices.

    Examples
    --------
    >>> astar = np.diag([0.1, 0.1, 0.1])
    >>> hkl, ok, dev = assign_indices(np.array([[0.1, 0.2, 0.0], [0.15, 0, 0]]), astar, 0.25)
    >>> hkl.tolist(), ok.tolist()
    ([[1, 2, 0], [2, 0, 0]], [True, False])
    """
    frac = q @ np.linalg.inv(astar)
    hkl = np.round(frac)
    dev = np.abs(frac - hkl).max(axis=1) if len(q) else np.zeros(0)
    return hkl.astype(np.int64), dev < tol, dev


def profile_radius(s: np.ndarray, percentile: float = 80.0) -> float:
    """Profile radius (1/Å): the ``percentile`` of ``|s|`` of the indexed peaks.

    ``s`` are the excitation errors of the lattice points the peaks were assigned to.
    Prediction with this radius puts that fraction of the strong, found reflections
    inside the profile; NaN without peaks.

    Examples
    --------
    >>> profile_radius(np.array([-2e-4, 1e-4, 3e-4, -4e-4, 5e-4]), 80.0)
    0.00042
    """
    s = np.abs(np.asarray(s, dtype=float))
    if s.size == 0:
        return float("nan")
    return float(np.round(np.percentile(s, percentile), 12))


def apparent_resolution(q) -> float:
    """Apparent resolution (Å): d of the highest-resolution point, ``1 / max |q|``.

    Of a crystal: over the peaks it indexes. NaN without points.

    Examples
    --------
    >>> apparent_resolution(np.array([[0.1, 0.0, 0.0], [0.0, 0.3, -0.4]]))
    2.0
    """
    q = np.asarray(q, dtype=float).reshape(-1, 3)
    if q.shape[0] == 0:
        return float("nan")
    return float(1.0 / np.sqrt(np.max(np.sum(q * q, axis=1))))


def d_spacing(hkl, astar) -> np.ndarray:
    """d (Å) of Miller indices: ``1 / |hkl @ A|`` (inf for 0 0 0).

    Parameters
    ----------
    hkl : array_like of int (n, 3)
    astar : ndarray (3, 3)
        Reciprocal basis (e.g. :attr:`sxlab.cell.UnitCell.reciprocal_basis`).

    Examples
    --------
    >>> d_spacing([[1, 0, 0], [0, 0, 0]], np.diag([0.1, 0.1, 0.1])).tolist()
    [10.0, inf]
    """
    q = np.asarray(hkl, dtype=np.float64).reshape(-1, 3) @ astar
    q2 = np.einsum("ij,ij->i", q, q)
    with np.errstate(divide="ignore"):
        return 1.0 / np.sqrt(q2)


# ========================================================================= orientations
def rotation_matrix(omega) -> np.ndarray:
    """Rotation matrix of the rotation vector ``omega`` (axis × angle in radians; Rodrigues).

    Examples
    --------
    >>> rotation_matrix([0.0, 0.0, np.pi / 2]).round(12) @ [1.0, 0.0, 0.0]
    array([0., 1., 0.])
    """
    omega = np.asarray(omega, dtype=float)
    theta = float(np.linalg.norm(omega))
    if theta < 1e-15:
        return np.eye(3)
    k = omega / theta
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(theta) * kx + (1 - np.cos(theta)) * kx @ kx


def nearest_rotation(m) -> np.ndarray:
    """The proper rotation nearest to ``m`` in the Frobenius norm (polar decomposition).

    The orientation ``U`` of a crystal with reciprocal basis ``A`` and cell basis ``B``
    (``A = B Uᵀ``) is ``nearest_rotation(solve(B, A).T)``.

    Examples
    --------
    >>> r = nearest_rotation(rotation_matrix([0.1, -0.2, 0.3]) * 1.01)
    >>> bool(np.allclose(r, rotation_matrix([0.1, -0.2, 0.3])))
    True
    """
    u, _, vt = np.linalg.svd(np.asarray(m, dtype=float))
    r = u @ vt
    if np.linalg.det(r) < 0:
        u[:, -1] *= -1
        r = u @ vt
    return r
