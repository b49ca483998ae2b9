"""Tests for sxlab.masks: the Mask class, every constructor, save/load and bad regions."""

import h5py
import numpy as np
import pytest

from sxlab.geometry import BadRegion, Beam, Detector, Panel, PanelMask, builtin_geometry
from sxlab.io.crystfel_geom import read_geom, write_geom
from sxlab.masks import (
    Mask,
    mask_beamstop,
    mask_from_geometry,
    mask_from_hdf5,
    mask_from_panel_masks,
    mask_from_values,
    mask_lab_region,
    mask_no_index,
    mask_panel_edges,
    mask_pixel_ranges,
    mask_resolution,
    mask_to_geom_lines,
)

MULTI = ("eiger4m", "mpccd", "agipd")


@pytest.fixture(scope="module")
def dets():
    return {name: builtin_geometry(name) for name in MULTI}


def small_detector(**panel_changes):
    p = Panel("p0", 0, 39, 0, 29, corner_x=-20.3, corner_y=-14.6, res=1 / 75e-6, clen=0.1,
              data="/entry/data/data").replace(**panel_changes)
    return Detector(panels=(p,), beam=Beam(1.0), groups=(("all", ("p0",)),), name="small")


def two_panel_detector():
    """Two 20 x 30 panels side by side in one (30, 40) array, the second rotated 90°."""
    a = Panel("a", 0, 19, 0, 29, corner_x=-20.0, corner_y=-15.0, clen=0.1)
    b = Panel("b", 20, 39, 0, 29, corner_x=25.0, corner_y=-10.0, fs=(0, 1, 0), ss=(-1, 0, 0),
              clen=0.1)
    return Detector(panels=(a, b), beam=Beam(1.0), groups=(("all", ("a", "b")),), name="two")


# ------------------------------------------------------------- brute-force rules
def brute_lab_region(det, min_x, max_x, min_y, max_y, scale=None):
    """CrystFEL's rule, evaluated at every pixel corner of every panel."""
    bad = np.zeros(det.data_shape, dtype=bool)
    for i, p in enumerate(det.panels):
        k = 1.0 if scale is None else scale(p)
        ss, fs = np.meshgrid(np.arange(p.height, dtype=float), np.arange(p.width, dtype=float),
                             indexing="ij")
        x = p.corner_x + fs * p.fs[0] + ss * p.ss[0]
        y = p.corner_y + fs * p.fs[1] + ss * p.ss[1]
        inside = (x > min_x * k) & (x < max_x * k) & (y > min_y * k) & (y < max_y * k)
        bad[det.panel_slice(i)] |= inside
    return bad


def brute_beamstop(det, r, w, angle_deg, x0=0.0, y0=0.0):
    """Disc + rod at every pixel centre of every panel (lengths in panel pixels)."""
    bad = np.zeros(det.data_shape, dtype=bool)
    a = np.deg2rad(angle_deg)
    for i, p in enumerate(det.panels):
        ss, fs = np.meshgrid(np.arange(p.height, dtype=float) + 0.5,
                             np.arange(p.width, dtype=float) + 0.5, indexing="ij")
        x = p.corner_x + fs * p.fs[0] + ss * p.ss[0] - x0
        y = p.corner_y + fs * p.fs[1] + ss * p.ss[1] - y0
        shadow = np.hypot(x, y) <= r
        if w:
            along = x * np.cos(a) + y * np.sin(a)
            across = -x * np.sin(a) + y * np.cos(a)
            shadow |= (along >= 0) & (np.abs(across) <= 0.5 * w)
        bad[det.panel_slice(i)] |= shadow
    return bad


# ------------------------------------------------------------------ Mask class
def test_mask_basics():
    bad = np.zeros((4, 5), dtype=bool)
    bad[1, 2] = bad[3, 4] = True
    m = Mask.from_bad(bad, "two hot pixels")
    assert m.shape == (4, 5) and m.n_bad == 2 and m.fraction_bad == pytest.approx(0.1)
    np.testing.assert_array_equal(m.good, ~bad)
    np.testing.assert_array_equal(m.bad, bad)
    assert m.provenance == ("two hot pixels",)
    with pytest.raises(ValueError):
        m.good[0, 0] = False  # read-only
    bad[0, 0] = True
    assert m.n_bad == 2  # from_bad did not alias the caller's array
    other = Mask(np.ones((4, 5), bool), ["all"])
    assert (m & other) == m
    assert (m & other).provenance == ("two hot pixels", "all")
    assert (m | ~m).fraction_bad == 0.0
    assert (m & ~m).fraction_bad == 1.0
    assert (~m).provenance == ("not [two hot pixels]",)
    assert "either of" in (m | other).provenance[0]
    assert Mask.all_good((4, 5)) == other and Mask.all_good((4, 5)) != m
    assert "2 bad pixels" in repr(m)
    html = m._repr_html_()
    assert "<b>Mask</b>" in html and "two hot pixels" in html
    assert m.to_dataarray().dims == ("ss", "fs")


def test_mask_rejects_ambiguous_input():
    m = Mask.all_good((2, 2))
    with pytest.raises(TypeError, match="from_bad"):
        Mask(np.zeros((2, 2), dtype=np.uint8))
    with pytest.raises(TypeError):
        m & np.ones((2, 2), bool)  # noqa: B018  (polarity of plain arrays is ambiguous)
    with pytest.raises(ValueError, match="shapes"):
        m & Mask.all_good((3, 2))  # noqa: B018
    with pytest.raises(TypeError):
        Mask.from_bad(np.zeros((2, 2)))
    with pytest.raises(ValueError):
        Mask(np.ones(5, bool))


def test_mask_pickles():
    import pickle

    m = Mask.from_bad(np.eye(3, dtype=bool), "eye")
    m2 = pickle.loads(pickle.dumps(m))
    assert m2 == m and m2.provenance == m.provenance and not m2.good.flags.writeable


# ------------------------------------------------------------- mask_from_values
def test_mask_from_values_raw_flags():
    raw = np.array([[0, 65535, 65534], [10, 20, 30]], dtype=np.uint16)
    assert mask_from_values(raw).bad.tolist() == [[False, True, False], [False] * 3]
    raw32 = raw.astype(np.uint32)
    raw32[0, 0] = 2**32 - 1
    assert mask_from_values(raw32).bad.tolist() == [[True, False, False], [False] * 3]
    m = mask_from_values(raw, flag_values=(65534, 65535), equal=20, above=25, below=5)
    assert m.bad.tolist() == [[True, True, True], [False, True, True]]
    assert "value" in m.provenance[0]


def test_mask_from_values_float_and_geometry_flags():
    det = small_detector(flag_lessthan=-1.0, flag_morethan=1000.0, flag_equal=7.0,
                         max_adu=500.0)
    img = np.zeros(det.data_shape, dtype=np.float32)
    img[0, 0] = np.nan
    img[0, 1] = np.inf
    img[0, 2] = -2.0     # < flag_lessthan
    img[0, 3] = -1.0     # strict: not flagged
    img[0, 4] = 7.0      # == flag_equal
    img[0, 5] = 600.0    # > max_adu
    img[0, 6] = 500.0    # == max_adu: fine
    img[0, 7] = 2000.0   # > flag_morethan
    m = mask_from_values(img, det)
    assert np.flatnonzero(m.bad[0]).tolist() == [0, 1, 2, 4, 5, 7]
    assert m.bad[1:].sum() == 0
    m2 = mask_from_values(img, det, use_geometry_flags=False, nonfinite=False)
    assert m2.n_bad == 0
    with pytest.raises(ValueError, match="shape"):
        mask_from_values(img[:-1], det)


# ------------------------------------------------------------ pixel ranges
def test_mask_pixel_ranges(dets):
    det = dets["eiger4m"]
    m = mask_pixel_ranges(det, [("p0", 10, 19, 5, 9), (0, 2065, 3000, 0, 0)])
    expected = np.zeros(det.data_shape, bool)
    expected[5:10, 10:20] = True
    expected[0, 2065:] = True  # clipped at the panel edge
    np.testing.assert_array_equal(m.bad, expected)
    agipd = dets["agipd"]
    m = mask_pixel_ranges(agipd, [("p3a2", 0, 3, 130, 131), (None, 0, 0, 0, 0)])
    assert m.n_bad == 8 + 16  # pixel (0, 0) of every module's first ASIC
    assert m.bad[3, 130:132, 0:4].all()
    with pytest.raises(ValueError, match="min > max"):
        mask_pixel_ranges(det, [("p0", 5, 4, 0, 0)])
    with pytest.raises(ValueError, match="panel, min_fs"):
        mask_pixel_ranges(det, [("p0", 5, 4)])
    with pytest.raises(KeyError):
        mask_pixel_ranges(det, [("nope", 0, 1, 0, 1)])


# -------------------------------------------------------------- lab regions
@pytest.mark.parametrize("name", MULTI)
def test_mask_lab_region_matches_brute_force(name, dets, rng):
    det = dets[name]
    res = det.panels[0].res
    x_ext = 1.1 * np.nanmax(np.abs(det.maps.x_m)) * res
    y_ext = 1.1 * np.nanmax(np.abs(det.maps.y_m)) * res
    marked = []
    for _ in range(6):
        x = np.sort(rng.uniform(-x_ext, x_ext, 2))
        y = np.sort(rng.uniform(-y_ext, y_ext, 2))
        m = mask_lab_region(det, x[0], x[1], y[0], y[1])
        np.testing.assert_array_equal(m.bad, brute_lab_region(det, x[0], x[1], y[0], y[1]))
        marked.append(m.n_bad)
    assert sum(n > 0 for n in marked) >= 3
    # infinite limits, and metres
    m = mask_lab_region(det, -np.inf, 0.0, 10.0, np.inf)
    np.testing.assert_array_equal(m.bad, brute_lab_region(det, -np.inf, 0.0, 10.0, np.inf))
    xm = (-30 / res, 45 / res, -100 / res, 12.5 / res)
    m = mask_lab_region(det, *xm, units="m")
    np.testing.assert_array_equal(m.bad, brute_lab_region(det, *xm, scale=lambda p: p.res))
    assert m.n_bad > 0


def test_mask_lab_region_agrees_with_geometry_bad_region(dets):
    det = dets["mpccd"]
    region = BadRegion("stripe", min_x=-700.0, max_x=-400.0, min_y=-50.5, max_y=80.25)
    with_region = det.replace(bad_regions=(region,))
    assert mask_from_geometry(with_region) == mask_lab_region(det, -700, -400, -50.5, 80.25)
    one = mask_lab_region(det, -700, -400, -50.5, 80.25, panel="q2")
    assert 0 < one.n_bad < mask_lab_region(det, -700, -400, -50.5, 80.25).n_bad
    with pytest.raises(ValueError, match="min > max"):
        mask_lab_region(det, 1, 0, 0, 1)
    with pytest.raises(ValueError, match="NaN"):
        mask_lab_region(det, np.nan, 0, 0, 1)
    with pytest.raises(ValueError, match="units"):
        mask_lab_region(det, 0, 1, 0, 1, units="mm")


# ----------------------------------------------------------------- beam stop
@pytest.mark.parametrize("name", MULTI)
def test_mask_beamstop_matches_brute_force(name, dets, rng):
    det = dets[name]
    for _ in range(4):
        r = rng.uniform(5, 200)
        w = rng.uniform(2, 30)
        angle = rng.uniform(-180, 360)
        cx, cy = rng.uniform(-20, 20, 2)
        m = mask_beamstop(det, r, rod_width_px=w, rod_angle_deg=angle, center=(cx, cy))
        np.testing.assert_array_equal(m.bad, brute_beamstop(det, r, w, angle, cx, cy))
        assert m.n_bad > 0
    for angle in (0.0, 90.0, 180.0, 270.0, 45.0):  # axis-aligned rods hit exact ties
        m = mask_beamstop(det, 30.0, rod_width_px=12.0, rod_angle_deg=angle)
        np.testing.assert_array_equal(m.bad, brute_beamstop(det, 30.0, 12.0, angle))


def test_mask_beamstop_units_and_tilted_panel(dets):
    det = dets["eiger4m"]
    res = det.panels[0].res
    a = mask_beamstop(det, 40, rod_width_px=8, rod_angle_deg=120)
    b = mask_beamstop(det, 40 / res, rod_width_px=8 / res, rod_angle_deg=120, units="m")
    assert a == b
    assert abs(mask_beamstop(det, 40).n_bad - np.pi * 40**2) < 2 * np.pi * 40
    assert mask_beamstop(det, 0.0).n_bad == 0
    # a panel whose fs runs along z: the disc test is constant along a row
    tilted = small_detector(fs=(0.0, 0.0, 1.0), ss=(0.0, 1.0, 0.0), corner_x=3.0)
    m = mask_beamstop(tilted, 5.0)
    np.testing.assert_array_equal(m.bad, brute_beamstop(tilted, 5.0, None, 0.0))
    assert m.n_bad > 0
    with pytest.raises(ValueError):
        mask_beamstop(det, -1.0)


# ---------------------------------------------------------- resolution, edges
def test_mask_resolution(dets):
    det = dets["eiger4m"]
    d = det.maps.d_A
    m = mask_resolution(det, d_min=3.0, d_max=20.0)
    np.testing.assert_array_equal(m.bad, (d < 3.0) | (d > 20.0))
    assert mask_resolution(det).n_bad == 0
    assert mask_resolution(det, d_max=20.0).bad[det.maps.d_A == np.inf].all()
    with pytest.raises(ValueError):
        mask_resolution(det, d_min=5, d_max=2)


def test_mask_panel_edges_no_index_and_geometry(dets):
    agipd = dets["agipd"]
    m = mask_panel_edges(agipd, 2)
    assert m.n_bad == agipd.n_panels * (64 * 128 - 60 * 124)
    assert m.bad[0, 0:2, :].all() and not m.bad[0, 2, 2]
    assert mask_panel_edges(agipd, 0).n_bad == 0
    det = two_panel_detector()
    det = det.replace(panels=(det.panels[0], det.panels[1].replace(no_index=True)))
    ni = mask_no_index(det)
    assert ni.bad[:, 20:].all() and not ni.bad[:, :20].any()
    gm = mask_from_geometry(det)
    np.testing.assert_array_equal(gm.bad, det.bad_pixel_mask())
    eiger = dets["eiger4m"]
    np.testing.assert_array_equal(mask_from_geometry(eiger).bad, eiger.bad_pixel_mask())


# ------------------------------------------------------------------- HDF5 bits
def test_mask_from_hdf5_bit_rule(tmp_path, rng):
    values = rng.integers(0, 2**32, size=(30, 40), dtype=np.uint64).astype(np.uint32)
    values[::3] &= np.uint32(0xF)
    path = tmp_path / "m.h5"
    with h5py.File(path, "w") as f:
        f["pm"] = values
        f["pm3"] = values[None]
    det = small_detector()
    for good, bad in ((0, 0), (0x1, 0), (0, 0x6), (0x5, 0x8), (0, 0xFFFFFFFF)):
        m = mask_from_hdf5(det, path, "pm", goodbits=good, badbits=bad)
        expect = np.array([[(int(v) & good) != good or (int(v) & bad) != 0 for v in row]
                           for row in values])
        np.testing.assert_array_equal(m.bad, expect)
    assert mask_from_hdf5((30, 40), path, "pm3", badbits=1) == mask_from_hdf5(
        det, path, "pm", badbits=1)
    with pytest.raises(ValueError, match="shape"):
        mask_from_hdf5((30, 41), path, "pm", badbits=1)
    with pytest.raises(ValueError, match="badbits"):
        mask_from_hdf5(det, path, "pm", badbits=-1)


def test_mask_from_panel_masks(tmp_path):
    det = two_panel_detector()
    arr = np.zeros((30, 40), dtype=np.uint16)
    arr[0, 0] = 1        # bad in panel a (badbits 0x1)
    arr[0, 25] = 1       # panel b only checks goodbits 0x2 -> bad (bit missing)
    arr[1:, 20:] = 2     # rest of panel b has the good bit
    with h5py.File(tmp_path / "mask.h5", "w") as f:
        f["m"] = arr
    with h5py.File(tmp_path / "data.h5", "w") as f:
        f["own"] = arr
    pa = det.panels[0].replace(masks=(PanelMask("/m", "mask.h5", goodbits=0, badbits=1),))
    pb = det.panels[1].replace(masks=(PanelMask("/own", None, goodbits=2, badbits=0),))
    det = det.replace(panels=(pa, pb))
    m = mask_from_panel_masks(det, tmp_path, data_file=tmp_path / "data.h5")
    expected = np.zeros((30, 40), bool)
    expected[0, 0] = True
    expected[0, 20:] = True
    np.testing.assert_array_equal(m.bad, expected)
    with pytest.raises(ValueError, match="data_file"):
        mask_from_panel_masks(det, tmp_path)
    assert mask_from_panel_masks(small_detector()).n_bad == 0


# -------------------------------------------------------------- save and load
def test_save_load_round_trip(tmp_path, dets):
    det = dets["agipd"]
    m = mask_from_geometry(det) & mask_beamstop(det, 50, rod_width_px=10) & mask_panel_edges(
        det, 1)
    path = tmp_path / "mask.h5"
    m.save(path)
    loaded = Mask.load(path)
    assert loaded == m
    assert loaded.provenance[:-1] == m.provenance
    with h5py.File(path) as f:
        assert f["mask"].dtype == np.uint8
        assert f["mask"].attrs["convention"] == "1 = bad, 0 = good"
    with pytest.raises(ValueError, match="overwrite"):
        m.save(path)
    (~m).save(path, overwrite=True)
    assert Mask.load(path) == ~m
    # an NXmx pixel_mask: non-zero = bad; usable with CrystFEL's rule too
    with h5py.File(path, "a") as f:
        f["pixel_mask"] = m.bad.astype(np.uint32) * 4
    assert Mask.load(path, dataset="pixel_mask") == m
    assert mask_from_hdf5(det, path, "mask", badbits=1) == ~m


# ---------------------------------------------------------------- bad regions
def random_mask(shape, rng):
    bad = rng.random(shape) < 0.002
    for _ in range(8):  # some blocks and stripes
        s0, f0 = rng.integers(0, shape[-2] - 5), rng.integers(0, shape[-1] - 5)
        h, w = rng.integers(1, 40), rng.integers(1, 40)
        if len(shape) == 3:
            bad[rng.integers(0, shape[0]), s0 : s0 + h, f0 : f0 + w] = True
        else:
            bad[s0 : s0 + h, f0 : f0 + w] = True
    return Mask.from_bad(bad, "random")


@pytest.mark.parametrize("name", ("eiger1m", "agipd", "mpccd"))
def test_bad_regions_are_exact(name, rng):
    det = builtin_geometry(name)
    m = random_mask(det.data_shape, rng)
    regions = m.to_crystfel_bad_regions(det)
    assert all(not r.is_lab and r.panel is not None for r in regions)
    rebuilt = det.replace(bad_regions=det.bad_regions + tuple(regions)).bad_pixel_mask()
    np.testing.assert_array_equal(rebuilt, m.bad | det.bad_pixel_mask())
    # rectangles never overlap: their areas add up to the number of bad pixels
    area = sum((r.max_fs - r.min_fs + 1) * (r.max_ss - r.min_ss + 1) for r in regions)
    assert area == m.n_bad


def test_bad_regions_geom_file_round_trip(tmp_path, rng):
    det = builtin_geometry("eiger4m")
    m = random_mask(det.data_shape, rng) & mask_from_geometry(det)
    lines = mask_to_geom_lines(m, det, exclude_geometry=True)
    n_new = lines.count("/panel = ")
    assert n_new == len(m.to_crystfel_bad_regions(det, exclude_geometry=True))
    assert n_new < len(m.to_crystfel_bad_regions(det))
    text = write_geom(det) + "\n" + lines
    (tmp_path / "masked.geom").write_text(text)
    back = read_geom(tmp_path / "masked.geom")
    assert len(back.bad_regions) == len(det.bad_regions) + n_new
    np.testing.assert_array_equal(back.bad_pixel_mask(), m.bad)
    assert mask_from_geometry(back) == m
    assert mask_to_geom_lines(Mask.all_good(det), det) == ""
    with pytest.raises(ValueError, match="prefix"):
        mask_to_geom_lines(m, det, prefix="a b")
