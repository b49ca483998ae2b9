"""CrystFEL geometry files as CrystFEL reads them: header-referenced values, old keys.

Files of our own cover the cases of CrystFEL's ``tests/wavelength_geom*.geom``
(header-referenced wavelength in m and Å, photon energy in eV and keV, electron voltage
in V and kV, literal values) and more: a per-frame detector distance, integer fields
written as ``0.0``, the obsolete ``badrow_direction``, a geometry without any beam energy,
the geometry's ``data`` path used when opening a run, and runs of single-frame files.
"""

from __future__ import annotations

import math

import h5py
import numpy as np
import pytest

import sxlab as sx
from sxlab.io import open_run, read_geom
from sxlab.io.crystfel_geom import GeomError
from sxlab.io.hdf5 import FrameReadError

H_C_EV_M = 1.23984198e-6  # h c in eV m
ENERGY_EV = 9000.0
WAVELENGTH_9KEV_M = H_C_EV_M / ENERGY_EV


def _electron_wavelength_m(volts: float) -> float:
    """Relativistic de Broglie wavelength of electrons accelerated through ``volts``."""
    m, e, c, h = 9.1093837e-31, 1.602176634e-19, 299792458.0, 6.62607015e-34
    return h / math.sqrt(2 * m * e * volts * (1 + e * volts / (2 * m * c * c)))


def _geom(beam_line: str, *, clen: str = "clen = 50 mm", extra: str = "",
          min_fs: str = "0", data: str = "/data/data_array") -> str:
    return (f"{beam_line}\n{clen}\nadu_per_photon = 1\nres = 10000\n{extra}\n"
            f"panel/min_fs = {min_fs}\npanel/max_fs = 15\npanel/min_ss = 0\n"
            f"panel/max_ss = 15\npanel/corner_x = -8\npanel/corner_y = -8\n"
            f"panel/fs = x\npanel/ss = y\npanel/data = {data}\n")


@pytest.fixture()
def header_file(tmp_path):
    """One 2-D frame at ``/data/data_array`` and beam values in ``/LCLS`` (the units of
    CrystFEL's ``wavelength_geom.h5``, plus an Å value)."""
    path = tmp_path / "wavelength.h5"
    with h5py.File(path, "w") as f:
        f["/data/data_array"] = np.arange(256, dtype=np.float32).reshape(16, 16)
        f["/LCLS/wavelength"] = 1e-10
        f["/LCLS/wavelength_A"] = 1.125
        f["/LCLS/photon_energy"] = ENERGY_EV
        f["/LCLS/photon_energyK"] = ENERGY_EV / 1000
        f["/LCLS/electron_energy"] = 300e3
        f["/LCLS/electron_energy2"] = 300.0
    return path


WAVELENGTH_CASES = [
    # (beam line, expected wavelength in m) -- the cases of CrystFEL's test suite
    ("wavelength = /LCLS/wavelength m", 1e-10),
    ("wavelength = /LCLS/wavelength_A A", 1.125e-10),
    ("photon_energy = /LCLS/photon_energy", WAVELENGTH_9KEV_M),
    ("photon_energy = /LCLS/photon_energy eV", WAVELENGTH_9KEV_M),
    ("photon_energy = /LCLS/photon_energyK keV", WAVELENGTH_9KEV_M),
    ("electron_voltage = /LCLS/electron_energy V", _electron_wavelength_m(300e3)),
    ("electron_voltage = /LCLS/electron_energy2 kV", _electron_wavelength_m(300e3)),
    ("photon_energy = 9000", WAVELENGTH_9KEV_M),
    ("photon_energy = 9 keV", WAVELENGTH_9KEV_M),
    ("photon_energy = 9e3 eV", WAVELENGTH_9KEV_M),
    ("electron_voltage = 300 kV", _electron_wavelength_m(300e3)),
    ("wavelength = 1.125 A", 1.125e-10),
    ("wavelength = 1.125e-10 m", 1.125e-10),
]


@pytest.mark.parametrize("beam_line, expected_m", WAVELENGTH_CASES)
def test_wavelength_from_header_or_file(header_file, tmp_path, beam_line, expected_m):
    gpath = tmp_path / "w.geom"
    gpath.write_text(_geom(beam_line))
    run = open_run(header_file, geometry=read_geom(gpath))  # data path from the geometry
    assert len(run) == 1
    wavelength_m = run.frame_geometry(0).beam.wavelength_A * 1e-10
    assert wavelength_m == pytest.approx(expected_m, rel=1e-4)
    image, _ = run.read(0)
    np.testing.assert_array_equal(np.asarray(image), np.arange(256).reshape(16, 16))


def test_per_frame_distance_and_energy(tmp_path):
    path = tmp_path / "frames.h5"
    distance_mm = np.array([100.0, 120.0, 150.0])
    energy_ev = np.array([9000.0, 9100.0, 9200.0])
    with h5py.File(path, "w") as f:
        f["/data/data_array"] = np.zeros((3, 16, 16), np.float32)
        f["/LCLS/detector_distance"] = distance_mm
        f["/LCLS/photon_energy"] = energy_ev
    gpath = tmp_path / "d.geom"
    gpath.write_text(_geom("photon_energy = /LCLS/photon_energy eV",
                           clen="clen = /LCLS/detector_distance mm"))
    run = open_run(path, geometry=read_geom(gpath))
    assert len(run) == 3
    for i in range(3):
        g = run.frame_geometry(i)
        assert g.panels[0].clen == pytest.approx(distance_mm[i] / 1000, rel=1e-9)
        q = g.pixel_to_q(8.0, 8.0, 0)  # the resolved distance is what the maths uses
        q_expected = sx.io.read_geom(_geom(f"photon_energy = {energy_ev[i]}",
                                           clen=f"clen = {distance_mm[i]} mm"))
        np.testing.assert_allclose(q, q_expected.pixel_to_q(8.0, 8.0, 0), rtol=1e-9)
        assert g.beam.wavelength_A == pytest.approx(H_C_EV_M / energy_ev[i] * 1e10, rel=1e-6)


def test_a_header_value_missing_from_the_file_names_it(header_file, tmp_path):
    gpath = tmp_path / "w.geom"
    gpath.write_text(_geom("photon_energy = /LCLS/nothing eV"))
    run = open_run(header_file, geometry=read_geom(gpath))
    with pytest.raises(Exception, match="/LCLS/nothing") as exc:
        run.frame_geometry(0)
    assert header_file.name in str(exc.value)


def test_integer_fields_written_as_reals(tmp_path):
    det = read_geom(_geom("photon_energy = 9000", min_fs="0.0"))
    assert det.data_shape == (16, 16)
    with pytest.raises(GeomError, match="min_fs"):
        read_geom(_geom("photon_energy = 9000", min_fs="0.5"))


def test_obsolete_badrow_direction_is_warned_and_ignored():
    text = _geom("photon_energy = 9000", extra="panel/badrow_direction = y")
    with pytest.warns(UserWarning, match="badrow_direction") as record:
        det = read_geom(text, source_name="old.geom")
    assert "old.geom, line" in str(record[0].message)
    assert det == read_geom(_geom("photon_energy = 9000"))


def test_geometry_without_beam_energy(tmp_path):
    path = tmp_path / "frames.h5"
    with h5py.File(path, "w") as f:
        f["/data/data_array"] = np.zeros((2, 16, 16), np.float32)
    det = read_geom(_geom("; no beam energy: it comes from the data or the command line"))
    assert math.isnan(det.beam.wavelength_A)
    run = open_run(path, geometry=det)
    with pytest.raises(FrameReadError, match="no wavelength.*--photon-energy"):
        run.frame_geometry(0)
    given = run.with_beam(photon_energy_eV=ENERGY_EV)
    assert given.frame_geometry(1).beam.wavelength_A == pytest.approx(
        H_C_EV_M / ENERGY_EV * 1e10, rel=1e-6)


@pytest.mark.parametrize("as_list", [False, True])
def test_single_frame_files_open_as_one_run(tmp_path, as_list):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(3)
    images = rng.integers(0, 100, size=(5, 16, 16)).astype(np.uint16)
    for i, image in enumerate(images):
        with h5py.File(folder / f"img_{i:05d}.h5", "w") as f:
            f["/data/data_array"] = image
    det = read_geom(_geom("photon_energy = 9000"))
    source = sorted(folder.glob("*.h5")) if as_list else folder
    run = open_run(source, geometry=det)
    assert len(run) == 5
    for i in (0, 3, 4):
        image, _ = run.read(i)
        np.testing.assert_array_equal(np.asarray(image), images[i])


def test_single_frame_files_process_as_one_run(tmp_path):
    """A folder of 2-D images through the pipeline: one frames table, every file once."""
    sample = sx.datasets.load("lysozyme-sample", progress=False)
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(4):
        image, _ = sample.read(i)
        with h5py.File(folder / f"shot_{i:03d}.h5", "w") as f:
            f["/data/data_array"] = np.asarray(image).astype(np.float32)
    geom = sample.geometry.replace(panels=tuple(
        p.replace(data="/data/data_array") for p in sample.geometry.panels))
    run = open_run(folder, geometry=geom)
    res = sx.process_run(run, sx.Params(), executor="serial", progress=False)
    assert res.frames.frame.tolist() == [0, 1, 2, 3]
    assert (res.frames.status == "ok").all()
