"""Plain NumPy references for :mod:`sxlab._peaks_kernels` (slow and obvious).

Everything works on whole arrays of the detector's data shape: ``good`` is the boolean map
of usable pixels (mask, geometry and resolution limits already combined) and ``bad`` the
per-frame bad pixels or None.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

EIGHT = np.ones((3, 3), dtype=int)


def annuli(geometry, good):
    """Annulus of every good pixel (``floor(r_px)``), -1 elsewhere."""
    r = geometry.maps.r_px
    out = np.full(r.shape, -1, dtype=np.int64)
    out[good] = np.floor(r[good]).astype(np.int64)
    return out


def usable(image, good, bad):
    """Good pixels that are not bad in this frame and have a finite value."""
    ok = good & np.isfinite(image.astype(np.float64))
    if bad is not None:
        ok &= ~bad
    return ok


def clipped_stats(values, min_snr, n_iterations):
    """Mean, population sigma and count after sigma clipping.

    Iteration k keeps the values below mean + min_snr * sigma of iteration k - 1 (all
    values in the first); an iteration keeping no value, or as many as the one before,
    stops.
    """
    values = np.asarray(values, dtype=np.float64)
    mean = sigma = 0.0
    n = 0
    threshold = np.inf
    for _ in range(n_iterations):
        kept = values[values < threshold]
        if kept.size == 0 or kept.size == n:
            break
        mean = kept.mean()
        sigma = kept.std()
        n = kept.size
        threshold = mean + min_snr * sigma
    return mean, sigma, n


def annulus_stats(image, good, bad, annulus, n_annuli, min_snr, n_iterations, sample=None):
    """Clipped statistics per annulus: arrays mean, sigma, count (0: no statistics).

    ``sample`` (a list of flat pixel-index arrays, one per annulus) restricts each annulus
    to those pixels, as in the fast mode.
    """
    ok = usable(image, good, bad).ravel()
    img = image.astype(np.float64).ravel()
    ann = annulus.ravel()
    mean = np.zeros(n_annuli)
    sigma = np.zeros(n_annuli)
    count = np.zeros(n_annuli, dtype=np.int64)
    for a in range(n_annuli):
        if sample is None:
            sel = np.flatnonzero(ok & (ann == a))
        else:
            sel = sample[a][ok[sample[a]]]
        mean[a], sigma[a], count[a] = clipped_stats(img[sel], min_snr, n_iterations)
    return mean, sigma, count


def pf8_candidates(image, good, bad, annulus, mean, sigma, count, adc_threshold, min_snr):
    """Boolean map of peakfinder8 candidate pixels."""
    threshold = np.where(count > 0, np.maximum(adc_threshold, mean + min_snr * sigma), np.inf)
    ok = usable(image, good, bad) & (annulus >= 0)
    thr = np.full(image.shape, np.inf)
    thr[ok] = threshold[annulus[ok]]
    return ok & (image.astype(np.float64) > thr)


def _panel_arrays(geometry, i, *arrays):
    sl = geometry.panel_slice(i)
    return [a[sl] for a in arrays]


def dispersion_candidates(image, good, bad, geometry, half, gain, sigma_background,
                          sigma_strong, global_threshold, min_local):
    """Boolean map of dispersion signal pixels, from summed-area tables per panel.

    Box of ``(2 half + 1)²`` good pixels of the panel around each pixel (itself included):
    ``n`` pixels, mean ``m``, unbiased variance ``var``. Signal: ``n >= min_local`` (full
    box if ``min_local <= 0``), ``n > 1``, ``m > 0``, ``var / (gain m) > 1 +
    sigma_background sqrt(2 / (n - 1))``, ``v > m + sigma_strong sqrt(gain m)`` and ``v >
    global_threshold``.
    """
    ok_all = usable(image, good, bad)
    out = np.zeros(image.shape, dtype=bool)
    box = 2 * half + 1
    n_min = box * box if min_local <= 0 else max(min_local, 2)
    for i in range(geometry.n_panels):
        img, ok = _panel_arrays(geometry, i, image.astype(np.float64), ok_all)
        v = np.where(ok, img, 0.0)
        sums = []
        for a in (ok.astype(np.float64), v, v * v):
            sat = np.zeros((a.shape[0] + 1, a.shape[1] + 1))
            sat[1:, 1:] = a.cumsum(0).cumsum(1)
            h, w = a.shape
            rows = np.arange(h)
            cols = np.arange(w)
            r0 = np.clip(rows - half, 0, h)[:, None]
            r1 = np.clip(rows + half + 1, 0, h)[:, None]
            c0 = np.clip(cols - half, 0, w)[None, :]
            c1 = np.clip(cols + half + 1, 0, w)[None, :]
            sums.append(sat[r1, c1] - sat[r0, c1] - sat[r1, c0] + sat[r0, c0])
        n, s, q = sums
        # var / (gain mean) > L and v > mean + sigma_strong sqrt(gain mean), with
        # mean = s / n and var = (q - s² / n) / (n - 1), multiplied by n (n - 1) > 0 and n.
        with np.errstate(divide="ignore", invalid="ignore"):
            n1 = np.maximum(n - 1, 1)
            limit = gain * (n1 + sigma_background * np.sqrt(2.0 * n1))
            dispersed = n * q - s * s > s * limit
            d = n * img - s
            strong = (d > 0) & (d * d > sigma_strong * sigma_strong * gain * s * n)
        sig = ok & (n >= n_min) & (n > 1) & (s > 0) & dispersed & strong
        sig &= img > global_threshold
        out[geometry.panel_slice(i)] = sig
    return out


def measure(image, good, bad, geometry, candidates, min_pix, max_pix, bg_radius, min_snr):
    """Components of ``candidates`` per panel (scipy.ndimage.label, 8-connected).

    Returns a dict of arrays: panel, fs, ss, intensity, snr, npix, background, max_value,
    sorted by panel, intensity (descending), first pixel.
    """
    ok_all = usable(image, good, bad)
    rows = {k: [] for k in ("panel", "fs", "ss", "intensity", "snr", "npix", "background",
                            "max_value", "first")}
    for i, p in enumerate(geometry.panels):
        img, ok, cand = _panel_arrays(geometry, i, image.astype(np.float64), ok_all,
                                      candidates)
        labels, n = ndimage.label(cand, structure=EIGHT)
        h, w = img.shape
        rr, cc = np.mgrid[0:h, 0:w]
        for lab in range(1, n + 1):
            comp = labels == lab
            npix = int(comp.sum())
            if npix < min_pix or npix > max_pix:
                continue
            r, c = np.nonzero(comp)
            dr = np.maximum(np.maximum(r.min() - rr, rr - r.max()), 0)
            dc = np.maximum(np.maximum(c.min() - cc, cc - c.max()), 0)
            dist = np.maximum(dr, dc)
            ring = (dist >= bg_radius) & (dist <= bg_radius + 1) & ok & ~cand
            if not ring.any():
                continue
            background = img[ring].mean()
            noise = img[ring].std()
            weight = img[comp] - background
            intensity = weight.sum()
            if not intensity > 0:
                continue
            snr = intensity / (noise * np.sqrt(npix)) if noise > 0 else np.inf
            if snr < min_snr:
                continue
            rows["panel"].append(i)
            rows["fs"].append((weight * (c + 0.5)).sum() / intensity + p.min_fs)
            rows["ss"].append((weight * (r + 0.5)).sum() / intensity + p.min_ss)
            rows["intensity"].append(intensity)
            rows["snr"].append(snr)
            rows["npix"].append(npix)
            rows["background"].append(background)
            rows["max_value"].append(img[comp].max())
            rows["first"].append((r[0] + p.min_ss) * 100000 + c[0] + p.min_fs)
    out = {k: np.asarray(v) for k, v in rows.items()}
    if out["panel"].size:
        order = np.lexsort((out["first"], -out["intensity"], out["panel"]))
        out = {k: v[order] for k, v in out.items()}
    return out


def peakfinder8(image, good, bad, geometry, *, adc_threshold, min_snr, min_pix_count,
                max_pix_count, local_bg_radius, n_sigma_iterations, sample=None):
    """The whole peakfinder8 on one frame; returns :func:`measure`'s dict."""
    annulus = annuli(geometry, good)
    n_annuli = int(annulus.max()) + 1
    mean, sigma, count = annulus_stats(image, good, bad, annulus, n_annuli, min_snr,
                                       n_sigma_iterations, sample)
    cand = pf8_candidates(image, good, bad, annulus, mean, sigma, count, adc_threshold,
                          min_snr)
    return measure(image, good, bad, geometry, cand, min_pix_count, max_pix_count,
                   local_bg_radius, min_snr)
