"""Frames and bad-pixel masks as the numba kernels take them.

The prepared per-frame objects (:class:`~sxlab.peaks.PeakFinder`,
:class:`~sxlab.integration.Integrator`) check a frame's shape, keep the dtypes their kernels
are compiled for and convert the others, and flatten the frame to the layout their
kernels index.
"""

from __future__ import annotations

import numpy as np

from .masks import check_shape

__all__ = ["NATIVE_DTYPES", "frame_arrays"]

#: Frame dtypes handled without conversion; others are converted to float32 (or float64).
NATIVE_DTYPES = ("float32", "float64", "uint16", "uint32", "int32")


def frame_arrays(image, bad, shape: tuple, kernel_shape, no_bad: np.ndarray):
    """The frame and its bad pixels, checked and reshaped for a kernel.

    Parameters
    ----------
    image : array_like
        The frame, of ``shape``; numeric.
    bad : array_like or None
        Bad pixels (True or non-zero = bad), of ``shape``.
    shape : tuple of int
        The geometry's data shape.
    kernel_shape : int or tuple of int
        Shape the kernels index (``-1``: flat).
    no_bad : ndarray of bool
        Placeholder returned when ``bad`` is None.

    Returns
    -------
    img : ndarray
        Contiguous view (or converted copy) of ``image``, of ``kernel_shape``, in one of
        :data:`NATIVE_DTYPES`.
    bad : ndarray of bool
        Contiguous, of ``kernel_shape``; ``no_bad`` when none was given.
    has_bad : bool
        Whether ``bad`` was given.
    """
    arr = np.asarray(image)
    if arr.shape != shape:
        check_shape(arr.shape, shape, "image")
    if arr.dtype.name not in NATIVE_DTYPES:
        if arr.dtype.kind not in "uif":
            raise TypeError(f"image of dtype {arr.dtype} is not numeric")
        arr = arr.astype(np.float64 if arr.dtype.itemsize > 4 else np.float32)
    img = np.ascontiguousarray(arr).reshape(kernel_shape)
    if bad is None:
        return img, no_bad, False
    b = np.asarray(bad)
    if b.shape != shape:
        check_shape(b.shape, shape, "bad")
    if b.dtype != np.bool_:
        b = b != 0
    return img, np.ascontiguousarray(b).reshape(kernel_shape), True
