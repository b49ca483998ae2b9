"""Indexing of hard data: correct-indexing rate, false indexings and time, sxlab vs CrystFEL.

Data sets of graded difficulty are simulated with :mod:`sxlab.simulate` on an EIGER X 4M
(λ = 1 Å, 0.1 % bandwidth, 50 % hits, frames written as NXmx with bitshuffle-LZ4 like an
EIGER; see ``SETS``):

========== ===================================================================
medium     lysozyme, ~100 peaks per hit, beam stop masked
weak       lysozyme, ~20 peaks per hit, unflagged hot pixels, beam stop not masked
weak-c2    the same with a C-centred orthorhombic cell (C 2 2 21)
weak-hex   the same with a hexagonal cell (thermolysin, P 61 2 2)
hot        medium strength, many unflagged hot pixels
beamstop   medium strength, the beam-stop shadow (disc and rod) not masked
two        every hit holds two crystals (multi-lattice indexing)
c2         medium strength, C 2 2 21;  hex: medium, P 61 2 2
misset     medium, indexed with the beam centre 2 px and the distance 1 mm off; then
           the geometry refined from the indexed frames and the frames indexed again
========== ===================================================================

Both programs get the same frames and the same mask; peaks: peakfinder8 with the same
parameters (ADC threshold 3, min SNR 5, 2–200 pixels, local background radius 3).
sxlab runs :class:`sxlab.peaks.PeakFinder`, then each indexing mode of the registry
(``MODES``) on the same peaks. CrystFEL runs ``indexamajig -j 1 --peaks=peakfinder8
--indexing=asdf`` with its defaults otherwise (retry, peak check and refinement on;
``--multi`` for the two-lattice set).

Scores (:func:`sxlab.indexing.score_indexing`): a lattice is **correct** when its cell is
within 5 % and its orientation within 1° of a simulated crystal of the frame (up to the
lattice symmetry), each crystal counted once; every other lattice is a **false
indexing** (on a blank frame, a wrong lattice, a second solution). The rate is correct
lattices over simulated lattices of the hit frames. Time: CPU ms per hit of the indexing
step alone, mean (the cost of a run) and median over frames; sxlab per call
(``time.process_time``); CrystFEL from its ``--profile`` records (the index segment's
share of each frame's wall time, applied to the process's CPU time).

CrystFEL is optional. Without ``indexamajig`` on the PATH (or ``$CRYSTFEL_BIN``, or
``/opt/crystfel/bin``) its columns are left out and the report says so. To build it
(Debian 12, as root)::

    bash /work/shared/peers/build_crystfel.sh /path/to/crystfel.git   # or a clone of
    # https://gitlab.desy.de/thomas.white/crystfel; installs to /opt/crystfel
    export HDF5_PLUGIN_PATH=$(python -c "import hdf5plugin; print(hdf5plugin.PLUGIN_PATH)")

(the plugin path lets CrystFEL read the bitshuffle-LZ4 frames; the benchmark sets it for
the subprocess itself).

Usage::

    python benchmarks/bench_index.py [--frames N] [--sets weak,medium,...] [--quick]
                                     [--no-crystfel] [--out [DIR]]

Generated frames are cached under ``$SXLAB_CACHE/bench_index`` (see
:func:`sxlab.datasets.cache_dir`). With ``--out`` (or ``SXLAB_BENCH_OUT``) the report is
also written to ``bench_index.md``, ``.csv`` and ``.json``.
"""

from __future__ import annotations

import _common

# One core: every thread pool has one thread (set before numpy and numba are imported).
_common.single_threaded()

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

LYSO = ((79.1, 79.1, 37.9, 90.0, 90.0, 90.0), "P 43 21 2")
C2221 = ((46.2, 103.0, 128.7, 90.0, 90.0, 90.0), "C 2 2 21")
THERMOLYSIN = ((92.9, 92.9, 130.4, 90.0, 90.0, 120.0), "P 61 2 2")
GEOMETRY = {"name": "eiger4m", "clen": 0.15, "wavelength_A": 1.0, "bandwidth": 0.001}
#: Simulation parameters of every set (over SimulationParams defaults).
WEAK = {"fluence": 45.0, "unflagged_hot_fraction": 2e-6}
SETS = {
    "medium": {"cell": LYSO, "sim": {"fluence": 300.0}},
    "weak": {"cell": LYSO, "sim": WEAK, "beamstop_mask": False},
    "weak-c2": {"cell": C2221, "sim": {**WEAK, "fluence": 45.0}, "beamstop_mask": False},
    "weak-hex": {"cell": THERMOLYSIN, "sim": {**WEAK, "fluence": 40.0},
                 "beamstop_mask": False},
    "hot": {"cell": LYSO, "sim": {"fluence": 300.0, "unflagged_hot_fraction": 1e-5}},
    "beamstop": {"cell": LYSO, "sim": {"fluence": 300.0}, "beamstop_mask": False},
    "two": {"cell": LYSO, "sim": {"fluence": 300.0, "multi_lattice_probability": 1.0},
            "multi": True},
    "c2": {"cell": C2221, "sim": {"fluence": 200.0}},
    "hex": {"cell": THERMOLYSIN, "sim": {"fluence": 200.0}},
    "misset": {"cell": LYSO, "sim": {"fluence": 300.0}, "misset": (2.0, -1.0, 1.0e-3)},
}
#: Beam-stop mask where a set has one (pixels; the simulated disc is 30 px, rod 12 px).
BEAMSTOP_MASK = {"radius_px": 34.0, "rod_width_px": 16.0, "rod_angle_deg": 30.0}
PEAKS = {"adc_threshold": 3.0, "min_snr": 5.0, "min_pix_count": 2, "max_pix_count": 200,
         "local_bg_radius": 3}
MIN_PEAKS = 10          # a frame with fewer peaks is not a hit and is not indexed
MAX_DEG = 1.0
#: sxlab indexing modes: name -> IndexParams overrides.
MODES = {
    "asdf": {},
    "asdf-fast": {"fast": True},
    "sweep": {"method": "sweep"},
    "asdf-sweep": {"method": "asdf-sweep", "fast": True},
}
#: On the mis-set set, the geometry is refined from this mode's results (beam and
#: distance, :func:`sxlab.refine_geometry`) and the frames indexed again with it.
REFINE_MODE = "asdf-sweep"
SEED = 1600


def log(message: str) -> None:
    print(f"[bench_index] {message}", file=sys.stderr, flush=True)


# =============================================================================== data
def set_digest(name: str, n_frames: int) -> str:
    import sxlab.simulate

    spec = json.dumps({"set": SETS[name], "geometry": GEOMETRY, "n": n_frames,
                       "seed": SEED, "code": sxlab.simulate.code_digest()
                       if hasattr(sxlab.simulate, "code_digest") else ""},
                      sort_keys=True, default=str)
    return hashlib.sha256(spec.encode()).hexdigest()[:12]


def geometry():
    from sxlab.geometry import builtin_geometry

    g = dict(GEOMETRY)
    return builtin_geometry(g.pop("name"), **g)


def generate(name: str, n_frames: int, root: Path):
    """Frames of set ``name`` (written once, cached): (master path, Truth, cell)."""
    from sxlab.cell import UnitCell
    from sxlab.simulate import Simulator, Truth

    spec = SETS[name]
    cell = UnitCell(*spec["cell"][0], space_group=spec["cell"][1])
    folder = root / f"{name}-{set_digest(name, n_frames)}"
    master = folder / f"{name}_master.h5"
    done = folder / "complete"
    if done.exists():
        return master, Truth.load(master), cell
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    log(f"simulating {n_frames} frames of set {name!r}")
    sim = Simulator(geometry(), cell, seed=SEED + sum(map(ord, name)), hit_fraction=0.5,
                    **spec["sim"])
    truth = sim.write(master, n_frames, frames_per_file=max(n_frames, 1), progress=False)
    done.write_text("ok\n")
    return master, truth, cell


def processing_geometry(name: str):
    """The geometry the frames are processed with (mis-set for the ``misset`` set)."""
    det = geometry()
    if "misset" not in SETS[name]:
        return det
    from sxlab.calibration import DetectorModel

    bx, by, dz = SETS[name]["misset"]
    model = DetectorModel(det)
    theta = model.zeros()
    theta[[0, 1, 2]] = bx * 75e-6, by * 75e-6, dz
    return model.apply(theta)


def processing_mask(name: str, det):
    import sxlab as sx

    mask = sx.mask_from_geometry(det)
    if SETS[name].get("beamstop_mask", True):
        b = BEAMSTOP_MASK
        mask &= sx.mask_beamstop(det, b["radius_px"], rod_width_px=b["rod_width_px"],
                                 rod_angle_deg=b["rod_angle_deg"])
    return mask


# ============================================================================= sxlab
def sxlab_peaks(master: Path, det, mask) -> list:
    from sxlab.io import open_run
    from sxlab.peaks import PeakFinder

    run = open_run(master, geometry=det)
    finder = PeakFinder(det, mask, **PEAKS)
    out = []
    for i in range(len(run)):
        image, bad = run.read(i)
        out.append(finder(image, bad, frame=i))
    return out


def sxlab_index(mode: str, peaks: list, det, cell, multi: bool, *, assigned=None):
    """Crystals of every hit, CPU s per hit; the peaks with their assignment appended to
    ``assigned`` when given."""
    from sxlab import tables
    from sxlab.indexing import Indexer

    ix = Indexer(det, cell, multi=multi, **MODES[mode])
    hits = [p for p in peaks if len(p) >= MIN_PEAKS]
    if hits:
        ix(hits[0])  # compile / load the kernels
    crystals, cpu = [], []
    for p in hits:
        c0 = time.process_time()
        found = ix.index(p)
        cpu.append(time.process_time() - c0)
        crystals.append(found.crystals)
        if assigned is not None:
            assigned.append(found.peaks)
    return tables.CRYSTALS.concat(crystals), cpu


def refined_geometry(peaks: list, det, cell, multi: bool):
    """The geometry refined from the set's indexed frames (``REFINE_MODE``), CPU s."""
    import pandas as pd

    from sxlab.calibration import refine_geometry

    assigned = []
    crystals, _ = sxlab_index(REFINE_MODE, peaks, det, cell, multi, assigned=assigned)
    c0 = time.process_time()
    new, _ = refine_geometry((pd.concat(assigned, ignore_index=True), crystals), det, cell,
                             refine=("beam", "distance"))
    return new, time.process_time() - c0


# ========================================================================== CrystFEL
def run_crystfel(bindir: Path, folder: Path, geom: Path, cell_file: Path, files: Path,
                 multi: bool):
    """indexamajig on the set: (crystals, index CPU s per indexed frame, peaks per frame)."""
    import hdf5plugin

    from sxlab.io import read_stream
    from sxlab.profiling import read_crystfel_profile

    stream = folder / "out.stream"
    cmd = [str(bindir / "indexamajig"), "-i", str(files), "-g", str(geom), "-o", str(stream),
           "-j", "1", "--peaks=peakfinder8", f"--threshold={PEAKS['adc_threshold']:g}",
           f"--min-snr={PEAKS['min_snr']:g}", f"--min-pix-count={PEAKS['min_pix_count']}",
           f"--max-pix-count={PEAKS['max_pix_count']}",
           f"--local-bg-radius={PEAKS['local_bg_radius']}", f"--min-peaks={MIN_PEAKS}",
           "--indexing=asdf", "-p", str(cell_file), "--integration=rings",
           "--int-radius=3,4,7", "--profile"]
    if multi:
        cmd.append("--multi")
    env = dict(os.environ, HDF5_PLUGIN_PATH=hdf5plugin.PLUGIN_PATH)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False,
                          cwd=folder)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    (folder / "indexamajig.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"indexamajig failed ({proc.returncode}): {proc.stderr[-2000:]}")
    cpu_total = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    data = read_stream(stream)
    frames = data.frames
    crystals = data.crystals.copy()
    # frame = the event index within the (single) data file
    event = frames.set_index("frame")["event"].astype(str).str.extract(r"//(\d+)")[0]
    crystals["frame"] = crystals["frame"].map(event.astype(int)).astype(np.int64)
    prof = read_crystfel_profile((proc.stdout + "\n" + proc.stderr).splitlines())
    root = prof[prof.depth == 0].set_index("frame").duration_s
    index = prof[prof.path.str.endswith("/index")].groupby("frame").duration_s.sum()
    wall_total = float(root.sum())
    share = cpu_total / wall_total if wall_total > 0 else np.nan
    per_hit = (index * share).to_numpy()
    n_peaks = frames.set_index(event.astype(int).to_numpy())["n_peaks"]
    return crystals, per_hit, n_peaks


# ============================================================================ scoring
def score(crystals, truth, cell, hit_frames: set) -> dict:
    from sxlab.indexing import score_indexing

    s = score_indexing(crystals, truth.crystals, cell, max_deg=MAX_DEG)
    true_hits = truth.crystals[truth.crystals.frame.isin(
        truth.frames.frame[truth.frames.hit])]
    n_true = len(true_hits)
    blank = set(truth.frames.frame[~truth.frames.hit])
    correct = s[s.correct]
    return {
        "lattices": n_true,
        "correct": int(len(correct)),
        "rate": len(correct) / n_true if n_true else np.nan,
        "false": int(s["false"].sum()),
        "blank_indexed": int(s.frame.isin(blank).sum()),
        "median_error_deg": float(correct.misorientation_deg.median()) if len(correct)
        else np.nan,
        "frames_hit_by_peaks": len(hit_frames),
    }


# ============================================================================== main
def _times(cpu_s) -> dict:
    """Mean and median CPU ms per hit."""
    cpu = np.asarray(cpu_s, dtype=float)
    if not cpu.size:
        return {"cpu_ms_per_hit": np.nan, "cpu_ms_median": np.nan}
    return {"cpu_ms_per_hit": 1e3 * float(cpu.mean()),
            "cpu_ms_median": 1e3 * float(np.median(cpu))}


def run_set(name: str, n_frames: int, root: Path, bindir: Path | None, modes) -> list[dict]:
    master, truth, cell = generate(name, n_frames, root)
    det = processing_geometry(name)
    mask = processing_mask(name, det)
    multi = bool(SETS[name].get("multi", False))
    peaks = sxlab_peaks(master, det, mask)
    hit_frames = {i for i, p in enumerate(peaks) if len(p) >= MIN_PEAKS}
    n_peaks = [len(peaks[i]) for i in truth.frames.frame[truth.frames.hit]]
    rows = []
    for mode in modes:
        crystals, cpu = sxlab_index(mode, peaks, det, cell, multi)
        rows.append({"set": name, "program": "sxlab", "mode": mode,
                     **score(crystals, truth, cell, hit_frames),
                     **_times(cpu), "peaks_per_hit": float(np.median(n_peaks))})
        log(f"{name}: sxlab {mode}: {rows[-1]['correct']}/{rows[-1]['lattices']} correct, "
            f"{rows[-1]['false']} false, {rows[-1]['cpu_ms_per_hit']:.1f} ms per hit")
    if "misset" in SETS[name]:
        new, refine_s = refined_geometry(peaks, det, cell, multi)
        crystals, cpu = sxlab_index(REFINE_MODE, peaks, new, cell, multi)
        rows.append({"set": name, "program": "sxlab",
                     "mode": f"{REFINE_MODE}, refined geometry",
                     **score(crystals, truth, cell, hit_frames),
                     **_times(cpu), "peaks_per_hit": float(np.median(n_peaks))})
        log(f"{name}: geometry refined in {refine_s:.1f} s CPU; reindexed: "
            f"{rows[-1]['correct']}/{rows[-1]['lattices']} correct")
    if bindir is not None:
        folder = master.parent / "crystfel"
        geom, cell_file, files = _common.crystfel_inputs(folder, master, det, mask, cell)
        crystals, per_hit, cf_n = run_crystfel(bindir, folder, geom, cell_file, files, multi)
        hits = truth.frames.frame[truth.frames.hit]
        cf_peaks = float(np.median(cf_n.reindex(hits).fillna(0)))
        rows.append({"set": name, "program": "CrystFEL", "mode": "asdf",
                     **score(crystals, truth, cell, hit_frames), **_times(per_hit),
                     "peaks_per_hit": cf_peaks})
        log(f"{name}: CrystFEL asdf: {rows[-1]['correct']}/{rows[-1]['lattices']} correct, "
            f"{rows[-1]['false']} false, {rows[-1]['cpu_ms_per_hit']:.1f} ms per hit")
    return rows


def format_report(header, rows, n_frames, crystfel: str | None) -> str:
    lines = ["# Indexing of hard data: sxlab modes and CrystFEL asdf", ""]
    lines += [f"- {h}" for h in header]
    lines += ["", f"{n_frames} frames per set (50 % hits), EIGER X 4M simulated by "
              "sxlab.simulate; the same frames, mask and peakfinder8 parameters for both "
              "programs. Rate: correct lattices / simulated lattices of the hits; false: "
              "lattices that match no crystal (blank frames, wrong lattices, second "
              "solutions); error: median misorientation of the correct lattices; time: "
              "CPU ms of indexing per hit, mean and median over the hits.",
              "CrystFEL: " + (crystfel or "not available on this machine (columns left "
                              "out; see the docstring to build it)."), ""]
    lines.append("| set | program | mode | peaks/hit | lattices | correct | rate | false | "
                 "blank indexed | error (°) | CPU ms/hit mean | median |")
    lines.append("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        peaks = "" if r["peaks_per_hit"] is None else f"{r['peaks_per_hit']:.0f}"
        lines.append(
            f"| {r['set']} | {r['program']} | {r['mode']} | {peaks} | {r['lattices']} | "
            f"{r['correct']} | {100 * r['rate']:.1f} % | {r['false']} | "
            f"{r['blank_indexed']} | {r['median_error_deg']:.3f} | "
            f"{r['cpu_ms_per_hit']:.1f} | {r['cpu_ms_median']:.1f} |")
    return "\n".join(lines)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=None,
                    help="frames per set (default 200; 40 with --quick)")
    ap.add_argument("--sets", default=",".join(SETS), help="comma-separated set names")
    ap.add_argument("--modes", default=",".join(MODES), help="sxlab modes")
    ap.add_argument("--quick", action="store_true", help="few frames (smoke test)")
    ap.add_argument("--no-crystfel", action="store_true", help="leave CrystFEL out")
    ap.add_argument("--out", type=Path, nargs="?", const=Path(__file__).parent / "out",
                    default=None, metavar="DIR")
    args = ap.parse_args(argv)
    if args.frames is None:
        args.frames = 40 if args.quick else 200
    if args.out is None and os.environ.get("SXLAB_BENCH_OUT"):
        args.out = Path(os.environ["SXLAB_BENCH_OUT"])
    unknown = set(args.sets.split(",")) - set(SETS)
    if unknown:
        ap.error(f"unknown sets {sorted(unknown)}; sets: {list(SETS)}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    from sxlab.datasets import cache_dir

    load_start = _common.load_average()
    pinned = _common.pin_to_one_core()
    root = cache_dir() / "bench_index"
    bindir = None if args.no_crystfel else _common.crystfel_bindir("indexamajig")
    crystfel = None
    if bindir is not None:
        crystfel = f"{_common.crystfel_version(bindir)} ({bindir}/indexamajig)"
    elif not args.no_crystfel:
        log("indexamajig not found: CrystFEL columns left out")
    rows = []
    for name in args.sets.split(","):
        rows += run_set(name, args.frames, root, bindir, args.modes.split(","))
    header = _common.machine_description(load_start, pinned=pinned,
                                         packages=("numpy", "numba"))
    text = format_report(header, rows, args.frames, crystfel)
    print(text)
    if args.out is not None:
        _common.write_report(args.out, "bench_index", text, rows,
                             {"machine": header, "crystfel": crystfel, "sets": SETS,
                              "modes": MODES, "rows": rows})
        log(f"wrote {args.out}/bench_index.md, .csv, .json")


if __name__ == "__main__":
    main()
