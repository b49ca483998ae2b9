"""CrystFEL unit-cell files: :mod:`sxlab.io.crystfel_cell`."""

import dataclasses

import pytest

from sxlab.cell import UnitCell
from sxlab.io.crystfel_cell import HEADER, CellFileError, read_cell, write_cell

LYSOZYME = """CrystFEL unit cell file version 1.0

lattice_type = tetragonal
unique_axis = c
centering = P
a = 79.10 A
b = 79.10 A
c = 37.90 A
al = 90.00 deg
be = 90.00 deg
ga = 90.00 deg
"""

CELLS = [
    UnitCell(79.1, 79.1, 37.9, 90, 90, 90, space_group="P 43 21 2"),
    UnitCell(46.2, 103.0, 128.7, 90, 90, 90, space_group="C 2 2 21"),
    UnitCell(92.9, 92.9, 130.4, 90, 90, 120, space_group="P 61 2 2"),
    UnitCell(81.3, 81.3, 212.6, 90, 90, 120, space_group="R 3"),
    UnitCell(52.0, 52.0, 52.0, 77.0, 77.0, 77.0, space_group="R 3:R"),
    UnitCell(60.1, 40.2, 50.3, 90, 112.4, 90, space_group="C 1 2 1"),
    UnitCell(78.0, 78.0, 78.0, 90, 90, 90, space_group="I 2 3"),
    UnitCell(31.0, 42.0, 53.0, 77, 84, 96),
    UnitCell(31.123456789, 42.0, 53.0, 77.25, 84.125, 96.0625, lattice_type="triclinic"),
    UnitCell(40.0, 50.0, 60.0, 90, 105, 90, lattice_type="monoclinic", centering="C",
             unique_axis="b"),
]


@pytest.mark.parametrize("cell", CELLS, ids=repr)
def test_round_trip(cell, tmp_path):
    path = tmp_path / "x.cell"
    text = write_cell(cell, path)
    assert path.read_text() == text
    assert text.startswith(HEADER + "\n\n")
    back = read_cell(path)
    # Unset lattice type and centering are written as CrystFEL's defaults.
    expected = dataclasses.replace(cell, lattice_type=cell.lattice_type or "triclinic",
                                   centering=cell.centering or "P")
    assert back == expected
    assert write_cell(back) == text


def test_reads_crystfel_file_and_writes_it_back():
    cell = read_cell(LYSOZYME)
    assert cell.parameters == (79.1, 79.1, 37.9, 90, 90, 90)
    assert (cell.lattice_type, cell.centering, cell.unique_axis) == ("tetragonal", "P", "c")
    assert cell.space_group is None
    assert write_cell(cell) == LYSOZYME


def test_crystfel_h_centering_is_hexagonal_r():
    cell = UnitCell(81.3, 81.3, 212.6, 90, 90, 120, space_group="R 3")
    text = write_cell(cell)
    assert "centering = H\n" in text and "lattice_type = hexagonal\n" in text
    plain = read_cell("\n".join(line for line in text.splitlines() if "sxlab" not in line))
    assert (plain.lattice_type, plain.centering, plain.unique_axis) == ("hexagonal", "R", "c")
    assert plain.multiplicity == 3
    rh = read_cell(write_cell(UnitCell(52.0, 52.0, 52.0, 77.0, 77.0, 77.0,
                                       lattice_type="rhombohedral", centering="P")))
    assert (rh.lattice_type, rh.centering, rh.multiplicity) == ("rhombohedral", "R", 1)


def test_units_comments_and_defaults(tmp_path):
    text = """
CrystFEL unit cell file version 1.0
; a comment
a = 7.91 nm   ; trailing comment
b = 7.91 nm
c = 3.79 nm
al = 1.5707963267948966 rad
be = 90 deg
ga = 90 deg
"""
    cell = read_cell(text)
    assert cell.a == pytest.approx(79.1) and cell.c == pytest.approx(37.9)
    assert cell.alpha == pytest.approx(90.0)
    assert (cell.lattice_type, cell.centering, cell.unique_axis) == ("triclinic", "P", None)
    orth = read_cell(HEADER + "\nlattice_type = orthorhombic\nunique_axis = *\n"
                     "centering = C\na = 1 A\nb = 2 A\nc = 3 A\nal = 90 deg\nbe = 90 deg\n"
                     "ga = 90 deg\n")
    assert orth.unique_axis is None and orth.centering == "C"
    mono = UnitCell(40.0, 50.0, 60.0, 90, 105, 90, lattice_type="monoclinic")
    assert "unique_axis = b\n" in write_cell(mono)


def test_reads_pdb_cryst1(tmp_path):
    path = tmp_path / "model.pdb"
    path.write_text("HEADER    HYDROLASE\n"
                    "CRYST1   79.100   79.100   37.900  90.00  90.00  90.00 P 43 21 2     8\n"
                    "END\n")
    cell = read_cell(path)
    assert cell == UnitCell(79.1, 79.1, 37.9, 90, 90, 90, space_group="P 43 21 2")


@pytest.mark.parametrize(
    "text, lineno, message",
    [
        ("", None, "empty file"),
        ("lattice_type = cubic\n", 1, "expected the header"),
        (HEADER + "\na = 79.1\n", 2, "expected a length unit"),
        (HEADER + "\na = 79.1 pm\n", 2, "expected a length unit (A or nm), got 'pm'"),
        (HEADER + "\na = big A\n", 2, "a: expected a number"),
        (HEADER + "\nal = -90 deg\n", 2, "expected a positive number"),
        (HEADER + "\nal = 90 degrees\n", 2, "expected an angle unit"),
        (HEADER + "\nwavelength = 1 A\n", 2, "unknown key 'wavelength'"),
        (HEADER + "\na = 1 A\na = 2 A\n", 3, "'a' given twice (first on line 2)"),
        (HEADER + "\nlattice_type\n", 2, "expected 'key = value'"),
        (HEADER + "\ncentering =\n", 2, "expected a value for 'centering'"),
        (HEADER + "\na = 1 A\nb = 1 A\nc = 1 A\n", None, "expected the cell parameters al"),
        (LYSOZYME.replace("tetragonal", "tetragonl"), 3, "expected a lattice type"),
        (LYSOZYME.replace("centering = P", "centering = Q"), 5, "expected a centering"),
        (LYSOZYME.replace("unique_axis = c", "unique_axis = z"), 4, "expected a unique axis"),
        (LYSOZYME.replace("unique_axis = c\n", ""), None, "expected 'unique_axis = a, b or c'"),
        (LYSOZYME.replace("centering = P", "centering = H"), 5, "centering H needs"),
        (LYSOZYME.replace("ga = 90.00", "ga = 190.00"), None, "inconsistent cell"),
        (LYSOZYME + "; sxlab: space_group = Q 99\n", 12, "unknown space group"),
        ("HEADER x\nCRYST1   79.100   79.1xx   37.900  90.00  90.00  90.00 P 1\n", 2, "CRYST1"),
    ],
)
def test_errors_name_file_line_and_expectation(text, lineno, message, tmp_path):
    path = tmp_path / "bad.cell"
    path.write_text(text)
    with pytest.raises(CellFileError) as exc:
        read_cell(path)
    err = exc.value
    assert err.source == str(path) and err.lineno == lineno
    assert message in str(err) and str(path) in str(err)
    if lineno is not None:
        assert f"line {lineno}" in str(err)


def test_text_input_and_source_name():
    with pytest.raises(CellFileError, match=r"^lyso\.cell, line 2: unknown key"):
        read_cell(HEADER + "\nfoo = 1\n", source_name="lyso.cell")
    with pytest.raises(CellFileError, match=r"^<cell text>, line 2"):
        read_cell(HEADER + "\nfoo = 1\n")
    with pytest.raises(TypeError, match="UnitCell"):
        write_cell((79.1, 79.1, 37.9, 90, 90, 90))
