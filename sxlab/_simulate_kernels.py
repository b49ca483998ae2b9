"""Numba kernels of :mod:`sxlab.simulate`.

Every kernel works on plain arrays. Images are 2-D arrays of shape ``(rows, cols)``: a
stacked detector's ``(module, ss, fs)`` frame is viewed as ``(module * ss, fs)``.

Random numbers come from SplitMix64 (Steele, Lea & Flood 2014): the ``n``-th output of a
stream with seed ``s`` is ``mix(s + n * GOLDEN)``, so each pixel's uniform number can be
computed independently of every other (the noise kernel vectorises) and a frame's noise is
regenerated from one seed. Poisson variates of small means (``lam <= POISSON_VECTOR_MAX``)
come from inversion of the cumulative distribution with a fixed number of terms (the rare
uniforms beyond the last term continue the same inversion); larger means use a per-pixel
stream: sequential inversion below 10, Hörmann's transformed rejection with squeeze
(PTRS, Hörmann 1993) from 10 upwards.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

__all__ = [
    "POISSON_VECTOR_MAX",
    "POISSON_VECTOR_TERMS",
    "add_spots",
    "apply_gain",
    "compose_background",
    "excitation_candidates",
    "exp_neg",
    "expected_to_adu",
    "finish_counts",
    "photons_to_adu",
    "poisson_fill",
    "poisson_small",
    "splitmix64_uniforms",
]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_STREAM2 = np.uint64(0xD1B54A32D192ED03)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S11 = np.uint64(11)
_TWO_M53 = 1.0 / 9007199254740992.0
_PTRS_MIN = 10.0

#: Largest mean drawn by the vectorised inversion in :func:`poisson_small`.
POISSON_VECTOR_MAX = 6.0
#: Number of cumulative-distribution terms of the vectorised inversion.
POISSON_VECTOR_TERMS = 16


@njit(cache=True, inline="always")
def _mix(z):
    z = (z ^ (z >> _S30)) * _MIX1
    z = (z ^ (z >> _S27)) * _MIX2
    return z ^ (z >> _S31)


@njit(cache=True, inline="always")
def _to_unit(z):
    return (z >> _S11) * _TWO_M53


@njit(cache=True, inline="always")
def _next_uniform(state):
    """Advance a SplitMix64 state; return ``(state, u)`` with u uniform in [0, 1)."""
    state = state + _GOLDEN
    return state, _to_unit(_mix(state))


@njit(cache=True)
def splitmix64_uniforms(seed, n):
    """The first ``n`` uniform numbers in [0, 1) of the SplitMix64 stream ``seed``."""
    state = np.uint64(seed)
    out = np.empty(n, dtype=np.float64)
    for i in range(n):
        state, out[i] = _next_uniform(state)
    return out


@njit(cache=True, inline="always")
def exp_neg(x):
    """``exp(-x)`` for ``0 <= x <= 8`` to ~1e-10 relative, without a library call.

    ``exp(-x/64)`` from its Taylor series to degree 7 (Estrin's scheme), squared six
    times; branch-free so that loops calling it vectorise.
    """
    y = -x * 0.015625
    y2 = y * y
    y4 = y2 * y2
    p = ((1.0 + y) + y2 * (0.5 + y * (1.0 / 6.0))) + y4 * (
        (1.0 / 24.0 + y * (1.0 / 120.0)) + y2 * (1.0 / 720.0 + y * (1.0 / 5040.0)))
    p = p * p
    p = p * p
    p = p * p
    p = p * p
    p = p * p
    return p * p


@njit(cache=True, inline="always")
def _poisson_stream(lam, state):
    """One Poisson variate of mean ``lam`` from a sequential stream; ``(state, k)``."""
    if lam <= 0.0:
        return state, 0.0
    if lam < _PTRS_MIN:
        state, u = _next_uniform(state)
        p = math.exp(-lam)
        cdf = p
        k = 0
        while u > cdf and k < 200:
            k += 1
            p *= lam / k
            cdf += p
        return state, float(k)
    slam = math.sqrt(lam)
    loglam = math.log(lam)
    b = 0.931 + 2.53 * slam
    a = -0.059 + 0.02483 * b
    inv_alpha = 1.1239 + 1.1328 / (b - 3.4)
    v_r = 0.9277 - 3.6224 / (b - 2.0)
    while True:
        state, u = _next_uniform(state)
        state, v = _next_uniform(state)
        u -= 0.5
        us = 0.5 - abs(u)
        k = np.floor((2.0 * a / us + b) * u + lam + 0.43)
        if us >= 0.07 and v <= v_r:
            return state, k
        if k < 0.0 or (us < 0.013 and v > us):
            continue
        lhs = math.log(v) + math.log(inv_alpha) - math.log(a / (us * us) + b)
        if lhs <= -lam + k * loglam - math.lgamma(k + 1.0):
            return state, k


@njit(cache=True, inline="always")
def _poisson_tail(lam, u):
    """Inversion of uniform ``u`` beyond the terms of :func:`poisson_small`.

    The count is the same that :func:`poisson_small` would have found with more terms,
    so the distribution is exact: the tail continues with the pixel's own uniform.
    """
    p = math.exp(-lam)
    cdf = p
    k = 0
    while u > cdf and k < 200:
        k += 1
        p *= lam / k
        cdf += p
    return float(max(k, POISSON_VECTOR_TERMS + 1))


@njit(cache=True, inline="always")
def _pixel_state(seed, index):
    """Start of the private stream of pixel ``index`` (used when the fast path fails)."""
    return _mix((np.uint64(seed) ^ _STREAM2) + np.uint64(index + 1) * _GOLDEN)


@njit(cache=True)
def poisson_small(lam, out, seed, sentinel, row_left):
    """Vectorised Poisson draws for small means.

    Parameters
    ----------
    lam : float32 array (rows, cols)
        Means.
    out : unsigned int array (rows, cols)
        Receives the count, or ``sentinel`` where the mean exceeds
        :data:`POISSON_VECTOR_MAX` or the count exceeds :data:`POISSON_VECTOR_TERMS`;
        :func:`finish_counts` completes those.
    seed : uint64
        Stream seed; pixel ``(r, j)`` uses uniform number ``r * cols + j`` of the stream.
    sentinel : int
        Marker value (larger than :data:`POISSON_VECTOR_TERMS`).
    row_left : int64 array (rows,)
        Receives the number of pixels of each row left at ``sentinel``.

    Returns
    -------
    int
        Number of pixels left at ``sentinel``.
    """
    s = np.uint64(seed)
    ncol = lam.shape[1]
    total = 0
    for r in range(lam.shape[0]):
        base = r * ncol
        n_left = 0
        for c in range(ncol):
            u = _to_unit(_mix(s + np.uint64(base + c + 1) * _GOLDEN))
            m = float(lam[r, c])
            mc = min(m, POISSON_VECTOR_MAX)
            p = exp_neg(mc)
            cdf = p
            k = 0
            for j in range(1, POISSON_VECTOR_TERMS + 1):
                k += u > cdf
                p *= mc * (1.0 / j)
                cdf += p
            left = m > POISSON_VECTOR_MAX or u > cdf
            n_left += left
            out[r, c] = sentinel if left else k
        row_left[r] = n_left
        total += n_left
    return total


@njit(cache=True)
def poisson_fill(lam, seed):
    """Poisson variates (float64) of the means ``lam`` (1-D), pixel ``i`` on its own stream.

    The path :func:`finish_counts` takes for large means, exposed for tests.
    """
    out = np.empty(lam.shape[0], dtype=np.float64)
    for i in range(lam.shape[0]):
        _, out[i] = _poisson_stream(float(lam[i]), _pixel_state(seed, i))
    return out


@njit(cache=True)
def excitation_candidates(hkl, amat, k0, limit2):
    """Reflections near the Ewald sphere.

    Parameters
    ----------
    hkl : int32 array (n, 3)
        Miller indices.
    amat : float64 array (3, 3)
        Reciprocal basis, rows a*, b*, c* in the lab frame (1/Å); ``q = hkl @ amat``.
    k0 : float
        Wavenumber (1/Å), beam along +z.
    limit2 : float64 array (n,)
        Largest squared excitation error kept for each reflection (1/Å²).

    Returns
    -------
    index : int64 array (m,)
        Rows of ``hkl`` with ``s0² < limit2``, in increasing order.
    s0 : float64 array (m,)
        Their excitation errors ``k0 - |q + k0 ẑ|``.
    """
    n = hkl.shape[0]
    index = np.empty(n, dtype=np.int64)
    s0 = np.empty(n, dtype=np.float64)
    m = 0
    for i in range(n):
        h = float(hkl[i, 0])
        k = float(hkl[i, 1])
        l = float(hkl[i, 2])
        qx = h * amat[0, 0] + k * amat[1, 0] + l * amat[2, 0]
        qy = h * amat[0, 1] + k * amat[1, 1] + l * amat[2, 1]
        qz = h * amat[0, 2] + k * amat[1, 2] + l * amat[2, 2] + k0
        s = k0 - math.sqrt(qx * qx + qy * qy + qz * qz)
        if s * s < limit2[i]:
            index[m] = i
            s0[m] = s
            m += 1
    return index[:m].copy(), s0[:m].copy()


@njit(cache=True)
def compose_background(out, const_map, diffuse_map, water_map, a, b, c):
    """``out = a * const_map + b * diffuse_map + c * water_map`` (all 2-D float32)."""
    a32 = np.float32(a)
    b32 = np.float32(b)
    c32 = np.float32(c)
    for r in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[r, j] = a32 * const_map[r, j] + b32 * diffuse_map[r, j] + c32 * water_map[r, j]


@njit(cache=True)
def add_spots(lam, transmission, fs, ss, row0, fs_lo, fs_hi, ss_lo, ss_hi, photons, sigma,
              n_sigma):
    """Add Gaussian spots, integrated over pixel areas, to the mean image ``lam``.

    Parameters
    ----------
    lam : float32 array (rows, cols)
        Mean photons per pixel; modified in place.
    transmission : float32 array (rows, cols)
        Factor applied to each deposited value (beam-stop shadow).
    fs, ss : float64 arrays (n,)
        Spot centres in data-array coordinates (corner of the first pixel at 0).
    row0 : int64 array (n,)
        Row of ``lam`` holding ``ss = 0`` of the spot's module (module · rows per module).
    fs_lo, fs_hi, ss_lo, ss_hi : int64 arrays (n,)
        Inclusive pixel bounds of the spot's panel; the profile is clipped there.
    photons : float64 array (n,)
        Expected photons of each whole (unclipped) spot.
    sigma : float
        Gaussian standard deviation in pixels.
    n_sigma : float
        Half-width of the drawing window in units of ``sigma``.
    """
    inv = 1.0 / (sigma * math.sqrt(2.0))
    half = n_sigma * sigma
    nmax = int(2.0 * half) + 3
    wx = np.empty(nmax, dtype=np.float64)
    for s in range(fs.shape[0]):
        cf = fs[s]
        cs = ss[s]
        f0 = max(int(math.floor(cf - half)), fs_lo[s])
        f1 = min(int(math.floor(cf + half)), fs_hi[s])
        s0 = max(int(math.floor(cs - half)), ss_lo[s])
        s1 = min(int(math.floor(cs + half)), ss_hi[s])
        if f1 < f0 or s1 < s0:
            continue
        e_lo = math.erf((f0 - cf) * inv)
        for i in range(f1 - f0 + 1):
            e_hi = math.erf((f0 + i + 1 - cf) * inv)
            wx[i] = 0.5 * (e_hi - e_lo)
            e_lo = e_hi
        e_lo = math.erf((s0 - cs) * inv)
        for jj in range(s1 - s0 + 1):
            e_hi = math.erf((s0 + jj + 1 - cs) * inv)
            wy = 0.5 * (e_hi - e_lo) * photons[s]
            e_lo = e_hi
            r = row0[s] + s0 + jj
            for i in range(f1 - f0 + 1):
                c = f0 + i
                lam[r, c] += np.float32(wy * wx[i] * transmission[r, c])


@njit(cache=True)
def apply_gain(out, rect, gain, saturation, sentinel):
    """Counts to ADU in place: ``min(floor(count · gain + 0.5), saturation)``.

    Pixels holding ``sentinel`` are left alone (:func:`finish_counts` handles them).

    Parameters
    ----------
    out : uint16 or uint32 array (rows, cols)
        Photon counts from :func:`poisson_small` (reshaped).
    rect : int64 array (m, 4)
        Row start, row stop, column start, column stop (exclusive) of each panel.
    gain : float64 array (m,)
        ADU per photon of each panel.
    saturation : float64 array (m,)
        Largest value written for each panel (ADU), below ``sentinel``.
    sentinel : int
        Marker of unfinished pixels.
    """
    for p in range(rect.shape[0]):
        g = gain[p]
        sat = saturation[p]
        for r in range(rect[p, 0], rect[p, 1]):
            for j in range(rect[p, 2], rect[p, 3]):
                v = out[r, j]
                a = min(np.floor(v * g + 0.5), sat)
                out[r, j] = v if v == sentinel else a


@njit(cache=True)
def finish_counts(out, lam, rect, gain, saturation, seed, sentinel, row_left):
    """Draw the counts :func:`poisson_small` left at ``sentinel`` and store their ADU.

    Means above :data:`POISSON_VECTOR_MAX` draw from the pixel's own stream; smaller means
    (counts beyond :data:`POISSON_VECTOR_TERMS`) continue the inversion of the pixel's
    uniform, so the distribution is exact. Arguments as :func:`apply_gain`, plus the mean
    image ``lam`` (float32, rows × cols), the ``seed`` given to :func:`poisson_small` and
    its per-row counts ``row_left`` (rows without any are skipped).
    """
    ncol = out.shape[1]
    s = np.uint64(seed)
    for p in range(rect.shape[0]):
        g = gain[p]
        sat = saturation[p]
        for r in range(rect[p, 0], rect[p, 1]):
            if row_left[r] == 0:
                continue
            for j in range(rect[p, 2], rect[p, 3]):
                if out[r, j] != sentinel:
                    continue
                m = float(lam[r, j])
                i = r * ncol + j
                if m > POISSON_VECTOR_MAX:
                    _, n = _poisson_stream(m, _pixel_state(seed, i))
                else:
                    n = _poisson_tail(m, _to_unit(_mix(s + np.uint64(i + 1) * _GOLDEN)))
                out[r, j] = min(np.floor(n * g + 0.5), sat)


@njit(cache=True)
def expected_to_adu(out, lam, rect, gain, saturation):
    """Noise-free frame: ``min(floor(lam · gain + 0.5), saturation)`` per panel."""
    for p in range(rect.shape[0]):
        g = gain[p]
        sat = saturation[p]
        for r in range(rect[p, 0], rect[p, 1]):
            for j in range(rect[p, 2], rect[p, 3]):
                out[r, j] = min(np.floor(float(lam[r, j]) * g + 0.5), sat)


def photons_to_adu(out, lam, rect, gain, saturation, seed, sentinel, noise=True,
                   skip_gain=False):
    """Detector response of a mean image: counts (or means), gain, rounding, saturation.

    Runs :func:`poisson_small`, :func:`apply_gain` and :func:`finish_counts` (or
    :func:`expected_to_adu` without ``noise``) on 2-D ``out``/``lam``; ``skip_gain``
    leaves out :func:`apply_gain` when every gain is 1 and every saturation exceeds
    :data:`POISSON_VECTOR_TERMS` (it would change nothing). Pixels outside ``rect`` hold
    arbitrary values afterwards.
    """
    if not noise:
        expected_to_adu(out, lam, rect, gain, saturation)
        return
    row_left = np.empty(lam.shape[0], dtype=np.int64)
    n_left = poisson_small(lam, out, np.uint64(seed), sentinel, row_left)
    if not skip_gain:
        apply_gain(out, rect, gain, saturation, sentinel)
    if n_left:
        finish_counts(out, lam, rect, gain, saturation, np.uint64(seed), sentinel, row_left)
