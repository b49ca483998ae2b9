"""Detector blob codecs: bitshuffle-LZ4 and LZ4 as EIGER detectors and HDF5 filters store them.

Three blob layouts occur (see the format notes on the EIGER stream):

``bslz4``
    bitshuffle-LZ4, the HDF5 filter 32008 chunk: a 12-byte header (uint64 big-endian total
    bytes, uint32 big-endian block size in bytes), then per block a uint32 big-endian
    compressed length and an LZ4 block, then the raw tail. EIGER stream v1 encodings
    ``bs8-lz4<``, ``bs16-lz4<``, ``bs32-lz4<`` and stream v2 ``"bslz4"`` are this layout.
``lz4``
    one bare LZ4 block (EIGER stream v1 ``lz4<``); its decoded size is the frame size.
``lz4-hdf5``
    the HDF5 LZ4 filter (32004) framing of stream v2 ``"lz4"``: uint64 BE total bytes,
    uint32 BE block size, then per block a uint32 BE compressed length and an LZ4 block
    (a block whose compressed length equals its decoded length is stored raw).

Decompression is done by the ``bitshuffle`` and ``lz4`` libraries; this module checks the
framing first (the decoders trust the lengths in the blob, so a damaged length could make
them read past the buffer) and reports what is wrong in words.
:func:`bslz4_decode_into` decodes a bitshuffle-LZ4 blob into an existing array with the
single-threaded C decoder of hdf5plugin's bitshuffle filter (the one HDF5 itself runs),
without the temporary arrays of a filtered HDF5 read.

Examples
--------
>>> import numpy as np
>>> a = np.arange(20, dtype="<u2").reshape(4, 5)
>>> blob = compress(a, "bslz4")
>>> blob[:12].hex()
'000000000000002800002000'
>>> np.array_equal(decompress(blob, "bslz4", a.shape, a.dtype), a)
True
"""

from __future__ import annotations

import ctypes
import functools
import struct

import numpy as np

__all__ = ["ENCODINGS", "BlobError", "bslz4_decode_into", "bslz4_problem", "compress",
           "decompress"]

#: Blob encodings understood by :func:`decompress`.
ENCODINGS = ("none", "bslz4", "lz4", "lz4-hdf5")

_HEADER = struct.Struct(">QI")
_U32BE = struct.Struct(">I")


class BlobError(ValueError):
    """A compressed blob is malformed (truncated, wrong size, damaged framing)."""


def _lz4_bound(n: int) -> int:
    return n + n // 255 + 16


def bslz4_problem(blob, nbytes: int, elem: int) -> str | None:
    """Why a bitshuffle-LZ4 blob is malformed, or None when its framing is consistent.

    Parameters
    ----------
    blob : bytes-like
        The blob including its 12-byte header.
    nbytes : int
        Decoded size the blob must have (pixels × element size).
    elem : int
        Element size in bytes.

    Notes
    -----
    Damage inside a compressed block is not detectable here (the format has no
    checksum); the LZ4 decoder reports it.

    Examples
    --------
    >>> blob = compress(np.zeros(100, "<u4"), "bslz4")
    >>> bslz4_problem(blob, 400, 4) is None
    True
    >>> bslz4_problem(blob[:-3], 400, 4)
    'block lengths add up to 44 bytes, the blob has 41'
    """
    view = memoryview(blob).cast("B")
    n = len(view)
    if n < _HEADER.size:
        return f"blob of {n} bytes is shorter than its 12-byte header"
    total, block = _HEADER.unpack_from(view, 0)
    if total != nbytes:
        return f"header announces {total} bytes, the frame has {nbytes}"
    if block == 0 or block % elem or (block // elem) % 8:
        return f"invalid block size {block}"
    n_elem = nbytes // elem
    n_full, rest = divmod(n_elem, block // elem)
    n_blocks = n_full + (1 if rest >= 8 else 0)
    tail = (n_elem % 8) * elem
    bound = _lz4_bound(block) + 48
    pos = _HEADER.size
    from sxlab.io._read_kernels import bslz4_blocks_end  # the walk, compiled

    end = bslz4_blocks_end(np.frombuffer(view, dtype=np.uint8), pos, n_blocks, bound)
    if end >= 0 and end + tail == n:
        return None
    for k in range(n_blocks):  # again in Python, to say what is wrong
        if pos + 4 > n:
            return f"blob ends inside block {k} of {n_blocks}"
        (length,) = _U32BE.unpack_from(view, pos)
        if length > bound:
            return f"block {k} claims {length} compressed bytes (block size {block})"
        pos += 4 + length
    if pos + tail != n:
        return f"block lengths add up to {pos + tail} bytes, the blob has {n}"
    return None


@functools.cache
def _bshuf_decoder():
    """``bshuf_decompress_lz4`` of hdf5plugin's bitshuffle filter library, or None."""
    try:
        import hdf5plugin

        path = hdf5plugin.get_config().registered_filters.get("bshuf")
        fn = ctypes.CDLL(path).bshuf_decompress_lz4 if path else None
    except (ImportError, OSError, AttributeError):
        return None
    if fn is not None:
        # int64_t bshuf_decompress_lz4(const void *in, void *out, size_t size,
        #                              size_t elem_size, size_t block_size)
        fn.restype = ctypes.c_int64
        fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t,
                       ctypes.c_size_t]
    return fn


def bslz4_decode_into(blob: bytes, out: np.ndarray, *, checked: bool = False) -> None:
    """Decode a bitshuffle-LZ4 blob (12-byte header included) into ``out`` in place.

    Parameters
    ----------
    blob : bytes
        The blob, e.g. a chunk from ``h5py``'s ``read_direct_chunk``.
    out : ndarray
        C-contiguous, native byte order, of the blob's decoded size; its dtype's item
        size is the element size of the bitshuffle.
    checked : bool
        The framing was already checked with :func:`bslz4_problem`.

    Raises
    ------
    BlobError
        Damaged framing, a size that does not match ``out`` or a block that does not
        decode.

    Examples
    --------
    >>> a = np.arange(1000, dtype="<u4")
    >>> out = np.empty_like(a)
    >>> bslz4_decode_into(compress(a, "bslz4"), out)
    >>> bool((out == a).all())
    True
    """
    if not (out.flags.c_contiguous and out.flags.writeable and out.dtype.isnative):
        raise ValueError("out must be a writeable C-contiguous array in native byte order")
    elem = out.dtype.itemsize
    if not checked:
        problem = bslz4_problem(blob, out.nbytes, elem)
        if problem:
            raise BlobError(f"bitshuffle-LZ4 blob: {problem}")
    block = _HEADER.unpack_from(blob, 0)[1] // elem
    fn = _bshuf_decoder()
    if fn is None:  # no C library: the bitshuffle package (allocates)
        out[...] = decompress(blob, "bslz4", out.shape, out.dtype)
        return
    data = blob if isinstance(blob, bytes) else bytes(blob)
    start = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value + _HEADER.size
    used = fn(start, out.ctypes.data, out.size, elem, block)
    if used != len(data) - _HEADER.size:
        raise BlobError(f"bitshuffle-LZ4 blob does not decode (decoder status {used}, "
                        f"{len(data) - _HEADER.size} bytes after the header)")


def _lz4_hdf5_decode(view: memoryview, nbytes: int) -> bytes:
    import lz4.block

    n = len(view)
    if n < _HEADER.size:
        raise BlobError(f"lz4 blob of {n} bytes is shorter than its 12-byte header")
    total, block = _HEADER.unpack_from(view, 0)
    if total != nbytes:
        raise BlobError(f"lz4 header announces {total} bytes, the frame has {nbytes}")
    if block == 0:
        raise BlobError("lz4 header has block size 0")
    out = bytearray()
    pos = _HEADER.size
    remaining = total
    k = 0
    while remaining > 0:
        want = min(block, remaining)
        if pos + 4 > n:
            raise BlobError(f"lz4 blob ends inside block {k}")
        (length,) = _U32BE.unpack_from(view, pos)
        pos += 4
        if pos + length > n:
            raise BlobError(f"lz4 block {k} claims {length} bytes, {n - pos} are left")
        chunk = view[pos:pos + length]
        if length == want:
            out += chunk
        else:
            try:
                out += lz4.block.decompress(chunk, uncompressed_size=want)
            except Exception as exc:  # lz4.block.LZ4BlockError
                raise BlobError(f"lz4 block {k} does not decode: {exc}") from exc
        pos += length
        remaining -= want
        k += 1
    if pos != n:
        raise BlobError(f"lz4 blob has {n - pos} bytes after its last block")
    return bytes(out)


def decompress(blob, encoding: str, shape, dtype) -> np.ndarray:
    """Decode a detector blob into a new array of ``shape`` and ``dtype``.

    Parameters
    ----------
    blob : bytes-like
        The compressed data, exactly as the detector sent it.
    encoding : {"none", "bslz4", "lz4", "lz4-hdf5"}
        See the module notes.
    shape : tuple of int
        Array shape in NumPy order (``(ny, nx)``).
    dtype : numpy dtype
        Pixel type (little-endian).

    Raises
    ------
    BlobError
        Truncated or oversized blob, a decoded size that does not match, damaged
        framing or an LZ4 stream that does not decode.
    ValueError
        An unknown encoding.
    """
    dtype = np.dtype(dtype)
    shape = tuple(int(s) for s in shape)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    view = memoryview(blob).cast("B")
    if encoding == "none":
        if len(view) != nbytes:
            raise BlobError(f"raw blob of {len(view)} bytes, the frame needs {nbytes}")
        return np.frombuffer(view, dtype=dtype).reshape(shape).copy()
    if encoding == "bslz4":
        import bitshuffle

        problem = bslz4_problem(view, nbytes, dtype.itemsize)
        if problem:
            raise BlobError(f"bitshuffle-LZ4 blob: {problem}")
        block = _HEADER.unpack_from(view, 0)[1] // dtype.itemsize
        payload = np.frombuffer(view, dtype=np.uint8, offset=_HEADER.size)
        try:
            return bitshuffle.decompress_lz4(payload, shape, dtype, block)
        except (RuntimeError, ValueError) as exc:
            raise BlobError(f"bitshuffle-LZ4 blob does not decode: {exc}") from exc
    if encoding == "lz4":
        import lz4.block

        if len(view) > _lz4_bound(nbytes):
            raise BlobError(f"lz4 blob of {len(view)} bytes is larger than any LZ4 "
                            f"encoding of {nbytes} bytes")
        try:
            raw = lz4.block.decompress(view, uncompressed_size=nbytes)
        except Exception as exc:  # lz4.block.LZ4BlockError
            raise BlobError(f"lz4 blob does not decode to {nbytes} bytes: {exc}") from exc
        if len(raw) != nbytes:
            raise BlobError(f"lz4 blob decodes to {len(raw)} bytes, the frame needs {nbytes}")
        return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
    if encoding == "lz4-hdf5":
        raw = _lz4_hdf5_decode(view, nbytes)
        return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
    raise ValueError(f"unknown blob encoding {encoding!r}; expected one of {ENCODINGS}")


def compress(array, encoding: str = "bslz4") -> bytes:
    """Encode an array as a detector would (the inverse of :func:`decompress`).

    Parameters
    ----------
    array : ndarray
        Pixels (converted to little-endian, C order).
    encoding : {"bslz4", "lz4", "lz4-hdf5", "none"}

    Returns
    -------
    bytes
    """
    a = np.ascontiguousarray(array)
    a = a.astype(a.dtype.newbyteorder("<"), copy=False)
    nbytes = a.nbytes
    if encoding == "none":
        return a.tobytes()
    if encoding == "bslz4":
        import bitshuffle

        block_bytes = 8192
        block_elems = max(128, (block_bytes // a.itemsize) // 8 * 8)
        body = bitshuffle.compress_lz4(a.reshape(-1), block_elems)
        return _HEADER.pack(nbytes, block_elems * a.itemsize) + body.tobytes()
    if encoding == "lz4":
        import lz4.block

        return lz4.block.compress(a.tobytes(), store_size=False)
    if encoding == "lz4-hdf5":
        import lz4.block

        raw = a.tobytes()
        block = 1 << 30
        parts = [_HEADER.pack(nbytes, min(block, max(nbytes, 1)))]
        for start in range(0, nbytes, block):
            chunk = raw[start:start + block]
            packed = lz4.block.compress(chunk, store_size=False)
            if len(packed) >= len(chunk):
                packed = chunk
            parts += [_U32BE.pack(len(packed)), packed]
        return b"".join(parts)
    raise ValueError(f"unknown blob encoding {encoding!r}; expected one of {ENCODINGS}")
