"""Reading runs from real HDF5 files: NXmx masters, data files, CXI, plain HDF5."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import time

import h5py
import hdf5plugin
import numpy as np
import pytest

from sxlab.geometry import BadRegion, Beam, Detector, Panel
from sxlab.io.hdf5 import FrameReadError, Run, open_run
from sxlab.io.nxmx import NXmxWriter, data_file_name

SHAPE = (24, 32)
COMPRESSIONS = ["bslz4", "lz4", "gzip", None]
FILTERS = {
    "bslz4": dict(hdf5plugin.Bitshuffle(cname="lz4")),
    "lz4": dict(hdf5plugin.LZ4()),
    "gzip": {"compression": "gzip"},
    None: {},
}


def flat_detector(bad_region=False) -> Detector:
    panel = Panel("p0", 0, SHAPE[1] - 1, 0, SHAPE[0] - 1, -15.5, -11.0, clen=0.1)
    bad = (BadRegion("gap", 10, 11, 0, SHAPE[0] - 1, panel="p0"),) if bad_region else ()
    return Detector(panels=(panel,), beam=Beam(1.0), bad_regions=bad,
                    groups=(("all", ("p0",)),), name="small")


def stacked_detector() -> Detector:
    panels = tuple(
        Panel(f"m{k}", 0, 19, 0, 15, -20.0 + 25 * k, -8.0, dims=("%", k, "ss", "fs"))
        for k in range(2)
    )
    return Detector(panels=panels, beam=Beam(1.2), groups=(("all", ("m0", "m1")),))


def make_frames(rng, n, dtype, shape=SHAPE) -> np.ndarray:
    dtype = np.dtype(dtype)
    data = rng.poisson(4.0, size=(n, *shape))
    if dtype.kind == "f":
        return (data + rng.random(data.shape)).astype(dtype)
    return data.astype(dtype)


def write_run(path, det, frames, **kwargs) -> str:
    kwargs.setdefault("frames_per_file", 3)
    kwargs.setdefault("dtype", frames.dtype)
    with NXmxWriter(path, det, **kwargs) as w:
        w.write_many(frames)
    return os.fspath(path)


def expected_image(raw: np.ndarray, eiger: bool) -> np.ndarray:
    out = raw.astype(np.float32)
    if raw.dtype.kind == "u":
        top = np.iinfo(raw.dtype).max
        out[(raw >= top - 1) if eiger else (raw == top)] = 0
    elif raw.dtype.kind == "i":
        out[raw < 0] = 0
    else:
        out[~np.isfinite(raw)] = 0
    return out


# ---------------------------------------------------------------- NXmx masters
@pytest.mark.parametrize("compression", COMPRESSIONS)
@pytest.mark.parametrize("dtype", ["uint16", "uint32", "int32", "float32"])
def test_master_roundtrip(tmp_path, rng, compression, dtype):
    frames = make_frames(rng, 7, dtype)
    master = write_run(tmp_path / "r1_master.h5", flat_detector(), frames,
                       compression=compression)
    run = open_run(master)
    assert len(run) == run.n_frames == 7
    assert run.dtype == np.dtype(dtype)
    assert run.files == [data_file_name(master, k) for k in (1, 2, 3)]
    for i in range(7):
        assert run.read_raw(i).dtype == np.dtype(dtype)
        np.testing.assert_array_equal(run.read_raw(i), frames[i])
        img = run[i]
        assert img.dtype == np.float32 and img.dims == ("ss", "fs")
        np.testing.assert_array_equal(img.values, frames[i].astype(np.float32))
    img = run[4]
    assert img.attrs == {
        "frame": 4, "run": "r1", "event": "//1", "source": data_file_name(master, 2),
        "dataset": "/entry/data/data",
    }


def test_data_file_layout(tmp_path, rng):
    frames = make_frames(rng, 7, "uint16")
    master = write_run(tmp_path / "x_master.h5", flat_detector(), frames)
    for k, (low, high) in enumerate([(1, 3), (4, 6), (7, 7)], start=1):
        with h5py.File(data_file_name(master, k)) as f:
            d = f["/entry/data/data"]
            assert d.shape == (high - low + 1, *SHAPE)
            assert d.chunks == (1, *SHAPE)
            assert d.id.get_create_plist().get_filter(0)[0] == 32008
            assert (d.attrs["image_nr_low"], d.attrs["image_nr_high"]) == (low, high)


def test_link_only_master(tmp_path, rng):
    frames = make_frames(rng, 7, "uint16")
    master = write_run(tmp_path / "l_master.h5", flat_detector(), frames)
    with h5py.File(master, "r+") as f:
        del f["/entry/data/data"]
        assert sorted(f["/entry/data"]) == ["data_000001", "data_000002", "data_000003"]
    run = open_run(master)
    assert len(run) == 7
    for i in range(7):
        np.testing.assert_array_equal(run.read_raw(i), frames[i])
    assert run[6].attrs["event"] == "//0"
    assert run[6].attrs["source"] == data_file_name(master, 3)


def test_link_only_master_missing_file(tmp_path, rng):
    master = write_run(tmp_path / "l_master.h5", flat_detector(),
                       make_frames(rng, 7, "uint16"))
    with h5py.File(master, "r+") as f:
        del f["/entry/data/data"]
    os.remove(data_file_name(master, 2))
    with pytest.raises(FileNotFoundError, match="l_data_000002.h5"):
        open_run(master)


def test_single_data_file_uses_sibling_master(tmp_path, rng):
    det = flat_detector(bad_region=True)
    frames = make_frames(rng, 7, "uint16")
    frames[4, 0, 0] = 65534
    master = write_run(tmp_path / "s_master.h5", det, frames, embed_geometry=False)
    run = open_run(data_file_name(master, 2))
    assert len(run) == 3 and run.name == "s"
    img, bad = run.read(1)
    assert img.attrs["frame"] == 1 and img.attrs["event"] == "//1"
    assert bad.values[0, 0] and img.values[0, 0] == 0  # EIGER flag 2**16 - 2
    np.testing.assert_array_equal(bad.values[:, 10:12], True)  # pixel_mask from master
    assert run.geometry is not None and run.geometry.data_shape == SHAPE


def test_stacked_master(tmp_path, rng):
    det = stacked_detector()
    frames = make_frames(rng, 5, "uint16", det.data_shape)
    master = write_run(tmp_path / "st_master.h5", det, frames, frames_per_file=2)
    run = open_run(master)
    assert run.frame_shape == (2, 16, 20)
    img = run[3]
    assert img.dims == ("module", "ss", "fs") == run.geometry.dims
    np.testing.assert_array_equal(img.values, frames[3])
    stack = next(run.iter_chunks(5))
    assert stack.dims == ("frame", "module", "ss", "fs")


# --------------------------------------------------- files written with plain h5py
@pytest.mark.parametrize("compression", COMPRESSIONS)
@pytest.mark.parametrize("dtype", ["uint16", "uint32", "int32", "float32"])
def test_plain_file(tmp_path, rng, compression, dtype):
    frames = make_frames(rng, 4, dtype)
    path = tmp_path / "plain.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("/data/data", data=frames, chunks=(1, *SHAPE),
                         **FILTERS[compression])
        f["/data/energy"] = np.arange(4.0)
    run = open_run(path)
    assert len(run) == 4 and run.name == "plain"
    for i in range(4):
        np.testing.assert_array_equal(run.read_raw(i), frames[i])
    assert run[2].attrs["dataset"] == "/data/data" and run.geometry is None


@pytest.mark.parametrize("where", ["/entry_1/data_1/data", "/entry_1/instrument_1/detector_1/data"])
def test_cxi(tmp_path, rng, where):
    frames = make_frames(rng, 3, "float32")
    with h5py.File(tmp_path / "r0012.cxi", "w") as f:
        f.create_dataset(where, data=frames, chunks=(1, *SHAPE), compression="gzip")
        f.create_dataset("/entry_1/result_1/peakXPosRaw", data=np.zeros((3, 64, 2)))
    run = open_run(tmp_path / "r0012.cxi")
    assert len(run) == 3 and run[2].attrs["dataset"] == where
    np.testing.assert_array_equal(run[1].values, frames[1])


def test_plain_stacked_with_geometry(tmp_path, rng):
    det = stacked_detector()
    frames = make_frames(rng, 3, "float32", det.data_shape)
    with h5py.File(tmp_path / "agipd.h5", "w") as f:
        f["/entry_1/data_1/data"] = frames
    run = open_run(tmp_path / "agipd.h5", geometry=det)
    assert run.geometry is det and run[0].dims == det.dims
    again = pickle.loads(pickle.dumps(run))
    assert again.geometry == det and len(again) == 3
    np.testing.assert_array_equal(run[2].values, frames[2])
    with pytest.raises(ValueError, match="not a stack of 2-D frames"):
        open_run(tmp_path / "agipd.h5", geometry=flat_detector())
    small = Detector(panels=(Panel("p", 0, 20, 0, 9, 0.0, 0.0, dims=("%", 0, "ss", "fs")),),
                     beam=Beam(1.0))
    with pytest.raises(ValueError, match="does not fit"):
        open_run(tmp_path / "agipd.h5", geometry=small)


def test_data_path_selection(tmp_path, rng):
    a, b = make_frames(rng, 3, "uint16"), make_frames(rng, 2, "int32")
    path = tmp_path / "two.h5"
    with h5py.File(path, "w") as f:
        f["a/frames"], f["b/frames"], f["single"] = a, b, a[0]
    with pytest.raises(ValueError, match="several candidate datasets"):
        open_run(path)
    run = open_run(path, data_path="/b/frames")
    assert len(run) == 2 and run.dtype == np.int32
    one = open_run(path, data_path="single")
    assert len(one) == 1 and one[0].attrs["event"] == "//0"
    np.testing.assert_array_equal(one.read_raw(0), a[0])
    with pytest.raises(KeyError, match="nothere"):
        open_run(path, data_path="/nothere")


def test_list_and_glob(tmp_path, rng):
    parts = [make_frames(rng, n, "uint16") for n in (2, 3)]
    for k, p in enumerate(parts):
        with h5py.File(tmp_path / f"part{k}.h5", "w") as f:
            f.create_dataset("data", data=p, **FILTERS["bslz4"])
    run = open_run([tmp_path / "part1.h5", tmp_path / "part0.h5"])
    assert len(run) == 5 and run.name == "part1"
    np.testing.assert_array_equal(run.read_raw(0), parts[1][0])
    np.testing.assert_array_equal(run.read_raw(4), parts[0][1])
    assert run[3].attrs["event"] == "//0" and run[3].attrs["frame"] == 3
    run = open_run(str(tmp_path / "part*.h5"))
    np.testing.assert_array_equal(run.read_raw(2), parts[1][0])
    with pytest.raises(FileNotFoundError):
        open_run(str(tmp_path / "nothing*.h5"))


def test_glob_with_master_skips_its_data_files(tmp_path, rng):
    frames = make_frames(rng, 7, "uint16")
    write_run(tmp_path / "g_master.h5", flat_detector(), frames)
    run = open_run(str(tmp_path / "g_*.h5"))
    assert len(run) == 7
    run = open_run(str(tmp_path / "g_data_*.h5"))
    assert len(run) == 7 and run.name == "g"


def test_interleaved_vds_is_read_through_the_master(tmp_path, rng):
    parts = [make_frames(rng, 3, "uint16") for _ in range(2)]
    layout = h5py.VirtualLayout((6, *SHAPE), np.uint16)
    for k, p in enumerate(parts):
        with h5py.File(tmp_path / f"src{k}.h5", "w") as f:
            f["data"] = p
        layout[k::2] = h5py.VirtualSource(f"src{k}.h5", "data", shape=p.shape)
    with h5py.File(tmp_path / "inter.h5", "w") as f:
        f.create_virtual_dataset("frames", layout)
    with open_run(tmp_path / "inter.h5") as run:
        assert len(run) == 6 and run.files == [str(tmp_path / "inter.h5")]
        np.testing.assert_array_equal(run.read_raw(3), parts[1][1])
        assert run[5].attrs["event"] == "//5"
    assert run.read_raw(4).shape == SHAPE  # reopens after close


# --------------------------------------------------------------------- masks
@pytest.mark.parametrize(
    ("dtype", "bad_values", "good_values"),
    [
        ("uint16", [65535], [65533]),
        ("uint32", [2**32 - 1], [2**32 - 3]),
        ("int32", [-1, -5], [2**31 - 1]),
        ("float32", [np.nan, np.inf, -np.inf], [-3.5]),
    ],
)
def test_value_flags_plain(tmp_path, rng, dtype, bad_values, good_values):
    frames = make_frames(rng, 2, dtype)
    for j, v in enumerate(bad_values + good_values):
        frames[1, 2, j] = v
    if np.dtype(dtype).kind == "u":
        frames[1, 3, 0] = np.iinfo(dtype).max - 1  # only flagged in EIGER/NXmx files
    with h5py.File(tmp_path / "v.h5", "w") as f:
        f["data"] = frames
    img, bad = open_run(tmp_path / "v.h5").read(1)
    nb = len(bad_values)
    assert bad.dtype == bool and bad.dims == img.dims == ("ss", "fs")
    assert bad.values[2, :nb].all() and bad.values.sum() == nb
    np.testing.assert_array_equal(img.values[2, :nb], 0)
    np.testing.assert_array_equal(img.values, expected_image(frames[1], eiger=False))
    assert np.isfinite(img.values).all()


@pytest.mark.parametrize("dtype", ["uint16", "uint32"])
def test_value_flags_eiger(tmp_path, rng, dtype):
    frames = make_frames(rng, 2, dtype)
    top = np.iinfo(dtype).max
    frames[0, 1, 1], frames[0, 1, 2], frames[0, 1, 3] = top, top - 1, top - 2
    master = write_run(tmp_path / "e_master.h5", flat_detector(), frames)
    img, bad = open_run(master).read(0)
    np.testing.assert_array_equal(bad.values[1, 1:4], [True, True, False])
    assert bad.values.sum() == 2
    np.testing.assert_array_equal(img.values, expected_image(frames[0], eiger=True))


def test_pixel_mask(tmp_path, rng):
    frames = make_frames(rng, 3, "uint16")
    frames[1, 0, 0] = 65535
    pm = np.zeros(SHAPE, np.uint32)
    pm[5, 6] = 1 << 4  # noisy
    pm[7, :] = 1 << 1  # dead row
    master = write_run(tmp_path / "pm_master.h5", flat_detector(bad_region=True), frames,
                       pixel_mask=pm)
    run = open_run(master)
    img, bad = run.read(1)
    expected = pm != 0
    expected[0, 0] = True
    np.testing.assert_array_equal(bad.values, expected)
    assert img.values[5, 6] == frames[1, 5, 6]  # masked pixels keep their values
    np.testing.assert_array_equal(run.mask(1).values, expected)

    derived = write_run(tmp_path / "d_master.h5", flat_detector(bad_region=True), frames)
    with h5py.File(derived) as f:
        stored = f["/entry/instrument/detector/pixel_mask"][()]
    assert stored.dtype == np.uint32
    np.testing.assert_array_equal(stored, flat_detector(bad_region=True).bad_pixel_mask())
    _, bad = open_run(derived).read(0)
    np.testing.assert_array_equal(bad.values[:, 10:12], True)


# ------------------------------------------------------- slicing, chunks, pickling
@pytest.fixture
def seven(tmp_path, rng):
    frames = make_frames(rng, 7, "uint16")
    return open_run(write_run(tmp_path / "r_master.h5", flat_detector(), frames)), frames


def test_slicing(seven):
    run, frames = seven
    assert run[-1].attrs["frame"] == 6
    sub = run[2:6]
    assert isinstance(sub, Run) and len(sub) == 4
    assert sub[0].attrs["frame"] == 2 and sub[-1].attrs["frame"] == 5
    assert sub.files == run.files[:2]
    np.testing.assert_array_equal(sub[1].values, frames[3])
    picked = run[[6, 0, -2]]
    assert [picked[i].attrs["frame"] for i in range(3)] == [6, 0, 5]
    assert [img.attrs["frame"] for img in run[::-3]] == [6, 3, 0]
    nested = run[1:][::2][1:]
    assert [nested[i].attrs["frame"] for i in range(len(nested))] == [3, 5]
    mask = np.zeros(7, bool)
    mask[[1, 4]] = True
    assert [img.attrs["frame"] for img in run[mask]] == [1, 4]
    assert len(run[7:]) == 0 and len(run[[]]) == 0
    for bad in (7, -8):
        with pytest.raises(IndexError):
            run[bad]
    with pytest.raises(IndexError):
        run[[0, 9]]
    with pytest.raises(TypeError):
        run["x"]


def test_iter_chunks(seven):
    run, frames = seven
    chunks = list(run.iter_chunks(3))
    assert [c.sizes["frame"] for c in chunks] == [3, 3, 1]
    assert chunks[0].dims == ("frame", "ss", "fs") and chunks[0].dtype == np.float32
    np.testing.assert_array_equal(chunks[1].values, frames[3:6])
    np.testing.assert_array_equal(chunks[1].frame.values, [3, 4, 5])
    assert list(chunks[1].event.values) == ["//0", "//1", "//2"]
    sub_chunks = list(run[[5, 1]].iter_chunks(4, with_mask=True))
    (img, bad), = sub_chunks
    np.testing.assert_array_equal(img.frame.values, [5, 1])
    assert bad.dtype == bool and bad.shape == img.shape
    with pytest.raises(ValueError):
        next(run.iter_chunks(0))


def _frame_sum(run, i):
    return float(run[i].values.sum())


def test_pickle(seven):
    run, frames = seven
    run[0]  # handles are open now
    copy = pickle.loads(pickle.dumps(run[1:]))
    assert len(copy) == 6
    np.testing.assert_array_equal(copy[2].values, frames[3])
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        raw = pool.apply(copy.read_raw, (5,))
    np.testing.assert_array_equal(raw, frames[6])


def test_repr(seven):
    run, _ = seven
    text = repr(run)
    assert "'r'" in text and "7 frame(s) in 3 file(s)" in text
    page = run._repr_html_()
    assert "r_data_000003.h5" in page and "<table>" in page


# ----------------------------------------------------------------------- errors
def _corrupt(path, frame, *, at="middle", data=b"\xff" * 32):
    with h5py.File(path) as f:
        info = f["/entry/data/data"].id.get_chunk_info(frame)
    offset = {"middle": info.size // 2, "start": 0, "first_block": 12}[at]
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset + offset)
        fh.write(data)


@pytest.mark.parametrize(
    ("compression", "at", "data"),
    [
        ("gzip", "middle", b"\xff" * 32),
        ("lz4", "middle", b"\xff" * 32),
        ("bslz4", "first_block", b"\x7f\xff\xff\xff"),
        ("bslz4", "start", b"\x00" * 8),
    ],
)
def test_corrupt_chunk(tmp_path, rng, compression, at, data):
    frames = make_frames(rng, 7, "uint16", (64, 80))
    det = Detector(panels=(Panel("p0", 0, 79, 0, 63, -40.0, -32.0),), beam=Beam(1.0))
    master = write_run(tmp_path / "c_master.h5", det, frames, compression=compression)
    bad_file = data_file_name(master, 2)
    _corrupt(bad_file, 1, at=at, data=data)
    run = open_run(master)
    with pytest.raises(FrameReadError) as exc:
        run[4]
    err = exc.value
    msg = str(err)
    assert bad_file in msg and "frame 4 " in msg and "frame 1 in file" in msg
    assert (err.path, err.frame, err.index_in_file) == (bad_file, 4, 1)
    assert err.dataset == "/entry/data/data"
    np.testing.assert_array_equal(run[5].values, frames[5])
    np.testing.assert_array_equal(run.read_raw(3), frames[3])
    again = pickle.loads(pickle.dumps(err))
    assert isinstance(again, FrameReadError) and again.frame == 4 and str(again) == msg


def test_missing_data_file(tmp_path, rng):
    frames = make_frames(rng, 7, "uint16")
    master = write_run(tmp_path / "m_master.h5", flat_detector(), frames)
    missing = data_file_name(master, 2)
    os.remove(missing)
    run = open_run(master)
    assert len(run) == 7
    for i in (3, 4, 5):
        with pytest.raises(FrameReadError, match="m_data_000002.h5") as exc:
            run.read(i)
        assert exc.value.path == missing and exc.value.frame == i
    np.testing.assert_array_equal(run[6].values, frames[6])
    np.testing.assert_array_equal(run[2].values, frames[2])
    with pytest.raises(FrameReadError):
        list(run.iter_chunks(7))


def test_shape_mismatch_and_truncated_file(tmp_path, rng):
    frames = make_frames(rng, 7, "uint16")
    master = write_run(tmp_path / "t_master.h5", flat_detector(), frames)
    with h5py.File(data_file_name(master, 2), "w") as f:
        f["/entry/data/data"] = np.zeros((3, 10, 10), np.uint16)
    with h5py.File(data_file_name(master, 3), "w") as f:
        f.create_dataset("/entry/data/data", shape=(0, *SHAPE), dtype=np.uint16)
    run = open_run(master)
    with pytest.raises(FrameReadError, match=r"frame shape \(10, 10\) differs"):
        run[3]
    with pytest.raises(FrameReadError, match="holds only 0 frames") as exc:
        run[6]
    assert exc.value.index_in_file == 0
    np.testing.assert_array_equal(run[2].values, frames[2])


# ------------------------------------------------------------------ laziness
def test_open_large_master_is_lazy(tmp_path):
    n_files, per_file, shape = 10, 1000, (512, 1024)
    layout = h5py.VirtualLayout((n_files * per_file, *shape), np.uint16)
    master = tmp_path / "big_master.h5"
    for k in range(n_files):
        src = h5py.VirtualSource(f"big_data_{k + 1:06d}.h5", "/entry/data/data",
                                 shape=(per_file, *shape))
        layout[k * per_file : (k + 1) * per_file] = src
    with h5py.File(master, "w") as f:
        f.create_group("entry").attrs["NX_class"] = "NXentry"
        f["entry"].create_virtual_dataset("data/data", layout, fillvalue=0)
    t0 = time.perf_counter()
    run = open_run(master)
    assert len(run) == 10_000 and len(run.files) == n_files
    sub = run[::7]
    assert time.perf_counter() - t0 < 0.5
    assert len(sub) == 1429
    with pytest.raises(FrameReadError, match="big_data_000003.h5"):
        run[2500]


def test_open_reads_no_frame_data(tmp_path, rng, monkeypatch):
    n = 10_000
    with h5py.File(tmp_path / "many.h5", "w") as f:
        f.create_dataset("data", data=np.arange(n * 16, dtype=np.uint16).reshape(n, 4, 4),
                         chunks=(1, 4, 4))
    reads = []
    for method in ("__getitem__", "read_direct"):
        orig = getattr(h5py.Dataset, method)

        def counting(self, *args, _orig=orig, **kwargs):
            reads.append(self.name)
            return _orig(self, *args, **kwargs)

        monkeypatch.setattr(h5py.Dataset, method, counting)
    t0 = time.perf_counter()
    run = open_run(tmp_path / "many.h5")
    assert len(run) == n and len(run[5000:]) == 5000
    assert time.perf_counter() - t0 < 0.5
    assert reads == []
    expected = (np.arange(16) + 9999 * 16).astype(np.uint16)
    np.testing.assert_array_equal(run.read_raw(9999).ravel(), expected)
    assert reads == ["/data"]
