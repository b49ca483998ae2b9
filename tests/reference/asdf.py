"""Plain-NumPy references for :mod:`sxlab.indexing._asdf_kernels`."""

from __future__ import annotations

import numpy as np


def triplet_histograms(q, trip, n_bins):
    """(hist, normals, widths) of the projections on each triplet's plane normal."""
    m = len(trip)
    hist = np.zeros((m, n_bins))
    normals = np.zeros((m, 3))
    widths = np.zeros(m)
    for b, (i, j, k) in enumerate(trip):
        n = np.cross(q[j] - q[i], q[k] - q[i])
        norm = np.linalg.norm(n)
        if not norm > 0:
            continue
        n = n / norm
        normals[b] = n
        proj = q @ n
        width = proj.max() - proj.min()
        if not width > 0:
            continue
        widths[b] = width
        idx = np.minimum(((proj - proj.min()) * (n_bins / width)).astype(int), n_bins - 1)
        hist[b] = np.bincount(idx, minlength=n_bins)
    return hist, normals, widths


def strongest_frequencies(spec, widths, min_len, max_len):
    """Frequency of largest power in the window, refined by a parabola through |F|."""
    n_freq = spec.shape[1]
    power = np.abs(spec) ** 2
    out = np.full(len(spec), -1.0)
    for b in range(len(spec)):
        if not widths[b] > 0:
            continue
        lo = max(2, int(np.ceil(widths[b] * min_len)))
        hi = min(n_freq - 1, int(np.floor(widths[b] * max_len)))
        if hi < lo:
            continue
        f = lo + int(np.argmax(power[b, lo : hi + 1]))
        shift = 0.0
        if f + 1 < n_freq:
            m0, m1, m2 = np.abs(spec[b, f - 1 : f + 2])
            den = m0 - 2 * m1 + m2
            if den < 0:
                shift = float(np.clip(0.5 * (m0 - m2) / den, -0.5, 0.5))
        out[b] = f + shift
    return out


def count_fits(q, t, tol):
    x = q @ t
    return int(np.count_nonzero(np.abs(x - np.round(x)) < tol))


def fit_vector(q, t, tol, n_iter):
    """(refined t, points fitted): least squares of q · t = round(q · t) over the fits."""
    t = np.array(t, dtype=float)
    for _ in range(n_iter):
        x = q @ t
        m = np.round(x)
        sel = np.abs(x - m) < tol
        if sel.sum() < 3:
            break
        a = q[sel].T @ q[sel]
        if not abs(np.linalg.det(a)) > 1e-12 * a[0, 0] * a[1, 1] * a[2, 2]:
            break
        t = np.linalg.solve(a, q[sel].T @ m[sel])
    return t, count_fits(q, t, tol)


def candidate_vectors(q, normals, widths, freqs, tol, n_iter, min_fit, pre_fit, min_len,
                      max_len):
    """Accepted vectors (rows) and their fit counts, as the kernel documents them."""
    out_t, out_n = [], []
    for b, f in enumerate(freqs):
        if f < 0:
            continue
        length0 = f / widths[b]
        t = normals[b] * length0
        if count_fits(q, t, tol) < pre_fit:
            continue
        t, n_fit = fit_vector(q, t, tol, n_iter)
        length = np.linalg.norm(t)
        if not (0.5 * length0 <= length <= 2.0 * length0) or n_fit < 0.6 * min_fit:
            continue
        for m in (2, 3):
            if count_fits(q, t * m, tol) >= 1.5 * n_fit:
                t, n_fit = fit_vector(q, t * m, tol, n_iter)
                break
        for m in (3, 2):
            if count_fits(q, t / m, tol) >= 0.8 * n_fit:
                t, n_fit = fit_vector(q, t / m, tol, n_iter)
                break
        length = np.linalg.norm(t)
        if n_fit < min_fit or not (min_len <= length <= max_len):
            continue
        big = int(np.argmax(np.abs(t)))
        out_t.append(t if t[big] >= 0 else -t)
        out_n.append(n_fit)
    return np.array(out_t).reshape(-1, 3), np.array(out_n, dtype=np.int64)


def merge_vectors(store, store_n, new_t, new_n, cos_min, rel_len, capacity):
    """(store, store_n, n_added) after merging new vectors into a list store."""
    store = [np.array(v, dtype=float) for v in store]
    store_n = list(store_n)
    n_added = 0
    for t, n in zip(new_t, new_n, strict=True):
        length = np.linalg.norm(t)
        for j, w in enumerate(store):
            lw = np.linalg.norm(w)
            if abs(t @ w) >= cos_min * length * lw and abs(length - lw) <= rel_len * lw:
                if n > store_n[j]:
                    store[j] = t if t @ w >= 0 else -t
                    store_n[j] = n
                break
        else:
            if len(store) < capacity:
                store.append(np.array(t, dtype=float))
                store_n.append(n)
                n_added += 1
    return np.array(store).reshape(-1, 3), np.array(store_n, dtype=np.int64), n_added


def count_explained(q, basis, tol):
    h = q @ np.asarray(basis).T
    return int(np.count_nonzero(np.all(np.abs(h - np.round(h)) < tol, axis=1)))
