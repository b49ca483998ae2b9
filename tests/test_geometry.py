"""Tests for detector geometry: transforms, per-pixel maps, layouts and bad pixels."""

import math

import numpy as np
import pytest

from sxlab.geometry import BadRegion, Beam, Detector, Panel, builtin_geometry, builtin_names


@pytest.fixture(scope="module")
def eiger16m():
    """EIGER2 X 16M with its resolution map computed once for the whole module."""
    det = builtin_geometry("eiger16m", clen=0.2, wavelength_A=1.0)
    assert det.maps.d_A.shape == det.data_shape
    return det


def flat_detector(clen=0.1, wavelength_A=1.0, **panel_changes):
    """One flat 200 x 150 panel of 100 µm pixels; the beam hits the centre of pixel [60, 80]."""
    panel = Panel(
        name="flat",
        min_fs=0,
        max_fs=199,
        min_ss=0,
        max_ss=149,
        corner_x=-80.5,
        corner_y=-60.5,
        res=10000.0,
        clen=clen,
        dims=("%", "ss", "fs"),
    ).replace(**panel_changes)
    return Detector(panels=(panel,), beam=Beam(wavelength_A), name="flat")


def random_points(det, rng, per_panel=3):
    """Random data-array coordinates, ``per_panel`` on each panel, away from the edges."""
    pid = np.repeat(np.arange(det.n_panels), per_panel)
    widths = np.array([det.panels[i].width for i in pid])
    heights = np.array([det.panels[i].height for i in pid])
    fs = np.array([det.panels[i].min_fs for i in pid]) + rng.uniform(0.01, 0.99, pid.size) * widths
    ss = np.array([det.panels[i].min_ss for i in pid]) + rng.uniform(0.01, 0.99, pid.size) * heights
    return pid, fs, ss


# ------------------------------------------------------------------ transforms
@pytest.mark.parametrize("name", builtin_names())
def test_pixel_lab_pixel_round_trip(name, rng):
    det = builtin_geometry(name)
    pid, fs, ss = random_points(det, rng)
    xyz = det.pixel_to_lab(fs, ss, pid)
    assert np.isfinite(xyz).all()
    panel, fs2, ss2 = det.lab_to_pixel(xyz)
    np.testing.assert_array_equal(panel, pid)
    np.testing.assert_allclose(fs2, fs, rtol=0, atol=1e-6)
    np.testing.assert_allclose(ss2, ss, rtol=0, atol=1e-6)
    # scaling a lab point along its ray does not change where it hits
    panel3, fs3, ss3 = det.lab_to_pixel(xyz * 3.5)
    np.testing.assert_array_equal(panel3, pid)
    np.testing.assert_allclose(fs3, fs, rtol=0, atol=1e-6)
    if not det.is_stacked:
        np.testing.assert_array_equal(det.pixel_to_lab(fs, ss), xyz)
    else:
        with pytest.raises(ValueError, match="panel is required"):
            det.pixel_to_lab(fs, ss)


@pytest.mark.parametrize("name", builtin_names())
def test_q_pixel_round_trip(name, rng):
    det = builtin_geometry(name)
    pid, fs, ss = random_points(det, rng)
    q = det.pixel_to_q(fs, ss, pid)
    # q lies on the Ewald sphere: |q + k_in| = 1/λ
    k_out = q + [0.0, 0.0, 1.0 / det.wavelength_A]
    np.testing.assert_allclose(np.linalg.norm(k_out, axis=1), 1.0 / det.wavelength_A, rtol=1e-12)
    panel, fs2, ss2 = det.q_to_pixel(q)
    np.testing.assert_array_equal(panel, pid)
    np.testing.assert_allclose(fs2, fs, rtol=0, atol=1e-6)
    np.testing.assert_allclose(ss2, ss, rtol=0, atol=1e-6)
    np.testing.assert_allclose(det.resolution_A(fs, ss, pid), 1 / np.linalg.norm(q, axis=1))


def test_lab_points_off_the_detector():
    det = flat_detector()
    panel, fs, ss = det.lab_to_pixel([[1.0, 0.0, 0.1], [0.0, 0.0, -1.0]])
    np.testing.assert_array_equal(panel, [-1, -1])
    assert np.isnan(fs).all() and np.isnan(ss).all()


# ------------------------------------------------------------------ maps
def analytic_d(fs_centre, ss_centre, bc=(80.5, 60.5), res=10000.0, clen=0.1, wavelength=1.0):
    r = np.hypot(fs_centre - bc[0], ss_centre - bc[1]) / res
    two_theta = np.arctan(r / clen)
    with np.errstate(divide="ignore"):
        return wavelength / (2.0 * np.sin(two_theta / 2.0))


def test_d_A_on_flat_panel_matches_braggs_law():
    det = flat_detector(clen=0.1, wavelength_A=1.0)
    maps = det.maps
    assert det.beam_center_px() == pytest.approx((80.5, 60.5))
    # the beam hits the centre of pixel [60, 80] exactly
    assert maps.d_A[60, 80] == np.inf
    assert maps.r_px[60, 80] == pytest.approx(0.0, abs=1e-9)
    assert maps.two_theta_rad[60, 80] == pytest.approx(0.0, abs=1e-12)
    assert maps.r_px[60, 90] == pytest.approx(10.0, rel=1e-7)
    assert maps.r_px[63, 84] == pytest.approx(5.0, rel=1e-7)
    for ss, fs in [(60, 90), (63, 84), (0, 0), (149, 199), (10, 150), (149, 0)]:
        expected = analytic_d(fs + 0.5, ss + 0.5)
        assert maps.d_A[ss, fs] == pytest.approx(expected, rel=1e-6)
        assert det.resolution_A([fs + 0.5], [ss + 0.5])[0] == pytest.approx(expected, rel=1e-12)
    ss, fs = np.mgrid[0:150, 0:200]
    expected = analytic_d(fs + 0.5, ss + 0.5)
    np.testing.assert_allclose(maps.d_A, expected, rtol=1e-6)
    # at the corner of pixel [0, 0] (fs = ss = 0) d is that of a point half a pixel further out
    corner = det.resolution_A([0.0], [0.0])[0]
    assert corner == pytest.approx(analytic_d(0.0, 0.0), rel=1e-12)
    assert corner < maps.d_A[0, 0]


def test_d_A_scales_with_wavelength_and_distance():
    d1 = flat_detector(clen=0.1, wavelength_A=1.0).maps.d_A
    d2 = flat_detector(clen=0.1, wavelength_A=2.0).maps.d_A
    np.testing.assert_allclose(d2, 2 * d1, rtol=1e-6)
    d3 = flat_detector(clen=0.2).maps.d_A[60, 100]
    assert d3 == pytest.approx(analytic_d(100.5, 60.5, clen=0.2), rel=1e-6)


def test_maps_on_tilted_panel():
    a = math.radians(30.0)
    det = flat_detector(
        fs=(2 * math.cos(a), 0.0, 2 * math.sin(a)),  # not unit length: normalised on construction
        ss=(0.0, 1.0, 0.0),
        corner_x=-50.0,
        corner_y=-40.0,
        res=5000.0,
        clen=0.08,
        coffset=0.002,
    )
    p = det.panels[0]
    assert p.fs == pytest.approx((math.cos(a), 0.0, math.sin(a)), abs=1e-15)
    ss, fs = np.mgrid[0:150, 0:200] + 0.5
    x = (-50.0 + fs * math.cos(a)) / 5000.0
    y = (-40.0 + ss) / 5000.0
    z = 0.082 + fs * math.sin(a) / 5000.0
    dist = np.sqrt(x * x + y * y + z * z)
    maps = det.maps
    np.testing.assert_allclose(maps.x_m, x, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(maps.y_m, y, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(maps.z_m, z, rtol=1e-6)
    np.testing.assert_allclose(maps.two_theta_rad, np.arccos(z / dist), rtol=0, atol=1e-6)
    np.testing.assert_allclose(maps.azimuth_rad, np.arctan2(y, x), rtol=0, atol=1e-6)
    np.testing.assert_allclose(maps.r_px, np.hypot(x, y) * 5000.0, rtol=1e-6)
    two_theta = np.arccos(z / dist)
    np.testing.assert_allclose(maps.d_A, 1.0 / (2 * np.sin(two_theta / 2)), rtol=1e-5)
    q = np.stack([maps.q_x, maps.q_y, maps.q_z], axis=-1)
    k_out = np.stack([x, y, z], axis=-1) / dist[..., None]
    np.testing.assert_allclose(q, k_out - [0.0, 0.0, 1.0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(maps.q_A, np.linalg.norm(q, axis=-1), rtol=1e-5, atol=1e-7)


def test_eiger16m_is_4148_by_4362(eiger16m):
    assert eiger16m.data_shape == (4362, 4148)
    assert not eiger16m.is_stacked and eiger16m.dims == ("ss", "fs")
    d = eiger16m.maps.d_A
    assert d.shape == (4362, 4148) and d.dtype == np.float32
    bc_fs, bc_ss = eiger16m.beam_center_px()
    assert np.unravel_index(np.argmax(d), d.shape) == (int(bc_ss), int(bc_fs))
    far = eiger16m.resolution_A([4147.5], [0.5])[0]
    assert d[0, 4147] == pytest.approx(far, rel=1e-6)
    # the far corner (ss 0, fs 4147) is 0.2256 m from the beam axis: 2θ = 48.4°, d = 1.2154 Å
    assert np.unravel_index(np.argmin(d), d.shape) == (0, 4147)
    assert d[0, 4147] == pytest.approx(1.2154, abs=1e-4)


# ------------------------------------------------------------------ layouts
def test_stacked_layout_agipd():
    det = builtin_geometry("agipd")
    assert det.is_stacked and det.dims == ("module", "ss", "fs")
    assert det.data_shape == (16, 512, 128)
    p5a3 = det.panel_index("p5a3")
    assert det.panel_slice(p5a3) == (5, slice(192, 256), slice(0, 128))
    panel_map = det.maps.panel
    assert panel_map.shape == det.data_shape and (panel_map >= 0).all()
    for i in range(det.n_panels):
        assert (panel_map[det.panel_slice(i)] == i).all()
    np.testing.assert_array_equal(
        det.panel_of_pixel([3.5, 127.9], [192.0, 511.5], module=[5, 15]),
        [p5a3, det.panel_index("p15a7")],
    )


def test_two_dimensional_layout_mpccd():
    det = builtin_geometry("mpccd")
    assert not det.is_stacked and det.dims == ("ss", "fs")
    assert det.data_shape == (8192, 512)
    assert det.panel_slice(3) == (slice(3072, 4096), slice(0, 512))
    assert det.panel_slice(7) == (slice(7168, 8192), slice(0, 512))
    panel_map = det.maps.panel
    for i in range(det.n_panels):
        assert (panel_map[det.panel_slice(i)] == i).all()
    np.testing.assert_array_equal(
        det.panel_of_pixel([0.5, 100.2, 600.0], [3072.5, 8191.9, 10.0]), [3, 7, -1]
    )


# ------------------------------------------------------------------ bad pixels
def test_bad_pixel_mask_pixel_regions_edges_and_no_index():
    def panel(name, fs, ss, **kw):
        return Panel(name, fs[0], fs[1], ss[0], ss[1], corner_x=0.0, corner_y=0.0, **kw)

    det = Detector(
        panels=(
            panel("a", (0, 29), (0, 19), mask_edge_pixels=2),
            panel("b", (0, 29), (20, 39), no_index=True),
            panel("c", (32, 49), (0, 39)),  # fs 30, 31 belong to no panel
        ),
        beam=Beam(1.0),
        bad_regions=(
            BadRegion("spot", 10, 12, 5, 6, panel="a"),
            BadRegion("row", 25, 40, 30, 30),  # no panel: applies to every panel it touches
            BadRegion("far", 100, 120, 0, 5),
            BadRegion("only_c", 0, 49, 39, 39, panel="c"),
        ),
    )
    expected = np.zeros((40, 50), dtype=bool)
    expected[:, 30:32] = True  # no panel
    a = expected[0:20, 0:30]
    a[:2, :] = a[-2:, :] = a[:, :2] = a[:, -2:] = True
    a[5:7, 10:13] = True
    expected[20:40, 0:30] = True  # no_index
    expected[30, 32:41] = True
    expected[39, 32:50] = True
    np.testing.assert_array_equal(det.bad_pixel_mask(), expected)
    assert det.data_shape == (40, 50)


# ------------------------------------------------------------------ immutability
def test_replace_keeps_equality_and_recomputes_maps():
    det = flat_detector()
    d_before = det.maps.d_A
    same = det.replace()
    assert same == det and same is not det and hash(same) == hash(det)
    assert same.maps is not det.maps
    renamed = det.replace(name="other")
    assert renamed != det and renamed.replace(name="flat") == det
    farther = det.with_clen(0.2)
    assert farther != det
    assert farther.maps.d_A[60, 100] > det.maps.d_A[60, 100]
    assert det.maps.d_A is d_before  # the original's cache is untouched
    longer = det.with_beam(wavelength_A=2.0)
    np.testing.assert_allclose(longer.maps.q_A, det.maps.q_A / 2, rtol=1e-6)
    panels = (det.panels[0].replace(corner_x=-100.5),)
    moved = det.replace(panels=panels)
    assert moved.beam_center_px() == pytest.approx((100.5, 60.5))
    assert moved.maps.d_A[60, 100] == np.inf


def test_panel_replace_keeps_direction_vectors_bit_for_bit(rng):
    for v in rng.normal(size=(200, 2, 3)):
        p = Panel("p", 0, 9, 0, 9, 0.0, 0.0, fs=tuple(v[0]), ss=tuple(v[1]))
        q = p.replace(clen=0.3)
        assert (q.fs, q.ss) == (p.fs, p.ss)
        assert q.replace(clen=p.clen) == p


def test_scalars_in_scalars_out_arrays_keep_their_shape(rng):
    det = builtin_geometry("eiger1m", clen=0.1, wavelength_A=1.0)
    d = det.resolution_A(600.5, 400.5)
    assert isinstance(d, float) and math.isfinite(d)
    assert isinstance(det.two_theta_rad(600.5, 400.5, 0), float)
    assert isinstance(det.panel_of_pixel(600.5, 400.5), int)
    assert det.pixel_to_lab(600.5, 400.5).shape == (3,)
    assert det.pixel_to_q(600.5, 400.5, "p0").shape == (3,)
    panel, fs, ss = det.lab_to_pixel(det.pixel_to_lab(600.5, 400.5))
    assert (panel, round(fs, 9), round(ss, 9)) == (0, 600.5, 400.5)
    panel, fs, ss = det.q_to_pixel(det.pixel_to_q(600.5, 400.5))
    assert isinstance(panel, int) and (round(fs, 9), round(ss, 9)) == (600.5, 400.5)
    # Arrays: results have the broadcast shape of the inputs, values those of the scalars.
    fs = rng.uniform(0, 1030, (4, 5))
    ss = rng.uniform(0, 1065, (4, 5))
    grid = det.resolution_A(fs, ss)
    assert grid.shape == (4, 5)
    assert grid[2, 3] == det.resolution_A(fs[2, 3], ss[2, 3])
    assert det.resolution_A(fs[0], 100.5).shape == (5,)
    assert det.pixel_to_lab(fs, ss, 0).shape == (4, 5, 3)
    assert det.panel_of_pixel(fs, ss).shape == (4, 5)
    q = det.pixel_to_q(fs, ss)
    panel, f2, s2 = det.q_to_pixel(q)
    assert panel.shape == (4, 5)
    np.testing.assert_allclose(f2, fs, atol=1e-6)
    np.testing.assert_allclose(s2, ss, atol=1e-6)
    assert det.two_theta_rad([10.5], [10.5]).shape == (1,)
    with pytest.raises(KeyError, match="no panel named 'q9'"):
        det.pixel_to_lab(1.0, 1.0, "q9")


@pytest.mark.parametrize("name", ["eiger1m", "agipd", "mpccd"])
def test_angle_maps_equal_the_scalar_kernel(name):
    """2θ and azimuth come from NumPy's arctan2 on row blocks; rounded to float32 they are
    the scalar kernel's values bit for bit (panels of every orientation, gaps NaN)."""
    from sxlab._geometry_kernels import panel_map

    det = builtin_geometry(name, clen=0.12, wavelength_A=1.0)
    for kind, got in ((4, det.maps.two_theta_rad), (5, det.maps.azimuth_rad)):
        want = np.full(det.data_shape, np.nan, np.float32)
        for i, p in enumerate(det.panels):
            buf = np.empty((p.height, p.width), np.float32)
            panel_map(buf, kind, p.corner_m(), p.fs_m(), p.ss_m(), p.res, 0.0)
            want[det.panel_slice(i)] = buf
        np.testing.assert_array_equal(got, want)
