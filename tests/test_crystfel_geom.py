"""Tests for reading and writing CrystFEL geometry files."""

import math
import pickle
from pathlib import Path

import numpy as np
import pytest

from sxlab.geometry import HC_EV_A, BadRegion, PanelMask, builtin_geometry, builtin_names
from sxlab.io.crystfel_geom import GeomError, electron_wavelength_A, read_geom, write_geom

DATA = Path(__file__).parent / "data"
EXAMPLES = ["agipd_example.geom", "eiger16m_example.geom"]

HEADER = """\
photon_energy = 9300 eV
clen = 0.12 m
"""

PANEL = """\
p0/min_fs = 0
p0/max_fs = 99
p0/min_ss = 0
p0/max_ss = 79
p0/corner_x = -50.5
p0/corner_y = -40.25
p0/fs = x
p0/ss = y
p0/res = 10000
p0/adu_per_photon = 1
"""

SECOND_PANEL = (
    PANEL.replace("p0/", "p1/")
    .replace("min_ss = 0", "min_ss = 80")
    .replace("max_ss = 79", "max_ss = 159")
)


def make(*lines, header=HEADER, panel=PANEL):
    """Text of a small valid geometry file plus ``lines``."""
    return header + panel + "".join(line + "\n" for line in lines)


def line_number(text, line):
    return text.splitlines().index(line) + 1


# ------------------------------------------------------------------ round trips
@pytest.mark.parametrize("name", builtin_names())
def test_builtin_round_trip(name, tmp_path):
    det = builtin_geometry(name)
    text = write_geom(det, tmp_path / f"{name}.geom")
    assert (tmp_path / f"{name}.geom").read_text() == text
    assert read_geom(text) == det
    assert read_geom(tmp_path / f"{name}.geom") == det


@pytest.mark.parametrize("filename", EXAMPLES)
def test_example_round_trip(filename):
    det = read_geom(DATA / filename)
    text = write_geom(det)
    again = read_geom(text)
    assert again == det
    assert write_geom(again) == text


def test_round_trip_keeps_unusual_values():
    text = make(
        "p0/fs = -0.0010x +0.9999y +0.0123z",
        "p0/ss = +0.9999x +0.0010y",
        "p0/corner_x = 0.1",
        "p0/coffset = 3.3e-05",
        "p0/max_adu = 1e300",
        "p0/flag_equal = -1",
        "p0/saturation_map = /sat",
        "p0/saturation_map_file = sat.h5",
        "p0/no_index = 1",
        "; sxlab: divergence_rad = 2.5e-05",
        "peak_list = /peaks",
        "peak_list_type = list3",
        "detector_shift_x = /shift/x mm",
        "detector_shift_y = /shift/y",
    ).replace("photon_energy = 9300 eV", "wavelength = 1.0000001 A")
    det = read_geom(text)
    assert det.beam.divergence_rad == 2.5e-05
    assert read_geom(write_geom(det)) == det


def test_round_trip_electron_beam_and_header_clen():
    text = make().replace("photon_energy = 9300 eV", "electron_voltage = 200 kV")
    text = text.replace("clen = 0.12 m", "clen = /entry/instrument/detector/distance mm")
    det = read_geom(text)
    assert read_geom(write_geom(det)) == det


def test_written_file_names_detector_and_uses_plain_keys():
    det = builtin_geometry("eiger4m", wavelength_A=1.0)
    text = write_geom(det)
    assert "; sxlab: name = EIGER X 4M" in text.splitlines()
    assert "wavelength = 1.0 A" in text
    assert "p0/fs = +1.0x" in text
    assert "bad_gap_fs1/panel = p0" in text
    assert text.splitlines()[-1] == "group_all = p0"
    assert "photon_energy = 12000.0 eV" in write_geom(det.with_beam(wavelength_A=HC_EV_A / 12000))


# ------------------------------------------------------------------ example files
def test_agipd_example_contents():
    det = read_geom(DATA / "agipd_example.geom")
    assert det.name == "agipd_example"
    assert det.panel_names == ["p0a0", "p0a1", "p1a0", "p1a1"]
    assert det.data_shape == (2, 128, 128)
    assert det.is_stacked
    assert math.isnan(det.beam.wavelength_A)
    assert det.beam.photon_energy_path == "/entry_1/instrument_1/source_1/photon_energy"
    assert det.beam.bandwidth == 0.0008
    assert det.clen_path is None
    assert det.peak_list == "/entry_1/result_1"
    assert det.peak_list_type == "cxi"
    p00, p01, p10, p11 = det.panels
    for p in det.panels:
        assert p.clen == 0.1247
        assert p.res == 5000.0
        assert p.data == "/entry_1/data_1/data"
        assert p.max_adu == 65000.0
        assert p.flag_lessthan == -10.0
        assert p.masks[0] == PanelMask("/entry_1/data_1/mask", None, 0x0, 0xFFFF)
        assert np.linalg.norm(p.fs) == pytest.approx(1.0, abs=1e-15)
    assert p00.dims == ("%", 0, "ss", "fs")
    assert p11.dims == ("%", 1, "ss", "fs")
    # defaults set between the modules apply to module 1 only
    assert (p00.adu_per_eV, p00.adu_per_photon, p00.coffset) == (0.0075, None, 0.0)
    assert (p10.adu_per_eV, p10.adu_per_photon, p10.coffset) == (None, 69.75, 0.0005)
    assert p01.masks[1] == PanelMask("/entry_1/data_1/hot_pixels", "hot_pixels.h5", 1, 6)
    assert len(p00.masks) == 1
    assert p11.mask_edge_pixels == 1 and p10.mask_edge_pixels == 0
    assert p00.fs == pytest.approx(np.array([0.0012, -0.9999, 0]) / math.hypot(0.0012, 0.9999))
    assert (p01.corner_x, p01.corner_y) == (-86.4934, 129.9208)
    assert [b.name for b in det.bad_regions] == ["beamstop", "hotcolumn", "p1_corner"]
    beamstop, hot, corner = det.bad_regions
    assert beamstop.is_lab and beamstop.panel is None
    assert (beamstop.min_x, beamstop.max_x, beamstop.min_y, beamstop.max_y) == (-30, 30, -12, 12)
    assert (hot.min_fs, hot.max_fs, hot.min_ss, hot.max_ss, hot.panel) == (10, 10, 64, 127, "p0a1")
    assert corner.panel == "p1a0"
    assert det.groups == (("all", ("p0a0", "p0a1", "p1a0", "p1a1")),)
    assert det.rigid_groups == (("q0", ("p0a0", "p0a1")), ("q1", ("p1a0", "p1a1")))
    assert det.rigid_group_collections == (("quadrants", ("q0", "q1")),)


def test_eiger16m_example_matches_builtin_layout():
    det = read_geom(DATA / "eiger16m_example.geom")
    builtin = builtin_geometry("eiger16m")
    assert det.data_shape == builtin.data_shape == (4362, 4148)
    (p,) = det.panels
    assert (p.name, p.corner_x, p.corner_y, p.res) == ("e16m", -2070.5, -2180.2, 13333.3)
    assert (p.fs, p.ss, p.clen, p.dims) == ((1, 0, 0), (0, 1, 0), 0.15, ("%", "ss", "fs"))
    assert p.adu_per_photon == 1.0 and p.adu_per_eV is None
    assert p.masks == (PanelMask("/entry/instrument/detector/pixel_mask", None, 0, 0xFFFFFFFF),)
    assert p.flag_morethan == 4294967294.0
    assert det.beam.wavelength_A == HC_EV_A / 12400
    assert det.beam.bandwidth == 0.0001
    assert det.detector_shift_x_path is None and det.peak_list is None

    def ranges(d):
        return sorted((b.min_fs, b.max_fs, b.min_ss, b.max_ss) for b in d.bad_regions)

    assert ranges(det) == ranges(builtin)
    assert all(b.panel == "e16m" for b in det.bad_regions)  # guessed where omitted
    assert det.beam_center_px() == pytest.approx((2070.5, 2180.2))


# ------------------------------------------------------------------ global keys
@pytest.mark.parametrize(
    ("line", "wavelength_A"),
    [
        ("photon_energy = 9300", HC_EV_A / 9300),
        ("photon_energy = 9300 eV", HC_EV_A / 9300),
        ("photon_energy = 9.3 keV", HC_EV_A / 9300),
        ("wavelength = 1.2e-10 m", 1.2),
        ("wavelength = 1.2e-10", 1.2),
        ("wavelength = 1.2 A", 1.2),
        ("electron_voltage = 300 kV", 0.0196875),
        ("electron_voltage = 200000 V", 0.0250793),
        ("electron_voltage = 100 kV", 0.0370144),
    ],
)
def test_beam_keys(line, wavelength_A):
    det = read_geom(make(header=f"{line}\nclen = 0.12 m\n"))
    assert det.beam.wavelength_A == pytest.approx(wavelength_A, rel=5e-6)
    assert det.beam.photon_energy_path is None


def test_electron_wavelength_is_relativistic():
    classical = 6.62607015e-34 / math.sqrt(2 * 9.1093837015e-31 * 1.602176634e-19 * 300e3) * 1e10
    assert electron_wavelength_A(300e3) < 0.9 * classical


def test_photon_energy_from_header():
    det = read_geom(make(header="photon_energy = /LCLS/photon_energy_eV\nclen = 0.12 m\n"))
    assert det.beam.photon_energy_path == "/LCLS/photon_energy_eV"
    assert math.isnan(det.beam.wavelength_A)


@pytest.mark.parametrize(
    ("line", "clen", "path"),
    [
        ("clen = 0.15", 0.15, None),
        ("clen = 0.15 m", 0.15, None),
        ("clen = 150 mm", 0.15, None),
        (
            "clen = /entry/instrument/detector/distance",
            math.nan,
            "/entry/instrument/detector/distance",
        ),
        ("clen = /det/distance mm", math.nan, "/det/distance"),
    ],
)
def test_clen(line, clen, path):
    det = read_geom(make(header=f"photon_energy = 9300 eV\n{line}\n", panel=PANEL + SECOND_PANEL))
    assert det.clen_path == path
    for p in det.panels:
        assert p.clen == pytest.approx(clen, nan_ok=True)


def test_other_global_keys():
    det = read_geom(
        make(
            "bandwidth = 1e-3",
            "detector_shift_x = /entry/shift_x mm",
            "detector_shift_y = /entry/shift_y",
            "peak_list = /entry_1/result_1",
            "peak_list_type = auto",
        )
    )
    assert det.beam.bandwidth == 1e-3
    assert det.detector_shift_x_path == "/entry/shift_x"
    assert det.detector_shift_y_path == "/entry/shift_y"
    assert (det.peak_list, det.peak_list_type) == ("/entry_1/result_1", "auto")


# ------------------------------------------------------------------ panel keys
def test_every_panel_key():
    panel = """\
q/min_fs = 10
q/max_fs = 59
q/min_ss = 5
q/max_ss = 24
q/corner_x = -12.5
q/corner_y = 7.25
q/fs = -0.0010x +0.9999y
q/ss = -0.9999x -0.0010y
q/coffset = 0.002
q/res = 5000
q/adu_per_eV = 0.01
q/max_adu = 16000
q/saturation_map = /sat/map
q/saturation_map_file = sat.h5
q/data = /entry/data/data
q/dim0 = %
q/dim1 = 3
q/dim2 = ss
q/dim3 = fs
q/mask = /entry/mask
q/mask_file = mask.h5
q/mask_good = 0x1
q/mask_bad = 0xfe
q/mask2_data = /entry/mask2
q/mask2_file = other.h5
q/mask2_goodbits = 3
q/mask2_badbits = 0x10
q/mask7_data = /entry/mask7
q/mask_edge_pixels = 2
q/flag_lessthan = -5
q/flag_morethan = 15000.5
q/flag_equal = 65535
q/no_index = 1
"""
    (p,) = read_geom(HEADER + panel).panels
    assert (p.name, p.min_fs, p.max_fs, p.min_ss, p.max_ss) == ("q", 10, 59, 5, 24)
    assert (p.corner_x, p.corner_y, p.coffset, p.res) == (-12.5, 7.25, 0.002, 5000.0)
    n = math.hypot(0.001, 0.9999)
    assert p.fs == pytest.approx((-0.001 / n, 0.9999 / n, 0.0), abs=1e-15)
    assert p.ss == pytest.approx((-0.9999 / n, -0.001 / n, 0.0), abs=1e-15)
    assert (p.adu_per_eV, p.adu_per_photon, p.max_adu) == (0.01, None, 16000.0)
    assert (p.saturation_map, p.saturation_map_file) == ("/sat/map", "sat.h5")
    assert p.data == "/entry/data/data"
    assert p.dims == ("%", 3, "ss", "fs") and isinstance(p.dims[1], int)
    assert p.masks == (
        PanelMask("/entry/mask", "mask.h5", 1, 0xFE),
        PanelMask("/entry/mask2", "other.h5", 3, 0x10),
        PanelMask("/entry/mask7", None, 0, 0),
    )
    assert p.mask_edge_pixels == 2
    assert (p.flag_lessthan, p.flag_morethan, p.flag_equal) == (-5.0, 15000.5, 65535.0)
    assert p.no_index is True
    assert p.clen == 0.12


def test_mask_alias_and_numbered_key_name_the_same_mask():
    det = read_geom(make("p0/mask0_data = /first", "p0/mask = /second", "p0/mask0_badbits = 4"))
    assert det.panels[0].masks == (PanelMask("/second", None, 0, 4),)


def test_mask_bits_without_data_are_ignored():
    det = read_geom(make("p0/mask_good = 0x0", "p0/mask_bad = 0xffff"))
    assert det.panels[0].masks == ()


def test_dims_default_to_ss_fs():
    assert read_geom(make()).panels[0].dims == ("ss", "fs")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("x", (1, 0, 0)),
        ("-y", (0, -1, 0)),
        ("+0.5z", (0, 0, 1)),
        ("0.6x+0.8y", (0.6, 0.8, 0)),
        ("- 0.6x + 0.8z", (-0.6, 0, 0.8)),
        ("-0.0010x +0.9999y", (-0.001, 0.9999, 0)),
        ("3e-1x -4E-1y", (0.6, -0.8, 0)),
        ("+.6y .8z", (0, 0.6, 0.8)),
    ],
)
def test_direction_strings(text, expected):
    det = read_geom(make(f"p0/fs = {text}", "p0/ss = +0.01x -0.01y +1.0z"))
    v = np.asarray(expected, dtype=float)
    assert det.panels[0].fs == pytest.approx(v / np.linalg.norm(v), abs=1e-15)


@pytest.mark.parametrize("text", ["0.5", "x y x", "2w", "0x", "+-x", "x1", "0x -0y", "xy z"])
def test_bad_direction_strings(text):
    src = make(f"p0/fs = {text}")
    with pytest.raises(GeomError, match=rf"line {line_number(src, f'p0/fs = {text}')}: p0/fs: "):
        read_geom(src)


# ------------------------------------------------------------------ defaults
def test_defaults_apply_only_to_panels_mentioned_later():
    a = PANEL.replace("p0/", "a/")
    b = PANEL.replace("p0/", "b/").replace("min_ss = 0", "min_ss = 80")
    b = b.replace("max_ss = 79", "max_ss = 159")
    c = b.replace("b/", "c/").replace("min_ss = 80", "min_ss = 160")
    c = c.replace("max_ss = 159", "max_ss = 239")
    text = (
        HEADER
        + "data = /entry/data\nmax_adu = 1000\n"
        + a
        + "max_adu = 2000\nflag_equal = -1\n"
        + b
        + "a/coffset = 0.001\n"  # a was mentioned before the new defaults
        + "c/max_adu = 3000\n"  # explicit panel value overrides the default
        + c
    )
    da, db, dc = read_geom(text).panels
    assert (da.data, db.data, dc.data) == ("/entry/data",) * 3
    assert (da.max_adu, db.max_adu, dc.max_adu) == (1000, 2000, 3000)
    assert (da.flag_equal, db.flag_equal, dc.flag_equal) == (None, -1, -1)
    assert da.coffset == 0.001


def test_gain_default_replaced_by_the_other_gain_key():
    text = HEADER + "adu_per_eV = 0.01\n" + PANEL  # PANEL sets adu_per_photon itself
    p = read_geom(text).panels[0]
    assert (p.adu_per_photon, p.adu_per_eV) == (1.0, None)
    p = read_geom(make("p0/adu_per_eV = 0.02")).panels[0]  # both on the panel: both kept
    assert (p.adu_per_photon, p.adu_per_eV) == (1.0, 0.02)
    assert read_geom(write_geom(read_geom(make("p0/adu_per_eV = 0.02")))).panels[0] == p


def test_trailing_default_is_an_error():
    path = DATA / "broken_trailing_default.geom"
    with pytest.raises(GeomError) as info:
        read_geom(path)
    msg = str(info.value)
    assert str(path) in msg
    assert "line 17" in msg and "max_adu = 12000" in msg and "no panel follows" in msg
    assert info.value.lineno == 17


# ------------------------------------------------------------------ bad regions and groups
def test_bad_region_panel_is_guessed_when_unique():
    region = "badx/min_fs = 3\nbadx/max_fs = 4\nbadx/min_ss = 85\nbadx/max_ss = 90\n"
    det = read_geom(HEADER + PANEL + SECOND_PANEL + region)
    assert det.bad_regions == (BadRegion("x", 3, 4, 85, 90, panel="p1"),)


def test_lab_bad_region_with_panel_restriction():
    text = make(
        "bad_ring/min_x = -5",
        "bad_ring/max_x = 5.5",
        "bad_ring/min_y = -1e1",
        "bad_ring/max_y = 10",
        "bad_ring/panel = p0",
    )
    (b,) = read_geom(text).bad_regions
    assert b == BadRegion("ring", min_x=-5.0, max_x=5.5, min_y=-10.0, max_y=10.0, panel="p0")


def brute_force_bad_pixels(det):
    """Plain per-pixel version of CrystFEL's bad-pixel rules, independent of geometry.py."""
    bad = np.ones(det.data_shape, dtype=bool)
    for i, p in enumerate(det.panels):
        ss, fs = np.mgrid[0 : p.height, 0 : p.width]
        pb = np.zeros(ss.shape, dtype=bool)
        e = p.mask_edge_pixels
        if e:
            pb |= (fs < e) | (fs >= p.width - e) | (ss < e) | (ss >= p.height - e)
        if p.no_index:
            pb[:] = True
        x = fs * p.fs[0] + ss * p.ss[0] + p.corner_x
        y = fs * p.fs[1] + ss * p.ss[1] + p.corner_y
        for b in det.bad_regions:
            if b.panel not in (None, p.name):
                continue
            if b.is_lab:
                pb |= (x > b.min_x) & (x < b.max_x) & (y > b.min_y) & (y < b.max_y)
            else:
                f, s = fs + p.min_fs, ss + p.min_ss
                pb |= (f >= b.min_fs) & (f <= b.max_fs) & (s >= b.min_ss) & (s <= b.max_ss)
        bad[det.panel_slice(i)] = pb
    return bad


def test_lab_bad_region_pixels_match_crystfel_rule():
    det = read_geom(DATA / "agipd_example.geom")
    mask = det.bad_pixel_mask()
    np.testing.assert_array_equal(mask, brute_force_bad_pixels(det))
    only_beamstop = det.replace(bad_regions=det.bad_regions[:1])
    bs = only_beamstop.bad_pixel_mask() & ~det.replace(bad_regions=()).bad_pixel_mask()
    assert bs[0].sum() > 20 and bs[1].sum() > 20  # the region spans both modules
    # pixel (fs 127, ss 0) of p0a0 has its corner at x = -20.5 + 127 * fsx, y = 130 + 127 * fsy
    assert bs[0, 0, 127] and not bs[0, 0, 0]


def test_lab_bad_region_on_rotated_panels(rng):
    det = builtin_geometry("mpccd")
    n_marked = 0
    for _ in range(3):
        x0, y0 = rng.uniform(-900, 900, size=2)
        region = BadRegion("r", min_x=x0, max_x=x0 + 300.5, min_y=y0, max_y=y0 + 1500.25)
        d = det.replace(bad_regions=(region,))
        expected = brute_force_bad_pixels(d)
        np.testing.assert_array_equal(d.bad_pixel_mask(), expected)
        n_marked += expected.sum()
    assert n_marked > 0


def test_group_hierarchy():
    text = HEADER + PANEL + SECOND_PANEL + "group_m0 = p0\ngroup_m1 = p1\ngroup_all = m0,m1\n"
    det = read_geom(text)
    assert det.groups == (("m0", ("p0",)), ("m1", ("p1",)), ("all", ("m0", "m1")))
    assert read_geom(write_geom(det)) == det


def test_flat_all_group_created_when_none_given():
    det = read_geom(HEADER + PANEL + SECOND_PANEL)
    assert det.groups == (("all", ("p0", "p1")),)


# ------------------------------------------------------------------ errors
ERRORS = [
    # (extra lines, offending line, key, fragment of the expectation)
    (["wavelenght = 1 A"], "wavelenght = 1 A", "wavelenght", "unknown key"),
    (["p0/corner_z = 3"], "p0/corner_z = 3", "p0/corner_z", "unknown panel key"),
    (["p0/clen = 0.1"], "p0/clen = 0.1", "p0/clen", "top-level key"),
    (["p0/photon_energy = 9000"], "p0/photon_energy = 9000", "p0/photon_energy", "top-level"),
    (["p0/min_fs = zero"], "p0/min_fs = zero", "p0/min_fs", "expected an integer"),
    (["p0/max_fs = 9.5"], "p0/max_fs = 9.5", "p0/max_fs", "expected an integer"),
    (["p0/min_ss = -1"], "p0/min_ss = -1", "p0/min_ss", "expected an integer >= 0"),
    (["p0/corner_x = 1,5"], "p0/corner_x = 1,5", "p0/corner_x", "expected a number"),
    (["p0/corner_y = nan"], "p0/corner_y = nan", "p0/corner_y", "finite number"),
    (["p0/res = -3"], "p0/res = -3", "p0/res", "positive"),
    (["res = 1e4 px"], "res = 1e4 px", "res", "expected a number"),
    (["p0/mask_good = 0xZZ"], "p0/mask_good = 0xZZ", "p0/mask_good", "bit mask"),
    (["p0/no_index = maybe"], "p0/no_index = maybe", "p0/no_index", "expected 1 or 0"),
    (["p0/dim1 = slow"], "p0/dim1 = slow", "p0/dim1", "'ss', 'fs'"),
    (["p0/mask8_data = /m"], "p0/mask8_data = /m", "p0/mask8_data", "unknown panel key"),
    (["p0/min_fs 0"], "p0/min_fs 0", None, "expected 'key = value'"),
    (["p0/data ="], "p0/data =", "p0/data", "expected a value"),
    (["= 3"], "= 3", None, "expected a key"),
    (["p0/a/b = 3"], "p0/a/b = 3", "p0/a/b", "expected 'panel/key'"),
    (["bandwidth = -0.1"], "bandwidth = -0.1", "bandwidth", "non-negative"),
    (["clen = 0.1 furlong"], "clen = 0.1 furlong", "clen", "expected unit m or mm"),
    (["clen = /dist km"], "clen = /dist km", "clen", "in mm or m"),
    (["photon_energy = lots eV"], "photon_energy = lots eV", "photon_energy", "a number"),
    (["photon_energy = /E MeV"], "photon_energy = /E MeV", "photon_energy", "in eV or keV"),
    (["photon_energy = -5"], "photon_energy = -5", "photon_energy", "positive"),
    (["wavelength = 1 nm"], "wavelength = 1 nm", "wavelength", "expected unit m or A"),
    (["electron_voltage = 300 MV"], "electron_voltage = 300 MV", "electron_voltage", "V or kV"),
    (["wavelength = 1 A"], "wavelength = 1 A", "wavelength", "exactly one of"),
    (["detector_shift_x = 0.2 ft"], "detector_shift_x = 0.2 ft", "detector_shift_x",
     "expected unit m or mm"),
    (["peak_list_type = hdf5"], "peak_list_type = hdf5", "peak_list_type", "cxi, list3, auto"),
    (["bada/min_fs = 0", "bada/min_x = 3"], "bada/min_x = 3", "bada/min_x", "mixes fs/ss"),
    (["bada/min_y = 0", "bada/max_ss = 3"], "bada/max_ss = 3", "bada/max_ss", "mixes fs/ss"),
    (["bada/min_z = 0"], "bada/min_z = 0", "bada/min_z", "unknown bad-region key"),
    (["bada/min_fs = 1.5"], "bada/min_fs = 1.5", "bada/min_fs", "expected an integer"),
    (["group_ = p0"], "group_ = p0", "group_", "expected a group name"),
    (["group_all = p0,,p1"], "group_all = p0,,p1", "group_all", "comma-separated"),
    (["group_all = p0", "group_all = p0"], "group_all = p0", "group_all", "defined twice"),
    (["group_all = p0,p7"], "group_all = p0,p7", None, "neither a panel nor a group"),
    (["group_all = all"], "group_all = all", None, "contains itself"),
    (["rigid_group_q0 = p0,p9"], "rigid_group_q0 = p0,p9", None, "'p9' is not a panel"),
    (
        ["rigid_group_q0 = p0", "rigid_group_collection_c = q0,q1"],
        "rigid_group_collection_c = q0,q1",
        None,
        "'q1' is not a rigid group",
    ),
    (["p0/dim0 = %", "p0/dim2 = fs"], "p0/dim2 = fs", None, "but no dim1"),
    (["p0/dim0 = %", "p0/dim1 = 0"], "p0/dim1 = 0", None, "one dim = ss and one dim = fs"),
    (
        [
            "bada/min_fs = 0",
            "bada/max_fs = 5",
            "bada/min_ss = 0",
            "bada/max_ss = 2",
            "bada/panel = p3",
        ],
        "bada/panel = p3",
        None,
        "unknown panel 'p3'",
    ),
    (
        ["bada/min_fs = 9", "bada/max_fs = 5", "bada/min_ss = 0", "bada/max_ss = 2"],
        "bada/max_fs = 5",
        None,
        "min_fs <= max_fs",
    ),
]


@pytest.mark.parametrize(("extra", "offending", "key", "fragment"), ERRORS)
def test_errors_name_source_line_and_expectation(extra, offending, key, fragment):
    text = make(*extra)
    lineno = len(text.splitlines()) - text.splitlines()[::-1].index(offending)
    with pytest.raises(GeomError) as info:
        read_geom(text, source_name="demo.geom")
    msg = str(info.value)
    assert msg.startswith(f"demo.geom, line {lineno}: ")
    assert repr(offending.strip()) in msg
    assert fragment in msg
    assert info.value.lineno == lineno and info.value.source == "demo.geom"
    if key is not None:
        assert info.value.key == key
        assert key in msg


FILE_ERRORS = [
    # (text, fragment) for problems of the file as a whole
    (make().replace("clen = 0.12 m\n", ""), "no clen"),
    (HEADER, "no panels"),
    (make().replace("p0/res = 10000\n", ""), "panel 'p0' (first mentioned on line 3) has no res"),
    (make().replace("p0/adu_per_photon = 1\n", ""), "neither adu_per_photon nor adu_per_eV"),
    (make("p0/dim0 = fs", "p0/dim1 = ss"), "'fs' must be a higher dimension than 'ss'"),
    (make("p0/min_fs = 200"), "empty pixel range"),
    (
        make(
            "bada/min_fs = 0",
            "bada/max_fs = 5",
            "bada/min_ss = 70",
            "bada/max_ss = 90",
            "bada/panel = p0",
        ),
        "is not inside panel 'p0' (fs 0..99, ss 0..79)",
    ),
    (
        make("bada/min_fs = 0", "bada/max_fs = 5", "bada/min_ss = 70", "bada/max_ss = 90"),
        "needs a panel: it lies inside 0 panels",
    ),
    (make("bada/min_x = 0", "bada/max_x = 5", "bada/min_y = 7"), "has no max_y"),
    (make("group_m0 = p0"), "none is called 'all'"),
    (
        make() + SECOND_PANEL + "p1/dim0 = 0\np1/dim1 = ss\np1/dim2 = fs\n",
        "literal (stacking) dim",
    ),
]


@pytest.mark.parametrize(("text", "fragment"), FILE_ERRORS)
def test_file_level_errors(text, fragment):
    with pytest.raises(GeomError) as info:
        read_geom(text, source_name="whole.geom")
    assert str(info.value).startswith("whole.geom")
    assert fragment in str(info.value)


def test_ambiguous_pixel_bad_region_on_stacked_detector():
    text = (DATA / "agipd_example.geom").read_text()
    text += "badx/min_fs = 0\nbadx/max_fs = 3\nbadx/min_ss = 0\nbadx/max_ss = 3\n"
    with pytest.raises(GeomError, match="it lies inside 2 panels"):
        read_geom(text)


def test_error_in_file_names_path_line_and_key():
    path = DATA / "broken_unknown_key.geom"
    with pytest.raises(GeomError) as info:
        read_geom(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}, line 15: ")
    assert "'coffest'" in msg and "'m0/coffest = 0.001'" in msg
    assert isinstance(info.value, ValueError)


def test_text_input_has_a_default_source_name():
    with pytest.raises(GeomError, match=r"^<geometry text>, line 13: "):
        read_geom(make("nonsense = 1"))


def test_comments_and_blank_lines():
    text = make("", "   ; a comment", "p0/coffset = 0.25 ; trailing comment", "\t")
    assert read_geom(text).panels[0].coffset == 0.25


# ------------------------------------------------------------------ writer limits
def test_writer_rejects_what_the_format_cannot_hold():
    det = builtin_geometry("mpccd")
    panels = list(det.panels)
    panels[1] = panels[1].replace(clen=0.3)
    with pytest.raises(ValueError, match="one clen"):
        write_geom(det.replace(panels=tuple(panels)))
    panels = list(det.panels)
    panels[1] = panels[1].replace(name="bad panel")
    with pytest.raises(ValueError, match="cannot be written"):
        write_geom(det.replace(panels=tuple(panels), groups=()))
    with pytest.raises(ValueError, match="invalid wavelength"):
        write_geom(det.with_beam(wavelength_A=-1.0))
    # no beam energy (it comes from the data): written without one, read back the same
    unknown = det.with_beam(wavelength_A=math.nan)
    again = read_geom(write_geom(unknown))
    assert math.isnan(again.beam.wavelength_A) and again.beam.wavelength_from is None
    panels = list(det.panels)
    panels[0] = panels[0].replace(data="/data;1")
    with pytest.raises(ValueError, match="without ';' or line breaks"):
        write_geom(det.replace(panels=tuple(panels)))


def test_name_comment_wins_over_file_stem(tmp_path):
    det = builtin_geometry("eiger4m").replace(name="")
    write_geom(det, tmp_path / "beamline.geom")
    assert read_geom(tmp_path / "beamline.geom").name == ""
    (tmp_path / "plain.geom").write_text(make())
    assert read_geom(tmp_path / "plain.geom").name == "plain"
    assert read_geom(str(tmp_path / "plain.geom")).name == "plain"


def test_geom_error_survives_pickling():
    with pytest.raises(GeomError) as info:
        read_geom(make("p0/res = fast"), source_name="worker.geom")
    copy = pickle.loads(pickle.dumps(info.value))
    assert str(copy) == str(info.value)
    assert (copy.source, copy.lineno, copy.key) == ("worker.geom", 13, "p0/res")
