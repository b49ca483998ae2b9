"""NXmx writer layout and NXmx geometry reading."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

from sxlab.geometry import Beam, Detector, Panel, builtin_geometry
from sxlab.io.hdf5 import open_run
from sxlab.io.nxmx import NXmxWriter, data_file_name, read_nxmx_geometry, virtual_frame_blocks

DET = "/entry/instrument/detector"


def small_detector(**beam) -> Detector:
    panel = Panel("p0", 0, 19, 0, 9, -8.0, -4.5, clen=0.12)
    return Detector(panels=(panel,), beam=Beam(1.0, **beam), groups=(("all", ("p0",)),))


def _sample_points(det: Detector, rng):
    """Panel index, fs and ss arrays: every panel's four corners plus random points."""
    pid, fs, ss = [], [], []
    for i, p in enumerate(det.panels):
        f = np.concatenate([[0, p.width, 0, p.width], rng.random(4) * p.width]) + p.min_fs
        s = np.concatenate([[0, 0, p.height, p.height], rng.random(4) * p.height]) + p.min_ss
        pid += [i] * f.size
        fs.append(f)
        ss.append(s)
    return np.array(pid), np.concatenate(fs), np.concatenate(ss)


@pytest.mark.parametrize("name", ["eiger4m", "agipd", "mpccd"])
def test_geometry_from_nxmx_without_embedded_text(tmp_path, rng, name):
    det = builtin_geometry(name)
    master = tmp_path / f"{name}_master.h5"
    with NXmxWriter(master, det, embed_geometry=False, compression=None) as w:
        # Stacking is recognised from the virtual dataset, so write a frame.
        w.write(np.zeros(det.data_shape, np.uint16))
    with h5py.File(master) as f:
        assert "crystfel_geometry" not in f[DET]
    back = read_nxmx_geometry(master)
    assert back.panel_names == det.panel_names
    assert back.data_shape == det.data_shape and back.is_stacked == det.is_stacked
    assert back.beam.wavelength_A == pytest.approx(det.beam.wavelength_A, rel=1e-12)
    pid, fs, ss = _sample_points(det, rng)
    np.testing.assert_allclose(back.pixel_to_lab(fs, ss, panel=pid),
                               det.pixel_to_lab(fs, ss, panel=pid), rtol=0, atol=1e-9)
    for a, b in zip(back.panels, det.panels, strict=True):
        assert a.dims == b.dims and a.res == pytest.approx(b.res, rel=1e-12)


@pytest.mark.parametrize("name", ["eiger4m", "agipd"])
def test_embedded_geometry_is_exact(tmp_path, name):
    det = builtin_geometry(name)
    master = tmp_path / "e_master.h5"
    with NXmxWriter(master, det):
        pass
    assert read_nxmx_geometry(master) == det
    with h5py.File(master) as f:
        assert read_nxmx_geometry(f) == det
        text = f[f"{DET}/crystfel_geometry"].asstr()[()]
    assert "min_fs" in text
    assert read_nxmx_geometry(master, prefer_embedded=False).panel_names == det.panel_names


def test_required_nxmx_content(tmp_path, rng):
    det = builtin_geometry("eiger4m", beam_center=(1000.25, 1100.75))
    master = tmp_path / "req_master.h5"
    frames = rng.poisson(1.0, size=(2, *det.data_shape)).astype(np.uint32)
    with NXmxWriter(master, det, dtype="uint32", count_time=0.01, frame_time=0.0101,
                    sample_name="lysozyme", extra_attrs={"run_number": 12},
                    embed_geometry=False) as w:
        w.write_many(frames)
    with h5py.File(master) as f:
        assert f.attrs["NX_class"] == "NXroot" and f.attrs["default"] == "entry"
        e = f["entry"]
        assert e.attrs["NX_class"] == "NXentry" and e.attrs["run_number"] == 12
        assert e["definition"].asstr()[()] == "NXmx"
        for key in ("start_time", "end_time_estimated", "end_time"):
            assert e[key].asstr()[()].endswith("Z")
        assert e["data"].attrs["NX_class"] == "NXdata" and e["data"].attrs["signal"] == "data"
        vds = e["data/data"]
        assert vds.is_virtual and vds.shape == (2, *det.data_shape) and vds.dtype == np.uint32
        link = e["data"].get("data_000001", getlink=True)
        assert isinstance(link, h5py.ExternalLink)
        assert (link.filename, link.path) == ("req_data_000001.h5", "/entry/data/data")
        np.testing.assert_array_equal(vds[1], frames[1])
        assert e["instrument"].attrs["NX_class"] == "NXinstrument"
        wl = e["instrument/beam/incident_wavelength"]
        assert wl[()] == 1.0 and wl.attrs["units"] == "angstrom"
        d = f[DET]
        assert d.attrs["NX_class"] == "NXdetector"
        assert d["sensor_material"].asstr()[()] == "Si"
        assert d["sensor_thickness"].attrs["units"] == "m"
        assert d["distance"][()] == pytest.approx(0.2) and d["distance"].attrs["units"] == "m"
        assert d["beam_center_x"][()] == pytest.approx(1000.25)
        assert d["beam_center_y"][()] == pytest.approx(1100.75)
        assert d["beam_center_x"].attrs["units"] == "pixel"
        assert d["x_pixel_size"][()] == pytest.approx(75e-6)
        assert d["count_time"][()] == 0.01 and d["frame_time"].attrs["units"] == "s"
        assert d["bit_depth_readout"][()] == 32
        assert d["saturation_value"][()] == 2**32 - 3 and d["underload_value"][()] == 0
        pm = d["pixel_mask"]
        assert pm.dtype == np.uint32 and pm.shape == det.data_shape
        np.testing.assert_array_equal(pm[()] != 0, det.bad_pixel_mask())
        assert d["depends_on"].asstr()[()] == f"{DET}/transformations/translation"
        t = d["transformations/translation"]
        assert t.attrs["transformation_type"] == "translation" and t.attrs["depends_on"] == "."
        np.testing.assert_array_equal(t.attrs["vector"], [0, 0, 1])
        m = d["p0"]
        assert m.attrs["NX_class"] == "NXdetector_module"
        np.testing.assert_array_equal(m["data_origin"][()], [0, 0])
        np.testing.assert_array_equal(m["data_size"][()], det.data_shape)
        # The panel position is a module_offset transformation the pixel directions
        # depend on (what dxtbx reads), not an offset on the pixel directions.
        off = m["module_offset"]
        assert off[()] == 0 and off.attrs["transformation_type"] == "translation"
        np.testing.assert_allclose(off.attrs["offset"], [-1000.25 * 75e-6, -1100.75 * 75e-6, 0])
        assert off.attrs["depends_on"] == t.name and off.attrs["offset_units"] == "m"
        fast, slow = m["fast_pixel_direction"], m["slow_pixel_direction"]
        assert fast[()] == pytest.approx(75e-6) and fast.attrs["units"] == "m"
        np.testing.assert_allclose(fast.attrs["vector"], det.panels[0].fs)
        np.testing.assert_allclose(slow.attrs["vector"], det.panels[0].ss)
        for ds in (fast, slow):
            np.testing.assert_array_equal(ds.attrs["offset"], [0, 0, 0])
            assert ds.attrs["depends_on"] == off.name
        assert e["sample"].attrs["NX_class"] == "NXsample"
        assert e["sample/depends_on"].asstr()[()] == "."
        assert e["sample/name"].asstr()[()] == "lysozyme"
        assert e["source"].attrs["NX_class"] == "NXsource"


def test_stacked_modules(tmp_path, rng):
    """Stacked data files, 2-D frames in the master (NXmx), stacked again when read."""
    det = builtin_geometry("agipd")
    frames = rng.normal(size=(3, *det.data_shape)).astype(np.float32)
    master = tmp_path / "a_master.h5"
    with NXmxWriter(master, det, dtype="float32", compression="gzip", embed_geometry=False,
                    frames_per_file=2) as w:
        w.write_many(frames)
    with h5py.File(master) as f:
        m = f[f"{DET}/p3a5"]
        np.testing.assert_array_equal(m["data_origin"][()], [3 * 512 + 320, 0])
        np.testing.assert_array_equal(m["data_size"][()], [64, 128])
        vds = f["/entry/data/data"]
        assert vds.shape == (3, 16 * 512, 128)
        np.testing.assert_array_equal(vds[2], frames[2].reshape(16 * 512, 128))
        assert f[f"{DET}/pixel_mask"].shape == (16 * 512, 128)
        assert f[f"{DET}/bit_depth_readout"][()] == 32
        assert f[f"{DET}/saturation_value"][()] == 65000.0
        assert "underload_value" not in f[DET]  # float data: negative values are valid
    with h5py.File(data_file_name(master, 1)) as f:
        assert f["/entry/data/data"].shape == (2, *det.data_shape)
    run = open_run(master)
    assert run.frame_shape == det.data_shape and run.files == [
        str(data_file_name(master, 1)), str(data_file_name(master, 2))]
    np.testing.assert_array_equal(run.read_raw(2), frames[2])
    back = read_nxmx_geometry(master)
    assert back.is_stacked and [p.dims for p in back.panels] == [p.dims for p in det.panels]
    # The same master read with a 2-D geometry: frames through the virtual dataset.
    flat = read_nxmx_geometry(master).replace(panels=tuple(
        p.replace(min_ss=p.min_ss + p.slab * 512, max_ss=p.max_ss + p.slab * 512,
                  dims=("%", "ss", "fs")) for p in det.panels))
    run2 = open_run(master, geometry=flat)
    assert run2.frame_shape == (16 * 512, 128)
    np.testing.assert_array_equal(run2.read_raw(0), frames[0].reshape(16 * 512, 128))


def test_master_written_at_open(tmp_path, rng):
    det = small_detector()
    frames = rng.integers(0, 100, size=(3, *det.data_shape)).astype(np.uint16)
    master = tmp_path / "live_master.h5"
    w = NXmxWriter(master, det, n_frames=5, frames_per_file=2)
    with h5py.File(master) as f:
        assert f["/entry/data/data"].shape == (5, *det.data_shape)
        assert sorted(f["/entry/data"]) == ["data", "data_000001", "data_000002", "data_000003"]
    w.write_many(frames)
    run = open_run(master)
    assert len(run) == 5
    np.testing.assert_array_equal(run.read_raw(1), frames[1])
    w.close()
    with h5py.File(master) as f:
        assert f["/entry/data/data"].shape == (3, *det.data_shape)
        assert sorted(f["/entry/data"]) == ["data", "data_000001", "data_000002"]
    with h5py.File(data_file_name(master, 2)) as f:
        d = f["/entry/data/data"]
        assert (d.attrs["image_nr_low"], d.attrs["image_nr_high"]) == (3, 3)
    assert len(open_run(master)) == 3

    with NXmxWriter(tmp_path / "two_master.h5", det, n_frames=2) as w:
        w.write_many(frames[:2])
        with pytest.raises(ValueError, match="frame 2: more frames than n_frames=2"):
            w.write(frames[2])


def test_write_validation(tmp_path):
    det = small_detector()
    with NXmxWriter(tmp_path / "v_master.h5", det) as w:
        w.write(np.zeros(det.data_shape, np.int64))  # fits losslessly
        with pytest.raises(ValueError, match=r"frame 1: shape \(10, 21\)"):
            w.write(np.zeros((10, 21), np.uint16))
        with pytest.raises(ValueError, match="frame 1: values of dtype float64"):
            w.write(np.full(det.data_shape, 1.5))
        with pytest.raises(ValueError, match="frame 1: values of dtype int64"):
            w.write(np.full(det.data_shape, -1))
        w.write(np.ones(det.data_shape, bool))
        assert w.n_written == 2
    assert "closed" in repr(w)
    with pytest.raises(ValueError, match="closed"):
        w.write(np.zeros(det.data_shape, np.uint16))
    with pytest.raises(ValueError, match="compression"):
        NXmxWriter(tmp_path / "x_master.h5", det, compression="zip")
    with pytest.raises(ValueError, match="pixel_mask shape"):
        NXmxWriter(tmp_path / "x_master.h5", det, pixel_mask=np.zeros((3, 3)))


def test_write_chunk_direct(tmp_path, rng):
    det = small_detector()
    frames = rng.integers(0, 1000, size=(2, *det.data_shape)).astype(np.uint16)
    src = tmp_path / "src_master.h5"
    with NXmxWriter(src, det) as w:
        w.write_many(frames)
    with h5py.File(data_file_name(src, 1)) as f:
        blobs = [f["/entry/data/data"].id.read_direct_chunk((i, 0, 0))[1] for i in range(2)]
    dst = tmp_path / "dst_master.h5"
    with NXmxWriter(dst, det) as w:
        for b in blobs:
            w.write_chunk(b)
    run = open_run(dst)
    for i in range(2):
        np.testing.assert_array_equal(run.read_raw(i), frames[i])


def test_bandwidth_and_names(tmp_path):
    det = small_detector(bandwidth=0.004)
    det = det.replace(panels=(det.panels[0].replace(name="distance"),),
                      groups=(("all", ("distance",)),))
    master = tmp_path / "b_master.h5"
    with NXmxWriter(master, det, embed_geometry=False):
        pass
    back = read_nxmx_geometry(master)
    assert back.beam.bandwidth == pytest.approx(0.004, rel=1e-12)
    assert back.panel_names == ["distance"]


def _nx(group, name, nx_class):
    g = group.create_group(name)
    g.attrs["NX_class"] = nx_class
    return g


def _transformation(parent, name, value, kind, vector, units, depends_on, offset=None):
    ds = parent.create_dataset(name, data=value)
    ds.attrs.update(transformation_type=kind, vector=np.asarray(vector, float), units=units,
                    depends_on=depends_on)
    if offset is not None:
        ds.attrs.update(offset=np.asarray(offset, float), offset_units="mm")
    return ds


def test_chain_with_rotation_and_units(tmp_path):
    """A hand-written NXmx file: rotated detector arm, lengths in mm, relative references."""
    path = tmp_path / "arm.nxs"
    with h5py.File(path, "w") as f:
        entry = _nx(f, "entry", "NXentry")
        inst = _nx(entry, "instrument", "NXinstrument")
        beam = _nx(inst, "beam", "NXbeam")
        beam["incident_energy"] = 12.39842
        beam["incident_energy"].attrs["units"] = "keV"
        det = _nx(inst, "eiger", "NXdetector")
        tr = _nx(det, "transformations", "NXtransformations")
        _transformation(tr, "two_theta", 30.0, "rotation", [0, 1, 0], "deg", ".")
        _transformation(tr, "distance", 150.0, "translation", [0, 0, 1], "mm", "two_theta")
        mod = _nx(det, "module", "NXdetector_module")
        mod["data_origin"] = np.array([0, 0])
        mod["data_size"] = np.array([10, 20])
        arm = "/entry/instrument/eiger/transformations/distance"
        _transformation(mod, "module_offset", 0.0, "translation", [1, 0, 0], "mm", arm,
                        offset=[1.0, 2.0, 0.0])
        _transformation(mod, "fast_pixel_direction", 100.0, "translation", [-1, 0, 0], "um",
                        "module_offset")
        _transformation(mod, "slow_pixel_direction", 0.1, "translation", [0, -1, 0], "mm",
                        "module_offset")
    det = read_nxmx_geometry(path)
    assert det.panel_names == ["module"] and det.data_shape == (10, 20)
    assert det.beam.wavelength_A == pytest.approx(1.0, rel=1e-6)
    c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
    rot = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    corner = rot @ np.array([0.001, 0.002, 0.150])
    fast, slow = rot @ [-1.0, 0, 0], rot @ [0, -1.0, 0]
    fs, ss = np.array([0.0, 3.5, 20.0]), np.array([0.0, 2.5, 10.0])
    expected = corner + 1e-4 * (fs[:, None] * fast + ss[:, None] * slow)
    np.testing.assert_allclose(det.pixel_to_lab(fs, ss, panel=0), expected, atol=1e-12)
    assert os.path.exists(path)


def test_not_nxmx(tmp_path):
    path = tmp_path / "plain.h5"
    with h5py.File(path, "w") as f:
        f["data"] = np.zeros((2, 3, 3))
    with pytest.raises(ValueError, match="no NXentry/NXdetector"):
        read_nxmx_geometry(path)


def test_virtual_frame_blocks(tmp_path, rng):
    src = rng.integers(0, 9, size=(4, 3, 5, 6)).astype(np.uint16)
    with h5py.File(tmp_path / "src.h5", "w") as f:
        f["d"] = src

    def vds(name, modules, frames=4):
        layout = h5py.VirtualLayout((frames, 15, 6), np.uint16)
        vsrc = h5py.VirtualSource("src.h5", "d", shape=src.shape)
        for m in modules:
            layout[:, m * 5:(m + 1) * 5, :] = vsrc[:frames, m, :, :]
        with h5py.File(tmp_path / f"{name}.h5", "w") as f:
            f.create_virtual_dataset("v", layout, fillvalue=0)
        return tmp_path / f"{name}.h5"

    with h5py.File(vds("full", [0, 1, 2])) as f:
        assert virtual_frame_blocks(f["v"]) == ([(0, 4, "src.h5", "d", 0)], (3, 5, 6))
    run = open_run(tmp_path / "full.h5", data_path="/v")
    assert run.frame_shape == (3, 5, 6) and run.files == [str(tmp_path / "src.h5")]
    np.testing.assert_array_equal(run.read_raw(3), src[3])
    # A module missing, or rows in another order: not whole frames; read through the VDS.
    with h5py.File(vds("part", [0, 2])) as f:
        assert virtual_frame_blocks(f["v"]) is None
    run = open_run(tmp_path / "part.h5", data_path="/v")
    assert run.frame_shape == (15, 6)
    np.testing.assert_array_equal(run.read_raw(1)[5:10], 0)
    layout = h5py.VirtualLayout((4, 15, 6), np.uint16)
    vsrc = h5py.VirtualSource("src.h5", "d", shape=src.shape)
    for m, slot in ((0, 1), (1, 0), (2, 2)):
        layout[:, slot * 5:(slot + 1) * 5, :] = vsrc[:, m, :, :]
    with h5py.File(tmp_path / "swap.h5", "w") as f:
        f.create_virtual_dataset("v", layout, fillvalue=0)
        assert virtual_frame_blocks(f["v"]) is None
