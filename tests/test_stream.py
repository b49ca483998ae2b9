"""Tests for sxlab.io.stream: CrystFEL stream writing, reading, following and old formats."""

import math
import re

import numpy as np
import pandas as pd
import pytest
from reference import crystfel_stream as ref

from sxlab.cell import UnitCell
from sxlab.geometry import HC_EV_A, builtin_geometry
from sxlab.io import _stream_kernels as kern
from sxlab.io import stream as stream_module
from sxlab.io.crystfel_cell import read_cell
from sxlab.io.crystfel_geom import read_geom, write_geom
from sxlab.io.stream import (
    CELL_NOTE,
    StreamData,
    StreamError,
    StreamFollower,
    StreamWriter,
    read_stream,
    write_stream,
)
from sxlab.tables import PEAKS, STREAM_CRYSTALS, STREAM_FRAMES

BASIS = [f"{v}star_{x}" for v in "abc" for x in "xyz"]
CELLS = [
    UnitCell(79.1, 79.1, 37.9, 90, 90, 90, space_group="P 43 21 2"),
    UnitCell(81.3, 81.3, 212.6, 90, 90, 120, space_group="R 3"),
    UnitCell(60.1, 40.2, 50.3, 90, 112.4, 90, space_group="C 1 2 1"),
]


# ============================================================================ helpers
def _rotation(rng):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def _positions(det, rng, n):
    panel = rng.integers(0, det.n_panels, n)
    lo = np.array([[p.min_fs, p.min_ss] for p in det.panels])[panel]
    size = np.array([[p.width, p.height] for p in det.panels])[panel]
    fs, ss = (lo + rng.uniform(0.0, 1.0, (n, 2)) * size).T
    return panel.astype(np.int16), fs, ss


def make_tables(det, rng, frames=(3, 4, 7, 8, 10), n_peaks=12, n_refl=15):
    """Frames (not all numbers used), peaks, crystals of three kinds and reflections."""
    frames = np.asarray(frames)
    ftab = pd.DataFrame({
        "frame": frames, "event": [f"//{f % 5}" for f in frames],
        "filename": [f"/data/run7_{f // 5:03d}.h5" for f in frames],
        "hit": np.arange(len(frames)) % 5 != 2,
        "photon_energy_eV": 9500.0 + 10.0 * np.arange(len(frames)),
    })
    peaks, crystals, refls = [], [], []
    for i, f in enumerate(frames):
        if not ftab["hit"][i]:
            continue
        panel, fs, ss = _positions(det, rng, n_peaks)
        peaks.append(pd.DataFrame({"frame": f, "panel": panel, "fs": fs, "ss": ss,
                                   "intensity": rng.uniform(-50.0, 5000.0, n_peaks)}))
        for c in range(i % 3):
            cell = CELLS[(i + c) % len(CELLS)]
            basis = cell.reciprocal_basis @ _rotation(rng).T
            row = {"frame": f, "crystal": c, "a": cell.a, "b": cell.b, "c": cell.c,
                   "alpha": cell.alpha, "beta": cell.beta, "gamma": cell.gamma,
                   "lattice": cell.lattice_type, "centering": cell.centering,
                   "unique_axis": cell.unique_axis, "method": "asdf-cell",
                   "profile_radius_invA": 2.5e-4 * (c + 1),
                   "resolution_limit_A": 1.8 + c + i / 10}
            row.update(dict(zip(BASIS, basis.ravel(), strict=True)))
            crystals.append(row)
            panel, fs, ss = _positions(det, rng, n_refl)
            refls.append(pd.DataFrame({
                "frame": f, "crystal": c, "h": rng.integers(-40, 41, n_refl),
                "k": rng.integers(-40, 41, n_refl), "l": rng.integers(-20, 21, n_refl),
                "I": rng.normal(100.0, 300.0, n_refl), "sigma": rng.uniform(1, 90, n_refl),
                "peak": rng.uniform(0, 900, n_refl), "bg": rng.uniform(-2, 20, n_refl),
                "fs": fs, "ss": ss, "panel": panel}))
    return (ftab, pd.concat(peaks, ignore_index=True), pd.DataFrame(crystals),
            pd.concat(refls, ignore_index=True))


@pytest.fixture(params=["mpccd", "agipd"])
def written(request, tmp_path, rng):
    det = builtin_geometry(request.param)
    tables = make_tables(det, rng)
    path = tmp_path / "run.stream"
    cell = CELLS[0]
    write_stream(path, det, *tables, cell=cell, command_line="sxlab process run7")
    return det, tables, path


# ============================================================================ round trip
def test_round_trip_frames(written):
    det, (frames, peaks, crystals, refl), path = written
    data = read_stream(path)
    got = data.frames
    STREAM_FRAMES.validate(got)
    np.testing.assert_array_equal(got["frame"], frames["frame"])
    np.testing.assert_array_equal(got["serial"], frames["frame"] + 1)
    assert got["event"].tolist() == frames["event"].tolist()
    assert got["filename"].tolist() == frames["filename"].tolist()
    np.testing.assert_array_equal(got["hit"], frames["hit"])
    np.testing.assert_allclose(got["photon_energy_eV"], frames["photon_energy_eV"], atol=1e-6)
    n_cryst = crystals.groupby("frame").size().reindex(frames["frame"], fill_value=0)
    np.testing.assert_array_equal(got["n_crystals"], n_cryst.to_numpy())
    np.testing.assert_array_equal(got["indexed"], n_cryst.to_numpy() > 0)
    n_peaks = peaks.groupby("frame").size().reindex(frames["frame"], fill_value=0)
    np.testing.assert_array_equal(got["n_peaks"], n_peaks.to_numpy())
    assert got["indexed_by"].tolist() == ["asdf-cell" if n else "none" for n in n_cryst]
    assert got["run"].isna().all() and got["status"].isna().all()
    assert data.geometry == det
    assert data.cell == CELLS[0]
    assert data.panel_names == det.panel_names
    assert data.version == "2.3"
    assert "sxlab process run7" in data.preamble


def test_round_trip_peaks(written):
    det, (_, peaks, _, _), path = written
    got = read_stream(path).peaks
    PEAKS.validate(got)
    np.testing.assert_array_equal(got["frame"], peaks["frame"])
    np.testing.assert_array_equal(got["panel"], peaks["panel"])
    for col in ("fs", "ss", "intensity"):
        np.testing.assert_allclose(got[col], peaks[col], atol=0.005 + 1e-9)
    # Resolution from the geometry at the written (rounded) position and the frame's energy.
    energy = pd.Series([9500.0, 9510.0, 9520.0, 9530.0, 9540.0], index=[3, 4, 7, 8, 10])
    lam = HC_EV_A / energy[got["frame"]].to_numpy()
    xyz = det.pixel_to_lab(got["fs"], got["ss"], got["panel"].to_numpy())
    tth = np.arctan2(np.hypot(xyz[:, 0], xyz[:, 1]), xyz[:, 2])
    np.testing.assert_allclose(got["d_A"], lam / (2 * np.sin(tth / 2)), rtol=1e-12)
    np.testing.assert_allclose(got["two_theta_deg"], np.degrees(tth), rtol=1e-12)
    assert got[["snr", "background", "max_value"]].isna().all().all()
    assert (got["npix"] == -1).all() and (got["crystal"] == -1).all()
    assert (got[["h", "k", "l"]] == 0).all().all()


def test_round_trip_crystals(written):
    _, (_, _, crystals, _), path = written
    got = read_stream(path).crystals
    STREAM_CRYSTALS.validate(got)
    np.testing.assert_array_equal(got["frame"], crystals["frame"])
    np.testing.assert_array_equal(got["crystal"], crystals["crystal"])
    # 7 decimals in nm^-1 = 5e-9 1/Å; 5 decimals in nm = 5e-5 Å.
    np.testing.assert_allclose(got[BASIS], crystals[BASIS], rtol=0, atol=5e-9 + 1e-15)
    np.testing.assert_allclose(got[["a", "b", "c"]], crystals[["a", "b", "c"]], atol=5e-5)
    np.testing.assert_allclose(got[["alpha", "beta", "gamma"]],
                               crystals[["alpha", "beta", "gamma"]], atol=5e-6)
    assert got["lattice"].tolist() == crystals["lattice"].tolist()
    assert got["centering"].tolist() == crystals["centering"].tolist()  # H comes back as R
    assert got["unique_axis"].fillna("-").tolist() == crystals["unique_axis"].fillna(
        "-").tolist()
    assert (got["method"] == "asdf-cell").all()
    np.testing.assert_allclose(got["profile_radius_invA"], crystals["profile_radius_invA"],
                               atol=5e-7)
    np.testing.assert_allclose(got["resolution_limit_A"], crystals["resolution_limit_A"],
                               rtol=2e-3)
    counts = read_stream(path).reflections.groupby(["frame", "crystal"]).size()
    np.testing.assert_array_equal(got["n_reflections"], counts.to_numpy())


def test_round_trip_reflections(written):
    _, (_, _, crystals, refl), path = written
    got = read_stream(path).reflections
    for col in ("frame", "crystal", "h", "k", "l", "panel"):
        np.testing.assert_array_equal(got[col], refl[col])
    for col in ("I", "sigma", "peak", "bg"):
        np.testing.assert_allclose(got[col], refl[col], atol=0.005 + 1e-9)
    for col in ("fs", "ss"):
        np.testing.assert_allclose(got[col], refl[col], atol=0.05 + 1e-9)
    key = crystals.set_index(["frame", "crystal"])[BASIS]
    basis = key.loc[list(zip(refl["frame"], refl["crystal"], strict=True))].to_numpy()
    hkl = refl[["h", "k", "l"]].to_numpy()
    q = np.einsum("ni,nij->nj", hkl, basis.reshape(-1, 3, 3))
    np.testing.assert_allclose(got["d_A"], 1 / np.linalg.norm(q, axis=1), rtol=2e-6)
    assert got["partiality"].isna().all()


def test_units_and_line_formats(tmp_path):
    det = builtin_geometry("mpccd")
    crystal = {"frame": 0, "crystal": 0, "lattice": "hexagonal", "centering": "R",
               "unique_axis": "c", "a": 81.3, "b": 81.3, "c": 212.6, "alpha": 90.0,
               "beta": 90.0, "gamma": 120.0, "profile_radius_invA": 0.0012,
               "resolution_limit_A": 2.5, **dict(zip(BASIS, [0.0123, -0.001, 0.0, 0.0, 0.0144,
                                                             0.0005, 0.0, 0.0, 0.0047],
                                                         strict=True))}
    peaks = pd.DataFrame({"frame": [0], "panel": [7], "fs": [12.345], "ss": [7500.5],
                          "intensity": [1234.567], "d_A": [2.0]})
    refl = pd.DataFrame({"frame": [0], "crystal": [0], "h": [-12], "k": [3], "l": [104],
                         "I": [1234.5678], "sigma": [12.3456], "peak": [99.0], "bg": [4.25],
                         "fs": [12.34], "ss": [7500.56], "panel": [7]})
    path = tmp_path / "units.stream"
    with StreamWriter(path, det, cell=CELLS[1], indexing_methods="asdf") as w:
        w.write_frame({"frame": 0, "event": "//0", "filename": "a.h5", "hit": True,
                       "photon_energy_eV": 9500.0}, peaks, pd.DataFrame([crystal]), refl)
    text = path.read_text()
    lines = text.split("\n")
    assert lines[:2] == ["CrystFEL stream format 2.3", lines[1]]
    assert lines[1].startswith("Generated by sxlab ")
    assert lines[2] == "Indexing methods selected: asdf"
    assert lines[3] == "----- Begin geometry file -----"
    geom = text.split("----- Begin geometry file -----\n")[1].split(
        "----- End geometry file -----")[0]
    assert read_geom(geom) == det
    assert geom == write_geom(det)
    cell_text = text.split("----- Begin unit cell -----\n")[1].split("----- End unit cell")[0]
    assert cell_text.endswith(CELL_NOTE)
    assert "centering = H" in cell_text
    assert read_cell(cell_text) == CELLS[1]
    for line in (
        "Image filename: a.h5", "Event: //0", "Image serial number: 1", "hit = 1",
        "indexed_by = asdf", "n_indexing_tries = 1", "photon_energy_eV = 9500.000000",
        "beam_divergence = 0.00e+00 rad", "beam_bandwidth = 0.00e+00 (fraction)",
        "average_camera_length = 0.050000 m", "num_peaks = 1",
        "peak_resolution = 5.000000 nm^-1 or 2.000000 A",
        "  fs/px   ss/px (1/d)/nm^-1   Intensity  Panel",
        "  12.35 7500.50       5.00     1234.57   q8",
        "Cell parameters 8.13000 8.13000 21.26000 nm, 90.00000 90.00000 120.00000 deg",
        "astar = +0.1230000 -0.0100000 +0.0000000 nm^-1",
        "bstar = +0.0000000 +0.1440000 +0.0050000 nm^-1",
        "cstar = +0.0000000 +0.0000000 +0.0470000 nm^-1",
        "lattice_type = hexagonal", "centering = H", "unique_axis = c",
        "profile_radius = 0.01200 nm^-1", "predict_refine/det_shift x = 0.000 y = 0.000 mm",
        "diffraction_resolution_limit = 4.00 nm^-1 or 2.50 A", "num_reflections = 1",
        "num_saturated_reflections = 0", "num_implausible_reflections = 0",
        "   h    k    l          I   sigma(I)       peak background  fs/px  ss/px panel",
        " -12    3  104    1234.57      12.35      99.00       4.25   12.3 7500.6 q8",
    ):
        assert line in lines, line
    order = [lines.index(m) for m in (
        "----- Begin chunk -----", "Peaks from peak search", "End of peak list",
        "--- Begin crystal", "Reflections measured after indexing", "End of reflections",
        "--- End crystal", "----- End chunk -----")]
    assert order == sorted(order)
    got = read_stream(path)
    assert got.crystals["centering"][0] == "R" and got.crystals["lattice"][0] == "hexagonal"
    np.testing.assert_allclose(got.crystals[BASIS].to_numpy()[0],
                               [0.0123, -0.001, 0.0, 0.0, 0.0144, 0.0005, 0.0, 0.0, 0.0047],
                               atol=1e-15)
    assert got.crystals["a"][0] == pytest.approx(81.3, abs=1e-12)
    assert got.crystals["profile_radius_invA"][0] == pytest.approx(0.0012, abs=1e-15)
    assert got.crystals["resolution_limit_A"][0] == pytest.approx(2.5, abs=1e-12)
    assert got.frames["resolution_A"][0] == pytest.approx(2.0, abs=1e-12)
    assert got.peaks["panel"][0] == 7 and got.reflections["panel"][0] == 7


def test_panel_names_match_geometry(written):
    det, (_, peaks, _, refl), path = written
    text = path.read_text()
    rows = text.split("  fs/px   ss/px (1/d)/nm^-1   Intensity  Panel\n")[1].split(
        "End of peak list")[0].splitlines()
    first = peaks[peaks["frame"] == peaks["frame"].iloc[0]]
    assert [r.split()[4] for r in rows] == [det.panels[i].name for i in first["panel"]]
    data = read_stream(path)
    names = [data.panel_names[i] for i in data.reflections["panel"]]
    assert names == [det.panels[i].name for i in refl["panel"]]


def test_no_reflections_and_empty_frames(tmp_path, rng):
    det = builtin_geometry("eiger1m")
    frames, peaks, crystals, _ = make_tables(det, rng)
    path = write_stream(tmp_path / "norefl.stream", det, frames, peaks, crystals)
    text = path.read_text()
    assert text.count("No integrated reflections.") == len(crystals)
    assert "Reflections measured after indexing" not in text
    data = read_stream(path)
    assert len(data.reflections) == 0
    assert list(data.reflections.columns)[:5] == ["frame", "crystal", "h", "k", "l"]
    assert (data.crystals["n_reflections"] == -1).all()
    assert data.crystals["resolution_limit_A"].isna().all()
    np.testing.assert_allclose(data.crystals[BASIS], crystals[BASIS], atol=5e-9 + 1e-15)

    empty = write_stream(tmp_path / "empty.stream", det, pd.DataFrame({"frame": [0]}))
    got = read_stream(empty)
    assert got.frames["n_peaks"].tolist() == [0] and not got.frames["hit"][0]
    assert len(got.peaks) == 0 and len(got.crystals) == 0


def test_writer_rejects_bad_input(tmp_path):
    det = builtin_geometry("mpccd")
    with StreamWriter(tmp_path / "x.stream", det) as w:
        bad = pd.DataFrame({"frame": [0], "panel": [8], "fs": [1.0], "ss": [1.0],
                            "intensity": [1.0]})
        with pytest.raises(ValueError, match="panel index 8"):
            w.write_frame({"frame": 0}, bad)
        with pytest.raises(ValueError, match="single line"):
            w.write_frame({"frame": 0, "filename": "a\nb"})
    with pytest.raises(ValueError, match="single line"):
        StreamWriter(tmp_path / "y.stream", det, command_line="a\nb")


# ============================================================================ follower
def test_follower_sees_exactly_the_new_chunks(tmp_path, rng):
    det = builtin_geometry("mpccd")
    frames, peaks, crystals, refl = make_tables(det, rng)
    path = tmp_path / "live.stream"
    follower = StreamFollower(path)
    assert len(follower.poll()) == 0  # no file yet
    writer = StreamWriter(path, det, cell=CELLS[0])
    assert len(follower.poll()) == 0  # preamble only
    assert follower.geometry is None

    def chunk(i):
        f = frames["frame"][i]
        sel = [t[t["frame"] == f] for t in (peaks, crystals, refl)]
        cols = [{c: t[c].to_numpy() for c in t.columns} for t in sel]
        return writer.chunk_text(frames.iloc[i], *cols)

    parts = []
    writer.write_frames(frames.iloc[:2], peaks, crystals, refl)
    parts.append(follower.poll())
    assert parts[-1].frames["frame"].tolist() == [3, 4]
    assert follower.geometry == det
    assert len(follower.poll()) == 0
    half = chunk(2)
    cut = len(half) // 2
    with open(path, "a") as fh:  # a chunk being written: its first half only
        fh.write(half[:cut])
    offset = follower.offset
    assert len(follower.poll()) == 0
    assert follower.offset == offset
    with open(path, "a") as fh:
        fh.write(half[cut:])
        fh.write(chunk(3)[:10])
    parts.append(follower.poll())
    assert parts[-1].frames["frame"].tolist() == [7]
    with open(path, "a") as fh:
        fh.write(chunk(3)[10:])
        fh.write(chunk(4))
    parts.append(follower.poll())
    assert parts[-1].frames["frame"].tolist() == [8, 10]
    assert follower.n_frames == 5
    writer.close()
    whole = read_stream(path)
    joined = StreamData.concat(parts)
    for name in ("frames", "peaks", "crystals", "reflections"):
        pd.testing.assert_frame_equal(getattr(joined, name), getattr(whole, name))


def test_follower_rejects_a_shrunk_file(tmp_path):
    path = tmp_path / "s.stream"
    write_stream(path, builtin_geometry("eiger1m"), pd.DataFrame({"frame": [0, 1]}))
    follower = StreamFollower(path)
    assert len(follower.poll()) == 2
    path.write_text("CrystFEL stream format 2.3\n")
    with pytest.raises(StreamError, match="shorter"):
        follower.poll()


# ============================================================================ old formats
GEOM_22 = """\
photon_energy = /LCLS/photon_energy_eV
clen = /LCLS/detector0-EncoderValue
res = 10000
adu_per_eV = 0.001
p0/min_fs = 0
p0/max_fs = 99
p0/min_ss = 0
p0/max_ss = 49
p0/corner_x = -50
p0/corner_y = -50
p0/fs = x
p0/ss = y
p1/min_fs = 0
p1/max_fs = 99
p1/min_ss = 50
p1/max_ss = 99
p1/corner_x = -50
p1/corner_y = 0
p1/fs = x
p1/ss = y
"""

STREAM_22 = f"""\
CrystFEL stream format 2.2
Generated by CrystFEL 0.6.2
indexamajig -i files.lst -o old.stream -g old.geom --peaks=hdf5
----- Begin geometry file -----
{GEOM_22}----- End geometry file -----
----- Begin chunk -----
Image filename: r0001/data1.h5
indexed_by = mosflm-nolatt-cell
photon_energy_eV = 9500.000000
beam_divergence = 0.00e+00 rad
beam_bandwidth = 1.00e-08 (fraction)
hdf5/LCLS/photon_energy_eV = 9500.000000
hdf5/LCLS/detector0-EncoderValue = -430.000000
average_camera_length = 0.152000 m
num_peaks = 3
num_saturated_peaks = 0
Peaks from peak search
  fs/px   ss/px (1/d)/nm^-1   Intensity
  10.50   20.50       1.23      100.00
  60.25   75.75       2.50      200.00
  99.00   49.99       0.50      300.00
End of peak list
--- Begin crystal
Cell parameters 7.91000 7.91000 3.79000 nm, 90.00000 90.00000 90.00000 deg
astar = +0.1264223 +0.0000000 +0.0000000 nm^-1
bstar = +0.0000000 +0.1264223 +0.0000000 nm^-1
cstar = +0.0000000 +0.0000000 +0.2638522 nm^-1
lattice_type = tetragonal
centering = P
unique_axis = c
profile_radius = 0.00200 nm^-1
diffraction_resolution_limit = 4.00 nm^-1 or 2.50 A
num_reflections = 2
num_saturated_reflections = 0
Reflections measured after indexing
   h    k    l          I   sigma(I)       peak background  fs/px  ss/px
   1    2    3     100.00      10.00      50.00       5.00   10.5   20.5
  -1    0    4     -20.50      12.00       8.00       4.00   70.2   80.1
End of reflections
--- End crystal
--- Begin crystal
Cell parameters 7.90000 7.90000 3.80000 nm, 90.00000 90.00000 90.00000 deg
astar = +0.1265823 +0.0000000 +0.0000000 nm^-1
bstar = +0.0000000 +0.1265823 +0.0000000 nm^-1
cstar = +0.0000000 +0.0000000 +0.2631579 nm^-1
No integrated reflections.
--- End crystal
----- End chunk -----
----- Begin chunk -----
Image filename: r0001/data2.h5
indexed_by = none
photon_energy_eV = 9400.000000
hdf5/LCLS/photon_energy_eV = 9400.000000
num_peaks = 0
Peaks from peak search
  fs/px   ss/px (1/d)/nm^-1   Intensity
End of peak list
----- End chunk -----
"""


def test_reads_a_22_stream(tmp_path):
    path = tmp_path / "old.stream"
    path.write_text(STREAM_22)
    data = read_stream(path)
    assert data.version == "2.2"
    assert data.frames["frame"].tolist() == [0, 1]  # no serial numbers: chunk order
    assert data.frames["event"].isna().all()
    assert data.frames["filename"].tolist() == ["r0001/data1.h5", "r0001/data2.h5"]
    assert data.frames["n_crystals"].tolist() == [2, 0]
    assert data.frames["indexed_by"].tolist() == ["mosflm-nolatt-cell", "none"]
    assert data.frames["camera_length_m"][0] == 0.152
    assert data.frames["beam_bandwidth"][0] == 1e-8
    headers = data.headers
    assert headers["name"].tolist() == ["LCLS/photon_energy_eV", "LCLS/detector0-EncoderValue",
                                        "LCLS/photon_energy_eV"]
    assert headers["value"].tolist() == [9500.0, -430.0, 9400.0]
    assert headers["frame"].tolist() == [0, 0, 1]
    peaks = data.peaks
    assert peaks["panel"].tolist() == [0, 1, 0]  # from the pixel position
    # The geometry's clen comes from a header, so d comes from the stream's 1/d column.
    np.testing.assert_allclose(peaks["d_A"], [10 / 1.23, 4.0, 20.0])
    cr = data.crystals
    assert cr["lattice"].tolist() == ["tetragonal", "triclinic"]  # incomplete symmetry
    assert cr["centering"].tolist() == ["P", "P"]
    np.testing.assert_allclose(cr["a"], [79.1, 79.0])
    assert cr["astar_x"][0] == pytest.approx(0.01264223, abs=1e-15)
    assert cr["n_reflections"].tolist() == [2, -1]
    assert cr["resolution_limit_A"][0] == 2.5
    refl = data.reflections
    assert refl[["h", "k", "l"]].to_numpy().tolist() == [[1, 2, 3], [-1, 0, 4]]
    assert refl["I"].tolist() == [100.0, -20.5]
    assert refl["panel"].tolist() == [0, 1]
    np.testing.assert_allclose(refl["d_A"][0], 1 / np.linalg.norm(
        [0.01264223, 0.02528446, 0.07915566]))


def test_reads_21_reflections_with_phases(tmp_path):
    text = STREAM_22.replace("CrystFEL stream format 2.2", "CrystFEL stream format 2.1")
    text = text.replace(
        "   1    2    3     100.00      10.00      50.00       5.00   10.5   20.5\n"
        "  -1    0    4     -20.50      12.00       8.00       4.00   70.2   80.1\n",
        "   1    2    3     100.00        -      10.00   1   10.5   20.5\n"
        "  -1    0    4     -20.50    45.00      12.00   2   70.2   80.1\n")
    path = tmp_path / "v21.stream"
    path.write_text(text)
    refl = read_stream(path).reflections
    assert refl["sigma"].tolist() == [10.0, 12.0]
    assert refl["fs"].tolist() == [10.5, 70.2]
    assert refl["peak"].isna().all()


def test_stream_without_chunks_or_geometry(tmp_path):
    path = tmp_path / "nochunks.stream"
    path.write_text("CrystFEL stream format 2.3\nGenerated by CrystFEL 0.10.2\n")
    data = read_stream(path)
    assert len(data) == 0 and data.geometry is None
    text = STREAM_22.split("----- Begin geometry file -----")[0] + \
        "----- Begin chunk -----" + STREAM_22.split("----- Begin chunk -----", 1)[1]
    for row, name in (("      100.00\n", "A"), ("      200.00\n", "B"), ("      300.00\n", "A")):
        text = text.replace(row, row[:-1] + f" panel{name}\n")
    path.write_text(text)
    data = read_stream(path)
    assert data.geometry is None
    assert data.panel_names == ["panelA", "panelB"]
    assert data.peaks["panel"].tolist() == [0, 1, 0]
    assert data.reflections["panel"].tolist() == [-1, -1]
    np.testing.assert_allclose(data.peaks["d_A"], [10 / 1.23, 4.0, 20.0])


# ============================================================================ errors
@pytest.fixture
def small_stream(tmp_path, rng):
    det = builtin_geometry("mpccd")
    path = write_stream(tmp_path / "ok.stream", det, *make_tables(det, rng))
    return path, path.read_text()


def _line_of(text, needle, occurrence=-1):
    lines = text.split("\n")
    hits = [i + 1 for i, line in enumerate(lines) if line == needle]
    return hits[occurrence]


def test_truncated_last_chunk_names_file_line_and_marker(small_stream):
    path, text = small_stream
    cut = text.rfind("End of peak list")
    path.write_text(text[:cut])
    begin = _line_of(text, "----- Begin chunk -----")
    with pytest.raises(StreamError) as err:
        read_stream(path)
    msg = str(err.value)
    assert str(path) in msg and f"line {begin}" in msg
    assert "expected '----- End chunk -----'" in msg and "end of the file" in msg
    assert err.value.lineno == begin


def test_truncated_chunk_followed_by_another(small_stream):
    path, text = small_stream
    first_end = text.index("----- End chunk -----\n")
    path.write_text(text[:first_end] + text[first_end + len("----- End chunk -----\n"):])
    begins = [i + 1 for i, line in enumerate(text.split("\n"))
              if line == "----- Begin chunk -----"]
    with pytest.raises(StreamError, match=rf"line {begins[0]}: truncated chunk: expected "
                                          rf"'----- End chunk -----' before the next chunk "
                                          rf"at line {begins[1] - 1}"):
        read_stream(path)


def test_bad_rows_and_values(small_stream):
    path, text = small_stream
    lines = text.split("\n")
    i = lines.index("  fs/px   ss/px (1/d)/nm^-1   Intensity  Panel") + 2
    bad = lines.copy()
    bad[i] = " ".join(bad[i].split()[:4])
    path.write_text("\n".join(bad))
    with pytest.raises(StreamError, match=rf"line {i + 1}: peak list: expected 5 fields"):
        read_stream(path)
    bad = lines.copy()
    j = lines.index(
        "   h    k    l          I   sigma(I)       peak background  fs/px  ss/px panel") + 1
    fields = bad[j].split()
    fields[3] = "12x5"
    bad[j] = " ".join(fields)
    path.write_text("\n".join(bad))
    with pytest.raises(StreamError, match=rf"line {j + 1}: reflection list: expected a "
                                          r"number in field 4, got '12x5'"):
        read_stream(path)
    bad = [line.replace("hit = 1", "hit = yes") for line in lines]
    path.write_text("\n".join(bad))
    k = bad.index("hit = yes")
    with pytest.raises(StreamError, match=rf"line {k + 1}: expected a number .* for 'hit'"):
        read_stream(path)
    bad = [line for line in lines if not line.startswith("photon_energy_eV")]
    path.write_text("\n".join(bad))
    with pytest.raises(StreamError, match="incomplete chunk: expected 'photon_energy_eV ='"):
        read_stream(path)
    bad = [line.replace(" q3", " q99") if line.endswith(" q3") else line for line in lines]
    path.write_text("\n".join(bad))
    with pytest.raises(StreamError, match="panel 'q99' is not in the geometry"):
        read_stream(path)
    path.write_text("CrystFEL stream format 3.0\n")
    with pytest.raises(StreamError, match="line 1: stream format 3.0 is not supported"):
        read_stream(path)
    path.write_text("hello\n")
    with pytest.raises(StreamError, match="line 1: expected 'CrystFEL stream format 2.3'"):
        read_stream(path)
    path.write_text(text.replace("q1/res = ", "q1/reso = "))
    with pytest.raises(StreamError, match=r"line \d+: geometry block: .*reso"):
        read_stream(path)


# ============================================================================ kernels
def _kernel_number(token: str):
    buf = np.frombuffer(f" {token} ".encode(), dtype=np.uint8)
    return kern.number(buf, 1, 1 + len(token))


def test_number_kernel_against_float(rng):
    values = np.concatenate([rng.normal(0, 1e3, 300), rng.lognormal(0, 8, 300),
                             -rng.lognormal(0, 8, 100), [0.0, -0.0, 1e-300, 1e300]])
    tokens = []
    for v in values:
        tokens += [f"{v:.2f}", f"{v:.7f}", f"{v:+9.7f}", f"{v:e}", f"{v:.3E}", repr(float(v)),
                   f"{v:.0f}", f"{v:g}"]
    tokens += ["nan", "-nan", "NaN", "inf", "-inf", "+Infinity", "1e5", "1.", ".5", "-.25",
               "007", "1e+22", "1e-22", "1e23", "123456789012345.6", "1234567890123456.7",
               "1.2.3", "--1", "e5", "", "12a", "0x10", "1e", "+", "-"]
    fast = 0
    for token in tokens:
        value, ok = _kernel_number(token) if token else (np.nan, False)
        try:
            expected = float(token)
        except ValueError:
            assert not ok, token
            continue
        if ok:
            fast += 1
            if math.isnan(expected):
                assert math.isnan(value), token
            else:
                assert value == expected and math.copysign(1, value) == math.copysign(
                    1, expected), token
    assert fast > 0.6 * len(tokens)


def test_reader_against_reference_on_odd_formatting(tmp_path, rng):
    """Tabs, extra spaces, exponents, long mantissas, nan and inf in the tables."""
    det = builtin_geometry("mpccd")
    path = write_stream(tmp_path / "plain.stream", det, *make_tables(det, rng))
    out = []
    in_table = False
    for line in path.read_text().split("\n"):
        if line in ("Peaks from peak search", "Reflections measured after indexing"):
            in_table = True
            out.append(line)
            continue
        if line in ("End of peak list", "End of reflections"):
            in_table = False
        f = line.split()
        if in_table and f and f[0] not in ("fs/px", "h"):
            for i in range(3 if len(f) == 10 else 0, len(f) - 1):
                v = float(f[i]) + rng.normal(0, 1e-3)
                f[i] = str(rng.choice([f"{v:.6e}", repr(v), f"{v:.2f}", "nan", "-inf",
                                       f"{v:.17g}"]))
            seps = rng.choice([" ", "  ", "\t", " \t "], len(f))
            line = " " * int(rng.integers(0, 3)) + "".join(
                s + t for s, t in zip(seps, f, strict=True)).lstrip() + " " * int(
                rng.integers(0, 2))
        out.append(line)
    odd = tmp_path / "odd.stream"
    odd.write_text("\n".join(out))
    got = read_stream(odd)
    expected = ref.read(odd)
    exp_peaks = pd.DataFrame(expected["peaks"])
    exp_refl = pd.DataFrame(expected["reflections"])
    for col in ("fs", "ss", "intensity"):
        np.testing.assert_array_equal(got.peaks[col], exp_peaks[col])
    for col in ("h", "k", "l", "I", "sigma", "peak", "bg", "fs", "ss"):
        np.testing.assert_array_equal(got.reflections[col], exp_refl[col])
    assert [got.panel_names[i] for i in got.peaks["panel"]] == exp_peaks["panel"].tolist()
    np.testing.assert_array_equal(got.peaks["frame"], exp_peaks["serial"] - 1)
    exp_cryst = expected["crystals"]
    np.testing.assert_array_equal(got.crystals["astar_y"],
                                  [c["astar"][1] / 10 for c in exp_cryst])
    assert len(got.frames) == len(expected["frames"])


def test_threads_give_the_same_tables(tmp_path, rng, monkeypatch):
    det = builtin_geometry("agipd")
    frames, peaks, crystals, refl = make_tables(det, rng, frames=range(40))
    path = write_stream(tmp_path / "t.stream", det, frames, peaks, crystals, refl)
    one = read_stream(path, threads=1)
    monkeypatch.setattr(stream_module, "_MIN_SEGMENT_BYTES", 1000)
    assert len(stream_module._segments(path.read_bytes(), 0, path.stat().st_size, 7)) == 7
    many = read_stream(path, threads=7)
    for name in ("frames", "peaks", "crystals", "reflections", "headers"):
        pd.testing.assert_frame_equal(getattr(one, name), getattr(many, name))
    # Row room estimated from a sample: too small an estimate falls back to counting.
    monkeypatch.setattr(stream_module, "_SAMPLE_BYTES", 2000)
    monkeypatch.setattr(stream_module, "_LINE_SLACK", 0)
    calls = []
    scan = stream_module._k.scan_stream

    def counting_scan(*args):
        result = scan(*args)
        calls.append(result[0])
        return result

    monkeypatch.setattr(stream_module._k, "scan_stream", counting_scan)
    for margin in (1.25, 0.01):
        monkeypatch.setattr(stream_module, "_LINE_MARGIN", margin)
        for threads in (1, 3):
            again = read_stream(path, threads=threads)
            for name in ("frames", "peaks", "crystals", "reflections", "headers"):
                pd.testing.assert_frame_equal(getattr(one, name), getattr(again, name))
    assert kern.FULL in calls and calls.count(kern.OK) >= 4


# ============================================================================ third party
def test_cfstreamparser_reads_what_sxlab_writes(tmp_path, rng):
    import CFstreamparser as cfsp
    det = builtin_geometry("mpccd")
    frames, peaks, crystals, refl = make_tables(det, rng)
    path = write_stream(tmp_path / "third.stream", det, frames, peaks, crystals, refl,
                        cell=CELLS[0])
    parsed = cfsp.parse_stream_file(str(path))
    assert len(parsed.chunks) == len(frames)
    assert [c.filename for c in parsed.chunks] == frames["filename"].tolist()
    assert parsed.unit_cell.a == 79.1 and parsed.unit_cell.lattice_type == "tetragonal"
    got_refl = [(r.h, r.k, r.l, r.intensity, r.sigma, r.panel)
                for c in parsed.chunks for x in c.crystals for r in x.reflections]
    names = det.panel_names
    expected = [(int(r.h), int(r.k), int(r.l), round(r.I, 2), round(r.sigma, 2),
                 names[r.panel]) for r in refl.itertuples()]
    assert len(got_refl) == len(expected)
    for g, e in zip(got_refl, expected, strict=True):
        assert g[:3] == e[:3] and g[5] == e[5]
        assert g[3] == pytest.approx(e[3], abs=0.0051) and g[4] == pytest.approx(e[4],
                                                                                abs=0.0051)
    got_peaks = [(p.fs_px, p.ss_px, p.panel) for c in parsed.chunks for p in c.peaks]
    assert [g[2] for g in got_peaks] == [names[i] for i in peaks["panel"]]
    np.testing.assert_allclose([g[0] for g in got_peaks], peaks["fs"], atol=0.0051)
    cells = [x.cell for c in parsed.chunks for x in c.crystals]
    np.testing.assert_allclose(np.array(cells)[:, :3] * 10, crystals[["a", "b", "c"]],
                               atol=5e-5)


def test_format_rules_of_written_stream(small_stream):
    """The documented structure: markers as whole lines, fields per row, required lines."""
    _, text = small_stream
    chunks = re.findall(r"^----- Begin chunk -----\n(.*?)^----- End chunk -----$", text,
                        flags=re.S | re.M)
    assert len(chunks) == text.count("----- Begin chunk -----")
    for chunk in chunks:
        lines = chunk.split("\n")
        assert lines[0].startswith("Image filename: ")
        assert any(line.startswith("photon_energy_eV = ") for line in lines)
        peaks = chunk.split("Peaks from peak search\n")[1].split("End of peak list")[0]
        for row in peaks.splitlines()[1:]:
            assert len(row.split()) == 5
        for block in chunk.split("Reflections measured after indexing\n")[1:]:
            for row in block.split("End of reflections")[0].splitlines()[1:]:
                assert len(row.split()) == 10
        assert chunk.count("--- Begin crystal") == chunk.count("--- End crystal")


def test_processed_stream_names_unique_axis_and_resolution_limit(tmp_path):
    """A stream of processed frames, read back: every crystal block of a lattice with a
    unique axis names it, and each has its own finite resolution limit."""
    import sxlab as sx
    from sxlab.io.stream import read_stream

    sample = sx.datasets.load("lysozyme-sample", progress=False)
    cell = UnitCell(79.1, 79.1, 37.9, 90, 90, 90, space_group="P 43 21 2")
    res = sx.process_run(sample, sx.Params(cell=cell), executor="serial", progress=False,
                         out=tmp_path / "out")
    assert len(res.crystals) >= 3
    text = (tmp_path / "out" / "results.stream").read_text()
    assert "unique_axis = ?" not in text
    limits = re.findall(r"^diffraction_resolution_limit = (.*)$", text, re.M)
    assert len(limits) == len(res.crystals) and not any("nan" in v for v in limits)
    back = read_stream(tmp_path / "out" / "results.stream")
    crystals = back.crystals if hasattr(back, "crystals") else back[1]
    assert (crystals.unique_axis == "c").all()
    expected = res.crystals.sort_values(["frame", "crystal"]).resolution_limit_A.to_numpy()
    got = crystals.sort_values(["frame", "crystal"]).resolution_limit_A.to_numpy()
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, expected, atol=0.006)  # written to 0.01 Å
    # without a reference cell: the conventional setting's axis (tetragonal: c)
    res = sx.process_run(sample, sx.Params(), executor="serial", progress=False,
                         out=tmp_path / "nocell")
    back = read_stream(tmp_path / "nocell" / "results.stream")
    crystals = back.crystals if hasattr(back, "crystals") else back[1]
    tetragonal = crystals[crystals.lattice_type == "tetragonal"] \
        if "lattice_type" in crystals else crystals[crystals.lattice == "tetragonal"]
    assert len(tetragonal) and (tetragonal.unique_axis == "c").all()


@pytest.mark.parametrize("lattice, params, axis", [
    ("monoclinic", (50, 60, 70, 90, 105, 90), "b"),
    ("monoclinic", (50, 60, 70, 90, 90, 95), "c"),
    ("tetragonal", (40, 79, 79, 90, 90, 90), "a"),
    ("tetragonal", (79, 79, 38, 90, 90, 90), "c"),
    ("hexagonal", (60, 60, 100, 90, 90, 120), "c"),
    ("hexagonal", (100, 60, 60, 120, 90, 90), "a"),
    ("orthorhombic", (50, 60, 70, 90, 90, 90), "*"),
])
def test_unique_axis_from_the_cell(lattice, params, axis):
    assert stream_module._unique_axis(lattice, params) == axis
