"""Processing parameters ("trial" parameters): frozen, typed, TOML in and out, hashed.

A :class:`Params` groups one frozen section per stage. Each stage's own parameter class
is the one home of its defaults: :class:`~sxlab.masks.MaskParams`,
:class:`~sxlab.peaks.PeakFinderParams`, :class:`~sxlab.hits.HitParams`,
:class:`~sxlab.indexing.IndexParams`, :class:`~sxlab.integration.IntegrationParams`,
:class:`~sxlab.merging.MergeParams`; this module adds which stages run, the reference
cell and the file format.

TOML layout (every key optional; unknown sections or keys are errors naming them)::

    [stages]    peaks = true, index = true, integrate = true, profile = true
    [mask]      beamstop_radius_px = 0, beamstop_rod_width_px = 0, ..., d_min_A, d_max_A
                                                                   (MaskParams)
    [peaks]     adc_threshold = 3.0, min_snr = 6.0, ...        (PeakFinderParams)
    [hits]      min_peaks = 16, max_peaks (left out: no maximum), solvent_d_high_A = 3.2,
                solvent_d_low_A = 6.0                              (HitParams)
    [cell]      a = 79.1, b = 79.1, c = 37.9, alpha = 90, beta = 90, gamma = 90,
                space_group = "P 43 21 2"   (or file = "lyso.cell", a CrystFEL cell
                file or a PDB file with a CRYST1 line; or space_group alone: the
                symmetry without a reference cell)
    [index]     fast = false, retry = false, multi = false, ...  (IndexParams)
    [integrate] radii = [4.0, 5.0, 7.0], ...                     (IntegrationParams)
    [merge]     scale = true, iterations = 3, n_shells = 20, ...  (MergeParams)

``None`` values (TOML has no null) are simply left out and mean "default". Every value
is checked against its declared type and range (:mod:`sxlab._frozen`): a mistake names
the file, the section, the key, the value and what was expected.
:meth:`Params.template` (``sxlab params --template``) writes every key with its default
and meaning, commented.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import math
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from .cell import UnitCell
from .hits import HitParams
from .indexing import IndexParams
from .integration import IntegrationParams
from .masks import MaskParams
from .merging import MergeParams
from .peaks import PeakFinderParams

__all__ = ["Params", "ParamsError", "StageParams"]


class ParamsError(ValueError):
    """A parameter file or dictionary that cannot be used; names the key and the source."""


@dataclass(frozen=True)
class StageParams:
    """Which stages run: ``peaks`` → hit decision → ``index`` → ``integrate``.

    A later stage needs the earlier ones (indexing needs peaks); ``profile`` records the
    per-stage timing tree of every frame.
    """

    peaks: bool = True
    index: bool = True
    integrate: bool = True
    profile: bool = True

    def __post_init__(self):
        if self.index and not self.peaks:
            raise ParamsError("stages.index needs stages.peaks")
        if self.integrate and not self.index:
            raise ParamsError("stages.integrate needs stages.index")


_SECTIONS = {
    "stages": StageParams,
    "mask": MaskParams,
    "peaks": PeakFinderParams,
    "hits": HitParams,
    "index": IndexParams,
    "integrate": IntegrationParams,
    "merge": MergeParams,
}
_CELL_KEYS = ("a", "b", "c", "alpha", "beta", "gamma", "space_group", "lattice_type",
              "centering", "unique_axis")


def _section_from_dict(cls, values: dict, where: str):
    names = {f.name: f for f in dataclasses.fields(cls)}
    for key in values:
        if key not in names:
            raise ParamsError(f"{where}: unknown key {key!r}; known keys: {sorted(names)}")
    try:
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items()})
    except (TypeError, ValueError) as exc:
        raise ParamsError(f"{where}: {exc}") from exc


def _plain(value):
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def _section_dict(obj) -> dict:
    return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}


@dataclass(frozen=True)
class Params:
    """The full parameter set of a processing trial.

    Attributes
    ----------
    stages, mask, peaks, hits, index, integrate, merge
        One frozen section per stage (see the module docstring for the TOML layout).
    cell : UnitCell or None
        Reference cell for indexing (None: index without one; lattices are then
        reported in their conventional setting).
    symmetry : str or None
        Space group of the crystals: the reference cell's, or given alone (``[cell]``
        with only ``space_group``), when indexing accepts only lattices of that
        Bravais type. Recorded with the results; ``sxlab merge`` uses it.

    Examples
    --------
    >>> p = Params().replace(peaks={"adc_threshold": 3.0, "min_snr": 6.0})
    >>> p.peaks.min_snr
    6.0
    >>> Params.from_toml(p.to_toml()) == p
    True
    >>> len(p.digest())
    16
    """

    stages: StageParams = field(default_factory=StageParams)
    mask: MaskParams = field(default_factory=MaskParams)
    peaks: PeakFinderParams = field(default_factory=PeakFinderParams)
    hits: HitParams = field(default_factory=HitParams)
    index: IndexParams = field(default_factory=IndexParams)
    integrate: IntegrationParams = field(default_factory=IntegrationParams)
    merge: MergeParams = field(default_factory=MergeParams)
    cell: UnitCell | None = None
    symmetry: str | None = None

    def __post_init__(self):
        for name, cls in _SECTIONS.items():
            if not isinstance(getattr(self, name), cls):
                raise ParamsError(f"{name} must be a {cls.__name__}, got "
                                  f"{type(getattr(self, name)).__name__}")
        if self.cell is not None and not isinstance(self.cell, UnitCell):
            raise ParamsError(f"cell must be a UnitCell or None, got {type(self.cell).__name__}")
        symmetry = self.symmetry
        if symmetry is not None:
            if not isinstance(symmetry, str):
                raise ParamsError(f"symmetry must be a space-group name, got {symmetry!r}")
            try:
                symmetry = UnitCell(1.0, 1.0, 1.0, space_group=symmetry).space_group
            except ValueError as exc:
                raise ParamsError(f"symmetry: {exc}") from None
        cell = self.cell
        if cell is not None and cell.space_group is not None:
            if symmetry is not None and symmetry != cell.space_group:
                raise ParamsError(f"symmetry {symmetry} differs from the cell's space group "
                                  f"{cell.space_group}")
            symmetry = cell.space_group
        elif cell is not None and symmetry is not None:
            cell = UnitCell(*cell.parameters, space_group=symmetry)
        if cell is not None and cell.lattice_type is not None:
            from .lattice import lattice_mismatch

            problem = lattice_mismatch(cell, length_tol=0.01, angle_tol_deg=1.0)
            if problem:
                raise ParamsError(f"cell {_cell_text(cell)}: the cell {problem}")
        object.__setattr__(self, "cell", cell)
        object.__setattr__(self, "symmetry", symmetry)

    # ------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, d: dict, *, source: str = "parameters",
                  base_dir: Path | None = None) -> Params:
        """Build from nested dictionaries (as read from TOML)."""
        kwargs = {}
        for key, values in d.items():
            if key == "cell":
                if not isinstance(values, dict):
                    raise ParamsError(f"{source}: [cell] must be a table of key = value")
                if set(values) == {"space_group"}:
                    kwargs["symmetry"] = values["space_group"]
                else:
                    kwargs["cell"] = _cell_from_dict(values, f"{source} [cell]", base_dir)
                continue
            if key not in _SECTIONS:
                raise ParamsError(
                    f"{source}: unknown section [{key}]; known: "
                    f"{sorted([*_SECTIONS, 'cell'])}"
                )
            if not isinstance(values, dict):
                raise ParamsError(f"{source}: [{key}] must be a table of key = value")
            kwargs[key] = _section_from_dict(_SECTIONS[key], values, f"{source} [{key}]")
        try:
            return cls(**kwargs)
        except ParamsError as exc:
            raise ParamsError(f"{source}: {exc}") from None

    @classmethod
    def template(cls) -> str:
        """A commented TOML file of every section and key with its default and meaning.

        Every line is a comment, so the file as written gives the defaults; remove the
        ``#`` of a key to set it. The ``[cell]`` section shows the ways to give the
        reference cell.

        Examples
        --------
        >>> text = Params.template()
        >>> "# min_snr = 5.0" in text and "[cell]" in text
        True
        >>> Params.from_toml(text) == Params()
        True
        """
        out = ["# sxlab trial parameters: every key with its default and meaning.",
               "# Remove the '#' before a key (and its [section]) to set it; values are",
               "# checked against the type and range given here.", ""]
        defaults = cls()
        for name, section_cls in _SECTIONS.items():
            docs = _key_docs(section_cls)
            out.append(f"# [{name}]")
            summary = inspect.getdoc(section_cls).split("\n\n")[0].replace("\n", " ")
            out += [f"#   {line}" for line in textwrap.wrap(_plain_text(summary), 82)]
            said = None
            for f in dataclasses.fields(section_cls):
                value = getattr(getattr(defaults, name), f.name)
                doc = _plain_text(docs.get(f.name, ""))
                if doc != said:  # keys described together: once
                    out += [f"#   {line}" for line in textwrap.wrap(doc, 86)]
                said = doc
                if value is None:
                    out.append(f"# {f.name} =          (not set by default)")
                else:
                    text = _toml_value(value)
                    out.append(f"# {f.name} = {text}")
            out.append("")
        out += [
            "# [cell]",
            "#   The reference unit cell (lengths in Å, angles in degrees) and space group.",
            "#   Without a cell each lattice is reported in its conventional setting (the",
            "#   Bravais lattice of its reduced cell); give space_group alone to accept only",
            "#   lattices of that crystal form. Or: file = \"lyso.cell\" (CrystFEL .cell, or",
            "#   a PDB file with a CRYST1 line), relative to this file.",
            "# a = 79.1",
            "# b = 79.1",
            "# c = 37.9",
            "# alpha = 90.0",
            "# beta = 90.0",
            "# gamma = 90.0",
            "# space_group = \"P 43 21 2\"",
            "",
        ]
        return "\n".join(out)

    @classmethod
    def from_toml(cls, text: str, *, source: str = "<string>",
                  base_dir: Path | None = None) -> Params:
        """Parse TOML text."""
        try:
            d = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ParamsError(f"{source}: invalid TOML: {exc}") from exc
        return cls.from_dict(d, source=source, base_dir=base_dir)

    @classmethod
    def load(cls, path) -> Params:
        """Read a TOML parameter file."""
        path = Path(path)
        data = path.read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data[:exc.start].count(b"\n") + 1
            raise ParamsError(f"{path}, line {line}: byte 0x{data[exc.start]:02x} is not "
                              "UTF-8 text (TOML files are UTF-8)") from None
        return cls.from_toml(text, source=str(path), base_dir=path.parent)

    def replace(self, **sections) -> Params:
        """Copy with sections replaced; a section may be given as a dict of changes.

        >>> Params().replace(hits={"min_peaks": 20}).hits.min_peaks
        20
        """
        changes = {}
        for name, value in sections.items():
            if name in ("cell", "symmetry"):
                changes[name] = value
            elif name not in _SECTIONS:
                raise ParamsError(f"unknown section {name!r}")
            elif isinstance(value, dict):
                merged = {**_section_dict(getattr(self, name)), **value}
                changes[name] = _section_from_dict(
                    _SECTIONS[name], {k: v for k, v in merged.items() if v is not None},
                    f"[{name}]")
            else:
                changes[name] = value
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ output
    def to_dict(self) -> dict:
        """Nested plain dictionaries (``None`` kept; infinities as strings)."""
        d = {name: _section_dict(getattr(self, name)) for name in _SECTIONS}
        if self.cell is not None:
            d["cell"] = {k: getattr(self.cell, k) for k in _CELL_KEYS}
        elif self.symmetry is not None:
            d["cell"] = {"space_group": self.symmetry}
        return d

    def to_toml(self) -> str:
        """TOML text that :meth:`from_toml` reads back to an equal object."""
        import tomli_w

        d = {
            section: {k: v for k, v in values.items() if v is not None}
            for section, values in self.to_dict().items()
        }
        for values in d.values():
            for k, v in values.items():
                if v in ("inf", "-inf"):
                    values[k] = float(v)
        return tomli_w.dumps(d)

    def save(self, path) -> Path:
        """Write the TOML file."""
        path = Path(path)
        path.write_text(self.to_toml())
        return path

    def digest(self) -> str:
        """Stable hash (16 hex characters) of the canonical JSON of every value."""
        text = json.dumps(self.to_dict(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def _repr_html_(self) -> str:
        rows = []
        for section, values in self.to_dict().items():
            items = ", ".join(f"{k}={v!r}" for k, v in values.items())
            rows.append(f"<tr><th style='text-align:left'>{section}</th><td>{items}</td></tr>")
        return (f"<div><b>Params</b> {self.digest()}<table>{''.join(rows)}</table></div>")


def _cell_from_dict(values: dict, where: str, base_dir: Path | None) -> UnitCell:
    if "file" in values:
        extra = set(values) - {"file"}
        if extra:
            raise ParamsError(f"{where}: 'file' excludes the keys {sorted(extra)}")
        from .io.crystfel_cell import read_cell

        p = Path(values["file"])
        if base_dir is not None and not p.is_absolute():
            p = base_dir / p
        return read_cell(p)
    for key in values:
        if key not in _CELL_KEYS:
            raise ParamsError(f"{where}: unknown key {key!r}; known keys: {list(_CELL_KEYS)}")
    try:
        return UnitCell(**values)
    except (TypeError, ValueError) as exc:
        raise ParamsError(f"{where}: {exc}") from exc


def _cell_text(cell: UnitCell) -> str:
    return " ".join(f"{v:g}" for v in cell.parameters) + (
        f" {cell.space_group}" if cell.space_group else "")


_DOC_ENTRY = re.compile(r"^([A-Za-z_][\w, ]*?) : (.*)$")


def _key_docs(cls) -> dict[str, str]:
    """First sentence of each field's description in a numpydoc class docstring."""
    lines = inspect.getdoc(cls).splitlines()
    docs: dict[str, str] = {}
    names: list[str] = []
    text: list[str] = []

    def flush():
        if names:
            sentence = " ".join(text)
            first = re.split(r"(?<=[.!?])\s", sentence, maxsplit=1)[0] if sentence else ""
            for n in names:
                docs.setdefault(n, first)

    for line in lines:
        m = _DOC_ENTRY.match(line)
        if m and not line.startswith(" "):
            flush()
            names = [n.strip() for n in m.group(1).split(",")]
            text = []
        elif line.startswith("    ") and names:
            text.append(line.strip())
        elif not line.strip() or set(line.strip()) == {"-"}:
            continue
        else:
            flush()
            names, text = [], []
    flush()
    return docs


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def _plain_text(text: str) -> str:
    """Docstring text without reST markup (roles and literals)."""
    text = re.sub(r":\w+:`~?([^`]*)`", r"\1", text)
    return text.replace("``", "")
