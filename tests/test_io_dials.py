"""Reading DIALS experiment lists without DIALS (hand-written files with known answers)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sxlab.geometry import builtin_geometry
from sxlab.io.dials import read_dials_expt, read_dials_geometry


def _node(fast, slow, origin, **extra):
    return {"fast_axis": list(fast), "slow_axis": list(slow), "origin": list(origin), **extra}


def _panel(name, fast, slow, origin, size=(20, 10), pixel=0.1, trusted=(-1.0, 5000.0)):
    return _node(fast, slow, origin, name=name, image_size=list(size),
                 pixel_size=[pixel, pixel], trusted_range=list(trusted))


def _write(path, detector, direction=(0.0, 0.0, 1.0), wavelength=1.1):
    doc = {
        "experiment": [{"beam": 0, "detector": 0}],
        "beam": [{"direction": list(direction), "wavelength": wavelength}],
        "detector": [detector],
    }
    path.write_text(json.dumps(doc))
    return path


def test_flat_panel_to_lab_frame(tmp_path):
    # imgCIF: fast +x, slow -y, origin (-50, 40, -100) mm; lab = (-x, y, -z) in metres.
    det = read_dials_expt(_write(tmp_path / "a.expt", {"panels": [
        _panel("/entry/instrument/detector/p0", (1, 0, 0), (0, -1, 0), (-50, 40, -100))]}))
    p = det.panels[0]
    assert det.panel_names == ["p0"] and det.data_shape == (10, 20)
    np.testing.assert_allclose(p.corner_m(), [0.05, 0.04, 0.1], atol=1e-15)
    np.testing.assert_allclose(p.fs, [-1, 0, 0])
    np.testing.assert_allclose(p.ss, [0, -1, 0])
    assert p.res == pytest.approx(1e4) and p.max_adu == 5000.0
    assert det.beam.wavelength_A == 1.1


def test_hierarchy_composes_like_dxtbx(tmp_path):
    # A group turned by 90 degrees about its normal and shifted, holding a shifted panel.
    c, s = 0.0, 1.0
    group = _node((c, s, 0), (-s, c, 0), (10, 0, -100), children=[{"panel": 0}])
    root = _node((1, 0, 0), (0, 1, 0), (0, 0, 0), children=[group])
    panel = _panel("q", (1, 0, 0), (0, 1, 0), (2, 3, 0))
    det = read_dials_expt(_write(tmp_path / "h.expt", {"panels": [panel],
                                                       "hierarchy": root}))
    # Global (imgCIF): origin = (10,0,-100) + 2*(0,1,0) + 3*(-1,0,0) = (7, 2, -100),
    # fast = (0,1,0), slow = (-1,0,0).
    p = det.panels[0]
    np.testing.assert_allclose(p.corner_m(), [-0.007, 0.002, 0.1], atol=1e-15)
    np.testing.assert_allclose(p.fs, [0, 1, 0], atol=1e-15)
    np.testing.assert_allclose(p.ss, [1, 0, 0], atol=1e-15)


def test_tilted_beam_is_turned_onto_z(tmp_path):
    # Beam tilted by 1 degree: the scattering geometry (angles to the beam) is kept.
    a = np.deg2rad(1.0)
    direction = (np.sin(a), 0.0, np.cos(a))
    det = read_dials_expt(_write(tmp_path / "t.expt", {"panels": [
        _panel("p", (1, 0, 0), (0, -1, 0), (-1, 1, -100))]}, direction=direction))
    corner_imgcif = np.array([-1e-3, 1e-3, -0.1])
    incident = -np.asarray(direction)
    expected = np.degrees(np.arccos(corner_imgcif @ incident / np.linalg.norm(corner_imgcif)))
    got = det.panels[0].corner_m()
    assert np.degrees(np.arccos(got[2] / np.linalg.norm(got))) == pytest.approx(expected,
                                                                               abs=1e-9)


def test_like_and_errors(tmp_path):
    eiger = builtin_geometry("eiger1m")
    path = _write(tmp_path / "e.expt", {"panels": [
        _panel("p0", (-1, 0, 0), (0, 1, 0), (40, -45, -100), size=(1030, 1065),
               pixel=0.075)]})
    det = read_dials_geometry(path, like=eiger)
    assert det.bad_regions == eiger.bad_regions and det.panels[0].data == eiger.panels[0].data
    np.testing.assert_allclose(det.panels[0].corner_m(), [-0.04, -0.045, 0.1], atol=1e-15)
    assert det.beam.wavelength_A == 1.1
    with pytest.raises(ValueError, match="panel 0 is 1030 x 1065 pixels"):
        read_dials_geometry(path, like=builtin_geometry("eiger4m"))
    with pytest.raises(ValueError, match="has 1 panel"):
        read_dials_geometry(path, like=builtin_geometry("mpccd"))
    with pytest.raises(ValueError, match="no detector/beam for experiment 3"):
        read_dials_expt(path, experiment=3)
    bad = tmp_path / "bad.expt"
    bad.write_text("not json")
    with pytest.raises(ValueError, match="not a DIALS experiment list"):
        read_dials_expt(bad)
    rect = _write(tmp_path / "r.expt", {"panels": [
        {**_panel("p", (1, 0, 0), (0, 1, 0), (0, 0, -1)), "pixel_size": [0.1, 0.2]}]})
    with pytest.raises(ValueError, match="non-square pixels"):
        read_dials_expt(rect)
