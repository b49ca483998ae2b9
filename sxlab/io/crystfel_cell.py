"""Read and write CrystFEL unit-cell (``.cell``) files as :class:`~sxlab.cell.UnitCell`.

The format (CrystFEL unit cell file version 1.0) is a header line followed by
``key = value [unit]`` lines; ``;`` starts a comment::

    CrystFEL unit cell file version 1.0

    lattice_type = tetragonal
    unique_axis = c
    centering = P
    a = 79.10 A
    b = 79.10 A
    c = 37.90 A
    al = 90.00 deg
    be = 90.00 deg
    ga = 90.00 deg

Lengths are in ``A`` or ``nm``, angles in ``deg`` or ``rad``; the unit is required, as in
CrystFEL. ``unique_axis`` is required for monoclinic, tetragonal and hexagonal lattices and
ignored for the others. CrystFEL's ``H`` centering (a rhombohedral lattice on hexagonal
axes) is read as sxlab's hexagonal ``R`` and written back as ``H``. The space group, which
the format has no key for, travels in a ``; sxlab: space_group = ...`` comment that
CrystFEL ignores. Files starting with a PDB ``CRYST1`` line instead of the header are read
from that line, as CrystFEL does.

Every problem raises :class:`CellFileError` naming the file, the line and what was
expected.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

from ..cell import LATTICE_TYPES, UnitCell
from ._errors import SourceError, decode_text

__all__ = ["CellFileError", "read_cell", "write_cell"]

HEADER = "CrystFEL unit cell file version 1.0"
_LENGTH_UNITS = {"A": 1.0, "nm": 10.0}
_ANGLE_UNITS = ("deg", "rad")
_PARAMETER_KEYS = ("a", "b", "c", "al", "be", "ga")
_KEYS = ("lattice_type", "centering", "unique_axis", *_PARAMETER_KEYS)
_AXIS_LATTICES = ("monoclinic", "tetragonal", "hexagonal")
_META_RE = re.compile(r";\s*sxlab:\s*(\w+)\s*=(.*)")


class CellFileError(SourceError):
    """A CrystFEL unit-cell file that cannot be understood.

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

    Examples
    --------
    >>> try:
    ...     read_cell(HEADER + "\\na = 79.1\\n", source_name="lyso.cell")
    ... except CellFileError as err:
    ...     print(err)
    lyso.cell, line 2: a: expected a length unit (A or nm) after the value (in 'a = 79.1')
    """


def _is_text(obj) -> bool:
    return isinstance(obj, str) and ("\n" in obj or "=" in obj)


def _number(key: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{key}: expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{key}: expected a positive number, got {text!r}")
    return value


def _parameter(key: str, value: str) -> float:
    parts = value.split()
    length = key in ("a", "b", "c")
    units = _LENGTH_UNITS if length else _ANGLE_UNITS
    what = "a length unit (A or nm)" if length else "an angle unit (deg or rad)"
    if len(parts) == 1:
        raise ValueError(f"{key}: expected {what} after the value")
    if len(parts) != 2:
        raise ValueError(f"{key}: expected a number and {what}, got {value!r}")
    number = _number(key, parts[0])
    if parts[1] not in units:
        raise ValueError(f"{key}: expected {what}, got {parts[1]!r}")
    if length:
        return number * _LENGTH_UNITS[parts[1]]
    return math.degrees(number) if parts[1] == "rad" else number


def _read_cryst1(line: str, source: str, lineno: int) -> UnitCell:
    """Cell of a PDB ``CRYST1`` record (fixed columns; space group from columns 56-66)."""
    try:
        values = [float(line[i:j]) for i, j in ((6, 15), (15, 24), (24, 33), (33, 40),
                                                   (40, 47), (47, 54))]
    except ValueError:
        raise CellFileError("expected six numbers in the columns of a PDB CRYST1 record",
                            source=source, lineno=lineno, line=line) from None
    symbol = line[55:66].strip() or None
    try:
        return UnitCell(*values, space_group=symbol)
    except ValueError as exc:
        raise CellFileError(str(exc), source=source, lineno=lineno, line=line) from None


def read_cell(path_or_text: str | os.PathLike, *, source_name: str | None = None) -> UnitCell:
    """Read a CrystFEL unit-cell file.

    Parameters
    ----------
    path_or_text : str or path-like
        Path of a ``.cell`` file, or its text (a string containing a newline or ``=`` is
        taken as text). A PDB file is read from its ``CRYST1`` record.
    source_name : str, optional
        Name used for the input in error messages (default: the path, or
        ``"<cell text>"``).

    Returns
    -------
    UnitCell
        Parameters in Å and degrees; ``lattice_type`` (default ``triclinic``), ``centering``
        (default ``P``; ``H`` becomes hexagonal ``R``), ``unique_axis`` for monoclinic,
        tetragonal and hexagonal lattices, and ``space_group`` when the file carries a
        ``; sxlab: space_group = ...`` comment.

    Raises
    ------
    CellFileError
        For a missing header, unknown or repeated keys, values without units or with
        unknown ones, missing parameters, a missing unique axis, or inconsistent cells;
        the message names the file, line number and what was expected.

    Examples
    --------
    >>> cell = read_cell('''CrystFEL unit cell file version 1.0
    ...
    ... lattice_type = tetragonal
    ... unique_axis = c
    ... centering = P
    ... a = 7.91 nm
    ... b = 79.1 A
    ... c = 37.90 A
    ... al = 90.00 deg
    ... be = 90.00 deg
    ... ga = 90.00 deg    ; comments are allowed
    ... ''')
    >>> cell
    UnitCell(79.100, 79.100, 37.900, 90.00, 90.00, 90.00)
    >>> cell.lattice_type, cell.centering, cell.unique_axis
    ('tetragonal', 'P', 'c')
    """
    if _is_text(path_or_text):
        text = str(path_or_text)
        source = source_name or "<cell text>"
    else:
        path = Path(path_or_text)
        source = source_name or str(path)
        text = decode_text(path.read_bytes(), CellFileError, source, comment=";")
    lines = text.splitlines()
    first = next((i for i, raw in enumerate(lines) if raw.strip()), None)
    if first is None:
        raise CellFileError(f"expected {HEADER!r}, got an empty file", source=source)
    if lines[first].strip() != HEADER:
        for i, raw in enumerate(lines):
            if raw.startswith("CRYST1"):
                return _read_cryst1(raw, source, i + 1)
        raise CellFileError(f"expected the header {HEADER!r} (or a PDB CRYST1 record)",
                            source=source, lineno=first + 1, line=lines[first])

    values: dict[str, tuple[str, int, str]] = {}
    space_group = None
    for i in range(first + 1, len(lines)):
        raw = lines[i]
        lineno = i + 1
        stripped = raw.strip()
        meta = _META_RE.fullmatch(stripped)
        if meta is not None:
            if meta.group(1) == "space_group":
                space_group = (meta.group(2).strip() or None, lineno, raw)
            continue
        content = stripped.split(";", 1)[0].strip()
        if not content:
            continue
        if "=" not in content:
            raise CellFileError("expected 'key = value'", source=source, lineno=lineno,
                                line=raw)
        key, value = (part.strip() for part in content.split("=", 1))
        if key not in _KEYS:
            raise CellFileError(f"unknown key {key!r}; expected one of {', '.join(_KEYS)}",
                                source=source, lineno=lineno, line=raw)
        if not value:
            raise CellFileError(f"expected a value for {key!r} after '='", source=source,
                                lineno=lineno, line=raw)
        if key in values:
            raise CellFileError(f"{key!r} given twice (first on line {values[key][1]})",
                                source=source, lineno=lineno, line=raw)
        values[key] = (value, lineno, raw)

    def fail(message, key=None):
        if key is None or key not in values:
            return CellFileError(message, source=source)
        _, lineno, raw = values[key]
        return CellFileError(message, source=source, lineno=lineno, line=raw)

    params = []
    for key in _PARAMETER_KEYS:
        if key in values:
            try:
                params.append(_parameter(key, values[key][0]))
            except ValueError as exc:
                raise fail(str(exc), key) from None
    missing = [k for k in _PARAMETER_KEYS if k not in values]
    if missing:
        raise fail(f"expected the cell parameters {', '.join(missing)} "
                   f"(a, b, c in A or nm; al, be, ga in deg or rad)")

    lattice = values.get("lattice_type", ("triclinic",))[0]
    if lattice not in LATTICE_TYPES:
        raise fail(f"expected a lattice type ({', '.join(LATTICE_TYPES)}), got {lattice!r}",
                   "lattice_type")
    centering = values.get("centering", ("P",))[0]
    if len(centering) != 1 or centering not in "PABCIFRH":
        raise fail(f"expected a centering (P, A, B, C, I, F, R or H), got {centering!r}",
                   "centering")
    if centering == "H":
        if lattice != "hexagonal":
            raise fail(f"centering H needs lattice_type = hexagonal, got {lattice}",
                       "centering")
        centering = "R"
    unique = values.get("unique_axis", (None,))[0]
    if unique in ("*", "?"):
        unique = None
    if unique is not None and unique not in ("a", "b", "c"):
        raise fail(f"expected a unique axis (a, b or c), got {unique!r}", "unique_axis")
    if lattice in _AXIS_LATTICES:
        if unique is None:
            raise fail(f"expected 'unique_axis = a, b or c' for the {lattice} lattice")
    else:
        unique = None

    sg_name = None
    if space_group is not None:
        sg_name = space_group[0]
    try:
        return UnitCell(*params, space_group=sg_name, lattice_type=lattice,
                        centering=centering, unique_axis=unique)
    except ValueError as exc:
        if space_group is not None and "space group" in str(exc):
            raise CellFileError(str(exc), source=source, lineno=space_group[1],
                                line=space_group[2]) from None
        raise CellFileError(f"inconsistent cell: {exc}", source=source) from None


def _fmt(value: float) -> str:
    text = f"{value:.2f}"
    return text if float(text) == value else repr(float(value))


def write_cell(cell: UnitCell, path: str | os.PathLike | None = None) -> str:
    """Write a unit cell in CrystFEL unit-cell file format (version 1.0).

    Parameters
    ----------
    cell : UnitCell
        The cell. Without a lattice type it is written as ``triclinic``; a missing unique
        axis of a monoclinic (``b``), tetragonal or hexagonal (``c``) lattice gets its
        conventional default.
    path : str or path-like, optional
        File to write; the text is returned either way.

    Returns
    -------
    str
        The file's text. Parameters are written with two decimals (``a = 79.10 A``) when
        that is exact, else at full precision, so that ``read_cell(write_cell(cell))``
        equals ``cell``. A hexagonal-axes rhombohedral cell is written with CrystFEL's
        ``centering = H``; the space group goes in a ``; sxlab:`` comment.

    Examples
    --------
    >>> text = write_cell(UnitCell(79.1, 79.1, 37.9, 90, 90, 90, space_group="P 43 21 2"))
    >>> print(text, end="")
    CrystFEL unit cell file version 1.0
    <BLANKLINE>
    ; sxlab: space_group = P 43 21 2
    lattice_type = tetragonal
    unique_axis = c
    centering = P
    a = 79.10 A
    b = 79.10 A
    c = 37.90 A
    al = 90.00 deg
    be = 90.00 deg
    ga = 90.00 deg
    >>> read_cell(text) == UnitCell(79.1, 79.1, 37.9, 90, 90, 90, space_group="P 43 21 2")
    True
    """
    if not isinstance(cell, UnitCell):
        raise TypeError(f"expected a UnitCell, got {type(cell).__name__}")
    lattice = cell.lattice_type or "triclinic"
    centering = cell.centering or "P"
    if lattice == "hexagonal" and centering == "R":
        centering = "H"
    if lattice == "rhombohedral" and centering == "P":
        centering = "R"
    lines = [HEADER, ""]
    if cell.space_group:
        lines.append(f"; sxlab: space_group = {cell.space_group}")
    lines.append(f"lattice_type = {lattice}")
    if lattice in _AXIS_LATTICES:
        default = "b" if lattice == "monoclinic" else "c"
        lines.append(f"unique_axis = {cell.unique_axis or default}")
    lines.append(f"centering = {centering}")
    for key, value, unit in zip(_PARAMETER_KEYS, cell.parameters,
                                ("A", "A", "A", "deg", "deg", "deg"), strict=True):
        lines.append(f"{key} = {_fmt(value)} {unit}")
    text = "\n".join(lines) + "\n"
    if path is not None:
        Path(path).write_text(text, encoding="utf-8")
    return text
