"""Read and write CrystFEL stream files (``.stream``) as sxlab tables.

A stream is the text file ``indexamajig`` writes: a preamble (format line, audit
information, the geometry file and the target unit cell), then one *chunk* per frame with
the frame's metadata, its peak list and one block per crystal with the cell, the
reciprocal basis and the integrated reflections.

* :class:`StreamWriter` writes CrystFEL stream format 2.3 from sxlab's frames, peaks,
  crystals and reflections tables, one whole chunk per write, flushed, so that a reader
  following the growing file never sees half a chunk;
* :func:`read_stream` reads any CrystFEL 2.x stream into a :class:`StreamData` of tidy
  tables. The memory-mapped file goes through one pass of a compiled kernel
  (:mod:`sxlab.io._stream_kernels`) that follows the chunk structure and converts every
  peak and reflection row into column arrays, which become the tables without copying;
  large files are split at chunk boundaries and parsed by several threads. A 100 MB
  stream reads in a few tenths of a second;
* :class:`StreamFollower` reads only the chunks completed since its last poll.

Units: the stream holds lengths in nm, reciprocal lengths in nm⁻¹ and angles in degrees;
sxlab tables hold Å, 1/Å (no 2π) and degrees. Pixel coordinates are data-array ``fs``/``ss``
in both, with pixel centres at +0.5. Panels are named in the stream and numbered (indices
into ``geometry.panels``) in the tables.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .. import tables
from ..cell import UnitCell
from ..geometry import HC_EV_A, Detector
from . import _stream_kernels as _k
from ._errors import SourceError
from .crystfel_cell import CellFileError, read_cell, write_cell
from .crystfel_geom import GeomError, read_geom, write_geom

__all__ = [
    "StreamData",
    "StreamError",
    "StreamFollower",
    "StreamWriter",
    "read_stream",
    "write_stream",
]

FORMAT_LINE = "CrystFEL stream format 2.3"
GEOM_BEGIN = "----- Begin geometry file -----"
GEOM_END = "----- End geometry file -----"
CELL_BEGIN = "----- Begin unit cell -----"
CELL_END = "----- End unit cell -----"
CHUNK_BEGIN = "----- Begin chunk -----"
CHUNK_END = "----- End chunk -----"
PEAKS_BEGIN = "Peaks from peak search"
PEAKS_END = "End of peak list"
CRYSTAL_BEGIN = "--- Begin crystal"
CRYSTAL_END = "--- End crystal"
REFLECTIONS_BEGIN = "Reflections measured after indexing"
REFLECTIONS_END = "End of reflections"
NO_REFLECTIONS = "No integrated reflections."
PEAK_COLUMNS_LINE = "  fs/px   ss/px (1/d)/nm^-1   Intensity  Panel"
REFLECTION_COLUMNS_LINE = (
    "   h    k    l          I   sigma(I)       peak background  fs/px  ss/px panel"
)
CELL_NOTE = (
    "; Please note: this is the target unit cell.\n"
    "; The actual unit cells produced by indexing depend on many other factors.\n"
)

_PEAK_LINE = "%7.2f %7.2f %10.2f  %10.2f   %s\n"
_REFLECTION_LINE = "%4i %4i %4i %10.2f %10.2f %10.2f %10.2f %6.1f %6.1f %s\n"
_BASIS = tuple(f"{v}star_{x}" for v in "abc" for x in "xyz")
_AXIS_LATTICES = ("monoclinic", "tetragonal", "hexagonal")
_SQRT10 = math.sqrt(10.0)
_C_SPACE = re.compile(r"[ \t\n\v\f\r]+")


def _unique_axis(lattice: str, params) -> str:
    """The unique axis a cell's parameters show for its lattice type (``*`` if none).

    Monoclinic: the axis of the angle that is not 90°; tetragonal: the edge whose length
    differs most from the other two's mean; hexagonal: the edge opposite the 120° angle.
    """
    if lattice not in _AXIS_LATTICES or not all(math.isfinite(v) for v in params):
        return "?" if lattice in _AXIS_LATTICES else "*"
    lengths, angles = params[:3], params[3:]
    if lattice == "monoclinic":
        k = max(range(3), key=lambda j: abs(angles[j] - 90.0))
    elif lattice == "hexagonal":
        k = min(range(3), key=lambda j: abs(angles[j] - 120.0))
    else:
        k = max(range(3), key=lambda j: abs(lengths[j] - (sum(lengths) - lengths[j]) / 2))
    return "abc"[k]

class StreamError(SourceError):
    """A CrystFEL stream that cannot be understood.

    The message names the file, the line number, the offending line and what was
    expected; the same facts are available as attributes.

    Attributes
    ----------
    source : str or None
        File path (or the name given for in-memory input).
    lineno : int or None
        1-based line number.
    line : str or None
        The offending line (quoted in the message up to 120 characters).
    """

    max_line_chars = 120


@dataclass
class StreamData:
    """The content of a CrystFEL stream as tables.

    Attributes
    ----------
    frames, peaks, crystals, reflections : pandas.DataFrame
        One row per chunk, peak, crystal and reflection (see :func:`read_stream`).
    headers : pandas.DataFrame
        Header values copied into the chunks (``frame, name, value, text``).
    geometry : Detector or None
        The geometry the panel indices refer to: the one given to the reader, else the one
        in the stream's geometry block.
    cell : UnitCell or None
        The target cell of the unit-cell block.
    preamble : str
        Text before the first chunk.
    version : str
        Stream format version, e.g. ``"2.3"``.
    panel_names : list of str
        Names of the panel indices: the geometry's panels, or, without a geometry, the
        names in order of first appearance.
    source : str
        The file read.
    """

    frames: pd.DataFrame
    peaks: pd.DataFrame
    crystals: pd.DataFrame
    reflections: pd.DataFrame
    headers: pd.DataFrame
    geometry: Detector | None = None
    cell: UnitCell | None = None
    preamble: str = ""
    version: str = "2.3"
    panel_names: list[str] = field(default_factory=list)
    source: str = ""

    def __len__(self) -> int:
        return len(self.frames)

    def __repr__(self) -> str:
        return (
            f"<StreamData {self.source or ''} v{self.version}: {len(self.frames)} frames, "
            f"{len(self.peaks)} peaks, {len(self.crystals)} crystals, "
            f"{len(self.reflections)} reflections>"
        )

    @classmethod
    def concat(cls, parts) -> StreamData:
        """Join the results of several reads (e.g. successive follower polls).

        Examples
        --------
        >>> empty = StreamData.concat([])
        >>> len(empty), list(empty.peaks.columns[:4])
        (0, ['frame', 'panel', 'fs', 'ss'])
        """
        parts = list(parts)
        if not parts:
            return _empty_data()
        base = next((p for p in parts if p.geometry is not None), parts[0])
        names = max((p.panel_names for p in parts), key=len)

        def cat(attr):
            frames = [getattr(p, attr) for p in parts]
            nonempty = [f for f in frames if len(f)]
            return pd.concat(nonempty, ignore_index=True) if nonempty else frames[0]

        return cls(frames=cat("frames"), peaks=cat("peaks"), crystals=cat("crystals"),
                   reflections=cat("reflections"), headers=cat("headers"),
                   geometry=base.geometry, cell=base.cell, preamble=base.preamble,
                   version=base.version, panel_names=list(names), source=base.source)


def _empty_data(**kwargs) -> StreamData:
    return StreamData(
        frames=tables.STREAM_FRAMES.empty(),
        peaks=tables.PEAKS.empty(),
        crystals=tables.STREAM_CRYSTALS.empty(),
        reflections=tables.REFLECTIONS.empty(),
        headers=tables.STREAM_HEADERS.empty(),
        **kwargs,
    )


# ====================================================================== writer
def _get(row, key, default=None):
    """``row[key]`` of a dict or Series, or ``default`` when absent or missing."""
    try:
        value = row[key]
    except (KeyError, IndexError, TypeError):
        return default
    if value is None or value is pd.NA:
        return default
    if isinstance(value, float) and math.isnan(value):
        return default
    if isinstance(value, np.floating) and np.isnan(value):
        return default
    return value


def _columns(df, names) -> dict[str, np.ndarray]:
    """The columns of ``df`` among ``names`` as arrays (absent ones left out)."""
    if df is None:
        return {}
    return {n: df[n].to_numpy() for n in names if n in df.columns}


_PEAK_INPUT = ("frame", "panel", "fs", "ss", "intensity", "d_A")
_CRYSTAL_INPUT = (
    "frame", "crystal", "a", "b", "c", "alpha", "beta", "gamma", "lattice", "centering",
    "unique_axis", *_BASIS, "method", "profile_radius_invA", "resolution_limit_A",
    "n_saturated_reflections", "n_implausible_reflections", "det_shift_x_mm",
    "det_shift_y_mm",
)
_REFLECTION_INPUT = ("frame", "crystal", "h", "k", "l", "I", "sigma", "peak", "bg", "fs", "ss",
                     "panel", "flag_saturated")


def _slice(cols: dict, sel) -> dict:
    return {k: v[sel] for k, v in cols.items()}


def _nrows(cols: dict) -> int:
    return len(next(iter(cols.values()))) if cols else 0


def _float_col(cols: dict, name: str, n: int) -> np.ndarray:
    v = cols.get(name)
    return np.full(n, np.nan) if v is None else np.asarray(v, dtype=float)


def _cell_from_basis(basis: np.ndarray) -> tuple[float, ...]:
    if not np.all(np.isfinite(basis)) or abs(np.linalg.det(basis)) == 0:
        return (np.nan,) * 6
    direct = np.linalg.inv(basis).T
    lengths = np.linalg.norm(direct, axis=1)

    def ang(i, j):
        cosang = direct[i] @ direct[j] / (lengths[i] * lengths[j])
        return math.degrees(math.acos(max(-1.0, min(1.0, cosang))))

    return (*lengths.tolist(), ang(1, 2), ang(0, 2), ang(0, 1))


def _one_line(text: str, what: str) -> str:
    text = str(text)
    if "\n" in text or "\r" in text:
        raise ValueError(f"{what} must be a single line, got {text!r}")
    return text


class StreamWriter:
    """Write a CrystFEL stream (format 2.3), one whole chunk per frame.

    Parameters
    ----------
    path : str or path-like
        File to create (an existing file is replaced).
    geometry : Detector
        Detector geometry: written into the geometry block, and used to name panels and to
        compute what the tables leave out (resolution of peaks, beam values).
    cell : UnitCell, optional
        Target cell, written into the unit-cell block.
    command_line : str, optional
        Command line recorded in the preamble (left out when empty).
    indexing_methods : str, optional
        The ``Indexing methods selected:`` line; also the ``indexed_by`` of indexed frames
        whose tables do not say.

    Notes
    -----
    Every chunk is formatted completely, then written with unbuffered writes and no
    other output in between, so a reader that follows the file sees either none or all of
    it once :meth:`write_frame` returns. Input columns used (others are ignored):

    ============ ===================================================================
    frame row    ``frame`` (serial number = frame + 1), ``event`` (``//<frame>`` if
                 absent), ``filename``, ``hit``, ``photon_energy_eV``,
                 ``resolution_A`` (written as ``peak_resolution``; else from the
                 peaks), ``indexed_by``, ``n_indexing_tries``,
                 ``beam_divergence_rad``, ``beam_bandwidth``, ``camera_length_m``
    peaks        ``fs``, ``ss``, ``intensity``, ``panel``, ``d_A`` (computed from the
                 geometry if absent)
    crystals     ``crystal``, ``astar_x`` … ``cstar_z`` (1/Å), ``a`` … ``gamma``
                 (from the basis if absent), ``lattice``, ``centering``,
                 ``unique_axis``, ``method``, ``profile_radius_invA``,
                 ``resolution_limit_A``, ``n_saturated_reflections``,
                 ``n_implausible_reflections``, ``det_shift_x_mm``, ``det_shift_y_mm``
    reflections  ``crystal``, ``h``, ``k``, ``l``, ``I``, ``sigma``, ``peak``, ``bg``,
                 ``fs``, ``ss``, ``panel``
    ============ ===================================================================

    Examples
    --------
    >>> import tempfile, os
    >>> from sxlab.geometry import builtin_geometry
    >>> det = builtin_geometry("eiger1m")
    >>> path = os.path.join(tempfile.mkdtemp(), "demo.stream")
    >>> peaks = pd.DataFrame({"frame": [0], "panel": [0], "fs": [100.5], "ss": [200.5],
    ...                       "intensity": [1234.0]})
    >>> with StreamWriter(path, det) as writer:
    ...     writer.write_frame({"frame": 0, "filename": "run1.h5", "hit": True}, peaks)
    >>> data = read_stream(path)
    >>> data.peaks[["frame", "panel", "fs", "ss", "intensity"]].to_numpy().tolist()
    [[0.0, 0.0, 100.5, 200.5, 1234.0]]
    """

    def __init__(self, path, geometry: Detector, *, cell: UnitCell | None = None,
                 command_line: str = "", indexing_methods: str = "asdf"):
        if not isinstance(geometry, Detector):
            raise TypeError(f"geometry must be a Detector, got {type(geometry).__name__}")
        self.path = Path(path)
        self.geometry = geometry
        self.cell = cell
        self.command_line = _one_line(command_line, "command_line")
        self.indexing_methods = _one_line(indexing_methods, "indexing_methods")
        self._names = np.array(geometry.panel_names, dtype=object)
        clens = [p.clen + p.coffset for p in geometry.panels]
        self._camera_length = float(np.mean(clens))
        self._n_written = 0
        preamble = self.preamble()
        self._fh = open(self.path, "wb", buffering=0)  # noqa: SIM115 (closed in close())
        self._write(preamble)

    # ------------------------------------------------------------- lifecycle
    def __enter__(self) -> StreamWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the file."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    @property
    def closed(self) -> bool:
        return self._fh is None

    @property
    def n_chunks(self) -> int:
        """Chunks written so far."""
        return self._n_written

    def _write(self, text: str) -> None:
        if self._fh is None:
            raise ValueError(f"stream {self.path} is closed")
        data = memoryview(text.encode("utf-8"))
        while data:
            n = self._fh.write(data)
            data = data[n:]

    # ------------------------------------------------------------- preamble
    def preamble(self) -> str:
        """Text of the preamble: format line, audit lines, geometry and cell blocks."""
        from .. import __version__

        lines = [FORMAT_LINE, f"Generated by sxlab {__version__}"]
        if self.command_line:
            lines.append(self.command_line)
        lines.append(f"Indexing methods selected: {self.indexing_methods}")
        text = "\n".join(lines) + "\n"
        geom = write_geom(self.geometry)
        text += f"{GEOM_BEGIN}\n{geom}{GEOM_END}\n"
        if self.cell is not None:
            text += f"{CELL_BEGIN}\n{write_cell(self.cell)}{CELL_NOTE}{CELL_END}\n"
        return text

    # ------------------------------------------------------------- chunks
    def write_frame(self, frame_row, peaks=None, crystals=None, reflections=None) -> None:
        """Append the chunk of one frame and flush it.

        Parameters
        ----------
        frame_row : dict or pandas.Series
            One row of a frames table (see the class Notes for the fields used).
        peaks, crystals : pandas.DataFrame, optional
            The frame's peaks and crystals (rows of other frames, by ``frame``, are left
            out).
        reflections : pandas.DataFrame, optional
            The crystals' reflections. When None, each crystal block says
            ``No integrated reflections.``; an empty table writes empty reflection lists.
        """
        frame = _get(frame_row, "frame")
        cols = []
        for df, names in ((peaks, _PEAK_INPUT), (crystals, _CRYSTAL_INPUT),
                          (reflections, _REFLECTION_INPUT)):
            c = _columns(df, names)
            if frame is not None and "frame" in c and len(c["frame"]):
                sel = c["frame"] == frame
                if not sel.all():
                    c = _slice(c, sel)
            cols.append(c)
        text = self.chunk_text(frame_row, cols[0], cols[1],
                               None if reflections is None else cols[2])
        self._write(text)
        self._n_written += 1

    def write_frames(self, frames: pd.DataFrame, peaks=None, crystals=None,
                     reflections=None) -> None:
        """Append one chunk per row of ``frames`` (in its order).

        Rows of ``peaks``, ``crystals`` and ``reflections`` are matched to frames by their
        ``frame`` column.
        """
        fcol = frames["frame"].to_numpy() if "frame" in frames.columns else None
        groups = []
        for df, names in ((peaks, _PEAK_INPUT), (crystals, _CRYSTAL_INPUT),
                          (reflections, _REFLECTION_INPUT)):
            c = _columns(df, names)
            if c and "frame" not in c:
                raise ValueError("peaks, crystals and reflections need a 'frame' column")
            if c:
                order = np.argsort(c["frame"], kind="stable")
                c = _slice(c, order)
            groups.append(c)
        records = frames.to_dict("records")
        for i, row in enumerate(records):
            parts = []
            for c in groups:
                if not c or fcol is None:
                    parts.append({})
                    continue
                lo = np.searchsorted(c["frame"], fcol[i], side="left")
                hi = np.searchsorted(c["frame"], fcol[i], side="right")
                parts.append(_slice(c, slice(lo, hi)))
            text = self.chunk_text(row, parts[0], parts[1],
                                   None if reflections is None else parts[2])
            self._write(text)
            self._n_written += 1

    def chunk_text(self, frame_row, peaks: dict, crystals: dict, reflections: dict | None
                   ) -> str:
        """Text of one chunk from column arrays (dicts of name -> array)."""
        geom = self.geometry
        frame = _get(frame_row, "frame")
        frame = None if frame is None else int(frame)
        serial = frame + 1 if frame is not None else self._n_written + 1
        event = _get(frame_row, "event")
        if event is None:
            event = f"//{frame}" if frame is not None else "//"
        elif isinstance(event, (int, np.integer)):
            event = f"//{int(event)}"
        filename = _get(frame_row, "filename", _get(frame_row, "source", ""))
        n_cryst = _nrows(crystals)
        hit = _get(frame_row, "hit")
        hit = n_cryst > 0 if hit is None else bool(hit)
        energy = float(_get(frame_row, "photon_energy_eV", geom.beam.photon_energy_eV))
        if not math.isfinite(energy) or energy <= 0:
            raise ValueError(
                f"frame {frame}: no photon energy (neither a 'photon_energy_eV' value nor "
                "a wavelength in the geometry)"
            )
        wavelength = HC_EV_A / energy
        lines = [
            CHUNK_BEGIN,
            f"Image filename: {_one_line(filename, 'filename')}",
            f"Event: {_one_line(event, 'event')}",
            f"Image serial number: {serial}",
            f"hit = {int(hit)}",
        ]
        if n_cryst:
            method = _get(frame_row, "indexed_by")
            if method is None and "method" in crystals:
                m = crystals["method"][0]
                method = m if isinstance(m, str) and m else None
            if method is None:
                method = self.indexing_methods.split(",")[0]
            lines.append(f"indexed_by = {_one_line(method, 'indexed_by')}")
            lines.append(f"n_indexing_tries = {int(_get(frame_row, 'n_indexing_tries', 1))}")
        else:
            lines.append("indexed_by = none")
        divergence = float(_get(frame_row, "beam_divergence_rad", geom.beam.divergence_rad))
        bandwidth = float(_get(frame_row, "beam_bandwidth", geom.beam.bandwidth))
        lines += [
            f"photon_energy_eV = {energy:f}",
            f"beam_divergence = {divergence:.2e} rad",
            f"beam_bandwidth = {bandwidth:.2e} (fraction)",
        ]
        clen = float(_get(frame_row, "camera_length_m", self._camera_length))
        if math.isfinite(clen):
            lines.append(f"average_camera_length = {clen:f} m")

        n_peaks = _nrows(peaks)
        names = self._panel_names(peaks, n_peaks, f"frame {frame}: peaks") if n_peaks else []
        invd = self._peak_invd_nm(peaks, n_peaks, wavelength, frame)
        res_A = _get(frame_row, "resolution_A")
        if res_A is not None and math.isfinite(float(res_A)) and float(res_A) > 0:
            res_nm = 10.0 / float(res_A)
        else:
            finite = invd[np.isfinite(invd)]
            res_nm = float(finite.max()) if finite.size else 0.0
        res_text = f"{10.0 / res_nm:f}" if res_nm > 0 else "inf"
        lines += [f"num_peaks = {n_peaks}", f"peak_resolution = {res_nm:f} nm^-1 or {res_text} A",
                  PEAKS_BEGIN, PEAK_COLUMNS_LINE]
        text = "\n".join(lines) + "\n"
        if n_peaks:
            flat = [v for row in zip(
                np.asarray(peaks["fs"], float).tolist(), np.asarray(peaks["ss"], float).tolist(),
                invd.tolist(), _float_col(peaks, "intensity", n_peaks).tolist(), names,
                strict=True) for v in row]
            text += (_PEAK_LINE * n_peaks) % tuple(flat)
        text += PEAKS_END + "\n"
        if n_cryst:
            order = np.argsort(crystals["crystal"], kind="stable") if "crystal" in crystals \
                else np.arange(n_cryst)
            for i in order:
                text += self._crystal_text(crystals, int(i), reflections, frame)
        return text + CHUNK_END + "\n"

    def _peak_invd_nm(self, peaks: dict, n: int, wavelength: float, frame) -> np.ndarray:
        if n == 0:
            return np.zeros(0)
        if "d_A" in peaks:
            d = np.asarray(peaks["d_A"], dtype=float)
        else:
            for key in ("fs", "ss"):
                if key not in peaks:
                    raise ValueError(f"frame {frame}: peaks need a {key!r} column")
            panel = np.asarray(peaks["panel"], dtype=np.int64) if "panel" in peaks \
                else np.zeros(n, dtype=np.int64)
            xyz = self.geometry.pixel_to_lab(peaks["fs"], peaks["ss"], panel)
            two_theta = np.arctan2(np.hypot(xyz[:, 0], xyz[:, 1]), xyz[:, 2])
            with np.errstate(divide="ignore"):
                d = wavelength / (2.0 * np.sin(two_theta / 2.0))
        with np.errstate(divide="ignore"):
            return 10.0 / d

    def _panel_names(self, cols: dict, n: int, what: str) -> list[str]:
        if "panel" not in cols:
            if len(self._names) == 1:
                return [self._names[0]] * n
            raise ValueError(f"{what} need a 'panel' column for a multi-panel detector")
        idx = np.asarray(cols["panel"], dtype=np.int64)
        bad = (idx < 0) | (idx >= len(self._names))
        if bad.any():
            raise ValueError(
                f"{what}: panel index {int(idx[bad][0])} is not a panel of the geometry "
                f"(0..{len(self._names) - 1})"
            )
        return self._names[idx].tolist()

    def _crystal_text(self, cr: dict, i: int, refl: dict | None, frame) -> str:
        basis = np.array([float(cr[c][i]) if c in cr else np.nan for c in _BASIS]).reshape(3, 3)
        derived = None
        params = []
        for k, name in enumerate(("a", "b", "c", "alpha", "beta", "gamma")):
            v = float(cr[name][i]) if name in cr else np.nan
            if not math.isfinite(v):
                if derived is None:
                    derived = _cell_from_basis(basis)
                v = derived[k]
            params.append(v)

        def text_of(name, default):
            v = cr.get(name)
            v = None if v is None else v[i]
            return v if isinstance(v, str) and v else default

        lattice = text_of("lattice", "triclinic")
        centering = text_of("centering", "P")
        if lattice == "hexagonal" and centering == "R":
            centering = "H"
        axis = text_of("unique_axis", _unique_axis(lattice, params))

        def num(name, default=np.nan):
            v = cr.get(name)
            return default if v is None else float(v[i])

        radius_nm = num("profile_radius_invA") * 10.0
        dx, dy = num("det_shift_x_mm", 0.0), num("det_shift_y_mm", 0.0)
        a, b, c, al, be, ga = params
        lines = [
            CRYSTAL_BEGIN,
            f"Cell parameters {a / 10:7.5f} {b / 10:7.5f} {c / 10:7.5f} nm, "
            f"{al:7.5f} {be:7.5f} {ga:7.5f} deg",
        ]
        for v, row in zip("abc", basis * 10.0, strict=True):
            lines.append(f"{v}star = {row[0]:+9.7f} {row[1]:+9.7f} {row[2]:+9.7f} nm^-1")
        lines += [
            f"lattice_type = {lattice}",
            f"centering = {centering}",
            f"unique_axis = {axis}",
            f"profile_radius = {radius_nm:.5f} nm^-1",
            f"predict_refine/det_shift x = {dx:.3f} y = {dy:.3f} mm",
        ]
        if refl is None:
            lines += [NO_REFLECTIONS, CRYSTAL_END]
            return "\n".join(lines) + "\n"
        crystal_id = cr["crystal"][i] if "crystal" in cr else i
        sel = refl["crystal"] == crystal_id if "crystal" in refl and _nrows(refl) else None
        own = _slice(refl, sel) if sel is not None else refl
        n = _nrows(own)
        limit_A = num("resolution_limit_A")
        limit_nm = 10.0 / limit_A if math.isfinite(limit_A) and limit_A > 0 else np.nan
        n_sat = num("n_saturated_reflections")
        if not math.isfinite(n_sat):
            n_sat = int(np.count_nonzero(own["flag_saturated"])) if "flag_saturated" in own else 0
        n_imp = num("n_implausible_reflections", 0.0)
        n_imp = int(n_imp) if math.isfinite(n_imp) else 0
        lines += [
            f"diffraction_resolution_limit = {limit_nm:.2f} nm^-1 or {limit_A:.2f} A",
            f"num_reflections = {n}",
            f"num_saturated_reflections = {int(n_sat)}",
            f"num_implausible_reflections = {n_imp}",
            REFLECTIONS_BEGIN,
            REFLECTION_COLUMNS_LINE,
        ]
        text = "\n".join(lines) + "\n"
        if n:
            for key in ("h", "k", "l"):
                if key not in own:
                    raise ValueError(f"frame {frame}: reflections need a {key!r} column")
            hkl = [np.asarray(own[key]).astype(np.int64).tolist() for key in ("h", "k", "l")]
            vals = [_float_col(own, key, n).tolist()
                    for key in ("I", "sigma", "peak", "bg", "fs", "ss")]
            names = self._panel_names(own, n, f"frame {frame}: reflections")
            flat = [v for row in zip(*hkl, *vals, names, strict=True) for v in row]
            text += (_REFLECTION_LINE * n) % tuple(flat)
        return text + REFLECTIONS_END + "\n" + CRYSTAL_END + "\n"


def write_stream(path, geometry: Detector, frames: pd.DataFrame, peaks=None, crystals=None,
                 reflections=None, *, cell: UnitCell | None = None, command_line: str = "",
                 indexing_methods: str = "asdf") -> Path:
    """Write tables as a CrystFEL stream (format 2.3); see :class:`StreamWriter`.

    Returns
    -------
    pathlib.Path
        The file written.

    Examples
    --------
    >>> import tempfile, os
    >>> from sxlab.geometry import builtin_geometry
    >>> frames = pd.DataFrame({"frame": [0, 1], "hit": [False, False]})
    >>> path = write_stream(os.path.join(tempfile.mkdtemp(), "x.stream"),
    ...                     builtin_geometry("eiger1m"), frames)
    >>> read_stream(path).frames[["frame", "event", "hit"]].to_numpy().tolist()
    [[0, '//0', False], [1, '//1', False]]
    """
    with StreamWriter(path, geometry, cell=cell, command_line=command_line,
                      indexing_methods=indexing_methods) as writer:
        writer.write_frames(frames, peaks, crystals, reflections)
    return Path(path)


# ====================================================================== reader
_B_CHUNK_BEGIN = CHUNK_BEGIN.encode() + b"\n"


def _resolution_A(value: str) -> float:
    """Resolution (Å) of ``"<1/d> nm^-1 or <d> A"`` (or just the first part).

    Both numbers are written with the same decimals, so the d value is the more precise
    one above √10 Å ≈ 3.2 Å and the 1/d value below; the more precise one is used.
    """
    t = value.split()
    inv_nm = float(t[0])
    d_nm = 10.0 / inv_nm if inv_nm > 0 and math.isfinite(inv_nm) else np.nan
    if len(t) >= 4 and t[2] == "or":
        d = float(t[3])
        if math.isfinite(d) and d > 0 and not (d < _SQRT10 and math.isfinite(d_nm)):
            return d
    return d_nm


def _find_line(buf: bytes, marker: bytes, start: int, end: int) -> int:
    """Offset of the first line in ``[start, end)`` equal to ``marker`` (with its newline).

    ``start`` must be a line start. Returns -1 when there is none.
    """
    if start + len(marker) <= end and buf[start:start + len(marker)] == marker:
        return start
    pos = buf.find(b"\n" + marker, start, end)
    return -1 if pos < 0 else pos + 1


@dataclass
class _Preamble:
    version: tuple[int, int]
    text: str
    geometry: Detector | None
    cell: UnitCell | None
    end: int  # offset of the first chunk


class _Context:
    """The buffer being read, for error messages with file and line."""

    def __init__(self, buf: bytes, source: str, line_base: int = 1):
        self.buf = buf
        self.source = source
        self.line_base = line_base

    def lineno(self, pos: int) -> int:
        arr = np.frombuffer(self.buf, dtype=np.uint8)
        return self.line_base + int(_k.count_newlines(arr, 0, pos))

    def line_at(self, pos: int) -> str:
        end = self.buf.find(b"\n", pos)
        end = len(self.buf) if end < 0 else end
        return self.buf[pos:end].decode("utf-8", errors="replace")

    def error(self, message: str, pos: int | None = None, *, show_line: bool = True
              ) -> StreamError:
        if pos is None or pos < 0:
            return StreamError(message, source=self.source)
        return StreamError(message, source=self.source, lineno=self.lineno(pos),
                           line=self.line_at(pos) if show_line else None)


def _header_line(line: str, out: dict, headers: list) -> None:
    """Read a chunk line the kernel left to Python (header values, odd numbers)."""
    if line.startswith("Image filename:"):
        out["filename"] = line[16:]
        return
    if line.startswith("Event:"):
        out["event"] = line[7:]
        return
    if line.startswith("Image serial number: "):
        out["serial"] = int(line[21:])
        return
    key, sep, value = line.partition(" = ")
    if not sep:
        return
    if key.startswith(("header/float/", "header/int/", "header/str/", "hdf5/")):
        name = key.split("/", 2)[2] if key.startswith("header/") else key[5:]
        try:
            num = float(value)
        except ValueError:
            num = np.nan
        headers.append((name, num, value))
    elif key == "hit":
        out["hit"] = int(value) != 0
    elif key == "n_indexing_tries":
        out["n_indexing_tries"] = int(value)
    elif key == "photon_energy_eV":
        out["photon_energy_eV"] = float(value)
    elif key == "beam_divergence":
        out["beam_divergence_rad"] = float(value.split()[0])
    elif key == "beam_bandwidth":
        out["beam_bandwidth"] = float(value.split()[0])
    elif key == "average_camera_length":
        out["camera_length_m"] = float(value.split()[0])
    elif key == "num_peaks":
        out["n_peaks"] = int(value)
    elif key == "peak_resolution":
        out["resolution_A"] = _resolution_A(value)


def _crystal_line(line: str, out: dict) -> None:
    """Read a crystal line whose numbers the kernel left to Python."""
    if line.startswith("Cell parameters "):
        t = line.split()
        for name, tok in zip(("a", "b", "c"), t[2:5], strict=True):
            out[name] = float(tok) * 10.0
        for name, tok in zip(("alpha", "beta", "gamma"), t[6:9], strict=True):
            out[name] = float(tok)
        return
    if line.startswith("predict_refine/det_shift "):
        t = line.split()
        out["det_shift_x_mm"], out["det_shift_y_mm"] = float(t[3]), float(t[6])
        return
    key, _, value = line.partition(" = ")
    if key in ("astar", "bstar", "cstar"):
        for axis, tok in zip("xyz", value.split()[:3], strict=True):
            out[f"{key}_{axis}"] = float(tok) / 10.0
    elif key == "profile_radius":
        out["profile_radius_invA"] = float(value.split()[0]) / 10.0
    elif key == "diffraction_resolution_limit":
        out["resolution_limit_A"] = _resolution_A(value)
    elif key == "num_reflections":
        out["n_reflections"] = int(value)
    elif key == "num_saturated_reflections":
        out["n_saturated_reflections"] = int(value)
    elif key == "num_implausible_reflections":
        out["n_implausible_reflections"] = int(value)


def _pick_resolution(inv_nm: np.ndarray, d_A: np.ndarray) -> np.ndarray:
    """Vector form of :func:`_resolution_A` from the two numbers of each line."""
    with np.errstate(divide="ignore", invalid="ignore"):
        d_nm = np.where((inv_nm > 0) & np.isfinite(inv_nm), 10.0 / inv_nm, np.nan)
    use_A = np.isfinite(d_A) & (d_A > 0) & ((d_A >= _SQRT10) | ~np.isfinite(d_nm))
    return np.where(use_A, d_A, d_nm)


class _Panels:
    """Maps panel-name tokens to indices (the geometry's, or discovered in order)."""

    def __init__(self, geometry: Detector | None):
        self.geometry = geometry
        self.names = list(geometry.panel_names) if geometry is not None else []
        self.index = {n: i for i, n in enumerate(self.names)}

    def resolve(self, ctx: _Context, name_hash, line_pos, name_field: int, fs, ss,
                what: str) -> np.ndarray:
        """Panel index of each row from its name hash (0: no name, use the position)."""
        n = len(name_hash)
        out = np.full(n, -1, dtype=np.int16)
        if n == 0:
            return out
        inv, uniq, first = _k.factorize(np.ascontiguousarray(name_hash))
        lut = np.full(len(uniq), -1, dtype=np.int64)
        nameless = None
        for u in range(len(uniq)):
            if uniq[u] == 0:
                nameless = u
                continue
            pos = _line_offset(int(line_pos[first[u]]))
            # fields split at C's whitespace as the kernel and CrystFEL do (Python's
            # split() also splits at the control bytes 0x1c-0x1f)
            fields = [f for f in _C_SPACE.split(ctx.line_at(pos)) if f]
            token = fields[name_field] if name_field < len(fields) else ""
            idx = self.index.get(token)
            if idx is None:
                if self.geometry is not None:
                    raise ctx.error(f"{what}: panel {token!r} is not in the geometry (panels "
                                    f"{', '.join(self.names[:6])}...)", pos)
                idx = len(self.names)
                self.names.append(token)
                self.index[token] = idx
            lut[u] = idx
        out[:] = lut[inv]
        if nameless is not None:
            rows = inv == nameless
            if self.geometry is not None and not self.geometry.is_stacked:
                out[rows] = self.geometry.panel_of_pixel(fs[rows], ss[rows])
        return out


def _line_offset(value: int) -> int:
    """Line offset of a row (the kernel stores ``-offset - 1`` for rows with odd numbers)."""
    return value if value >= 0 else -value - 1


def _read_preamble(buf: bytes, source: str, geometry: Detector | None) -> _Preamble | None:
    """Parse the text before the first chunk; None when no chunk has started yet."""
    nl = buf.find(b"\n")
    if nl < 0:
        return None
    first = buf[:nl].decode("utf-8", errors="replace").rstrip("\r")
    prefix = "CrystFEL stream format "
    if not first.startswith(prefix):
        raise StreamError(f"expected '{FORMAT_LINE}' (or another 2.x version) on the first line",
                          source=source, lineno=1, line=first)
    try:
        major, minor = (int(x) for x in first[len(prefix):].split()[0].split("."))
    except (ValueError, IndexError):
        raise StreamError("expected a version such as 2.3 after 'CrystFEL stream format'",
                          source=source, lineno=1, line=first) from None
    if major != 2:
        raise StreamError(f"stream format {major}.{minor} is not supported (expected 2.x)",
                          source=source, lineno=1, line=first)
    start = _find_line(buf, _B_CHUNK_BEGIN, nl + 1, len(buf))
    if start < 0:
        return None
    text = buf[:start].decode("utf-8", errors="replace")
    lines = text.split("\n")
    blocks = {}
    i = 0
    while i < len(lines):
        if lines[i] in (GEOM_BEGIN, CELL_BEGIN):
            marker_end = GEOM_END if lines[i] == GEOM_BEGIN else CELL_END
            try:
                j = lines.index(marker_end, i + 1)
            except ValueError:
                raise StreamError(f"expected '{marker_end}' before the first chunk",
                                  source=source, lineno=i + 1, line=lines[i]) from None
            blocks[lines[i]] = ("\n".join(lines[i + 1:j]) + "\n", i + 2)
            i = j
        i += 1
    det = None
    if GEOM_BEGIN in blocks and geometry is None:
        block, first_line = blocks[GEOM_BEGIN]
        try:
            det = read_geom(block, source_name=f"{source} (geometry block)")
        except GeomError as exc:
            lineno = None if exc.lineno is None else first_line + exc.lineno - 1
            msg = str(exc).split(": ", 1)[-1]
            raise StreamError(f"geometry block: {msg}", source=source, lineno=lineno) from None
    cell = None
    if CELL_BEGIN in blocks:
        block, first_line = blocks[CELL_BEGIN]
        try:
            cell = read_cell(block, source_name=f"{source} (unit cell block)")
        except CellFileError as exc:
            lineno = None if exc.lineno is None else first_line + exc.lineno - 1
            msg = str(exc).split(": ", 1)[-1]
            raise StreamError(f"unit cell block: {msg}", source=source, lineno=lineno) from None
    return _Preamble(version=(major, minor), text=text, geometry=geometry or det, cell=cell,
                     end=start)


def _layouts(version: tuple[int, int]):
    """Field kinds, required fields and number columns of peak and reflection rows."""
    F, S, N = _k.FLOAT, _k.SKIP, _k.NAME
    peak_cols = ("fs", "ss", "invd_nm", "intensity")
    rows23 = ("h", "k", "l", "I", "sigma", "peak", "bg", "fs", "ss")
    if version >= (2, 3):
        return ((F, F, F, F, N), 5, peak_cols), ((F,) * 9 + (N,), 10, rows23)
    if version >= (2, 2):
        return ((F, F, F, F, N), 4, peak_cols), ((F,) * 9 + (N,), 9, rows23)
    return ((F, F, F, F, N), 4, peak_cols), ((F, F, F, F, S, F, F, F, F, N), 9,
                                              ("h", "k", "l", "I", "sigma", "counts", "fs",
                                               "ss"))


_STATUS_MESSAGES = {
    _k.UNTERMINATED_PEAKS: f"peak list without '{PEAKS_END}'",
    _k.UNTERMINATED_CRYSTAL: f"crystal without '{CRYSTAL_END}'",
    _k.UNTERMINATED_REFLECTIONS: f"reflection list without '{REFLECTIONS_END}'",
}
_ROW_FIELDS = {
    (2, 3): ("5 fields: fs/px ss/px (1/d)/nm^-1 Intensity Panel",
             "10 fields: h k l I sigma(I) peak background fs/px ss/px panel"),
    (2, 2): ("4 fields: fs/px ss/px (1/d)/nm^-1 Intensity",
             "9 fields: h k l I sigma(I) peak background fs/px ss/px"),
    (2, 1): ("4 fields: fs/px ss/px (1/d)/nm^-1 Intensity",
             "9 fields: h k l I phase sigma(I) counts fs/px ss/px"),
}


def _float_layout(schema: tables.Schema, fields: tuple[str, ...]):
    """Rows of a table's number block: the schema's float64 columns, then scratch rows.

    Returns the float column names, the block row of each field and the row count.
    """
    floats = [c.name for c in schema if c.dtype == "float64"]
    rows = {name: i for i, name in enumerate(floats)}
    for name in fields:
        if name not in rows:
            rows[name] = len(rows)
    return floats, rows, np.array([rows[f] for f in fields], dtype=np.int64)


def _frame_from_block(schema: tables.Schema, floats: list[str], block: np.ndarray,
                      others: dict, n: int) -> pd.DataFrame:
    """A table whose float64 columns are the first rows of ``block``, adopted without copy.

    The other columns come from ``others`` or are filled (:class:`sxlab.tables.Column`).
    """
    k = len(floats)
    if k:
        df = pd.DataFrame(block[:k].T, columns=floats, copy=False)
    else:
        df = pd.DataFrame(index=pd.RangeIndex(n))
    for pos, column in enumerate(schema):
        if column.dtype == "float64":
            continue
        df.insert(pos, column.name, pd.Series(column.values(others.get(column.name), n),
                                              copy=False))
    return df


def _panel_table(geometry: Detector) -> np.ndarray:
    """Rows of min_fs, min_ss, corner, fs step and ss step (m) for :func:`peak_resolution`."""
    return np.array([[p.min_fs, p.min_ss, *p.corner_m(), *p.fs_m(), *p.ss_m()]
                     for p in geometry.panels], dtype=np.float64)


_MIN_SEGMENT_BYTES = 16 << 20
_SAMPLE_BYTES = 4 << 20
_LINE_MARGIN = 1.25
_LINE_SLACK = 1024


def _segments(buf: bytes, start: int, stop: int, threads: int) -> list[tuple[int, int]]:
    """Split ``[start, stop)`` at chunk starts into up to ``threads`` similar ranges."""
    n = max(1, min(threads, (stop - start) // _MIN_SEGMENT_BYTES))
    cuts = [start]
    marker = b"\n" + _B_CHUNK_BEGIN
    for i in range(1, n):
        pos = buf.find(marker, max(start + (stop - start) * i // n, cuts[-1]), stop)
        if pos < 0:
            break
        if pos + 1 > cuts[-1]:
            cuts.append(pos + 1)
    cuts.append(stop)
    return list(zip(cuts[:-1], cuts[1:], strict=True))


def _default_threads() -> int:
    # Half the logical CPUs (hyperthreads share a core), at most 8.
    return max(1, min((os.cpu_count() or 1) // 2, 8))


def _run(fn, items, threads: int) -> list:
    if len(items) == 1 or threads <= 1:
        return [fn(*item) for item in items]
    with ThreadPoolExecutor(max_workers=min(threads, len(items))) as pool:
        return list(pool.map(lambda item: fn(*item), items))


def _scan(ctx: _Context, start: int, pre: _Preamble, panels: _Panels, *, follow: bool,
          offset_base: int = 0, frame_base: int = 0, threads: int = 1
          ) -> tuple[StreamData, int]:
    """Parse the chunks of ``ctx.buf`` from ``start``; return the data and the end offset."""
    buf = ctx.buf
    (pk_kinds, pk_min, pk_fields), (rf_kinds, rf_min, rf_fields) = _layouts(pre.version)
    pk_floats, pk_rows, pk_map = _float_layout(tables.PEAKS, pk_fields + ("d_A",
                                                                         "two_theta_deg"))
    pk_map = pk_map[:len(pk_fields)]
    rf_floats, rf_rows, rf_map = _float_layout(tables.REFLECTIONS, rf_fields + ("d_A",))
    rf_map = rf_map[:len(rf_fields)]
    pk_kinds_a = np.asarray(pk_kinds, dtype=np.int8)
    rf_kinds_a = np.asarray(rf_kinds, dtype=np.int8)
    arr = np.frombuffer(buf, dtype=np.uint8)
    stop = max(buf.rfind(b"\n") + 1, start)
    segments = _segments(buf, start, stop, threads)
    last = len(segments) - 1

    def parse(lines):
        caps = np.array([[n // 2 + 1, n // 2 + 1, n, n, n] for n in lines], dtype=np.int64)
        bases = np.vstack([np.zeros((1, 5), np.int64), np.cumsum(caps, axis=0)])
        cap_c, cap_x, cap_p, cap_r, cap_o = (int(v) for v in bases[-1])
        out = (np.empty((cap_c, _k.N_CI), np.int64), np.empty((cap_c, _k.N_CF)),
               np.empty((cap_x, _k.N_XI), np.int64), np.empty((cap_x, _k.N_XF)),
               np.empty((len(pk_rows), cap_p)), np.empty((cap_p, _k.N_RI), np.int64),
               np.empty(cap_p, np.uint64), np.empty((len(rf_rows), cap_r)),
               np.empty((cap_r, _k.N_RI), np.int64), np.empty(cap_r, np.uint64),
               np.empty((cap_o, _k.N_OI), np.int64))

        def call(i, s, e):
            return _k.scan_stream(arr, s, e, follow and i == last, pk_kinds_a, pk_map, pk_min,
                                  rf_kinds_a, rf_map, rf_min, bases[i], bases[i + 1], *out)

        return bases, out, _run(call, [(i, s, e) for i, (s, e) in enumerate(segments)],
                                threads)

    # Room for as many rows as there are lines: estimated from the first part of a large
    # file (with a margin), counted exactly when the estimate proves short.
    sizes = [e - s for s, e in segments]
    if stop - start > 2 * _SAMPLE_BYTES:
        sample = int(_k.count_newlines(arr, start, start + _SAMPLE_BYTES))
        lines = [int(sample * n / _SAMPLE_BYTES * _LINE_MARGIN) + _LINE_SLACK for n in sizes]
        bases, out, results = parse(lines)
        if any(r[0] == _k.FULL for r in results):
            lines = None
    else:
        lines = None
    if lines is None:
        lines = _run(lambda s, e: int(_k.count_newlines(arr, s, e)) + 1, segments, threads)
        bases, out, results = parse(lines)
    for r in results:
        if r[0] != _k.OK:
            raise _status_error(ctx, r[0], r[1], r[2], pre.version)
    done = int(results[-1][3])
    counts = np.array([r[4:9] for r in results], dtype=np.int64).reshape(-1, 5)
    nc, nx, npk, nrf, _ = (int(v) for v in counts.sum(axis=0))
    # Each range wrote its rows from its base; join the ranges' rows (no copy for one).
    packed = np.vstack([np.zeros((1, 5), np.int64), np.cumsum(counts, axis=0)])
    shift = bases[:-1] - packed[:-1]  # capacity index - packed index, per range and kind

    def join(array, kind, axis=0):
        parts = []
        for i in range(len(results)):
            rows = slice(bases[i, kind], bases[i, kind] + counts[i, kind])
            parts.append(array[:, rows] if axis else array[rows])
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=axis)

    ch_i, ch_f, cr_i, cr_f = join(out[0], 0), join(out[1], 0), join(out[2], 1), join(out[3], 1)
    pk_v, pk_i, pk_h = join(out[4], 2, axis=1), join(out[5], 2), join(out[6], 2)
    rf_v, rf_i, rf_h = join(out[7], 3, axis=1), join(out[8], 3), join(out[9], 3)
    other = join(out[10], 4)
    if len(results) > 1:
        for i in range(len(results)):
            rows = [slice(packed[i, k], packed[i + 1, k]) for k in range(5)]
            pk_i[rows[2], _k.RI_OWNER] -= shift[i, 0]
            cr_i[rows[1], _k.XI_CHUNK] -= shift[i, 0]
            rf_i[rows[3], _k.RI_OWNER] -= shift[i, 1]
            other[rows[4], _k.OI_CHUNK] -= shift[i, 0]
            oc = other[rows[4], _k.OI_CRYSTAL]
            other[rows[4], _k.OI_CRYSTAL] = np.where(oc >= 0, oc - shift[i, 1], oc)

    # ------------------------------------------------------------------ frames
    ci, cf = ch_i, ch_f
    serial = ci[:, _k.CI_SERIAL].copy()
    overrides: dict[int, dict] = {}
    cryst_overrides: dict[int, dict] = {}
    headers = []
    header_chunk = []
    for c, s, e, x in other.tolist():
        line = buf[s:e].decode("utf-8", errors="replace")
        try:
            if x < 0:
                found: list = []
                _header_line(line, overrides.setdefault(c, {}), found)
                headers += found
                header_chunk += [c] * len(found)
            else:
                _crystal_line(line, cryst_overrides.setdefault(x, {}))
        except (ValueError, IndexError):
            key = line.split(" = ", 1)[0].split(": ", 1)[0]
            raise ctx.error(f"expected a number (or numbers) for {key!r}", s) from None
    for c, values in overrides.items():
        if "serial" in values:
            serial[c] = values["serial"]
    frame = np.where(serial > 0, serial - 1, frame_base + np.arange(nc))

    def texts(cols, col):
        return [buf[s:e].decode("utf-8", errors="replace") if s >= 0 else None
                for s, e in cols[:, col:col + 2].tolist()]

    filename = texts(ci, _k.CI_FILE)
    event = texts(ci, _k.CI_EVENT)
    indexer = [t.strip() if t is not None else "none" for t in texts(ci, _k.CI_INDEXER)]
    hit = ci[:, _k.CI_HIT] > 0
    tries = ci[:, _k.CI_TRIES].copy()
    n_peaks = ci[:, _k.CI_NPEAKS].copy()
    energy = cf[:, _k.CF_ENERGY].copy()
    has_energy = ci[:, _k.CI_HAS_ENERGY] == 1
    floats = {"beam_divergence_rad": cf[:, _k.CF_DIV].copy(),
              "beam_bandwidth": cf[:, _k.CF_BW].copy(),
              "camera_length_m": cf[:, _k.CF_CLEN].copy(),
              "resolution_A": _pick_resolution(cf[:, _k.CF_RES_NM], cf[:, _k.CF_RES_A])}
    for c, values in overrides.items():
        for key, value in values.items():
            if key == "filename":
                filename[c] = value
            elif key == "event":
                event[c] = value
            elif key == "hit":
                hit[c] = value
            elif key == "n_indexing_tries":
                tries[c] = value
            elif key == "n_peaks":
                n_peaks[c] = value
            elif key == "photon_energy_eV":
                energy[c] = value
                has_energy[c] = True
            elif key in floats:
                floats[key][c] = value
    for c in range(nc):
        if filename[c] is None or not has_energy[c]:
            missing = [m for m, ok in (("'Image filename:'", filename[c] is not None),
                                       ("'photon_energy_eV ='", has_energy[c])) if not ok]
            raise ctx.error(f"incomplete chunk: expected {' and '.join(missing)} lines",
                            int(ci[c, _k.CI_BEGIN]), show_line=False)
    n_cryst = ci[:, _k.CI_NCRYST]

    # ------------------------------------------------------------------ peaks
    _python_numbers(ctx, pk_v, pk_i, pk_kinds, pk_map, "peak list")
    pchunk = pk_i[:, _k.RI_OWNER]
    counted = np.bincount(pchunk, minlength=nc) if npk else np.zeros(nc, dtype=np.int64)
    n_peaks = np.where(n_peaks >= 0, n_peaks, counted)
    fs, ss = pk_v[pk_rows["fs"]], pk_v[pk_rows["ss"]]
    panel = panels.resolve(ctx, pk_h, pk_i[:, _k.RI_LINE], pk_kinds.index(_k.NAME), fs, ss,
                           "peak list")
    lam = HC_EV_A / energy[pchunk]
    invd = pk_v[pk_rows["invd_nm"]]
    d_A = pk_v[pk_rows["d_A"]]
    two_theta = pk_v[pk_rows["two_theta_deg"]]
    d_A[:] = np.nan
    if pre.geometry is not None and npk:
        _k.peak_resolution(fs, ss, panel, lam, _panel_table(pre.geometry), d_A, two_theta)
    missing = np.isnan(d_A)
    if missing.any():
        with np.errstate(divide="ignore", invalid="ignore"):
            d_col = np.where(invd > 0, 10.0 / invd, np.nan)[missing]
            d_A[missing] = d_col
            two_theta[missing] = np.degrees(2.0 * np.arcsin(lam[missing] / (2.0 * d_col)))
    for name in pk_floats:
        if name not in pk_fields and name not in ("d_A", "two_theta_deg"):
            pk_v[pk_rows[name]] = np.nan
    peaks = _frame_from_block(tables.PEAKS, pk_floats, pk_v,
                              {"frame": frame[pchunk], "panel": panel,
                               **{f: pk_v[pk_rows[f]] for f in pk_fields}}, npk)

    # ------------------------------------------------------------------ crystals
    xi, xf = cr_i, cr_f
    xchunk = xi[:, _k.XI_CHUNK]
    cell = np.concatenate([xf[:, 0:3] * 10.0, xf[:, 3:6]], axis=1)
    basis = xf[:, _k.XF_BASIS:_k.XF_BASIS + 9] / 10.0
    basis[xi[:, _k.XI_HAS_BASIS] != 7] = np.nan
    xcols = {name: cell[:, i].copy() for i, name in enumerate(("a", "b", "c", "alpha", "beta",
                                                               "gamma"))}
    xcols.update({name: basis[:, i].copy() for i, name in enumerate(_BASIS)})
    xcols["profile_radius_invA"] = xf[:, _k.XF_RADIUS] / 10.0
    xcols["resolution_limit_A"] = _pick_resolution(xf[:, _k.XF_LIMIT_NM], xf[:, _k.XF_LIMIT_A])
    xcols["det_shift_x_mm"] = xf[:, _k.XF_DX].copy()
    xcols["det_shift_y_mm"] = xf[:, _k.XF_DY].copy()
    xcols["n_reflections"] = xi[:, _k.XI_NREFL].copy()
    xcols["n_saturated_reflections"] = xi[:, _k.XI_NSAT].copy()
    xcols["n_implausible_reflections"] = xi[:, _k.XI_NIMP].copy()
    for x, values in cryst_overrides.items():
        for key, value in values.items():
            xcols[key][x] = value
    basis = np.stack([xcols[name] for name in _BASIS], axis=1) if nx else np.zeros((0, 9))
    no_cell = ~np.isfinite(xcols["a"]) & np.all(np.isfinite(basis), axis=1)
    for x in np.flatnonzero(no_cell):
        for name, value in zip(("a", "b", "c", "alpha", "beta", "gamma"),
                               _cell_from_basis(basis[x].reshape(3, 3)), strict=True):
            xcols[name][x] = value
    cache: dict[bytes, str] = {}

    def symbol(s, e):
        if s < 0:
            return None
        raw = buf[s:e]
        value = cache.get(raw)
        if value is None:
            value = cache[raw] = raw.decode("utf-8", errors="replace").strip()
        return value

    lattice, centering, axis = [], [], []
    for row in xi[:, _k.XI_LATTICE:_k.XI_AXIS + 2].tolist():
        lat, cen, ua = symbol(row[0], row[1]), symbol(row[2], row[3]), symbol(row[4], row[5])
        if lat is None or cen is None or ua is None:
            lat, cen, ua = "triclinic", "P", "*"
        lattice.append(lat)
        centering.append("R" if cen[:1] == "H" else cen[:1])
        axis.append(ua[:1] if ua[:1] in ("a", "b", "c") else None)
    xcols.update(frame=frame[xchunk], crystal=xi[:, _k.XI_INDEX], lattice=lattice,
                 centering=centering, unique_axis=axis,
                 method=[indexer[c] for c in xchunk.tolist()])
    crystals = tables.STREAM_CRYSTALS.make(xcols, fill_missing=True)

    # ------------------------------------------------------------------ reflections
    _python_numbers(ctx, rf_v, rf_i, rf_kinds, rf_map, "reflection list")
    xrow = rf_i[:, _k.RI_OWNER]
    rfs, rss = rf_v[rf_rows["fs"]], rf_v[rf_rows["ss"]]
    rpanel = panels.resolve(ctx, rf_h, rf_i[:, _k.RI_LINE], rf_kinds.index(_k.NAME), rfs, rss,
                            "reflection list")
    h, k, l_ = rf_v[rf_rows["h"]], rf_v[rf_rows["k"]], rf_v[rf_rows["l"]]
    _k.reflection_resolution(h, k, l_, xrow, np.ascontiguousarray(basis), rf_v[rf_rows["d_A"]])
    for name in rf_floats:
        if name not in rf_fields and name != "d_A":
            rf_v[rf_rows[name]] = np.nan
    reflections = _frame_from_block(
        tables.REFLECTIONS, rf_floats, rf_v,
        {"frame": frame[xchunk][xrow], "crystal": xi[:, _k.XI_INDEX][xrow], "panel": rpanel,
         **{f: rf_v[rf_rows[f]] for f in rf_fields}}, nrf)

    # ------------------------------------------------------------------ assemble
    frames = tables.STREAM_FRAMES.make({
        "frame": frame, "event": event, "filename": filename, "hit": hit,
        "indexed": n_cryst > 0, "n_peaks": n_peaks, "n_crystals": n_cryst,
        "photon_energy_eV": energy, "serial": serial, "indexed_by": indexer,
        "n_indexing_tries": tries, "byte_offset": offset_base + ci[:, _k.CI_BEGIN], **floats,
    }, fill_missing=True)
    header_table = tables.STREAM_HEADERS.make({
        "frame": frame[np.asarray(header_chunk, dtype=np.int64)],
        "name": [t[0] for t in headers], "value": [t[1] for t in headers],
        "text": [t[2] for t in headers]})
    data = StreamData(frames=frames, peaks=peaks, crystals=crystals, reflections=reflections,
                      headers=header_table, geometry=pre.geometry, cell=pre.cell,
                      preamble=pre.text, version=f"{pre.version[0]}.{pre.version[1]}",
                      panel_names=list(panels.names), source=ctx.source)
    return data, done


def _python_numbers(ctx: _Context, block, ints, kinds, fmap, what: str) -> None:
    """Convert the numbers of rows the kernel marked, with ``float()``."""
    for r in np.flatnonzero(ints[:, _k.RI_LINE] < 0).tolist():
        pos = _line_offset(int(ints[r, _k.RI_LINE]))
        tokens = ctx.line_at(pos).split()
        col = 0
        for f, kind in enumerate(kinds):
            if kind != _k.FLOAT:
                continue
            if f < len(tokens):
                try:
                    block[fmap[col], r] = float(tokens[f])
                except ValueError:
                    raise ctx.error(f"{what}: expected a number in field {f + 1}, got "
                                    f"{tokens[f]!r}", pos) from None
            col += 1


def _status_error(ctx: _Context, status: int, pos: int, aux: int, version) -> StreamError:
    if status == _k.TRUNCATED_CHUNK:
        where = f"before the next chunk at line {ctx.lineno(aux)}" if aux >= 0 \
            else "before the end of the file"
        return ctx.error(f"truncated chunk: expected '{CHUNK_END}' {where}", pos,
                         show_line=False)
    if status in (_k.PEAK_FIELDS, _k.REFLECTION_FIELDS):
        fields = _ROW_FIELDS[min(max(version, (2, 1)), (2, 3))]
        what = "peak list" if status == _k.PEAK_FIELDS else "reflection list"
        expected = fields[0] if status == _k.PEAK_FIELDS else fields[1]
        return ctx.error(f"{what}: expected {expected}", pos)
    return ctx.error(f"{_STATUS_MESSAGES[status]} before line {ctx.lineno(aux)}", pos,
                     show_line=False)


def read_stream(path, *, geometry: Detector | None = None, threads: int | None = None
                ) -> StreamData:
    """Read a CrystFEL stream (format 2.0 to 2.3) into tables.

    Parameters
    ----------
    path : str or path-like
        The ``.stream`` file.
    geometry : Detector, optional
        Geometry to resolve panel names and peak resolution with; by default the one in
        the stream's geometry block (streams without one keep panel names in
        :attr:`StreamData.panel_names`).
    threads : int, optional
        Threads that parse parts of a large file at once (default: half the logical
        CPUs, at most 8; files are split at chunk boundaries into parts of at least
        16 MB).

    Returns
    -------
    StreamData
        With these tables (absent values: each column's fill, NaN for numbers, -1 for
        counts and indices, 0 for the Miller indices of peaks, missing for text):

        ``frames`` (:data:`sxlab.tables.STREAM_FRAMES`), one row per chunk:

        ====================== ========================================================
        frame                  ``Image serial number`` − 1 (chunk position if absent)
        event, filename        as written (``//12`` = frame 12 of the file)
        hit, indexed           hit flag; ``indexed_by`` is not ``none``
        n_peaks, n_crystals    ``num_peaks``; number of crystal blocks
        resolution_A           ``peak_resolution`` (Å)
        photon_energy_eV       eV
        serial                 ``Image serial number`` (1-based)
        indexed_by             indexing method, ``n_indexing_tries``
        beam_divergence_rad    rad; ``beam_bandwidth`` (fraction)
        camera_length_m        ``average_camera_length`` (m)
        byte_offset            offset of the chunk in the file (bytes)
        run, status, error     not in the format (missing)
        ====================== ========================================================

        ``peaks`` (:data:`sxlab.tables.PEAKS`): ``frame``, ``panel`` (index into
        the geometry's panels), ``fs``, ``ss`` (data-array px, 0.01 px precision),
        ``intensity`` (ADU), ``d_A`` (Å, from the geometry and the frame's photon energy;
        from the stream's 1/d column when there is no geometry), ``two_theta_deg``; the
        others are not in the format.

        ``crystals`` (:data:`sxlab.tables.STREAM_CRYSTALS`: the columns of
        :data:`sxlab.tables.CRYSTALS`, then the stream's own): ``frame``,
        ``crystal`` (block index in the chunk), ``a``, ``b``, ``c`` (Å), ``alpha``,
        ``beta``, ``gamma`` (deg), ``lattice``, ``centering`` (CrystFEL's ``H`` becomes
        ``R``), ``astar_x`` … ``cstar_z`` (lab-frame reciprocal basis, 1/Å, no 2π),
        ``method`` (the frame's ``indexed_by``), ``profile_radius_invA`` (1/Å),
        ``unique_axis``, ``resolution_limit_A`` (Å), ``n_reflections``,
        ``n_saturated_reflections``, ``n_implausible_reflections``, ``det_shift_x_mm``,
        ``det_shift_y_mm`` (mm); the indexer's other columns are not in the format.

        ``reflections`` (:data:`sxlab.tables.REFLECTIONS`): ``frame``,
        ``crystal``, ``h``, ``k``, ``l``, ``I``, ``sigma`` (ADU), ``peak`` (highest pixel,
        ADU), ``bg`` (mean background per pixel, ADU), ``fs``, ``ss`` (predicted position,
        data-array px, 0.1 px precision), ``panel``, ``d_A`` (Å, from the crystal's
        basis); the others are not in the format.

        ``headers`` (:data:`sxlab.tables.STREAM_HEADERS`): ``frame``, ``name`` (header path
        after ``header/float/``, ``header/int/``, ``header/str/`` or ``hdf5/``),
        ``value`` (float, NaN if not a number), ``text``.

    Raises
    ------
    StreamError
        When the file is not a 2.x stream or a chunk is incomplete or malformed; the
        message names the file, the line and what was expected.

    Notes
    -----
    Older formats: 2.1 and 2.2 peak lists have no panel column (panels then come from
    the pixel position, for non-stacked geometries), 2.2 reflections have no panel and
    2.1 reflections carry a phase and a count instead of peak and background. Old
    ``hdf5/<path> = value`` header lines are read like ``header/float/`` ones. Lines the
    reader does not know are ignored, as CrystFEL does.

    Examples
    --------
    >>> import tempfile, os
    >>> from sxlab.geometry import builtin_geometry
    >>> det = builtin_geometry("mpccd")
    >>> path = os.path.join(tempfile.mkdtemp(), "demo.stream")
    >>> peaks = pd.DataFrame({"frame": [3, 3], "panel": [2, 7], "fs": [10.5, 20.25],
    ...                       "ss": [2100.5, 7200.0], "intensity": [50.0, 60.0]})
    >>> with StreamWriter(path, det) as w:
    ...     w.write_frame({"frame": 3, "hit": True}, peaks)
    >>> data = read_stream(path)
    >>> data.frames[["frame", "serial", "n_peaks"]].to_numpy().tolist()
    [[3, 4, 2]]
    >>> data.peaks["panel"].tolist(), [data.panel_names[i] for i in data.peaks["panel"]]
    ([2, 7], ['q3', 'q8'])
    """
    source = str(path)
    buf = _map_file(path, source)
    try:
        pre = _read_preamble(buf, source, geometry)
        if pre is None:
            head = _read_preamble(bytes(buf[:]) + _B_CHUNK_BEGIN, source, geometry)
            return _empty_data(geometry=head.geometry, cell=head.cell, preamble=head.text,
                               version=f"{head.version[0]}.{head.version[1]}",
                               panel_names=list(head.geometry.panel_names) if head.geometry
                               else [], source=source)
        data, _ = _scan(_Context(buf, source), pre.end, pre, _Panels(pre.geometry),
                        follow=False,
                        threads=_default_threads() if threads is None else int(threads))
        return data
    finally:
        if isinstance(buf, mmap.mmap):
            with contextlib.suppress(BufferError):
                buf.close()


def _map_file(path, source: str):
    """The file's bytes: a read-only memory map, or a copy when line ends need fixing."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            raise StreamError("empty file; expected a CrystFEL stream", source=source)
        head = fh.read(4096)
        fh.seek(size - 1)
        ends_with_newline = fh.read(1) == b"\n"
        if ends_with_newline and b"\r\n" not in head:
            buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            if hasattr(mmap, "MADV_SEQUENTIAL"):
                buf.madvise(mmap.MADV_SEQUENTIAL)
            return buf
        fh.seek(0)
        data = fh.read()
    if b"\r\n" in head:
        data = data.replace(b"\r\n", b"\n")
    return data if data.endswith(b"\n") else data + b"\n"


class StreamFollower:
    """Read a growing stream incrementally.

    Each :meth:`poll` returns the chunks completed since the previous poll; a chunk
    still being written (no end marker yet) is left for a later poll.

    Parameters
    ----------
    path : str or path-like
        The stream file (it need not exist yet).
    geometry : Detector, optional
    threads : int, optional
        As for :func:`read_stream`.

    Attributes
    ----------
    offset : int
        Byte offset of the first chunk not read yet.
    n_frames : int
        Chunks returned so far.

    Examples
    --------
    >>> import tempfile, os
    >>> from sxlab.geometry import builtin_geometry
    >>> path = os.path.join(tempfile.mkdtemp(), "live.stream")
    >>> follower = StreamFollower(path)
    >>> len(follower.poll())
    0
    >>> writer = StreamWriter(path, builtin_geometry("eiger1m"))
    >>> writer.write_frame({"frame": 0, "hit": False})
    >>> writer.write_frame({"frame": 1, "hit": False})
    >>> follower.poll().frames["frame"].tolist()
    [0, 1]
    >>> writer.write_frame({"frame": 2, "hit": False})
    >>> follower.poll().frames["frame"].tolist()
    [2]
    >>> writer.close()
    """

    def __init__(self, path, *, geometry: Detector | None = None, threads: int | None = None):
        self.path = Path(path)
        self.source = str(path)
        self.threads = _default_threads() if threads is None else int(threads)
        self._geometry = geometry
        self._pre: _Preamble | None = None
        self._panels: _Panels | None = None
        self.offset = 0
        self._line = 1
        self.n_frames = 0

    @property
    def geometry(self) -> Detector | None:
        """The geometry, once the preamble has been read."""
        return None if self._pre is None else self._pre.geometry

    def _read_from(self, offset: int) -> bytes:
        try:
            with open(self.path, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                if size < offset:
                    raise StreamError(
                        f"the file is shorter ({size} bytes) than the {offset} bytes already "
                        "read; was it truncated or replaced?", source=self.source)
                fh.seek(offset)
                return fh.read()
        except FileNotFoundError:
            return b""

    def poll(self) -> StreamData:
        """The chunks completed since the last poll (an empty StreamData if none)."""
        if self._pre is None:
            buf = self._read_from(0)
            pre = _read_preamble(buf, self.source, self._geometry) if buf else None
            if pre is None:
                return _empty_data(source=self.source)
            self._pre = pre
            self._panels = _Panels(pre.geometry)
            self._line = 1 + buf.count(b"\n", 0, pre.end)
            self.offset = pre.end
            buf = buf[pre.end:]
        else:
            buf = self._read_from(self.offset)
        ctx = _Context(buf, self.source, self._line)
        data, done = _scan(ctx, 0, self._pre, self._panels, follow=True,
                           offset_base=self.offset, frame_base=self.n_frames,
                           threads=self.threads)
        self._line += buf.count(b"\n", 0, done)
        self.offset += done
        self.n_frames += len(data.frames)
        return data
