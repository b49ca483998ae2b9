"""Whole-pipeline throughput on lysozyme-4m: frames/s, ms per hit and non-hit, stages.

Run: ``.venv/bin/python benchmarks/bench_pipeline.py [--frames N] [--repeats R]``.

Processes the ``lysozyme-4m`` data set (EIGER X 4M, 50 % hits) with
:func:`sxlab.process_run` in this process (1 worker) and on a local pool of 2 workers,
after a warm-up that compiles and loads every kernel. Prints the machine, frames/s (wall
clock of the whole call, median of the repeats), the median time per hit and per
non-hit frame from the per-frame timings of the 1-worker run, the per-stage medians
from the profile table, the indexing rate and the targets (≤ 35 ms per non-hit and
≤ 80 ms per hit frame, one worker).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import _common

os.environ.setdefault("NUMBA_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import sxlab as sx  # noqa: E402
from sxlab.demo import demo_params  # noqa: E402


def machine() -> str:
    load = _common.load_average(sep=" ", unknown="n/a")
    return (f"{_common.cpu_model()}; {os.cpu_count()} logical CPUs; "
            f"Python {platform.python_version()}, numpy {np.__version__}, "
            f"sxlab {sx.__version__}; load average {load}")


def timed(run, params, executor, n_workers):
    t0 = time.perf_counter()
    res = sx.process_run(run, params, executor=executor, n_workers=n_workers,
                         progress=False)
    return time.perf_counter() - t0, res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=60, help="frames per timed run")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per configuration")
    args = ap.parse_args()

    run = sx.datasets.load("lysozyme-4m", progress=False)
    truth = sx.datasets.truth("lysozyme-4m")
    params = demo_params(truth)
    sub = run[: min(args.frames, len(run))]
    timed(run[:4], params, "serial", 1)  # warm-up: compile and load every kernel

    print("# sxlab pipeline benchmark: lysozyme-4m (EIGER X 4M, 2070 × 2167 px)")
    print(f"- machine: {machine()}")
    print(f"- frames per run: {len(sub)}; repeats: {args.repeats}; times are wall clock")
    print()
    rows = []
    results = {}
    for label, executor, workers in (("1 worker", "serial", 1), ("2 workers", "local", 2)):
        walls = []
        for _ in range(args.repeats):
            wall, res = timed(sub, params, executor, workers)
            walls.append(wall)
        results[label] = res
        wall = statistics.median(walls)
        rows.append({"configuration": label, "wall_s": wall,
                     "frames_per_s": len(sub) / wall, "ms_per_frame": 1e3 * wall / len(sub)})
    table = pd.DataFrame(rows)
    print(table.to_markdown(index=False, floatfmt=".2f"))
    print()

    res = results["1 worker"]
    f = res.frames
    hits, non_hits = f[f.hit], f[~f.hit]
    per = pd.DataFrame([
        {"frames": "hits", "n": len(hits), "ms_median": 1e3 * hits.total_s.median(),
         "ms_p90": 1e3 * hits.total_s.quantile(0.9), "target_ms": 80},
        {"frames": "non-hits", "n": len(non_hits), "ms_median": 1e3 * non_hits.total_s.median(),
         "ms_p90": 1e3 * non_hits.total_s.quantile(0.9), "target_ms": 35},
    ])
    print("Per frame, one worker (read + peaks + index + integrate):")
    print(per.to_markdown(index=False, floatfmt=".1f"))
    print()
    prof = res.profile
    stage = prof[prof.depth == 1].copy()
    stage["stage"] = stage.path.str.split("/").str[1]
    stage = stage.merge(f[["frame", "hit"]], on="frame")
    breakdown = (stage.groupby(["stage", "hit"]).duration_s.median().mul(1e3)
                 .unstack("hit").rename(columns={True: "hit ms", False: "non-hit ms"}))
    print("Per-stage medians, one worker:")
    print(breakdown.to_markdown(floatfmt=".2f"))
    print()
    rate = f.indexed.sum() / max(f.hit.sum(), 1)
    print(f"hits {int(f.hit.sum())} / {len(f)}, indexed {int(f.indexed.sum())} "
          f"({100 * rate:.0f} % of hits), reflections {len(res.reflections)}")


if __name__ == "__main__":
    main()
