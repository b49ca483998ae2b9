import gemmi
import numpy as np
import pytest

from sxlab.cell import UnitCell

CELLS = [
    ("P 43 21 2", (79.1, 79.1, 37.9, 90, 90, 90), "tetragonal", "P", "c"),
    ("C 2 2 21", (46.2, 103.0, 128.7, 90, 90, 90), "orthorhombic", "C", None),
    ("P 61 2 2", (92.9, 92.9, 130.4, 90, 90, 120), "hexagonal", "P", "c"),
    ("P 1 21 1", (40.0, 50.0, 60.0, 90, 105, 90), "monoclinic", "P", "b"),
    ("P 1", (31.0, 42.0, 53.0, 77, 84, 96), "triclinic", "P", None),
    ("I 2 3", (78.0, 78.0, 78.0, 90, 90, 90), "cubic", "I", None),
]


@pytest.mark.parametrize("sg, params, lattice, centering, axis", CELLS)
def test_symmetry_derived_fields(sg, params, lattice, centering, axis):
    cell = UnitCell(*params, space_group=sg)
    assert (cell.lattice_type, cell.centering, cell.unique_axis) == (lattice, centering, axis)


@pytest.mark.parametrize("sg, params, lattice, centering, axis", CELLS)
def test_bases_agree_with_gemmi(sg, params, lattice, centering, axis, rng):
    cell = UnitCell(*params, space_group=sg)
    g = cell.to_gemmi()
    # gemmi's orthogonalisation matrix has a, b, c as columns.
    np.testing.assert_allclose(np.array(g.orth.mat).T, cell.direct_basis, atol=1e-9)
    np.testing.assert_allclose(cell.direct_basis @ cell.reciprocal_basis.T, np.eye(3),
                               atol=1e-12)
    assert cell.volume == pytest.approx(g.volume, rel=1e-12)
    hkl = rng.integers(-20, 21, size=(50, 3))
    hkl = hkl[np.any(hkl != 0, axis=1)]
    expected = [g.calculate_d(list(map(int, h))) for h in hkl]
    np.testing.assert_allclose(cell.d_spacing(hkl), expected, rtol=1e-12)


def test_round_trips_through_bases_and_gemmi(rng):
    cell = UnitCell(31.0, 42.0, 53.0, 77, 84, 96)
    # Any rotation of the basis gives the same parameters.
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    back = UnitCell.from_reciprocal_basis(cell.reciprocal_basis @ q.T)
    np.testing.assert_allclose(back.parameters, cell.parameters, rtol=1e-10)
    back = UnitCell.from_direct_basis(cell.direct_basis @ q.T)
    np.testing.assert_allclose(back.parameters, cell.parameters, rtol=1e-10)
    g = UnitCell.from_gemmi(gemmi.UnitCell(*cell.parameters), gemmi.SpaceGroup("P 1"))
    assert g == UnitCell(*cell.parameters, space_group="P 1")


def test_invalid_cells_raise():
    with pytest.raises(ValueError, match="positive"):
        UnitCell(-1, 2, 3)
    with pytest.raises(ValueError, match="360"):
        UnitCell(10, 10, 10, 120, 120, 120)
    with pytest.raises(ValueError, match="space group"):
        UnitCell(10, 10, 10, space_group="Q 99")
    with pytest.raises(ValueError, match="centering"):
        UnitCell(10, 10, 10, centering="Z")


def test_html_repr_has_parameters():
    html = UnitCell(79.1, 79.1, 37.9, space_group="P43212")._repr_html_()
    assert "79.100" in html and "P 43 21 2" in html
