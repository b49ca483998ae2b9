"""Experiment database: ingest rate of per-frame rows and the run-statistics query.

Builds an experiment of 50 runs × 20 000 frames (1 000 000 frames; synthetic per-frame
results with cctbx-like rates, 30 % indexed) on SQLite (the embedded default, a file in
a temporary folder) and on PostgreSQL (a throwaway cluster on loopback, started like the
tests start it), then measures:

* ingest: each job's output (four committed parts of 5 000 frames, with their crystals)
  read from Parquet and written to the database by :func:`sxlab.experiment.ingest.ingest_job`
  — the path the watcher uses; rows/s per job, median over the 50 jobs;
* query: :meth:`sxlab.Experiment.run_stats` of the whole trial (1 000 000 frames, 50 runs:
  database read of the packed per-part columns + moving averages + statistics bar),
  median of 5 after a warm-up; beside it, reading every column of the frames table row
  by row (:meth:`sxlab.Experiment.frames`), which the statistics avoid.

Targets (issue 14): ingest ≥ 50 000 rows/s on SQLite; query < 1 s on both.
Run ``python benchmarks/bench_experiment.py`` (``--runs``/``--frames`` to resize); with
``SXLAB_BENCH_OUT`` set (or ``--out DIR``) the report is written there too.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import _common

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))


class NullExecutor:
    """Accepts jobs and runs nothing: the benchmark writes their output itself."""

    name, max_jobs, workers = "null", 10**6, 1

    def submit(self, job_dir):
        return ""

    def poll(self):
        pass

    def terminate(self, external_id, job_dir):
        pass


def write_parts(job_dir: Path, run: str, n_frames: int, part: int, rng) -> None:
    import numpy as np
    import pandas as pd

    from sxlab import tables

    parts = job_dir / "results" / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    for first in range(0, n_frames, part):
        frame = np.arange(first, min(first + part, n_frames))
        n = len(frame)
        n_peaks = rng.poisson(25, n) * (rng.random(n) < 0.6)
        n_cryst = np.where(n_peaks > 16, rng.choice([0, 1, 1, 2], n), 0)
        frames = tables.FRAMES.make(pd.DataFrame({
            "frame": frame, "run": run, "event": [f"//{i}" for i in frame],
            "filename": f"/data/{run}_data_000001.h5", "status": "ok", "error": "",
            "n_peaks": n_peaks, "hit": n_peaks >= 16, "indexed": n_cryst > 0,
            "n_crystals": n_cryst, "n_reflections": n_cryst * 150,
            "resolution_A": np.where(n_cryst > 0, rng.uniform(1.6, 4.0, n), np.nan),
            "solvent_ratio": rng.uniform(0.7, 1.3, n), "worker": 0, "read_s": 0.01,
            "peaks_s": 0.05, "index_s": 0.1, "integrate_s": 0.03, "total_s": 0.2}))
        rows = np.repeat(frame, n_cryst)
        k = len(rows)
        crystals = tables.CRYSTALS.make(pd.DataFrame({
            "frame": rows, "crystal": np.concatenate([np.arange(c) for c in n_cryst]) if k
            else np.zeros(0, int), "a": rng.normal(79.1, 0.3, k), "b": rng.normal(79.1, 0.3, k),
            "c": rng.normal(37.9, 0.2, k), "alpha": 90.0, "beta": 90.0, "gamma": 90.0,
            "lattice": "tetragonal", "centering": "P", "n_peaks_indexed": 20}),
            fill_missing=True)
        stem = f"{frame[0]:09d}-{frame[-1]:09d}"
        # A committed part as sxlab.results writes it: every table, the frames one last.
        for kind, table in (("peaks", None), ("crystals", crystals), ("reflections", None),
                            ("profile", None), ("frames", frames)):
            table = tables.get(kind).empty() if table is None else table
            table.to_parquet(parts / f"{kind}-{stem}.parquet", index=False)


def bench_backend(label: str, url: str, root: Path, n_runs: int, n_frames: int,
                  repeats: int) -> dict:
    import numpy as np

    from sxlab.experiment import Experiment
    from sxlab.experiment.ingest import ingest_job

    rng = np.random.default_rng(2026)
    exp = Experiment(url, root=root, executor=NullExecutor())
    exp.add_trial()
    exp.add_block(1)
    for r in range(1, n_runs + 1):
        exp.register_run(f"run{r:04d}", f"/data/run{r:04d}_master.h5", n_frames=n_frames)
    jobs = exp.update(ingest=False)
    rates, wall_total, cpu_total = [], 0.0, 0.0
    for job in jobs.itertuples():
        write_parts(Path(job.job_dir), job.run, n_frames, 5000, rng)
    import sqlalchemy as sa

    from sxlab.experiment import schema as S

    with exp.engine.connect() as conn:
        rows = {r.id: dict(r._mapping) for r in conn.execute(sa.select(S.jobs))}
    for job in jobs.itertuples():
        t0, c0 = time.perf_counter(), time.process_time()
        n = ingest_job(exp.engine, rows[job.id])
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        wall_total += dt
        cpu_total += dc
        rates.append(n / dt)
    total = n_runs * n_frames
    st, wall, cpu = _common.time_runs(lambda: exp.run_stats(1), repeats, warmup=1)
    _, read_wall, _ = _common.time_runs(lambda: exp.frames(1), max(1, repeats // 2),
                                        warmup=0)
    assert len(st.frames) == total and len(st.runs) == n_runs
    exp.close()
    return {"backend": label, "frames": total, "runs": n_runs,
            "ingest_rows_per_s_median": statistics.median(rates),
            "ingest_rows_per_s_overall": total / wall_total,
            "ingest_cpu_s": cpu_total,
            "query_s_median": statistics.median(wall), "query_cpu_s_median":
            statistics.median(cpu), "read_s_median": statistics.median(read_wall)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--frames", type=int, default=20_000, help="frames per run")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-postgres", action="store_true")
    ap.add_argument("--out", default=os.environ.get("SXLAB_BENCH_OUT"))
    args = ap.parse_args(argv)
    load_start = _common.load_average()
    results = []
    with tempfile.TemporaryDirectory(prefix="sxlab-bench-exp-") as tmp:
        tmp = Path(tmp)
        results.append(bench_backend("SQLite (WAL, file)", str(tmp / "sqlite"),
                                     tmp / "sqlite", args.runs, args.frames, args.repeats))
        if not args.no_postgres:
            import pgserver

            if not pgserver.available():
                print("PostgreSQL binaries not found: run .ci/services.sh as root",
                      file=sys.stderr)
            else:
                server = pgserver.PostgresServer().start()
                try:
                    import psycopg

                    ver = psycopg.connect(server.url).info.server_version
                    label = f"PostgreSQL {ver // 10000} (loopback, fsync off)"
                    results.append(bench_backend(label, server.url, tmp / "pg", args.runs,
                                                 args.frames, args.repeats))
                finally:
                    server.stop()
    lines = ["# Experiment database: ingest and run-statistics query", ""]
    lines += [f"- {s}" for s in _common.machine_description(
        load_start, packages=("numpy", "pandas", "sqlalchemy"), threads=False)]
    lines += ["", f"{args.runs} runs × {args.frames} frames; ingest: per job (4 parts of "
              "5 000 frames + crystals, Parquet → database), median over jobs; query: "
              f"Experiment.run_stats of the whole trial, median of {args.repeats} after a "
              "warm-up.", "",
              "| backend | frames | ingest rows/s (median) | ingest rows/s (overall) | "
              "ingest rows per CPU s | "
              "run_stats s (median) | run_stats CPU s | frames() s (all columns, row read) |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['backend']} | {r['frames']:,} | {r['ingest_rows_per_s_median']:,.0f}"
                     f" | {r['ingest_rows_per_s_overall']:,.0f}"
                     f" | {r['frames'] / r['ingest_cpu_s']:,.0f}"
                     f" | {r['query_s_median']:.3f} | "
                     f"{r['query_cpu_s_median']:.3f} | {r['read_s_median']:.3f} |")
    lines += ["", "Targets: ingest ≥ 50 000 rows/s on SQLite; query < 1 s. On a shared "
              "machine the CPU columns are the ones to compare (PostgreSQL's server work "
              "is in its own processes, outside the CPU columns)."]
    text = "\n".join(lines)
    print(text)
    if args.out:
        _common.write_report(Path(args.out), "bench_experiment", text, results,
                             {"results": results})


if __name__ == "__main__":
    main()
