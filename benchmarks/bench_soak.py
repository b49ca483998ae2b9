"""Soak: many frames through one worker's per-frame path; slowdown and memory growth.

One worker (this process, one thread) prepares once (:func:`sxlab.prepare`) and then
loops ``N`` times over the frames of a simulated run (lysozyme, 50 % hits,
bitshuffle-LZ4 NXmx; 20 frames cached under ``$SXLAB_CACHE/bench_runs``), each time
doing what the batch worker does per frame: :func:`sxlab.pipeline.read_frame` (into the
worker's reused arrays), :func:`sxlab.process_frame` (peaks, hit, index, integrate, the frame's
tables and profile), results dropped as a worker drops them once shipped. Recorded per
frame: CPU time (``time.process_time``); every 100 frames: the resident set size
(``/proc/self/statm``, current, not peak).

Reported: median CPU per frame of the first and the last 10 % of the frames and their
ratio (target: within 5 %), RSS after the first 10 % and at the end and the growth
(target: ≤ 10 MB), peak RSS. The first 10 % are counted from the second pass (the
first frame loads the compiled kernels).

Run ``python benchmarks/bench_soak.py [--frames N] [--detector 1m|4m] [--quick]
[--out [DIR]]``; the default (10 000 frames of the 1M detector) is what ``make bench``
runs; ``--frames 100000`` is the long soak.
"""

from __future__ import annotations

import _common

_common.single_threaded()

import argparse  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

DETECTORS = {"1m": "lysozyme-demo", "4m": "lysozyme-4m"}
N_DATA = 20
TARGETS = {"slowdown": 0.05, "growth_mb": 10.0}


def rss_mb() -> float:
    """Current resident set size (MB)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def soak(master: Path, n_frames: int, progress: bool) -> dict:
    from sxlab.demo import demo_params
    from sxlab.io import open_run
    from sxlab.pipeline import prepare, process_frame, read_frame
    from sxlab.simulate import Truth

    run = open_run(master)
    ctx = prepare(run.geometry, demo_params(Truth.load(master)))
    n_data = len(run)
    # preallocated, so that the bookkeeping does not grow the process as it goes
    cpu = np.zeros(n_frames)
    hit = np.zeros(n_frames, bool)
    rss = []
    t_start = time.perf_counter()
    for k in range(n_frames):
        i = k % n_data
        c0 = time.process_time()
        image, bad, attrs = read_frame(run, i, ctx)
        res = process_frame(image, bad, ctx, frame=k, attrs=attrs)
        cpu[k] = time.process_time() - c0
        hit[k] = res.frame["hit"]
        if k % 100 == 0:
            rss.append((k, rss_mb()))
            if progress and k % 5000 == 0:
                recent = 1e3 * statistics.median(cpu[max(k - 5000, 0):k + 1])
                print(f"[bench_soak] {k} frames, {rss[-1][1]:.1f} MB, median of the last "
                      f"5000: {recent:.2f} ms CPU", file=sys.stderr, flush=True)
    rss.append((n_frames, rss_mb()))
    wall = time.perf_counter() - t_start
    tenth = max(n_frames // 10, 1)
    first = cpu[n_data:n_data + tenth] if n_frames > n_data + tenth else cpu[:tenth]
    last = cpu[-tenth:]
    rss_first = next(v for k, v in rss if k >= min(n_data + tenth, n_frames))
    med = statistics.median
    return {
        "frames": n_frames, "hits": int(hit.sum()), "wall_s": wall,
        "cpu_s": float(cpu.sum()),
        "first_ms": 1e3 * med(first), "last_ms": 1e3 * med(last),
        "slowdown": med(last) / med(first) - 1,
        "rss_first_mb": rss_first, "rss_end_mb": rss[-1][1],
        "growth_mb": rss[-1][1] - rss_first,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_trace": rss,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=None,
                    help="frames through the worker (default 10 000; 1 000 with --quick)")
    ap.add_argument("--detector", choices=sorted(DETECTORS), default="1m")
    ap.add_argument("--quick", action="store_true", help="1 000 frames")
    ap.add_argument("--out", type=Path, nargs="?", const=Path(__file__).parent / "out",
                    default=None, metavar="DIR", help="also write bench_soak.md/.csv/.json")
    args = ap.parse_args()
    n = args.frames or (1000 if args.quick else 10_000)
    if n < 2 * N_DATA:
        ap.error(f"--frames must be at least {2 * N_DATA}")
    if args.out is None and os.environ.get("SXLAB_BENCH_OUT"):
        args.out = Path(os.environ["SXLAB_BENCH_OUT"])
    load_start = _common.load_average()
    master = _common.simulated_run(DETECTORS[args.detector], N_DATA)
    r = soak(master, n, progress=True)
    lines = [f"# Soak: {n} frames through one worker ({args.detector} detector, "
             f"{N_DATA} frames looped, {r['hits']} hits)", ""]
    lines += [f"- {line}" for line in _common.machine_description(load_start)]
    lines += ["", "| | value | target |", "|---|---:|---:|",
              f"| CPU per frame, first 10 %, ms (median) | {r['first_ms']:.2f} | |",
              f"| CPU per frame, last 10 %, ms (median) | {r['last_ms']:.2f} | |",
              f"| change last vs first | {100 * r['slowdown']:+.1f} % | "
              f"within ±{100 * TARGETS['slowdown']:.0f} % |",
              f"| RSS after the first 10 %, MB | {r['rss_first_mb']:.1f} | |",
              f"| RSS at the end, MB | {r['rss_end_mb']:.1f} | |",
              f"| RSS growth, MB | {r['growth_mb']:+.1f} | ≤ {TARGETS['growth_mb']:.0f} MB |",
              f"| peak RSS, MB | {r['peak_rss_mb']:.0f} | |",
              f"| whole soak: CPU s / wall s | {r['cpu_s']:.0f} / {r['wall_s']:.0f} | |"]
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        row = {k: v for k, v in r.items() if k != "rss_trace"}
        _common.write_report(args.out, "bench_soak", text, [row],
                             {**r, "detector": args.detector})


if __name__ == "__main__":
    main()
