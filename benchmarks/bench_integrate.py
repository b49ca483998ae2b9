"""Prediction and ring-integration speed and accuracy on one core.

For the hits among the first frames of the ``lysozyme-4m`` data set (EIGER X 4M,
2070 × 2167 px, λ = 1 Å, bandwidth 1e-3, clen 0.15 m; lysozyme P 43 21 2), the frames and
the crystals come from the data set's simulator (the frames are identical to those of the
written data set; the **crystals are the simulator's true ones**: the reciprocal basis,
no indexing). Per frame and configuration the table gives, single-threaded:

* prediction: :meth:`sxlab.integration.Integrator.predict` on the frame's crystals;
* integration: the Integrator called with those predictions on the raw uint16 frame
  (mask: the data set's pixel mask and the beam-stop shadow);
* both: the Integrator called with the crystals (what the pipeline does);

each as the median over frames of the median of several timed runs after one warm-up
run, wall clock and process CPU time, plus predictions per frame and the accuracy
against the truth: Pearson CC and median ``I / photons`` of the unflagged reflections with
at least 200 true photons, and the standard deviation of ``(I - photons) / sigma`` of
those with fewer than 20 (reflections the simulator did not make count as 0 photons).

Usage::

    python benchmarks/bench_integrate.py [--frames N] [--runs R] [--quick] [--out [DIR]]

With ``--out`` (default directory ``benchmarks/out``), or with ``SXLAB_BENCH_OUT`` set as
``make bench`` does, the report is also written to ``bench_integrate.md``, ``.csv`` and
``.json`` there.
"""

from __future__ import annotations

import _common

# One core: every thread pool has one thread (set before numpy and numba are imported).
_common.single_threaded()

import argparse  # noqa: E402
import functools  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

HERE = Path(__file__).resolve().parent
DATASET = "lysozyme-4m"
#: Configurations: label -> Integrator keyword arguments.
CONFIGS = {
    "rings 4,5,7 (default)": {"radii": (4, 5, 7)},
    "rings 3,4,7": {"radii": (3, 4, 7)},
}
#: CrystFEL 0.12 integration time per hit measured on this kind of machine (see
#: shared/specs/algorithms.md: simulated lysozyme, EIGER-4M-like, --int-radius=3,4,7).
CRYSTFEL_INTEGRATION_MS = 37.0
STRONG_PHOTONS = 200.0
WEAK_PHOTONS = 20.0


def log(message: str) -> None:
    """Progress message on stderr (stdout carries only the report)."""
    print(f"[bench_integrate] {message}", file=sys.stderr, flush=True)


def accuracy(refl: pd.DataFrame, truth: pd.DataFrame, gain: float) -> pd.DataFrame:
    """Integrated reflections joined with the true photons (0 where none were simulated)."""
    m = refl.merge(truth[["crystal", "h", "k", "l", "photons"]],
                   on=["crystal", "h", "k", "l"], how="left")
    m["photons"] = m["photons"].fillna(0.0) * gain
    flags = m.flag_masked | m.flag_saturated | m.flag_edge | m.flag_overlap
    return m[~flags & np.isfinite(m.I)]


def run(n_frames: int, runs: int) -> tuple[list[dict], dict]:
    """Time every configuration on the hits among the first ``n_frames`` frames."""
    import sxlab.datasets
    from sxlab.integration import Integrator

    sim = sxlab.datasets.simulator(DATASET)
    det = sim.detector
    mask = (sim.pixel_mask == 0) & (sim.transmission == 1)
    saturation = float(sim.saturation_adu[0])
    gain = float(det.panels[0].adu_per_photon or 1.0)
    integrators = {}
    for label, options in CONFIGS.items():
        t0 = time.perf_counter()
        integrators[label] = Integrator(det, mask, saturation=saturation, **options)
        integrators[label].setup_s = time.perf_counter() - t0
    per = {label: [] for label in CONFIGS}
    joined = {label: [] for label in CONFIGS}
    n_hits = 0
    for i in range(n_frames):
        truth = sim.frame_truth(i)
        if not truth.hit:
            continue
        n_hits += 1
        data, truth = sim.frame(i)
        crystals = truth.crystals
        for label, integ in integrators.items():
            pred, p_wall, p_cpu = _common.median_time(
                functools.partial(integ.predict, crystals), runs)
            refl, i_wall, i_cpu = _common.median_time(
                functools.partial(integ, data, predictions=pred), runs)
            _, b_wall, b_cpu = _common.median_time(functools.partial(integ, data, crystals), runs)
            per[label].append({"frame": i, "crystals": len(crystals), "predictions": len(pred),
                               "predict_wall": p_wall, "predict_cpu": p_cpu,
                               "integrate_wall": i_wall, "integrate_cpu": i_cpu,
                               "both_wall": b_wall, "both_cpu": b_cpu})
            joined[label].append(accuracy(refl, truth.reflections, gain))
        log(f"frame {i}: {len(crystals)} crystal(s), {len(pred)} predictions")
    rows = []
    for label, frames in per.items():
        if not frames:
            continue
        df = pd.DataFrame(frames)
        m = pd.concat(joined[label], ignore_index=True)
        strong = m[m.photons >= STRONG_PHOTONS * gain]
        weak = m[m.photons < WEAK_PHOTONS * gain]
        ms = {c: 1e3 * float(df[c].median()) for c in df.columns if c.endswith(("wall", "cpu"))}
        rows.append({
            "config": label, "hits": len(df), "setup_s": integrators[label].setup_s,
            "crystals_per_hit": float(df.crystals.mean()),
            "predictions_per_hit": float(df.predictions.median()),
            **{f"{k}_ms": v for k, v in ms.items()},
            "both_cpu_ms_max": 1e3 * float(df.both_cpu.max()),
            "cc_strong": float(np.corrcoef(strong.I, strong.photons)[0, 1]),
            "ratio_strong": float(np.median(strong.I / strong.photons)),
            "n_strong": len(strong),
            "z_std_weak": float(((weak.I - weak.photons) / weak.sigma).std()),
            "n_weak": len(weak),
        })
    return rows, {"frames": n_frames, "hits": n_hits}


def format_report(header: list[str], rows: list[dict], info: dict, runs: int) -> str:
    lines = ["# Prediction and ring integration on one core", ""]
    lines += [f"- {h}" for h in header]
    lines += [
        "",
        f"Data: {DATASET}, the {info['hits']} hits among frames 0–{info['frames'] - 1}, "
        "frames from the data set's simulator (identical to the written data set), crystals "
        "= the simulator's true crystals (no indexing), default profile radius "
        "0.002 1/Å, xsphere partialities, prediction to the detector corner (1.57 Å), "
        "push_res = inf; raw uint16 frames, mask = pixel_mask == 0 and no beam-stop shadow, "
        "saturation 65534 ADU.",
        f"Time: median over hits of the per-frame median of {runs} timed runs after one "
        "warm-up run; single thread, pinned to one CPU. 'both' = Integrator(frame, "
        "crystals), the pipeline's call (prediction, integration and building the table).",
        "Accuracy: unflagged reflections; strong = at least "
        f"{STRONG_PHOTONS:.0f} true photons, weak = fewer than {WEAK_PHOTONS:.0f} "
        "(including predicted reflections the simulator did not make, 0 photons).",
        "",
        "| configuration | hits | crystals/hit | predictions/hit | predict ms (wall / CPU) "
        "| integrate ms (wall / CPU) | both ms (wall / CPU) | both CPU ms max | set-up s "
        "| CC strong | median I/photons | sd z weak |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['hits']} | {r['crystals_per_hit']:.2f} | "
            f"{r['predictions_per_hit']:.0f} | {r['predict_wall_ms']:.2f} / "
            f"{r['predict_cpu_ms']:.2f} | {r['integrate_wall_ms']:.2f} / "
            f"{r['integrate_cpu_ms']:.2f} | {r['both_wall_ms']:.2f} / {r['both_cpu_ms']:.2f} "
            f"| {r['both_cpu_ms_max']:.2f} | {r['setup_s']:.2f} | {r['cc_strong']:.4f} | "
            f"{r['ratio_strong']:.4f} | {r['z_std_weak']:.3f} |")
    lines += ["", f"Reference: CrystFEL 0.12 integration ~{CRYSTFEL_INTEGRATION_MS:.0f} ms per "
              "hit on this kind of machine (EIGER-4M-like lysozyme, --int-radius=3,4,7; "
              "shared/specs/algorithms.md)."]
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _common.add_frame_options(ap, "bench_integrate", frames=(100, 6), runs=(7, 5),
                              frames_help="frames to look at, hits are timed")
    return _common.resolve_frame_options(ap, ap.parse_args(argv), frames=(100, 6),
                                         runs=(7, 5), min_runs=5)


def main(argv=None) -> None:
    """Run the benchmark and print the report."""
    args = parse_args(argv)
    load_start = _common.load_average()
    pinned = _common.pin_to_one_core()
    rows, info = run(args.frames, args.runs)
    header = _common.machine_description(load_start, pinned=pinned,
                                         packages=("numpy", "pandas", "numba"))
    text = format_report(header, rows, info, args.runs)
    print(text)
    if args.out is not None and rows:
        _common.write_report(args.out, "bench_integrate", text, rows,
                             {"machine": header, "dataset": DATASET, "configs": CONFIGS,
                              **info, "rows": rows})
        log(f"wrote {args.out}/bench_integrate.md, .csv, .json")


if __name__ == "__main__":
    main()
