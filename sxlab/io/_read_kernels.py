"""Numba kernels of :mod:`sxlab.io.hdf5`: a stored frame to float32 and its bad pixels.

Plain-NumPy reference: :func:`sxlab.io.hdf5.value_flags` with ``np.copyto`` /
``np.logical_or`` (``tests/test_read_kernels.py``).
"""

from __future__ import annotations

import numba


@numba.njit(cache=True, nogil=True)
def convert_flagged(raw, threshold, pixel_mask, has_mask, out, bad, has_bad):
    """One pass over an unsigned frame: ``out`` = value, 0 where flagged; ``bad`` = flags.

    ``raw``, ``pixel_mask`` (bool), ``out`` (float32, or ``raw`` itself: flagged pixels
    zeroed in place) and ``bad`` (bool) are flat arrays
    of equal length (``pixel_mask`` and ``bad`` are ignored unless ``has_mask`` /
    ``has_bad``). A pixel is flagged when ``raw >= threshold``; ``bad`` is the flag or'ed
    with the pixel mask. Returns the number of flagged pixels.
    """
    n_flagged = 0
    zero = out.dtype.type(0)
    for i in range(raw.size):
        v = raw[i]
        f = v >= threshold
        out[i] = zero if f else out.dtype.type(v)
        n_flagged += f
        if has_bad:
            bad[i] = f or (has_mask and pixel_mask[i])
    return n_flagged
