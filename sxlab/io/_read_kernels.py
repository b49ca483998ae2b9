"""Numba kernels of the read path: a stored frame to float32 and its bad pixels
(:mod:`sxlab.io.hdf5`), the block framing of a bitshuffle-LZ4 blob
(:mod:`sxlab.io.compression`).

Plain-NumPy / Python references: :func:`sxlab.io.hdf5.value_flags` with ``np.copyto`` /
``np.logical_or``, a ``struct`` walk over the block lengths (``tests/test_read_kernels.py``).
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def convert_flagged(raw, threshold, pixel_mask, has_mask, out, bad, has_bad):
    """One pass over an unsigned frame: ``out`` = value, 0 where flagged; ``bad`` = flags.

    ``raw``, ``pixel_mask`` (bool), ``out`` (float32) and ``bad`` (bool) are flat arrays
    of equal length (``pixel_mask`` and ``bad`` are ignored unless ``has_mask`` /
    ``has_bad``). A pixel is flagged when ``raw >= threshold``; ``bad`` is the flag or'ed
    with the pixel mask. Returns the number of flagged pixels.
    """
    n_flagged = 0
    zero = np.float32(0.0)
    for i in range(raw.size):
        v = raw[i]
        f = v >= threshold
        out[i] = zero if f else np.float32(v)
        n_flagged += f
        if has_bad:
            bad[i] = f or (has_mask and pixel_mask[i])
    return n_flagged


@numba.njit(cache=True, nogil=True)
def bslz4_walk(data, start, n_blocks, bound):
    """Walk the ``n_blocks`` big-endian uint32 block lengths of a bitshuffle-LZ4 blob.

    ``data`` is the blob as uint8, ``start`` the offset of the first length. Returns
    ``(end, block, why, length)``: the offset after the last block and ``block = -1``
    when every length fits, else the failing block with ``why`` 1 (the blob ends inside
    it) or 2 (its ``length`` exceeds ``bound``).
    """
    n = data.size
    pos = np.int64(start)
    for k in range(n_blocks):
        if pos + 4 > n:
            return pos, k, 1, 0
        length = ((np.int64(data[pos]) << 24) | (np.int64(data[pos + 1]) << 16)
                  | (np.int64(data[pos + 2]) << 8) | np.int64(data[pos + 3]))
        if length > bound:
            return pos, k, 2, length
        pos += 4 + length
    return pos, -1, 0, 0
