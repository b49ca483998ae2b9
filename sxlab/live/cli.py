"""The ``sxlab replay`` and ``sxlab live ...`` commands (registered by :mod:`sxlab.cli`)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from pathlib import Path

_LIVE_HELP = """\
Real-time processing of a detector stream through a Redis Streams frame broker.

  run      one machine: embedded broker, ingest, N workers, summary at the end
  broker   start a loopback Redis server for the other commands and wait
  ingest   detector ZeroMQ stream -> broker
  worker   broker -> processing -> output directory (as many as you like)
  write    broker -> NeXus files: 1000-frame data files and a VDS master (all frames,
           hits, indexed, binned ...)
  bin      broker -> binned frame stream (2x2, 3x3, 4x4)
  status   lag, pending, trimmed and frames/s per run and consumer group
  demo     replay the demo run and process it live with the embedded broker"""


def _logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handler(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def _cmd_replay(args) -> int:
    from .replay import Replay

    rep = Replay(args.run, geometry=args.geometry, endpoint=args.endpoint, rate=args.rate,
                 fmt=args.format, frames=args.frames, series=args.series, loop=args.loop,
                 run_name=args.run_name, preload=args.preload)
    stop = _stop_on_signals()
    print(f"{rep!r}", file=sys.stderr)
    for k in range(args.repeat):
        rep.series = args.series + k
        s = rep.serve(stop)
        print(f"series {s.series}: {s.frames} frames sent at {s.rate_hz:.2f} frames/s",
              file=sys.stderr)
        if stop.is_set():
            break
    import zmq

    zmq.Context.instance().term()          # every queued message is sent (or lingered out)
    return 1 if stop.is_set() else 0


def _broker(args):
    from .broker import Broker

    kw = {}
    if getattr(args, "password", None):
        kw["password"] = args.password
    if getattr(args, "tls_ca", None):
        kw["ssl_ca_certs"] = args.tls_ca
    return Broker(args.broker, beamtime=args.beamtime, source=args.detector, **kw)


def _cmd_broker(args) -> int:
    from .server import EmbeddedRedis

    _logging(args.verbose)
    server = EmbeddedRedis(port=args.port, directory=args.dir, persistence=args.persist,
                           password=args.password, maxmemory=args.maxmemory).start()
    print(server.url, flush=True)
    stop = _stop_on_signals()
    try:
        while not stop.wait(1.0):
            if server.process.poll() is not None:
                print("redis-server exited", file=sys.stderr)
                return 1
    finally:
        server.stop()
    return 0


def _cmd_ingest(args) -> int:
    from .ingest import Ingest

    _logging(args.verbose)
    broker = _broker(args)
    try:
        ingest = Ingest(args.source, broker, run=args.run, maxlen_frames=args.maxlen,
                        maxlen_minutes=args.maxlen_minutes, backfill=args.backfill)
        s = ingest.run(n_series=args.series_count, stop=_stop_on_signals())
        print(f"ingest: {s.frames} frames in {len(s.runs)} run(s), {s.failed} failed, "
              f"{s.missing} missing, {s.backfilled} backfilled, {s.duplicates} duplicates, "
              f"{s.trimmed} trimmed unread; {1e3 * s.cpu_s / max(s.frames, 1):.2f} ms CPU "
              "per frame", file=sys.stderr)
    finally:
        broker.close()
    return 0


def _cmd_worker(args) -> int:
    from sxlab.params import Params

    from .worker import LiveWorker

    _logging(args.verbose)
    broker = _broker(args)
    stop = _stop_on_signals()
    try:
        params = Params.load(args.params) if args.params else Params()
        while not stop.is_set():
            if args.run and args.run.count(":") == 3:
                key = args.run
            else:
                key = broker.wait_run(since=args.since, run=args.run, timeout_s=1.0)
            if key is None:
                continue
            run_key = key
            out = args.out / key.rsplit(":", 1)[1] if args.follow else args.out
            if args.input:
                from .broker import derived_key

                key = derived_key(key, args.input)
            if args.blank_sample is not None:
                from .storage import set_storage_policy

                set_storage_policy(broker, key, blank_fraction=args.blank_sample,
                                   blank_seed=args.blank_seed)
            worker = LiveWorker(broker, key, out, params, geometry=args.geometry,
                                group=args.group, consumer=args.name, worker=args.worker,
                                claim_idle_s=args.claim_idle, batch=args.batch,
                                publish=tuple(p for p in args.publish.split(",") if p),
                                bin_factor=args.bin)
            s = worker.run(stop=stop)
            print(f"worker {worker.consumer}: {s.frames} frames of {key} ({s.failed} "
                  f"failed, {s.reclaimed} reclaimed from dead workers), "
                  f"{1e3 * s.cpu_s / max(s.frames, 1):.1f} ms CPU per frame", file=sys.stderr)
            if not args.follow:
                break
            args.since = broker.client.zscore(f"{broker.prefix}:{broker.beamtime}:runs",
                                              run_key) + 1e-6
    finally:
        broker.close()
    return 0


def _wait_key(broker, args, stop) -> str | None:
    """The run a ``write``/``bin`` command works on: ``--run`` (name or key) or the first
    run registered after ``--since``."""
    if args.run and args.run.count(":") == 3:
        return args.run
    while not stop.is_set():
        key = broker.wait_run(since=args.since, run=args.run, timeout_s=1.0)
        if key is not None:
            return key
    return None


def _single_consumer(args, start) -> int:
    """The frame of ``write`` and ``bin``: broker, signals, the run, then ``start(broker,
    key, stop)``, which runs the consumer and returns it with its one-line report."""
    _logging(args.verbose)
    broker = _broker(args)
    stop = _stop_on_signals()
    try:
        key = _wait_key(broker, args, stop)
        if key is None:
            return 1
        consumer, report = start(broker, key, stop)
        print(report, file=sys.stderr)
        return 0 if consumer.done else 1
    finally:
        broker.close()


def _cmd_write(args) -> int:
    from .writer import LiveWriter

    def start(broker, key, stop):
        w = LiveWriter(broker, key, args.out, input=args.input, group=args.group,
                       consumer=args.name, frames_per_file=args.frames_per_file,
                       process_group=args.process_group, prefix=args.prefix)
        s = w.run(stop=stop, progress=args.progress)
        return w, (f"write {w.input_key}: {s.stored} frames stored in {s.files} file(s), "
                   f"{s.failed} not stored, {s.skipped} found already stored; "
                   f"{s.bytes / max(s.wall_s, 1e-9) / 1e6:.1f} MB/s, most behind: "
                   f"{s.max_lag} entries -> {w.master_path}")

    return _single_consumer(args, start)


def _cmd_bin(args) -> int:
    from .binner import LiveBinner

    def start(broker, key, stop):
        b = LiveBinner(broker, key, args.factor, bad_fraction=args.bad_fraction,
                       threads=args.threads, consumer=args.name)
        s = b.run(stop=stop)
        return b, (f"bin {args.factor}x{args.factor} {key} -> {b.out_key}: {s.frames} "
                   f"frames ({s.failed} failed), "
                   f"{1e3 * s.cpu_s / max(s.frames, 1):.1f} ms CPU per frame")

    return _single_consumer(args, start)


def _cmd_status(args) -> int:
    import pandas as pd

    broker = _broker(args)
    try:
        while True:
            table = broker.status(args.run)
            with pd.option_context("display.width", 200, "display.max_columns", 20):
                print(table.drop(columns=["stream"]).to_string(index=False)
                      if len(table) else "no runs")
            if not args.watch:
                break
            time.sleep(args.watch)
            print()
    except KeyboardInterrupt:
        pass
    finally:
        broker.close()
    return 0


def _print_summary(summary) -> None:
    print(summary.table().astype(object).T.to_string(header=False))
    failed = summary.results.frames
    failed = failed[failed.status != "ok"]
    if len(failed):
        print(f"\n{len(failed)} failed frame(s):")
        for row in failed.head(20).itertuples():
            print(f"  frame {row.frame}: {row.error}")


def _cmd_run(args) -> int:
    from .supervisor import run_live

    _logging(args.verbose)
    summary = run_live(args.source, args.params, args.out, geometry=args.geometry,
                       n_workers=args.jobs, broker_url=args.broker, beamtime=args.beamtime,
                       detector=args.detector, run=args.run, maxlen_frames=args.maxlen,
                       maxlen_minutes=args.maxlen_minutes, backfill=args.backfill,
                       claim_idle_s=args.claim_idle, publish=args.publish,
                       timeout_s=args.timeout, progress=not args.no_progress,
                       write=args.write, store=args.store, blank_sample=args.blank_sample,
                       blank_seed=args.blank_seed, bin_factor=args.bin,
                       frames_per_file=args.frames_per_file)
    _print_summary(summary)
    return 0


def _cmd_demo(args) -> int:
    from .demo import live_demo

    _logging(args.verbose)
    summary = live_demo(frames=args.frames, rate=args.rate, fmt=args.format,
                        n_workers=args.jobs, out=args.out, progress=not args.no_progress)
    _print_summary(summary)
    return 0


# ------------------------------------------------------------------------ parser
def _broker_options(p, *, need_url: bool = False) -> None:
    p.add_argument("--broker", required=need_url, metavar="URL",
                   help="redis://[:password@]host:port/0 or rediss:// (TLS)"
                   + ("" if need_url else "; default: an embedded loopback server"))
    p.add_argument("--password", help="Redis password (or put it in the URL)")
    p.add_argument("--tls-ca", metavar="PEM", help="CA certificate for rediss:// URLs")
    p.add_argument("--beamtime", default="local", help="beamtime id (key prefix level 1)")
    p.add_argument("--detector", default="eiger", help="data source name (key level 2)")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress")


def _product_options(p) -> None:
    p.add_argument("--write", type=Path, metavar="DIR",
                   help="also store the run as NeXus files in DIR (sxlab live write)")
    p.add_argument("--store", choices=("all", "hits", "indexed"), default="all",
                   help="which frames --write stores (default all)")
    p.add_argument("--blank-sample", type=float, default=0.0, metavar="FRACTION",
                   help="with --store hits|indexed: also store this seeded random fraction "
                   "of the other frames")
    p.add_argument("--blank-seed", type=int, default=0, metavar="SEED")
    p.add_argument("--bin", type=int, choices=(2, 3, 4), metavar="N",
                   help="process frames binned N x N: each worker bins as it decodes "
                   "(positions in unbinned pixels); with --write a binning worker "
                   "publishes the binned stream that processing and --write use")
    p.add_argument("--frames-per-file", type=int, default=1000, metavar="N")


def register(sub) -> None:
    """Add ``replay`` and ``live`` to the subcommands of the ``sxlab`` command."""
    p = sub.add_parser("replay", help="serve a recorded run as an EIGER ZeroMQ stream",
                       description="Serve a run exactly as a detector control unit streams "
                       "it: PUSH bind, series header, images at a steady rate, end.")
    p.add_argument("run", metavar="RUN", help="NXmx master or HDF5 file")
    p.add_argument("--geometry", metavar="GEOM", help="CrystFEL geometry for the header")
    p.add_argument("--endpoint", default="tcp://127.0.0.1:9999",
                   help="where to bind (default tcp://127.0.0.1:9999)")
    p.add_argument("--rate", type=float, metavar="FPS", help="frames per second")
    p.add_argument("--format", choices=("stream1", "stream2"), default="stream1")
    p.add_argument("--frames", type=int, metavar="N", help="frames per series")
    p.add_argument("--series", type=int, default=1, metavar="ID", help="first series id")
    p.add_argument("--loop", action="store_true", help="start the run over when it ends")
    p.add_argument("--repeat", type=int, default=1, metavar="K", help="series to send")
    p.add_argument("--run-name", help="run name in the header (default: from the file)")
    p.add_argument("--preload", action="store_true", help="read all frames first")
    p.set_defaults(func=_cmd_replay)

    live = sub.add_parser("live", help="real-time processing through a Redis frame broker",
                          description=_LIVE_HELP,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    lsub = live.add_subparsers(dest="live_command", metavar="COMMAND", required=True)

    p = lsub.add_parser("run", help="one machine: broker, ingest, workers, summary")
    p.add_argument("--source", required=True, metavar="tcp://HOST:PORT")
    p.add_argument("--params", metavar="TOML", help="parameter file (default: defaults)")
    p.add_argument("--geometry", metavar="GEOM", help="default: from the series header")
    p.add_argument("--out", required=True, type=Path, metavar="DIR")
    p.add_argument("-j", "--jobs", type=int, default=2, metavar="N", help="workers")
    p.add_argument("--run", help="run name (default: from the series header)")
    p.add_argument("--maxlen", type=int, metavar="FRAMES", help="broker cache size")
    p.add_argument("--maxlen-minutes", type=float, metavar="MIN", help="broker cache size")
    p.add_argument("--backfill", metavar="FILE",
                   help="the detector's files of the series, to fill lost frames")
    p.add_argument("--claim-idle", type=float, default=30.0, metavar="S",
                   help="reclaim frames pending longer than this from dead workers")
    p.add_argument("--publish", default="results", help="derived streams: results,hits")
    p.add_argument("--timeout", type=float, metavar="S", help="give up after S seconds")
    p.add_argument("--no-progress", action="store_true")
    _product_options(p)
    _broker_options(p)
    p.set_defaults(func=_cmd_run)

    p = lsub.add_parser("broker", help="start a loopback Redis server and wait")
    p.add_argument("--port", type=int, help="default: a free port")
    p.add_argument("--dir", type=Path, help="data directory (default: temporary)")
    p.add_argument("--persist", action="store_true", help="append-only file in --dir")
    p.add_argument("--password")
    p.add_argument("--maxmemory", help="e.g. 8gb")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=_cmd_broker)

    p = lsub.add_parser("ingest", help="detector ZeroMQ stream -> broker")
    p.add_argument("--source", required=True, metavar="tcp://HOST:PORT")
    p.add_argument("--run", help="run name (default: from the series header)")
    p.add_argument("--maxlen", type=int, metavar="FRAMES", help="broker cache size")
    p.add_argument("--maxlen-minutes", type=float, metavar="MIN", help="broker cache size")
    p.add_argument("--backfill", metavar="FILE", help="files to fill lost frames from")
    p.add_argument("--series-count", type=int, metavar="N", help="stop after N series")
    _broker_options(p, need_url=True)
    p.set_defaults(func=_cmd_ingest)

    p = lsub.add_parser("worker", help="broker -> processing -> output directory")
    p.add_argument("--out", required=True, type=Path, metavar="DIR")
    p.add_argument("--params", metavar="TOML")
    p.add_argument("--geometry", metavar="GEOM", help="default: from the series header")
    p.add_argument("--run", help="run name or stream key (default: the next run)")
    p.add_argument("--since", type=float, default=0.0, metavar="EPOCH",
                   help="take the first run registered after this time")
    p.add_argument("--follow", action="store_true",
                   help="go on with the next runs (each into DIR/<run>)")
    p.add_argument("--group", default="process", help="consumer group")
    p.add_argument("--name", help="consumer name (default: host-pid)")
    p.add_argument("--worker", type=int, default=0, metavar="K", help="worker number")
    p.add_argument("--claim-idle", type=float, default=30.0, metavar="S")
    p.add_argument("--batch", type=int, default=4, metavar="N")
    p.add_argument("--publish", default="results",
                   help="derived streams: results,hits,indexed")
    p.add_argument("--input", metavar="KIND", help="process a derived frame stream of the run "
                   "(e.g. binned2) instead of its frames")
    p.add_argument("--bin", type=int, choices=(2, 3, 4), metavar="N",
                   help="bin each frame N x N as it is decoded and process it binned "
                   "(peak and reflection positions in unbinned pixels)")
    p.add_argument("--blank-sample", type=float, metavar="FRACTION",
                   help="also publish this seeded random fraction of the other frames to "
                   "the hits/indexed streams")
    p.add_argument("--blank-seed", type=int, default=0, metavar="SEED")
    _broker_options(p, need_url=True)
    p.set_defaults(func=_cmd_worker)

    p = lsub.add_parser("write", help="broker -> NeXus data files and VDS master",
                        description="Store a run's frames (or a selection of them) as they "
                        "came from the detector: data files of --frames-per-file frames and "
                        "a master file with the NXmx metadata, valid at any moment.")
    p.add_argument("--out", required=True, type=Path, metavar="DIR")
    p.add_argument("--input", default="frames", metavar="KIND",
                   help="frames (default), hits, indexed, binned2, binned2_hits ...")
    p.add_argument("--run", help="run name or stream key (default: the next run)")
    p.add_argument("--since", type=float, default=0.0, metavar="EPOCH",
                   help="take the first run registered after this time")
    p.add_argument("--frames-per-file", type=int, default=1000, metavar="N")
    p.add_argument("--prefix", help="file name prefix (default: run name [+ _input])")
    p.add_argument("--group", default="write", help="consumer group (one writer each)")
    p.add_argument("--name", default="writer", help="consumer name")
    p.add_argument("--process-group", default="process",
                   help="group of the workers that publish hits/indexed")
    p.add_argument("--progress", action="store_true", help="progress bar with the lag")
    _broker_options(p, need_url=True)
    p.set_defaults(func=_cmd_write)

    p = lsub.add_parser("bin", help="broker -> binned frame stream",
                        description="Bin every frame of a run N x N (sums) into the frame "
                        "stream <detector>_binned<N>, with the binned geometry in its header.")
    p.add_argument("--factor", type=int, required=True, choices=(2, 3, 4, 5, 6, 8))
    p.add_argument("--bad-fraction", type=float, default=0.0, metavar="F",
                   help="a binned pixel is bad when more than F of its pixels are (0: any)")
    p.add_argument("--threads", type=int, default=1, metavar="N")
    p.add_argument("--run", help="run name or stream key (default: the next run)")
    p.add_argument("--since", type=float, default=0.0, metavar="EPOCH")
    p.add_argument("--name", default="binner", help="consumer name")
    _broker_options(p, need_url=True)
    p.set_defaults(func=_cmd_bin)

    p = lsub.add_parser("status", help="lag, pending, trimmed, frames/s per group")
    p.add_argument("--run", help="one run (name or key)")
    p.add_argument("--watch", type=float, metavar="S", help="repeat every S seconds")
    _broker_options(p, need_url=True)
    p.set_defaults(func=_cmd_status)

    p = lsub.add_parser("demo", help="replay the demo run and process it live")
    p.add_argument("--frames", type=int, help="frames to replay (default: the whole run)")
    p.add_argument("--rate", type=float, default=50.0, metavar="FPS")
    p.add_argument("--format", choices=("stream1", "stream2"), default="stream2")
    p.add_argument("-j", "--jobs", type=int, default=2, metavar="N")
    p.add_argument("--out", type=Path, help="output directory (default: temporary)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=_cmd_demo)
