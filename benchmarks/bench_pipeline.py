"""Whole-process speed and memory of ``sxlab process`` against CrystFEL's indexamajig.

For each detector (EIGER X 4M, 2070 × 2167 px, and EIGER2 X 16M, 4148 × 4362 px) the
script simulates one run with :mod:`sxlab.simulate` (lysozyme, 200 frames, 50 % hits,
bitshuffle-LZ4 NXmx; the recipes ``lysozyme-4m`` / ``lysozyme-16m`` of the data-set
registry with more frames), cached under ``$SXLAB_CACHE/bench_runs``. Then, for each
mode (``normal``; ``fast`` = the fast peak search and fast asdf in both programs):

* **start-up**: a fresh Python process imports ``sxlab.cli``, builds the ``sxlab process``
  parser, imports ``sxlab.pipeline``, opens the run and prepares a worker (mask, peak
  finder, indexer, integrator) up to its first frame; CPU seconds of the whole process up
  to that point (interpreter start included), median of three processes, after a warm-up
  run that fills the kernel caches.
* **per frame**: one worker process reads and processes every frame as the batch
  workers do (:func:`sxlab.pipeline.read_frame` + :func:`sxlab.process_frame`), CPU per
  frame, medians over the hit and non-hit frames of the simulation's truth;
* **whole process**: ``sxlab process RUN --params P -j 1 --out DIR`` as a user runs it
  (outputs written), CPU user + sys of the process for all frames, and its peak RSS
  (``wait4``'s ``ru_maxrss``).

CrystFEL (when an ``indexamajig`` build is found: ``$CRYSTFEL_BIN``, the PATH or
``/opt/crystfel/bin``) runs on the same files with matched settings: ``-j 1``,
peakfinder8 with the same threshold, SNR, pixel counts and background radius, the same
static mask (as a mask file), ``--min-peaks`` = sxlab's hit rule, asdf with the same
cell, ``--no-retry``, rings integration with the same radii, ``--profile``; in fast mode
``--peakfinder8-fast --asdf-fast``. Its per-frame CPU is the wall time of each image's
``process-image`` segment in its ``--profile`` records, scaled by the process's CPU/wall
ratio. The ratios are sxlab over
CrystFEL; the targets are ≤ 0.3 (whole process), ≤ 0.2 (per frame) and ≤ 150 MB peak
RSS on the 4M detector. Indexing: frames indexed by each program (of the simulated hits).

Before measuring, sxlab's bytecode is compiled (``compileall``) as an installed package
has it, so that no process compiles the package's modules from source (a source tree
under ``PYTHONDONTWRITEBYTECODE`` would). The **floor of the stack** is measured the same
way: a process that imports numpy, pandas and numba and runs one cached numba kernel
(CPU up to that point and peak RSS, median of three after a warm-up): no worker built on
these libraries starts faster or smaller.

Run::

    python benchmarks/bench_pipeline.py [--frames N] [--detectors 4m,16m]
                                        [--modes normal,fast] [--quick] [--no-crystfel]
                                        [--out [DIR]]

``--quick``: 20 frames of the 4M detector, normal mode. With ``--out`` (or
``SXLAB_BENCH_OUT``) the report is also written as ``bench_pipeline.md/.csv/.json``.
"""

from __future__ import annotations

import _common

_common.single_threaded()

import argparse  # noqa: E402
import compileall  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).resolve().parent
DETECTORS = {"4m": "lysozyme-4m", "16m": "lysozyme-16m"}
TARGETS = {"whole": 0.3, "per_frame": 0.2, "rss_4m_mb": 150.0}
STARTUP_RUNS = 3


def log(msg: str) -> None:
    print(f"[bench_pipeline] {msg}", file=sys.stderr, flush=True)


# =============================================================================== data
def dataset(key: str, n_frames: int) -> Path:
    """The master file of ``n_frames`` frames of the detector's recipe (written once)."""
    return _common.simulated_run(DETECTORS[key], n_frames, log=log)


def params_for(master: Path, mode: str):
    from sxlab.demo import demo_params
    from sxlab.simulate import Truth

    params = demo_params(Truth.load(master))
    if mode == "fast":
        params = params.replace(peaks={"fast": True}, index={"fast": True})
    return params


# ========================================================================= processes
#: A small launcher (``python -S``, stdlib only) that forks and execs the measured
#: command and reports its exit status, CPU and peak RSS from ``wait4``. Linux carries the
#: peak RSS of the address space a process had before ``exec`` into ``ru_maxrss``, so
#: forking straight from this (large) process would report at least this process's RSS.
LAUNCHER = """
import json, os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, ru = os.wait4(pid, 0)
with open(sys.argv[1], "w") as fh:
    json.dump([os.waitstatus_to_exitcode(status), ru.ru_utime + ru.ru_stime,
               ru.ru_maxrss], fh)
"""


def spawn(cmd: list[str], *, env=None, cwd=None) -> dict:
    """Run ``cmd``: its CPU (user + sys), wall time, peak RSS (MB), stdout and stderr."""
    with tempfile.TemporaryDirectory(prefix="bench_pipeline_run_") as tmp:
        result = Path(tmp) / "rusage.json"
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-S", "-c", LAUNCHER, str(result),
                               *map(str, cmd)], env=env, cwd=cwd, capture_output=True,
                              text=True, check=False)
        wall = time.perf_counter() - t0
        code, cpu, maxrss = json.loads(result.read_text())
    if code != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd[:4]))} ... failed ({code}):\n"
                           f"{proc.stderr[-3000:]}")
    return {"cpu_s": cpu, "wall_s": wall, "rss_mb": maxrss / 1024, "stdout": proc.stdout,
            "stderr": proc.stderr}


# ============================================================================= sxlab
def worker_main(master: str, params_file: str, n_frames: int) -> None:
    """Child process: imports, set-up, then ``n_frames`` frames; JSON on stdout."""
    import resource

    c_start = time.process_time()
    import sxlab.cli

    sxlab.cli.build_parser("process")  # what `sxlab process` does first
    from sxlab.io import open_run
    from sxlab.params import Params
    from sxlab.pipeline import prepare, process_frame, read_frame
    c_import = time.process_time()
    params = Params.load(params_file)
    run = open_run(master)
    ctx = prepare(run.geometry, params)
    c_setup = time.process_time()
    rss_setup = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cpu, hits, indexed = [], [], []
    for i in range(min(n_frames, len(run))):
        c0 = time.process_time()
        image, bad, attrs = read_frame(run, i, ctx)
        res = process_frame(image, bad, ctx, frame=i, attrs=attrs)
        cpu.append(time.process_time() - c0)
        hits.append(bool(res.frame["hit"]))
        indexed.append(bool(res.frame["indexed"]))
    private = 0.0  # memory of this process alone (shared library pages left out), MB
    try:
        with open("/proc/self/smaps_rollup") as fh:
            for line in fh:
                if line.startswith(("Private_Clean:", "Private_Dirty:")):
                    private += int(line.split()[1]) / 1024
    except OSError:
        private = float("nan")
    json.dump({"start_cpu_s": c_start, "private_mb": private, "import_cpu_s": c_import - c_start,
               "setup_cpu_s": c_setup - c_import, "startup_cpu_s": c_setup,
               "rss_setup_mb": rss_setup, "cpu": cpu, "hit": hits, "indexed": indexed,
               "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024},
              sys.stdout)


def sxlab_figures(master: Path, params_file: Path, n_frames: int, truth_hit) -> dict:
    me = [sys.executable, str(Path(__file__).resolve()), "--worker", str(master),
          str(params_file)]
    spawn(me + ["1"])  # warm-up: kernel caches
    starts = [json.loads(spawn(me + ["1"])["stdout"]) for _ in range(STARTUP_RUNS)]
    log("sxlab worker: all frames")
    w = json.loads(spawn(me + [str(n_frames)])["stdout"])
    # the first frame loads the compiled kernels: reported apart, left out of the rest
    hit_cpu = [c for c, h in zip(w["cpu"][1:], truth_hit[1:], strict=True) if h]
    non_cpu = [c for c, h in zip(w["cpu"][1:], truth_hit[1:], strict=True) if not h]
    log("sxlab process: whole process")
    with tempfile.TemporaryDirectory(prefix="bench_pipeline_") as tmp:
        whole = spawn([sys.executable, "-m", "sxlab", "process", str(master), "--params",
                       str(params_file), "-j", "1", "--no-progress", "--out",
                       str(Path(tmp) / "out")])
    med = statistics.median
    return {
        "startup_s": med(s["startup_cpu_s"] for s in starts),
        "import_s": med(s["import_cpu_s"] for s in starts),
        "setup_s": med(s["setup_cpu_s"] for s in starts),
        "rss_setup_mb": med(s["rss_setup_mb"] for s in starts),
        "hit_ms": 1e3 * med(hit_cpu) if hit_cpu else float("nan"),
        "non_hit_ms": 1e3 * med(non_cpu) if non_cpu else float("nan"),
        "first_frame_ms": 1e3 * med(s["cpu"][0] for s in starts),
        "frame_ms": 1e3 * statistics.mean(w["cpu"][1:] or w["cpu"]),
        "worker_rss_mb": w["rss_mb"],
        "worker_private_mb": w["private_mb"],
        "whole_cpu_s": whole["cpu_s"],
        "whole_rss_mb": whole["rss_mb"],
        "indexed": int(sum(w["indexed"])),
    }


# ========================================================================== CrystFEL
def crystfel_inputs(folder: Path, master: Path, params):
    """Geometry (static mask as a mask file), cell file and file list for indexamajig."""
    from sxlab.io import open_run
    from sxlab.masks import build_mask

    det = open_run(master).geometry
    return _common.crystfel_inputs(folder, master, det, build_mask(det, params.mask),
                                   params.cell)


def crystfel_figures(bindir: Path, master: Path, params, mode: str, truth_hit) -> dict:
    import hdf5plugin

    from sxlab.io import read_stream
    from sxlab.profiling import read_crystfel_profile

    pk, ix = params.peaks, params.index
    with tempfile.TemporaryDirectory(prefix="bench_pipeline_cf_") as tmp:
        folder = Path(tmp)
        geom, cell_file, files = crystfel_inputs(folder, master, params)
        stream = folder / "out.stream"
        cmd = [str(bindir / "indexamajig"), "-i", str(files), "-g", str(geom),
               "-o", str(stream), "-j", "1", "--peaks=peakfinder8",
               f"--threshold={pk.adc_threshold:g}", f"--min-snr={pk.min_snr:g}",
               f"--min-pix-count={pk.min_pix_count}", f"--max-pix-count={pk.max_pix_count}",
               f"--local-bg-radius={pk.local_bg_radius}",
               f"--min-peaks={params.hits.min_peaks}", "--indexing=asdf", "-p",
               str(cell_file), "--no-retry", "--integration=rings",
               "--int-radius=" + ",".join(f"{r:g}" for r in params.integrate.radii),
               "--profile"]
        if ix.multi:
            cmd.append("--multi")
        if mode == "fast":
            cmd += ["--peakfinder8-fast", "--asdf-fast"]
        env = dict(os.environ, HDF5_PLUGIN_PATH=hdf5plugin.PLUGIN_PATH)
        log(f"indexamajig ({mode})")
        res = spawn(cmd, env=env, cwd=folder)
        frames = read_stream(stream).frames
    prof = read_crystfel_profile((res["stdout"] + "\n" + res["stderr"]).splitlines())
    # one record per image (its "process-image" segment); the last record is the idle
    # worker's final wait
    image = prof[(prof.depth == 1) & prof.path.str.endswith("/process-image")]
    root = image.sort_values("frame").duration_s.to_numpy()
    share = res["cpu_s"] / res["wall_s"]
    per = root * share
    hit_cpu = [c for c, h in zip(per, truth_hit, strict=True) if h]
    non_cpu = [c for c, h in zip(per, truth_hit, strict=True) if not h]
    med = statistics.median
    return {"hit_ms": 1e3 * med(hit_cpu) if hit_cpu else float("nan"),
            "non_hit_ms": 1e3 * med(non_cpu) if non_cpu else float("nan"),
            "frame_ms": 1e3 * float(per.mean()) if len(per) else float("nan"),
            "whole_cpu_s": res["cpu_s"], "whole_rss_mb": res["rss_mb"],
            "indexed": int((frames.n_crystals > 0).sum()) if "n_crystals" in frames
            else -1}


def crystfel_startup(bindir: Path, master: Path, params) -> dict:
    """indexamajig on the first frame only: whole-process CPU and RSS (start-up cost)."""
    import hdf5plugin

    with tempfile.TemporaryDirectory(prefix="bench_pipeline_cf_") as tmp:
        folder = Path(tmp)
        geom, cell_file, files = crystfel_inputs(folder, master, params)
        data_file = files.read_text().strip()
        files.write_text(f"{data_file} //0\n")
        cmd = [str(bindir / "indexamajig"), "-i", str(files), "-g", str(geom),
               "-o", str(folder / "one.stream"), "-j", "1", "--peaks=peakfinder8",
               f"--threshold={params.peaks.adc_threshold:g}", "--indexing=asdf", "-p",
               str(cell_file), "--no-retry"]
        env = dict(os.environ, HDF5_PLUGIN_PATH=hdf5plugin.PLUGIN_PATH)
        runs = [spawn(cmd, env=env, cwd=folder) for _ in range(STARTUP_RUNS)]
    return {"startup_s": statistics.median(r["cpu_s"] for r in runs)}


# ============================================================== floor of the stack
#: The floor of the stack: numpy, pandas and numba imported, one cached kernel run.
FLOOR_KERNEL = """
import numba


@numba.njit(cache=True)
def total(a):
    s = 0.0
    for x in a:
        s += x
    return s
"""
FLOOR_MAIN = """
import json, resource, sys, time
import numpy, pandas, numba
sys.path.insert(0, sys.argv[1])
import floor_kernel
floor_kernel.total(numpy.ones(4))
json.dump({"cpu_s": time.process_time(),
           "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}, sys.stdout)
"""


def stack_floor() -> dict:
    """CPU (s) and peak RSS (MB) of a process importing the stack and running one kernel."""
    with tempfile.TemporaryDirectory(prefix="bench_pipeline_floor_") as tmp:
        (Path(tmp) / "floor_kernel.py").write_text(FLOOR_KERNEL)
        cmd = [sys.executable, "-c", FLOOR_MAIN, tmp]
        spawn(cmd)  # warm-up: the kernel's cache
        runs = [json.loads(spawn(cmd)["stdout"]) for _ in range(STARTUP_RUNS)]
    return {k: statistics.median(r[k] for r in runs) for k in ("cpu_s", "rss_mb")}


def compile_bytecode() -> str:
    """Compile sxlab's modules to bytecode; what was done, for the report's header."""
    import sxlab

    package = Path(sxlab.__file__).parent
    ok = compileall.compile_dir(package, quiet=1)
    return ("sxlab's bytecode compiled before measuring (as installed)" if ok else
            f"sxlab's bytecode could not be compiled in {package}: every process compiles "
            "its modules from source (start-up figures ~0.15 s high)")


# ============================================================================ report
def fmt(x, spec=".1f") -> str:
    return "–" if x is None or x != x else format(x, spec)


def ratio(a, b) -> str:
    if a is None or b is None or a != a or b != b or b == 0:
        return "–"
    return f"{a / b:.2f}×"


def report(rows: list[dict], header: list[str], floor: dict | None = None) -> str:
    lines = list(header) + [""]
    if floor:
        lines += ["## Floor of the stack", "",
                  "| a process that imports numpy, pandas and numba and runs one cached "
                  "kernel | |", "|---|---:|",
                  f"| CPU up to that point, s | {floor['cpu_s']:.2f} |",
                  f"| peak RSS, MB | {floor['rss_mb']:.0f} |", ""]
    for r in rows:
        s, c = r["sxlab"], r.get("crystfel") or {}
        lines += [f"## {r['detector']} ({r['shape']}), {r['mode']} mode, {r['frames']} "
                  f"frames ({r['hits']} hits)", "",
                  "| | sxlab | CrystFEL | ratio | target |", "|---|---:|---:|---:|---:|"]
        lines.append(f"| start-up to first frame, s CPU (import {s['import_s']:.2f} + set-up "
                     f"{s['setup_s']:.2f}) | {s['startup_s']:.2f} | "
                     f"{fmt(c.get('startup_s'), '.2f')} | "
                     f"{ratio(s['startup_s'], c.get('startup_s'))} | < 1 s |")
        lines.append(f"| first frame, ms CPU (loads the compiled kernels) | "
                     f"{s['first_frame_ms']:.0f} | | | |")
        for key, label, target in (("hit_ms", "per hit, ms CPU (median)", TARGETS["per_frame"]),
                                   ("non_hit_ms", "per non-hit, ms CPU (median)",
                                    TARGETS["per_frame"]),
                                   ("frame_ms", "per frame, ms CPU (mean, first frame left out)",
                                    None)):
            lines.append(f"| {label} | {fmt(s[key])} | {fmt(c.get(key))} | "
                         f"{ratio(s[key], c.get(key))} | "
                         f"{f'≤ {target:.1f}×' if target else ''} |")
        lines.append(f"| whole process, s CPU ({r['frames']} frames) | "
                     f"{s['whole_cpu_s']:.1f} | {fmt(c.get('whole_cpu_s'))} | "
                     f"{ratio(s['whole_cpu_s'], c.get('whole_cpu_s'))} | "
                     f"≤ {TARGETS['whole']:.1f}× |")
        rss_target = f"≤ {TARGETS['rss_4m_mb']:.0f} MB" if r["detector"] == "4m" \
            else "≤ 300 MB"
        lines.append(f"| peak RSS, MB (`sxlab process`) | {s['whole_rss_mb']:.0f} | "
                     f"{fmt(c.get('whole_rss_mb'), '.0f')} | "
                     f"{ratio(s['whole_rss_mb'], c.get('whole_rss_mb'))} | {rss_target} |")
        lines.append(f"| peak RSS, MB (one worker: after set-up / after all frames) | "
                     f"{s['rss_setup_mb']:.0f} / {s['worker_rss_mb']:.0f} | | | |")
        lines.append(f"| private memory at the end, MB (one worker; RSS less shared "
                     f"pages) | {s['worker_private_mb']:.0f} | | | |")
        lines.append(f"| frames indexed (of {r['hits']} hits) | {s['indexed']} | "
                     f"{c.get('indexed', '–')} | | ≥ CrystFEL |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", nargs=3, metavar=("MASTER", "PARAMS", "N"),
                    help=argparse.SUPPRESS)
    ap.add_argument("--frames", type=int, default=None,
                    help="frames per run (default 200; 20 with --quick)")
    ap.add_argument("--detectors", default=None,
                    help="comma-separated of 4m,16m (default both; 4m with --quick)")
    ap.add_argument("--modes", default=None,
                    help="comma-separated of normal,fast (default both; normal with --quick)")
    ap.add_argument("--quick", action="store_true", help="20 frames, 4M, normal mode")
    ap.add_argument("--no-crystfel", action="store_true", help="leave CrystFEL out")
    ap.add_argument("--out", type=Path, nargs="?", const=HERE / "out", default=None,
                    metavar="DIR", help="also write bench_pipeline.md/.csv/.json to DIR")
    args = ap.parse_args()
    if args.worker:
        worker_main(args.worker[0], args.worker[1], int(args.worker[2]))
        return
    n_frames = args.frames or (20 if args.quick else 200)
    detectors = (args.detectors or ("4m" if args.quick else "4m,16m")).split(",")
    modes = (args.modes or ("normal" if args.quick else "normal,fast")).split(",")
    if set(detectors) - set(DETECTORS) or set(modes) - {"normal", "fast"}:
        ap.error("--detectors takes 4m,16m and --modes normal,fast")
    if args.out is None and os.environ.get("SXLAB_BENCH_OUT"):
        args.out = Path(os.environ["SXLAB_BENCH_OUT"])
    load_start = _common.load_average()
    bindir = None if args.no_crystfel else _common.crystfel_bindir()
    bytecode = compile_bytecode()
    log("floor of the stack")
    floor = stack_floor()

    from sxlab.simulate import Truth

    rows = []
    for key in detectors:
        master = dataset(key, n_frames)
        truth = Truth.load(master)
        truth_hit = truth.frames.sort_values("frame").hit.to_numpy()[:n_frames]
        from sxlab.io import open_run

        shape = "×".join(map(str, open_run(master).frame_shape))
        for mode in modes:
            params = params_for(master, mode)
            with tempfile.TemporaryDirectory(prefix="bench_pipeline_p_") as tmp:
                pfile = Path(tmp) / "params.toml"
                params.save(pfile)
                log(f"{key} {mode}: sxlab")
                s = sxlab_figures(master, pfile, n_frames, truth_hit)
            c = None
            if bindir is not None:
                c = crystfel_figures(bindir, master, params, mode, truth_hit)
                c.update(crystfel_startup(bindir, master, params))
            rows.append({"detector": key, "shape": shape, "mode": mode,
                         "frames": n_frames, "hits": int(truth_hit.sum()),
                         "sxlab": s, "crystfel": c})
    header = ["# Whole-process speed and memory: sxlab process vs CrystFEL indexamajig", ""]
    header += [f"- {line}" for line in _common.machine_description(load_start, memory=True)]
    header.append("- CrystFEL: " + (_common.crystfel_version(bindir) if bindir else
                                    "not found (leave out with --no-crystfel)"))
    header.append("- one worker each (`sxlab process -j 1`, `indexamajig -j 1`); CPU = user "
                  "+ sys; start-up = CPU of a process up to its first frame (CrystFEL: a "
                  "1-frame run); per-frame figures of the simulated hits / non-hits")
    header.append(f"- {bytecode}")
    text = report(rows, header, floor)
    print(text)
    if args.out is not None:
        flat = []
        for r in rows:
            for prog in ("sxlab", "crystfel"):
                if r[prog]:
                    flat.append({"detector": r["detector"], "mode": r["mode"],
                                 "program": prog, "frames": r["frames"], **r[prog]})
        paths = _common.write_report(args.out, "bench_pipeline", text, flat,
                                     {"rows": rows, "header": header, "floor": floor})
        log("wrote " + ", ".join(map(str, paths)))


if __name__ == "__main__":
    main()
