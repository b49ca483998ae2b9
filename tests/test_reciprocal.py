"""Tests for sxlab.reciprocal: the reciprocal-space maths every stage shares."""

import gemmi
import numpy as np
import pandas as pd
import pytest

from sxlab.cell import UnitCell
from sxlab.geometry import builtin_geometry
from sxlab.reciprocal import (
    apparent_resolution,
    assign_indices,
    bragg_wavenumber,
    d_spacing,
    ewald_slope,
    excitation_error,
    partiality_gaussian,
    partiality_xsphere,
    peak_vectors,
    profile_radius,
    spot_wavenumber,
)


# ------------------------------------------------------------------------ Ewald sphere
def test_bragg_wavenumber_puts_q_on_sphere(rng):
    q = rng.normal(size=(200, 3)) * 0.3
    q[:, 2] = -np.abs(q[:, 2]) - 1e-3
    kb = bragg_wavenumber(q)
    np.testing.assert_allclose(np.linalg.norm(q + kb[:, None] * [0, 0, 1], axis=1), kb,
                               rtol=1e-12)
    np.testing.assert_allclose(excitation_error(q, kb), 0.0, atol=1e-12)
    assert np.isnan(bragg_wavenumber([0.1, 0.0, 0.01]))


def test_excitation_error_sign_and_derivative(rng):
    k0 = 1.0 / 1.3
    # A point inside the sphere has positive s.
    assert excitation_error([0.0, 0.0, -0.1], k0) > 0
    assert excitation_error([0.0, 0.0, 0.1], k0) < 0
    for _ in range(20):
        direction = rng.normal(size=3)
        direction[2] = -abs(direction[2])
        q = direction / np.linalg.norm(direction) * rng.uniform(0.05, 0.6)
        kb = bragg_wavenumber(q)
        h = 1e-6
        dsdk = (excitation_error(q, kb + h) - excitation_error(q, kb - h)) / (2 * h)
        sin_theta = np.linalg.norm(q) / (2 * kb)
        # s = k - |q + k z| grows with k: ds/dk = +2 sin²θ (-2 sin²θ for s = |q + k z| - k).
        np.testing.assert_allclose(dsdk, 2 * sin_theta**2, rtol=1e-6)


def test_partiality_formula():
    assert partiality_gaussian(0.0, 1e-6, ewald_slope(0.16, 1.0), 1e-3) == 1.0
    # Equals the spectrum-weighted overlap of the point profile with the sphere.
    k0, sigma_r, sigma_k = 1.0, 4e-4, 2e-3
    q = np.array([0.25, 0.1, 0.0])
    q[2] = -np.sum(q[:2] ** 2) / (2 * k0) / (1 + 1e-9)  # almost on the sphere at k0
    ks = np.linspace(k0 - 0.03, k0 + 0.03, 200001)
    s_k = excitation_error(q[None, :], ks)

    def overlap(kc):
        w = np.exp(-0.5 * ((ks - kc) / sigma_k) ** 2) / (sigma_k * np.sqrt(2 * np.pi))
        return np.trapezoid(w * np.exp(-0.5 * s_k**2 / sigma_r**2), ks)

    g = np.sum(q**2) / (2 * k0**2)
    sigma_eff = np.sqrt(sigma_r**2 + (g * sigma_k) ** 2)
    for dk in (0.0, 2e-3, 5e-3, -4e-3):
        s0 = excitation_error(q, k0 + dk)
        p = partiality_gaussian(s0, sigma_r**2, ewald_slope(q @ q, k0 + dk), sigma_k)
        np.testing.assert_allclose(overlap(k0 + dk) / (sigma_r / sigma_eff), p, rtol=0.02,
                                   atol=1e-4)


def test_spot_wavenumber_maximises_product(rng):
    k0, sigma_k = 1.0, 3e-3
    for _ in range(20):
        # A point in diffraction at k_B within a few spectral widths of k0.
        kb = k0 + rng.uniform(-3, 3) * sigma_k
        tth, phi = rng.uniform(0.05, 0.8), rng.uniform(0, 2 * np.pi)
        q = kb * np.array([np.sin(tth) * np.cos(phi), np.sin(tth) * np.sin(phi),
                           np.cos(tth) - 1])
        sigma_r = rng.uniform(1e-4, 2e-3)
        ks = np.linspace(k0 - 0.03, k0 + 0.03, 600001)
        logp = -0.5 * ((ks - k0) / sigma_k) ** 2 - 0.5 * (excitation_error(q, ks) / sigma_r) ** 2
        best = ks[np.argmax(logp)]
        kstar = spot_wavenumber(q, k0, sigma_r**2, sigma_k)[0]
        # The product at k* is within 1 % of its maximum ...
        assert np.interp(kstar, ks, logp) > logp.max() - 0.01
        # ... and the spot direction is that of the maximum to 1e-5 rad.
        u1, u2 = q + [0, 0, kstar], q + [0, 0, best]
        cos = u1 @ u2 / np.linalg.norm(u1) / np.linalg.norm(u2)
        assert np.arccos(min(cos, 1.0)) < 1e-5




def test_ewald_slope_is_the_derivative_on_the_sphere(rng):
    q = rng.normal(size=(50, 3)) * 0.2
    q[:, 2] = -np.abs(q[:, 2]) - 1e-3
    kb = bragg_wavenumber(q)
    h = 1e-7
    dsdk = (excitation_error(q, kb + h) - excitation_error(q, kb - h)) / (2 * h)
    np.testing.assert_allclose(ewald_slope(np.sum(q * q, axis=1), kb), dsdk, rtol=1e-5)


def test_spot_wavenumber_monochromatic_and_missing_bragg_wavenumber():
    q = np.array([[0.1, 0.0, -0.005], [0.1, 0.0, 0.01]])
    assert spot_wavenumber(q, 1.25, 1e-8, 0.0).tolist() == [1.25, 1.25]
    ks = spot_wavenumber(q, 1.25, 1e-8, 1e-3)
    assert ks[1] == 1.25 and ks[0] != 1.25  # q_z > 0: no Bragg wavenumber, k0 kept
    np.testing.assert_array_equal(spot_wavenumber(q, 1.25, 1e-8, 1e-3, q2=np.sum(q * q, 1)),
                                  ks)


# -------------------------------------------------------------------------- partiality
def test_xsphere_is_the_swept_volume_fraction(rng):
    radius = 0.002
    s = rng.uniform(-0.003, 0.003, 500)
    t = rng.uniform(0, 0.0035, 500)

    def volume_below(u):  # ∫ π (R² - x²) dx from -R to u, over the ball volume
        u = np.clip(u, -radius, radius)
        return (radius**2 * (u + radius) - (u**3 + radius**3) / 3.0) / (4.0 * radius**3 / 3.0)

    exp = (volume_below(s + t) - volume_below(s - t)) / (volume_below(t) - volume_below(-t))
    np.testing.assert_allclose(partiality_xsphere(s, radius, t), exp, rtol=1e-6, atol=1e-12)
    # monochromatic limit and the way to it
    np.testing.assert_allclose(partiality_xsphere(s, radius, np.zeros_like(s)),
                               np.clip(1 - (s / radius) ** 2, 0, 1))
    np.testing.assert_allclose(partiality_xsphere(s, radius, np.full_like(s, 1e-9)),
                               np.clip(1 - (s / radius) ** 2, 0, 1), atol=1e-6)
    assert partiality_xsphere(np.zeros(1), radius, np.full(1, 1e-4))[0] == pytest.approx(1.0)


# ---------------------------------------------------------------------------- indexing
def test_assignment_profile_radius_and_apparent_resolution(rng):
    astar = np.diag([0.01, 0.02, 0.04])
    q = np.array([[0.03, 0.02, 0.04], [0.0351, 0.0, 0.0]])
    hkl, ok, dev = assign_indices(q, astar, 0.25)
    assert hkl.tolist() == [[3, 1, 1], [4, 0, 0]] and ok.tolist() == [True, False]
    assert dev[1] == pytest.approx(0.49)
    assert assign_indices(np.zeros((0, 3)), astar, 0.25)[1].shape == (0,)
    s = excitation_error(np.array([[0, 0, -1], [1, 0, 0]]) @ np.diag([0.1, 0.1, 0.1]), 1.0)
    assert s[0] == pytest.approx(0.1) and s[1] == pytest.approx(1 - np.hypot(0.1, 1.0))
    assert np.isnan(profile_radius(np.zeros(0)))
    s = rng.normal(0, 1e-3, 1000)
    assert profile_radius(s, 50) == pytest.approx(np.median(np.abs(s)), abs=1e-12)
    assert profile_radius(-s) == profile_radius(s)
    q = rng.normal(size=(30, 3))
    assert apparent_resolution(q) == pytest.approx(1 / np.linalg.norm(q, axis=1).max())
    assert np.isnan(apparent_resolution(np.zeros((0, 3))))


def test_d_spacing_matches_gemmi(rng):
    cell = UnitCell(61.2, 72.4, 83.1, 81.0, 95.5, 102.3)
    hkl = rng.integers(-9, 10, (200, 3))
    hkl = hkl[np.any(hkl != 0, axis=1)]
    expected = gemmi.UnitCell(*cell.parameters).calculate_d_array(hkl.astype(np.int32))
    np.testing.assert_allclose(d_spacing(hkl, cell.reciprocal_basis), expected, rtol=1e-12)
    assert d_spacing([[0, 0, 0]], cell.reciprocal_basis)[0] == np.inf


def test_peak_vectors_match_the_geometry(rng):
    for name in ("eiger4m", "mpccd", "agipd"):
        det = builtin_geometry(name)
        panel = rng.integers(0, det.n_panels, 50)
        fs = np.array([rng.uniform(det.panels[p].min_fs, det.panels[p].max_fs + 1)
                       for p in panel])
        ss = np.array([rng.uniform(det.panels[p].min_ss, det.panels[p].max_ss + 1)
                       for p in panel])
        peaks = pd.DataFrame({"panel": panel, "fs": fs, "ss": ss})
        q = peak_vectors(peaks, det)
        # The scattering vector of the peak's lab position (per-panel loop, no caching).
        lab = np.stack([det.panels[p].corner_m()
                        + (f - det.panels[p].min_fs) * det.panels[p].fs_m()
                        + (s - det.panels[p].min_ss) * det.panels[p].ss_m()
                        for p, f, s in zip(panel, fs, ss, strict=True)])
        unit = lab / np.linalg.norm(lab, axis=1, keepdims=True)
        np.testing.assert_allclose(q, (unit - [0, 0, 1]) / det.wavelength_A, atol=1e-14)
        q2 = peak_vectors(peaks, det, wavelength_A=2 * det.wavelength_A)
        np.testing.assert_allclose(q2, q / 2, atol=1e-15)
        np.testing.assert_allclose(1 / np.linalg.norm(q, axis=1),
                                   det.resolution_A(fs, ss, panel), rtol=1e-12)
    det = builtin_geometry("eiger4m")
    by_name = pd.DataFrame({"panel": ["p0", "nope"], "fs": [10.0, 20.0], "ss": [5.0, 6.0]})
    q = peak_vectors(by_name, det)
    assert np.all(np.isfinite(q[0])) and np.all(np.isnan(q[1]))
    no_panel = by_name.drop(columns="panel")
    np.testing.assert_allclose(peak_vectors(no_panel, det)[0], q[0])
    nan_panel = pd.DataFrame({"panel": [np.nan, 0.0], "fs": [10.0, 10.0], "ss": [5.0, 5.0]})
    q = peak_vectors(nan_panel, det)
    assert np.isnan(q[0]).all() and np.isfinite(q[1]).all()
    assert peak_vectors(by_name.iloc[:0], det).shape == (0, 3)
    with pytest.raises(ValueError, match="panel column"):
        peak_vectors(no_panel, builtin_geometry("agipd"))
