"""Read and write CrystFEL geometry (``.geom``) files as :class:`~sxlab.geometry.Detector`.

The reader follows CrystFEL's ``crystfel_geometry(5)`` format: ``key = value`` lines, ``;``
comments, ``panel/key`` panel settings, top-level panel keys as defaults for panels first
mentioned afterwards, ``bad<name>/key`` bad regions and ``group_<name>`` (or the older
``rigid_group_<name>``) groups. Every problem raises :class:`GeomError` naming the file,
the line and what was expected; the obsolete ``badrow_direction`` key is warned about
(:class:`GeomWarning`) and ignored, as CrystFEL does.

Beam energy, camera length and detector shifts may be numbers or, as in CrystFEL, paths
of values in the data files with a unit (``wavelength = /LCLS/wavelength m``,
``photon_energy = /LCLS/photon_energyK keV``, ``electron_voltage = /LCLS/voltage kV``,
``clen = /LCLS/detector_distance mm``): they become :class:`~sxlab.geometry.HeaderValue`
s that :meth:`~sxlab.geometry.Detector.resolved` (and :meth:`sxlab.io.Run.read`) put in
place for each frame. A geometry without any beam energy is read with a NaN wavelength:
the data (an NXmx master) or the caller supply it.

The writer emits every panel value explicitly for each panel, with floats at full
(``repr``) precision, so that ``read_geom(write_geom(det)) == det``.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from pathlib import Path

from ..geometry import (
    HC_EV_A,
    BadRegion,
    Beam,
    Detector,
    HeaderValue,
    Panel,
    PanelMask,
    electron_wavelength_A,
)
from ._errors import SourceError, decode_text

__all__ = ["GeomError", "GeomWarning", "electron_wavelength_A", "read_geom", "write_geom"]

#: Panel keys CrystFEL still accepts but ignores, with a warning.
_OBSOLETE_PANEL_KEYS = frozenset({"badrow_direction"})

_BEAM_KEYS = ("photon_energy", "wavelength", "electron_voltage")
_PEAK_LIST_TYPES = ("cxi", "list3", "auto")

_PANEL_INT_KEYS = frozenset({"min_fs", "max_fs", "min_ss", "max_ss", "mask_edge_pixels"})
_PANEL_FLOAT_KEYS = frozenset(
    {
        "corner_x",
        "corner_y",
        "coffset",
        "res",
        "adu_per_photon",
        "adu_per_eV",
        "max_adu",
        "flag_lessthan",
        "flag_morethan",
        "flag_equal",
    }
)
_PANEL_STR_KEYS = frozenset({"data", "saturation_map", "saturation_map_file"})
_PANEL_OTHER_KEYS = frozenset({"fs", "ss", "no_index"})
_REQUIRED_PANEL_KEYS = (
    "min_fs",
    "max_fs",
    "min_ss",
    "max_ss",
    "corner_x",
    "corner_y",
    "fs",
    "ss",
    "res",
)
_MASK_ALIASES = {
    "mask": "mask0_data",
    "mask_file": "mask0_file",
    "mask_good": "mask0_goodbits",
    "mask_bad": "mask0_badbits",
}
_N_MASKS = 8
_MASK_RE = re.compile(r"mask([0-7])_(data|file|goodbits|badbits)")
_DIM_RE = re.compile(r"dim(\d+)")
_BAD_PIXEL_KEYS = ("min_fs", "max_fs", "min_ss", "max_ss")
_BAD_LAB_KEYS = ("min_x", "max_x", "min_y", "max_y")
_DIRECTION_TERM = re.compile(r"(\s*)([+-]?)\s*((?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)?([xyz])")
_META_RE = re.compile(r";\s*sxlab:\s*(\w+)\s*=(.*)")
_BAD_NAME_CHARS = re.compile(r"[\s/=;,]")


class GeomError(SourceError):
    """A CrystFEL geometry file that cannot be understood.

    The message names the file (or ``source_name``), the line number, the offending line
    and what was expected; the same facts are available as attributes.

    Attributes
    ----------
    source : str or None
        File path, or the name given for text input.
    lineno : int or None
        1-based line number (None for problems of the file as a whole).
    line : str or None
        The offending line as written.
    key : str or None
        The key concerned, if any.

    Examples
    --------
    >>> try:
    ...     read_geom("clen = 0.1 m\\nwavelenght = 1 A\\n", source_name="demo.geom")
    ... except GeomError as err:
    ...     print(err.lineno, err.key)
    2 wavelenght
    """

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        lineno: int | None = None,
        line: str | None = None,
        key: str | None = None,
    ):
        self.key = key
        super().__init__(message, source=source, lineno=lineno, line=line)


class GeomWarning(UserWarning):
    """Something in a geometry file that is read but ignored (an obsolete key)."""


class _Invalid(Exception):
    """A value problem without location; the parser adds file and line."""


# ---------------------------------------------------------------------------- values
def _float(text: str, *, allow_inf: bool = False) -> float:
    try:
        v = float(text)
    except ValueError:
        raise _Invalid(f"expected a number, got {text!r}") from None
    if math.isnan(v) or (math.isinf(v) and not allow_inf):
        raise _Invalid(f"expected a finite number, got {text!r}")
    return v


def _int(text: str, *, minimum: int | None = 0) -> int:
    try:
        v = int(text)
    except ValueError:
        # CrystFEL reads these with atof: "1023.0" is the integer 1023
        try:
            f = float(text)
        except ValueError:
            f = math.nan
        if not (math.isfinite(f) and f == int(f)):
            raise _Invalid(f"expected an integer, got {text!r}") from None
        v = int(f)
    if minimum is not None and v < minimum:
        raise _Invalid(f"expected an integer >= {minimum}, got {text!r}")
    return v


def _bits(text: str) -> int:
    try:
        v = int(text, 0)
    except ValueError:
        raise _Invalid(f"expected a bit mask such as 0xffff or 255, got {text!r}") from None
    if v < 0:
        raise _Invalid(f"expected a non-negative bit mask, got {text!r}")
    return v


def _bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes"):
        return True
    if low in ("0", "false", "no"):
        return False
    raise _Invalid(f"expected 1 or 0 (true or false), got {text!r}")


def _direction(text: str) -> tuple[float, float, float]:
    """Parse a direction such as ``-0.0010x +0.9999y``, ``x``, ``-y`` or ``+0.5z``."""
    text = text.strip()
    comps = {}
    pos = 0
    while pos < len(text):
        m = _DIRECTION_TERM.match(text, pos)
        if m is None:
            break
        space, sign, number, axis = m.groups()
        if comps and not (space or sign):
            break
        if axis in comps:
            raise _Invalid(f"direction {text!r} names axis {axis!r} twice")
        value = float(number) if number else 1.0
        comps[axis] = -value if sign == "-" else value
        pos = m.end()
    if not comps or pos != len(text):
        raise _Invalid(f"expected a direction such as '-0.0010x +0.9999y' or 'x', got {text!r}")
    vec = tuple(comps.get(axis, 0.0) for axis in "xyz")
    if not all(math.isfinite(c) for c in vec) or not any(vec):
        raise _Invalid(f"direction {text!r} has zero or invalid length")
    return vec


def _dim(text: str) -> str | int:
    if text in ("%", "ss", "fs"):
        return text
    try:
        return _int(text)
    except _Invalid:
        raise _Invalid(f"expected '%', 'ss', 'fs' or a non-negative index, got {text!r}") from None


def _number_with_unit(text: str, units: dict[str, float], default: str) -> float:
    parts = text.split()
    if len(parts) not in (1, 2):
        raise _Invalid(f"expected a number and optional unit ({'|'.join(units)}), got {text!r}")
    unit = parts[1] if len(parts) == 2 else default
    if unit not in units:
        raise _Invalid(f"expected unit {' or '.join(units)}, got {unit!r}")
    return _float(parts[0]) * units[unit]


def _header_value(text: str, key: str, units: tuple[str, ...], default: str) -> HeaderValue:
    """A header location with an optional unit (one of ``units``; ``default`` if none)."""
    parts = text.split()
    if len(parts) not in (1, 2) or not parts[0].startswith("/"):
        raise _Invalid(f"expected a header path such as '/entry/{key}', got {text!r}")
    unit = parts[1] if len(parts) == 2 else default
    if unit not in units:
        raise _Invalid(f"values of {key} read from a header are in {' or '.join(units)}, "
                       f"got unit {unit!r}")
    return HeaderValue(parts[0], unit)


def _positive(value: float, what: str, text: str) -> float:
    if value <= 0:
        raise _Invalid(f"expected a positive {what}, got {text!r}")
    return value


def _beam_parser(key: str, units: dict[str, float], default: str, to_wavelength, what: str):
    def parse(text: str) -> tuple[str, object]:
        if text.startswith("/"):
            return ("path", _header_value(text, key, tuple(units), default))
        value = _number_with_unit(text, units, default)
        return ("wavelength_A", to_wavelength(_positive(value, what, text)))

    return parse


_parse_photon_energy = _beam_parser("photon_energy", {"eV": 1.0, "keV": 1e3}, "eV",
                                    lambda e: HC_EV_A / e, "photon energy")
_parse_wavelength = _beam_parser("wavelength", {"m": 1e10, "A": 1.0}, "m",
                                 lambda w: w, "wavelength")
_parse_electron_voltage = _beam_parser("electron_voltage", {"V": 1.0, "kV": 1e3}, "V",
                                       electron_wavelength_A, "voltage")


def _parse_clen(text: str) -> tuple[str, object]:
    if text.startswith("/"):  # CrystFEL: a header value without unit is in mm
        return ("path", _header_value(text, "clen", ("mm", "m"), "mm"))
    return ("m", _number_with_unit(text, {"m": 1.0, "mm": 1e-3}, "m"))


def _parse_shift(key: str):
    def parse(text: str) -> tuple[str, object]:
        if text.startswith("/"):  # CrystFEL: a header value without unit is in m
            return ("path", _header_value(text, key, ("m", "mm"), "m"))
        return ("m", _number_with_unit(text, {"m": 1.0, "mm": 1e-3}, "m"))

    return parse


def _parse_bandwidth(text: str) -> float:
    value = _float(text)
    if value < 0:
        raise _Invalid(f"expected a non-negative fraction, got {text!r}")
    return value


def _parse_peak_list_type(text: str) -> str:
    if text not in _PEAK_LIST_TYPES:
        raise _Invalid(f"expected one of {', '.join(_PEAK_LIST_TYPES)}, got {text!r}")
    return text


_GLOBAL_PARSERS = {
    "photon_energy": _parse_photon_energy,
    "wavelength": _parse_wavelength,
    "electron_voltage": _parse_electron_voltage,
    "clen": _parse_clen,
    "bandwidth": _parse_bandwidth,
    "detector_shift_x": _parse_shift("detector_shift_x"),
    "detector_shift_y": _parse_shift("detector_shift_y"),
    "peak_list": str,
    "peak_list_type": _parse_peak_list_type,
}
_GLOBAL_KEYS = frozenset(_GLOBAL_PARSERS)


def _canonical_panel_key(key: str) -> str | None:
    key = _MASK_ALIASES.get(key, key)
    if (
        key in _PANEL_INT_KEYS
        or key in _PANEL_FLOAT_KEYS
        or key in _PANEL_STR_KEYS
        or key in _PANEL_OTHER_KEYS
        or _MASK_RE.fullmatch(key)
        or _DIM_RE.fullmatch(key)
    ):
        return key
    return None


def _panel_value(key: str, text: str):
    if key in _PANEL_INT_KEYS:
        return _int(text)
    if key in _PANEL_FLOAT_KEYS:
        v = _float(text, allow_inf=key == "max_adu")
        if key == "res" and v <= 0:
            raise _Invalid(f"expected a positive number of pixels per metre, got {text!r}")
        return v
    if key in ("fs", "ss"):
        return _direction(text)
    if key == "no_index":
        return _bool(text)
    if _DIM_RE.fullmatch(key):
        return _dim(text)
    if key.endswith(("_goodbits", "_badbits")):
        return _bits(text)
    return text


# ---------------------------------------------------------------------------- reader
class _Parser:
    """Collects the statements of one geometry file, with the line each came from."""

    def __init__(self, source: str):
        self.source = source
        self.lines: dict[int, str] = {}
        self.globals: dict[str, tuple[object, int]] = {}
        self.defaults: dict[str, tuple[object, int]] = {}
        self.trailing_default: int | None = None
        # panel name -> (first line, {key: (value, line, from_default)})
        self.panels: dict[str, tuple[int, dict[str, tuple[object, int, bool]]]] = {}
        self.bad: dict[str, tuple[int, dict[str, tuple[object, int]]]] = {}
        self.groups: list[tuple[str, tuple[str, ...], int]] = []
        self.rigid_groups: list[tuple[str, tuple[str, ...], int]] = []
        self.collections: list[tuple[str, tuple[str, ...], int]] = []
        self.meta: dict[str, tuple[str, int]] = {}

    def error(self, message: str, lineno: int | None = None, key: str | None = None):
        line = self.lines.get(lineno) if lineno is not None else None
        return GeomError(message, source=self.source, lineno=lineno, line=line, key=key)

    def parse(self, text: str) -> None:
        for lineno, raw in enumerate(text.splitlines(), start=1):
            self.lines[lineno] = raw
            stripped = raw.strip()
            meta = _META_RE.fullmatch(stripped)
            if meta:
                self.meta[meta.group(1)] = (meta.group(2).strip(), lineno)
            content = raw.split(";", 1)[0].strip()
            if not content:
                continue
            if "=" not in content:
                raise self.error("expected 'key = value'", lineno)
            key, value = (s.strip() for s in content.split("=", 1))
            if not key:
                raise self.error("expected a key before '='", lineno)
            if not value:
                raise self.error(f"expected a value for {key!r} after '='", lineno, key)
            try:
                self._statement(key, value, lineno)
            except _Invalid as exc:
                raise self.error(f"{key}: {exc}", lineno, key) from None

    def _statement(self, key: str, value: str, lineno: int) -> None:
        if "/" in key:
            owner, sub = (s.strip() for s in key.split("/", 1))
            if not owner or not sub or "/" in sub:
                raise self.error(
                    f"expected 'panel/key' or 'bad<name>/key', got key {key!r}", lineno, key
                )
            if owner.startswith("bad"):
                self._bad_region(owner, sub, value, lineno, key)
            else:
                self._panel(owner, sub, value, lineno, key)
        elif key.startswith("rigid_group_collection_"):
            self._group(self.collections, key, "rigid_group_collection_", value, lineno)
        elif key.startswith("rigid_group_"):
            self._group(self.rigid_groups, key, "rigid_group_", value, lineno)
        elif key.startswith("group_"):
            self._group(self.groups, key, "group_", value, lineno)
        elif key in _GLOBAL_KEYS:
            self._global(key, value, lineno)
        elif key in _OBSOLETE_PANEL_KEYS:
            self._obsolete(key, lineno)
        else:
            canon = _canonical_panel_key(key)
            if canon is None:
                raise self.error(f"unknown key {key!r}", lineno, key)
            self._set_entry(self.defaults, canon, _panel_value(canon, value), lineno)
            if self.trailing_default is None:
                self.trailing_default = lineno

    def _obsolete(self, key: str, lineno: int) -> None:
        warnings.warn(f"{self.source}, line {lineno}: {key!r} is obsolete and ignored (as "
                      "CrystFEL ignores it)", GeomWarning, stacklevel=6)

    @staticmethod
    def _set_entry(entries: dict, key: str, value, lineno: int, *extra) -> None:
        other = {"adu_per_photon": "adu_per_eV", "adu_per_eV": "adu_per_photon"}.get(key)
        if other in entries and (not extra or entries[other][2]):
            del entries[other]
        entries[key] = (value, lineno, *extra)

    def _panel(self, name: str, key: str, value: str, lineno: int, full_key: str) -> None:
        if key in _GLOBAL_KEYS:
            raise self.error(
                f"{key} is a top-level key; expected '{key} = ...' without a panel name",
                lineno,
                full_key,
            )
        if key in _OBSOLETE_PANEL_KEYS:
            self._obsolete(key, lineno)
            return
        canon = _canonical_panel_key(key)
        if canon is None:
            raise self.error(f"unknown panel key {key!r} for panel {name!r}", lineno, full_key)
        if name not in self.panels:
            entries = {k: (v, ln, True) for k, (v, ln) in self.defaults.items()}
            self.panels[name] = (lineno, entries)
            self.trailing_default = None
        self._set_entry(self.panels[name][1], canon, _panel_value(canon, value), lineno, False)

    def _bad_region(self, name: str, key: str, value: str, lineno: int, full_key: str) -> None:
        entries = self.bad.setdefault(name, (lineno, {}))[1]
        if key == "panel":
            entries[key] = (value, lineno)
            return
        if key in _BAD_PIXEL_KEYS:
            parsed, others = _int(value), _BAD_LAB_KEYS
        elif key in _BAD_LAB_KEYS:
            parsed, others = _float(value), _BAD_PIXEL_KEYS
        else:
            raise self.error(
                f"unknown bad-region key {key!r}; expected one of "
                f"{', '.join(_BAD_PIXEL_KEYS + _BAD_LAB_KEYS)} or panel",
                lineno,
                full_key,
            )
        if any(k in entries for k in others):
            raise self.error(
                f"bad region {name!r} mixes fs/ss and x/y limits; use separate regions",
                lineno,
                full_key,
            )
        entries[key] = (parsed, lineno)

    def _group(self, target: list, key: str, prefix: str, value: str, lineno: int) -> None:
        name = key[len(prefix) :]
        if not name:
            raise self.error(f"expected a group name after {prefix!r}", lineno, key)
        if any(g[0] == name for g in target):
            raise self.error(f"group {name!r} is defined twice", lineno, key)
        members = tuple(m.strip() for m in value.split(","))
        if not all(members):
            raise self.error("expected a comma-separated list of names", lineno, key)
        target.append((name, members, lineno))

    def _global(self, key: str, value: str, lineno: int) -> None:
        parsed = _GLOBAL_PARSERS[key](value)
        if key in _BEAM_KEYS:
            for other in _BEAM_KEYS:
                if other != key and other in self.globals:
                    raise self.error(
                        f"{key} given, but {other} was already given on line "
                        f"{self.globals[other][1]}; expected exactly one of "
                        f"{', '.join(_BEAM_KEYS)}",
                        lineno,
                        key,
                    )
        self.globals[key] = (parsed, lineno)

    # ----------------------------------------------------------------- assembly
    def detector(self, default_name: str) -> Detector:
        if self.trailing_default is not None:
            raise self.error(
                "top-level panel keys set defaults for panels mentioned later, but no panel "
                "follows; expected 'panel/key = value' lines after it",
                self.trailing_default,
            )
        if not self.panels:
            raise self.error("no panels; expected lines such as 'p0/min_fs = 0'")
        clen, clen_from = self._clen()
        panels = tuple(self._make_panel(name, clen) for name in self.panels)
        shifts = {}
        for key, axis in (("detector_shift_x", "corner_x"), ("detector_shift_y", "corner_y")):
            kind, value = self._global_value(key) or (None, None)
            if kind == "path":
                shifts[key + "_from"] = value
            elif kind == "m":  # a fixed shift: move every panel now
                panels = tuple(p.replace(**{axis: getattr(p, axis) + value * p.res})
                               for p in panels)
        bad = tuple(self._make_bad_region(name, panels) for name in self.bad)
        groups = self._check_groups(panels)
        name = self.meta.get("name", (default_name, None))[0]
        try:
            return Detector(
                panels=panels,
                beam=self._beam(),
                bad_regions=bad,
                groups=groups,
                rigid_groups=tuple((g, m) for g, m, _ in self.rigid_groups),
                rigid_group_collections=tuple((g, m) for g, m, _ in self.collections),
                clen_from=clen_from,
                **shifts,
                peak_list=self._global_value("peak_list"),
                peak_list_type=self._global_value("peak_list_type"),
                name=name,
            )
        except ValueError as exc:
            raise self.error(str(exc)) from None

    def _global_value(self, key: str):
        return self.globals[key][0] if key in self.globals else None

    def _clen(self) -> tuple[float, str | None]:
        if "clen" not in self.globals:
            raise self.error("no clen; expected 'clen = <distance> m' or 'clen = /header/path'")
        (kind, value), _ = self.globals["clen"]
        return (math.nan, value) if kind == "path" else (value, None)

    def _beam(self) -> Beam:
        given = [k for k in _BEAM_KEYS if k in self.globals]
        # No beam energy: the data or the caller give it (CrystFEL also allows this)
        kind, value = self.globals[given[0]][0] if given else ("wavelength_A", math.nan)
        bandwidth = self._global_value("bandwidth")
        divergence = 0.0
        if "divergence_rad" in self.meta:
            text, lineno = self.meta["divergence_rad"]
            try:
                divergence = _float(text)
            except _Invalid as exc:
                raise self.error(f"divergence_rad: {exc}", lineno) from None
        return Beam(
            wavelength_A=value if kind == "wavelength_A" else math.nan,
            bandwidth=0.0 if bandwidth is None else bandwidth,
            divergence_rad=divergence,
            wavelength_from=value if kind == "path" else None,
        )

    def _make_panel(self, name: str, clen: float) -> Panel:
        first, entries = self.panels[name]
        where = f"panel {name!r} (first mentioned on line {first})"
        for key in _REQUIRED_PANEL_KEYS:
            if key not in entries:
                raise self.error(f"{where} has no {key}; expected '{name}/{key} = ...'")
        if "adu_per_photon" not in entries and "adu_per_eV" not in entries:
            raise self.error(f"{where} has neither adu_per_photon nor adu_per_eV")
        values = {k: v for k, (v, *_) in entries.items()}
        kwargs = {
            k: values[k]
            for k in _PANEL_INT_KEYS | _PANEL_FLOAT_KEYS | _PANEL_STR_KEYS | _PANEL_OTHER_KEYS
            if k in values
        }
        kwargs.setdefault("adu_per_photon", None)
        kwargs.setdefault("adu_per_eV", None)
        kwargs["dims"] = self._dims(name, entries)
        kwargs["masks"] = _masks(values)
        try:
            return Panel(name=name, clen=clen, **kwargs)
        except ValueError as exc:
            raise self.error(f"{where}: {exc}") from None

    def _dims(self, name: str, entries: dict) -> tuple:
        dims = {}
        for key, (value, lineno, _) in entries.items():
            m = _DIM_RE.fullmatch(key)
            if m:
                dims[int(m.group(1))] = (value, lineno)
        if not dims:
            return ("ss", "fs")
        for i in range(max(dims) + 1):
            if i not in dims:
                value, lineno = dims[max(dims)]
                raise self.error(
                    f"panel {name!r} has dim{max(dims)} but no dim{i}; expected every "
                    f"dimension from dim0 to dim{max(dims)}",
                    lineno,
                )
        if not any(dims[i][0] == "fs" for i in dims) or not any(dims[i][0] == "ss" for i in dims):
            raise self.error(
                f"panel {name!r}: expected one dim = ss and one dim = fs", dims[max(dims)][1]
            )
        return tuple(dims[i][0] for i in range(len(dims)))

    def _make_bad_region(self, name: str, panels: tuple[Panel, ...]) -> BadRegion:
        first, entries = self.bad[name]
        label = name[3:].removeprefix("_")
        where = f"bad region {name!r} (first mentioned on line {first})"
        values = {k: v for k, (v, _) in entries.items()}
        is_lab = any(k in values for k in _BAD_LAB_KEYS)
        needed = _BAD_LAB_KEYS if is_lab else _BAD_PIXEL_KEYS
        missing = [k for k in needed if k not in values]
        if missing:
            raise self.error(f"{where} has no {', '.join(missing)}")
        for lo, hi in zip(needed[::2], needed[1::2], strict=True):
            if values[lo] > values[hi]:
                raise self.error(f"{where}: expected {lo} <= {hi}", entries[hi][1])
        by_name = {p.name: p for p in panels}
        panel = values.get("panel")
        if panel is not None and panel not in by_name:
            raise self.error(f"{where} refers to unknown panel {panel!r}", entries["panel"][1])
        if not is_lab:
            if panel is None:
                inside = [p.name for p in panels if _contains(p, values)]
                if len(inside) != 1:
                    raise self.error(
                        f"{where} needs a panel: it lies inside {len(inside)} panels; "
                        f"expected '{name}/panel = <panel name>'"
                    )
                panel = inside[0]
            elif not _contains(by_name[panel], values):
                p = by_name[panel]
                raise self.error(
                    f"{where}: fs {values['min_fs']}..{values['max_fs']}, ss "
                    f"{values['min_ss']}..{values['max_ss']} is not inside panel {panel!r} "
                    f"(fs {p.min_fs}..{p.max_fs}, ss {p.min_ss}..{p.max_ss})"
                )
        limits = {k: values[k] for k in needed}
        return BadRegion(label, panel=panel, **limits)

    def _check_groups(self, panels: tuple[Panel, ...]) -> tuple:
        panel_names = {p.name for p in panels}
        self._check_rigid_groups(panel_names)
        if not self.groups:
            return (("all", tuple(p.name for p in panels)),)
        group_names = {g for g, _, _ in self.groups}
        for gname, members, lineno in self.groups:
            for m in members:
                if m not in panel_names and m not in group_names:
                    raise self.error(
                        f"group {gname!r}: {m!r} is neither a panel nor a group", lineno
                    )
                if m == gname:
                    raise self.error(f"group {gname!r} contains itself", lineno)
        if "all" not in group_names:
            raise self.error("groups are defined but none is called 'all'; expected 'group_all'")
        return tuple((g, m) for g, m, _ in self.groups)

    def _check_rigid_groups(self, panel_names: set[str]) -> None:
        rigid_names = {g for g, _, _ in self.rigid_groups}
        for gname, members, lineno in self.rigid_groups:
            for m in members:
                if m not in panel_names:
                    raise self.error(f"rigid group {gname!r}: {m!r} is not a panel", lineno)
        for gname, members, lineno in self.collections:
            for m in members:
                if m not in rigid_names:
                    raise self.error(
                        f"rigid group collection {gname!r}: {m!r} is not a rigid group", lineno
                    )


def _contains(p: Panel, region: dict) -> bool:
    return (
        p.min_fs <= region["min_fs"]
        and region["max_fs"] <= p.max_fs
        and p.min_ss <= region["min_ss"]
        and region["max_ss"] <= p.max_ss
    )


def _masks(values: dict) -> tuple[PanelMask, ...]:
    masks = []
    for i in range(_N_MASKS):
        data = values.get(f"mask{i}_data")
        if data is None:
            continue
        masks.append(
            PanelMask(
                data=data,
                file=values.get(f"mask{i}_file"),
                goodbits=values.get(f"mask{i}_goodbits", 0),
                badbits=values.get(f"mask{i}_badbits", 0),
            )
        )
    return tuple(masks)


def _is_text(obj) -> bool:
    return isinstance(obj, str) and ("\n" in obj or "=" in obj)


def read_geom(path_or_text: str | os.PathLike, *, source_name: str | None = None) -> Detector:
    """Read a CrystFEL geometry file.

    Parameters
    ----------
    path_or_text : str or path-like
        Path of a ``.geom`` file, or the text of one (a string containing a newline or
        ``=`` is taken as text).
    source_name : str, optional
        Name used for the input in error messages (default: the path, or
        ``"<geometry text>"``).

    Returns
    -------
    Detector
        Panels in order of first mention, bad regions, groups (a flat ``all`` group is
        created when the file has none), and the beam. The detector's ``name`` comes from a
        ``; sxlab: name = ...`` comment (as :func:`write_geom` writes), else the file's
        stem, else ``""``.

    Raises
    ------
    GeomError
        For unknown keys, unparsable values, missing required keys and inconsistent
        statements; the message names the file, line number, line and what was expected.

    Notes
    -----
    * ``photon_energy`` (eV or keV), ``wavelength`` (m or A) or ``electron_voltage``
      (V or kV; relativistic electron wavelength) gives the beam; a header path with
      its unit sets :attr:`Beam.wavelength_from` and a NaN wavelength; none of them
      leaves the wavelength NaN (to come from the data or the caller).
    * ``clen`` is a top-level key: a number (m, or mm with unit) sets every panel's
      ``clen``; a header path (mm unless given in m) sets :attr:`Detector.clen_from`
      and NaN panel ``clen``. ``detector_shift_x/y``: a header path (m unless given in
      mm) sets :attr:`Detector.detector_shift_x_from`; a number moves every panel.
    * Integer keys written as ``0.0`` are read as integers, as CrystFEL does.
    * Without ``dimN`` keys a panel's dims are ``("ss", "fs")`` (CrystFEL's default).
    * ``fs``/``ss`` directions are normalised to unit length.
    * Bad regions keep their name without the ``bad`` prefix (and one ``_``).

    Examples
    --------
    >>> det = read_geom('''
    ... photon_energy = 12.4 keV
    ... clen = 0.15 m
    ... res = 13333.3
    ... adu_per_photon = 1
    ... p0/min_fs = 0
    ... p0/max_fs = 99
    ... p0/min_ss = 0
    ... p0/max_ss = 79
    ... p0/corner_x = -50
    ... p0/corner_y = -40
    ... p0/fs = x
    ... p0/ss = y
    ... ''')
    >>> det.data_shape, round(det.beam.wavelength_A, 4)
    ((80, 100), 0.9999)
    """
    if _is_text(path_or_text):
        text = path_or_text
        source = source_name or "<geometry text>"
        default_name = ""
    else:
        path = Path(path_or_text)
        source = source_name or str(path)
        text = decode_text(path.read_bytes(), GeomError, source, comment=";")
        default_name = path.stem
    parser = _Parser(source)
    parser.parse(text)
    return parser.detector(default_name)


# ---------------------------------------------------------------------------- writer
def _fmt(v: float) -> str:
    return repr(float(v))


def _fmt_direction(v) -> str:
    terms = [
        f"{'-' if c < 0 else '+'}{_fmt(abs(c))}{axis}"
        for c, axis in zip(v, "xyz", strict=True)
        if c != 0
    ]
    return " ".join(terms)


def _check_name(name: str, what: str) -> None:
    if not name or _BAD_NAME_CHARS.search(name):
        raise ValueError(f"{what} name {name!r} cannot be written to a geometry file")
    if what == "panel" and name.startswith(("bad", "group_", "rigid_group")):
        raise ValueError(
            f"panel name {name!r} would be read as a bad region or group; rename the panel"
        )


_BEAM_KEY_OF_UNIT = {"eV": "photon_energy", "keV": "photon_energy", "m": "wavelength",
                     "A": "wavelength", "V": "electron_voltage", "kV": "electron_voltage"}


def _beam_lines(beam: Beam) -> list[str]:
    w = beam.wavelength_from
    if w is not None:
        return [f"{_BEAM_KEY_OF_UNIT[w.unit]} = {w.path} {w.unit}"]
    lam = float(beam.wavelength_A)
    if math.isnan(lam):
        return ["; no beam energy: it comes from the data"]
    if not (math.isfinite(lam) and lam > 0):
        raise ValueError(f"the beam has an invalid wavelength {lam}")
    energy = _fmt(HC_EV_A / lam)
    if HC_EV_A / float(energy) == lam and len(energy) <= len(_fmt(lam)):
        return [f"photon_energy = {energy} eV"]
    return [f"wavelength = {_fmt(lam)} A"]


def _clen_line(det: Detector) -> str:
    if det.clen_from is not None:
        return f"clen = {det.clen_from}"
    clens = {float(p.clen) for p in det.panels}
    if len(clens) != 1 or not all(math.isfinite(c) for c in clens):
        raise ValueError(
            "a geometry file has one clen for all panels; these panels have "
            f"{sorted(clens)} (express per-panel offsets with coffset)"
        )
    return f"clen = {_fmt(clens.pop())} m"


def _panel_lines(p: Panel) -> list[str]:
    _check_name(p.name, "panel")
    out = [
        ("min_fs", str(int(p.min_fs))),
        ("max_fs", str(int(p.max_fs))),
        ("min_ss", str(int(p.min_ss))),
        ("max_ss", str(int(p.max_ss))),
        ("corner_x", _fmt(p.corner_x)),
        ("corner_y", _fmt(p.corner_y)),
        ("fs", _fmt_direction(p.fs)),
        ("ss", _fmt_direction(p.ss)),
        ("res", _fmt(p.res)),
        ("coffset", _fmt(p.coffset)),
        ("data", p.data),
    ]
    out += [(f"dim{i}", str(d)) for i, d in enumerate(p.dims)]
    for key in ("adu_per_photon", "adu_per_eV"):
        if getattr(p, key) is not None:
            out.append((key, _fmt(getattr(p, key))))
    if math.isfinite(p.max_adu):
        out.append(("max_adu", _fmt(p.max_adu)))
    for key in ("flag_lessthan", "flag_morethan", "flag_equal"):
        if getattr(p, key) is not None:
            out.append((key, _fmt(getattr(p, key))))
    if p.mask_edge_pixels:
        out.append(("mask_edge_pixels", str(int(p.mask_edge_pixels))))
    if len(p.masks) > _N_MASKS:
        raise ValueError(f"panel {p.name!r} has {len(p.masks)} masks; at most {_N_MASKS} fit")
    for i, m in enumerate(p.masks):
        out.append((f"mask{i}_data", m.data))
        if m.file is not None:
            out.append((f"mask{i}_file", m.file))
        out.append((f"mask{i}_goodbits", f"0x{int(m.goodbits):x}"))
        out.append((f"mask{i}_badbits", f"0x{int(m.badbits):x}"))
    for key in ("saturation_map", "saturation_map_file"):
        if getattr(p, key) is not None:
            out.append((key, getattr(p, key)))
    if p.no_index:
        out.append(("no_index", "1"))
    return [f"{p.name}/{k} = {v}" for k, v in out]


def _bad_region_lines(b: BadRegion) -> list[str]:
    if _BAD_NAME_CHARS.search(b.name):
        raise ValueError(f"bad region name {b.name!r} cannot be written to a geometry file")
    keys = _BAD_LAB_KEYS if b.is_lab else _BAD_PIXEL_KEYS
    fmt = _fmt if b.is_lab else (lambda v: str(int(v)))
    lines = [f"bad_{b.name}/{k} = {fmt(getattr(b, k))}" for k in keys]
    if b.panel is not None:
        lines.append(f"bad_{b.name}/panel = {b.panel}")
    return lines


def _group_lines(prefix: str, groups) -> list[str]:
    lines = []
    for name, members in groups:
        _check_name(name, "group")
        lines.append(f"{prefix}{name} = {','.join(members)}")
    return lines


def write_geom(detector: Detector, path: str | os.PathLike | None = None) -> str:
    """Write a detector as a CrystFEL geometry file.

    Parameters
    ----------
    detector : Detector
    path : str or path-like, optional
        Where to write the file; if omitted, only the text is returned.

    Returns
    -------
    str
        The file's text. Reading it back with :func:`read_geom` gives a detector equal to
        ``detector``.

    Raises
    ------
    ValueError
        If the detector cannot be expressed in the format: panels with different ``clen``,
        no wavelength, more than eight masks on a panel, or names containing whitespace,
        ``/``, ``=``, ``;`` or ``,``.

    Notes
    -----
    Every panel value is written explicitly for each panel (no top-level defaults), floats
    with ``repr`` precision. The beam is written as ``photon_energy`` in eV when that
    converts back to the same wavelength exactly and is no longer to write, else as
    ``wavelength`` in Å. The
    detector name and a non-zero beam divergence, which the format lacks, go into
    ``; sxlab: ...`` comments that CrystFEL ignores.

    Examples
    --------
    >>> from sxlab.geometry import builtin_geometry
    >>> det = builtin_geometry("eiger4m")
    >>> text = write_geom(det)
    >>> read_geom(text) == det
    True
    """
    det = detector
    if "\n" in det.name:
        raise ValueError("the detector name must be a single line")
    lines = [
        "; CrystFEL geometry file written by sxlab",
        f"; sxlab: name = {det.name}",
    ]
    if det.beam.divergence_rad:
        lines.append(f"; sxlab: divergence_rad = {_fmt(det.beam.divergence_rad)}")
    lines += ["", *_beam_lines(det.beam), f"bandwidth = {_fmt(det.beam.bandwidth)}"]
    lines.append(_clen_line(det))
    if det.detector_shift_x_from is not None:
        lines.append(f"detector_shift_x = {det.detector_shift_x_from}")
    if det.detector_shift_y_from is not None:
        lines.append(f"detector_shift_y = {det.detector_shift_y_from}")
    if det.peak_list is not None:
        lines.append(f"peak_list = {det.peak_list}")
    if det.peak_list_type is not None:
        lines.append(f"peak_list_type = {det.peak_list_type}")
    for p in det.panels:
        lines += ["", *_panel_lines(p)]
    for b in det.bad_regions:
        lines += ["", *_bad_region_lines(b)]
    group_lines = (
        _group_lines("group_", det.groups)
        + _group_lines("rigid_group_", det.rigid_groups)
        + _group_lines("rigid_group_collection_", det.rigid_group_collections)
    )
    if group_lines:
        lines += ["", *group_lines]
    for line in lines:
        if line.startswith(";") or not line:
            continue
        if ";" in line or "\n" in line or "\r" in line or line.endswith("= "):
            raise ValueError(
                f"cannot write {line!r}: values must be non-empty, without ';' or line breaks"
            )
    text = "\n".join(lines) + "\n"
    if path is not None:
        Path(path).write_text(text, encoding="utf-8")
    return text
