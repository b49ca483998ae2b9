"""Live processing on EIGER 4M and 16M frames: sustained rate, latency, broker cost, cores.

Run: ``.venv/bin/python benchmarks/bench_live.py [--detectors 4m,16m] [--quick] [--out]``.

For each detector (``lysozyme-4m``: EIGER X 4M, ``lysozyme-16m``: EIGER2 X 16M, both 50 %
hits) and each parameter set (full processing, and the fast peak-search and indexing
modes), on this machine:

1. the batch pipeline (:func:`sxlab.process_run`, 2 workers) on the same frames (hits and
   non-hits alternating, looped): frames/s, and the CPU per frame of one worker;
2. live runs, each with an embedded Redis server, the ingest and 2 workers as separate
   processes and the replay detector in this process (a short warm-up series first), at
   decreasing replay rates until one is sustained (every frame committed within 5 s of
   the end of the replay, median latency under 2 s, and the latency of the last quarter
   of frames not above the first quarter's + 0.5 s): latency
   from detector send to committed result (p50, p99), CPU ms per frame in the ingest and
   in redis-server, CPU ms per frame in the workers;
3. the cores an EIGER2 16M at 133 frames/s needs from the measured CPU per frame
   (workers + ingest + Redis), against the paper's 96 and our target of 8;
4. data products (``--parts products``): the NeXus writer's throughput (MB/s, frames/s,
   CPU) from the broker into data files and master, against a plain ``write`` of the same
   bytes to the same disk and against HDF5 direct chunk writes alone; the storage each
   policy (all, hits, indexed, with a 1 % blank sample) takes on the 50 %-hit 4M run; and
   for the 16M run the CPU per frame of processing unbinned and binned 2x2, 3x3, 4x4 (plus
   the binning worker's), with the hit and indexing rates of each.

The machine is shared: CPU time (from /proc) is what the extrapolation uses; the load
average is printed. Data sets are generated once into ``SXLAB_CACHE``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import _common

os.environ.setdefault("NUMBA_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import sxlab as sx  # noqa: E402
from sxlab.demo import demo_params  # noqa: E402
from sxlab.live.broker import Broker, derived_key  # noqa: E402
from sxlab.live.replay import Replay  # noqa: E402
from sxlab.live.server import EmbeddedRedis, free_port  # noqa: E402

DATASETS = {"4m": "lysozyme-4m", "16m": "lysozyme-16m"}
EIGER2_16M_HZ = 133.0
PAPER_CORES = 96
TARGET_CORES = 8


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (and its waited-for children)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(int(fields[i]) for i in (11, 12)) / ticks


def settings(params, mode: str):
    """Parameters of ``full``, ``fast`` (``fast-bin2`` ...: the binning is not a parameter
    but a worker option, see :func:`bin_factor`)."""
    if mode.split("-")[0] == "fast":
        return params.replace(peaks={"fast": True}, index={"fast": True})
    return params


def bin_factor(mode: str) -> int:
    """Worker-side binning of a mode (``fast-bin2`` -> 2; 0: none)."""
    tail = mode.partition("-bin")[2]
    return int(tail) if tail else 0


def half_hits(run, params):
    """The run's frames reordered so that hits and non-hits alternate (50 % hits)."""
    return run[half_hits_order(run, params)]


def half_hits_order(run, params) -> list[int]:
    """Frame order of :func:`half_hits`."""
    res = sx.process_run(run, params, executor="serial", progress=False)
    hits = res.frames.frame[res.frames.hit].tolist()
    blank = res.frames.frame[~res.frames.hit].tolist()
    n = max(len(hits), len(blank))
    return [x for pair in zip((hits * n)[:n], (blank * n)[:n], strict=True) for x in pair]


def batch(run, params, frames: int):
    """Batch frames/s with 2 workers, and one worker's CPU ms per frame (in process)."""
    sub = run[np.arange(frames) % len(run)]
    sx.process_run(run[:2], params, executor="serial", progress=False)   # warm-up
    c0 = time.process_time()
    serial = sx.process_run(sub, params, executor="serial", progress=False)
    cpu_ms = 1e3 * (time.process_time() - c0) / frames
    t0 = time.perf_counter()
    sx.process_run(sub, params, executor="local", n_workers=2, progress=False)
    fps = frames / (time.perf_counter() - t0)
    return fps, cpu_ms, serial


def live_trial(run, params_path: Path, rate: float, n_frames: int, workdir: Path,
               factor: int = 0):
    """One live run at ``rate``: latency, sustained or not, CPU per frame per part.

    A short warm-up series goes first (workers load their kernels on it); the timed
    series follows on the same ingest and workers. The ingest's, Redis's and the
    workers' CPU are read from /proc over the timed series only (start-up excluded).
    ``factor``: workers bin frames (``sxlab live worker --bin``).
    """
    beamtime = f"b{uuid.uuid4().hex[:6]}"
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    out = workdir / f"out-{beamtime}"
    t_start = time.time()
    n_warm = 8
    with EmbeddedRedis(directory=workdir / f"redis-{beamtime}") as server:
        broker = Broker(server.url, beamtime=beamtime)
        common = ["--broker", server.url, "--beamtime", beamtime]
        py = [sys.executable, "-m", "sxlab", "live"]
        logs = [open(workdir / f"{beamtime}-{n}.log", "wb")  # noqa: SIM115
                for n in ("ingest", "w0", "w1")]
        ingest = subprocess.Popen(py + ["ingest", "--source", endpoint, *common,
                                        "--series-count", "3"], stdout=logs[0],
                                  stderr=subprocess.STDOUT)
        workers = [subprocess.Popen(py + ["worker", *common, "--out", str(out),
                                          "--params", str(params_path), "--since",
                                          repr(t_start), "--worker", str(k), "--name",
                                          f"w{k}", "--follow",
                                          *(["--bin", str(factor)] if factor else [])],
                                    stdout=logs[k + 1], stderr=subprocess.STDOUT)
                   for k in range(2)]

        try:
            def alive():
                for proc, log in zip([ingest, *workers], logs, strict=True):
                    if proc.poll() is not None:
                        raise RuntimeError(f"{log.name} exited ({proc.returncode}): "
                                           f"{Path(log.name).read_text()[-2000:]}")
            warm = Replay(run, endpoint=endpoint, frames=n_warm, loop=True, preload=True,
                          run_name="warmup", series=1)
            warm.serve()
            key = broker.wait_run(since=t_start, run="warmup", timeout_s=60)
            t_warm = time.time()
            while not broker.finished(key, "process"):
                alive()
                if time.time() - t_warm > 600:
                    raise TimeoutError("the warm-up series was not processed in 10 min")
                time.sleep(0.1)
            rep = Replay(run, endpoint=endpoint, rate=rate, frames=n_frames, loop=True,
                         preload=True, run_name="bench", series=2)
            redis_cpu0 = cpu_seconds(server.process.pid)
            ingest_cpu0 = cpu_seconds(ingest.pid)
            result = {}
            sender = threading.Thread(target=lambda: result.update(s=rep.serve()))
            sender.start()
            # the workers' CPU from their first committed frame of the series on (each
            # prepares its processing for the new run first; that set-up is not per frame)
            key = broker.wait_run(since=t_start, run="bench", timeout_s=30)
            rkey = derived_key(key, "results")
            while sender.is_alive():
                seen = {f[b"worker"] for _, f in broker.client.xrange(rkey, "-", "+")}
                if len(seen) == len(workers):
                    break
                time.sleep(0.02)
            n0 = broker.client.xlen(rkey)
            workers_cpu0 = sum(cpu_seconds(w.pid) for w in workers)
            sender.join()
            t_sent = time.time()
            finished = False
            while time.time() - t_sent < 120:
                if key is not None and broker.finished(key, "process"):
                    finished = True
                    break
                time.sleep(0.05)
            t_done = time.time()
            redis_cpu = cpu_seconds(server.process.pid) - redis_cpu0
            ingest_cpu = cpu_seconds(ingest.pid) - ingest_cpu0
            workers_cpu = sum(cpu_seconds(w.pid) for w in workers) - workers_cpu0
            rows = broker.client.xrange(derived_key(key, "results"), "-", "+")
            res = pd.DataFrame([{k.decode(): v.decode() for k, v in f.items()} for _, f in rows])
        finally:          # every process stopped, also when the trial fails
            for w in [ingest, *workers]:
                w.terminate()
                w.wait(60)
            for log in logs:
                log.close()
            broker.close()
    send = np.asarray(result["s"].send_times)
    res = res.astype({"frame": int, "t_committed": float, "total_s": float})
    res = res.sort_values("frame")
    lat = res.t_committed.to_numpy() - send[res.frame.to_numpy()]
    q = max(1, len(lat) // 4)
    sustained = (finished and len(res) == n_frames and t_done - t_sent < 5.0
                 and np.median(lat[-q:]) <= np.median(lat[:q]) + 0.5
                 and np.median(lat) < 2.0)
    return {
        "rate_hz": rate, "achieved_hz": result["s"].rate_hz, "frames": len(res),
        "sustained": bool(sustained),
        "latency_p50_s": float(np.percentile(lat, 50)),
        "latency_p99_s": float(np.percentile(lat, 99)),
        "redis_cpu_ms": 1e3 * redis_cpu / n_frames,
        "ingest_cpu_ms": 1e3 * ingest_cpu / n_frames,
        "workers_cpu_ms": 1e3 * workers_cpu / max(len(res) - n0, 1),
        "worker_ms": 1e3 * float(res.total_s.mean()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--detectors", default="4m,16m")
    ap.add_argument("--modes", default="full,fast,fast-bin2",
                    help="full, fast (fast peak search and indexing), -binN: the workers "
                    "bin N x N")
    ap.add_argument("--parts", default="live,stages,products",
                    help="live (rates and latency), stages (CPU per stage and setting, "
                    "cores at 133 Hz), products (writer, policies, binning)")
    ap.add_argument("--quick", action="store_true", help="short live trials")
    ap.add_argument("--out", type=Path, nargs="?", const=Path(__file__).parent / "out",
                    default=None)
    args = ap.parse_args()
    if args.out is None and os.environ.get("SXLAB_BENCH_OUT"):
        args.out = Path(os.environ["SXLAB_BENCH_OUT"])
    load_start = _common.load_average()
    workdir = Path(tempfile.mkdtemp(prefix="sxlab-bench-live-"))
    rows = []
    unbinned = {}
    parts = args.parts.split(",")
    for det in args.detectors.split(",") if "live" in parts else []:
        name = DATASETS[det]
        base = demo_params(sx.datasets.truth(name))
        run = half_hits(sx.datasets.load(name, progress=False), base)
        for mode in args.modes.split(","):
            params = settings(base, mode)
            factor = bin_factor(mode)
            ppath = workdir / f"{det}-{mode}.toml"
            params.save(ppath)
            n_batch = 60 if det == "4m" else 24
            if factor:       # the batch pipeline does not bin: its unbinned figures
                batch_fps, cpu_ms, serial = unbinned[mode.partition("-bin")[0]]
                batch_fps = float("nan")
            else:
                batch_fps, cpu_ms, serial = batch(run, params, n_batch)
                unbinned[mode] = (batch_fps, cpu_ms, serial)
            hits = float(serial.frames.hit.mean())
            capacity = 2000.0 / cpu_ms * (3 if factor else 1)   # 2 workers, frames/s
            trial_s = 5.0 if args.quick else 10.0
            best = None
            trials = []
            for share in (0.6, 0.4, 0.25, 0.15):
                rate = round(capacity * share, 2)
                n = max(12, int(rate * trial_s))
                t = live_trial(run, ppath, rate, n, workdir, factor)
                trials.append(t)
                print(f"  {det} {mode}: {rate:.2f} Hz -> sustained={t['sustained']} "
                      f"p50={t['latency_p50_s']:.2f}s p99={t['latency_p99_s']:.2f}s",
                      flush=True)
                if t["sustained"]:
                    best = t
                    break
            best = best or trials[-1]
            ingest_ms = best["ingest_cpu_ms"]
            per_frame_ms = best["workers_cpu_ms"] + ingest_ms + best["redis_cpu_ms"]
            cores = EIGER2_16M_HZ * per_frame_ms / 1e3
            rows.append({
                "detector": det, "mode": mode, "hit_rate": hits,
                "batch_fps": batch_fps, "batch_cpu_ms": float("nan") if factor else cpu_ms,
                "live_worker_cpu_ms": best["workers_cpu_ms"],
                "sustained_hz": best["rate_hz"] if best["sustained"] else float("nan"),
                "live_batch_ratio": (best["rate_hz"] / batch_fps) if best["sustained"]
                else float("nan"),
                "latency_p50_s": best["latency_p50_s"],
                "latency_p99_s": best["latency_p99_s"],
                "ingest_cpu_ms": ingest_ms, "redis_cpu_ms": best["redis_cpu_ms"],
                "live_worker_wall_ms": best["worker_ms"],
                "cores_for_133Hz": cores,
            })
    table = pd.DataFrame(rows)
    lines = ["# Live processing: sustained rate, latency, broker cost", "",
             *_common.machine_description(load_start, packages=("numpy", "numba", "redis",
                                                               "zmq")),
             f"Redis: {EmbeddedRedis().binary}", "",
             "2 workers, embedded Redis, ingest and replay on this machine's 2 shared cores.",
             "Latency: detector send -> committed result; cores: 133 frames/s x CPU per "
             "frame (live workers + ingest + Redis, from /proc over the timed series; the "
             "workers read up to 4 frames at a time, the default). batch_cpu_ms: one "
             "batch worker's CPU per frame. -bin2: the workers bin 2x2 (no batch "
             "figures: the batch pipeline does not bin).", "",
             _md(table) if len(table) else "(live part not run)", "",
             f"Paper (CrystFEL + ASAP::O, EIGER2 16M at 133 Hz): {PAPER_CORES} cores; "
             f"target: <= {TARGET_CORES} cores."]
    for r in rows:
        if r["detector"] == "16m":
            lines.append(f"16M {r['mode']}: {r['cores_for_133Hz']:.0f} cores at 133 Hz "
                         f"({r['live_worker_cpu_ms'] + r['ingest_cpu_ms'] + r['redis_cpu_ms']:.0f}"
                         " ms CPU per frame)")
    stage_rows = []
    if "stages" in parts:
        stage_lines, stage_rows = stages_report(args, workdir)
        lines += ["", *stage_lines]
    products = {"stages": stage_rows} if stage_rows else {}
    if "products" in parts:
        product_lines, more = products_report(args, workdir)
        products.update(more)
        lines += ["", *product_lines]
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        _common.write_report(args.out, "bench_live", text, rows or stage_rows or [{"detector": ""}],
                             {"rows": rows, **products})


# ====================================================================== data products
def _publish_run(broker, run, name: str, n_frames: int) -> str:
    """``n_frames`` frames of ``run`` (looped) in the broker as the ingest leaves them."""
    from sxlab.live.eiger import SeriesEnd, encode
    from sxlab.live.ingest import Ingest

    rep = Replay(run, frames=n_frames, loop=True, run_name=name, preload=True)
    ingest = Ingest("tcp://unused", broker)
    ingest.handle(encode(rep.header(), "stream2"))
    for f in range(n_frames):
        ingest.handle(encode(rep.image(f), "stream2"))
    ingest.handle(encode(SeriesEnd(rep.series), "stream2"))
    return broker.key(name)


def _fsync(directory: Path, pattern: str) -> None:
    for path in directory.glob(pattern):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _dir_bytes(path: Path, pattern: str) -> int:
    return sum(p.stat().st_size for p in path.glob(pattern))


def writer_throughput(run, label: str, n_frames: int, per_file: int, runs: int,
                      workdir: Path) -> dict:
    """The live writer against HDF5 direct chunk writes and a plain write of the bytes."""
    from sxlab.io import NXmxWriter
    from sxlab.live.writer import LiveWriter

    blobs = [run.read_compressed(i % len(run)) for i in range(n_frames)]
    nbytes = sum(len(b) for b in blobs)
    workdir = workdir / label.replace(" ", "_")
    workdir.mkdir()

    def plain(k):
        # The same bytes, one write per frame, into files of per_file frames.
        for start in range(0, n_frames, per_file):
            with open(workdir / f"plain-{k}-{start}.bin", "wb") as fh:
                for b in blobs[start:start + per_file]:
                    fh.write(b)
        _fsync(workdir, f"plain-{k}-*")

    def direct(k):
        with NXmxWriter(workdir / f"direct{k}_master.h5", run.geometry,
                        frames_per_file=per_file, dtype=run.dtype) as w:
            for b in blobs:
                w.write_chunk(b)
        _fsync(workdir, f"direct{k}_*")

    out = {"data": label, "frames": n_frames, "MB": nbytes / 1e6}
    with EmbeddedRedis(directory=workdir / f"redis-w-{label}") as server:
        broker = Broker(server.url, beamtime=f"w{uuid.uuid4().hex[:6]}")
        key = _publish_run(broker, run, "wbench", n_frames)
        counter = iter(range(10**6))

        def live(_):
            k = next(counter)
            w = LiveWriter(broker, key, workdir / f"live{k}", group=f"write{k}",
                           frames_per_file=per_file)
            w.run(idle_timeout_s=60)
            _fsync(workdir / f"live{k}", "*")
            return w

        for name, fn in (("plain_write", plain), ("hdf5_direct_chunk", direct),
                         ("live_writer", live)):
            ks = iter(range(10**6))
            # Each run starts with no dirty pages and ends with its files on the disk.
            _, wall, cpu = _common.time_runs(lambda _, fn=fn, ks=ks: fn(next(ks)), runs,
                                             warmup=1, setup=os.sync)
            med, cmed = float(np.median(wall)), float(np.median(cpu))
            out[f"{name}_MBps"] = nbytes / 1e6 / med
            out[f"{name}_fps"] = n_frames / med
            out[f"{name}_cpu_ms"] = 1e3 * cmed / n_frames
        broker.close()
    return out


def policy_storage(run, params, workdir: Path, blank: float = 0.01) -> list[dict]:
    """Bytes and frames each storage policy keeps of a run processed live."""
    from sxlab.live.storage import set_storage_policy
    from sxlab.live.worker import LiveWorker
    from sxlab.live.writer import LiveWriter

    rows = []
    with EmbeddedRedis(directory=workdir / "redis-policies") as server:
        broker = Broker(server.url, beamtime=f"p{uuid.uuid4().hex[:6]}")
        key = _publish_run(broker, run, "policies", len(run))
        set_storage_policy(broker, key, blank_fraction=blank, blank_seed=0)
        worker = LiveWorker(broker, key, workdir / "policies-out", params,
                            publish=("results", "hits", "indexed"))
        worker.run(idle_timeout_s=120)
        res = worker.output.finish(broker, key)
        total = None
        for policy in ("frames", "hits", "indexed"):
            out = workdir / f"policy-{policy}"
            w = LiveWriter(broker, key, out, input=policy, frames_per_file=1000)
            w.run(idle_timeout_s=120)
            size = _dir_bytes(out, "*.h5")
            total = size if total is None else total
            rows.append({"policy": "all" if policy == "frames" else policy,
                         "frames_stored": w.summary.stored, "of_frames": len(run),
                         "MB": size / 1e6, "fraction_of_all": size / total,
                         "saved_MB": (total - size) / 1e6})
        rows.append({"policy": "(run)", "frames_stored": int(res.frames.hit.sum()),
                     "of_frames": len(run), "MB": float("nan"),
                     "fraction_of_all": float(res.frames.hit.mean()),
                     "saved_MB": float("nan")})
        broker.close()
    return rows


def binning_costs(run, params, workdir: Path, runs: int) -> list[dict]:
    """CPU per frame of processing unbinned and binned frames, and of the binning worker."""
    from sxlab.live.binner import LiveBinner
    from sxlab.live.worker import LiveWorker

    rows = []
    with EmbeddedRedis(directory=workdir / "redis-binning") as server:
        broker = Broker(server.url, beamtime=f"b{uuid.uuid4().hex[:6]}")
        key = _publish_run(broker, run, "binning", len(run))
        for factor in (1, 2, 3, 4):
            stream = key
            bin_ms = 0.0
            if factor > 1:
                c0 = time.process_time()
                binner = LiveBinner(broker, key, factor)
                binner.run(idle_timeout_s=60)
                bin_ms = 1e3 * (time.process_time() - c0) / len(run)
                stream = binner.out_key
            counter = iter(range(10**6))

            def worker(stream=stream, factor=factor, counter=counter):
                # A worker of a group of its own (set-up not timed): it sees every frame.
                k = next(counter)
                return LiveWorker(broker, stream, workdir / f"bin{factor}-{k}", params,
                                  group=f"p{k}", publish=())

            def process(w, stream=stream):
                w.run(idle_timeout_s=60)
                return w.output.finish(broker, stream, group=w.group.group)

            res, wall, cpu = _common.time_runs(process, runs, warmup=1, setup=worker)
            f = res.frames
            hits = f[f.hit]
            rows.append({
                "binning": f"{factor}x{factor}" if factor > 1 else "none",
                "shape": "x".join(str(v) for v in res.geometry.data_shape),
                "process_cpu_ms": 1e3 * float(np.median(cpu)) / len(run),
                "binner_cpu_ms": bin_ms,
                "hit_rate": float(f.hit.mean()),
                "indexing_rate": float(hits.indexed.mean()) if len(hits) else float("nan"),
                "n_crystals": int(len(res.crystals)),
            })
        broker.close()
    base = rows[0]["process_cpu_ms"]
    for r in rows:
        r["speed_up"] = base / r["process_cpu_ms"]
    return rows


# ====================================================================== where the CPU goes
class _Timed:
    """Wraps a callable (or an object's ``index`` method) and adds its CPU seconds up."""

    def __init__(self, target, method: str | None = None):
        self.target, self.method, self.cpu_s = target, method, 0.0

    def _call(self, fn, *a, **k):
        c0 = time.thread_time()
        try:
            return fn(*a, **k)
        finally:
            self.cpu_s += time.thread_time() - c0

    def __call__(self, *a, **k):
        return self._call(self.target, *a, **k)

    def __getattr__(self, name):
        value = getattr(self.target, name)
        if name == self.method:
            return lambda *a, **k: self._call(value, *a, **k)
        return value


def ingest_costs(run, n_frames: int, fmt: str, workdir: Path) -> dict:
    """CPU ms per frame of the ingest process and of redis-server taking a replayed
    series in (as fast as they go; a warm-up series first, start-up not counted)."""
    beamtime = f"b{uuid.uuid4().hex[:6]}"
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    with EmbeddedRedis(directory=workdir / f"redis-{beamtime}") as server:
        broker = Broker(server.url, beamtime=beamtime)
        ingest = subprocess.Popen([sys.executable, "-m", "sxlab", "live", "ingest",
                                   "--source", endpoint, "--broker", server.url,
                                   "--beamtime", beamtime, "--series-count", "2"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            Replay(run, endpoint=endpoint, frames=4, loop=True, preload=True, fmt=fmt,
                   run_name="warmup", series=1).serve()
            key = broker.wait_run(run="warmup", timeout_s=60)
            while broker.info(key).get("state") != "ended":
                time.sleep(0.05)
            rep = Replay(run, endpoint=endpoint, frames=n_frames, loop=True, preload=True,
                         fmt=fmt, run_name="timed", series=2)
            c_in, c_redis = cpu_seconds(ingest.pid), cpu_seconds(server.process.pid)
            t0 = time.perf_counter()
            rep.serve()
            key = broker.wait_run(run="timed", timeout_s=60)
            while broker.info(key).get("state") != "ended":
                time.sleep(0.02)
            wall = time.perf_counter() - t0
            c_in = cpu_seconds(ingest.pid) - c_in
            c_redis = cpu_seconds(server.process.pid) - c_redis
        finally:
            ingest.terminate()
            ingest.wait(60)
            broker.close()
    return {"ingest_cpu_ms": 1e3 * c_in / n_frames, "redis_in_cpu_ms": 1e3 * c_redis / n_frames,
            "ingest_hz": n_frames / wall}


def worker_costs(run, params, setting: str, factor: int, broker, key: str, server,
                 workdir: Path) -> tuple[dict, object]:
    """One live worker (in this process) through a published run: CPU ms per frame of
    decoding, of each processing stage, of the rest (tables, commit, XACK, publish) and
    of redis-server serving it."""
    from sxlab.live.worker import LiveWorker

    group = f"g{uuid.uuid4().hex[:6]}"
    w = LiveWorker(broker, key, workdir / f"out-{group}", params, group=group,
                   consumer="w", publish=("results",), bin_factor=factor or None)
    decode = _Timed(w.decoder.decode)
    w.decoder.decode = decode
    ctx = w.context
    stages = {"peaks": _Timed(ctx.finder), "solvent": _Timed(ctx.solvent),
              "index": _Timed(ctx.indexer, "index"), "integrate": _Timed(ctx.integrator)}
    ctx.finder, ctx.solvent = stages["peaks"], stages["solvent"]
    ctx.indexer, ctx.integrator = stages["index"], stages["integrate"]
    while w.summary.frames < 1:           # warm-up: the header and the first frame
        w.step(block_s=5)
    decode.cpu_s = 0.0
    for t in stages.values():
        t.cpu_s = 0.0
    n0 = w.summary.frames
    r0 = cpu_seconds(server.process.pid)
    c0 = time.thread_time()
    w.run(idle_timeout_s=60)
    total = time.thread_time() - c0
    redis_s = cpu_seconds(server.process.pid) - r0
    n = w.summary.frames - n0
    res = w.output.finish(broker, key, group=group)
    row = {"setting": setting, "binning": f"{factor}x{factor}" if factor else "none",
           "decode_ms": 1e3 * decode.cpu_s / n,
           **{f"{k}_ms": 1e3 * t.cpu_s / n for k, t in stages.items()}}
    row["rest_ms"] = 1e3 * total / n - sum(v for k, v in row.items() if k.endswith("_ms"))
    row["worker_ms"] = 1e3 * total / n
    row["redis_out_cpu_ms"] = 1e3 * redis_s / n
    return row, res


def _same_crystals(res, ref, cell) -> tuple[str, float]:
    """Lattices of ``ref`` found again in ``res`` within 0.05 deg (same frame, up to the
    lattice symmetry): ``"k/n"`` and the largest misorientation of those matches."""
    from sxlab.indexing.scoring import lattice_rotations, misorientation_deg

    rots = lattice_rotations(cell)
    cols = [f"{v}star_{x}" for v in "abc" for x in "xyz"]
    mine = {f: [r[cols].to_numpy(float).reshape(3, 3) for _, r in g.iterrows()]
            for f, g in res.crystals.groupby("frame")}
    best = []
    for _, r in ref.crystals.iterrows():
        a = r[cols].to_numpy(float).reshape(3, 3)
        best.append(min((misorientation_deg(b, a, cell, rots)
                         for b in mine.get(r["frame"], [])), default=np.inf))
    best = np.asarray(best)
    found = best <= 0.05
    return (f"{int(found.sum())}/{len(best)}",
            float(best[found].max()) if found.any() else float("nan"))


def _agreement(res, refs: dict, mode: str, cell, truth_crystals) -> dict:
    """Indexing of ``res`` against the simulated truth and against the unbinned runs
    (``refs``: mode -> Results) of the same setting and of full processing."""
    from sxlab.indexing.scoring import score_indexing

    f = res.frames
    hits = f[f.hit]
    scores = score_indexing(res.crystals, truth_crystals, cell, max_deg=0.5)
    out = {"hit_rate": float(f.hit.mean()),
           "indexing_rate": float(hits.indexed.mean()) if len(hits) else float("nan"),
           "n_crystals": int(len(res.crystals)), "correct": int(scores.correct.sum()),
           "median_error_deg": float(scores.misorientation_deg.median())}
    if mode in refs:
        out["same_crystals"], out["max_misorientation_deg"] = _same_crystals(
            res, refs[mode], cell)
    if "full" in refs and mode != "full":
        out["same_as_full"] = _same_crystals(res, refs["full"], cell)[0]
    return out


SETTINGS = (("full", 0), ("fast", 0), ("full", 2), ("fast", 2), ("fast", 3), ("fast", 4))


def stage_costs(det: str, workdir: Path, repeats: int, fmt: str = "stream1"):
    """Where the CPU of a live 16M (or 4M) frame goes, for each setting; cores at 133 Hz."""
    name = DATASETS[det]
    base = demo_params(sx.datasets.truth(name))
    full_run = sx.datasets.load(name, progress=False)
    order = half_hits_order(full_run, base)
    run = full_run[order]
    n = len(run) * repeats
    truth = sx.datasets.truth(name).crystals       # renumbered as the published frames
    truth = pd.concat([truth[truth.frame == order[f % len(order)]].assign(frame=f)
                       for f in range(n)], ignore_index=True)
    ing = ingest_costs(run, 200, fmt, workdir)
    rows, refs = [], {}
    with EmbeddedRedis(directory=workdir / f"redis-stages-{det}") as server:
        broker = Broker(server.url, beamtime=f"b{uuid.uuid4().hex[:6]}")
        key = _publish_run(broker, run, f"stages-{det}", n)
        for mode, factor in SETTINGS:
            params = settings(base, mode)
            row, res = worker_costs(run, params, mode, factor, broker, key, server, workdir)
            row = {"detector": det, **row,
                   **_agreement(res, refs, mode, params.cell, truth)}
            if not factor:
                refs[mode] = res
            row.update(ing)
            per_frame = (row["worker_ms"] + row["redis_out_cpu_ms"] + ing["ingest_cpu_ms"]
                         + ing["redis_in_cpu_ms"])
            row["total_ms"] = per_frame
            row["cores_for_133Hz"] = EIGER2_16M_HZ * per_frame / 1e3
            rows.append(row)
            print(f"  {det} {mode} bin {factor or 1}: {per_frame:.0f} ms CPU per frame, "
                  f"{row['cores_for_133Hz']:.1f} cores", flush=True)
        broker.close()
    return rows


def stages_report(args, workdir: Path) -> tuple[list[str], list[dict]]:
    rows = []
    for det in args.detectors.split(","):
        rows += stage_costs(det, workdir, 2 if args.quick else 4)
    t = pd.DataFrame(rows)
    cols = ["detector", "setting", "binning", "decode_ms", "peaks_ms", "solvent_ms",
            "index_ms", "integrate_ms", "rest_ms", "worker_ms", "redis_out_cpu_ms",
            "ingest_cpu_ms", "redis_in_cpu_ms", "total_ms", "cores_for_133Hz", "hit_rate",
            "indexing_rate", "n_crystals", "correct", "median_error_deg",
            "same_crystals", "max_misorientation_deg", "same_as_full"]
    lines = ["# Where the CPU of a live frame goes (CPU ms per frame)", "",
             "One live worker (default batch: 4 frames per commit) in this process on "
             "frames published as the ingest leaves them (50 % hits, bitshuffle-LZ4 blobs "
             "as the replay sends them); decode = blob -> image + bad mask (binned in the "
             "same pass when binning); rest = tables, commit, XACK, results stream; "
             "redis_out = redis-server serving the worker; ingest and "
             "redis_in = the ingest process and redis-server taking the replayed series in. "
             "cores = 133 frames/s x total.", "",
             _md(t[[c for c in cols if c in t.columns]]), "",
             "indexing_rate: indexed / hits; correct: lattices within 0.5 deg of a "
             "simulated crystal (cell within 5 %), median_error_deg: their median "
             "misorientation to the truth; same_crystals: lattices of the unbinned "
             "run of the same setting found again within 0.05 deg (same frame, up to the "
             "lattice symmetry), max_misorientation_deg: the largest of those matches; "
             "same_as_full: the same against the unbinned full-processing run. "
             "Ingest: 200 frames of a stream v1 replay as fast as the ingest takes them "
             "(its per-series cost, the header, spread over them).",
             ""]
    for r in rows:
        if r["detector"] == "16m":
            ok = "meets" if r["cores_for_133Hz"] <= TARGET_CORES else "misses"
            lines.append(f"16M {r['setting']}, binning {r['binning']}: "
                         f"{r['cores_for_133Hz']:.1f} cores at 133 Hz ({ok} the target of "
                         f"{TARGET_CORES})")
    return lines, rows


def _md(table: pd.DataFrame) -> str:
    try:
        return table.to_markdown(index=False, floatfmt=".3g")
    except ImportError:                  # tabulate not installed
        return table.to_string(index=False, float_format=lambda v: f"{v:.3g}")


def products_report(args, workdir: Path) -> tuple[list[str], dict]:
    """Writer throughput, storage per policy, binning costs: report lines and rows."""
    runs = 2 if args.quick else 5
    run4 = sx.datasets.load("lysozyme-4m", progress=False)
    run16 = sx.datasets.load("lysozyme-16m", progress=False)
    p4 = demo_params(sx.datasets.truth("lysozyme-4m"))
    p16 = demo_params(sx.datasets.truth("lysozyme-16m"))
    n4, n16 = (60, 24) if args.quick else (300, 120)
    throughput = [writer_throughput(run4, "EIGER 4M", n4, 100, runs, workdir),
                  writer_throughput(run16, "EIGER2 16M", n16, 40, runs, workdir)]
    policies = policy_storage(half_hits(run4, p4), p4, workdir)
    binning = binning_costs(run16, p16, workdir, runs)
    t = pd.DataFrame(throughput)
    disk = os.statvfs(workdir)
    lines = [
        "# Data products: NeXus writer, storage policies, binning", "",
        f"Disk: {workdir} ({disk.f_bsize * disk.f_blocks / 1e9:.0f} GB file system); "
        f"median of {runs} runs after a warm-up; CPU ms per frame.", "",
        "## Writer throughput: broker -> data files + master (bitshuffle-LZ4 blobs as "
        "sent)", "",
        _md(t), "",
        "plain_write: the same bytes with one write() per frame into files of the same "
        "size; hdf5_direct_chunk: NXmxWriter.write_chunk alone (no broker); live_writer: "
        "sxlab live write reading the frames from an embedded Redis. Every run starts "
        "after os.sync() and ends with fsync() of its files (the bytes are on the disk); "
        "CPU is this process's (Redis serves the writer from another process).", "",
        "## Storage per policy (lysozyme-4m, 50 % hits, blank sample 1 %)", "",
        _md(pd.DataFrame(policies)), "",
        "## Binning (lysozyme-16m, EIGER2 16M, live worker on the binned stream)", "",
        _md(pd.DataFrame(binning)), "",
        "process_cpu_ms: one worker's CPU per frame (decode + peaks + index + integrate, "
        "its per-run set-up not counted); binner_cpu_ms: the binning worker's (decode + "
        "bin + encode, set-up included).", "",
        f"Load average (1/5/15 min) after this part: {_common.load_average()}",
    ]
    return lines, {"writer": throughput, "policies": policies, "binning": binning}


if __name__ == "__main__":
    main()
