"""Plain-NumPy references for :mod:`sxlab._binning_kernels` (reshape and sum)."""

from __future__ import annotations

import numpy as np


def bin_sum(image, bad, layout, factor, max_bad, rescale):
    """Binned (values, bad) of a 3-D ``(slab, ss, fs)`` image; see the kernel.

    ``bad`` is a boolean array or None; non-finite pixels count as bad. Binned pixels on
    no panel are 0 and bad.
    """
    image = np.asarray(image, dtype=np.float64)
    flagged = ~np.isfinite(image)
    if bad is not None:
        flagged |= bad
    n_slabs = image.shape[0]
    hb_all = int(max(r[3] + r[5] for r in layout))
    wb_all = int(max(r[4] + r[6] for r in layout))
    out = np.zeros((n_slabs, hb_all, wb_all), dtype=np.float32)
    out_bad = np.ones((n_slabs, hb_all, wb_all), dtype=bool)
    f2 = factor * factor
    for slab, ss0, fs0, ssb0, fsb0, hb, wb in layout:
        block = image[slab, ss0 : ss0 + hb * factor, fs0 : fs0 + wb * factor]
        fl = flagged[slab, ss0 : ss0 + hb * factor, fs0 : fs0 + wb * factor]
        vals = np.where(fl, 0.0, block).reshape(hb, factor, wb, factor).sum(axis=(1, 3))
        nbad = fl.reshape(hb, factor, wb, factor).sum(axis=(1, 3))
        if rescale:
            with np.errstate(divide="ignore", invalid="ignore"):
                scale = np.where((nbad > 0) & (nbad < f2), f2 / (f2 - nbad), 1.0)
            vals = vals * scale
        is_bad = nbad > max_bad
        out[slab, ssb0 : ssb0 + hb, fsb0 : fsb0 + wb] = np.where(is_bad, 0.0, vals)
        out_bad[slab, ssb0 : ssb0 + hb, fsb0 : fsb0 + wb] = is_bad
    return out, out_bad


def count_bad(bad, layout, factor):
    """Bad pixels per binned pixel (int32); 0 on no panel."""
    n_slabs = bad.shape[0]
    hb_all = int(max(r[3] + r[5] for r in layout))
    wb_all = int(max(r[4] + r[6] for r in layout))
    out = np.zeros((n_slabs, hb_all, wb_all), dtype=np.int32)
    for slab, ss0, fs0, ssb0, fsb0, hb, wb in layout:
        block = bad[slab, ss0 : ss0 + hb * factor, fs0 : fs0 + wb * factor]
        out[slab, ssb0 : ssb0 + hb, fsb0 : fsb0 + wb] = block.reshape(
            hb, factor, wb, factor).sum(axis=(1, 3))
    return out
