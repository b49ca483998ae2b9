"""Speed of :func:`sxlab.io.read_stream` against a plain line-by-line Python parser.

A CrystFEL stream of about 100 MB is written with :class:`sxlab.io.StreamWriter` from
random but plausible tables (EIGER X 4M geometry, 5000 frames, 100 peaks per frame, two
thirds of the frames indexed with one lysozyme lattice and 300 reflections). Both readers
parse it into DataFrames of frames, peaks, crystals and reflections; the line parser is
the straightforward way to do it in Python (iterate over the lines, follow the markers,
``split()`` each table row and convert its fields with ``int``/``float``). read_stream
runs with one thread and with one thread per logical CPU (at least two). Each reader runs
once untimed, then three times; the table gives the median wall-clock and CPU times, the
throughput and the ratios. The results are checked to hold the same rows and numbers.
``--third-party`` adds one run of CFstreamparser (a pure-Python stream parser on PyPI).

Run ``python benchmarks/bench_stream.py`` (``--quick`` for a 10 MB smoke run). With
``SXLAB_BENCH_OUT`` set (or ``--out DIR``) the report is also written there as
``bench_stream.md`` and ``bench_stream.json``.
"""

from __future__ import annotations

import _common

_common.single_threaded(override=False)

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from sxlab.cell import UnitCell  # noqa: E402
from sxlab.geometry import builtin_geometry  # noqa: E402
from sxlab.io.stream import read_stream, write_stream  # noqa: E402

HERE = Path(__file__).resolve().parent
SEED = 20240611
PEAKS_PER_FRAME = 100
REFLECTIONS_PER_CRYSTAL = 300
INDEXED_FRACTION = 2 / 3


def log(message: str) -> None:
    """Progress message on stderr (stdout carries only the report)."""
    print(f"[bench_stream] {message}", file=sys.stderr, flush=True)


# ============================================================================ data
def make_tables(n_frames: int, seed: int = SEED):
    """Random frames, peaks, crystals and reflections tables of a plausible run."""
    rng = np.random.default_rng(seed)
    det = builtin_geometry("eiger4m", clen=0.2, wavelength_A=1.0)
    ny, nx = det.data_shape
    frame = np.arange(n_frames)
    frames = pd.DataFrame({
        "frame": frame, "run": "run0012", "event": [f"//{i % 1000}" for i in frame],
        "filename": [f"/data/run0012/run0012_data_{i // 1000:06d}.h5" for i in frame],
        "hit": True, "photon_energy_eV": 12398.42 + rng.normal(0.0, 2.0, n_frames)})
    npk = n_frames * PEAKS_PER_FRAME
    peaks = pd.DataFrame({
        "frame": np.repeat(frame, PEAKS_PER_FRAME), "panel": np.zeros(npk, dtype=np.int16),
        "fs": rng.uniform(0, nx, npk), "ss": rng.uniform(0, ny, npk),
        "intensity": rng.lognormal(6.0, 1.2, npk)})
    indexed = frame[rng.random(n_frames) < INDEXED_FRACTION]
    ref = UnitCell(79.1, 79.1, 37.9, 90, 90, 90, space_group="P 43 21 2").reciprocal_basis
    rows = []
    for f in indexed:
        q, r = np.linalg.qr(rng.normal(size=(3, 3)))
        basis = ref @ (q * np.sign(np.diag(r)))
        row = {"frame": f, "crystal": 0, "lattice": "tetragonal", "centering": "P",
               "unique_axis": "c", "method": "asdf", "profile_radius_invA": 2e-4,
               "resolution_limit_A": rng.uniform(1.6, 3.5)}
        row.update({f"{v}star_{x}": basis[i, j] for i, v in enumerate("abc")
                    for j, x in enumerate("xyz")})
        rows.append(row)
    crystals = pd.DataFrame(rows)
    nr = len(indexed) * REFLECTIONS_PER_CRYSTAL
    refl = pd.DataFrame({
        "frame": np.repeat(indexed, REFLECTIONS_PER_CRYSTAL), "crystal": 0,
        "h": rng.integers(-45, 46, nr), "k": rng.integers(-45, 46, nr),
        "l": rng.integers(-22, 23, nr), "I": rng.normal(200.0, 400.0, nr),
        "sigma": rng.uniform(20.0, 120.0, nr), "peak": rng.uniform(0.0, 900.0, nr),
        "bg": rng.uniform(0.0, 15.0, nr), "fs": rng.uniform(0, nx, nr),
        "ss": rng.uniform(0, ny, nr), "panel": np.zeros(nr, dtype=np.int16)})
    return det, frames, peaks, crystals, refl


# ============================================================================ line parser
def parse_lines(path) -> dict[str, pd.DataFrame]:
    """Plain line-by-line reader of the same tables (the baseline)."""
    frames, peaks, crystals, refl = [], [], [], []
    state = "outside"
    chunk: dict = {}
    crystal: dict = {}
    with open(path, encoding="utf-8") as fh:
        for raw in fh:
            line = raw.rstrip("\n")
            if state == "peaks":
                if line == "End of peak list":
                    state = "chunk"
                    continue
                f = line.split()
                if f[0] == "fs/px":
                    continue
                peaks.append((chunk["frame"], float(f[0]), float(f[1]), float(f[2]),
                              float(f[3]), f[4]))
                continue
            if state == "reflections":
                if line == "End of reflections":
                    state = "crystal"
                    continue
                f = line.split()
                if f[0] == "h":
                    continue
                refl.append((chunk["frame"], crystal["crystal"], int(f[0]), int(f[1]),
                             int(f[2]), float(f[3]), float(f[4]), float(f[5]), float(f[6]),
                             float(f[7]), float(f[8]), f[9]))
                continue
            if line == "----- Begin chunk -----":
                chunk = {"n_crystals": 0}
                state = "chunk"
            elif line == "----- End chunk -----":
                frames.append(chunk)
                state = "outside"
            elif state == "chunk":
                if line == "Peaks from peak search":
                    state = "peaks"
                elif line == "--- Begin crystal":
                    crystal = {"frame": chunk["frame"], "crystal": chunk["n_crystals"]}
                    chunk["n_crystals"] += 1
                    state = "crystal"
                elif line.startswith("Image serial number: "):
                    chunk["frame"] = int(line[21:]) - 1
                elif line.startswith(("Image filename: ", "Event: ")):
                    key, _, value = line.partition(": ")
                    chunk[key] = value
                else:
                    key, sep, value = line.partition(" = ")
                    if sep:
                        chunk[key] = value
            elif state == "crystal":
                if line == "Reflections measured after indexing":
                    state = "reflections"
                elif line == "--- End crystal":
                    crystals.append(crystal)
                    state = "chunk"
                elif line.startswith("Cell parameters "):
                    f = line.split()
                    crystal.update(a=float(f[2]) * 10, b=float(f[3]) * 10, c=float(f[4]) * 10,
                                   alpha=float(f[6]), beta=float(f[7]), gamma=float(f[8]))
                elif line.startswith(("astar = ", "bstar = ", "cstar = ")):
                    f = line.split()
                    for axis, value in zip("xyz", f[2:5], strict=True):
                        crystal[f"{f[0]}_{axis}"] = float(value) / 10
                else:
                    key, sep, value = line.partition(" = ")
                    if sep:
                        crystal[key] = value
    return {
        "frames": pd.DataFrame(frames),
        "peaks": pd.DataFrame(peaks, columns=["frame", "fs", "ss", "invd_nm", "intensity",
                                              "panel"]),
        "crystals": pd.DataFrame(crystals),
        "reflections": pd.DataFrame(refl, columns=["frame", "crystal", "h", "k", "l", "I",
                                                   "sigma", "peak", "bg", "fs", "ss",
                                                   "panel"]),
    }


def check_same(fast, slow: dict) -> None:
    """Both readers found the same rows and numbers."""
    assert len(fast.frames) == len(slow["frames"])
    for name in ("peaks", "crystals", "reflections"):
        assert len(getattr(fast, name)) == len(slow[name]), name
    for col in ("fs", "ss", "intensity"):
        np.testing.assert_array_equal(fast.peaks[col].to_numpy(), slow["peaks"][col].to_numpy())
    for col in ("h", "k", "l", "I", "sigma", "peak", "bg", "fs", "ss"):
        np.testing.assert_array_equal(fast.reflections[col].to_numpy(),
                                      slow["reflections"][col].to_numpy())
    for col in ("astar_x", "cstar_z", "a", "gamma"):
        np.testing.assert_array_equal(fast.crystals[col].to_numpy(),
                                      slow["crystals"][col].to_numpy())


def run(n_frames: int, runs: int, workdir: Path, third_party: bool) -> dict:
    det, frames, peaks, crystals, refl = make_tables(n_frames)
    path = workdir / "bench.stream"
    cell = UnitCell(79.1, 79.1, 37.9, 90, 90, 90, space_group="P 43 21 2")
    t0 = time.perf_counter()
    write_stream(path, det, frames, peaks, crystals, refl, cell=cell,
                 command_line="sxlab bench_stream")
    write_s = time.perf_counter() - t0
    size_mb = path.stat().st_size / 1e6
    log(f"wrote {size_mb:.1f} MB in {write_s:.1f} s; timing the readers")
    threads = max(2, os.cpu_count() or 1)
    readers = [
        ("sxlab.io.read_stream, 1 thread", lambda: read_stream(path, threads=1)),
        (f"sxlab.io.read_stream, {threads} threads",
         lambda: read_stream(path, threads=threads)),
        ("line-by-line Python", lambda: parse_lines(path)),
    ]
    rows = []
    results = {}
    for name, fn in readers:
        log(f"timing {name}")
        results[name], wall, cpu = _common.time_runs(fn, runs)
        rows.append({"reader": name, "wall_s": wall, "cpu_s": cpu,
                     "median_wall_s": statistics.median(wall),
                     "median_cpu_s": statistics.median(cpu)})
    check_same(results[readers[0][0]], results["line-by-line Python"])
    check_same(results[readers[1][0]], results["line-by-line Python"])
    if third_party:
        try:
            import CFstreamparser
        except ImportError:
            log("CFstreamparser is not installed; skipped")
        else:
            log("timing CFstreamparser.parse_stream_file (one run)")
            t0, c0 = time.perf_counter(), time.process_time()
            CFstreamparser.parse_stream_file(str(path))
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            rows.append({"reader": "CFstreamparser 0.2 (PyPI), one run", "wall_s": [wall],
                         "cpu_s": [cpu], "median_wall_s": wall, "median_cpu_s": cpu})
    base_wall = rows[2]["median_wall_s"]
    base_cpu = rows[2]["median_cpu_s"]
    for r in rows:
        r["MB_per_s"] = size_mb / r["median_wall_s"]
        r["speedup_wall"] = base_wall / r["median_wall_s"]
        r["speedup_cpu"] = base_cpu / r["median_cpu_s"]
    fast = results[readers[0][0]]
    return {"size_MB": size_mb, "frames": len(fast.frames), "peaks": len(fast.peaks),
            "crystals": len(fast.crystals), "reflections": len(fast.reflections),
            "write_s": write_s, "rows": rows}


def format_report(header: list[str], r: dict, runs: int) -> str:
    lines = ["# CrystFEL stream reading", ""]
    lines += [f"- {h}" for h in header]
    lines += [
        f"- Stream: {r['size_MB']:.1f} MB, {r['frames']} frames, {r['peaks']} peaks, "
        f"{r['crystals']} crystals, {r['reflections']} reflections (written in "
        f"{r['write_s']:.1f} s by StreamWriter)",
        f"- Median of {runs} runs after one untimed run; wall clock and process CPU time "
        "(CPU time also counts the other threads)",
        "",
        "| reader | wall median (s) | wall runs (s) | CPU median (s) | MB/s | "
        "× line parser (wall) | × line parser (CPU) |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for row in r["rows"]:
        lines.append(
            f"| {row['reader']} | {row['median_wall_s']:.3f} | "
            f"{', '.join(f'{t:.3f}' for t in row['wall_s'])} | {row['median_cpu_s']:.3f} | "
            f"{row['MB_per_s']:.0f} | {row['speedup_wall']:.1f} | {row['speedup_cpu']:.1f} |")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=None,
                    help="frames in the stream (default 5000, about 100 MB; 500 with --quick)")
    ap.add_argument("--runs", type=int, default=3, help="timed runs per reader (default 3)")
    ap.add_argument("--quick", action="store_true", help="small stream (smoke test)")
    ap.add_argument("--third-party", action="store_true",
                    help="also time CFstreamparser (PyPI) once, if installed")
    ap.add_argument("--out", type=Path, nargs="?", const=HERE / "out", default=None,
                    metavar="DIR", help="also write bench_stream.md/.json to DIR")
    args = ap.parse_args(argv)
    if args.frames is None:
        args.frames = 500 if args.quick else 5000
    if args.out is None and os.environ.get("SXLAB_BENCH_OUT"):
        args.out = Path(os.environ["SXLAB_BENCH_OUT"])
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    load_start = _common.load_average()
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args.frames, args.runs, Path(tmp), args.third_party)
    header = _common.machine_description(load_start, packages=("numpy", "pandas", "numba"),
                                         threads=False)
    text = format_report(header, result, args.runs)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench_stream.md").write_text(text + "\n")
        (args.out / "bench_stream.json").write_text(
            json.dumps({"machine": header, **result}, indent=1))
        log(f"wrote {args.out}/bench_stream.md and .json")


if __name__ == "__main__":
    main()
