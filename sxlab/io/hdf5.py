"""Lazy frame access to HDF5 runs: NXmx/EIGER masters and data files, CXI, plain HDF5.

:func:`open_run` reads only metadata; frames are read one at a time (or in chunks) when
asked for. A virtual dataset in a master file is resolved into its source files, so every
frame knows the data file and index it comes from, a missing or damaged data file affects
only its own frames, and errors name the file.

Bad pixels
----------
Images are returned as float32 with **no magic numbers**: pixels flagged by their stored
value are set to 0 and reported in a separate boolean mask (:meth:`Run.read`). Flags are

* unsigned integers: ``2**bits - 1`` (65535 for uint16, 4294967295 for uint32) and, for
  EIGER/NXmx files, also ``2**bits - 2``;
* signed integers: negative values;
* floats: NaN and ±inf.

The NXmx ``pixel_mask`` (nonzero = bad) of a master file is OR'ed into the mask; those
pixels keep their values in the image.

Per-frame geometry
------------------
A CrystFEL geometry may read the beam energy, the camera length and detector shifts from
the data files (:class:`~sxlab.geometry.HeaderValue`); :meth:`Run.frame_geometry` reads
them for a frame (a scalar for the file, or the frame's element of a per-frame array) and
returns the geometry with them in place, as CrystFEL does for each frame. A geometry
without any beam energy takes the wavelength from the NXmx metadata of the data.

Identity
--------
:meth:`Run.identity` describes the input cheaply (file names, sizes, modification times,
frame count, frame shape and a SHA-256 of the stored bytes of the first and last
readable frames): a results directory records it, so that a rerun with other input is
recognised.
"""

from __future__ import annotations

import bisect
import glob
import hashlib
import html
import numbers
import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import h5py
import hdf5plugin  # noqa: F401  (registers the bitshuffle/LZ4 HDF5 filters)
import numpy as np

from sxlab.geometry import HC_EV_A
from sxlab.io.compression import BlobError, bslz4_decode_into, bslz4_problem
from sxlab.io.nxmx import (
    as_str,
    find_detectors,
    find_entry,
    read_nxmx_geometry,
    read_nxmx_wavelength,
    virtual_frame_blocks,
)

if TYPE_CHECKING:
    import xarray as xr

__all__ = ["FrameReadError", "Run", "convert_frame", "open_hdf5", "open_run",
           "value_flags"]

_BSLZ4_FILTER = 32008
_CXI_PATHS = ("/entry_1/data_1/data", "/entry_1/instrument_1/detector_1/data")
_DATA_LINK = re.compile(r"^data_\d+$")
_DATA_FILE = re.compile(r"^(?P<prefix>.*)_data_\d+\.(h5|hdf5|nxs)$")
#: File name endings taken from a folder given to :func:`open_run`.
_FOLDER_SUFFIXES = (".h5", ".hdf5", ".hdf", ".nxs", ".cxi")
#: Frames whose stored bytes make the fingerprint of :meth:`Run.identity` (first, last).
_FINGERPRINT_TRIES = 8
_READ_ERRORS = (OSError, KeyError, ValueError, TypeError, RuntimeError, BlobError)
_NO_BOOL = np.zeros(0, dtype=bool)


class FrameReadError(IOError):
    """A frame could not be read (missing file, corrupt chunk, wrong shape ...).

    The message names the run, the global frame index, the file, the index within the
    file and the underlying HDF5 error. Batch code can catch it for one frame and go on
    with the next.

    Attributes
    ----------
    path : str
        Data file holding the frame.
    frame : int
        Global frame index in the run.
    index_in_file : int
        Index of the frame in the file's dataset.
    dataset : str
        Dataset path in the file.
    """

    def __init__(self, message: str, *, path=None, frame=None, index_in_file=None,
                 dataset=None):
        super().__init__(message)
        self.path = path
        self.frame = frame
        self.index_in_file = index_in_file
        self.dataset = dataset


@dataclass(frozen=True)
class _Segment:
    """Consecutive frames ``start .. start+count-1`` of one dataset in one file."""

    path: str
    dataset: str
    start: int
    count: int
    meta: int = 0
    single: bool = False  # the dataset is one frame without a frame axis


@dataclass(frozen=True)
class _Meta:
    """Where flags, mask and geometry of some segments come from."""

    path: str
    eiger_flags: bool = False
    mask_file: str | None = None
    mask_dataset: str | None = None
    geometry_file: str | None = None


@dataclass
class _DatasetInfo:
    dset: h5py.Dataset
    shape: tuple
    dtype: np.dtype
    bslz4_elem: int  # element size for the bitshuffle-LZ4 chunk check; 0: no check


class _Handles:
    """Open files, datasets, read buffers and loaded masks of one process.

    Shared by a run and its sub-runs; after a fork the child starts afresh.
    """

    def __init__(self, max_open: int = 64):
        self.max_open = max_open
        self.lock = threading.RLock()
        self._reset()

    def _reset(self) -> None:
        self.pid = os.getpid()
        self.files: OrderedDict[str, h5py.File] = OrderedDict()
        self.dsets: dict[tuple[str, str], _DatasetInfo] = {}
        self.buffers: dict[tuple, np.ndarray] = {}
        self.masks: dict[int, np.ndarray | None] = {}
        self.geometries: dict[tuple, object] = {}

    def _check_process(self) -> None:
        if os.getpid() != self.pid:
            self._reset()

    def file(self, path: str) -> h5py.File:
        self._check_process()
        f = self.files.get(path)
        if f is not None:
            self.files.move_to_end(path)
            return f
        f = open_hdf5(path)
        self.files[path] = f
        while len(self.files) > self.max_open:
            old, fh = self.files.popitem(last=False)
            for key in [k for k in self.dsets if k[0] == old]:
                del self.dsets[key]
            fh.close()
        return f

    def dataset(self, path: str, name: str) -> _DatasetInfo:
        self._check_process()
        info = self.dsets.get((path, name))
        if info is not None and path in self.files:
            self.files.move_to_end(path)
            return info
        f = self.file(path)
        obj = f[name]
        if not isinstance(obj, h5py.Dataset):
            raise KeyError(f"{name} is not a dataset")
        info = _DatasetInfo(obj, tuple(obj.shape), obj.dtype.newbyteorder("="),
                            _bslz4_elem_size(obj))
        self.dsets[(path, name)] = info
        return info

    def buffer(self, dtype: np.dtype, shape: tuple) -> np.ndarray:
        key = (dtype.str, shape)
        buf = self.buffers.get(key)
        if buf is None:
            buf = self.buffers[key] = np.empty(shape, dtype=dtype)
        return buf

    def close(self) -> None:
        with self.lock:
            for fh in self.files.values():
                fh.close()
            self._reset()


def open_hdf5(path: str) -> h5py.File:
    """Open an HDF5 file for reading; an unreadable one is an OSError naming the file.

    h5py's messages ("Unable to synchronously open file (file signature not found)")
    name neither the file nor the likely cause; this says both.
    """
    try:
        return h5py.File(path, "r")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except OSError as exc:
        text = str(exc)
        if "signature not found" in text:
            size = os.path.getsize(path) if os.path.exists(path) else 0
            why = "an empty file" if size == 0 else f"{size} bytes that are not HDF5"
            raise OSError(f"{path}: not an HDF5 file ({why})") from None
        if "truncated file" in text:
            m = re.search(r"eof = (\d+).*stored_eof = (\d+)", text)
            what = (f"{int(m.group(1))} of {int(m.group(2))} bytes" if m else "cut short")
            raise OSError(f"{path}: truncated HDF5 file ({what}; an incomplete copy or "
                          "a file still being written?)") from None
        if "ermission" in text:
            raise PermissionError(f"{path}: permission denied") from None
        raise OSError(f"{path}: cannot open as HDF5 ({_h5_reason(text)})") from None


def _h5_reason(text: str) -> str:
    """The innermost reason of an h5py error message."""
    m = re.findall(r"\(([^()]*)\)", text)
    return m[-1] if m else text


def _bslz4_elem_size(dset: h5py.Dataset) -> int:
    if dset.chunks is None:
        return 0
    dcpl = dset.id.get_create_plist()
    for i in range(dcpl.get_nfilters()):
        code, _flags, values, _name = dcpl.get_filter(i)
        if code == _BSLZ4_FILTER:
            return int(values[2]) if len(values) > 2 and values[2] else dset.dtype.itemsize
    return 0


def _check_bslz4_chunk(dset: h5py.Dataset, offset: tuple, nbytes: int, elem: int) -> None:
    try:
        filter_mask, blob = dset.id.read_direct_chunk(offset)
    except _READ_ERRORS:
        return  # not allocated or unreadable: the normal read reports it
    if filter_mask & 1:
        return
    problem = bslz4_problem(blob, nbytes, elem)
    if problem:
        raise OSError(f"corrupt bitshuffle-LZ4 chunk at {offset}: {problem}")


def value_flags(raw: np.ndarray, eiger: bool) -> np.ndarray:
    """Pixels flagged by their stored value (see the module notes on bad pixels).

    Parameters
    ----------
    raw : ndarray
        A frame as stored.
    eiger : bool
        Also flag ``2**bits - 2`` of unsigned frames (EIGER/NXmx convention).

    Examples
    --------
    >>> value_flags(np.array([0, 65534, 65535], dtype=np.uint16), eiger=True).tolist()
    [False, True, True]
    """
    kind = raw.dtype.kind
    if kind == "u":
        top = np.iinfo(raw.dtype).max
        return raw >= top - 1 if eiger else raw == top
    if kind == "i":
        return raw < 0
    if kind == "f":
        return ~np.isfinite(raw)
    return np.zeros(raw.shape, dtype=bool)


def convert_frame(raw: np.ndarray, eiger: bool, pixel_mask: np.ndarray | None,
                  out: np.ndarray, bad: np.ndarray | None = None) -> None:
    """A stored frame into ``out`` (and its bad pixels into ``bad``), in place.

    Pixels flagged by value (:func:`value_flags`) become 0 in ``out``; ``bad`` receives
    the flags or'ed with ``pixel_mask``. ``out`` is float32, or ``raw`` itself (the frame
    kept in its stored dtype: only the flagged pixels are written). Unsigned frames take
    one pass of a numba kernel; other types go through NumPy. This is what
    :meth:`Run.read_into` and the live workers (:mod:`sxlab.live.worker`) do to every
    frame.

    Parameters
    ----------
    raw : ndarray
        The frame as stored (any numeric dtype).
    eiger : bool
        EIGER/NXmx flag convention (see :func:`value_flags`).
    pixel_mask : ndarray of bool, optional
        Static bad pixels of the frame's shape.
    out : ndarray of float32, or ``raw``
    bad : ndarray of bool, optional

    Examples
    --------
    >>> raw = np.array([[1, 65535], [3, 4]], np.uint16)
    >>> out, bad = np.empty((2, 2), np.float32), np.empty((2, 2), bool)
    >>> convert_frame(raw, True, np.array([[0, 0], [1, 0]], bool), out, bad)
    >>> out.tolist(), bad.tolist()
    ([[1.0, 0.0], [3.0, 4.0]], [[False, True], [True, False]])
    >>> convert_frame(raw, True, None, raw)          # in the stored dtype
    >>> raw.tolist()
    [[1, 0], [3, 4]]
    """
    in_place = out is raw
    if raw.dtype.kind == "u" and raw.flags.c_contiguous and out.flags.c_contiguous and (
            bad is None or bad.flags.c_contiguous) and (
            pixel_mask is None or pixel_mask.flags.c_contiguous):
        # flags are the top values: convert, flag and mask in one pass
        from sxlab.io._read_kernels import convert_flagged, flag_in_place

        top = np.iinfo(raw.dtype).max
        threshold = raw.dtype.type(top - 1 if eiger else top)
        flat_pm = _NO_BOOL if pixel_mask is None else pixel_mask.reshape(-1)
        flat_bad = _NO_BOOL if bad is None else bad.reshape(-1)
        if in_place:
            flag_in_place(raw.reshape(-1), threshold, flat_pm, pixel_mask is not None,
                          flat_bad, bad is not None)
        else:
            convert_flagged(raw.reshape(-1), threshold, flat_pm, pixel_mask is not None,
                            out.reshape(-1), flat_bad, bad is not None)
        return
    flags = value_flags(raw, eiger)
    if not in_place:
        np.copyto(out, raw, casting="unsafe")
    if flags.any():
        np.copyto(out, 0, where=flags)
    if bad is not None:
        if pixel_mask is None:
            np.copyto(bad, flags)
        else:
            np.logical_or(flags, pixel_mask, out=bad)

# ============================================================================= Run
class _GeometryRef:
    """Geometry given by the caller or loaded from an NXmx file on first use."""

    def __init__(self, value=None, path: str | None = None):
        self.value = value
        self.path = path
        self.loaded = value is not None or path is None

    def get(self, frame_shape: tuple):
        if not self.loaded:
            det = read_nxmx_geometry(self.path)
            _check_geometry(det, frame_shape, self.path)
            self.value, self.loaded = det, True
        return self.value

    def __getstate__(self):
        if self.path is not None:
            return {"value": None, "path": self.path, "loaded": False}
        # A fresh copy travels without the detector's cached per-pixel maps.
        value = self.value.replace() if self.value is not None else None
        return {"value": value, "path": None, "loaded": True}


def _check_geometry(det, frame_shape: tuple, where: str) -> None:
    shape = tuple(det.data_shape)
    too_big = len(shape) != len(frame_shape) or any(
        a > b for a, b in zip(shape, frame_shape, strict=True)
    )
    if too_big:
        raise ValueError(
            f"geometry ({where}) has data shape {shape}, which does not fit frames of "
            f"shape {frame_shape}"
        )


class Run:
    """A lazily read sequence of detector frames (see :func:`open_run`).

    Indexing with an integer reads one frame; slices and lists give sub-runs that read
    nothing until used. A run is picklable: the copy reopens its files on first use.

    Attributes
    ----------
    name : str
        Run name (from the file name unless given).
    frame_shape : tuple of int
        Shape of one frame: ``(ss, fs)`` or ``(module, ss, fs)``.
    dtype : numpy.dtype
        Stored pixel type (of the first file).

    Examples
    --------
    >>> run = open_run("run7_master.h5")  # doctest: +SKIP
    >>> img = run[0]  # doctest: +SKIP
    >>> img, bad = run.read(0)  # doctest: +SKIP
    >>> for stack in run[100:200].iter_chunks(16):  # doctest: +SKIP
    ...     print(stack.dims)
    ('frame', 'ss', 'fs')
    """

    def __init__(self, segments, metas, frame_shape, dtype, *, name, geometry: _GeometryRef,
                 check_chunks=True, index=None, handles=None):
        self._segments = tuple(segments)
        self._metas = tuple(metas)
        self._starts = [0]
        for s in self._segments:
            self._starts.append(self._starts[-1] + s.count)
        self._index = None if index is None else np.asarray(index, dtype=np.int64)
        self.frame_shape = tuple(int(v) for v in frame_shape)
        self.dtype = np.dtype(dtype)
        self.name = name
        self._geometry = geometry
        self._check_chunks = check_chunks
        self._handles = handles if handles is not None else _Handles()

    # ------------------------------------------------------------- structure
    def __len__(self) -> int:
        return self._starts[-1] if self._index is None else int(self._index.size)

    @property
    def n_frames(self) -> int:
        """Number of frames."""
        return len(self)

    @property
    def dims(self) -> tuple[str, ...]:
        """Dims of one frame: ("ss", "fs") or ("module", "ss", "fs")."""
        return ("module", "ss", "fs") if len(self.frame_shape) == 3 else ("ss", "fs")

    @property
    def geometry(self):
        """Detector geometry (from the NXmx master, the ``geometry`` argument, or None)."""
        return self._geometry.get(self.frame_shape)

    @property
    def files(self) -> list[str]:
        """Files holding this run's frames, in frame order."""
        if self._index is None:
            segs = range(len(self._segments))
        else:
            segs = np.unique(np.searchsorted(self._starts, self._index, side="right") - 1)
        out = []
        for s in segs:
            p = self._segments[s].path
            if p not in out:
                out.append(p)
        return out

    def _global(self, i) -> int:
        n = len(self)
        i = int(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"frame index {i} out of range for a run of {n} frames")
        return i if self._index is None else int(self._index[i])

    def _locate(self, g: int) -> tuple[_Segment, int]:
        s = bisect.bisect_right(self._starts, g) - 1
        seg = self._segments[s]
        return seg, seg.start + (g - self._starts[s])

    def _subrun(self, index) -> Run:
        return Run(self._segments, self._metas, self.frame_shape, self.dtype, name=self.name,
                   geometry=self._geometry, check_chunks=self._check_chunks, index=index,
                   handles=self._handles)

    def __getitem__(self, key):
        if isinstance(key, (numbers.Integral, np.integer)):
            return self._image(self._global(key))
        n = len(self)
        if isinstance(key, slice):
            sel = np.arange(*key.indices(n), dtype=np.int64)
        else:
            sel = np.asarray(key)
            if sel.dtype == bool:
                if sel.shape != (n,):
                    raise IndexError(f"boolean index of shape {sel.shape} for {n} frames")
                sel = np.flatnonzero(sel)
            elif sel.size == 0:
                sel = sel.astype(np.int64)
            if sel.dtype.kind not in "iu" or sel.ndim != 1:
                raise TypeError(f"cannot index a Run with {type(key).__name__}")
            sel = np.where(sel < 0, sel + n, sel).astype(np.int64)
            if sel.size and (sel.min() < 0 or sel.max() >= n):
                raise IndexError(f"frame index out of range for a run of {n} frames")
        return self._subrun(sel if self._index is None else self._index[sel])

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    # --------------------------------------------------------------- reading
    def _read_into_buffer(self, g: int, target: np.ndarray | None = None
                          ) -> tuple[np.ndarray, _Segment, int]:
        """Read frame ``g`` into the shared buffer (caller holds the lock).

        With ``target`` (C-contiguous, the frame's shape), the frame is read into it
        instead when its dtype is the stored one.
        """
        seg, local = self._locate(g)
        info = err = None
        try:
            info = self._handles.dataset(seg.path, seg.dataset)
        except _READ_ERRORS as exc:
            err = exc
        if info is not None:
            shape = info.shape if seg.single else info.shape[1:]
            if shape != self.frame_shape:
                err = f"frame shape {shape} differs from the run's frame shape " \
                      f"{self.frame_shape}"
            elif not seg.single and local >= info.shape[0]:
                err = f"the dataset holds only {info.shape[0]} frames (truncated file?)"
        if err is None:
            if (target is not None and target.dtype == info.dtype
                    and target.flags.c_contiguous):
                buf = target
            else:
                buf = self._handles.buffer(info.dtype, self.frame_shape)
            try:
                if seg.single:
                    offset, sel = (0,) * len(shape), np.s_[...]
                else:
                    offset, sel = (local,) + (0,) * len(shape), np.s_[local]
                one_chunk = info.bslz4_elem and info.dset.chunks == (
                    info.shape if seg.single else (1, *shape))
                if one_chunk and info.bslz4_elem == info.dtype.itemsize \
                        and info.dset.dtype.isnative:
                    # the frame's chunk decoded straight into the buffer (no temporaries)
                    filter_mask, blob = info.dset.id.read_direct_chunk(offset)
                    if filter_mask == 0:
                        problem = bslz4_problem(blob, buf.nbytes, info.bslz4_elem)
                        if problem:
                            raise OSError(f"corrupt bitshuffle-LZ4 chunk at {offset}: "
                                          f"{problem}")
                        bslz4_decode_into(blob, buf, checked=True)
                        return buf, seg, local
                if self._check_chunks and one_chunk:
                    _check_bslz4_chunk(info.dset, offset, buf.nbytes, info.bslz4_elem)
                info.dset.read_direct(buf, sel)
                return buf, seg, local
            except _READ_ERRORS as exc:
                err = exc
        raise FrameReadError(
            f"cannot read frame {g} of run {self.name!r} (frame {local} in file "
            f"{seg.path}, dataset {seg.dataset}): {err}",
            path=seg.path, frame=g, index_in_file=local, dataset=seg.dataset,
        )

    def _pixel_mask(self, meta_index: int) -> np.ndarray | None:
        h = self._handles
        if meta_index not in h.masks:
            meta = self._metas[meta_index]
            mask = None
            if meta.mask_file is not None:
                try:
                    raw = h.file(meta.mask_file)[meta.mask_dataset][()]
                except _READ_ERRORS as exc:
                    raise FrameReadError(
                        f"cannot read pixel mask {meta.mask_dataset} of {meta.mask_file}: "
                        f"{exc}", path=meta.mask_file, dataset=meta.mask_dataset,
                    ) from exc
                mask = (np.asarray(raw) != 0).reshape(self.frame_shape)
            h.masks[meta_index] = mask
        return h.masks[meta_index]

    def _attrs(self, g: int, seg: _Segment, local: int) -> dict:
        return {"frame": g, "run": self.name, "event": f"//{local}", "source": seg.path,
                "dataset": seg.dataset}

    def _convert(self, g: int, out: np.ndarray, mask_out: np.ndarray | None):
        """Read frame ``g`` into ``out`` (and its bad mask into ``mask_out``).

        ``out`` is float32, or of the frame's stored dtype (then read in place).
        """
        with self._handles.lock:
            stored = out.dtype != np.float32
            buf, seg, local = self._read_into_buffer(g, out if stored else None)
            if stored and buf is not out:
                raise ValueError(f"frame {g} of run {self.name!r} is stored as "
                                 f"{buf.dtype}, not {out.dtype} (read it as float32)")
            meta = self._metas[seg.meta]
            pm = self._pixel_mask(seg.meta) if mask_out is not None else None
            convert_frame(buf, meta.eiger_flags, pm, out, mask_out)
        return seg, local

    def _image(self, g: int) -> xr.DataArray:
        import xarray as xr

        img = np.empty(self.frame_shape, dtype=np.float32)
        seg, local = self._convert(g, img, None)
        return xr.DataArray(img, dims=self.dims, attrs=self._attrs(g, seg, local))

    def read_into(self, i, image: np.ndarray, bad: np.ndarray | None = None) -> dict:
        """Read frame ``i`` into existing arrays (no allocation); return its attrs.

        The plain-array form of :meth:`read` for loops that reuse their buffers.

        Parameters
        ----------
        i : int
            Frame index.
        image : ndarray of float32 or of the run's stored ``dtype``
            Of the run's ``frame_shape``; receives the frame, pixels flagged by value 0.
            In the stored dtype the frame is decoded straight into it, unconverted
            (a frame of a file stored in another dtype is then a ``ValueError``).
        bad : ndarray of bool, optional
            Of ``frame_shape``; receives the bad-pixel mask (see :meth:`read`).

        Returns
        -------
        dict
            ``frame``, ``run``, ``event``, ``source``, ``dataset``.

        Examples
        --------
        >>> import numpy as np, sxlab as sx
        >>> run = sx.datasets.load("lysozyme-sample", progress=False)
        >>> img = np.empty(run.frame_shape, np.float32)
        >>> bad = np.empty(run.frame_shape, bool)
        >>> run.read_into(0, img, bad)["event"]
        '//0'
        """
        for name, arr, dtypes in (("image", image, (np.float32, self.dtype)),
                                  ("bad", bad, (np.bool_,))):
            if arr is not None and (arr.shape != self.frame_shape
                                    or arr.dtype not in dtypes):
                kinds = " or ".join(sorted({np.dtype(d).name for d in dtypes}))
                raise ValueError(f"{name} must be {kinds} of shape {self.frame_shape}, "
                                 f"got {arr.dtype} {arr.shape}")
        g = self._global(i)
        seg, local = self._convert(g, image, bad)
        return self._attrs(g, seg, local)

    def read(self, i) -> tuple[xr.DataArray, xr.DataArray]:
        """Frame ``i`` and its bad-pixel mask.

        Returns
        -------
        image : xarray.DataArray
            float32, dims ``("ss", "fs")`` or ``("module", "ss", "fs")``; pixels flagged
            by value are 0. Attrs ``frame``, ``run``, ``event``, ``source``, ``dataset``.
        bad : xarray.DataArray
            bool, True for pixels flagged by value or by the NXmx ``pixel_mask``.

        Raises
        ------
        FrameReadError
            When the frame cannot be read.
        """
        import xarray as xr

        img = np.empty(self.frame_shape, dtype=np.float32)
        bad = np.empty(self.frame_shape, dtype=bool)
        attrs = self.read_into(i, img, bad)
        return (xr.DataArray(img, dims=self.dims, attrs=attrs),
                xr.DataArray(bad, dims=self.dims, attrs=dict(attrs)))

    def mask(self, i) -> xr.DataArray:
        """Bad-pixel mask of frame ``i`` (see :meth:`read`)."""
        return self.read(i)[1]

    def read_raw(self, i) -> np.ndarray:
        """Frame ``i`` exactly as stored (its own dtype, flag values untouched)."""
        g = self._global(i)
        with self._handles.lock:
            buf, _, _ = self._read_into_buffer(g)
            return buf.copy()

    def read_compressed(self, i) -> bytes | None:
        """Frame ``i`` as its stored bitshuffle-LZ4 chunk, or None when it is not one.

        A frame stored as one bitshuffle-LZ4 chunk (as EIGER file writers and
        :class:`~sxlab.io.NXmxWriter` store it) is returned as the compressed bytes,
        12-byte header included, without decompressing (``read_direct_chunk``); the
        framing is checked. Other layouts return None: read them with :meth:`read_raw`.

        Raises
        ------
        FrameReadError
            When the chunk cannot be read or its framing is damaged.
        """
        g = self._global(i)
        seg, local = self._locate(g)
        with self._handles.lock:
            try:
                info = self._handles.dataset(seg.path, seg.dataset)
                shape = info.shape if seg.single else info.shape[1:]
                if (not info.bslz4_elem or shape != self.frame_shape
                        or info.dset.chunks != (shape if seg.single else (1, *shape))):
                    return None
                offset = (0,) * len(shape) if seg.single else (local,) + (0,) * len(shape)
                filter_mask, blob = info.dset.id.read_direct_chunk(offset)
                if filter_mask & 1:
                    return None
                nbytes = int(np.prod(shape)) * info.dtype.itemsize
                problem = bslz4_problem(blob, nbytes, info.bslz4_elem)
                if problem:
                    raise OSError(f"corrupt bitshuffle-LZ4 chunk at {offset}: {problem}")
                return bytes(blob)
            except _READ_ERRORS as exc:
                raise FrameReadError(
                    f"cannot read frame {g} of run {self.name!r} (frame {local} in file "
                    f"{seg.path}, dataset {seg.dataset}): {exc}",
                    path=seg.path, frame=g, index_in_file=local, dataset=seg.dataset,
                ) from exc

    def pixel_mask(self, i=0) -> np.ndarray | None:
        """The static pixel mask (NXmx ``pixel_mask``, nonzero = bad) of frame ``i``'s file.

        None when the file has none. Pixels flagged by value are not included (see
        :meth:`read` for the full bad-pixel mask of a frame).
        """
        seg, _ = self._locate(self._global(i))
        with self._handles.lock:
            mask = self._pixel_mask(seg.meta)
        return None if mask is None else mask.copy()

    def uses_eiger_flags(self, i=0) -> bool:
        """Whether ``2**bits - 2`` also flags bad pixels in frame ``i`` (EIGER/NXmx files)."""
        seg, _ = self._locate(self._global(i))
        return bool(self._metas[seg.meta].eiger_flags)

    def iter_chunks(self, size: int, *, with_mask: bool = False):
        """Yield consecutive frames stacked along a leading ``"frame"`` dim.

        Parameters
        ----------
        size : int
            Frames per chunk (the last one may be shorter).
        with_mask : bool
            Yield ``(images, bad_masks)`` pairs instead of images.

        Yields
        ------
        xarray.DataArray
            float32, dims ``("frame", *dims)`` with coords ``frame`` (global index),
            ``event`` and ``source``; attrs ``run``.
        """
        import xarray as xr

        size = int(size)
        if size < 1:
            raise ValueError(f"chunk size must be >= 1, got {size}")
        n = len(self)
        for a in range(0, n, size):
            idx = range(a, min(a + size, n))
            imgs = np.empty((len(idx), *self.frame_shape), dtype=np.float32)
            bad = np.empty(imgs.shape, dtype=bool) if with_mask else None
            frames, events, sources = [], [], []
            for j, i in enumerate(idx):
                g = self._global(i)
                seg, local = self._convert(g, imgs[j], None if bad is None else bad[j])
                frames.append(g)
                events.append(f"//{local}")
                sources.append(seg.path)
            coords = {"frame": ("frame", np.array(frames, dtype=np.int64)),
                      "event": ("frame", events), "source": ("frame", sources)}
            dims = ("frame", *self.dims)
            da = xr.DataArray(imgs, dims=dims, coords=coords, attrs={"run": self.name})
            if with_mask:
                yield da, xr.DataArray(bad, dims=dims, coords=coords, attrs={"run": self.name})
            else:
                yield da

    # ------------------------------------------------------ per-frame geometry
    def with_beam(self, *, wavelength_A: float | None = None,
                  photon_energy_eV: float | None = None) -> Run:
        """This run with the beam's wavelength given (for every frame).

        For a geometry that gives no beam energy (or to override it); one of the two
        keywords.

        Examples
        --------
        >>> run = open_run("run7_master.h5").with_beam(photon_energy_eV=12400)  # doctest: +SKIP
        """
        if (wavelength_A is None) == (photon_energy_eV is None):
            raise ValueError("give wavelength_A or photon_energy_eV")
        lam = wavelength_A if wavelength_A is not None else HC_EV_A / float(photon_energy_eV)
        if not (np.isfinite(lam) and lam > 0):
            raise ValueError(f"the wavelength must be positive, got {lam}")
        det = self.geometry
        if det is None:
            raise ValueError(f"run {self.name!r} has no geometry to set the beam of")
        run = self._subrun(self._index)
        run._geometry = _GeometryRef(det.with_beam(wavelength_A=float(lam),
                                                   wavelength_from=None))
        return run

    def frame_geometry(self, i):
        """The geometry of frame ``i``: header values read from its file and put in place.

        Returns :attr:`geometry` itself when nothing varies per frame. Equal values give
        the same (cached) Detector object, so that prepared work can be reused.

        Raises
        ------
        FrameReadError
            A header value cannot be read from the frame's file, or no wavelength is
            known (the geometry gives none, the data neither).
        """
        det = self.geometry
        if det is None:
            return None
        if not det.header_values and np.isfinite(det.beam.wavelength_A):
            return det
        g = self._global(i)
        seg, local = self._locate(g)
        values = []
        with self._handles.lock:
            for hv in det.header_values:
                values.append(self._header_value(hv, seg, local, g))
            if det.beam.wavelength_from is None and not np.isfinite(det.beam.wavelength_A):
                values.append(self._data_wavelength(seg, g))
        key = (id(det), tuple(values))
        cache = self._handles.geometries
        hit = cache.get(key)
        if hit is not None:
            return hit
        lookup = dict(zip(det.header_values, values, strict=False))
        try:
            resolved = det.resolved(lambda hv: lookup[hv])
        except ValueError as exc:
            raise FrameReadError(f"frame {g} of run {self.name!r} ({seg.path}): {exc}",
                                 path=seg.path, frame=g, index_in_file=local) from None
        if len(values) > len(det.header_values):
            resolved = resolved.with_beam(wavelength_A=values[-1])
        if len(cache) >= 16:
            cache.pop(next(iter(cache)))
        cache[key] = resolved
        return resolved

    def _header_value(self, hv, seg: _Segment, local: int, g: int) -> float:
        where = [seg.path]
        meta = self._metas[seg.meta].path
        if meta != seg.path:
            where.append(meta)  # the master holds the metadata of its data files
        for path in where:
            try:
                obj = self._handles.file(path).get(hv.path)
            except _READ_ERRORS:
                obj = None
            if isinstance(obj, h5py.Dataset):
                break
        else:
            raise FrameReadError(
                f"frame {g} of run {self.name!r}: the geometry reads {hv.path} ({hv.unit}) "
                f"from each frame's file, but {' and '.join(where)} have no such dataset",
                path=seg.path, frame=g, index_in_file=local)
        try:
            arr = np.asarray(obj[()])
            if arr.dtype.kind in "SUO":
                arr = np.asarray([float(as_str(v)) for v in np.ravel(arr)])
            if arr.size == 1:
                return float(arr.ravel()[0])
            if arr.ndim >= 1 and arr.shape[0] > local and arr[local].size == 1:
                return float(np.ravel(arr[local])[0])
            problem = f"has shape {arr.shape}, expected one value or one per frame"
        except (TypeError, ValueError) as exc:
            problem = f"is not a number ({exc})"
        raise FrameReadError(
            f"frame {g} of run {self.name!r}: {obj.file.filename}:{hv.path} {problem}",
            path=seg.path, frame=g, index_in_file=local)

    def _data_wavelength(self, seg: _Segment, g: int) -> float:
        meta = self._metas[seg.meta].path
        lam = float("nan")
        for path in dict.fromkeys((meta, seg.path)):
            try:
                lam = read_nxmx_wavelength(self._handles.file(path))
            except _READ_ERRORS:
                continue
            if np.isfinite(lam):
                return lam
        raise FrameReadError(
            f"frame {g} of run {self.name!r}: no wavelength; the geometry gives none and "
            f"{meta} has no NXmx incident_wavelength (give the beam energy, e.g. "
            "sxlab process --photon-energy EV)", path=seg.path, frame=g)

    # ----------------------------------------------------------------- identity
    def identity(self, *, fingerprint_frames: list[int] | None = None) -> dict:
        """A cheap description of this run's input, to recognise it again.

        Parameters
        ----------
        fingerprint_frames : list of int, optional
            Frames to hash (as a recorded identity lists them); default the first and
            the last frame that can be read (at most 8 tried from each end).

        Returns
        -------
        dict
            ``name``, ``n_frames``, ``frame_shape``, ``dtype``, ``files`` (one
            ``{"name", "path", "size", "mtime"}`` per file) and ``fingerprint``
            (``{"frames": [...], "sha256": ...}``: SHA-256 of the stored bytes of those
            frames, compressed chunks as stored when they are single chunks).

        Examples
        --------
        >>> run = open_run("run7_master.h5")  # doctest: +SKIP
        >>> run.identity()["fingerprint"]["frames"]  # doctest: +SKIP
        [0, 6999]
        """
        files = []
        for path in self.files:
            try:
                st = os.stat(path)
                size, mtime = int(st.st_size), float(st.st_mtime)
            except OSError:
                size, mtime = None, None
            files.append({"name": os.path.basename(path), "path": path, "size": size,
                          "mtime": mtime})
        n = len(self)
        if fingerprint_frames is None:
            chosen = []
            for order in (range(min(n, _FINGERPRINT_TRIES)),
                          range(n - 1, max(n - 1 - _FINGERPRINT_TRIES, -1), -1)):
                for i in order:
                    if i in chosen:
                        break
                    try:
                        self._stored_bytes(i)
                    except FrameReadError:
                        continue
                    chosen.append(i)
                    break
            fingerprint_frames = chosen
        digest = hashlib.sha256()
        for i in fingerprint_frames:
            digest.update(f"{i}:".encode())
            try:
                digest.update(self._stored_bytes(i))
            except (FrameReadError, IndexError):
                digest.update(b"<unreadable>")
        return {"name": self.name, "n_frames": n, "frame_shape": list(self.frame_shape),
                "dtype": self.dtype.str, "files": files,
                "fingerprint": {"frames": [int(i) for i in fingerprint_frames],
                                "sha256": digest.hexdigest()}}

    def _stored_bytes(self, i) -> bytes:
        blob = self.read_compressed(i)
        return blob if blob is not None else self.read_raw(i).tobytes()

    # ------------------------------------------------------------- lifecycle
    def close(self) -> None:
        """Close the cached file handles (they reopen on the next read)."""
        self._handles.close()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_handles"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._handles = _Handles()

    # --------------------------------------------------------------- display
    def _geometry_label(self) -> str:
        try:
            det = self.geometry
        except Exception as exc:  # display must not fail
            return f"unavailable ({type(exc).__name__})"
        if det is None:
            return "none"
        return f"{det.name or 'detector'}, {det.n_panels} panel(s)"

    def __repr__(self) -> str:
        files = self.files
        return (
            f"<Run {self.name!r}: {len(self)} frame(s) in {len(files)} file(s), frame shape "
            f"{self.frame_shape} {self.dtype}, geometry: {self._geometry_label()}>"
        )

    def _repr_html_(self) -> str:
        files = self.files
        shown = "<br>".join(html.escape(os.path.basename(p)) for p in files[:5])
        if len(files) > 5:
            shown += f"<br>… {len(files) - 5} more"
        datasets = sorted({s.dataset for s in self._segments})
        rows = [
            ("frames", str(len(self))),
            ("frame shape", f"{self.frame_shape} ({', '.join(self.dims)})"),
            ("stored dtype", str(self.dtype)),
            ("files", shown),
            ("dataset", html.escape(", ".join(datasets[:3]))),
            ("directory", html.escape(os.path.dirname(files[0]) if files else "")),
            ("geometry", html.escape(self._geometry_label())),
        ]
        body = "".join(
            f"<tr><th style='text-align:left;padding-right:1em'>{k}</th>"
            f"<td style='text-align:left'>{v}</td></tr>"
            for k, v in rows
        )
        return f"<div><b>Run</b> {html.escape(self.name)}<table>{body}</table></div>"


# ======================================================================= opening
def _expand(path_or_paths) -> list[str]:
    items = (
        [path_or_paths]
        if isinstance(path_or_paths, (str, bytes, os.PathLike))
        else list(path_or_paths)
    )
    out = []
    for item in items:
        p = os.fsdecode(os.fspath(item))
        if os.path.isdir(p):
            found = sorted(os.path.join(p, n) for n in os.listdir(p)
                           if n.lower().endswith(_FOLDER_SUFFIXES))
            if not found:
                raise FileNotFoundError(f"{p}: a folder without HDF5 files "
                                        f"({', '.join(_FOLDER_SUFFIXES)})")
            out.extend(os.path.abspath(f) for f in found)
        elif os.path.exists(p):
            out.append(os.path.abspath(p))
        elif glob.has_magic(p):
            matches = sorted(glob.glob(p))
            if not matches:
                raise FileNotFoundError(f"no files match {p!r}")
            out.extend(os.path.abspath(m) for m in matches)
        else:
            raise FileNotFoundError(f"no such file: {p!r}")
    if not out:
        raise ValueError("open_run needs at least one file")
    return out


def _run_name(path: str) -> str:
    base = os.path.basename(path)
    if base.endswith("_master.h5"):
        return base[: -len("_master.h5")]
    m = _DATA_FILE.match(base)
    if m:
        return m["prefix"]
    return os.path.splitext(base)[0]


def _link_target(base_file: str, filename: str) -> str:
    if filename in (".", ""):
        return base_file
    if os.path.isabs(filename):
        return filename
    return os.path.abspath(os.path.join(os.path.dirname(base_file), filename))


def _virtual_segments(ds: h5py.Dataset, meta: int) -> tuple[list[_Segment], tuple] | None:
    """Resolve a virtual dataset into per-file segments and the sources' frame shape.

    None when the mapping is not whole frames covering the dataset (then it is read
    through the VDS).
    """
    resolved = virtual_frame_blocks(ds)
    if resolved is None:
        return None
    blocks, frame_shape = resolved
    vfile = os.path.abspath(ds.file.filename)
    segs, pos = [], 0
    for first, count, file_name, dset_name, src_first in blocks:
        if first != pos:
            return None
        segs.append(_Segment(_link_target(vfile, file_name), dset_name, src_first, count,
                             meta))
        pos += count
    if pos != ds.shape[0]:
        return None
    return segs, frame_shape


def _dataset_segments(ds: h5py.Dataset, frame_ndim: int | None, meta: int):
    """Segments and frame shape of a frame dataset."""
    shape = tuple(ds.shape)
    path = os.path.abspath(ds.file.filename)
    if ds.is_virtual:
        resolved = _virtual_segments(ds, meta)
        if resolved is not None and frame_ndim in (None, len(resolved[1])):
            return resolved
    if (frame_ndim is not None and ds.ndim == frame_ndim) or (
        frame_ndim is None and ds.ndim == 2
    ):
        return [_Segment(path, ds.name, 0, 1, meta, single=True)], shape
    if ds.ndim not in (3, 4) or (frame_ndim is not None and ds.ndim != frame_ndim + 1):
        what = f"{frame_ndim}-D frames" if frame_ndim else "frames"
        raise ValueError(f"{path}:{ds.name} has shape {shape}, not a stack of {what}")
    segs = [_Segment(path, ds.name, 0, shape[0], meta)] if shape[0] else []
    return segs, shape[1:]


def _frame_candidates(f: h5py.File, ndims=(3, 4)) -> list[str]:
    found = []

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset) and obj.ndim in ndims and min(obj.shape) > 1:
            found.append("/" + name)

    f.visititems(visit)
    return found


@dataclass
class _Scan:
    path: str
    segments: list
    frame_shape: tuple
    dtype: np.dtype
    meta: _Meta
    is_master: bool


def _meta_for(f: h5py.File, path: str, frame_shape: tuple, eiger: bool) -> _Meta:
    """Mask/geometry source: the file itself when it is NXmx, else a sibling master."""
    nx = f if find_detectors(f) else None
    nx_path = path
    if nx is None:
        m = _DATA_FILE.match(os.path.basename(path))
        master = (os.path.join(os.path.dirname(path), m["prefix"] + "_master.h5")
                  if m else None)
        if master and os.path.exists(master):
            try:
                with h5py.File(master, "r") as mf:
                    return _meta_from_master(mf, master, frame_shape)
            except OSError:
                pass
        return _Meta(path, eiger_flags=eiger)
    return _meta_from_master(nx, nx_path, frame_shape)


def _meta_from_master(f: h5py.File, path: str, frame_shape: tuple) -> _Meta:
    dets = find_detectors(f)
    if not dets:
        return _Meta(path, eiger_flags=True)
    mask_file = mask_ds = geom = None
    for d in dets:
        for name in ("pixel_mask", "detectorSpecific/pixel_mask"):
            obj = d.get(name)
            if isinstance(obj, h5py.Dataset) and mask_ds is None:
                # Stacked frames have their mask as 2-D modules one below the other.
                if tuple(obj.shape) != tuple(frame_shape) and not (
                        len(frame_shape) == 3 and obj.ndim == 2
                        and obj.shape == (frame_shape[0] * frame_shape[1], frame_shape[2])):
                    raise ValueError(
                        f"{path}: {obj.name} has shape {obj.shape}, frames have "
                        f"{tuple(frame_shape)}"
                    )
                mask_file, mask_ds = path, obj.name
        has_modules = any(
            isinstance(d.get(k), h5py.Group)
            and as_str(d[k].attrs.get("NX_class", "")) == "NXdetector_module"
            for k in d
        )
        if geom is None and ("crystfel_geometry" in d or has_modules):
            geom = path
    return _Meta(path, eiger_flags=True, mask_file=mask_file, mask_dataset=mask_ds,
                 geometry_file=geom)


def _scan(path: str, data_path: str | None, frame_ndim: int | None) -> _Scan:
    with open_hdf5(path) as f:
        nxmx = bool(find_detectors(f))
        links = None
        if data_path is not None:
            obj = f.get(data_path)
            if obj is None:
                raise KeyError(f"{path}: no dataset {data_path!r}")
        else:
            obj = None
            entry = find_entry(f)
            group = entry.get("data") if entry is not None else None
            if isinstance(group, h5py.Group):
                signal = as_str(group.attrs.get("signal", "data")) or "data"
                link = group.get(signal, getlink=True)
                if isinstance(link, h5py.ExternalLink):
                    target = _link_target(path, link.filename)
                    if not os.path.exists(target):
                        raise FileNotFoundError(
                            f"{path}: {group.name}/{signal} links to missing file {target}"
                        )
                if link is not None:
                    obj = group.get(signal)
                if obj is None:
                    links = sorted(k for k in group if _DATA_LINK.match(k))
                    obj = group if links else None
            if obj is None:
                for p in _CXI_PATHS:
                    if isinstance(f.get(p), h5py.Dataset):
                        obj = f[p]
                        break
            if obj is None:
                cands = _frame_candidates(f)
                if not cands:  # a single-frame file: one 2-D image
                    cands = _frame_candidates(f, (frame_ndim or 2,))
                if len(cands) != 1:
                    what = "no image dataset" if not cands else (
                        f"several candidate datasets {cands}")
                    raise ValueError(f"{path}: {what}; give the data path (the geometry's "
                                     "'data =' line, or data_path=)")
                obj = f[cands[0]]
        if isinstance(obj, h5py.Group):
            links = links or sorted(k for k in obj if _DATA_LINK.match(k))
            if not links:
                raise ValueError(f"{path}: {obj.name} is a group without data_NNNNNN links")
            segs, frame_shape, dtype, eiger = _link_segments(path, obj, links, frame_ndim)
        elif isinstance(obj, h5py.Dataset):
            segs, frame_shape = _dataset_segments(obj, frame_ndim, 0)
            dtype = obj.dtype
            eiger = "image_nr_low" in obj.attrs
        else:
            raise ValueError(f"{path}: {data_path!r} is not a dataset")
        eiger = eiger or nxmx
        meta = _meta_for(f, path, frame_shape, eiger)
        is_master = any(s.path != path for s in segs)
        return _Scan(path, segs, tuple(frame_shape), np.dtype(dtype), meta, is_master)


def _link_segments(path: str, group: h5py.Group, links: list[str], frame_ndim):
    segs, frame_shape, dtype, eiger = [], None, None, False
    for name in links:
        link = group.get(name, getlink=True)
        if isinstance(link, h5py.ExternalLink):
            target = _link_target(path, link.filename)
            if not os.path.exists(target):
                raise FileNotFoundError(
                    f"{path}: {group.name}/{name} links to missing file {target}"
                )
            with open_hdf5(target) as df:
                ds = df.get(link.path)
                if not isinstance(ds, h5py.Dataset):
                    raise ValueError(f"{target}: no dataset {link.path}")
                s, shape = _dataset_segments(ds, frame_ndim, 0)
                dt, eiger = ds.dtype, eiger or "image_nr_low" in ds.attrs
        else:
            ds = group[name]
            s, shape = _dataset_segments(ds, frame_ndim, 0)
            dt, eiger = ds.dtype, eiger or "image_nr_low" in ds.attrs
        if frame_shape is None:
            frame_shape, dtype = shape, dt
        elif shape != frame_shape:
            raise ValueError(
                f"{path}: {group.name}/{name} has frames of shape {shape}, earlier files "
                f"{frame_shape}"
            )
        segs.extend(s)
    return segs, frame_shape, dtype, eiger


def _geometry_data_path(geometry, path: str) -> str | None:
    """The geometry's ``data`` location, when every panel has the same and the file has it."""
    places = {p.data for p in geometry.panels}
    if len(places) != 1:
        return None
    place = places.pop()
    if "%" in place:
        return None
    with open_hdf5(path) as f:
        return place if isinstance(f.get(place), h5py.Dataset) else None


def open_run(path_or_paths, *, data_path: str | None = None, geometry=None,
             name: str | None = None, check_chunks: bool = True) -> Run:
    """Open the frames of one run, lazily.

    Parameters
    ----------
    path_or_paths : str, path-like, glob pattern or list of them
        One of

        * an NXmx master file (``/entry/data/data`` as a virtual dataset, or only
          ``/entry/data/data_000001`` ... external links);
        * an EIGER data file (``/entry/data/data``; a ``<prefix>_master.h5`` next to it
          supplies pixel mask and geometry);
        * a CXI file (``/entry_1/data_1/data`` or ``/entry_1/instrument_1/detector_1/data``);
        * any HDF5 file with a 3-D ``(frame, ss, fs)`` or 4-D ``(frame, module, ss, fs)``
          dataset, found automatically when it is the only one (else give ``data_path``);
        * several of these (a list or a glob pattern, sorted), whose frames are
          concatenated in the given order. Data files that a master in the list already
          covers are skipped.
        * a folder: its HDF5 files (``.h5``, ``.hdf5``, ``.hdf``, ``.nxs``, ``.cxi``) in
          name order, e.g. one 2-D image per file as many synchrotron beamlines write
          serial data.
    data_path : str, optional
        Dataset (or group with ``data_NNNNNN`` links) holding the frames. A dataset with
        as many dims as one frame is read as a single frame. Default: the geometry's
        ``data`` location when the files have it, else found automatically.
    geometry : Detector, optional
        Geometry to attach; default: the one described by the NXmx master, if any.
    name : str, optional
        Run name (default: file name without ``_master.h5``/``_data_NNNNNN.h5``).
    check_chunks : bool
        Check the framing of each bitshuffle-LZ4 chunk before decoding it (a damaged
        chunk then raises :class:`FrameReadError` instead of crashing the filter). Costs
        a few percent of the read time.

    Returns
    -------
    Run
        Opening reads metadata only (virtual-dataset mappings, shapes, attributes); no
        frame data and no pixel mask are read until asked for.

    Raises
    ------
    FileNotFoundError
        A path does not exist, a glob matches nothing, or a master's external link
        points at a missing file (masters with a virtual dataset open regardless; the
        affected frames raise :class:`FrameReadError` when read).
    ValueError
        No frame dataset can be identified, or files disagree on the frame shape.

    Examples
    --------
    >>> run = open_run("run7_master.h5")                   # doctest: +SKIP
    >>> run = open_run("cheetah/r0012-*.cxi")              # doctest: +SKIP
    >>> run = open_run(["a.h5", "b.h5"], data_path="/data/data", geometry=det)  # doctest: +SKIP
    >>> len(run), run[0].dims                              # doctest: +SKIP
    (7000, ('ss', 'fs'))
    """
    paths = _expand(path_or_paths)
    frame_ndim = None
    if geometry is not None:
        frame_ndim = len(geometry.data_shape)
        if data_path is None:
            data_path = _geometry_data_path(geometry, paths[0])
    scans = [_scan(p, data_path, frame_ndim) for p in paths]
    covered = {s.path for sc in scans if sc.is_master for s in sc.segments}
    scans = [sc for sc in scans if sc.is_master or sc.path not in covered]
    frame_shape = scans[0].frame_shape
    segments, metas = [], []
    for k, sc in enumerate(scans):
        if sc.frame_shape != frame_shape:
            raise ValueError(
                f"{sc.path} has frames of shape {sc.frame_shape}, {scans[0].path} "
                f"{frame_shape}"
            )
        metas.append(sc.meta)
        segments.extend(_Segment(s.path, s.dataset, s.start, s.count, k, s.single)
                        for s in sc.segments)
    if geometry is not None:
        _check_geometry(geometry, frame_shape, "geometry argument")
        ref = _GeometryRef(geometry)
    else:
        src = next((m.geometry_file for m in metas if m.geometry_file), None)
        ref = _GeometryRef(None, src)
    return Run(segments, metas, frame_shape, scans[0].dtype,
               name=name if name is not None else _run_name(paths[0]), geometry=ref,
               check_chunks=check_chunks)
