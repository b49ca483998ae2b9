"""Geometry refinement from indexed stills and calibration from powder rings.

The truth is the simulator's: peaks are the simulated spot positions (with centroid
noise) recorded by the true detector, indexed and refined in a geometry that is wrong by
a known amount; the refined geometry must come back to the truth.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import sxlab as sx
from sxlab import tables
from sxlab.calibration import (
    DetectorModel,
    calibrate_rings,
    panel_groups,
    refine_geometry,
    ring_d_spacings,
    write_geometry,
)
from sxlab.calibration.model import intersect
from sxlab.cell import UnitCell
from sxlab.geometry import builtin_geometry
from sxlab.indexing import Indexer, score_indexing
from sxlab.io import read_geom, read_nxmx_geometry
from sxlab.simulate import Simulator, simulate_powder

LYSO = UnitCell(79.1, 79.1, 37.9, 90, 90, 90, space_group="P 43 21 2")
C2221 = UnitCell(46.2, 103.0, 128.7, 90, 90, 90, space_group="C 2 2 21")


def spot_peaks(sim: Simulator, n_frames: int, rng, min_photons: float, jitter: float = 0.3):
    """Peaks at the simulated spot positions (true detector) with centroid noise."""
    out = []
    for i in range(n_frames):
        r = sim.frame_truth(i).reflections
        r = r[r.photons * r.transmission > min_photons]
        n = len(r)
        out.append(pd.DataFrame({
            "frame": i, "panel": r.panel.to_numpy(),
            "fs": r.fs.to_numpy() + rng.normal(0, jitter, n),
            "ss": r.ss.to_numpy() + rng.normal(0, jitter, n),
            "intensity": r.photons.to_numpy()}))
    return pd.concat(out, ignore_index=True)


def index_all(peaks: pd.DataFrame, geometry, cell):
    ix = Indexer(geometry, cell)
    found = [ix.index(p) for _, p in peaks.groupby("frame")]
    return (tables.CRYSTALS.concat(f.crystals for f in found),
            pd.concat([f.peaks for f in found], ignore_index=True))


def correct(crystals: pd.DataFrame, sim: Simulator) -> int:
    """Lattices within 1° of a simulated crystal (up to the lattice symmetry)."""
    truth = sim.truth(int(crystals.frame.max()) + 1 if len(crystals) else 0)
    return int(score_indexing(crystals, truth.crystals, sim.cell).correct.sum())


def geometry_errors(true, new):
    """Per panel: in-plane shift of the centre (px), z of the centre (mm), rotation (deg)."""
    rows = []
    for i, (a, b) in enumerate(zip(true.panels, new.panels, strict=True)):
        centre = ([(a.min_fs + a.max_fs + 1) / 2], [(a.min_ss + a.max_ss + 1) / 2], i)
        ca, cb = true.pixel_to_lab(*centre)[0], new.pixel_to_lab(*centre)[0]
        fa, fb = np.array(a.fs), np.array(b.fs)
        angle = np.degrees(np.arctan2(np.cross(fa, fb)[2], fa @ fb))
        rows.append((np.hypot(*(ca - cb)[:2]) * a.res, abs(ca[2] - cb[2]) * 1e3, abs(angle)))
    return np.array(rows)


# ============================================================================= model
def test_model_moves_panels_like_a_detector(rng):
    det = builtin_geometry("agipd")
    model = DetectorModel(det, groups=2)
    assert model.n_groups == 16 and model.size == 5 + 16 * 4
    theta = rng.normal(0, 1e-4, model.size)
    theta[[3, 4]] = np.radians([0.3, -0.2])
    theta[model.group_slice("rotation")] = np.radians(rng.normal(0, 0.3, 16))
    moved = model.apply(theta)
    corner, fs, ss = model.panel_vectors(theta)
    for i in (0, 37, 127):
        p = moved.panels[i]
        np.testing.assert_allclose(p.corner_m(), corner[i], atol=1e-12)
        np.testing.assert_allclose(p.fs_m(), fs[i], atol=1e-15)
        np.testing.assert_allclose(p.ss_m(), ss[i], atol=1e-15)
    # zero parameters: the geometry as given
    same = model.apply(model.zeros())
    pts = (rng.uniform(0, 128, 50), rng.uniform(0, 512, 50), rng.integers(0, 128, 50))
    np.testing.assert_allclose(same.pixel_to_lab(*pts), det.pixel_to_lab(*pts), atol=1e-12)
    # a group moves rigidly: distances between its pixels are kept
    a = moved.pixel_to_lab([0.5, 120.5], [0.5, 500.5], [8, 15])
    b = det.pixel_to_lab([0.5, 120.5], [0.5, 500.5], [8, 15])
    assert abs(np.linalg.norm(a[0] - a[1]) - np.linalg.norm(b[0] - b[1])) < 1e-12


def test_intersect_matches_the_detector(rng):
    det = builtin_geometry("mpccd")
    model = DetectorModel(det)
    q = rng.normal(0, 0.15, (300, 3))
    k = 1.0 / det.wavelength_A
    d = q.copy()
    d[:, 2] += k
    panel, fs, ss = det.q_to_pixel(q)
    on = panel >= 0
    u, v = intersect(d[on], panel[on], *model.panel_vectors(model.zeros()))
    mins = np.array([[p.min_fs, p.min_ss] for p in det.panels])[panel[on]]
    np.testing.assert_allclose(u + mins[:, 0], fs[on], atol=1e-8)
    np.testing.assert_allclose(v + mins[:, 1], ss[on], atol=1e-8)


def test_panel_groups():
    det = builtin_geometry("agipd")
    assert len(panel_groups(det, 0)) == 1
    assert [len(m) for m in panel_groups(det, 1).values()] == [32] * 4
    assert panel_groups(det, {"one": ["p0a0", "p0a1"]})["one"] == (0, 1)
    assert len(panel_groups(det, {"one": ["p0a0", "p0a1"]})) == 127
    with pytest.raises(ValueError, match="two groups"):
        panel_groups(det, {"x": [0, 1], "y": [1]})


# ========================================================================= stills
@pytest.mark.parametrize("beam_px, distance_mm", [((1.0, -1.5), 0.5), ((3.0, -2.0), 2.0)])
def test_refinement_recovers_beam_and_distance(beam_px, distance_mm, rng):
    det = builtin_geometry("eiger1m", clen=0.1, wavelength_A=1.0, bandwidth=0.001)
    sim = Simulator(det, LYSO, seed=5, hit_fraction=1.0, fluence=150,
                    multi_lattice_probability=0.0)
    peaks = spot_peaks(sim, 60, rng, min_photons=40)
    model = DetectorModel(det)
    theta = model.zeros()
    theta[[0, 1]] = np.array(beam_px) * 75e-6
    theta[2] = distance_mm * 1e-3
    wrong = model.apply(theta)

    true_xtals, _ = index_all(peaks, det, LYSO)
    wrong_xtals, wrong_peaks = index_all(peaks, wrong, LYSO)
    n_true, n_wrong = correct(true_xtals, sim), correct(wrong_xtals, sim)

    new, report = refine_geometry((wrong_peaks, wrong_xtals), wrong, LYSO,
                                  refine=("beam", "distance"))
    err = geometry_errors(det, new)[0]
    assert err[0] < 0.1 and err[1] < 0.05            # px, mm
    assert report.summary["rms_after_px"] < 0.6 < report.summary["rms_before_px"]
    s = report.parameters.set_index("parameter")
    assert abs(s.loc["distance", "value"] + distance_mm) < 0.05
    assert s.loc["distance", "sigma"] < 0.05 and s.loc["beam_x", "refined"]
    tables.GEOMETRY_RESIDUALS.validate(report.panels)
    tables.CRYSTALS.validate(report.crystals)

    refined_xtals, _ = index_all(peaks, new, LYSO)
    n_refined = correct(refined_xtals, sim)
    assert n_refined >= n_true - 1
    if distance_mm >= 2:
        assert n_wrong < n_true - 5  # the mis-set geometry costs indexed frames


@pytest.mark.slow
def test_refinement_of_panels_shifts_and_rotations(rng):
    det = builtin_geometry("mpccd", clen=0.065, wavelength_A=1.24, bandwidth=0.001)
    sim = Simulator(det, C2221, seed=5, hit_fraction=1.0, fluence=3000,
                    multi_lattice_probability=0.0)
    peaks = spot_peaks(sim, 60, rng, min_photons=30, jitter=0.25)
    model = DetectorModel(det)
    theta = model.zeros()
    theta[[0, 1, 2]] = 1.3 / det.panels[0].res, -0.8 / det.panels[0].res, 0.7e-3
    n = model.n_groups
    theta[model.group_slice("shift_x")] = rng.uniform(1, 2, n) * rng.choice([-1, 1], n) * 50e-6
    theta[model.group_slice("shift_y")] = rng.uniform(1, 2, n) * rng.choice([-1, 1], n) * 50e-6
    theta[model.group_slice("rotation")] = np.radians(0.2) * np.tile([1, -1], n // 2)
    wrong = model.apply(theta)
    xtals, assigned = index_all(peaks, wrong, C2221)
    new, report = refine_geometry((assigned, xtals), wrong, C2221,
                                  refine=("beam", "distance", "panels"),
                                  group_parameters=("shift", "rotation"))
    err = geometry_errors(det, new)
    assert err[:, 0].max() < 0.1            # px
    assert err[:, 1].max() < 0.05           # mm
    assert err[:, 2].max() < 0.02           # deg
    # the spectrum-aware spot model brings every panel to the centroid noise
    assert report.panels.rms_after_px.max() < 0.45
    assert report.parameters.refined.sum() == 3 + 3 * n
    refined_xtals, _ = index_all(peaks, new, C2221)
    assert len(refined_xtals) >= len(xtals) and len(refined_xtals) >= 58


@pytest.mark.slow
def test_refinement_of_panel_heights(rng):
    """Sensors 0.3 mm higher or lower than the geometry says come back within 0.05 mm."""
    det = builtin_geometry("mpccd", clen=0.065, wavelength_A=1.24, bandwidth=0.001)
    sim = Simulator(det, C2221, seed=6, hit_fraction=1.0, fluence=3000,
                    multi_lattice_probability=0.0)
    peaks = spot_peaks(sim, 50, rng, min_photons=30, jitter=0.25)
    model = DetectorModel(det)
    theta = model.zeros()
    theta[[0, 2]] = 1.0 / det.panels[0].res, -0.5e-3
    heights = np.tile([0.3e-3, -0.3e-3], model.n_groups // 2)
    theta[model.group_slice("height")] = heights
    wrong = model.apply(theta)
    xtals, assigned = index_all(peaks, wrong, C2221)
    new, report = refine_geometry((assigned, xtals), wrong, C2221,
                                  refine=("beam", "distance", "panels"))
    err = geometry_errors(det, new)
    assert err[:, 1].max() < 0.05           # mm
    assert err[:, 2].max() < 0.02           # deg
    h = report.parameters.set_index(["group", "parameter"]).value
    np.testing.assert_allclose([h[(g, "height")] for g in model.group_names],
                               -heights * 1e3, atol=0.05)


def test_refinement_inputs_and_errors(rng):
    det = builtin_geometry("eiger1m", clen=0.1)
    sim = Simulator(det, LYSO, seed=2, hit_fraction=1.0, fluence=300,
                    multi_lattice_probability=0.0)
    peaks = spot_peaks(sim, 6, rng, min_photons=40)
    xtals, assigned = index_all(peaks, det, LYSO)
    # peaks without the indexer's assignment are assigned from the crystals
    bare = assigned.drop(columns=["crystal", "h", "k", "l"])
    _, rep = refine_geometry((bare, xtals), det, LYSO, refine="beam", n_cycles=1)
    assert rep.summary["n_crystals"] == len(xtals)
    assert abs(rep.summary["beam_shift_fs_px"]) < 0.1
    with pytest.raises(ValueError, match="unknown refine"):
        refine_geometry((assigned, xtals), det, LYSO, refine=("beam", "wavelength"))
    with pytest.raises(ValueError, match="no indexed crystal"):
        refine_geometry((assigned, xtals), det, LYSO, min_peaks=10_000)
    with pytest.raises(ValueError, match="numeric camera length"):
        refine_geometry((assigned, xtals), det.with_clen(float("nan")), LYSO)
    with pytest.raises(TypeError, match="results must be"):
        refine_geometry(object(), det, LYSO)
    with pytest.raises(ValueError, match="no indexed crystal"):
        refine_geometry((assigned, xtals.iloc[:0]), det, LYSO)


def test_geometry_files_and_command_line(tmp_path, rng, capsys):
    det = builtin_geometry("eiger1m", clen=0.1, wavelength_A=1.0)
    sim = Simulator(det, LYSO, seed=5, hit_fraction=1.0, fluence=300,
                    multi_lattice_probability=0.0)
    peaks = spot_peaks(sim, 20, rng, min_photons=40)
    model = DetectorModel(det)
    theta = model.zeros()
    theta[[0, 2]] = 2 * 75e-6, 1e-3
    wrong = model.apply(theta)
    xtals, assigned = index_all(peaks, wrong, LYSO)
    frames = tables.FRAMES.make({"frame": np.arange(20), "status": ["ok"] * 20,
                                 "hit": np.ones(20, bool), "indexed": np.ones(20, bool)},
                                fill_missing=True)
    writer = sx.ResultsWriter(tmp_path / "out", sx.Params(cell=LYSO), wrong)
    writer.write(frames, tables.PEAKS.make(assigned, fill_missing=True), xtals)
    writer.finish(stream=False)

    from sxlab.cli import main

    out = tmp_path / "refined.geom"
    nx = tmp_path / "refined_master.h5"
    assert main(["refine-geometry", str(tmp_path / "out"), "-o", str(out), "--nxmx",
                 str(nx), "--panels"]) == 0
    text = capsys.readouterr().out
    assert "distance_shift_mm" in text and "rms_before_px" in text
    for geom in (read_geom(out), read_nxmx_geometry(nx, prefer_embedded=False)):
        assert geometry_errors(det, geom)[0, 0] < 0.1
        assert geometry_errors(det, geom)[0, 1] < 0.05
    write_geometry(det, tmp_path / "plain.geom")
    assert read_geom(tmp_path / "plain.geom") == det
    assert main(["refine-geometry", str(tmp_path / "out"), "--min-peaks", "100000",
                 "-o", str(out)]) == 1
    assert "no indexed crystal" in capsys.readouterr().err


# ========================================================================== rings
@pytest.fixture(scope="module")
def agbeh():
    det = builtin_geometry("eiger1m", clen=0.2, wavelength_A=1.0)
    data, rings = simulate_powder(det, d_spacing_A=58.38, seed=3, n_orders=12)
    return det, data, rings


@pytest.mark.parametrize("tilt", [False, True])
def test_ring_calibration_recovers_beam_distance_and_tilt(agbeh, tilt):
    det, data, rings = agbeh
    model = DetectorModel(det)
    theta = model.zeros()
    theta[[0, 1, 2]] = 2.6 * 75e-6, -1.4 * 75e-6, 1.5e-3
    if tilt:
        theta[[3, 4]] = np.radians([0.4, -0.3])
    wrong = model.apply(theta)
    image = data.astype(float)
    bad = data == 65535
    mask = sx.mask_beamstop(det, 40, rod_width_px=20, rod_angle_deg=30)
    refine = ("beam", "distance", "tilt") if tilt else ("beam", "distance")
    new, report = calibrate_rings(image, wrong, rings.d_A, bad=bad, mask=mask, refine=refine)
    true_beam = np.array(det.beam_center_px())
    assert np.abs(np.array(new.beam_center_px()) - true_beam).max() < 0.2
    true_d = float(det.pixel_to_lab(*true_beam, 0)[2]) * 1e3
    assert abs(report.summary["distance_mm"] - true_d) < 1e-3 * true_d
    if tilt:
        assert abs(report.summary["tilt_x_deg"] + 0.4) < 0.05
        assert abs(report.summary["tilt_y_deg"] - 0.3) < 0.05
    assert report.summary["rms_after_px"] < 0.3 < report.summary["rms_before_px"]
    tables.RING_POINTS.validate(report.points)
    assert report.points.used.mean() > 0.8
    assert set(report.points.ring) <= set(range(len(rings)))


def test_ring_calibration_errors_and_calibrants(agbeh):
    det, data, _ = agbeh
    np.testing.assert_allclose(ring_d_spacings("agbeh", 2), [58.38, 29.19])
    with pytest.raises(ValueError, match="unknown calibrant"):
        ring_d_spacings("quartz")
    with pytest.raises(ValueError, match="falls on the detector"):
        calibrate_rings(data.astype(float), det, [0.3])
    with pytest.raises(ValueError, match="shape"):
        calibrate_rings(data[:10].astype(float), det, "agbeh")
    with pytest.raises(ValueError, match="control points"):
        calibrate_rings(np.zeros(det.data_shape), det, "agbeh")


def test_calibrate_command(tmp_path, capsys):
    from sxlab.cli import main
    from sxlab.io import write_geom
    from sxlab.simulate import write_powder

    det = builtin_geometry("eiger1m", clen=0.2, wavelength_A=1.0)
    write_powder(tmp_path / "agbeh_master.h5", det, d_spacing_A=58.38, n_frames=2, seed=4)
    model = DetectorModel(det)
    theta = model.zeros()
    theta[[0, 2]] = -1.5 * 75e-6, -1e-3
    write_geom(model.apply(theta), tmp_path / "wrong.geom")
    out = tmp_path / "calibrated.geom"
    assert main(["calibrate", str(tmp_path / "agbeh_master.h5"), "-g",
                 str(tmp_path / "wrong.geom"), "--beamstop-px", "40", "-o", str(out),
                 "--refine", "beam,distance"]) == 0
    assert "mean of 2 frame(s)" in capsys.readouterr().out
    err = geometry_errors(det, read_geom(out))[0]
    assert err[0] < 0.2 and err[1] < 1e-3 * 200
