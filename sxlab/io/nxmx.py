"""NeXus/NXmx files: an EIGER-like writer (master + data files) and a geometry reader.

The layout follows the DECTRIS file writer as far as other programs (DIALS, XDS with
Neggia, CrystFEL, sxlab) rely on it:

* ``<prefix>_master.h5`` holds the NXmx metadata, the virtual dataset
  ``/entry/data/data`` (``@signal="data"``) spanning all frames and external links
  ``/entry/data/data_000001`` ... to the data files;
* ``<prefix>_data_000001.h5`` ... hold up to ``frames_per_file`` frames each in
  ``/entry/data/data``, one compressed chunk per frame, with the DECTRIS attributes
  ``image_nr_low``/``image_nr_high`` (1-based, inclusive global frame numbers).

Every panel of the :class:`~sxlab.geometry.Detector` becomes an ``NXdetector_module``:
its ``module_offset`` translation places the corner of its first pixel relative to the
detector translation (the distance along the beam), and ``fast_pixel_direction`` /
``slow_pixel_direction``, which depend on it, carry the panel's lab-frame unit vectors and
the pixel size. This is the DECTRIS layout, and the one DIALS (dxtbx) needs to find every
panel where it is. The CrystFEL lab frame and the NeXus (McStas) frame coincide (+z along
the beam, +y up, right-handed), so vectors are written as they are.

Stacked detectors (frames ``(module, ss, fs)``, e.g. AGIPD) keep that shape in the data
files, but NXmx readers expect 2-D frames: the master's virtual dataset presents each
frame as ``(module * ss, fs)``, modules one below the other, and the ``data_origin`` of
each ``NXdetector_module`` points into that 2-D frame. :func:`read_nxmx_geometry` and
:func:`sxlab.io.open_run` recognise such a virtual dataset and give back stacked frames
and a stacked geometry.

The exact geometry is also stored as CrystFEL geometry text in
``/entry/instrument/detector/crystfel_geometry``, which :func:`read_nxmx_geometry`
prefers when present.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np

from sxlab.geometry import Beam, Detector, Panel

__all__ = [
    "NXmxWriter",
    "data_file_name",
    "nxmx_entries",
    "read_nxmx_geometry",
    "read_nxmx_wavelength",
    "unique_panel_name",
    "virtual_frame_blocks",
]

_DETECTOR = "/entry/instrument/detector"
_TRANSLATION = f"{_DETECTOR}/transformations/translation"
_GEOM_TEXT = "crystfel_geometry"
_FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))
# Names already used inside the NXdetector group; a panel of that name gets a prefix.
_RESERVED = {
    "beam_center_x", "beam_center_y", "bit_depth_image", "bit_depth_readout", "count_time",
    "crystfel_geometry", "depends_on", "description", "distance", "frame_time",
    "pixel_mask", "saturation_value", "sensor_material", "sensor_thickness", "transformations",
    "type", "underload_value", "x_pixel_size", "y_pixel_size",
}

# Sensor materials dxtbx accepts (it needs their X-ray attenuation).
_SENSOR_MATERIALS = {"Si", "Silicon", "CdTe", "GaAs"}

_LENGTH_UNITS = {
    "m": 1.0, "meter": 1.0, "meters": 1.0, "metre": 1.0, "metres": 1.0,
    "cm": 1e-2, "mm": 1e-3, "millimeter": 1e-3, "millimeters": 1e-3, "millimetre": 1e-3,
    "um": 1e-6, "µm": 1e-6, "μm": 1e-6, "micron": 1e-6, "microns": 1e-6,
    "micrometer": 1e-6, "micrometre": 1e-6, "nm": 1e-9, "nanometer": 1e-9,
    "angstrom": 1e-10, "angstroms": 1e-10, "a": 1e-10, "å": 1e-10, "Å": 1e-10,
}
_ANGLE_UNITS = {
    "rad": 1.0, "radian": 1.0, "radians": 1.0,
    "deg": np.pi / 180, "degree": np.pi / 180, "degrees": np.pi / 180,
}
_ENERGY_UNITS = {"ev": 1.0, "kev": 1e3, "j": 1.0 / 1.602176634e-19}


def _compression_kwargs(compression: str | None) -> dict:
    if compression is None:
        return {}
    if compression == "bslz4":
        return dict(hdf5plugin.Bitshuffle(cname="lz4"))
    if compression == "lz4":
        return dict(hdf5plugin.LZ4())
    if compression == "gzip":
        return {"compression": "gzip", "compression_opts": 4}
    raise ValueError(
        f"unknown compression {compression!r}; use 'bslz4', 'lz4', 'gzip' or None"
    )


def _flat_shape(frame_shape: tuple) -> tuple[int, int]:
    """2-D NXmx frame shape of a frame: stacked ``(module, ss, fs)`` becomes
    ``(module * ss, fs)``."""
    if len(frame_shape) == 3:
        return (frame_shape[0] * frame_shape[1], frame_shape[2])
    return tuple(frame_shape)


def data_file_name(master_path: str | os.PathLike, index: int) -> str:
    """Name of data file ``index`` (1-based) belonging to a master file.

    ``run_master.h5`` -> ``run_data_000001.h5``; a master not ending in ``_master.h5``
    uses its stem as prefix.

    Examples
    --------
    >>> data_file_name("/data/run7_master.h5", 2)
    '/data/run7_data_000002.h5'
    """
    master = os.fspath(master_path)
    prefix = master[: -len("_master.h5")] if master.endswith("_master.h5") else (
        os.path.splitext(master)[0]
    )
    return f"{prefix}_data_{index:06d}.h5"


def _utc_now() -> str:
    now = _dt.datetime.now(_dt.timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _iso(t: _dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _set_attrs(obj, **attrs) -> None:
    for k, v in attrs.items():
        obj.attrs[k] = v


def _group(parent, name: str, nx_class: str, **kwargs):
    g = parent.require_group(name) if not kwargs else parent.create_group(name, **kwargs)
    g.attrs["NX_class"] = nx_class
    return g


class NXmxWriter:
    """Write frames as an EIGER-like NXmx master file plus compressed data files.

    Parameters
    ----------
    master_path : str or path-like
        Master file, conventionally ``<prefix>_master.h5``; data files are named
        ``<prefix>_data_000001.h5`` ... next to it (see :func:`data_file_name`).
    detector : Detector
        Geometry; frames have shape ``detector.data_shape`` (``(ss, fs)`` or
        ``(module, ss, fs)`` for stacked detectors).
    n_frames : int, optional
        Number of frames to expect. When given, the master (with a virtual dataset
        covering all frames) is written at once, so readers can open it while frames
        arrive; if fewer frames are written it is rewritten on :meth:`close`. Otherwise the
        master is written on :meth:`close`.
    frames_per_file : int
        Frames per data file.
    dtype : str or numpy dtype
        Stored pixel type (e.g. ``"uint16"``, ``"uint32"``, ``"int32"``, ``"float32"``).
    compression : {"bslz4", "lz4", "gzip", None}
        Chunk filter: bitshuffle + LZ4 (HDF5 filter 32008, as written by EIGER
        detectors), LZ4 (32004), gzip, or none.
    pixel_mask : array_like, optional
        NXmx ``pixel_mask`` of shape ``detector.data_shape``: 0 for good pixels, NXmx bit
        flags otherwise (a boolean array sets bit 0 where True). Default: bit 0 set
        where ``detector.bad_pixel_mask()`` is True.
    saturation_value : number, optional
        Default: the smallest finite ``max_adu`` of the panels, else ``2**bits - 3`` for
        unsigned and ``2**(bits-1) - 1`` for signed integer data.
    count_time, frame_time : float, optional
        Exposure time and frame period in seconds.
    sample_name : str
        ``/entry/sample/name``.
    extra_attrs : mapping, optional
        Additional attributes set on ``/entry`` of the master file.
    start_time : datetime.datetime, optional
        Start time recorded in the file (timezone-aware; default: now). Giving it makes the
        files reproducible byte for byte: the end time is then derived from it and
        ``frame_time`` instead of the clock.
    embed_geometry : bool
        Store the exact geometry as CrystFEL text in
        ``/entry/instrument/detector/crystfel_geometry``.
    sensor_material : {"Si", "CdTe", "GaAs"}
        NXmx ``sensor_material`` (DIALS needs it for parallax correction).
    sensor_thickness_m : float
        NXmx ``sensor_thickness`` in metres.
    frame_info : mapping of str to dtype, optional
        Per-frame values to store with the frames, given to :meth:`write` /
        :meth:`write_chunk` as keywords: ``/entry/data/<name>`` in each data file and,
        concatenated, in the master. ``frame_number`` (e.g. the frame numbers of the
        source run when only some frames are stored) becomes the NXdata axis of the
        frame dimension.
    collections : mapping, optional
        ``{name: {field: value}}``: NXcollection groups ``/entry/<name>`` of the master
        (e.g. how the frames were selected). :attr:`collections` can be changed while
        writing; every master write uses its current content.
    atomic : bool
        For files that others read while they are written: each data file is written as
        ``<name>.part`` and renamed when complete, and the master is replaced atomically
        (written beside it, then renamed) at start and whenever a data file completes,
        with a virtual dataset over the complete data files only. A reader never sees a
        partial file or a frame that is not complete. Not with ``n_frames``.
    resume : bool
        With ``atomic``: keep the complete data files an earlier writer of the same master
        left (their frames count as written, :meth:`stored_info` lists their
        ``frame_info``), delete its ``.part`` files and go on with the next data file.

    Notes
    -----
    ``detector/distance`` and the detector translation are the z of the first panel;
    each module's ``module_offset`` is its first-pixel corner relative to that
    translation. Camera lengths that come from file headers (NaN ``clen``) are written as
    0; the embedded CrystFEL text keeps the header reference.

    ``saturation_value`` follows NXmx (values above it are invalid) and integer data get
    ``underload_value`` 0 (negative readings are flags); dxtbx derives the trusted range
    ``(underload_value - 1, saturation_value)`` from them, exclusive at both ends.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from sxlab.geometry import builtin_geometry
    >>> det = builtin_geometry("eiger4m")
    >>> d = tempfile.mkdtemp()
    >>> with NXmxWriter(os.path.join(d, "run1_master.h5"), det, frames_per_file=2,
    ...                 embed_geometry=False) as w:
    ...     w.write_many(np.zeros((3, *det.data_shape), np.uint16))
    >>> sorted(os.listdir(d))
    ['run1_data_000001.h5', 'run1_data_000002.h5', 'run1_master.h5']
    """

    def __init__(
        self,
        master_path: str | os.PathLike,
        detector: Detector,
        *,
        n_frames: int | None = None,
        frames_per_file: int = 1000,
        dtype="uint16",
        compression: str | None = "bslz4",
        pixel_mask=None,
        saturation_value=None,
        count_time: float | None = None,
        frame_time: float | None = None,
        sample_name: str = "",
        extra_attrs: Mapping | None = None,
        embed_geometry: bool = True,
        start_time: _dt.datetime | None = None,
        sensor_material: str = "Si",
        sensor_thickness_m: float = 450e-6,
        frame_info: Mapping | None = None,
        collections: Mapping | None = None,
        atomic: bool = False,
        resume: bool = False,
    ):
        self.master_path = os.fspath(master_path)
        self.detector = detector
        self.dtype = np.dtype(dtype)
        if self.dtype.kind not in "uifb":
            raise ValueError(f"unsupported pixel dtype {self.dtype}")
        if int(frames_per_file) < 1:
            raise ValueError(f"frames_per_file must be >= 1, got {frames_per_file}")
        if n_frames is not None and int(n_frames) < 0:
            raise ValueError(f"n_frames must be >= 0, got {n_frames}")
        self.frames_per_file = int(frames_per_file)
        self.n_frames = None if n_frames is None else int(n_frames)
        self.compression = compression
        self._filter = _compression_kwargs(compression)
        self.frame_shape = tuple(detector.data_shape)
        self.master_shape = _flat_shape(self.frame_shape)
        self.pixel_mask = self._make_pixel_mask(pixel_mask)
        self._mask_chunk: bytes | None = None
        self.saturation_value = saturation_value
        self.count_time = count_time
        self.frame_time = frame_time
        self.sample_name = sample_name
        if sensor_material not in _SENSOR_MATERIALS:
            raise ValueError(
                f"sensor_material {sensor_material!r} is not one NXmx readers know; use one "
                f"of {sorted(_SENSOR_MATERIALS)}"
            )
        if not float(sensor_thickness_m) > 0:
            raise ValueError(f"sensor_thickness_m must be positive, got {sensor_thickness_m}")
        self.sensor_material = sensor_material
        self.sensor_thickness_m = float(sensor_thickness_m)
        self.extra_attrs = dict(extra_attrs or {})
        self.embed_geometry = embed_geometry
        self._geometry_text = None
        if embed_geometry:
            from sxlab.io.crystfel_geom import write_geom

            self._geometry_text = write_geom(detector)
        self._fixed_time = start_time is not None
        self._start = start_time if start_time is not None else _dt.datetime.now(
            _dt.timezone.utc)
        self.frame_info = {k: np.dtype(v) for k, v in (frame_info or {}).items()}
        bad = [k for k in self.frame_info if k == "data" or not re.fullmatch(r"\w+", k)]
        if bad:
            raise ValueError(f"frame_info names {bad} are not usable dataset names")
        self.collections = {k: dict(v) for k, v in (collections or {}).items()}
        self.atomic = bool(atomic)
        if self.atomic and self.n_frames is not None:
            raise ValueError("atomic=True writes the master as files complete; n_frames "
                             "(a master written ahead) does not go with it")
        if resume and not self.atomic:
            raise ValueError("resume=True needs atomic=True (complete files are recognised "
                             "by their final names)")
        self.n_written = 0
        self.data_paths: list[str] = []
        self._counts: list[int] = []
        self._info: list[dict[str, list]] = []
        self._file: h5py.File | None = None
        self._dset = None
        self._info_dsets: dict = {}
        self._closed = False
        if resume:
            self._resume()
        if self.n_frames is not None:
            self._write_master(self._planned_counts())
        elif self.atomic:
            self._write_master(self._counts)

    # ----------------------------------------------------------------- helpers
    def _make_pixel_mask(self, pixel_mask) -> np.ndarray:
        if pixel_mask is None:
            return self.detector.bad_pixel_mask().astype(np.uint32)
        pm = np.asarray(pixel_mask)
        if pm.shape != self.frame_shape:
            raise ValueError(
                f"pixel_mask shape {pm.shape} does not match detector data shape "
                f"{self.frame_shape}"
            )
        if pm.dtype == bool:
            return pm.astype(np.uint32)
        if pm.dtype.kind not in "ui" or (pm.dtype.kind == "i" and pm.size and pm.min() < 0):
            raise ValueError("pixel_mask must be boolean or non-negative integer flags")
        return pm.astype(np.uint32)

    def _planned_counts(self) -> list[int]:
        n, fpf = self.n_frames, self.frames_per_file
        return [min(fpf, n - k) for k in range(0, n, fpf)]

    def _default_saturation(self):
        if self.saturation_value is not None:
            return self.saturation_value
        finite = [p.max_adu for p in self.detector.panels if np.isfinite(p.max_adu)]
        if self.dtype.kind in "ui":
            info = np.iinfo(self.dtype)
            top = info.max - 2 if self.dtype.kind == "u" else info.max
            return int(min([top, *[int(v) for v in finite]]))
        return float(min(finite)) if finite else None

    def _distance(self) -> float:
        p = self.detector.panels[0]
        z = p.clen + p.coffset
        return float(z) if np.isfinite(z) else 0.0

    # ------------------------------------------------------------------ frames
    def _check_frame(self, frame, index: int) -> np.ndarray:
        arr = np.asarray(frame)
        if arr.shape != self.frame_shape:
            raise ValueError(
                f"frame {index}: shape {arr.shape} does not match the detector data shape "
                f"{self.frame_shape}"
            )
        if arr.dtype != self.dtype and not np.can_cast(arr.dtype, self.dtype, "safe"):
            with np.errstate(invalid="ignore", over="ignore"):
                conv = arr.astype(self.dtype)
                same = arr.dtype.kind in "uifb" and np.array_equal(conv, arr)
            if not same:
                raise ValueError(
                    f"frame {index}: values of dtype {arr.dtype} cannot be stored as "
                    f"{self.dtype} without loss"
                )
            arr = conv
        return arr

    def _next_dataset(self):
        """The data-file dataset receiving the next frame (opening a new file if needed)."""
        if self._closed:
            raise ValueError(f"NXmxWriter for {self.master_path} is closed")
        index = self.n_written
        if self.n_frames is not None and index >= self.n_frames:
            raise ValueError(
                f"frame {index}: more frames than n_frames={self.n_frames} announced"
            )
        if self._file is not None and self._counts[-1] >= self.frames_per_file:
            self._close_data_file()
        if self._file is None:
            self._open_data_file(index)
        j = self._counts[-1]
        self._dset.resize(j + 1, axis=0)
        return self._dset, j

    def _open_data_file(self, index: int) -> None:
        cap = self.frames_per_file
        if self.n_frames is not None:
            cap = min(cap, self.n_frames - index)
        path = data_file_name(self.master_path, len(self._counts) + 1)
        f = h5py.File(path + ".part" if self.atomic else path, "w")
        f.attrs["NX_class"] = "NXroot"
        entry = _group(f, "entry", "NXentry")
        data = _group(entry, "data", "NXdata")
        data.attrs["signal"] = "data"
        dset = data.create_dataset(
            "data",
            shape=(0, *self.frame_shape),
            maxshape=(cap, *self.frame_shape),
            chunks=(1, *self.frame_shape),
            dtype=self.dtype,
            **self._filter,
        )
        dset.attrs["image_nr_low"] = np.int64(index + 1)
        dset.attrs["image_nr_high"] = np.int64(index + cap)
        self._info_dsets = {
            name: data.create_dataset(name, shape=(0,), maxshape=(cap,), dtype=dt)
            for name, dt in self.frame_info.items()
        }
        self._file, self._dset = f, dset
        self.data_paths.append(path)
        self._counts.append(0)
        self._info.append({name: [] for name in self.frame_info})

    def _advance(self, info: dict) -> None:
        missing = set(self.frame_info) - set(info)
        unknown = set(info) - set(self.frame_info)
        if missing or unknown:
            raise ValueError(
                f"frame {self.n_written}: per-frame values {sorted(info)} given, the writer "
                f"stores {sorted(self.frame_info)}"
            )
        j = self._counts[-1]
        for name, ds in self._info_dsets.items():
            ds.resize(j + 1, axis=0)
            ds[j] = info[name]
            self._info[-1][name].append(info[name])
        self.n_written += 1
        self._counts[-1] += 1

    @property
    def frames_in_file(self) -> int:
        """Frames in the data file being written (0 when none is open)."""
        return self._counts[-1] if self._file is not None else 0

    def stored_info(self) -> dict[str, np.ndarray]:
        """The ``frame_info`` values of every frame written so far, in frame order."""
        return {name: np.concatenate([np.asarray(i[name], dtype=dt) for i in self._info])
                if self._info else np.zeros(0, dt) for name, dt in self.frame_info.items()}

    def write(self, frame, **info) -> None:
        """Append one frame of shape ``detector.data_shape`` (``info``: its
        ``frame_info`` values).

        Raises
        ------
        ValueError
            If the shape differs, the values do not fit the stored dtype, or more than
            ``n_frames`` frames are written; the message names the frame index.
        """
        arr = self._check_frame(frame, self.n_written)
        dset, j = self._next_dataset()
        dset[j] = arr
        self._advance(info)

    def write_many(self, frames: Iterable) -> None:
        """Append several frames (an array with a leading frame axis or an iterable)."""
        for frame in frames:
            self.write(frame)

    def write_chunk(self, blob, **info) -> None:
        """Append one frame given as an already compressed chunk (HDF5 direct chunk write).

        ``blob`` must be the frame encoded with this writer's ``compression`` (for
        ``"bslz4"`` the whole bitshuffle-LZ4 block including its 12-byte header, as sent
        by EIGER detectors) and decompress to ``detector.data_shape`` in ``dtype``. It is
        stored without being decoded or checked. ``info``: the frame's ``frame_info``
        values.
        """
        if self.compression is None:
            raise ValueError("write_chunk needs a compressed writer (compression is None)")
        dset, j = self._next_dataset()
        dset.id.write_direct_chunk((j,) + (0,) * len(self.frame_shape), bytes(blob))
        self._advance(info)

    # ------------------------------------------------------------------ master
    def _close_data_file(self) -> None:
        if self._file is not None:
            low = int(self._dset.attrs["image_nr_low"])
            self._dset.attrs["image_nr_high"] = np.int64(low + self._dset.shape[0] - 1)
            self._file.close()
            if self.atomic:
                path = self.data_paths[-1]
                os.replace(path + ".part", path)
                self._write_master(self._counts)
        self._file = self._dset = None
        self._info_dsets = {}

    def finish_file(self) -> None:
        """Close the data file being written now (with ``atomic``: rename it and rewrite
        the master so that its frames are visible); the next frame starts a new one."""
        self._close_data_file()

    def _resume(self) -> None:
        prefix = data_file_name(self.master_path, 1)[: -len("000001.h5")]
        for part in sorted(Path(prefix).parent.glob(Path(prefix).name + "*.h5.part")):
            part.unlink()
        while True:
            path = data_file_name(self.master_path, len(self._counts) + 1)
            if not os.path.exists(path):
                break
            with h5py.File(path, "r") as f:
                ds = f.get("entry/data/data")
                if not isinstance(ds, h5py.Dataset):
                    raise ValueError(f"{path}: no /entry/data/data to resume from")
                if tuple(ds.shape[1:]) != self.frame_shape or ds.dtype != self.dtype:
                    raise ValueError(
                        f"{path} holds {ds.dtype} frames of shape {tuple(ds.shape[1:])}; "
                        f"this writer writes {self.dtype} frames of shape {self.frame_shape}"
                    )
                info = {}
                for name, dt in self.frame_info.items():
                    values = f.get(f"entry/data/{name}")
                    if not isinstance(values, h5py.Dataset) or len(values) != ds.shape[0]:
                        raise ValueError(f"{path}: no /entry/data/{name} for its "
                                         f"{ds.shape[0]} frames")
                    info[name] = values[()].astype(dt).tolist()
                self._counts.append(int(ds.shape[0]))
            self.data_paths.append(path)
            self._info.append(info)
        self.n_written = int(sum(self._counts))

    def _write_master(self, counts: list[int], end_time: str | None = None) -> None:
        det = self.detector
        shape = self.master_shape
        total = int(sum(counts))
        # A master that exists already is replaced atomically (readers see the old or
        # the new file, never half of one, and an open reader does not block the write).
        replace = self.atomic or os.path.exists(self.master_path)
        target = self.master_path + ".tmp" if replace else self.master_path
        with h5py.File(target, "w") as f:
            _set_attrs(f, NX_class="NXroot", default="entry", creator="sxlab")
            entry = _group(f, "entry", "NXentry")
            entry.attrs["default"] = "data"
            for k, v in self.extra_attrs.items():
                entry.attrs[k] = v
            entry["definition"] = "NXmx"
            entry["start_time"] = _iso(self._start)
            est = self._start
            if self.frame_time is not None:
                est = est + _dt.timedelta(seconds=float(self.frame_time) * total)
            entry["end_time_estimated"] = _iso(est)
            if end_time is not None:
                entry["end_time"] = end_time

            data = _group(entry, "data", "NXdata")
            data.attrs["signal"] = "data"
            if total:
                self._write_vds(data, counts)
            else:
                data.create_dataset("data", shape=(0, *shape), dtype=self.dtype)
            for k in range(len(counts)):
                name = os.path.basename(data_file_name(self.master_path, k + 1))
                data[f"data_{k + 1:06d}"] = h5py.ExternalLink(name, "/entry/data/data")
            self._write_frame_info(data, counts)
            for name, fields in self.collections.items():
                coll = _group(entry, name, "NXcollection")
                for key, value in fields.items():
                    coll[key] = value

            self._write_instrument(entry, det)
            sample = _group(entry, "sample", "NXsample")
            sample["name"] = self.sample_name
            sample["depends_on"] = "."
            source = _group(entry, "source", "NXsource")
            source["name"] = "unknown"
        if replace:
            os.replace(target, self.master_path)

    def _write_frame_info(self, data, counts: list[int]) -> None:
        """Per-frame values of the frames in the master (when all of them are known)."""
        n = len(counts)
        if not self.frame_info or [len(next(iter(i.values()), [])) for i in self._info[:n]] \
                != list(counts):
            return
        for name, dt in self.frame_info.items():
            values = [np.asarray(i[name], dtype=dt) for i in self._info[:n]]
            data[name] = np.concatenate(values) if values else np.zeros(0, dt)
        if "frame_number" in self.frame_info:
            data.attrs["axes"] = ["frame_number"] + ["."] * len(self.master_shape)
            data.attrs["frame_number_indices"] = 0

    def _write_instrument(self, entry, det: Detector) -> None:
        inst = _group(entry, "instrument", "NXinstrument")
        inst["name"] = "sxlab"
        inst["name"].attrs["short_name"] = "sxlab"
        beam = _group(inst, "beam", "NXbeam")
        beam["incident_wavelength"] = float(det.beam.wavelength_A)
        beam["incident_wavelength"].attrs["units"] = "angstrom"
        if det.beam.bandwidth > 0:
            spread = _FWHM_PER_SIGMA * det.beam.bandwidth * det.beam.wavelength_A
            beam["incident_wavelength_spread"] = float(spread)
            beam["incident_wavelength_spread"].attrs["units"] = "angstrom"
        beam["total_flux"] = np.nan
        beam["total_flux"].attrs["units"] = "Hz"

        d = _group(inst, "detector", "NXdetector", track_order=True)
        p0 = det.panels[0]
        dist = self._distance()
        d["description"] = det.name or "sxlab detector"
        d["type"] = "HPC"
        d["sensor_material"] = self.sensor_material
        d["sensor_thickness"] = float(self.sensor_thickness_m)
        d["sensor_thickness"].attrs["units"] = "m"
        d["distance"] = dist
        d["distance"].attrs["units"] = "m"
        try:
            with np.errstate(all="ignore"):
                bcx, bcy = det.beam_center_px(0)
        except (np.linalg.LinAlgError, ValueError, ZeroDivisionError):
            bcx = bcy = np.nan
        for name, val in (("beam_center_x", bcx), ("beam_center_y", bcy)):
            d[name] = float(val)
            d[name].attrs["units"] = "pixel"
        for name in ("x_pixel_size", "y_pixel_size"):
            d[name] = p0.pixel_size_m
            d[name].attrs["units"] = "m"
        for name, val in (("count_time", self.count_time), ("frame_time", self.frame_time)):
            if val is not None:
                d[name] = float(val)
                d[name].attrs["units"] = "s"
        sat = self._default_saturation()
        if sat is not None:
            d["saturation_value"] = sat
        if self.dtype.kind in "ui":
            # Integer readings below 0 are flags (see sxlab.io.hdf5), so 0 is the lowest
            # valid value; dxtbx turns this into the trusted range (-1, saturation).
            d["underload_value"] = 0
        bits = 8 * self.dtype.itemsize
        d["bit_depth_readout"] = np.int32(bits)
        d["bit_depth_image"] = np.int32(bits)
        # Compressed once: a master rewritten as data files complete reuses the chunk.
        if self._mask_chunk is None:
            self._mask_chunk = zlib.compress(
                np.ascontiguousarray(self.pixel_mask, dtype="<u4").tobytes(), 1)
        pm = d.create_dataset("pixel_mask", shape=self.master_shape, dtype="<u4",
                              chunks=self.master_shape, compression="gzip",
                              compression_opts=1)
        pm.id.write_direct_chunk((0, 0), self._mask_chunk)
        d["depends_on"] = _TRANSLATION
        tr = _group(d, "transformations", "NXtransformations")
        t = tr.create_dataset("translation", data=dist)
        _set_attrs(
            t,
            transformation_type="translation",
            units="m",
            vector=np.array([0.0, 0.0, 1.0]),
            depends_on=".",
        )
        if self._geometry_text is not None:
            d[_GEOM_TEXT] = self._geometry_text
        origin = np.array([0.0, 0.0, dist])
        for i, p in enumerate(det.panels):
            name = p.name if p.name not in _RESERVED else f"module_{p.name}"
            m = _group(d, name, "NXdetector_module")
            data_origin, data_size = self._module_extent(i)
            m["data_origin"] = np.array(data_origin, dtype=np.int64)
            m["data_size"] = np.array(data_size, dtype=np.int64)
            corner = p.corner_m()
            if not np.isfinite(corner[2]):
                corner[2] = p.coffset if np.isfinite(p.coffset) else 0.0
            # The panel position is its own transformation that the pixel directions
            # depend on (the DECTRIS layout): dxtbx builds panel origins from the
            # depends_on chain of fast_pixel_direction and ignores an offset written on
            # the pixel directions themselves.
            off = m.create_dataset("module_offset", data=0.0)
            _set_attrs(
                off,
                transformation_type="translation",
                units="m",
                vector=np.array([1.0, 0.0, 0.0]),
                offset=corner - origin,
                offset_units="m",
                depends_on=_TRANSLATION,
            )
            for field_name, vec in (("fast_pixel_direction", p.fs),
                                    ("slow_pixel_direction", p.ss)):
                ds = m.create_dataset(field_name, data=p.pixel_size_m)
                _set_attrs(
                    ds,
                    transformation_type="translation",
                    units="m",
                    vector=np.asarray(vec, dtype=float),
                    offset=np.zeros(3),
                    offset_units="m",
                    depends_on=off.name,
                )

    def _module_extent(self, index: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """``data_origin`` and ``data_size`` (slow, fast) of panel ``index`` in the
        master's 2-D frames (stacked modules are placed one below the other)."""
        p = self.detector.panels[index]
        ss0 = p.min_ss
        if p.slab is not None:
            ss0 += p.slab * self.frame_shape[-2]
        return (ss0, p.min_fs), (p.height, p.width)

    def _write_vds(self, group, counts: list[int]) -> None:
        """The master's virtual dataset over all data files (relative file names).

        Stacked frames ``(module, ss, fs)`` are presented as 2-D ``(module * ss, fs)``
        frames, modules one below the other, as NXmx readers expect: each module of each
        data file is one mapping. Built with the low-level API so that no creation time
        is stored: the same frames give the same master file.
        """
        shape, flat = self.frame_shape, self.master_shape
        total = int(sum(counts))
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_fill_value(np.zeros(1, self.dtype))
        dcpl.set_obj_track_times(False)
        vspace = h5py.h5s.create_simple((total, *flat))
        offset = 0
        for k, n in enumerate(counts):
            name = os.path.basename(data_file_name(self.master_path, k + 1)).encode()
            src_space = h5py.h5s.create_simple((n, *shape))
            if len(shape) == 2:
                vspace.select_hyperslab((offset, 0, 0), (n, *shape))
                dcpl.set_virtual(vspace, name, b"/entry/data/data", src_space)
            else:
                n_mod, ny, nx = shape
                for mod in range(n_mod):
                    src_space.select_hyperslab((0, mod, 0, 0), (n, 1, ny, nx))
                    vspace.select_hyperslab((offset, mod * ny, 0), (n, ny, nx))
                    dcpl.set_virtual(vspace, name, b"/entry/data/data", src_space)
            offset += n
        tid = h5py.h5t.py_create(self.dtype, logical=1)
        h5py.h5d.create(group.id, b"data", tid, h5py.h5s.create_simple((total, *flat)),
                        dcpl=dcpl)

    # ---------------------------------------------------------------- lifecycle
    def close(self) -> None:
        """Finish the last data file and write (or complete) the master file."""
        if self._closed:
            return
        self._close_data_file()
        self._closed = True
        if self._fixed_time:
            end = _iso(self._start + _dt.timedelta(
                seconds=float(self.frame_time or 0.0) * self.n_written))
        else:
            end = _utc_now()
        # Rewritten whole, never reopened for writing: a reader (a run watcher, a
        # processing job) may hold the master open while the run ends.
        self._write_master(self._counts, end_time=end)

    def __enter__(self) -> NXmxWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"<NXmxWriter {self.master_path!r} ({state}): {self.n_written} frame(s) of "
            f"{self.frame_shape} {self.dtype} in {len(self.data_paths)} data file(s), "
            f"compression={self.compression!r}>"
        )


# ====================================================================== reading
def as_str(value) -> str:
    """Decode an HDF5 string value (bytes, numpy scalar or 0-d/1-element array) to str."""
    if isinstance(value, h5py.Dataset):
        value = value[()]
    if isinstance(value, np.ndarray):
        value = value.ravel()[0] if value.size else ""
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


def _box(space) -> list[tuple[int, int]] | None:
    """(start, size) per dimension of a selection that is one rectangular block."""
    shape = space.shape
    kind = space.get_select_type()
    if kind == h5py.h5s.SEL_ALL:
        return [(0, int(n)) for n in shape]
    if kind != h5py.h5s.SEL_HYPERSLABS or not space.is_regular_hyperslab():
        return None
    out = []
    for start, stride, count, block in zip(*space.get_regular_hyperslab(), strict=True):
        if count != 1 and stride != block:
            return None
        out.append((int(start), int(count * block)))
    return out


def virtual_frame_blocks(ds: h5py.Dataset):
    """Resolve a virtual frame-stack dataset into blocks of whole source frames.

    Parameters
    ----------
    ds : h5py.Dataset
        A virtual dataset with frames along its first axis (reads metadata only; the
        source files need not exist).

    Returns
    -------
    tuple of (list, tuple) or None
        ``(blocks, frame_shape)``: ``blocks`` are ``(first_frame, n_frames, file_name,
        dataset_name, first_source_frame)`` sorted by ``first_frame`` (file names as
        stored, relative to the virtual dataset's file), ``frame_shape`` the shape of one
        frame in the sources. Two layouts are recognised: sources with the same frame
        shape, and 4-D ``(frame, module, ss, fs)`` sources presented as 2-D
        ``(module * ss, fs)`` frames (one mapping per module, as :class:`NXmxWriter`
        writes stacked detectors), which gives ``frame_shape == (module, ss, fs)``.
        None for any other mapping.

    Examples
    --------
    >>> with h5py.File("run_master.h5") as f:  # doctest: +SKIP
    ...     blocks, shape = virtual_frame_blocks(f["/entry/data/data"])
    """
    if not ds.is_virtual or ds.ndim < 3:
        return None
    vshape = tuple(ds.shape)
    whole = [(0, int(n)) for n in vshape[1:]]
    plain, stacked = [], {}
    frame_shape = None
    for m in ds.virtual_sources():
        vb, sb = _box(m.vspace), _box(m.src_space)
        if vb is None or sb is None:
            return None
        if not sb and m.src_space.get_select_type() == h5py.h5s.SEL_ALL:
            sb = [(0, vb[0][1]), *whole]  # all of a source whose extent is not stored
        # HDF5 may store a source extent trimmed to the selection: use boxes, not extents.
        if len(sb) < 3 or vb[0][1] != sb[0][1]:
            return None
        key = (vb[0][0], vb[0][1], m.file_name, m.dset_name, sb[0][0])
        if len(sb) == len(vshape):
            if vb[1:] != whole or sb[1:] != whole:
                return None
            shape = vshape[1:]
            plain.append(key)
        elif len(vshape) == 3 and len(sb) == 4:
            (mod, one), (ss0, ny), fs_box = sb[1:]
            if (one != 1 or ss0 != 0 or fs_box != whole[1] or vshape[1] % ny
                    or vb[1] != (mod * ny, ny) or vb[2] != whole[1]):
                return None
            shape = (vshape[1] // ny, ny, vshape[2])
            stacked.setdefault(key, set()).add(mod)
        else:
            return None
        if frame_shape not in (None, shape):
            return None
        frame_shape = shape
    if plain and stacked:
        return None
    if stacked and any(mods != set(range(frame_shape[0])) for mods in stacked.values()):
        return None
    blocks = sorted(plain or stacked)
    return (blocks, frame_shape) if blocks else None


def _stacked_shape(entry) -> tuple[int, int, int] | None:
    """Module shape of an entry whose frames are stacked modules shown as 2-D frames."""
    data = entry.get("data")
    if not isinstance(data, h5py.Group):
        return None
    signal = as_str(data.attrs.get("signal", "data")) or "data"
    ds = data.get(signal)
    if not isinstance(ds, h5py.Dataset):
        return None
    resolved = virtual_frame_blocks(ds)
    if resolved is None or len(resolved[1]) != 3:
        return None
    return resolved[1]


def _nx_class(obj) -> str:
    return as_str(obj.attrs.get("NX_class", ""))


def _natural_key(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _children_of_class(group, nx_class: str) -> list:
    """Member groups of an NX class, in creation order where the file tracks it, else in
    natural name order (``module2`` before ``module10``)."""
    names = list(group)
    if not group.id.get_create_plist().get_link_creation_order():
        names.sort(key=_natural_key)
    out = []
    for name in names:
        link = group.get(name, getlink=True)
        if isinstance(link, h5py.ExternalLink):
            continue
        obj = group.get(name)
        if isinstance(obj, h5py.Group) and _nx_class(obj) == nx_class:
            out.append(obj)
    return out


def find_entry(f: h5py.File):
    """The NXentry group of a NeXus file (``default`` attribute, ``/entry`` or first)."""
    default = as_str(f.attrs.get("default", ""))
    if default and isinstance(f.get(default), h5py.Group):
        return f[default]
    if isinstance(f.get("entry"), h5py.Group):
        return f["entry"]
    entries = _children_of_class(f, "NXentry")
    return entries[0] if entries else None


def nxmx_entries(f: h5py.File) -> list:
    """The groups holding NXmx content: the file's NXentry and those of its NXsubentry
    groups whose ``definition`` is NXmx (DIALS exports write one per experiment)."""
    entry = find_entry(f)
    if entry is None:
        return []
    subs = [g for g in _children_of_class(entry, "NXsubentry")
            if "definition" in g and as_str(g["definition"]).strip() == "NXmx"]
    return [entry, *subs]


def _entry_detectors(f: h5py.File, entry) -> list:
    dets = []
    for inst in _children_of_class(entry, "NXinstrument"):
        dets.extend(_children_of_class(inst, "NXdetector"))
    if not dets and entry.name == "/entry" and isinstance(f.get(_DETECTOR), h5py.Group):
        dets.append(f[_DETECTOR])
    return dets


def find_detectors(f: h5py.File) -> list:
    """NXdetector groups under the NXinstrument groups of the file's first NXmx entry
    that has any (see :func:`nxmx_entries`)."""
    for entry in nxmx_entries(f):
        dets = _entry_detectors(f, entry)
        if dets:
            return dets
    return []


def _unit_factor(obj, attr: str, table: dict, default: str, what: str) -> float:
    unit = as_str(obj.attrs.get(attr, default)).strip()
    for key in (unit, unit.lower()):
        if key in table:
            return table[key]
    raise ValueError(f"{obj.name}: unknown {what} unit {unit!r}")


def _scalar(ds) -> float:
    v = np.asarray(ds[()], dtype=float).ravel()
    if v.size == 0:
        raise ValueError(f"{ds.name}: empty value")
    return float(v[0])


def _resolve(f: h5py.File, base_group, ref: str):
    """The object that a ``depends_on`` reference from ``base_group`` names."""
    if ref.startswith("/"):
        obj = f.get(ref)
    else:
        obj = base_group.get(ref)
        if obj is None:
            obj = f.get("/" + ref)
    if obj is None:
        raise ValueError(f"depends_on target {ref!r} (from {base_group.name}) not found")
    return obj


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    x, y, z = axis
    c, s = np.cos(angle), np.sin(angle)
    C = 1.0 - c
    return np.array(
        [
            [c + x * x * C, x * y * C - z * s, x * z * C + y * s],
            [y * x * C + z * s, c + y * y * C, y * z * C - x * s],
            [z * x * C - y * s, z * y * C + x * s, c + z * z * C],
        ]
    )


def _transformation_matrix(ds, value: float | None = None) -> np.ndarray:
    """4 x 4 matrix of one NeXus transformation (lengths in metres)."""
    kind = as_str(ds.attrs.get("transformation_type", "")).lower()
    vec = np.asarray(ds.attrs.get("vector", (0.0, 0.0, 1.0)), dtype=float).ravel()
    norm = np.linalg.norm(vec)
    if vec.size != 3 or norm == 0:
        raise ValueError(f"{ds.name}: invalid transformation vector {vec}")
    vec = vec / norm
    if value is None:
        value = _scalar(ds)
    m = np.eye(4)
    off = ds.attrs.get("offset")
    if off is not None:
        unit_attr = "offset_units" if "offset_units" in ds.attrs else "units"
        if kind == "rotation" and unit_attr == "units":
            scale = 1.0
        else:
            scale = _unit_factor(ds, unit_attr, _LENGTH_UNITS, "m", "length")
        m[:3, 3] = np.asarray(off, dtype=float).ravel() * scale
    if kind == "translation":
        m[:3, 3] += vec * value * _unit_factor(ds, "units", _LENGTH_UNITS, "m", "length")
    elif kind == "rotation":
        m[:3, :3] = _rotation(vec, value * _unit_factor(ds, "units", _ANGLE_UNITS, "deg",
                                                          "angle"))
    else:
        raise ValueError(f"{ds.name}: unknown transformation_type {kind!r}")
    return m


def _depends_on(obj) -> str:
    ref = obj.attrs.get("depends_on") if isinstance(obj, h5py.Dataset) else None
    if ref is None and isinstance(obj, h5py.Group) and "depends_on" in obj:
        ref = obj["depends_on"]
    return "." if ref is None else as_str(ref).strip()


def chain_matrix(f: h5py.File, ds, value: float | None = None) -> np.ndarray:
    """Matrix mapping coordinates local to transformation ``ds`` to the lab frame.

    Applies ``ds`` (with ``value`` instead of its stored value when given) and then every
    transformation of its ``depends_on`` chain: ``lab = T_n ... T_2 T_1 x``.
    """
    m = _transformation_matrix(ds, value)
    seen = {ds.name}
    ref = _depends_on(ds)
    parent = ds.parent
    while ref not in (".", ""):
        nxt = _resolve(f, parent, ref)
        if nxt.name in seen:
            raise ValueError(f"depends_on chain of {ds.name} loops at {nxt.name}")
        seen.add(nxt.name)
        if isinstance(nxt, h5py.Group):
            ref, parent = _depends_on(nxt), nxt
            continue
        m = _transformation_matrix(nxt) @ m
        ref, parent = _depends_on(nxt), nxt.parent
    return m


def _read_wavelength_A(f: h5py.File, entry) -> float:
    candidates = []
    for inst in _children_of_class(entry, "NXinstrument"):
        candidates.extend(_children_of_class(inst, "NXbeam"))
    for sample in _children_of_class(entry, "NXsample"):
        candidates.extend(_children_of_class(sample, "NXbeam"))
    for beam in candidates:
        if "incident_wavelength" in beam:
            ds = beam["incident_wavelength"]
            scale = _unit_factor(ds, "units", _LENGTH_UNITS, "angstrom", "length")
            return _scalar(ds) * scale / 1e-10
        if "incident_energy" in beam:
            ds = beam["incident_energy"]
            scale = _unit_factor(ds, "units", _ENERGY_UNITS, "eV", "energy")
            return Beam.from_photon_energy(_scalar(ds) * scale).wavelength_A
    return float("nan")


def read_nxmx_wavelength(f: h5py.File) -> float:
    """Wavelength (Å) of an NXmx file's beam (``incident_wavelength`` or
    ``incident_energy``); NaN when the file has no NXmx entry or beam."""
    entry = find_entry(f)
    return float("nan") if entry is None else _read_wavelength_A(f, entry)


def _read_bandwidth(entry, wavelength_A: float) -> float:
    for inst in _children_of_class(entry, "NXinstrument"):
        for beam in _children_of_class(inst, "NXbeam"):
            if "incident_wavelength_spread" in beam:
                ds = beam["incident_wavelength_spread"]
                scale = _unit_factor(ds, "units", _LENGTH_UNITS, "angstrom", "length")
                fwhm_A = _scalar(ds) * scale / 1e-10
                if np.isfinite(fwhm_A) and wavelength_A > 0:
                    return fwhm_A / _FWHM_PER_SIGMA / wavelength_A
    return 0.0


def _module_extent(module) -> tuple[np.ndarray, np.ndarray]:
    origin = np.asarray(module["data_origin"][()], dtype=np.int64).ravel()
    size = np.asarray(module["data_size"][()], dtype=np.int64).ravel()
    if origin.size != size.size or origin.size not in (2, 3):
        raise ValueError(f"{module.name}: data_origin/data_size must have 2 or 3 elements")
    return origin, size


def _module_panel(f: h5py.File, module, name: str, origin, size, *, data_path: str,
                  max_adu: float, stack: tuple | None, frame: np.ndarray) -> Panel:
    if stack is not None and origin.size == 2:
        # 2-D frames that are stacked modules one below the other: back to (module, ss).
        slab, ss0 = divmod(int(origin[0]), stack[1])
        if ss0 + size[0] > stack[1]:
            raise ValueError(
                f"{module.name}: rows {origin[0]}..{origin[0] + size[0] - 1} cross the "
                f"boundary between stacked modules of {stack[1]} rows"
            )
        origin, size = np.array([slab, ss0, origin[1]]), np.array([1, *size])
    fast, slow = module["fast_pixel_direction"], module["slow_pixel_direction"]
    m_fast0 = chain_matrix(f, fast, 0.0)
    corner = m_fast0[:3, 3]
    pixel = _scalar(fast) * _unit_factor(fast, "units", _LENGTH_UNITS, "m", "length")
    fs_dir = frame @ (chain_matrix(f, fast, 1.0)[:3, 3] - corner)
    ss_dir = frame @ (chain_matrix(f, slow, 1.0)[:3, 3] - chain_matrix(f, slow, 0.0)[:3, 3])
    corner = frame @ corner
    res = 1.0 / pixel
    dims = ("%", "ss", "fs") if origin.size == 2 else ("%", int(origin[0]), "ss", "fs")
    if origin.size == 3 and size[0] != 1:
        raise ValueError(f"{module.name}: a module must span one slab of stacked data")
    return Panel(
        name=name,
        min_fs=int(origin[-1]),
        max_fs=int(origin[-1] + size[-1] - 1),
        min_ss=int(origin[-2]),
        max_ss=int(origin[-2] + size[-2] - 1),
        corner_x=float(corner[0] * res),
        corner_y=float(corner[1] * res),
        fs=tuple(fs_dir),
        ss=tuple(ss_dir),
        res=res,
        clen=float(corner[2]),
        data=data_path,
        dims=dims,
        max_adu=max_adu,
    )


def unique_panel_name(name: str, used: set) -> str:
    """A panel name from an NXdetector_module (or DIALS panel) path: the last part, with
    characters other than letters, digits and ``_`` replaced, made unique in ``used``
    (which it joins).

    Examples
    --------
    >>> used = {"p0"}
    >>> unique_panel_name("/entry/instrument/detector/p0", used), sorted(used)
    ('p0_1', ['p0', 'p0_1'])
    """
    base = re.sub(r"[^A-Za-z0-9_]", "_", name.rsplit("/", 1)[-1]) or "p"
    out, k = base, 1
    while out in used:
        out = f"{base}_{k}"
        k += 1
    used.add(out)
    return out


def _panel_name(module, used: set) -> str:
    name = module.name.rsplit("/", 1)[-1]
    if name.startswith("module_") and name[len("module_"):] in _RESERVED:
        name = name[len("module_"):]
    return unique_panel_name(name, used)


def _dials_export_rotation(entry) -> np.ndarray | None:
    """Rotation from the frame of a DIALS export to the NeXus lab frame (None otherwise).

    ``dials.export format=nxs`` writes its models rotated so that the beam runs along
    +z in DIALS's own (imgCIF) frame and records the rotation that undoes it as
    ``<entry>/dials/transformations/angle`` (in radians, without units). Undoing it and
    turning the imgCIF axes (x and z reversed with respect to NeXus) into NeXus ones
    gives the lab frame.
    """
    angle = entry.get("dials/transformations/angle")
    if not isinstance(angle, h5py.Dataset):
        return None
    scale = _unit_factor(angle, "units", _ANGLE_UNITS, "rad", "angle")
    axis = np.asarray(angle.attrs.get("vector", (1.0, 0.0, 0.0)), dtype=float).ravel()
    rot = _rotation(axis / np.linalg.norm(axis), _scalar(angle) * scale)
    return np.diag([-1.0, 1.0, -1.0]) @ rot


def _module_extents(modules, *, fast_first: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    """``data_origin``/``data_size`` of each module; modules whose origin is not given
    (negative, as in DIALS exports) are placed one below the other. ``fast_first``: the
    sizes are written (fast, slow), as DIALS exports do."""
    extents = [_module_extent(m) for m in modules]
    if fast_first:
        extents = [(o, s[::-1]) for o, s in extents]
    unknown = [bool((o < 0).any()) for o, _ in extents]
    if not any(unknown):
        return extents
    if not all(unknown) or any(o.size != 2 for o, _ in extents):
        bad = [m.name for m, u in zip(modules, unknown, strict=True) if u]
        raise ValueError(f"negative data_origin in {bad[:3]} but not in every module")
    out, row = [], 0
    for _, size in extents:
        out.append((np.array([row, 0]), size))
        row += int(size[0])
    return out


def _detector_from_nxmx(f: h5py.File, entry) -> Detector:
    dets = _entry_detectors(f, entry)
    if not dets:
        raise ValueError(f"{f.filename}: no NXentry/NXdetector found")
    wavelength = _read_wavelength_A(f, entry)
    stack = _stacked_shape(entry)
    frame = _dials_export_rotation(entry)
    dials_export = frame is not None
    if frame is None:
        frame = np.eye(3)
    panels, used = [], set()
    for d in dets:
        max_adu = float("inf")
        if "saturation_value" in d:
            max_adu = _scalar(d["saturation_value"])
        modules = _children_of_class(d, "NXdetector_module")
        extents = _module_extents(modules, fast_first=dials_export)
        for module, (origin, size) in zip(modules, extents, strict=True):
            name = _panel_name(module, used)
            panels.append(_module_panel(
                f, module, name, origin, size, data_path="/entry/data/data",
                max_adu=max_adu, stack=stack, frame=frame))
    if not panels:
        raise ValueError(f"{f.filename}: no NXdetector_module found")
    desc = as_str(dets[0]["description"]) if "description" in dets[0] else ""
    return Detector(
        panels=tuple(panels),
        beam=Beam(wavelength, bandwidth=_read_bandwidth(entry, wavelength)),
        groups=(("all", tuple(p.name for p in panels)),),
        name=desc,
    )


def read_nxmx_geometry(h5file_or_path, *, prefer_embedded: bool = True,
                       entry: str | None = None) -> Detector:
    """Detector geometry of an NXmx file.

    Parameters
    ----------
    h5file_or_path : str, path-like or h5py.File
        An NXmx (master) file.
    prefer_embedded : bool
        Use the CrystFEL geometry text in ``<detector>/crystfel_geometry`` when present
        (written by :class:`NXmxWriter`; it reproduces the geometry exactly).
    entry : str, optional
        Path of the NXentry or NXsubentry to read (e.g. ``/entry/experiment_1`` of a
        DIALS export); default: the first NXmx entry with a detector.

    Returns
    -------
    Detector
        Built otherwise from the NXmx description: wavelength (``incident_wavelength``
        or ``incident_energy``, converted from their ``units``), and one panel per
        ``NXdetector_module`` named after its group. Each module's ``depends_on`` chains
        of translations and rotations are resolved into lab positions: the panel corner
        is where ``fast_pixel_direction`` puts pixel 0, ``fs``/``ss`` the lab directions
        of one pixel step, and the pixel size the value of ``fast_pixel_direction``.
        ``data_origin``/``data_size`` give the pixel ranges; a 3-element origin, or a
        2-D origin into a virtual dataset that shows stacked modules one below the other
        (see :func:`virtual_frame_blocks`), makes a stacked detector.
        ``saturation_value`` becomes each panel's ``max_adu``. Modules without a valid
        ``data_origin`` (DIALS exports write -1) are placed one below the other in module
        order. The models of a DIALS export (``dials.export format=nxs``), which DIALS
        writes rotated and records the rotation of, are turned back into the lab frame.

    Raises
    ------
    ValueError
        If the file has no detector with modules, or a unit or transformation is not
        understood.

    Examples
    --------
    >>> det = read_nxmx_geometry("run1_master.h5")  # doctest: +SKIP
    >>> det.data_shape  # doctest: +SKIP
    (2167, 2070)
    """
    if isinstance(h5file_or_path, (h5py.File, h5py.Group)):
        return _geometry_from_file(h5file_or_path.file, prefer_embedded, entry)
    with h5py.File(Path(h5file_or_path), "r") as f:
        return _geometry_from_file(f, prefer_embedded, entry)


def _geometry_from_file(f: h5py.File, prefer_embedded: bool, entry: str | None) -> Detector:
    if entry is not None:
        group = f.get(entry)
        if not isinstance(group, h5py.Group):
            raise ValueError(f"{f.filename}: no group {entry!r}")
    else:
        group = next((e for e in nxmx_entries(f) if _entry_detectors(f, e)), None)
        if group is None:
            raise ValueError(f"{f.filename}: no NXentry/NXdetector found")
    if prefer_embedded:
        for d in _entry_detectors(f, group):
            if _GEOM_TEXT in d:
                from sxlab.io.crystfel_geom import read_geom

                return read_geom(as_str(d[_GEOM_TEXT]))
    return _detector_from_nxmx(f, group)
