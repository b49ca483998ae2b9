"""Helpers shared by the benchmark scripts: one core, the machine, timing.

The scripts run as ``python benchmarks/bench_x.py``, so this directory is ``sys.path[0]``
and they ``import _common``. Nothing here imports numpy (or anything that starts a thread
pool) at import time: a script calls :func:`single_threaded` first, then imports numpy.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path

#: Environment variables that size the thread pools of numba, OpenMP and the BLAS
#: libraries and numexpr.
THREAD_VARIABLES = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                    "OPENBLAS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


# ============================================================================ one core
def single_threaded(*, override: bool = True) -> None:
    """Give every thread pool one thread (call before numpy and numba are imported).

    With ``override=False`` a variable already set in the environment is kept.
    """
    for var in THREAD_VARIABLES:
        if override:
            os.environ[var] = "1"
        else:
            os.environ.setdefault(var, "1")


def pin_to_one_core() -> str:
    """Pin this process (and the processes it starts) to one CPU; describe the result."""
    if hasattr(os, "sched_setaffinity"):
        core = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {core})
        return f"pinned to CPU {core}"
    return "not pinned"


# ============================================================================= machine
def cpu_info() -> dict:
    """First value of each ``/proc/cpuinfo`` field (empty off Linux)."""
    info = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, sep, value = line.partition(":")
            if sep:
                info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return info


def cpu_model(info: dict | None = None) -> str:
    """The CPU's model name (``platform`` when ``/proc/cpuinfo`` has none)."""
    info = cpu_info() if info is None else info
    return info.get("model name") or platform.processor() or platform.machine()


def cpu_description() -> str:
    """Model, cores per socket, logical CPUs, cache size and vector extensions."""
    info = cpu_info()
    flags = set(info.get("flags", "").split())
    simd = [name for flag, name in (("avx2", "AVX2"), ("avx512f", "AVX-512F")) if flag in flags]
    parts = [cpu_model(info)]
    if "cpu cores" in info:
        parts.append(f"{info['cpu cores']} cores per socket")
    parts.append(f"{os.cpu_count()} logical CPUs")
    if "cache size" in info:
        parts.append(f"cache {info['cache size']}")
    if simd:
        parts.append("/".join(simd))
    return ", ".join(parts)


def memory_gib() -> float | None:
    """Total memory in GiB (None off Linux)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except (OSError, ValueError, IndexError):
        pass
    return None


def load_average(sep: str = " / ", unknown: str = "unknown") -> str:
    """The 1, 5 and 15 minute load averages joined by ``sep``."""
    try:
        return sep.join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return unknown


def versions(packages=("numpy", "numba")) -> str:
    """``Python x.y.z, numpy ..., ..., sxlab ...`` for the given packages."""
    import importlib

    import sxlab

    parts = [f"Python {platform.python_version()}"]
    parts += [f"{name} {importlib.import_module(name).__version__}" for name in packages]
    parts.append(f"sxlab {getattr(sxlab, '__version__', '?')}")
    return ", ".join(parts)


def machine_description(load_start: str, *, pinned: str | None = None,
                        packages=("numpy", "numba"), memory: bool = False,
                        threads: bool = True) -> list[str]:
    """Lines describing the machine, its load and the software versions.

    Parameters
    ----------
    load_start : str
        :func:`load_average` taken when the benchmark started.
    pinned : str, optional
        What :func:`pin_to_one_core` said, appended to the CPU line.
    packages : sequence of str
        Packages whose versions follow Python's (sxlab's comes last).
    memory : bool
        Add a line with the total memory.
    threads : bool
        Add the line saying the thread pools have one thread.
    """
    cpu = f"CPU: {cpu_description()}"
    if pinned is not None:
        cpu += f"; benchmark {pinned}"
    lines = [cpu]
    if memory:
        mem = memory_gib()
        lines.append("Memory: " + (f"{mem:.1f} GiB" if mem is not None else "unknown"))
    lines += [
        f"OS: {platform.system()} {platform.release()}",
        f"Load average (1/5/15 min): {load_start} at start, {load_average()} at end",
        versions(packages),
    ]
    if threads:
        lines.append("Threads: NUMBA_NUM_THREADS = OMP_NUM_THREADS = MKL_NUM_THREADS = 1")
    return lines


# ============================================================================ peers
def crystfel_bindir(program: str = "indexamajig") -> Path | None:
    """Folder of a CrystFEL build holding ``program``, or None.

    Looked for in ``$CRYSTFEL_BIN``, the folder of ``indexamajig`` on the PATH and
    ``/opt/crystfel/bin`` (where ``/work/shared/peers/build_crystfel.sh`` installs it).
    """
    import shutil

    on_path = shutil.which("indexamajig")
    for candidate in (os.environ.get("CRYSTFEL_BIN"), on_path and str(Path(on_path).parent),
                      "/opt/crystfel/bin"):
        if candidate and (Path(candidate) / program).exists():
            return Path(candidate)
    return None


def crystfel_version(bindir: Path) -> str:
    """First line of ``indexamajig --version`` of the build in ``bindir``."""
    import subprocess

    out = subprocess.run([str(bindir / "indexamajig"), "--version"], capture_output=True,
                         text=True, check=False)
    return (out.stdout or out.stderr).splitlines()[0].strip()


def crystfel_inputs(folder: Path, master: Path, det, mask, cell) -> tuple[Path, Path, Path]:
    """CrystFEL geometry (with the mask as a mask file), cell file and file list.

    ``mask`` (a :class:`sxlab.masks.Mask`) and the NXmx ``pixel_mask`` of ``master`` are
    written as ``folder/mask.h5``; the file list names the run's first data file.
    """
    import h5py
    import numpy as np

    from sxlab.geometry import PanelMask
    from sxlab.io import write_cell, write_geom

    folder.mkdir(parents=True, exist_ok=True)
    mask_file = folder / "mask.h5"
    with h5py.File(master, "r") as f:
        pixel_mask = np.asarray(f["/entry/instrument/detector/pixel_mask"])
    bad = (~mask.good) | (pixel_mask != 0)
    with h5py.File(mask_file, "w") as f:
        f["/mask"] = bad.astype(np.uint8)
    data_file = sorted(master.parent.glob(master.name.replace("_master", "_data_*")))[0]
    panels = tuple(p.replace(data="/entry/data/data", flag_morethan=65534.0,
                             masks=(PanelMask("/mask", str(mask_file), 0, 1),))
                   for p in det.panels)
    geom = folder / "crystfel.geom"
    write_geom(det.replace(panels=panels), geom)
    cell_file = folder / "cell.cell"
    write_cell(cell, cell_file)
    files = folder / "files.lst"
    files.write_text(f"{data_file}\n")
    return geom, cell_file, files


# ================================================================================ data
def simulated_run(recipe: str, n_frames: int, *, log=None) -> Path:
    """Master file of ``n_frames`` frames of a registry recipe, simulated once and cached.

    Written with :mod:`sxlab.simulate` (bitshuffle-LZ4 NXmx, one data file) under
    ``$SXLAB_CACHE/bench_runs/<recipe>-<n_frames>-<recipe hash>``; ``log`` (a callable)
    is told when frames are simulated.
    """
    import shutil

    import sxlab as sx

    info = sx.datasets.info(recipe)
    folder = sx.datasets.cache_dir() / "bench_runs" / f"{recipe}-{n_frames}-{info.recipe_hash}"
    master = folder / f"{recipe}_master.h5"
    if (folder / "complete").exists():
        return master
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    if log is not None:
        log(f"simulating {n_frames} frames of {recipe} into {folder}")
    sx.datasets.simulator(info).write(master, n_frames, frames_per_file=n_frames,
                                      progress=False)
    (folder / "complete").write_text("ok\n")
    return master


# ============================================================================== timing
def time_runs(fn, runs: int, *, warmup: int = 1, setup=None):
    """Call ``fn()`` ``warmup`` times untimed, then ``runs`` times timed.

    With ``setup``, every call is ``fn(setup())`` and ``setup()`` is not timed.

    Returns
    -------
    result
        The first call's result (a warm-up call's, or the first timed one's without
        warm-up; None when nothing was called).
    wall, cpu : list of float
        Wall-clock (``perf_counter``) and process CPU seconds of each timed call.
    """
    args = ()
    result, wall, cpu = None, [], []
    for i in range(warmup + runs):
        if setup is not None:
            args = (setup(),)
        t0, c0 = time.perf_counter(), time.process_time()
        value = fn(*args)
        t1, c1 = time.perf_counter(), time.process_time()
        if i == 0:
            result = value
        if i >= warmup:
            wall.append(t1 - t0)
            cpu.append(c1 - c0)
    return result, wall, cpu


def median_time(fn, runs: int, warmup: int = 1, *, setup=None):
    """:func:`time_runs` with the medians: (result, median wall s, median CPU s)."""
    result, wall, cpu = time_runs(fn, runs, warmup=warmup, setup=setup)
    return result, statistics.median(wall), statistics.median(cpu)


def json_safe(value):
    """``value`` with NaN and infinities replaced by None (strict JSON)."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return json_safe(value.item())
    return value


def write_report(out_dir: Path, name: str, text: str, rows: list[dict], payload: dict,
                 *, columns: list[str] | None = None) -> list[Path]:
    """Write ``<name>.md`` (the printed report), ``.csv`` (the rows) and ``.json``."""
    import csv
    import json

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.{ext}" for ext in ("md", "csv", "json")]
    paths[0].write_text(text + "\n")
    with open(paths[1], "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns or list(rows[0]),
                                extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    paths[2].write_text(json.dumps(json_safe(payload), indent=1))
    return paths


def add_frame_options(ap, name: str, *, frames: tuple[int, int], runs: tuple[int, int],
                      frames_help: str = "frames of the data set to consider") -> None:
    """Add ``--frames``, ``--runs``, ``--quick`` and ``--out`` (defaults: (normal, quick))."""
    ap.add_argument("--frames", type=int, default=None,
                    help=f"{frames_help} (default {frames[0]}; {frames[1]} with --quick)")
    ap.add_argument("--runs", type=int, default=None,
                    help=f"timed runs per frame after the warm-up (default {runs[0]}; "
                         f"{runs[1]} with --quick)")
    ap.add_argument("--quick", action="store_true", help="few frames and runs (smoke test)")
    ap.add_argument("--out", type=Path, nargs="?", const=Path(__file__).parent / "out",
                    default=None, metavar="DIR",
                    help=f"also write {name}.md/.csv/.json to DIR (benchmarks/out if DIR is "
                         "left out; $SXLAB_BENCH_OUT if the option is)")


def resolve_frame_options(ap, args, *, frames: tuple[int, int], runs: tuple[int, int],
                          min_runs: int = 1):
    """Fill the defaults of :func:`add_frame_options` and check the values."""
    if args.frames is None:
        args.frames = frames[1] if args.quick else frames[0]
    if args.runs is None:
        args.runs = runs[1] if args.quick else runs[0]
    if args.frames < 1 or args.runs < min_runs:
        ap.error(f"--frames must be at least 1 and --runs at least {min_runs}")
    if args.out is None and os.environ.get("SXLAB_BENCH_OUT"):
        args.out = Path(os.environ["SXLAB_BENCH_OUT"])
    return args
