"""Plain Python/NumPy references for :mod:`sxlab._simulate_kernels`."""

from __future__ import annotations

import math

import numpy as np
from scipy.special import erf

MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
STREAM2 = 0xD1B54A32D192ED03
VECTOR_MAX = 6.0
VECTOR_TERMS = 16


def mix64(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def unit(z: int) -> float:
    return (z >> 11) * (1.0 / 9007199254740992.0)


def uniforms(seed: int, n: int) -> list[float]:
    """The SplitMix64 stream: output i is mix(seed + (i + 1) * GOLDEN)."""
    return [unit(mix64((seed + (i + 1) * GOLDEN) & MASK64)) for i in range(n)]


def exp_neg(x: float) -> float:
    """exp(-x) as (degree-7 Taylor polynomial of exp(-x/64), Estrin's scheme) ** 64."""
    y = -x / 64.0
    y2 = y * y
    y4 = y2 * y2
    p = ((1.0 + y) + y2 * (0.5 + y * (1.0 / 6.0))) + y4 * (
        (1.0 / 24.0 + y * (1.0 / 120.0)) + y2 * (1.0 / 720.0 + y * (1.0 / 5040.0)))
    for _ in range(6):
        p = p * p
    return p


def poisson_vector(lam: float, u: float):
    """Fixed-term inversion of the vectorised path; None where it gives up."""
    mc = min(lam, VECTOR_MAX)
    p = exp_neg(mc)
    cdf = p
    k = 0
    for j in range(1, VECTOR_TERMS + 1):
        k += u > cdf
        p *= mc * (1.0 / j)
        cdf += p
    if lam > VECTOR_MAX or u > cdf:
        return None
    return k


def inversion(lam: float, u: float) -> int:
    """Smallest k with u <= F(k), by sequential search."""
    p = math.exp(-lam)
    cdf, k = p, 0
    while u > cdf and k < 200:
        k += 1
        p *= lam / k
        cdf += p
    return k


def poisson_stream(lam: float, state: int) -> int:
    """Sequential inversion below 10, PTRS (Hörmann 1993) from 10 upwards."""

    def nxt():
        nonlocal state
        state = (state + GOLDEN) & MASK64
        return unit(mix64(state))

    if lam <= 0:
        return 0
    if lam < 10:
        return inversion(lam, nxt())
    slam, loglam = math.sqrt(lam), math.log(lam)
    b = 0.931 + 2.53 * slam
    a = -0.059 + 0.02483 * b
    inv_alpha = 1.1239 + 1.1328 / (b - 3.4)
    v_r = 0.9277 - 3.6224 / (b - 2.0)
    while True:
        u = nxt() - 0.5
        v = nxt()
        us = 0.5 - abs(u)
        k = math.floor((2 * a / us + b) * u + lam + 0.43)
        if us >= 0.07 and v <= v_r:
            return k
        if k < 0 or (us < 0.013 and v > us):
            continue
        if (math.log(v) + math.log(inv_alpha) - math.log(a / (us * us) + b)
                <= -lam + k * loglam - math.lgamma(k + 1)):
            return k


def pixel_state(seed: int, index: int) -> int:
    return mix64(((seed ^ STREAM2) + (index + 1) * GOLDEN) & MASK64)


def noisy_adu(lam2d, rect, gain, saturation, seed, noise=True):
    """ADU of :func:`sxlab._simulate_kernels.photons_to_adu`, as a float array.

    Pixels outside every rectangle are NaN.
    """
    rows, cols = lam2d.shape
    out = np.full(lam2d.shape, np.nan)
    flat = lam2d.astype(np.float64).ravel()
    us = uniforms(seed, flat.size) if noise else None
    for p, (r0, r1, c0, c1) in enumerate(rect):
        for r in range(r0, r1):
            for c in range(c0, c1):
                i = r * cols + c
                lam = float(flat[i])
                if noise:
                    k = poisson_vector(lam, us[i])
                    if k is None and lam > VECTOR_MAX:
                        k = poisson_stream(lam, pixel_state(seed, i))
                    elif k is None:
                        k = max(inversion(lam, us[i]), VECTOR_TERMS + 1)
                else:
                    k = lam
                out[r, c] = min(math.floor(k * gain[p] + 0.5), saturation[p])
    return out


def compose_background(const_map, diffuse_map, water_map, a, b, c):
    return (np.float32(a) * const_map + np.float32(b) * diffuse_map
            + np.float32(c) * water_map).astype(np.float32)


def add_spots(lam, transmission, fs, ss, row0, fs_lo, fs_hi, ss_lo, ss_hi, photons, sigma,
              n_sigma):
    """Each spot as the outer product of per-axis erf differences, on the whole panel."""
    out = lam.astype(np.float64).copy()
    for s in range(len(fs)):
        f_idx = np.arange(fs_lo[s], fs_hi[s] + 1)
        s_idx = np.arange(ss_lo[s], ss_hi[s] + 1)
        # Only the window of pixels whose index is within floor(c ± n_sigma·sigma).
        f_idx = f_idx[(f_idx >= math.floor(fs[s] - n_sigma * sigma))
                      & (f_idx <= math.floor(fs[s] + n_sigma * sigma))]
        s_idx = s_idx[(s_idx >= math.floor(ss[s] - n_sigma * sigma))
                      & (s_idx <= math.floor(ss[s] + n_sigma * sigma))]
        cdf = lambda x, c: 0.5 * (1 + erf((x - c) / (sigma * math.sqrt(2))))  # noqa: E731
        wx = cdf(f_idx + 1.0, fs[s]) - cdf(f_idx, fs[s])
        wy = cdf(s_idx + 1.0, ss[s]) - cdf(s_idx, ss[s])
        rows = row0[s] + s_idx
        block = photons[s] * np.outer(wy, wx) * transmission[np.ix_(rows, f_idx)]
        out[np.ix_(rows, f_idx)] += block
    return out


def excitation_candidates(hkl, amat, k0, limit2):
    q = hkl.astype(np.float64) @ amat
    s0 = k0 - np.linalg.norm(q + np.array([0.0, 0.0, k0]), axis=1)
    index = np.flatnonzero(s0**2 < limit2)
    return index, s0[index]
