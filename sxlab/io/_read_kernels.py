"""Numba kernels of the frame read path: flagged pixels, bad-pixel mask, framing check.

Plain-NumPy reference: :func:`sxlab.io.hdf5.value_flags` with ``np.copyto`` /
``np.logical_or`` (``tests/test_read_kernels.py``).
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def convert_flagged(raw, threshold, pixel_mask, has_mask, out, bad, has_bad):
    """One pass over an unsigned frame: ``out`` = value, 0 where flagged; ``bad`` = flags.

    ``raw``, ``pixel_mask`` (bool), ``out`` (float32) and ``bad`` (bool) are flat arrays of
    equal length (``pixel_mask`` and ``bad`` are ignored unless ``has_mask`` /
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


@numba.njit(cache=True, nogil=True)
def flag_in_place(raw, threshold, pixel_mask, has_mask, bad, has_bad):
    """:func:`convert_flagged` in the stored dtype: flagged pixels of ``raw`` set to 0.

    Only the flagged pixels are written to ``raw``. Returns the number of flagged pixels.
    """
    n_flagged = 0
    for i in range(raw.size):
        f = raw[i] >= threshold
        if f:
            raw[i] = 0
            n_flagged += 1
        if has_bad:
            bad[i] = f or (has_mask and pixel_mask[i])
    return n_flagged


@numba.njit(cache=True, nogil=True)
def bslz4_blocks_end(blob, start, n_blocks, bound):
    """Walk the block lengths of a bitshuffle-LZ4 blob (uint8) from byte ``start``.

    Each of ``n_blocks`` blocks is a big-endian uint32 length and that many bytes.
    Returns the position after the last block, or -1 when the blob ends inside a block
    header or a length exceeds ``bound`` (:func:`sxlab.io.compression.bslz4_problem`
    then says what is wrong).
    """
    n = blob.size
    pos = start
    for _ in range(n_blocks):
        if pos + 4 > n:
            return -1
        length = ((np.int64(blob[pos]) << 24) | (np.int64(blob[pos + 1]) << 16)
                  | (np.int64(blob[pos + 2]) << 8) | np.int64(blob[pos + 3]))
        if length > bound:
            return -1
        pos += 4 + length
    return pos
