"""Detector geometry: panels, beam, pixel <-> lab <-> reciprocal transforms and maps.

Conventions
-----------
* **Lab frame** as in CrystFEL (and NeXus McStas): +z along the beam, +y up, right-handed;
  the interaction point is the origin. Lab positions are in metres.
* **Pixel coordinates** ``fs`` (fast scan) and ``ss`` (slow scan) are *data-array*
  coordinates, i.e. panel-relative position plus the panel's ``min_fs``/``min_ss``. The point
  (0, 0) is the **corner** of the first pixel; the centre of pixel ``[ss, fs]`` is at
  ``(fs + 0.5, ss + 0.5)``. This is the convention of CrystFEL's stream files.
* **Reciprocal space**: scattering vector ``q = k_out - k_in`` with ``|k| = 1/λ`` (no 2π),
  in 1/Å, so that ``d = 1/|q|``.
* Panel corner positions ``corner_x``/``corner_y`` and bad regions in lab coordinates are in
  units of the panel's pixels, as in CrystFEL ``.geom`` files.
"""

from __future__ import annotations

import dataclasses
import html
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

__all__ = [
    "HC_EV_A",
    "Beam",
    "BadRegion",
    "Detector",
    "DetectorMaps",
    "HeaderValue",
    "Panel",
    "PanelMask",
    "builtin_geometry",
    "builtin_names",
    "electron_wavelength_A",
    "mark_lab_region",
]

#: h·c in eV·Å, for photon energy <-> wavelength.
HC_EV_A = 12398.419843320026

_PLANCK_J_S = 6.62607015e-34
_ELECTRON_MASS_KG = 9.1093837015e-31
_ELEMENTARY_CHARGE_C = 1.602176634e-19
_SPEED_OF_LIGHT_M_S = 299792458.0


def electron_wavelength_A(voltage_V: float) -> float:
    """Relativistic de Broglie wavelength (Å) of electrons accelerated through ``voltage_V``.

    Examples
    --------
    >>> round(electron_wavelength_A(300e3), 6)
    0.019687
    """
    energy_J = _ELEMENTARY_CHARGE_C * voltage_V
    rest_J = _ELECTRON_MASS_KG * _SPEED_OF_LIGHT_M_S**2
    momentum = math.sqrt(2.0 * _ELECTRON_MASS_KG * energy_J * (1.0 + energy_J / (2.0 * rest_J)))
    return _PLANCK_J_S / momentum * 1e10


#: Units of a header-referenced beam value and the wavelength (Å) each gives.
_BEAM_UNITS: dict[str, Callable[[float], float]] = {
    "eV": lambda v: HC_EV_A / v,
    "keV": lambda v: HC_EV_A / (v * 1e3),
    "m": lambda v: v * 1e10,
    "A": lambda v: v,
    "V": electron_wavelength_A,
    "kV": lambda v: electron_wavelength_A(v * 1e3),
}
#: Units of a header-referenced length (camera length, detector shift) in metres.
_LENGTH_UNITS = {"m": 1.0, "mm": 1e-3}


@dataclass(frozen=True)
class HeaderValue:
    """A value read for each frame from its data file (CrystFEL's header references).

    A CrystFEL geometry may take the beam energy, the camera length and the detector
    shifts from the data files, e.g. ``photon_energy = /LCLS/photon_energy eV`` or
    ``clen = /LCLS/detector_1/EncoderValue mm``: the dataset is a scalar (or an array
    with one element) for the whole file, or holds one value per frame of the file.

    Parameters
    ----------
    path : str
        HDF5 dataset path.
    unit : str
        ``eV``, ``keV`` (photon energy), ``m``, ``A`` (wavelength), ``V``, ``kV``
        (electron acceleration voltage) for the beam; ``m`` or ``mm`` for lengths.

    Examples
    --------
    >>> HeaderValue("/LCLS/photon_energy", "keV").wavelength_A(12.39842)
    1.0
    """

    path: str
    unit: str

    def __post_init__(self):
        if not isinstance(self.path, str) or not self.path.startswith("/"):
            raise ValueError(f"a header value needs an HDF5 path starting with '/', got "
                             f"{self.path!r}")
        if self.unit not in _BEAM_UNITS and self.unit not in _LENGTH_UNITS:
            raise ValueError(f"unknown unit {self.unit!r} of header value {self.path}")

    def wavelength_A(self, value: float) -> float:
        """The wavelength (Å) a beam value in this unit gives."""
        if self.unit not in _BEAM_UNITS:
            raise ValueError(f"{self.path}: unit {self.unit!r} is not a beam unit")
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{self.path}: expected a positive beam value, got {value}")
        return round(_BEAM_UNITS[self.unit](float(value)), 12)

    def metres(self, value: float) -> float:
        """A length in this unit, in metres."""
        if self.unit not in _LENGTH_UNITS:
            raise ValueError(f"{self.path}: unit {self.unit!r} is not a length unit")
        if not math.isfinite(value):
            raise ValueError(f"{self.path}: expected a finite length, got {value}")
        return float(value) * _LENGTH_UNITS[self.unit]

    def __str__(self) -> str:
        return f"{self.path} {self.unit}"

Vec3 = tuple[float, float, float]


def _unit(v: Sequence[float]) -> Vec3:
    a = np.asarray(v, dtype=float)
    n = np.linalg.norm(a)
    if not np.isfinite(n) or n == 0:
        raise ValueError(f"direction vector {tuple(v)} has zero or invalid length")
    # Leave vectors that are already unit (to rounding) untouched, so that normalising is
    # idempotent: Panel.replace() and file round trips then keep fs/ss bit for bit.
    if abs(n - 1.0) <= 4 * np.finfo(float).eps:
        return tuple(float(x) for x in a)
    return tuple(float(x) for x in a / n)


@dataclass(frozen=True)
class Beam:
    """The incident X-ray beam.

    Parameters
    ----------
    wavelength_A : float
        Nominal wavelength in Å (NaN when it must come from each frame's header).
    bandwidth : float
        Spectral bandwidth: standard deviation of a Gaussian spectrum as a fraction of the
        photon energy (CrystFEL's ``bandwidth``).
    divergence_rad : float
        Full beam divergence in radians.
    wavelength_from : HeaderValue or None
        Where each frame's beam energy or wavelength is read from (its unit says which),
        as a CrystFEL geometry allows; :meth:`Detector.resolved` puts it in
        ``wavelength_A``.

    Examples
    --------
    >>> round(Beam.from_photon_energy(12398.42).wavelength_A, 6)
    1.0
    """

    wavelength_A: float
    bandwidth: float = 0.0
    divergence_rad: float = 0.0
    wavelength_from: HeaderValue | None = None

    @property
    def photon_energy_path(self) -> str | None:
        """The header path of a per-frame photon energy (eV or keV), if that is the source."""
        w = self.wavelength_from
        return w.path if w is not None and w.unit in ("eV", "keV") else None

    @classmethod
    def from_photon_energy(cls, energy_eV: float, **kwargs) -> Beam:
        return cls(wavelength_A=HC_EV_A / float(energy_eV), **kwargs)

    @property
    def photon_energy_eV(self) -> float:
        return HC_EV_A / self.wavelength_A

    @property
    def k_A(self) -> float:
        """Wavenumber 1/λ in 1/Å."""
        return 1.0 / self.wavelength_A


@dataclass(frozen=True)
class PanelMask:
    """A mask dataset referenced by a panel (CrystFEL ``maskN_data``/``maskN_file``...).

    A pixel is bad if ``(value & goodbits) != goodbits`` or ``(value & badbits) != 0``.
    """

    data: str
    file: str | None = None
    goodbits: int = 0
    badbits: int = 0


@dataclass(frozen=True)
class Panel:
    """One flat, rectangular sensor region of the detector.

    Parameters
    ----------
    name : str
        Panel name (unique in the detector).
    min_fs, max_fs, min_ss, max_ss : int
        Inclusive pixel range of the panel in the data array.
    corner_x, corner_y : float
        Lab x/y of the corner of the panel's first pixel, in pixels of this panel.
    fs, ss : tuple of 3 floats
        Lab-frame unit vectors of the fast- and slow-scan directions (normalised on
        construction).
    res : float
        Pixels per metre (1 / pixel size).
    clen : float
        Camera length in metres (distance of the interaction point from the detector
        plane, along z); NaN when it comes from a header (see ``Detector.clen_path``).
    coffset : float
        Extra z offset in metres added to ``clen``.
    data : str
        Location of the data array in the file.
    dims : tuple
        Meaning of each dimension of the data array: ``"%"`` (frame), ``"ss"``, ``"fs"``
        or a literal int index (e.g. the module index of a stacked detector).
    adu_per_photon, adu_per_eV : float or None
        Gain; one of them is set.
    max_adu : float
        Saturation level in ADU.
    flag_lessthan, flag_morethan, flag_equal : float or None
        Pixel values marking bad pixels (strict comparisons).
    mask_edge_pixels : int
        Number of pixels at each edge of the panel to treat as bad.
    masks : tuple of PanelMask
        Mask datasets (CrystFEL ``mask0_*`` .. ``mask7_*``).
    saturation_map, saturation_map_file : str or None
        Per-pixel saturation levels.
    no_index : bool
        Ignore this panel (CrystFEL ``no_index``).
    """

    name: str
    min_fs: int
    max_fs: int
    min_ss: int
    max_ss: int
    corner_x: float
    corner_y: float
    fs: Vec3 = (1.0, 0.0, 0.0)
    ss: Vec3 = (0.0, 1.0, 0.0)
    res: float = 1.0 / 75e-6
    clen: float = 0.1
    coffset: float = 0.0
    data: str = "/data/data"
    dims: tuple = ("%", "ss", "fs")
    adu_per_photon: float | None = 1.0
    adu_per_eV: float | None = None
    max_adu: float = float("inf")
    flag_lessthan: float | None = None
    flag_morethan: float | None = None
    flag_equal: float | None = None
    mask_edge_pixels: int = 0
    masks: tuple[PanelMask, ...] = ()
    saturation_map: str | None = None
    saturation_map_file: str | None = None
    no_index: bool = False

    def __post_init__(self):
        object.__setattr__(self, "fs", _unit(self.fs))
        object.__setattr__(self, "ss", _unit(self.ss))
        object.__setattr__(self, "dims", tuple(self.dims))
        if self.max_fs < self.min_fs or self.max_ss < self.min_ss:
            raise ValueError(
                f"panel {self.name!r}: empty pixel range fs {self.min_fs}..{self.max_fs}, "
                f"ss {self.min_ss}..{self.max_ss}"
            )
        if not self.res > 0:
            raise ValueError(f"panel {self.name!r}: res must be positive, got {self.res}")
        if "fs" not in self.dims or "ss" not in self.dims:
            raise ValueError(f"panel {self.name!r}: dims {self.dims} must contain 'fs' and 'ss'")
        if self.dims.index("fs") < self.dims.index("ss"):
            raise ValueError(f"panel {self.name!r}: 'fs' must be a higher dimension than 'ss'")

    @property
    def width(self) -> int:
        """Number of pixels along fs."""
        return self.max_fs - self.min_fs + 1

    @property
    def height(self) -> int:
        """Number of pixels along ss."""
        return self.max_ss - self.min_ss + 1

    @property
    def pixel_size_m(self) -> float:
        return 1.0 / self.res

    @property
    def slab(self) -> int | None:
        """Index of the panel in a stacked data array (the literal dim), or None."""
        lits = [d for d in self.dims if isinstance(d, (int, np.integer))]
        if len(lits) > 1:
            raise ValueError(f"panel {self.name!r}: more than one literal dim in {self.dims}")
        return int(lits[0]) if lits else None

    def corner_m(self) -> np.ndarray:
        """Lab position (m) of the corner of the first pixel."""
        return np.array(
            [self.corner_x / self.res, self.corner_y / self.res, self.clen + self.coffset]
        )

    def fs_m(self) -> np.ndarray:
        """Lab displacement (m) of one pixel step along fs."""
        return np.asarray(self.fs) / self.res

    def ss_m(self) -> np.ndarray:
        """Lab displacement (m) of one pixel step along ss."""
        return np.asarray(self.ss) / self.res

    def normal(self) -> np.ndarray:
        """Unit normal fs × ss."""
        n = np.cross(self.fs, self.ss)
        return n / np.linalg.norm(n)

    def replace(self, **changes) -> Panel:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class BadRegion:
    """A region of bad pixels (CrystFEL ``bad<name>/...``).

    Either in data-array pixel coordinates (``min_fs``..``max_fs``, ``min_ss``..``max_ss``,
    inclusive, with ``panel``) or in lab coordinates (``min_x``..``max_x``,
    ``min_y``..``max_y``, in pixels, strict inequalities tested at each pixel's corner as in
    CrystFEL; ``panel`` optional to restrict it).
    """

    name: str
    min_fs: int | None = None
    max_fs: int | None = None
    min_ss: int | None = None
    max_ss: int | None = None
    min_x: float | None = None
    max_x: float | None = None
    min_y: float | None = None
    max_y: float | None = None
    panel: str | None = None

    def __post_init__(self):
        pix = [self.min_fs, self.max_fs, self.min_ss, self.max_ss]
        lab = [self.min_x, self.max_x, self.min_y, self.max_y]
        has_pix = any(v is not None for v in pix)
        has_lab = any(v is not None for v in lab)
        if has_pix and has_lab:
            raise ValueError(f"bad region {self.name!r} mixes fs/ss and x/y limits")
        if not has_pix and not has_lab:
            raise ValueError(f"bad region {self.name!r} has no limits")
        if has_pix and any(v is None for v in pix):
            raise ValueError(
                f"bad region {self.name!r} needs all of min_fs, max_fs, min_ss, max_ss"
            )
        if has_lab and any(v is None for v in lab):
            raise ValueError(f"bad region {self.name!r} needs all of min_x, max_x, min_y, max_y")

    @property
    def is_lab(self) -> bool:
        return self.min_x is not None


class DetectorMaps:
    """Per-pixel maps of a detector, computed on first access and cached.

    Every map has the detector's ``data_shape``; pixels that belong to no panel are NaN
    (``panel`` is -1 there). Positions refer to pixel centres.

    Attributes
    ----------
    panel : int16 array
        Index of the panel each pixel belongs to (-1: none).
    x_m, y_m, z_m : float32 arrays
        Lab position of the pixel centre in metres.
    r_px : float32 array
        Distance from the beam axis in pixels of the pixel's panel.
    two_theta_rad, azimuth_rad : float32 arrays
        Scattering angle and azimuth (atan2(y, x)).
    d_A : float32 array
        Resolution in Å (inf at the beam centre).
    q_x, q_y, q_z, q_A : float32 arrays
        Scattering vector components and length in 1/Å (no 2π).
    """

    def __init__(self, detector: Detector):
        self._det = detector

    def _per_panel(self, fn, dtype=np.float32, fill=np.nan) -> np.ndarray:
        out = np.full(self._det.data_shape, fill, dtype=dtype)
        for i, p in enumerate(self._det.panels):
            fs = np.arange(p.width, dtype=float)[None, :] + 0.5
            ss = np.arange(p.height, dtype=float)[:, None] + 0.5
            out[self._det.panel_slice(i)] = fn(i, p, fs, ss)
        return out

    @cached_property
    def panel(self) -> np.ndarray:
        return self._per_panel(lambda i, p, f, s: i, dtype=np.int16, fill=-1)

    def _kernel_map(self, kind: int) -> np.ndarray:
        from ._geometry_kernels import panel_map

        det = self._det
        out = np.full(det.data_shape, np.nan, dtype=np.float32)
        k = 1.0 / det.beam.wavelength_A if kind >= 6 else 0.0
        for i, p in enumerate(det.panels):
            view = out[det.panel_slice(i)]
            direct = view.flags.c_contiguous and view.shape == (p.height, p.width)
            buf = view if direct else np.empty((p.height, p.width), dtype=np.float32)
            if kind in (4, 5):
                _atan2_map(buf, kind, p)
            else:
                panel_map(buf, kind, p.corner_m(), p.fs_m(), p.ss_m(), p.res, k)
            if not direct:
                view[...] = buf
        return out

    def computed(self) -> frozenset:
        """Names of the maps computed (and cached) so far.

        Examples
        --------
        >>> from sxlab.geometry import builtin_geometry
        >>> maps = builtin_geometry("eiger1m").maps
        >>> _ = maps.r_px
        >>> sorted(maps.computed())
        ['r_px']
        >>> maps.release()
        >>> sorted(maps.computed())
        []
        """
        return frozenset(k for k in vars(self) if not k.startswith("_"))

    def release(self, names=None) -> None:
        """Drop cached maps (all, or those in ``names``) to free their memory.

        A released map is computed again on its next use.
        """
        for name in list(self.computed() if names is None else names):
            self.__dict__.pop(name, None)

    @cached_property
    def x_m(self) -> np.ndarray:
        return self._kernel_map(0)

    @cached_property
    def y_m(self) -> np.ndarray:
        return self._kernel_map(1)

    @cached_property
    def z_m(self) -> np.ndarray:
        return self._kernel_map(2)

    @cached_property
    def r_px(self) -> np.ndarray:
        return self._kernel_map(3)

    @cached_property
    def two_theta_rad(self) -> np.ndarray:
        return self._kernel_map(4)

    @cached_property
    def azimuth_rad(self) -> np.ndarray:
        return self._kernel_map(5)

    @cached_property
    def q_x(self) -> np.ndarray:
        return self._kernel_map(6)

    @cached_property
    def q_y(self) -> np.ndarray:
        return self._kernel_map(7)

    @cached_property
    def q_z(self) -> np.ndarray:
        return self._kernel_map(8)

    @cached_property
    def q_A(self) -> np.ndarray:
        return self._kernel_map(9)

    @cached_property
    def d_A(self) -> np.ndarray:
        with np.errstate(divide="ignore"):
            return (1.0 / self.q_A).astype(np.float32)


#: Rows per block of the angle maps (two float64 blocks of this many rows are live).
_ATAN2_ROWS = 64


def _atan2_map(out: np.ndarray, kind: int, p: Panel) -> None:
    """Fill a panel's 2θ (``kind`` 4) or azimuth (5) map, float32 ``(height, width)``.

    The arguments come from a kernel a block of rows at a time and NumPy's vectorised
    ``arctan2`` (several times faster than the scalar one in a compiled loop; rounded to
    float32 the two agree).
    """
    from ._geometry_kernels import panel_atan2_args

    rows = min(_ATAN2_ROWS, p.height)
    num = np.empty((rows, p.width))
    den = np.empty((rows, p.width))
    corner, fs_m, ss_m = p.corner_m(), p.fs_m(), p.ss_m()
    for s0 in range(0, p.height, rows):
        n = min(rows, p.height - s0)
        panel_atan2_args(num[:n], den[:n], s0, kind, corner, fs_m, ss_m)
        np.arctan2(num[:n], den[:n], out=num[:n])
        out[s0:s0 + n] = num[:n]


def _panel_lab(p: Panel, fs_rel, ss_rel) -> np.ndarray:
    """Lab positions (m) of panel-relative pixel coordinates; shape (..., 3)."""
    fs_rel = np.asarray(fs_rel, dtype=float)
    ss_rel = np.asarray(ss_rel, dtype=float)
    return (
        p.corner_m()
        + fs_rel[..., None] * p.fs_m()
        + ss_rel[..., None] * p.ss_m()
    )


def _lab_to_q(xyz: np.ndarray, wavelength_A: float) -> np.ndarray:
    xyz = np.asarray(xyz, dtype=float)
    n = np.linalg.norm(xyz, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        u = xyz / n
    u[..., 2] -= 1.0
    return u / wavelength_A


@dataclass(frozen=True, eq=True)
class Detector:
    """A detector: an ordered set of panels plus the beam.

    Parameters
    ----------
    panels : sequence of Panel
    beam : Beam
    bad_regions : sequence of BadRegion
    groups : sequence of (name, members)
        Hierarchical panel groups (CrystFEL ``group_<name> = a,b``), the top one ``all``.
    rigid_groups, rigid_group_collections : sequence of (name, members)
        Pre-0.11 CrystFEL group syntax, kept so that such files round-trip.
    clen_from : HeaderValue or None
        Where each frame's camera length is read from (when ``clen`` is not a number;
        the panels' ``clen`` is then NaN).
    detector_shift_x_from, detector_shift_y_from : HeaderValue or None
        Where each frame's detector shift (CrystFEL ``detector_shift_x/y``) is read from:
        every panel moves by it in the lab x / y direction.
    peak_list, peak_list_type : str or None
        Location and type of pre-found peaks in the data files.
    name : str
        Free label (e.g. ``"EIGER2 X 16M"``).

    Notes
    -----
    Per-pixel maps are computed once per detector and cached in :attr:`maps`. A detector is
    immutable; :meth:`replace` returns a modified copy (with fresh maps).

    Examples
    --------
    >>> det = builtin_geometry("eiger4m", clen=0.2, wavelength_A=1.0)
    >>> det.data_shape
    (2167, 2070)
    >>> panel, fs, ss = det.lab_to_pixel(det.pixel_to_lab([100.5], [200.5]))
    >>> round(float(fs[0]), 9), round(float(ss[0]), 9)
    (100.5, 200.5)
    """

    panels: tuple[Panel, ...]
    beam: Beam
    bad_regions: tuple[BadRegion, ...] = ()
    groups: tuple[tuple[str, tuple[str, ...]], ...] = ()
    rigid_groups: tuple[tuple[str, tuple[str, ...]], ...] = ()
    rigid_group_collections: tuple[tuple[str, tuple[str, ...]], ...] = ()
    clen_from: HeaderValue | None = None
    detector_shift_x_from: HeaderValue | None = None
    detector_shift_y_from: HeaderValue | None = None
    peak_list: str | None = None
    peak_list_type: str | None = None
    name: str = ""
    _maps: DetectorMaps | None = field(default=None, init=False, compare=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "panels", tuple(self.panels))
        object.__setattr__(self, "bad_regions", tuple(self.bad_regions))
        for attr in ("groups", "rigid_groups", "rigid_group_collections"):
            val = getattr(self, attr)
            if isinstance(val, dict):
                val = val.items()
            object.__setattr__(self, attr, tuple((k, tuple(v)) for k, v in val))
        if not self.panels:
            raise ValueError("a detector needs at least one panel")
        names = [p.name for p in self.panels]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"duplicate panel names: {sorted(dup)}")
        slabs = {p.slab for p in self.panels}
        if None in slabs and len(slabs) > 1:
            raise ValueError("either all panels or none must have a literal (stacking) dim")
        for b in self.bad_regions:
            if b.panel is not None and b.panel not in names:
                raise ValueError(f"bad region {b.name!r} refers to unknown panel {b.panel!r}")
        object.__setattr__(self, "_maps", DetectorMaps(self))

    def __getstate__(self):
        # The per-pixel maps are a cache: never ship them (they can be tens of MB).
        state = dict(self.__dict__)
        state.pop("_maps", None)
        state.pop("data_shape", None)
        state.pop("_ray_tables", None)
        state.pop("_panel_vectors", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        object.__setattr__(self, "_maps", DetectorMaps(self))

    # ---------------------------------------------------------------- structure
    def replace(self, **changes) -> Detector:
        """Copy with fields replaced (maps are recomputed lazily)."""
        return dataclasses.replace(self, **changes)

    @property
    def clen_path(self) -> str | None:
        """Header path of a per-frame camera length (:attr:`clen_from`), if any."""
        return None if self.clen_from is None else self.clen_from.path

    @property
    def detector_shift_x_path(self) -> str | None:
        return None if self.detector_shift_x_from is None else self.detector_shift_x_from.path

    @property
    def detector_shift_y_path(self) -> str | None:
        return None if self.detector_shift_y_from is None else self.detector_shift_y_from.path

    @property
    def header_values(self) -> tuple[HeaderValue, ...]:
        """The values this geometry reads from each frame's data file."""
        return tuple(v for v in (self.beam.wavelength_from, self.clen_from,
                                 self.detector_shift_x_from, self.detector_shift_y_from)
                     if v is not None)

    def resolved(self, read: Callable[[HeaderValue], float]) -> Detector:
        """The geometry of one frame: header values read and put in place.

        Parameters
        ----------
        read : callable
            ``read(header_value) -> float``: the frame's value at ``header_value.path``
            (in the header value's unit).

        Returns
        -------
        Detector
            With ``beam.wavelength_A``, every panel's ``clen`` and the panel corners
            (detector shifts) set, and no header values left; ``self`` when it has none.

        Examples
        --------
        >>> det = builtin_geometry("eiger1m").replace(clen_from=HeaderValue("/clen", "mm"))
        >>> det.resolved(lambda value: 120.0).panels[0].clen
        0.12
        """
        if not self.header_values:
            return self
        beam = self.beam
        if beam.wavelength_from is not None:
            w = beam.wavelength_from
            beam = dataclasses.replace(beam, wavelength_A=w.wavelength_A(read(w)),
                                       wavelength_from=None)
        panels = self.panels
        if self.clen_from is not None:
            clen = self.clen_from.metres(read(self.clen_from))
            panels = tuple(p.replace(clen=clen) for p in panels)
        for attr, axis in (("detector_shift_x_from", "corner_x"),
                           ("detector_shift_y_from", "corner_y")):
            source = getattr(self, attr)
            if source is not None:
                shift_m = source.metres(read(source))
                panels = tuple(p.replace(**{axis: getattr(p, axis) + shift_m * p.res})
                               for p in panels)
        return self.replace(beam=beam, panels=panels, clen_from=None,
                            detector_shift_x_from=None, detector_shift_y_from=None)

    @property
    def maps(self) -> DetectorMaps:
        """Cached per-pixel maps (see :class:`DetectorMaps`)."""
        return self._maps

    @property
    def n_panels(self) -> int:
        return len(self.panels)

    @property
    def panel_names(self) -> list[str]:
        return [p.name for p in self.panels]

    def panel_index(self, name: str) -> int:
        for i, p in enumerate(self.panels):
            if p.name == name:
                return i
        raise KeyError(f"no panel named {name!r}; panels are {self.panel_names[:8]}...")

    def panel(self, name_or_index: str | int) -> Panel:
        if isinstance(name_or_index, str):
            return self.panels[self.panel_index(name_or_index)]
        return self.panels[int(name_or_index)]

    @property
    def is_stacked(self) -> bool:
        """True when panels live in a 3-D stack (module, ss, fs) of the data array."""
        return self.panels[0].slab is not None

    @cached_property
    def data_shape(self) -> tuple[int, ...]:
        """Shape of one frame's data array: (ss, fs), or (module, ss, fs) when stacked."""
        ny = max(p.max_ss for p in self.panels) + 1
        nx = max(p.max_fs for p in self.panels) + 1
        if self.is_stacked:
            return (max(p.slab for p in self.panels) + 1, ny, nx)
        return (ny, nx)

    @property
    def dims(self) -> tuple[str, ...]:
        """xarray dims of a frame: ("module", "ss", "fs") when stacked, else ("ss", "fs")."""
        return ("module", "ss", "fs") if self.is_stacked else ("ss", "fs")

    def panel_slice(self, index: int) -> tuple:
        """Index expression selecting panel ``index`` in a frame's data array."""
        p = self.panels[index]
        sl = (slice(p.min_ss, p.max_ss + 1), slice(p.min_fs, p.max_fs + 1))
        return (p.slab, *sl) if self.is_stacked else sl

    @property
    def group_dict(self) -> dict[str, tuple[str, ...]]:
        return dict(self.groups)

    @property
    def wavelength_A(self) -> float:
        return self.beam.wavelength_A

    # -------------------------------------------------------------- transforms
    def _panel_ids(self, panel, n: int) -> np.ndarray:
        if isinstance(panel, str):
            return np.full(n, self.panel_index(panel), dtype=np.int64)
        arr = np.asarray(panel)
        if arr.dtype.kind in "US" or arr.dtype == object:
            lut = {p.name: i for i, p in enumerate(self.panels)}
            try:
                ids = [lut[str(x)] for x in np.ravel(arr)]
            except KeyError as err:
                raise KeyError(f"no panel {err.args[0]!r} in the geometry; panels: "
                               f"{self.panel_names}") from None
            return np.broadcast_to(np.array(ids, dtype=np.int64).reshape(arr.shape),
                                   (n,) if arr.ndim == 0 else arr.shape).ravel().copy()
        return np.broadcast_to(arr.astype(np.int64), (n,)).copy()

    def _points(self, fs, ss, panel):
        """Flat fs, ss and panel ids of broadcast inputs, and the shape to give results."""
        fs = np.asarray(fs, dtype=float)
        ss = np.asarray(ss, dtype=float)
        if fs.ndim == 1 and ss.shape == fs.shape and isinstance(panel, np.ndarray) \
                and panel.shape == fs.shape and panel.dtype.kind in "iu":
            return fs, ss, panel.astype(np.int64, copy=False), fs.shape  # one point per row
        pshape = () if panel is None or isinstance(panel, str) else np.shape(panel)
        shape = np.broadcast_shapes(fs.shape, ss.shape, pshape)
        fs = np.broadcast_to(fs, shape).ravel()
        ss = np.broadcast_to(ss, shape).ravel()
        if panel is None:
            if self.is_stacked:
                raise ValueError("panel is required for a stacked detector")
            pid = self.panel_of_pixel(fs, ss)
        elif isinstance(panel, str) or not pshape:
            pid = self._panel_ids(panel, fs.size)
        else:
            pid = self._panel_ids(np.broadcast_to(np.asarray(panel), shape).ravel(), fs.size)
        return fs, ss, pid, shape

    def pixel_to_lab(self, fs, ss, panel=None) -> np.ndarray:
        """Lab positions (m) of data-array pixel coordinates.

        Parameters
        ----------
        fs, ss : float or array_like
            Data-array coordinates (pixel corner convention: centres at +0.5).
        panel : int, str or array_like of int or str, optional
            Panel index or name for each point. Required for stacked detectors; otherwise
            looked up from the pixel the point falls in.

        Returns
        -------
        ndarray, shape (..., 3)
            Lab x, y, z in metres (NaN where a point lies on no panel): one vector for
            scalar input, else one per point (the broadcast shape of the inputs).

        Examples
        --------
        >>> det = builtin_geometry("eiger1m", clen=0.1)
        >>> np.abs(det.pixel_to_lab(*det.beam_center_px(), 0)).round(12).tolist()
        [0.0, 0.0, 0.1]
        >>> det.pixel_to_lab([0.5, 1.5], 0.5, 0).shape
        (2, 3)
        """
        fs, ss, pid, shape = self._points(fs, ss, panel)
        corner, fs_m, ss_m, min_fs, min_ss = self._panel_vectors
        on = (pid >= 0) & (pid < len(self.panels))
        out = np.full((fs.size, 3), np.nan)
        p = pid[on]
        out[on] = (corner[p] + (fs[on] - min_fs[p])[:, None] * fs_m[p]
                   + (ss[on] - min_ss[p])[:, None] * ss_m[p])
        return out.reshape(shape + (3,))

    @cached_property
    def _panel_vectors(self) -> tuple:
        """Per-panel corner, fs and ss step vectors (m) and data-array origin (cached)."""
        return (np.array([p.corner_m() for p in self.panels]),
                np.array([p.fs_m() for p in self.panels]),
                np.array([p.ss_m() for p in self.panels]),
                np.array([p.min_fs for p in self.panels], dtype=float),
                np.array([p.min_ss for p in self.panels], dtype=float))

    def panel_of_pixel(self, fs, ss, module=None):
        """Index of the panel containing each data-array coordinate (-1: none).

        An int for scalar input, else an int64 array of the broadcast shape.

        Examples
        --------
        >>> builtin_geometry("eiger1m").panel_of_pixel(10.5, 20.5)
        0
        """
        fs_f = np.floor(np.asarray(fs, dtype=float)).astype(np.int64)
        ss_f = np.floor(np.asarray(ss, dtype=float)).astype(np.int64)
        fs_f, ss_f = np.broadcast_arrays(fs_f, ss_f)
        out = np.full(fs_f.shape, -1, dtype=np.int64)
        for i, p in enumerate(self.panels):
            sel = ((fs_f >= p.min_fs) & (fs_f <= p.max_fs) & (ss_f >= p.min_ss)
                   & (ss_f <= p.max_ss))
            if module is not None:
                sel &= np.asarray(module) == p.slab
            out[sel & (out < 0)] = i
        return int(out) if out.ndim == 0 else out

    def lab_to_pixel(self, xyz):
        """Project lab points (m) along the ray from the origin onto the detector.

        Parameters
        ----------
        xyz : array_like, shape (3,) or (..., 3)

        Returns
        -------
        panel : int or int ndarray
            Panel index (-1 where the ray hits no panel).
        fs, ss : float or float ndarrays
            Data-array coordinates of the intersection (NaN where no panel is hit).
            Scalars for one point, else arrays of shape ``xyz.shape[:-1]``.

        Examples
        --------
        >>> det = builtin_geometry("eiger1m", clen=0.1)
        >>> panel, fs, ss = det.lab_to_pixel([0.0, 0.0, 0.2])
        >>> panel, bool(np.allclose((fs, ss), det.beam_center_px(), atol=1e-9))
        (0, True)
        """
        xyz = np.asarray(xyz, dtype=float)
        return self._ray_to_pixel(xyz.reshape(-1, 3), xyz.shape[:-1])

    @cached_property
    def _ray_tables(self) -> tuple:
        """Per-panel arrays for the ray-intersection kernel (geometry-only, cached)."""
        corner, fs_m, ss_m, min_fs, min_ss = self._panel_vectors
        normal = np.cross(fs_m, ss_m)
        gram = np.empty((len(self.panels), 2, 2))
        gram[:, 0, 0] = np.einsum("ij,ij->i", fs_m, fs_m)
        gram[:, 1, 1] = np.einsum("ij,ij->i", ss_m, ss_m)
        gram[:, 0, 1] = gram[:, 1, 0] = np.einsum("ij,ij->i", fs_m, ss_m)
        return (
            corner, fs_m, ss_m, normal, np.linalg.inv(gram),
            np.array([p.width for p in self.panels], dtype=float),
            np.array([p.height for p in self.panels], dtype=float),
            min_fs, min_ss,
        )

    def _ray_to_pixel(self, d: np.ndarray, shape: tuple):
        from ._geometry_kernels import ray_to_pixel

        d = np.ascontiguousarray(d, dtype=np.float64)
        n = d.shape[0]
        panel = np.empty(n, dtype=np.int64)
        fs = np.empty(n)
        ss = np.empty(n)
        ray_to_pixel(d, *self._ray_tables, panel, fs, ss)
        if shape == ():
            return int(panel[0]), float(fs[0]), float(ss[0])
        return panel.reshape(shape), fs.reshape(shape), ss.reshape(shape)

    def lab_to_q(self, xyz, wavelength_A: float | None = None) -> np.ndarray:
        """Scattering vectors (1/Å) of lab positions (m), shape of ``xyz`` (..., 3).

        ``wavelength_A`` defaults to the beam's.
        """
        lam = self.beam.wavelength_A if wavelength_A is None else wavelength_A
        if not (np.isfinite(lam) and lam > 0):
            raise ValueError(f"a finite, positive wavelength is needed, got {lam}")
        return _lab_to_q(xyz, lam)

    def pixel_to_q(self, fs, ss, panel=None, *, wavelength_A: float | None = None
                   ) -> np.ndarray:
        """Scattering vectors (1/Å) of data-array coordinates, shape (..., 3).

        One vector for scalar input (see :meth:`pixel_to_lab`); ``wavelength_A``
        defaults to the beam's; NaN for points on no panel.
        """
        return self.lab_to_q(self.pixel_to_lab(fs, ss, panel), wavelength_A)

    def q_to_pixel(self, q, wavelength_A=None):
        """Where a diffracted beam of scattering vector ``q`` (1/Å) hits the detector.

        The outgoing direction is ``q + k_in``; ``q`` need not lie exactly on the Ewald
        sphere (only its direction after adding ``k_in`` matters). ``wavelength_A`` (a
        number, or one per vector) defaults to the beam's.

        Returns ``(panel, fs, ss)`` as :meth:`lab_to_pixel`: scalars for one vector.
        """
        lam = self.beam.wavelength_A if wavelength_A is None else wavelength_A
        q = np.asarray(q, dtype=float)
        k_out = q.reshape(-1, 3).copy()
        k_out[:, 2] += 1.0 / np.ravel(lam) if np.ndim(lam) else 1.0 / lam
        return self._ray_to_pixel(k_out, q.shape[:-1])

    def resolution_A(self, fs, ss, panel=None):
        """Resolution d (Å) at data-array coordinates: a float for scalar input.

        Examples
        --------
        >>> det = builtin_geometry("eiger1m", clen=0.1, wavelength_A=1.0)
        >>> round(det.resolution_A(1000.5, 1000.5), 3)
        2.145
        """
        q = self.pixel_to_q(fs, ss, panel)
        with np.errstate(divide="ignore"):
            d = 1.0 / np.linalg.norm(q, axis=-1)
        return float(d) if d.ndim == 0 else d

    def two_theta_rad(self, fs, ss, panel=None):
        """Scattering angle 2θ (rad) at data-array coordinates: a float for scalar input."""
        xyz = self.pixel_to_lab(fs, ss, panel)
        tth = np.arctan2(np.hypot(xyz[..., 0], xyz[..., 1]), xyz[..., 2])
        return float(tth) if tth.ndim == 0 else tth

    # ------------------------------------------------------------ convenience
    def beam_center_px(self, panel: int | str = 0) -> tuple[float, float]:
        """Data-array (fs, ss) where the direct beam would hit the plane of ``panel``."""
        p = self.panel(panel)
        c, a, b = p.corner_m(), p.fs_m(), p.ss_m()
        nrm = np.cross(a, b)
        d = np.array([0.0, 0.0, 1.0])
        t = (c @ nrm) / (d @ nrm)
        rel = t * d - c
        g = np.array([[a @ a, a @ b], [a @ b, b @ b]])
        u, v = np.linalg.solve(g, [rel @ a, rel @ b])
        return float(u + p.min_fs), float(v + p.min_ss)

    def with_beam(self, **changes) -> Detector:
        """Copy with beam parameters changed (e.g. ``wavelength_A=1.2``)."""
        return self.replace(beam=dataclasses.replace(self.beam, **changes))

    def with_clen(self, clen: float) -> Detector:
        """Copy with every panel's camera length set to ``clen`` (m)."""
        return self.replace(panels=tuple(p.replace(clen=clen) for p in self.panels))

    def bad_pixel_mask(self) -> np.ndarray:
        """Boolean array (data shape), True for pixels the geometry declares bad.

        Covers pixel-range and lab-coordinate bad regions, ``mask_edge_pixels``,
        ``no_index`` panels and pixels belonging to no panel. Value-based flags and mask
        datasets need frame data and are handled by :mod:`sxlab.masks` and the readers.
        """
        bad = self.maps.panel < 0
        for i, p in enumerate(self.panels):
            sl = self.panel_slice(i)
            if p.no_index:
                bad[sl] = True
            elif p.mask_edge_pixels > 0:
                e = p.mask_edge_pixels
                view = bad[sl]
                view[:e, :] = True
                view[-e:, :] = True
                view[:, :e] = True
                view[:, -e:] = True
        for b in self.bad_regions:
            for i, p in enumerate(self.panels):
                if b.panel is not None and b.panel != p.name:
                    continue
                view = bad[self.panel_slice(i)]
                if b.is_lab:
                    mark_lab_region(p, b, view)
                else:
                    f0 = max(b.min_fs, p.min_fs) - p.min_fs
                    f1 = min(b.max_fs, p.max_fs) - p.min_fs
                    s0 = max(b.min_ss, p.min_ss) - p.min_ss
                    s1 = min(b.max_ss, p.max_ss) - p.min_ss
                    if f0 <= f1 and s0 <= s1:
                        view[s0 : s1 + 1, f0 : f1 + 1] = True
        return bad

    # --------------------------------------------------------------- display
    def __repr__(self) -> str:
        return (
            f"<Detector {self.name or ''} {len(self.panels)} panel(s), data shape "
            f"{self.data_shape}, λ={self.beam.wavelength_A:.4f} Å, "
            f"{len(self.bad_regions)} bad region(s)>"
        )

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{html.escape(p.name)}</td><td>{p.min_fs}–{p.max_fs}</td>"
            f"<td>{p.min_ss}–{p.max_ss}</td><td>{p.corner_x:.1f}, {p.corner_y:.1f}</td>"
            f"<td>{1e6 / p.res:.1f}</td><td>{(p.clen + p.coffset) * 1e3:.2f}</td></tr>"
            for p in self.panels[:24]
        )
        more = (
            f"<tr><td colspan=6>… {len(self.panels) - 24} more panels</td></tr>"
            if len(self.panels) > 24
            else ""
        )
        return (
            f"<div><b>Detector</b> {html.escape(self.name)} — {len(self.panels)} panels, "
            f"data shape {self.data_shape}, λ = {self.beam.wavelength_A:.4f} Å "
            f"({self.beam.photon_energy_eV:.0f} eV), bandwidth {self.beam.bandwidth:g}, "
            f"{len(self.bad_regions)} bad regions"
            "<table><tr><th>panel</th><th>fs</th><th>ss</th><th>corner (px)</th>"
            f"<th>pixel (µm)</th><th>z (mm)</th></tr>{rows}{more}</table></div>"
        )


def mark_lab_region(p: Panel, b: BadRegion, view: np.ndarray) -> None:
    """Mark pixels of panel ``p`` whose corner lies strictly inside lab region ``b``.

    ``view`` is the panel's part of a boolean data-shape array (``True`` is set where
    marked); :meth:`Detector.bad_pixel_mask` and :func:`sxlab.masks.mask_lab_region`
    share this rule.

    Works on the bounding box of the region in panel pixel coordinates, so the cost scales
    with the region's size, not the panel's.
    """
    # Corner position of pixel (f, s): x = cx + f*fsx + s*ssx; invert the 2x2 map.
    m = np.array([[p.fs[0], p.ss[0]], [p.fs[1], p.ss[1]]])
    if abs(np.linalg.det(m)) < 1e-12:
        return
    minv = np.linalg.inv(m)
    corners = np.array(
        [[b.min_x, b.min_y], [b.min_x, b.max_y], [b.max_x, b.min_y], [b.max_x, b.max_y]]
    ) - [p.corner_x, p.corner_y]
    fsss = corners @ minv.T
    f0 = max(int(np.floor(fsss[:, 0].min())) - 1, 0)
    f1 = min(int(np.ceil(fsss[:, 0].max())) + 1, p.width - 1)
    s0 = max(int(np.floor(fsss[:, 1].min())) - 1, 0)
    s1 = min(int(np.ceil(fsss[:, 1].max())) + 1, p.height - 1)
    if f0 > f1 or s0 > s1:
        return
    ss, fs = np.mgrid[s0 : s1 + 1, f0 : f1 + 1]
    x = p.corner_x + fs * p.fs[0] + ss * p.ss[0]
    y = p.corner_y + fs * p.fs[1] + ss * p.ss[1]
    inside = (x > b.min_x) & (x < b.max_x) & (y > b.min_y) & (y < b.max_y)
    view[s0 : s1 + 1, f0 : f1 + 1] |= inside


# ------------------------------------------------------------------ built-in geometries
def _eiger(
    name: str,
    nx: int,
    ny: int,
    mod_fs: int,
    mod_ss: int,
    gap_fs: int,
    gap_ss: int,
    clen: float,
    wavelength_A: float,
    beam_center: tuple[float, float] | None,
    bandwidth: float,
) -> Detector:
    bcx, bcy = beam_center if beam_center is not None else (nx / 2 - 12.3, ny / 2 + 7.7)
    panel = Panel(
        name="p0",
        min_fs=0,
        max_fs=nx - 1,
        min_ss=0,
        max_ss=ny - 1,
        corner_x=-bcx,
        corner_y=-bcy,
        fs=(1.0, 0.0, 0.0),
        ss=(0.0, 1.0, 0.0),
        res=1.0 / 75e-6,
        clen=clen,
        data="/entry/data/data",
        dims=("%", "ss", "fs"),
        adu_per_photon=1.0,
        flag_equal=None,
    )
    bad = []
    nmod_fs = (nx + gap_fs) // (mod_fs + gap_fs)
    nmod_ss = (ny + gap_ss) // (mod_ss + gap_ss)
    for i in range(1, nmod_fs):
        f0 = i * mod_fs + (i - 1) * gap_fs
        bad.append(BadRegion(f"gap_fs{i}", f0, f0 + gap_fs - 1, 0, ny - 1, panel="p0"))
    for j in range(1, nmod_ss):
        s0 = j * mod_ss + (j - 1) * gap_ss
        bad.append(BadRegion(f"gap_ss{j}", 0, nx - 1, s0, s0 + gap_ss - 1, panel="p0"))
    return Detector(
        panels=(panel,),
        beam=Beam(wavelength_A, bandwidth=bandwidth),
        bad_regions=tuple(bad),
        groups=(("all", ("p0",)),),
        name=name,
    )


def _eiger1m(clen=0.1, wavelength_A=1.0, beam_center=None, bandwidth=0.0):
    """EIGER X 1M: 1030 × 1065 px of 75 µm, 1 × 2 modules of 1030 × 514 with a gap."""
    return _eiger("EIGER X 1M", 1030, 1065, 1030, 514, 10, 37, clen, wavelength_A,
                  beam_center, bandwidth)


def _eiger4m(clen=0.2, wavelength_A=1.0, beam_center=None, bandwidth=0.0):
    """EIGER X 4M: 2070 × 2167 px of 75 µm, 2 × 4 modules of 1030 × 514 with gaps."""
    return _eiger("EIGER X 4M", 2070, 2167, 1030, 514, 10, 37, clen, wavelength_A,
                  beam_center, bandwidth)


def _eiger16m(clen=0.2, wavelength_A=1.0, beam_center=None, bandwidth=0.0):
    """EIGER2 X 16M: 4148 × 4362 px of 75 µm, 4 × 8 modules of 1028 × 512 with gaps."""
    return _eiger("EIGER2 X 16M", 4148, 4362, 1028, 512, 12, 38, clen, wavelength_A,
                  beam_center, bandwidth)


def _rot2d(angle_deg: float, v: Sequence[float]) -> tuple[float, float]:
    a = np.deg2rad(angle_deg)
    c, s = np.cos(a), np.sin(a)
    return (c * v[0] - s * v[1], s * v[0] + c * v[1])


def _agipd(clen=0.12, wavelength_A=1.3, bandwidth=0.0):
    """AGIPD-like 1M: 16 modules of 512 × 128 px (200 µm) in 4 quadrants, 8 ASICs each.

    Data array (16, 512, 128): module, ss, fs. Each ASIC (64 ss × 128 fs) is a panel
    ``p<m>a<k>``. Modules lie with their ss axis along lab ±x (running away from the beam)
    and fs along lab ±y; four modules per quadrant, quadrants around a central hole. ASICs
    are separated by 2-pixel gaps, modules by 29 pixels, and each module is rotated by a
    fraction of a degree so that the fs/ss vectors are not trivial.
    """
    res = 1.0 / 200e-6
    asic_pitch = 64 + 2
    module_pitch = 128 + 29
    # (sign of ss along x, sign of fs along y, x shift, y shift) per quadrant
    quads = {0: (-1, -1, -3.0, 4.0), 1: (1, -1, 5.0, 2.0), 2: (1, 1, 2.0, -6.0),
             3: (-1, 1, -6.0, -3.0)}
    panels, groups = [], []
    for q, (sx, sy, dx, dy) in quads.items():
        qmods = []
        for mi in range(4):
            m = q * 4 + mi
            angle = 0.15 * (m % 5 - 2)
            ss_dir = _rot2d(angle, (float(sx), 0.0))
            fs_dir = _rot2d(angle, (0.0, float(sy)))
            # fs runs towards the beam in y, so the first pixel sits on the outer edge.
            y_outer = -sy * (12 + mi * module_pitch + 128)
            x0 = sx * 10.0 + dx
            names = []
            for a in range(8):
                name = f"p{m}a{a}"
                names.append(name)
                panels.append(
                    Panel(
                        name=name,
                        min_fs=0,
                        max_fs=127,
                        min_ss=a * 64,
                        max_ss=a * 64 + 63,
                        corner_x=x0 + ss_dir[0] * a * asic_pitch,
                        corner_y=y_outer + dy + ss_dir[1] * a * asic_pitch,
                        fs=(fs_dir[0], fs_dir[1], 0.0),
                        ss=(ss_dir[0], ss_dir[1], 0.0),
                        res=res,
                        clen=clen,
                        data="/entry_1/data_1/data",
                        dims=("%", m, "ss", "fs"),
                        adu_per_eV=0.0075,
                        adu_per_photon=None,
                        max_adu=65000.0,
                    )
                )
            groups.append((f"p{m}", tuple(names)))
            qmods.append(f"p{m}")
        groups.append((f"q{q}", tuple(qmods)))
    groups.append(("all", ("q0", "q1", "q2", "q3")))
    return Detector(
        panels=tuple(panels),
        beam=Beam(wavelength_A, bandwidth=bandwidth),
        groups=tuple(groups[i] for i in _group_order(groups)),
        name="AGIPD-like 1M",
    )


def _group_order(groups):
    # Lowest level first, "all" last (as in CrystFEL files).
    return sorted(range(len(groups)), key=lambda i: (groups[i][0] == "all",
                                                      groups[i][0].startswith("q"), i))


def _mpccd(clen=0.05, wavelength_A=1.24, bandwidth=0.0):
    """MPCCD-like octal: 8 sensors of 1024 (ss) × 512 (fs) px of 50 µm.

    Data array (8192, 512): sensor k occupies ss rows k·1024..k·1024+1023. Two columns of
    four sensors left and right of the beam, long axis along lab y, small rotations.
    """
    res = 1.0 / 50e-6
    panels = []
    for k in range(8):
        col = 0 if k < 4 else 1
        row = k % 4
        angle = 0.2 * ((k * 37) % 5 - 2)
        # Left column: ss runs up (+y), fs runs towards the beam (+x); right column mirrored.
        if col == 0:
            ss_dir = _rot2d(angle, (0.0, 1.0))
            fs_dir = _rot2d(angle, (1.0, 0.0))
            cx = -512 - 30.0
            cy = -2 * 1024 + row * (1024 + 8) - 15.0
        else:
            ss_dir = _rot2d(angle, (0.0, -1.0))
            fs_dir = _rot2d(angle, (-1.0, 0.0))
            cx = 512 + 30.0
            cy = 2 * 1024 - row * (1024 + 8) + 15.0
        panels.append(
            Panel(
                name=f"q{k + 1}",
                min_fs=0,
                max_fs=511,
                min_ss=k * 1024,
                max_ss=k * 1024 + 1023,
                corner_x=cx,
                corner_y=cy,
                fs=(fs_dir[0], fs_dir[1], 0.0),
                ss=(ss_dir[0], ss_dir[1], 0.0),
                res=res,
                clen=clen,
                coffset=0.0,
                data="/data/data",
                dims=("%", "ss", "fs"),
                adu_per_eV=0.001,
                adu_per_photon=None,
                max_adu=16000.0,
            )
        )
    names = tuple(p.name for p in panels)
    return Detector(
        panels=tuple(panels),
        beam=Beam(wavelength_A, bandwidth=bandwidth),
        groups=(("all", names),),
        name="MPCCD-like octal",
    )


_BUILTIN = {
    "eiger1m": _eiger1m,
    "eiger4m": _eiger4m,
    "eiger16m": _eiger16m,
    "agipd": _agipd,
    "mpccd": _mpccd,
}


def builtin_names() -> list[str]:
    """Names accepted by :func:`builtin_geometry`."""
    return sorted(_BUILTIN)


def builtin_geometry(name: str, **kwargs) -> Detector:
    """A built-in detector geometry.

    Parameters
    ----------
    name : {"eiger1m", "eiger4m", "eiger16m", "agipd", "mpccd"}
        ``eiger1m``: EIGER X 1M single panel, 1030 × 1065 px, 75 µm (small demo detector).
        ``eiger4m``: EIGER X 4M single panel, 2070 × 2167 px, 75 µm, module gaps as bad
        regions. ``eiger16m``: EIGER2 X 16M single panel, 4148 × 4362 px, 75 µm.
        ``agipd``: 16-module AGIPD-like layout (128 ASIC panels, 200 µm, stacked data).
        ``mpccd``: 8-sensor MPCCD-like layout (50 µm, one 8192 × 512 array).
    **kwargs
        ``clen`` (m), ``wavelength_A``, ``bandwidth``; EIGERs also ``beam_center``
        ((fs, ss) pixels).

    Examples
    --------
    >>> det = builtin_geometry("eiger16m", clen=0.15)
    >>> det.data_shape
    (4362, 4148)
    """
    try:
        fn = _BUILTIN[name.lower()]
    except KeyError:
        raise ValueError(
            f"unknown built-in geometry {name!r}; choose from {builtin_names()}"
        ) from None
    return fn(**kwargs)


def iter_panels(det: Detector, names: Iterable[str] | None = None):
    """Yield ``(index, panel)`` pairs, optionally restricted to ``names``."""
    wanted = None if names is None else set(names)
    for i, p in enumerate(det.panels):
        if wanted is None or p.name in wanted:
            yield i, p
