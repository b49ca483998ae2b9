"""Niggli reduction, centering and cell matching in :mod:`sxlab.cell`."""

from fractions import Fraction

import gemmi
import numpy as np
import pytest

from sxlab.cell import (
    CellMatch,
    CellMatcher,
    UnitCell,
    cells_equivalent,
    centering_matrix,
    g6_from_basis,
    match_cell,
    niggli_reduce,
    to_centered,
    to_primitive,
    uncentering_matrix,
)

# space group, parameters
REFERENCES = {
    "lysozyme": ("P 43 21 2", (79.1, 79.1, 37.9, 90, 90, 90)),
    "C2221": ("C 2 2 21", (46.2, 103.0, 128.7, 90, 90, 90)),
    "P6122": ("P 61 2 2", (92.9, 92.9, 130.4, 90, 90, 120)),
    "R3": ("R 3", (81.3, 81.3, 212.6, 90, 90, 120)),
    "R3-rhombohedral-axes": ("R 3:R", (52.0, 52.0, 52.0, 77.0, 77.0, 77.0)),
    "I23": ("I 2 3", (78.0, 78.0, 78.0, 90, 90, 90)),
    "F23": ("F 2 3", (101.5, 101.5, 101.5, 90, 90, 90)),
    "I422": ("I 4 2 2", (60.0, 60.0, 90.0, 90, 90, 90)),
    "F222": ("F 2 2 2", (40.0, 61.0, 92.0, 90, 90, 90)),
    "C2": ("C 1 2 1", (60.1, 40.2, 50.3, 90, 112.4, 90)),
    "P21": ("P 1 21 1", (40.0, 50.0, 60.0, 90, 105, 90)),
    "P1": ("P 1", (31.0, 42.0, 53.0, 77, 84, 96)),
}

# Centering translations (fractions of the centred cell) of each centering.
TRANSLATIONS = {
    "P": [],
    "A": [(0, 0.5, 0.5)],
    "B": [(0.5, 0, 0.5)],
    "C": [(0.5, 0.5, 0)],
    "I": [(0.5, 0.5, 0.5)],
    "F": [(0, 0.5, 0.5), (0.5, 0, 0.5), (0.5, 0.5, 0)],
    "R": [(2 / 3, 1 / 3, 1 / 3), (1 / 3, 2 / 3, 2 / 3)],
    "H": [(2 / 3, 1 / 3, 1 / 3), (1 / 3, 2 / 3, 2 / 3)],
}


def reference(name):
    sg, params = REFERENCES[name]
    return UnitCell(*params, space_group=sg)


def random_unimodular(rng, steps=8, max_shear=2):
    """Random integer matrix with determinant +1 (shears and a signed permutation)."""
    m = np.eye(3, dtype=np.int64)
    for _ in range(steps):
        i, j = rng.choice(3, size=2, replace=False)
        e = np.eye(3, dtype=np.int64)
        e[i, j] = rng.choice([k for k in range(-max_shear, max_shear + 1) if k])
        m = e @ m
    m = np.eye(3, dtype=np.int64)[rng.permutation(3)] @ m
    if round(np.linalg.det(m)) < 0:
        m[0] *= -1
    return m


def random_rotation(rng):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return q


def primitive_basis(cell):
    return to_primitive(cell.direct_basis, cell.centering, lattice_type=cell.lattice_type)[0]


def gemmi_niggli_g6(cell):
    """G6 of the Niggli cell of ``cell``'s lattice according to gemmi."""
    centring = "P" if cell.lattice_type == "rhombohedral" else cell.centering
    gv = gemmi.GruberVector(cell.to_gemmi(), centring)
    gv.niggli_reduce(epsilon=1e-5 * (cell.volume / cell.multiplicity) ** (2 / 3))
    return np.array(gv.parameters)


def simulated_found_basis(cell, rng, *, flip=None):
    """(found, true): a primitive basis in a random setting and orientation, and the
    conventional basis in the same orientation."""
    rot = random_rotation(rng)
    true = cell.direct_basis @ rot.T
    found = random_unimodular(rng) @ primitive_basis(cell) @ rot.T
    if flip is None:
        flip = bool(rng.integers(2))
    return (-found if flip else found), true


def check_match(m, found, ref, true=None, *, exact=True):
    assert isinstance(m, CellMatch)
    np.testing.assert_allclose(m.basis, m.matrix @ found, atol=1e-9)
    assert np.linalg.det(m.basis) > 0
    # T is integer for a primitive found basis, with |det T| = lattice points per cell.
    np.testing.assert_array_equal(m.matrix, np.round(m.matrix))
    assert round(abs(np.linalg.det(m.matrix))) == ref.multiplicity
    assert m.cell.space_group == ref.space_group
    assert (m.cell.lattice_type, m.cell.centering, m.cell.unique_axis) == (
        ref.lattice_type, ref.centering, ref.unique_axis)
    if exact:
        np.testing.assert_allclose(m.cell.parameters, ref.parameters, rtol=1e-9, atol=1e-7)
        assert m.length_dev < 1e-9 and m.angle_dev_deg < 1e-6
    if true is not None:
        # Same orientation up to a proper symmetry of the lattice: an integer matrix in
        # the reference basis that preserves the metric.
        g = m.basis @ np.linalg.inv(true)
        np.testing.assert_allclose(g, np.round(g), atol=1e-6)
        g = np.round(g)
        metric = true @ true.T
        np.testing.assert_allclose(g @ metric @ g.T, metric, rtol=1e-9, atol=1e-6)
        assert round(np.linalg.det(g)) == 1


# ------------------------------------------------------------------------------ Niggli
@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_niggli_agrees_with_gemmi_in_any_setting(name, rng):
    cell = reference(name)
    expected = gemmi_niggli_g6(cell)
    prim = primitive_basis(cell)
    for _ in range(15):
        w = random_unimodular(rng)
        basis = w @ prim @ random_rotation(rng).T
        reduced, m = niggli_reduce(basis)
        assert m.dtype.kind == "i"
        assert round(np.linalg.det(m)) == 1
        np.testing.assert_allclose(reduced, m @ basis, atol=1e-9)
        np.testing.assert_allclose(g6_from_basis(reduced), expected,
                                   atol=1e-8 * expected[:3].max())
    np.testing.assert_allclose(cell.niggli().g6(), expected, atol=1e-8 * expected[:3].max())


def test_niggli_of_random_triclinic_cells_matches_gemmi(rng):
    for _ in range(40):
        lengths = rng.uniform(20, 120, 3)
        angles = rng.uniform(60, 120, 3)
        if angles.sum() >= 350 or 2 * angles.max() >= angles.sum():
            continue
        cell = UnitCell(*lengths, *angles)
        basis = random_unimodular(rng, steps=10, max_shear=3) @ cell.direct_basis
        reduced, _ = niggli_reduce(basis)
        gv = gemmi.GruberVector(cell.to_gemmi(), "P")
        gv.niggli_reduce(epsilon=1e-5 * cell.volume ** (2 / 3))
        np.testing.assert_allclose(g6_from_basis(reduced), gv.parameters,
                                   atol=1e-8 * lengths.max() ** 2)


def test_niggli_keeps_handedness_and_is_idempotent(rng):
    cell = reference("P1")
    basis = random_unimodular(rng) @ cell.direct_basis
    reduced, _ = niggli_reduce(basis)
    again, m = niggli_reduce(reduced)
    np.testing.assert_array_equal(m, np.eye(3))
    np.testing.assert_allclose(again, reduced)
    left, m_left = niggli_reduce(-basis)
    assert np.linalg.det(left) < 0 and round(np.linalg.det(m_left)) == 1
    np.testing.assert_allclose(g6_from_basis(left), g6_from_basis(reduced), atol=1e-8)


def test_niggli_of_strongly_skewed_basis():
    cell = reference("lysozyme")
    w = np.array([[1, 0, 0], [57, 1, 0], [-130, 41, 1]])
    reduced, m = niggli_reduce(w @ cell.direct_basis)
    np.testing.assert_allclose(g6_from_basis(reduced), [37.9**2, 79.1**2, 79.1**2, 0, 0, 0],
                               atol=1e-6)
    np.testing.assert_array_equal(np.abs(m @ w) @ np.ones(3), np.ones(3))


def test_niggli_rejects_bad_input():
    with pytest.raises(ValueError, match="linearly dependent"):
        niggli_reduce([[1, 0, 0], [0, 1, 0], [1, 1, 0]])
    with pytest.raises(ValueError, match="3×3"):
        niggli_reduce(np.eye(2))
    with pytest.raises(ValueError, match="non-finite"):
        niggli_reduce([[np.nan, 0, 0], [0, 1, 0], [0, 0, 1]])


def test_g6():
    cell = reference("P1")
    np.testing.assert_allclose(cell.g6(), g6_from_basis(cell.direct_basis), rtol=1e-12,
                               atol=1e-9)


# --------------------------------------------------------------------------- centering
@pytest.mark.parametrize("centering", sorted(TRANSLATIONS))
def test_uncentering_matrices(centering):
    u = uncentering_matrix(centering)
    c = centering_matrix(centering)
    n = len(TRANSLATIONS[centering]) + 1
    assert np.linalg.det(u) == pytest.approx(1 / n)
    np.testing.assert_array_equal(c, np.round(c))
    np.testing.assert_allclose(c @ u, np.eye(3), atol=1e-12)
    lattice = [np.zeros(3)] + [np.array(t) for t in TRANSLATIONS[centering]]
    # Every primitive vector is a lattice point of the centred lattice ...
    for row in u:
        assert any(np.allclose(row - t, np.round(row - t), atol=1e-12) for t in lattice)
    # ... and every centering translation has integer coordinates in the primitive basis.
    for t in TRANSLATIONS[centering]:
        coords = np.array(t) @ c
        np.testing.assert_allclose(coords, np.round(coords), atol=1e-12)


@pytest.mark.parametrize("symbol", ["A 1 2 1", "B 1 1 2", "C 1 2 1", "I 2 2 2", "F 2 2 2",
                                    "R 3", "I 2 3", "F 2 3"])
def test_primitive_reflections_are_the_centering_allowed_ones(symbol):
    sg = gemmi.SpaceGroup(symbol)
    ops = sg.operations()
    u = uncentering_matrix(sg.centring_type())
    assert len(ops.cen_ops) * np.linalg.det(u) == pytest.approx(1.0)
    hkl = np.stack(np.meshgrid(*[np.arange(-4, 5)] * 3, indexing="ij"), -1).reshape(-1, 3)
    primitive_hkl = hkl @ u.T
    integral = np.all(np.abs(primitive_hkl - np.round(primitive_hkl)) < 1e-9, axis=1)
    centring_absent = [
        any(sum(h * t for h, t in zip(row, tr, strict=True)) % 24 != 0 for tr in ops.cen_ops)
        for row in hkl.tolist()
    ]
    np.testing.assert_array_equal(integral, ~np.array(centring_absent))


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_to_primitive_and_back(name):
    cell = reference(name)
    prim, u = to_primitive(cell.direct_basis, cell.centering, lattice_type=cell.lattice_type)
    assert abs(np.linalg.det(prim)) == pytest.approx(cell.volume / cell.multiplicity)
    back, c = to_centered(prim, cell.centering, lattice_type=cell.lattice_type)
    np.testing.assert_allclose(back, cell.direct_basis, atol=1e-9)
    np.testing.assert_allclose(c @ u, np.eye(3), atol=1e-12)
    pcell, u2 = cell.to_primitive()
    np.testing.assert_array_equal(u, u2)
    np.testing.assert_allclose(pcell.direct_basis @ pcell.direct_basis.T, prim @ prim.T,
                               rtol=1e-9, atol=1e-6)
    assert pcell == cell.primitive()
    assert pcell.space_group is None


def test_primitive_cells_of_special_lattices():
    i_cubic = reference("I23").primitive()
    assert (i_cubic.lattice_type, i_cubic.centering) == ("rhombohedral", "R")
    assert i_cubic.alpha == pytest.approx(109.4712206, abs=1e-6)
    f_cubic = reference("F23").primitive()
    assert f_cubic.alpha == pytest.approx(60.0) and f_cubic.a == pytest.approx(101.5 / 2**0.5)
    c222 = reference("C2221").primitive()
    assert (c222.lattice_type, c222.centering, c222.unique_axis) == ("monoclinic", "P", "c")
    assert c222.alpha == pytest.approx(90) and c222.beta == pytest.approx(90)
    hexagonal = reference("R3")
    rh = hexagonal.primitive()
    assert (rh.lattice_type, rh.centering) == ("rhombohedral", "R")
    assert rh.a == pytest.approx(rh.b) == pytest.approx(rh.c)
    assert rh.alpha == pytest.approx(rh.beta) == pytest.approx(rh.gamma)
    # CrystFEL's H is the same hexagonal-axes cell.
    np.testing.assert_array_equal(uncentering_matrix("H"), uncentering_matrix("R"))
    np.testing.assert_array_equal(uncentering_matrix("R", lattice_type="rhombohedral"),
                                  np.eye(3))


def test_rhombohedral_axes_space_group():
    cell = reference("R3-rhombohedral-axes")
    assert cell.space_group == "R 3:R"
    assert (cell.lattice_type, cell.centering, cell.unique_axis) == ("rhombohedral", "R", None)
    assert cell.multiplicity == 1
    hexagonal = reference("R3")
    assert (hexagonal.lattice_type, hexagonal.centering, hexagonal.space_group) == (
        "hexagonal", "R", "R 3")
    assert hexagonal.multiplicity == 3
    with pytest.raises(ValueError, match="centering"):
        uncentering_matrix("Q")


# ------------------------------------------------------------------------------ matching
@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_match_primitive_basis_in_random_setting(name, rng):
    ref = reference(name)
    matcher = CellMatcher(ref)
    for _ in range(12):
        found, true = simulated_found_basis(ref, rng)
        m = matcher(found)
        check_match(m, found, ref, true)


def test_match_lysozyme_either_handedness(rng):
    ref = reference("lysozyme")
    for flip in (False, True):
        for _ in range(10):
            found, true = simulated_found_basis(ref, rng, flip=flip)
            assert (np.linalg.det(found) < 0) == flip
            m = match_cell(found, ref)
            check_match(m, found, ref, true)
            assert round(np.linalg.det(m.matrix)) == (-1 if flip else 1)
            # Miller indices map with T: same scattering vectors in both settings.
            hkl = rng.integers(-10, 11, size=(20, 3))
            q_found = hkl @ np.linalg.inv(found).T
            np.testing.assert_allclose((hkl @ m.matrix.T) @ m.reciprocal_basis, q_found,
                                       atol=1e-12)


def test_match_c2221_from_its_primitive_basis():
    ref = reference("C2221")
    prim = uncentering_matrix("C") @ ref.direct_basis
    m = match_cell(prim, ref)
    check_match(m, prim, ref, ref.direct_basis)
    assert round(np.linalg.det(m.matrix)) == 2


def test_match_r3_from_primitive_rhombohedral_basis(rng):
    ref = reference("R3")
    rh = ref.primitive()
    rot = random_rotation(rng)
    found = rh.direct_basis @ rot.T
    m = match_cell(found, ref)
    check_match(m, found, ref)
    assert round(np.linalg.det(m.matrix)) == 3
    assert m.cell.gamma == pytest.approx(120.0)
    # The rhombohedral-axes reference takes the same basis with T = symmetry only.
    m_r = match_cell(found, UnitCell(*rh.parameters, space_group="R 3:R"))
    assert round(abs(np.linalg.det(m_r.matrix))) == 1


def test_match_centred_found_basis_gives_rational_matrix(rng):
    ref = reference("C2")
    a, b, c = ref.direct_basis
    rot = random_rotation(rng)
    # Another C-centred cell of the same lattice: a different index-2 sublattice.
    found = np.array([a, b, c + (a + b) / 2]) @ rot.T
    m = match_cell(found, ref, centering="C")
    assert m is not None
    np.testing.assert_allclose(m.basis, m.matrix @ found, atol=1e-9)
    np.testing.assert_array_equal(2 * m.matrix, np.round(2 * m.matrix))
    assert not np.array_equal(m.matrix, np.round(m.matrix))
    assert abs(np.linalg.det(m.matrix)) == pytest.approx(1.0)
    np.testing.assert_allclose(m.cell.parameters, ref.parameters, rtol=1e-9, atol=1e-7)
    entries = {Fraction(float(v)).limit_denominator(12) for v in m.matrix.ravel()}
    assert {e.denominator for e in entries} <= {1, 2}
    # A hexagonal-axes R cell in CrystFEL's H setting, found as centred too.
    r3 = reference("R3")
    found = np.array([[0, 1, 0], [-1, -1, 0], [0, 0, 1]]) @ r3.direct_basis @ rot.T
    m = match_cell(found, r3, centering="H")
    np.testing.assert_allclose(m.cell.parameters, r3.parameters, rtol=1e-9, atol=1e-7)


def test_match_monoclinic_c2_from_primitive(rng):
    ref = reference("C2")
    for _ in range(10):
        found, true = simulated_found_basis(ref, rng)
        m = match_cell(found, ref)
        check_match(m, found, ref, true)
        assert m.cell.beta == pytest.approx(112.4)


def test_match_near_degenerate_orthorhombic(rng):
    ref = UnitCell(50.0, 50.6, 80.0, 90, 90, 90, space_group="P 2 2 2")
    matcher = CellMatcher(ref)
    for _ in range(20):
        rot = random_rotation(rng)
        noisy = UnitCell(50.0 * (1 + rng.normal(0, 0.001)), 50.6 * (1 + rng.normal(0, 0.001)),
                         80.0, 90, 90, 90)
        true = noisy.direct_basis @ rot.T
        found = random_unimodular(rng) @ true
        m = matcher(found)
        assert m is not None
        # a goes to the 50.0 Å axis, not the 50.6 Å one (which would also be in tolerance).
        g = np.round(m.basis @ np.linalg.inv(true))
        np.testing.assert_array_equal(np.abs(g), np.eye(3))
        assert m.length_dev < 0.005
    # Deterministic, and the identity is preferred among exact equivalents.
    exact = reference("lysozyme").direct_basis @ random_rotation(rng).T
    first = match_cell(exact, reference("lysozyme"))
    np.testing.assert_array_equal(first.matrix, np.eye(3))
    found = random_unimodular(rng) @ exact
    results = [match_cell(found, reference("lysozyme")).matrix for _ in range(3)]
    assert all(np.array_equal(results[0], r) for r in results)


def perturbed(ref, length_factors, angle_offsets):
    p = np.array(ref.parameters, dtype=float)
    p[:3] *= length_factors
    p[3:] += angle_offsets
    return UnitCell(*p)


@pytest.mark.parametrize("name", ["lysozyme", "C2221", "P6122", "F23", "C2"])
def test_match_tolerances(name, rng):
    ref = reference(name)
    matcher = CellMatcher(ref)
    good = perturbed(ref, [1.03, 0.97, 1.03], [1.0, -1.0, 1.0])
    found = random_unimodular(rng) @ primitive_basis(
        UnitCell(*good.parameters, space_group=None, lattice_type=ref.lattice_type,
                 centering=ref.centering)) @ random_rotation(rng).T
    m = matcher(found)
    check_match(m, found, ref, exact=False)
    assert 0.025 < m.length_dev <= 0.05 and 0.5 < m.angle_dev_deg <= 1.5
    for axis in range(3):
        factors = np.ones(3)
        factors[axis] = 1.07
        bad = perturbed(ref, factors, 0.0)
        found = random_unimodular(rng) @ primitive_basis(
            UnitCell(*bad.parameters, lattice_type=ref.lattice_type,
                     centering=ref.centering)) @ random_rotation(rng).T
        assert matcher(found) is None
    for axis in range(3):
        offsets = np.zeros(3)
        # A hexagonal lattice with γ = 122° has another setting (a + b, −a) with γ = 119°
        # and 3 % longer a: within tolerance, so that one needs a larger error.
        offsets[axis] = 4.0 if (ref.lattice_type, axis) == ("hexagonal", 2) else 2.0
        bad = perturbed(ref, 1.0, offsets)
        found = primitive_basis(UnitCell(*bad.parameters, lattice_type=ref.lattice_type,
                                         centering=ref.centering))
        assert matcher(found) is None


def test_match_rejects_super_and_sub_lattices(rng):
    ref = reference("lysozyme")
    basis = ref.direct_basis @ random_rotation(rng).T
    doubled = np.diag([2, 1, 1]) @ basis
    assert match_cell(doubled, ref) is None
    # The conventional C-centred basis is a sublattice of index 2 of the C lattice.
    c2221 = reference("C2221")
    assert match_cell(c2221.direct_basis, c2221) is None
    assert match_cell(c2221.direct_basis, c2221, centering="C") is not None


def test_match_without_reindexing(rng):
    ref = reference("lysozyme")
    rot = random_rotation(rng)
    exact = ref.direct_basis @ rot.T
    m = match_cell(exact, ref, allow_reindex=False)
    np.testing.assert_array_equal(m.matrix, np.eye(3))
    m = match_cell(-exact, ref, allow_reindex=False)
    np.testing.assert_array_equal(m.matrix, -np.eye(3))
    assert np.linalg.det(m.basis) > 0
    assert match_cell(exact[[2, 0, 1]], ref, allow_reindex=False) is None
    assert match_cell(exact[[2, 0, 1]], ref) is not None


def test_cells_equivalent():
    ref = reference("F23")
    assert cells_equivalent(ref.primitive(), ref)
    assert cells_equivalent(ref.niggli(), ref)
    assert cells_equivalent(ref, ref)
    assert not cells_equivalent(reference("I23"), UnitCell(78, 78, 78, 90, 90, 90,
                                                           space_group="P 2 3"))
    c2 = reference("C2")
    close = perturbed(c2, [1.02, 1, 1], [0, 0.5, 0])
    far = perturbed(c2, [1.06, 1, 1], 0)
    assert cells_equivalent(UnitCell(*close.parameters, centering="C"), c2.primitive())
    assert not cells_equivalent(UnitCell(*far.parameters, centering="C"), c2)


def test_matcher_validates_arguments():
    with pytest.raises(TypeError, match="UnitCell"):
        CellMatcher((79.1, 79.1, 37.9, 90, 90, 90))
    with pytest.raises(ValueError, match="length_tol"):
        CellMatcher(reference("lysozyme"), length_tol=0)
    with pytest.raises(ValueError, match="angle_tol_deg"):
        CellMatcher(reference("lysozyme"), angle_tol_deg=-1)
    with pytest.raises(ValueError, match="linearly dependent"):
        match_cell(np.ones((3, 3)), reference("lysozyme"))
    assert "CellMatcher(UnitCell(79.100" in repr(CellMatcher(reference("lysozyme")))
