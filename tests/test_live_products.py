"""Live data products: the NeXus writer group, storage policies and the binning worker.

Frames enter the broker the way the ingest puts them there (EIGER messages of both
stream formats decoded by :class:`~sxlab.live.ingest.Ingest`, no sockets), or, for
layouts an EIGER stream cannot carry (stacked modules), as broker entries of the same
layout. Every test starts its own loopback Redis server.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import h5py
import numpy as np
import pytest
from conftest import run_sxlab, wait_until

import sxlab as sx
from sxlab.io.compression import compress, decompress
from sxlab.io.nxmx import data_file_name
from sxlab.live.broker import derived_key
from sxlab.live.eiger import ImageMessage, SeriesEnd, encode
from sxlab.live.ingest import Ingest
from sxlab.live.replay import Replay
from sxlab.live.writer import LiveWriter, input_streams

pytestmark = pytest.mark.service

SAMPLE = "datasets/samples/lysozyme-sample_master.h5"


@pytest.fixture(scope="module")
def sample():
    return sx.open_run(SAMPLE)


class Feeder:
    """Sends a run through the ingest as EIGER messages, a few at a time."""

    def __init__(self, broker, run, *, fmt="stream1", n_frames=None, encoding="bslz4",
                 name="run1"):
        self.rep = Replay(run, fmt=fmt, frames=n_frames, loop=True, run_name=name)
        self.ingest = Ingest("tcp://unused", broker)
        self.fmt = fmt
        self.encoding = encoding
        self.blobs: dict[int, bytes] = {}
        self.next = 0
        self.ingest.handle(encode(self.rep.header(), fmt))
        self.key = broker.key(name)

    def image(self, f: int) -> ImageMessage:
        msg = self.rep.image(f)
        if self.encoding != "bslz4":
            raw = decompress(msg.blob, "bslz4", msg.shape, msg.dtype)
            msg = ImageMessage(msg.series, f, msg.shape, msg.dtype, self.encoding,
                               compress(raw, self.encoding))
        return msg

    def send(self, n: int | None = None) -> None:
        stop = self.rep.n_frames if n is None else min(self.next + n, self.rep.n_frames)
        for f in range(self.next, stop):
            msg = self.image(f)
            self.blobs[f] = bytes(msg.blob)
            self.ingest.handle(encode(msg, self.fmt))
        self.next = stop

    def end(self) -> None:
        self.send()
        self.ingest.handle(encode(SeriesEnd(self.rep.series), self.fmt))


def _chunks(master) -> dict[int, bytes]:
    """Stored chunk of every frame, keyed by source frame number."""
    out = {}
    k = 1
    while os.path.exists(path := data_file_name(master, k)):
        with h5py.File(path) as f:
            ds, numbers = f["entry/data/data"], f["entry/data/frame_number"][()]
            for i, frame in enumerate(numbers):
                out[int(frame)] = ds.id.read_direct_chunk((i, 0, 0))[1]
        k += 1
    return out


# ------------------------------------------------------------------------ round trip
@pytest.mark.parametrize(("fmt", "encoding"), [("stream1", "bslz4"), ("stream2", "bslz4"),
                                               ("stream1", "lz4"), ("stream2", "lz4-hdf5")])
def test_round_trip_bit_for_bit_and_blobs_byte_for_byte(tmp_path, broker, sample, fmt,
                                                        encoding):
    n, per_file = 25, 10
    feed = Feeder(broker, sample, fmt=fmt, n_frames=n, encoding=encoding)
    feed.end()
    writer = LiveWriter(broker, feed.key, tmp_path, frames_per_file=per_file)
    summary = writer.run(idle_timeout_s=30)
    assert writer.done and (summary.stored, summary.failed, summary.recoded) == (n, 0, 0)
    master = tmp_path / "run1_master.h5"
    run = sx.open_run(master)
    assert len(run) == n and run.frame_shape == sample.frame_shape
    for f in range(n):
        np.testing.assert_array_equal(run.read_raw(f), sample.read_raw(f % len(sample)))
    chunks = _chunks(master)
    assert sorted(chunks) == list(range(n))
    for f, blob in feed.blobs.items():
        if encoding == "lz4":   # a bare LZ4 block gets the 16-byte HDF5-LZ4 framing only
            assert chunks[f][16:] == blob
        else:
            assert chunks[f] == blob
    with h5py.File(master) as m:
        np.testing.assert_array_equal(m["entry/data/frame_number"][()], np.arange(n))
        st = m["entry/storage"]
        assert st["policy"].asstr()[()] == "all" and st["source_frames"][()] == n
        assert len(st["failed_frame_number"]) == 0
        assert m["entry/instrument/detector/pixel_mask"].shape == sample.frame_shape
    for k, (lo, hi) in enumerate([(1, 10), (11, 20), (21, 25)], start=1):
        with h5py.File(data_file_name(master, k)) as f:
            d = f["entry/data/data"]
            assert (d.attrs["image_nr_low"], d.attrs["image_nr_high"]) == (lo, hi)
    assert not list(tmp_path.glob("*.part"))
    g = broker.status(feed.key).set_index("group").loc["write"]
    assert (g.pending, g.lag) == (0, 0)


def test_input_streams():
    assert input_streams("sx:b:eiger:r", "frames") == ("sx:b:eiger:r", "sx:b:eiger:r", "all")
    assert input_streams("sx:b:eiger:r", "hits") == ("sx:b:eiger_hits:r", "sx:b:eiger:r",
                                                     "hits")
    assert input_streams("sx:b:eiger:r", "binned3") == ("sx:b:eiger_binned3:r",
                                                        "sx:b:eiger_binned3:r", "all")
    assert derived_key("sx:b:eiger:r", "indexed") == input_streams("sx:b:eiger:r",
                                                                   "indexed")[0]


# ------------------------------------------------------------------ storage policies
PROVENANCE = {"worker", "read_s", "peaks_s", "index_s", "integrate_s", "total_s",
              "wait_s", "filename", "event", "run"}


@pytest.fixture(scope="module")
def params():
    from sxlab import datasets
    from sxlab.demo import demo_params

    return demo_params(datasets.truth("lysozyme-sample"))


def _same_rows(live, again, mapping, kind):
    """Rows of ``again`` (frames renumbered through ``mapping``) equal those of ``live``."""
    import pandas as pd

    a = again.copy()
    a["frame"] = np.asarray(mapping)[a["frame"].to_numpy()]
    b = live[live.frame.isin(mapping)]
    cols = [c for c in b.columns if c not in PROVENANCE]
    key = [c for c in ("frame", "crystal", "h", "k", "l", "fs", "ss") if c in cols]
    pd.testing.assert_frame_equal(a[cols].sort_values(key).reset_index(drop=True),
                                  b[cols].sort_values(key).reset_index(drop=True), obj=kind)


@pytest.mark.parametrize("policy", ["hits", "indexed"])
def test_storage_policy_stores_the_selection_and_reprocesses_the_same(
        tmp_path, broker, sample, params, policy):
    from sxlab.live.storage import blank_sample, set_storage_policy
    from sxlab.live.worker import LiveWorker

    n, fraction, seed = 40, 0.3, 11
    feed = Feeder(broker, sample, n_frames=n)
    set_storage_policy(broker, feed.key, blank_fraction=fraction, blank_seed=seed)
    feed.end()
    worker = LiveWorker(broker, feed.key, tmp_path / "out", params, claim_idle_s=1,
                        publish=("results", policy))
    worker.run(idle_timeout_s=60)
    live = worker.output.finish(broker, feed.key)
    writer = LiveWriter(broker, feed.key, tmp_path / "raw", input=policy,
                        frames_per_file=8)
    writer.run(idle_timeout_s=60)
    assert writer.done
    master = tmp_path / "raw" / f"run1_{policy}_master.h5"
    selected = live.frames[live.frames[{"hits": "hit", "indexed": "indexed"}[policy]]]
    kept = set(selected.frame)
    blanks = {f for f in range(n) if f not in kept and blank_sample(f, fraction, seed)}
    assert kept and blanks and len(kept) < n
    with h5py.File(master) as m:
        numbers = m["entry/data/frame_number"][()]
        flags = m["entry/data/blank_sample"][()]
        st = m["entry/storage"]
        assert st["policy"].asstr()[()] == policy
        assert st["blank_sample_fraction"][()] == fraction
        assert st["blank_sample_seed"][()] == seed and st["source_frames"][()] == n
    assert sorted(numbers) == sorted(kept | blanks)         # each exactly once
    assert {int(f) for f, b in zip(numbers, flags, strict=True) if b} == blanks
    run = sx.open_run(master)
    for i, f in enumerate(numbers):
        np.testing.assert_array_equal(run.read_raw(i), sample.read_raw(int(f) % len(sample)))
    # `sxlab process` on the stored file gives the live results of those frames.
    params.save(tmp_path / "trial.toml")
    cmd = [sys.executable, "-m", "sxlab", "process", str(master), "--params",
           str(tmp_path / "trial.toml"), "--out", str(tmp_path / "again"), "-j", "1",
           "--no-progress"]
    assert subprocess.run(cmd, capture_output=True, timeout=300).returncode == 0
    again = sx.Results.load(tmp_path / "again")
    for kind in ("frames", "peaks", "crystals", "reflections"):
        _same_rows(getattr(live, kind), getattr(again, kind), numbers, kind)


# --------------------------------------------------------------------------- faults
def _delivered(broker, key, group="write") -> int:
    """Entry-id number of the last entry handed to ``group`` (frame + 1)."""
    for g in broker.groups(key):
        name = g["name"].decode() if isinstance(g["name"], bytes) else g["name"]
        if name == group:
            last = g["last-delivered-id"]
            return int((last.decode() if isinstance(last, bytes) else last).split("-")[0])
    return 0


def _assert_every_frame_once(master, n, sample):
    with h5py.File(master) as m:
        numbers = m["entry/data/frame_number"][()]
        assert len(m["entry/storage/failed_frame_number"]) == 0
    np.testing.assert_array_equal(numbers, np.arange(n))
    run = sx.open_run(master)
    assert len(run) == n
    for f in range(n):
        np.testing.assert_array_equal(run.read_raw(f), sample.read_raw(f % len(sample)))
    assert not list(master.parent.glob("*.part"))


def test_writer_killed_mid_file_restarts_without_gap_or_duplicate(tmp_path, broker,
                                                                  sample):
    n, per_file = 30, 10
    feed = Feeder(broker, sample, n_frames=n)
    feed.send(15)
    out = tmp_path / "raw"
    master = out / "run1_master.h5"
    log = open(tmp_path / "writer.log", "ab")  # noqa: SIM115
    args = ["live", "write", "--broker", broker.url, "--beamtime", broker.beamtime,
            "--run", "run1", "--out", out, "--frames-per-file", per_file]
    first = run_sxlab(*args, log=log)
    try:
        wait_until(lambda: _delivered(broker, feed.key) >= 15 and os.path.exists(
            data_file_name(master, 1)), 60, "the writer to read 15 frames")
        time.sleep(0.3)
        assert os.path.exists(data_file_name(master, 2) + ".part")     # mid-file
        assert len(sx.open_run(master)) == per_file                     # master opens
        first.send_signal(signal.SIGKILL)
        first.wait()
        pending = broker.client.xpending(feed.key, "write")["pending"]
        assert pending == 5                  # the frames of the unfinished file
        feed.end()
        second = run_sxlab(*args, "--name", "writer-2", log=log)          # any name
        assert second.wait(60) == 0
    finally:
        for p in (first, locals().get("second")):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
        log.close()
    _assert_every_frame_once(master, n, sample)
    assert broker.client.xpending(feed.key, "write")["pending"] == 0


def test_frames_stored_but_not_acknowledged_are_not_stored_twice(tmp_path, broker, sample):
    n, per_file = 24, 10
    feed = Feeder(broker, sample, n_frames=n)
    feed.send(15)
    w1 = LiveWriter(broker, feed.key, tmp_path, frames_per_file=per_file)
    w1.group.ack = lambda ids, pipeline=None: None      # dies before acknowledging
    while w1.step(block_s=None):
        pass
    assert w1.summary.files == 1 and w1.writer.frames_in_file == 5
    del w1                                               # (its .part file stays)
    feed.end()
    w2 = LiveWriter(broker, feed.key, tmp_path, frames_per_file=per_file,
                    consumer="other")
    s = w2.run(idle_timeout_s=30)
    assert w2.done and s.skipped == per_file and s.stored == n - per_file
    _assert_every_frame_once(tmp_path / "run1_master.h5", n, sample)


# ------------------------------------------------------------------------------ lag
def test_a_writer_that_falls_behind_shows_its_lag(tmp_path, broker, sample, caplog):
    feed = Feeder(broker, sample, n_frames=30)
    feed.send(30)
    writer = LiveWriter(broker, feed.key, tmp_path, frames_per_file=10, batch=4)
    assert writer.lag() == 30
    row = broker.status(feed.key).set_index("group").loc["write"]
    assert row.lag == 30
    writer.step(block_s=None)                # the header and frames 0-2
    writer.step(block_s=None)                # frames 3-6
    assert writer.lag() == 23 and writer.status().loc[0, "lag"] == 23
    assert writer.status().loc[0, "in_open_file"] == 7
    feed.end()
    writer.run(idle_timeout_s=30)
    assert writer.lag() == 0 and writer.summary.max_lag == 27
    assert broker.status(feed.key).set_index("group").loc["write"].lag == 0
    assert int(broker.info(feed.key)["writer:frames:lag"]) == 0
    assert "the writer is 27 entries behind" in caplog.text


# -------------------------------------------------------------------------- binning
def test_binning_worker_publishes_binned_frames_and_geometry(tmp_path, broker, sample):
    from reference.binning import bin_sum

    from sxlab.binning import bin_geometry, bin_mask
    from sxlab.io.hdf5 import value_flags
    from sxlab.io.nxmx import read_nxmx_geometry
    from sxlab.live.binner import LiveBinner
    from sxlab.live.worker import LiveWorker, geometry_from_header
    from sxlab.masks import Mask

    n, f = 10, 2
    feed = Feeder(broker, sample, n_frames=n)
    feed.end()
    binner = LiveBinner(broker, feed.key, f)
    s = binner.run(idle_timeout_s=30)
    assert binner.done and (s.frames, s.failed) == (n, 0)
    key = derived_key(feed.key, "binned2")
    header = broker.header(key)
    geom = bin_geometry(sample.geometry, f)
    assert geometry_from_header(header) == geom
    assert header["appendix"]["binning"] == {"factor": 2, "source": feed.key,
                                             "bad_fraction": 0.0}
    static = sample.pixel_mask() != 0
    np.testing.assert_array_equal(
        header["pixel_mask"] != 0,
        bin_mask(Mask.from_bad(static), f, geometry=sample.geometry).bad)
    entries = broker.client.xrange(key)
    assert [e[1][b"type"] for e in entries] == [b"header"] + [b"image"] * n + [b"end"]
    assert [e[0] for e in entries[1:-1]] == [f"{i + 1}-0".encode() for i in range(n)]
    h, w = sample.frame_shape
    layout = [(0, 0, 0, 0, 0, h // f, w // f)]
    for i, (_, fields) in enumerate(entries[1:-1]):
        raw = sample.read_raw(i % len(sample))
        bad = value_flags(raw, True) | static
        ref, ref_bad = bin_sum(raw[None], bad[None], layout, f, 0, True)
        expected = np.rint(ref[0]).astype(np.uint32)
        expected[ref_bad[0]] = 2**32 - 1
        got = decompress(fields[b"data"], "bslz4", geom.data_shape, np.uint32)
        np.testing.assert_array_equal(got, expected)
    info = broker.info(key)
    assert (info["state"], int(info["n_frames"]), int(info["frames_in"])) == ("ended", n, n)
    # The binned stream is a run like any other: the writer stores it ...
    writer = LiveWriter(broker, feed.key, tmp_path / "raw", input="binned2",
                        frames_per_file=4)
    writer.run(idle_timeout_s=30)
    master = tmp_path / "raw" / "run1_binned2_master.h5"
    assert writer.done and read_nxmx_geometry(master) == geom
    with h5py.File(master) as m:
        assert m["entry/storage/binning_factor"][()] == 2
    run = sx.open_run(master)
    np.testing.assert_array_equal(run.read_raw(3), decompress(entries[4][1][b"data"],
                                                              "bslz4", geom.data_shape,
                                                              np.uint32))
    # ... and a worker processes it with pixel lengths and counts scaled to the binning.
    worker = LiveWorker(broker, key, tmp_path / "out", claim_idle_s=1)
    assert worker.params.integrate.radii == tuple(r / 2 for r in
                                                   sx.Params().integrate.radii)


def _orientation(row) -> np.ndarray:
    """Rotation taking the cell's standard reciprocal basis to the found one."""
    from test_index import ASTAR

    astar = row[ASTAR].to_numpy(float).reshape(3, 3)
    b = sx.UnitCell(row.a, row.b, row.c, row.alpha, row.beta, row.gamma).reciprocal_basis
    u, _, vt = np.linalg.svd(np.linalg.solve(b, astar).T)
    return u @ vt


@pytest.mark.slow
@pytest.mark.parametrize("where", ["binning worker", "in the worker"])
def test_binned_16m_run_indexes_the_same_crystals(tmp_path, broker, where):
    """2x2-binned 16M frames, processed live, give the crystals of the unbinned frames,
    binned by the binning worker (a second stream) or by the processing worker itself."""
    from test_index import laue_rotations

    from sxlab import datasets
    from sxlab.demo import demo_params
    from sxlab.live.binner import LiveBinner
    from sxlab.live.worker import LiveWorker

    run = datasets.load("lysozyme-16m", progress=False)
    params = demo_params(datasets.truth("lysozyme-16m"))
    unbinned = sx.process_run(run, params, executor="local", n_workers=1, progress=False)
    feed = Feeder(broker, run, n_frames=len(run), name="r16")
    feed.end()
    if where == "binning worker":
        LiveBinner(broker, feed.key, 2).run(idle_timeout_s=60)
        worker = LiveWorker(broker, derived_key(feed.key, "binned2"), tmp_path / "out",
                            params, claim_idle_s=1)
    else:
        worker = LiveWorker(broker, feed.key, tmp_path / "out", params, claim_idle_s=1,
                            bin_factor=2)
    worker.run(idle_timeout_s=120)
    binned = worker.output.finish(broker, worker.key)
    a = unbinned.crystals.set_index("frame")
    b = binned.crystals.set_index("frame")
    assert len(a) >= 4 and list(a.index) == list(b.index)       # same frames, one each
    rotations = laue_rotations(params.cell)
    for frame in a.index:
        ua, ub = _orientation(a.loc[frame]), _orientation(b.loc[frame])
        err = min(np.degrees(np.arccos(np.clip((np.trace(ub @ (ua @ s).T) - 1) / 2, -1, 1)))
                  for s in rotations)
        assert err < 0.05, f"frame {frame}: orientations differ by {err:.3f} deg"
    if where == "in the worker":
        # positions in the detector's own pixels: the strong peaks of the unbinned run
        # are found within a binned pixel of where the binned processing puts them
        assert binned.geometry == run.geometry
        for frame in a.index:
            pa = unbinned.peaks[unbinned.peaks.frame == frame].nlargest(10, "intensity")
            pb = binned.peaks[binned.peaks.frame == frame]
            d = np.hypot(pa.fs.to_numpy()[:, None] - pb.fs.to_numpy()[None],
                         pa.ss.to_numpy()[:, None] - pb.ss.to_numpy()[None]).min(axis=1)
            assert np.median(d) < 1.0 and (d < 2.0).mean() >= 0.8, d
            ra = unbinned.reflections[unbinned.reflections.frame == frame]
            rb = binned.reflections[binned.reflections.frame == frame]
            # (Miller indices may differ by a symmetry operation: compare positions)
            d = np.hypot(ra.fs.to_numpy()[:, None] - rb.fs.to_numpy()[None],
                         ra.ss.to_numpy()[:, None] - rb.ss.to_numpy()[None]).min(axis=1)
            assert 0.7 < len(rb) / len(ra) < 1.3 and np.median(d) < 1.0, (len(rb), d)


@pytest.mark.slow
def test_live_run_bins_in_the_workers(tmp_path, redis_url, params, sample):
    """``sxlab live run --bin 2`` without --write: two workers bin each frame as they
    decode it; every frame once, the binned processing's results, positions in the
    detector's own pixels."""
    from sxlab.binning import Binner
    from sxlab.live.binner import binned_params
    from sxlab.live.server import free_port
    from sxlab.live.supervisor import run_live
    from sxlab.masks import Mask
    from sxlab.pipeline import prepare, process_frame

    n = 24
    ppath = tmp_path / "trial.toml"
    params.save(ppath)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    replay = run_sxlab("replay", SAMPLE, "--endpoint", endpoint, "--rate", 50, "--frames", n,
                       "--loop", "--run-name", "wbin")
    try:
        summary = run_live(endpoint, ppath, tmp_path / "out", n_workers=2,
                           broker_url=redis_url, beamtime=f"t{uuid.uuid4().hex[:8]}",
                           claim_idle_s=5, timeout_s=400, progress=False, bin_factor=2)
    finally:
        replay.wait(60)
    res = summary.results
    frames = res.frames
    assert frames.frame.tolist() == list(range(n)) and (frames.status == "ok").all()
    assert sum(summary.restarts.values()) == 0
    assert res.geometry == sample.geometry          # the detector's geometry, not binned
    assert sx.Params.load(tmp_path / "out" / "params.toml") == binned_params(params, 2)
    # the same numbers as binning and processing here (frame f is sample frame f % 8)
    binner = Binner(sample.geometry, Mask.from_bad(sample.pixel_mask() != 0), 2)
    ctx = prepare(binner.geometry, binned_params(params, 2))
    image = np.empty(binner.geometry.data_shape, np.float32)
    bad = np.empty(image.shape, bool)
    for f in range(n):
        binner.bin_stored_into(sample.read_raw(f % len(sample)), image, bad)
        r = process_frame(image, bad, ctx, frame=f)
        want = binner.unbin_peaks(r.peaks) if len(r.peaks) else r.peaks
        got = res.peaks[res.peaks.frame == f]
        assert len(got) == len(want)
        for col in ("fs", "ss", "intensity", "panel"):
            np.testing.assert_allclose(got[col].to_numpy(float), want[col].to_numpy(float))
        assert (res.crystals.frame == f).sum() == len(r.crystals)
    assert frames.indexed.sum() >= 4
    # and, independently, those positions are where the unbinned frames have their peaks
    unbinned = sx.process_run(sample, params, executor="serial", progress=False)
    for f in unbinned.frames.frame[unbinned.frames.hit]:
        pa = unbinned.peaks[unbinned.peaks.frame == f].nlargest(5, "intensity")
        pb = res.peaks[res.peaks.frame == f]
        d = np.hypot(pa.fs.to_numpy()[:, None] - pb.fs.to_numpy()[None],
                     pa.ss.to_numpy()[:, None] - pb.ss.to_numpy()[None]).min(axis=1)
        assert np.median(d) < 1.0, (f, d)


# ----------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_live_run_writes_binned_hits_with_blank_sample(tmp_path, redis_url, params):
    """``sxlab live run --write DIR --store hits --blank-sample 0.3 --bin 2``."""
    from sxlab.binning import bin_geometry
    from sxlab.live.server import free_port
    from sxlab.live.storage import blank_sample
    from sxlab.live.supervisor import run_live

    n = 24
    ppath = tmp_path / "trial.toml"
    params.save(ppath)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    replay = run_sxlab("replay", SAMPLE, "--endpoint", endpoint, "--rate", 50, "--frames", n,
                     "--loop", "--format", "stream2", "--run-name", "e2e")
    try:
        summary = run_live(endpoint, ppath, tmp_path / "out", n_workers=1,
                           broker_url=redis_url, beamtime=f"t{uuid.uuid4().hex[:8]}",
                           claim_idle_s=5, timeout_s=400, progress=False,
                           write=tmp_path / "raw", store="hits", blank_sample=0.3,
                           blank_seed=5, bin_factor=2, frames_per_file=5)
    finally:
        replay.wait(60)
    frames = summary.results.frames
    assert frames.frame.tolist() == list(range(n)) and (frames.status == "ok").all()
    assert summary.master == str(tmp_path / "raw" / "e2e_binned2_hits_master.h5")
    hits = set(frames.frame[frames.hit])
    blanks = {f for f in range(n) if f not in hits and blank_sample(f, 0.3, 5)}
    with h5py.File(summary.master) as m:
        numbers = set(m["entry/data/frame_number"][()].tolist())
        assert m["entry/storage/policy"].asstr()[()] == "hits"
        assert m["entry/storage/binning_factor"][()] == 2
    assert hits and blanks and numbers == hits | blanks
    run = sx.open_run(summary.master)
    assert run.geometry == bin_geometry(sx.open_run(SAMPLE).geometry, 2)
    assert sum(summary.restarts.values()) == 0
