"""Indexing speed and success on one core: sxlab's asdf, normal and fast mode.

For the hit frames of the ``lysozyme-4m`` data set (EIGER X 4M, lysozyme P 43 21 2), the
table gives per mode (``asdf``, ``asdf-fast``):

* milliseconds per hit frame, wall clock and CPU: median and 90th percentile over frames
  of the median of several timed runs per frame, after one warm-up run per frame (and one
  for the whole benchmark, which also compiles the numba kernels);
* indexing rate (hits with a lattice), the rate of correct lattices (orientation within 1°
  of the simulated crystal, up to the point group) and the median orientation error;
* triplets processed per frame (median) and peaks per frame.

Peaks come from :class:`sxlab.peaks.PeakFinder` (peakfinder8, ADC threshold 3, min SNR 5)
run on the frames as :meth:`sxlab.io.Run.read` gives them; when ``sxlab.peaks`` cannot be
imported, from the simulator's reflections (expected photons above 30, positions jittered
by 0.3 px). The report says which. The modes take turns frame by frame so that a change of
machine load affects them alike.

Usage::

    python benchmarks/bench_index.py [--frames N] [--runs R] [--quick] [--out [DIR]]

With ``--out`` (default directory ``benchmarks/out``), or with ``SXLAB_BENCH_OUT`` set as
``make bench`` does, the report is also written to ``bench_index.md``, ``.csv`` and
``.json`` there.
"""

from __future__ import annotations

import _common

# One core: every thread pool has one thread (set before numpy and numba are imported).
_common.single_threaded()

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
DATASET = "lysozyme-4m"
MODES = (("asdf", {"fast": False}), ("asdf-fast", {"fast": True}))
#: Peak search of the benchmark (photon-counting frames: a few photons of ADC threshold).
PEAK_PARAMS = {"adc_threshold": 3.0, "min_snr": 5.0}
#: Truth peaks when sxlab.peaks is missing: expected photons above this, jitter in pixels.
TRUTH_MIN_PHOTONS = 30.0
TRUTH_JITTER_PX = 0.3
#: A lattice is correct when its orientation is within this of the simulated one (deg).
CORRECT_DEG = 1.0


def log(message: str) -> None:
    """Progress message on stderr (stdout carries only the report)."""
    print(f"[bench_index] {message}", file=sys.stderr, flush=True)


# ============================================================================== data
def load_hits(n_frames: int):
    """Hit frames among the first ``n_frames``: (geometry, cell, peak tables, truth, source)."""
    import pandas as pd

    import sxlab.datasets
    from sxlab.cell import UnitCell

    spec = sxlab.datasets.info(DATASET).spec
    cell = UnitCell(*spec["cell"], space_group=spec["space_group"])
    run = sxlab.datasets.load(DATASET, progress=False)
    truth = sxlab.datasets.truth(DATASET)
    det = run.geometry
    hits = truth.frames.set_index("frame")["hit"]
    frames = [j for j in range(min(int(n_frames), len(run))) if bool(hits[j])]
    try:
        from sxlab.peaks import PeakFinder
    except ImportError as exc:
        log(f"sxlab.peaks not importable ({exc}); using truth peaks")
        finder = None
    else:
        finder = PeakFinder(det, mask=~det.bad_pixel_mask(), **PEAK_PARAMS)
    peaks = []
    rng = np.random.default_rng(0)
    for j in frames:
        if finder is not None:
            image, bad = run.read(j)
            peaks.append(finder(image.values, bad=bad.values, frame=j))
        else:
            r = truth.reflections[(truth.reflections.frame == j)
                                  & (truth.reflections.photons > TRUTH_MIN_PHOTONS)]
            n = len(r)
            peaks.append(pd.DataFrame({
                "frame": j, "panel": r.panel.to_numpy(),
                "fs": r.fs.to_numpy() + rng.normal(0, TRUTH_JITTER_PX, n),
                "ss": r.ss.to_numpy() + rng.normal(0, TRUTH_JITTER_PX, n),
                "intensity": r.photons.to_numpy()}))
    if finder is not None:
        source = (f"sxlab.peaks.PeakFinder (peakfinder8, adc_threshold "
                  f"{PEAK_PARAMS['adc_threshold']:g}, min_snr {PEAK_PARAMS['min_snr']:g})")
    else:
        source = (f"simulated reflections with expected photons > {TRUTH_MIN_PHOTONS:g}, "
                  f"jittered by {TRUTH_JITTER_PX:g} px (sxlab.peaks not available)")
    return det, cell, frames, peaks, truth, source


def point_group_rotations(cell) -> list[np.ndarray]:
    """Proper rotations of the cell's point group in its cartesian frame."""
    import gemmi

    ops = gemmi.find_spacegroup_by_name(cell.space_group).operations()
    orth = cell.direct_basis.T
    frac = np.linalg.inv(orth)
    out = []
    for op in ops.sym_ops:
        s = orth @ (np.array(op.rot, dtype=float) / gemmi.Op.DEN) @ frac
        if np.linalg.det(s) > 0 and not any(np.allclose(s, x) for x in out):
            out.append(s)
    return out


def orientation_error(row, crystals, rotations) -> float:
    """Smallest misorientation (deg) of a found lattice from the frame's true crystals."""
    from sxlab.cell import UnitCell

    astar = row[[f"{v}star_{x}" for v in "abc" for x in "xyz"]].to_numpy(float).reshape(3, 3)
    b = UnitCell(row.a, row.b, row.c, row.alpha, row.beta, row.gamma).reciprocal_basis
    u, _, vt = np.linalg.svd(np.linalg.solve(b, astar).T)
    u_found = u @ vt
    best = 180.0
    for _, truth in crystals.iterrows():
        u_true = truth[[f"u_{i}{j}" for i in (1, 2, 3) for j in (1, 2, 3)]].to_numpy(
            float).reshape(3, 3)
        for s in rotations:
            r = u_found @ (u_true @ s).T
            best = min(best, float(np.degrees(np.arccos(np.clip((np.trace(r) - 1) / 2,
                                                                 -1, 1)))))
    return best


# ============================================================================ timing
def time_runs(fn, runs: int):
    """(result, wall ms list, CPU ms list) of ``runs`` calls after one warm-up call."""
    result, wall, cpu = _common.time_runs(fn, runs)
    return result, [1e3 * t for t in wall], [1e3 * t for t in cpu]


def run(n_frames: int, runs: int):
    from sxlab.indexing import Indexer

    det, cell, frames, peaks, truth, source = load_hits(n_frames)
    rotations = point_group_rotations(cell)
    indexers, setup_ms = {}, {}
    for name, options in MODES:
        t0 = time.perf_counter()
        indexers[name] = Indexer(det, cell, **options)
        setup_ms[name] = (time.perf_counter() - t0) * 1e3
        indexers[name](peaks[0])  # compile / load the kernels
    per_mode = {name: {"wall": [], "cpu": [], "indexed": [], "correct": [], "error": [],
                       "triplets": []} for name, _ in MODES}
    for j, frame in enumerate(frames):
        crystals = truth.crystals[truth.crystals.frame == frame]
        for name, _ in MODES:
            ix = indexers[name]
            table, wall, cpu = time_runs(lambda ix=ix, p=peaks[j]: ix(p), runs)
            rec = per_mode[name]
            rec["wall"].append(statistics.median(wall))
            rec["cpu"].append(statistics.median(cpu))
            rec["indexed"].append(len(table) > 0)
            err = orientation_error(table.iloc[0], crystals, rotations) if len(table) else np.nan
            rec["error"].append(err)
            rec["correct"].append(bool(len(table)) and err < CORRECT_DEG)
            rec["triplets"].append(sum(s.n_triplets for s in ix.last_stats))
    n_peaks = [len(p) for p in peaks]
    rows = []
    for name, _ in MODES:
        rec = per_mode[name]
        err = np.array(rec["error"])
        rows.append({
            "mode": name,
            "hit_frames": len(frames),
            "wall_ms_median": float(np.median(rec["wall"])),
            "wall_ms_p90": float(np.percentile(rec["wall"], 90)),
            "cpu_ms_median": float(np.median(rec["cpu"])),
            "cpu_ms_p90": float(np.percentile(rec["cpu"], 90)),
            "indexing_rate": float(np.mean(rec["indexed"])),
            "correct_rate": float(np.mean(rec["correct"])),
            "median_error_deg": float(np.nanmedian(err)) if np.isfinite(err).any() else None,
            "triplets_median": float(np.median(rec["triplets"])),
            "peaks_median": float(np.median(n_peaks)),
            "setup_ms": setup_ms[name],
            "runs_per_frame": runs,
        })
    return rows, source, len(frames)


# ============================================================================ report
def format_report(header: list[str], rows: list[dict], source: str, n_hits: int,
                  runs: int) -> str:
    lines = ["# Indexing on one core: sxlab asdf (normal and fast mode)", ""]
    lines += [f"- {h}" for h in header]
    lines += [
        "",
        f"Data: `{DATASET}` hit frames ({n_hits}); reference cell P 43 21 2, 79.1 79.1 37.9 Å; "
        f"default IndexParams (no retry, single lattice, refinement on).",
        f"Peaks: {source}.",
        f"Time: median and 90th percentile over hit frames of the median of {runs} timed "
        "runs per frame after a warm-up run; the modes take turns frame by frame.",
        f"Correct: a lattice whose orientation is within {CORRECT_DEG:g}° of a simulated "
        "crystal (up to the point-group rotations).",
        "",
        "| mode | hit frames | wall ms median | wall ms p90 | CPU ms median | CPU ms p90 | "
        "indexed | correct | median error (°) | triplets | peaks/frame | set-up ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        err = "–" if r["median_error_deg"] is None else f"{r['median_error_deg']:.4f}"
        lines.append(
            f"| {r['mode']} | {r['hit_frames']} | {r['wall_ms_median']:.1f} | "
            f"{r['wall_ms_p90']:.1f} | {r['cpu_ms_median']:.1f} | {r['cpu_ms_p90']:.1f} | "
            f"{r['indexing_rate']:.3f} | {r['correct_rate']:.3f} | {err} | "
            f"{r['triplets_median']:.0f} | {r['peaks_median']:.0f} | {r['setup_ms']:.1f} |")
    lines += ["", "For comparison (specs/algorithms.md): CrystFEL 0.12 asdf on this kind of "
              "machine, ~210 ms per hit (~66 ms with --asdf-fast)."]
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _common.add_frame_options(ap, "bench_index", frames=(100, 10), runs=(5, 2))
    return _common.resolve_frame_options(ap, ap.parse_args(argv), frames=(100, 10),
                                         runs=(5, 2))


def main(argv=None) -> None:
    args = parse_args(argv)
    load_start = _common.load_average()
    pinned = _common.pin_to_one_core()
    log(f"{DATASET}: peaks of the hits among the first {args.frames} frame(s)")
    rows, source, n_hits = run(args.frames, args.runs)
    header = _common.machine_description(load_start, pinned=pinned,
                                         packages=("numpy", "scipy", "numba"))
    text = format_report(header, rows, source, n_hits, args.runs)
    print(text)
    if args.out is not None:
        _common.write_report(args.out, "bench_index", text, rows,
                             {"machine": header, "dataset": DATASET, "peaks": source,
                              "rows": rows})
        log(f"wrote {args.out}/bench_index.md, .csv, .json")


if __name__ == "__main__":
    main()
