"""Live processing end to end: replay -> ingest -> Redis consumer group -> workers.

Every test starts its own loopback Redis server (free port, private directory) and
compares the live output with a batch run of the same frames.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import threading
import time
import uuid

import numpy as np
import pandas as pd
import pytest
from conftest import require_service, run_sxlab, wait_until

import sxlab as sx
from sxlab import datasets
from sxlab.demo import demo_params
from sxlab.io import NXmxWriter
from sxlab.live.broker import Broker, derived_key
from sxlab.live.eiger import SeriesEnd, encode
from sxlab.live.ingest import Ingest
from sxlab.live.replay import Replay
from sxlab.live.server import EmbeddedRedis, RedisNotFoundError, find_redis_server, free_port
from sxlab.live.worker import LiveOutput, LiveWorker

pytestmark = pytest.mark.service

SAMPLE = "datasets/samples/lysozyme-sample_master.h5"
N_FRAMES = 500
# Columns that say when, where and by whom a frame was processed, not what came out.
PROVENANCE = {"worker", "read_s", "peaks_s", "index_s", "integrate_s", "total_s",
              "filename", "event"}
TABLES = ("frames", "peaks", "crystals", "reflections")


@pytest.fixture(scope="module")
def params(tmp_path_factory):
    p = demo_params(datasets.truth("lysozyme-sample"))
    path = tmp_path_factory.mktemp("params") / "trial.toml"
    p.save(path)
    return p, path


@pytest.fixture(scope="module")
def run500(tmp_path_factory):
    """500 frames (the 8 sample frames over and over) as an NXmx run, chunks copied."""
    sample = sx.open_run(SAMPLE)
    master = tmp_path_factory.mktemp("run500") / "run500_master.h5"
    with NXmxWriter(master, sample.geometry, n_frames=N_FRAMES, frames_per_file=250,
                    pixel_mask=sample.pixel_mask().astype(np.uint32)) as w:
        for i in range(N_FRAMES):
            w.write_chunk(sample.read_compressed(i % len(sample)))
    return master


@pytest.fixture(scope="module")
def batch500(run500, params):
    return sx.process_run(sx.open_run(run500), params[0], executor="local", n_workers=2,
                          progress=False)


def _assert_same_tables(batch, live, frames=None):
    for kind in TABLES:
        a, b = getattr(batch, kind), getattr(live, kind)
        if frames is not None:
            a = a[a.frame.isin(frames)]
        cols = [c for c in a.columns if c not in PROVENANCE]
        pd.testing.assert_frame_equal(a[cols].reset_index(drop=True),
                                      b[cols].reset_index(drop=True), obj=kind)


# ----------------------------------------------------------------------- integration
@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["stream1", "stream2"])
def test_live_run_equals_batch_every_frame_once(tmp_path, redis_url, run500, batch500,
                                                params, fmt):
    from sxlab.live.supervisor import run_live

    endpoint = f"tcp://127.0.0.1:{free_port()}"
    beamtime = f"t{uuid.uuid4().hex[:8]}"
    replay = run_sxlab("replay", run500, "--endpoint", endpoint, "--rate", 200,
                     "--format", fmt, "--run-name", "run500")
    try:
        summary = run_live(endpoint, params[1], tmp_path / "out", n_workers=2,
                           broker_url=redis_url, beamtime=beamtime, claim_idle_s=10,
                           timeout_s=300, progress=False)
    finally:
        replay.wait(30)
    res = summary.results
    assert res.frames.frame.tolist() == list(range(N_FRAMES))      # each frame once
    assert (res.frames.status == "ok").all()
    assert set(res.frames.worker) == {0, 1}                        # both workers worked
    _assert_same_tables(batch500, res)
    assert sum(summary.restarts.values()) == 0
    st = summary.status.set_index("group").loc["process"]
    assert (st.pending, st.lag, st.trimmed) == (0, 0, 0)
    # The output directory reads back like a batch run's, and the stream grew chunk-wise.
    again = sx.Results.load(tmp_path / "out")
    _assert_same_tables(batch500, again)
    stream = sx.read_stream(tmp_path / "out" / "results.stream")
    assert len(stream.frames) == N_FRAMES
    with Broker(redis_url, beamtime=beamtime) as b:
        key = b.resolve("run500")
        assert b.client.xlen(derived_key(key, "results")) == N_FRAMES
        prof = res.profile
        assert {"root/wait", "root/load-image-data", "root/peak-search"} <= set(prof.path)


# ------------------------------------------------------------------------ faults
@pytest.mark.slow
def test_killed_worker_killed_ingest_and_late_worker_lose_and_duplicate_nothing(
        tmp_path, redis_url, run500, batch500, params):
    n = 300
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    beamtime = f"t{uuid.uuid4().hex[:8]}"
    out = tmp_path / "out"
    logs = open(tmp_path / "children.log", "ab")  # noqa: SIM115
    t0 = time.time()
    common = ["--broker", redis_url, "--beamtime", beamtime]
    ingest_args = ["live", "ingest", "--source", endpoint, *common, "--series-count", 1,
                   "--backfill", run500]

    def worker(k):
        return run_sxlab("live", "worker", *common, "--out", out, "--params", params[1],
                       "--since", repr(t0), "--worker", k, "--name", f"w{k}",
                       "--claim-idle", 2, "--batch", 2, log=logs)

    procs = []
    broker = Broker(redis_url, beamtime=beamtime)
    try:
        procs.append(ingest := run_sxlab(*ingest_args, log=logs))
        procs += [w0 := worker(0), w1 := worker(1)]
        procs.append(replay := run_sxlab("replay", run500, "--endpoint", endpoint, "--rate", 20,
                                       "--frames", n, "--run-name", "run500", log=logs))
        wait_until(lambda: broker.run_keys(), 60, "the run to be registered")
        key = broker.run_keys()[0]
        rkey = derived_key(key, "results")
        wait_until(lambda: broker.client.xlen(rkey) >= 30, 120, "30 processed frames")
        wait_until(lambda: broker.client.xpending_range(key, "process", "-", "+", 4,
                                                   consumername="w0"), 60, "w0 busy")
        # The detector pauses (SIGSTOP) while the faults happen, so that each one lands in
        # the middle of the run whatever the machine's load.
        replay.send_signal(signal.SIGSTOP)
        w0.send_signal(signal.SIGKILL)                       # worker dies mid-frame
        w0.wait()
        procs.append(w2 := worker(2))                        # a worker joins late
        wait_until(lambda: any(c["name"] in ("w2", b"w2") for c in
                               broker.client.xinfo_consumers(key, "process")),
                   120, "the late worker to join")
        ingest.send_signal(signal.SIGKILL)                   # the ingest dies
        assert broker.info(key)["state"] == "receiving"      # ... in the middle of the run
        ingest.wait()
        time.sleep(0.5)
        procs.append(ingest2 := run_sxlab(*ingest_args, log=logs))   # ... and is restarted
        replay.send_signal(signal.SIGCONT)
        wait_until(lambda: broker.finished(key, "process"), 240, "every frame acknowledged")
        rcs = {name: p.wait(60) for name, p in (("w1", w1), ("w2", w2),
                                                 ("ingest", ingest2), ("replay", replay))}
        logs.flush()
        assert set(rcs.values()) == {0}, (rcs, (tmp_path / "children.log").read_text()[-3000:])
        info = broker.info(key)
        # The growing directory (parts only, not finished) serves the batch commands.
        from sxlab.cli import main

        assert not (out / "frames.parquet").exists()
        assert sorted(sx.open_results(out).frames.frame) == list(range(n))
        assert main(["stats", str(out)]) == 0
        assert main(["profile", str(out), "-o", str(tmp_path / "profile.png")]) == 0
        assert main(["merge", str(out), "-y", "P43212", "-o", str(tmp_path / "m.mtz")]) == 0
        res = LiveOutput(out, params[0], sx.open_run(run500).geometry).finish(broker, key)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        broker.close()
        logs.close()
    assert res.frames.frame.tolist() == list(range(n))
    assert (res.frames.status == "ok").all(), res.frames[res.frames.status != "ok"].error
    _assert_same_tables(batch500, res, frames=range(n))
    assert {0, 1, 2} <= set(res.frames.worker)              # the late worker did work
    log = (tmp_path / "children.log").read_text()
    reclaimed = sum(int(m) for m in re.findall(r"(\d+) reclaimed from dead workers", log))
    assert reclaimed >= 1                                   # w0's frames were taken over
    assert int(info.get("duplicates", 0)) >= 0 and info["state"] == "ended"


def test_cache_overflow_is_reported_with_the_number_of_frames_trimmed(
        tmp_path, broker, params, caplog):
    run = sx.open_run(SAMPLE)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    rep = Replay(run, endpoint=endpoint, rate=400, frames=40, loop=True, preload=True)
    threading.Thread(target=rep.serve, daemon=True).start()
    with caplog.at_level(logging.WARNING, logger="sxlab.live"):
        s = Ingest(endpoint, broker, maxlen_frames=10).run(n_series=1)
    key = s.runs[0]
    assert s.trimmed == 30
    assert int(broker.info(key)["trimmed:"]) == 30
    assert any("broker cache full (10 frames)" in r.message for r in caplog.records)
    res = _work(broker, key, tmp_path, params[0])
    assert res.frames.frame.tolist() == list(range(40))
    failed = res.frames[res.frames.status == "failed"]
    assert failed.frame.tolist() == list(range(30))
    assert failed.error.str.contains("trimmed from the broker cache").all()
    assert broker.status(key).set_index("group").loc["process", "trimmed"] == 30


def _work(broker, key, tmp_path, params, **kw):
    w = LiveWorker(broker, key, tmp_path / "out", params, claim_idle_s=1, **kw)
    w.run(idle_timeout_s=60)
    return w.output.finish(broker, key)


# -------------------------------------------------------------------- bad messages
def test_each_malformed_message_becomes_a_failed_frame_and_the_run_goes_on(
        tmp_path, broker, params):
    import cbor2
    import zmq

    from sxlab.io.compression import compress

    run = sx.open_run(SAMPLE)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    rep = Replay(run, endpoint=endpoint, frames=12, loop=True)

    def good(f, fmt="stream1"):
        return encode(rep.image(f), fmt)

    def v1(f, **d):
        parts = good(f)
        meta = json.loads(parts[1])
        meta.update(d)
        parts[1] = json.dumps(meta).encode()
        return parts

    blob = run.read_compressed(6)
    truncated = good(6)
    truncated[2] = blob[:-100]
    truncated[1] = json.dumps({**json.loads(truncated[1]), "size": len(blob) - 100}).encode()
    small = compress(np.zeros((100, 100), np.uint16), "bslz4")
    wrong = good(8)
    wrong[2] = small
    wrong[1] = json.dumps({**json.loads(wrong[1]), "size": len(small)}).encode()
    bad_cbor = [b"\xd9\xd9\xf7\xbf\x64type\x65image\x68series_i"]
    zstd = {"type": "image", "series_id": 1, "image_id": 10,
            "data": {"t1": cbor2.CBORTag(40, [list(run.frame_shape), cbor2.CBORTag(
                69, cbor2.CBORTag(56500, ["zstd", 2, b"\x00" * 64]))])}}
    messages = [
        encode(rep.header()), good(0), good(1, "stream2"),
        [b"{bad json", b"x", b"y", b"z"],                       # 2: frame number unknown
        good(3),
        v1(4, size=123),                                        # 4: wrong size field
        v1(5, encoding="bs16-zstd<"),                           # 5: unknown encoding
        truncated,                                              # 6: truncated blob
        good(7, "stream2"),
        wrong,                                                  # 8: wrong frame size
        bad_cbor,                                               # 9: bad CBOR
        [cbor2.dumps(cbor2.CBORTag(55799, zstd))],              # 10: unknown compression
        good(11),
        encode(SeriesEnd(1)),
    ]
    sock = zmq.Context.instance().socket(zmq.PUSH)
    sock.bind(endpoint)
    try:
        ingest = Ingest(endpoint, broker)
        t = threading.Thread(target=ingest.run, kwargs={"n_series": 1})
        t.start()
        for m in messages:
            sock.send_multipart(m)
        t.join(60)
    finally:
        sock.close(1000)
    key = ingest.summary.runs[0]
    res = _work(broker, key, tmp_path, params[0])
    f = res.frames.set_index("frame")
    assert f.index.tolist() == list(range(12))
    expect = {2: "first part is not valid JSON", 4: "dimage_d says size 123",
              5: "unknown encoding 'bs16-zstd<'", 6: "bitshuffle-LZ4 blob",
              8: "header announces 20000 bytes", 9: "not valid CBOR",
              10: "unknown compression 'zstd'"}
    assert f.index[f.status == "failed"].tolist() == sorted(expect)
    for frame, text in expect.items():
        assert text in f.loc[frame, "error"], (frame, f.loc[frame, "error"])
    assert "frame number inferred" in f.loc[2, "error"] and "frame 6" in f.loc[6, "error"]
    ok = [0, 1, 3, 7, 11]
    batch = sx.process_run(run, params[0], executor="serial", progress=False)
    for kind in TABLES:
        live = getattr(res, kind)
        live = live[live.frame.isin(ok)].copy()
        live["frame"] = live.frame % 8
        b = getattr(batch, kind)
        b = b[b.frame.isin([k % 8 for k in ok])]
        b = pd.concat([b[b.frame == k % 8] for k in ok], ignore_index=True)
        cols = [c for c in b.columns if c not in PROVENANCE]
        pd.testing.assert_frame_equal(b[cols].reset_index(drop=True),
                                      live[cols].reset_index(drop=True), obj=kind)


# ------------------------------------------------------------------- broker basics
def test_consumer_groups_share_work_and_reclaim_from_dead_consumers(broker):
    key = broker.key("groups")
    for f in range(6):
        broker.client.xadd(key, {"type": "image", "frame": f}, id=f"{f + 1}-0")
    from sxlab.live.broker import ConsumerGroup

    a = ConsumerGroup(broker.client, key, "process", "a", claim_idle_s=0.2)
    b = ConsumerGroup(broker.client, key, "process", "b", claim_idle_s=0.2)
    viewer = ConsumerGroup(broker.client, key, "viewer", "v")
    got_a = a.read(count=2, block_s=None)
    got_b = b.read(count=2, block_s=None)
    assert [e.frame for e in got_a] == [0, 1] and [e.frame for e in got_b] == [2, 3]
    b.ack([e.id for e in got_b])
    # "a" dies holding frames 0 and 1: after the idle time "b" reclaims them.
    time.sleep(0.3)
    again = b.read(count=4, block_s=None)
    assert [e.frame for e in again] == [0, 1]
    b.ack([e.id for e in again])
    assert [e.frame for e in b.read(count=4, block_s=None)] == [4, 5]
    # A consumer restarted under its old name gets back what it had not acknowledged.
    b2 = ConsumerGroup(broker.client, key, "process", "b", claim_idle_s=60)
    assert [e.frame for e in b2.read(count=4, block_s=None)] == [4, 5]
    # Another group sees the whole stream on its own.
    assert [e.frame for e in viewer.read(count=10, block_s=None)] == list(range(6))


def test_a_frame_processed_twice_is_published_once(broker):
    """A slow worker's frame is reclaimed and processed again: both acknowledge it, only
    the first acknowledgement publishes the derived entries."""
    from sxlab.live.broker import ConsumerGroup, Deferred

    key = broker.key("twice")
    for f in range(3):
        broker.client.xadd(key, {"type": "image", "frame": f}, id=f"{f + 1}-0")
    slow = ConsumerGroup(broker.client, key, "process", "slow", claim_idle_s=0.2)
    fast = ConsumerGroup(broker.client, key, "process", "fast", claim_idle_s=0.2)
    held = slow.read(count=2, block_s=None)
    time.sleep(0.3)
    taken = fast.read(count=2, block_s=None)                 # reclaimed while "slow" works
    assert [e.id for e in taken] == [e.id for e in held]
    derived = key + "_results"

    def finish(group, entries, who):
        deferred = {}
        for e in entries:
            deferred[e.id] = d = Deferred()
            d.xadd(derived, {"frame": e.frame, "by": who}, maxlen=100)
            d.hincrby(derived + ":info", "frames_in", 1)
        pipe = broker.client.pipeline(transaction=True)
        group.ack_then(pipe, [e.id for e in entries], deferred)
        pipe.execute()

    finish(fast, taken, "fast")
    finish(slow, held, "slow")                               # late: publishes nothing
    rest = fast.read(count=4, block_s=None)
    finish(fast, rest, "fast")
    got = [(int(f[b"frame"]), f[b"by"]) for _, f in broker.client.xrange(derived)]
    assert got == [(0, b"fast"), (1, b"fast"), (2, b"fast")]
    assert int(broker.client.hget(derived + ":info", "frames_in")) == 3
    assert broker.client.xpending(key, "process")["pending"] == 0


def test_tail_follows_a_broker_and_a_directory(tmp_path, broker, params):
    from sxlab.live.viewer import Tail, render_html

    run = sx.open_run(SAMPLE)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    rep = Replay(run, endpoint=endpoint, frames=8)
    threading.Thread(target=rep.serve, daemon=True).start()
    s = Ingest(endpoint, broker).run(n_series=1)
    res = _work(broker, s.runs[0], tmp_path, params[0])
    hits = res.frames[res.frames.hit]
    for source in (broker, tmp_path / "out"):
        state = Tail(source, window=8).poll()
        assert state.frames == 8 and state.state == "finished"
        assert state.hit_rate == pytest.approx(len(hits) / 8)
        assert state.indexing_rate == pytest.approx(hits.indexed.mean())
        assert state.latest_hit == int(hits.frame.max())
        peaks = res.peaks[res.peaks.frame == state.latest_hit]
        np.testing.assert_allclose(np.sort(state.peaks.fs), np.sort(peaks.fs), atol=0.01)
        assert f"{len(peaks)} peaks" in render_html(state)
    assert state.image is None                                    # directory: no pixels
    assert Tail(broker, window=8).poll().image.shape == run.frame_shape
    seen = []
    from sxlab.live import tail

    last = tail(broker, view=seen.append, until_finished=True, interval_s=0.01)
    assert seen and last.state == "finished" and last.status is not None


def test_embedded_server_is_private_and_stops(tmp_path):
    try:
        find_redis_server()
    except RedisNotFoundError:
        require_service("redis", False)
    server = EmbeddedRedis(directory=tmp_path / "r").start()
    import redis

    c = redis.Redis.from_url(server.url)
    cfg = c.config_get("*")
    assert cfg["bind"].split()[0] == "127.0.0.1" and cfg["protected-mode"] == "yes"
    assert cfg["save"] == "" and cfg["appendonly"] == "no"
    assert int(c.info("server")["redis_version"].split(".")[0]) >= 6
    pid = server.process.pid
    server.stop()
    c.close()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
