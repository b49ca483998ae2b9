"""Frame reading against the bitshuffle-LZ4 decode floor of the same chunks (1M, 4M, 16M).

For an EIGER X 1M (1030 × 1065), X 4M (2070 × 2167) and EIGER2 X 16M (4148 × 4362)
detector the script simulates 20 frames with :mod:`sxlab.simulate` (the registry recipes
``lysozyme-demo``, ``lysozyme-4m`` and ``lysozyme-16m``; uint16 or uint32 bitshuffle-LZ4
NXmx, one chunk per frame, as an EIGER writes them), cached under
``$SXLAB_CACHE/bench_runs``, and times per frame (CPU, one thread, median over frames
and runs after a warm-up):

* **decode floor**: the raw bitshuffle-LZ4 decode of each frame's chunk, already in
  memory, by the ``bitshuffle`` package (``decompress_lz4``) and by the C decoder of
  hdf5plugin's filter into a reused array (:func:`sxlab.io.compression.bslz4_decode_into`);
  the floor is the faster of the two;
* **chunk read + decode**: the same with the chunk read from the file first
  (``read_direct_chunk``);
* **h5py**: ``dataset[i]``, HDF5 running the filter, stored dtype (no conversion);
* **sxlab read_into**: :meth:`sxlab.io.Run.read_into` into reused float32 / bool arrays
  (read + decompress + convert + bad-pixel mask), and into an array of the stored dtype
  (no conversion: what the pipeline's workers do per frame);
* **sxlab read**: :meth:`sxlab.io.Run.read` (new arrays, wrapped as xarray);
* **DIALS** (when Debian's ``dials`` is installed): ``dxtbx`` ``get_raw_data`` of the
  image set of the same master file, in a subprocess with the system Python.

Target: sxlab's read + decompress + convert within 1.5× of the floor.

Run ``python benchmarks/bench_read.py [--frames N] [--runs R] [--detectors 1m,4m,16m]
[--quick] [--out [DIR]]``.
"""

from __future__ import annotations

import _common

_common.single_threaded()

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

DETECTORS = {"1m": "lysozyme-demo", "4m": "lysozyme-4m", "16m": "lysozyme-16m"}
TARGET = 1.5

DIALS_SCRIPT = r"""
import json, sys, time
from dxtbx.model.experiment_list import ExperimentListFactory
master, n, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
# a series of still shots: one image set per frame, each caching its last image
isets = ExperimentListFactory.from_filenames([master]).imagesets()
n = min(n, len(isets))
isets[0].get_raw_data(0)
cpu = []
for _ in range(runs):
    for i in range(n):
        isets[i].clear_cache()
        c0 = time.process_time()
        isets[i].get_raw_data(0)
        cpu.append(time.process_time() - c0)
json.dump(cpu, sys.stdout)
"""


def log(msg: str) -> None:
    print(f"[bench_read] {msg}", file=sys.stderr, flush=True)


def dataset(key: str, n_frames: int) -> Path:
    return _common.simulated_run(DETECTORS[key], n_frames, log=log)


def per_frame(fn, n: int, runs: int) -> float:
    """Median CPU ms of ``fn(i)`` over frames ``0..n-1`` and ``runs`` passes (after one)."""
    for i in range(n):
        fn(i)
    cpu = []
    for _ in range(runs):
        for i in range(n):
            c0 = time.process_time()
            fn(i)
            cpu.append(time.process_time() - c0)
    return 1e3 * statistics.median(cpu)


def dials_read(master: Path, n: int, runs: int) -> tuple[float | None, str]:
    """DIALS's (dxtbx) median CPU ms per ``get_raw_data``, or None and why not."""
    python = "/usr/bin/python3"
    if not shutil.which("dials.import") or not Path(python).exists():
        return None, "dials not installed"
    proc = subprocess.run([python, "-c", DIALS_SCRIPT, str(master), str(n), str(runs)],
                          capture_output=True, text=True, check=False,
                          env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        return None, "dxtbx failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1]
    return 1e3 * statistics.median(json.loads(proc.stdout)), "dxtbx get_raw_data"


def measure(key: str, n_frames: int, runs: int, with_dials: bool) -> dict:
    import bitshuffle

    from sxlab.io import open_run
    from sxlab.io.compression import bslz4_decode_into

    master = dataset(key, n_frames)
    run = open_run(master)
    n = min(n_frames, len(run))
    raw = run.read_raw(0)
    blobs = [run.read_compressed(i) for i in range(n)]
    if any(b is None for b in blobs):
        raise RuntimeError(f"{master}: frames are not one bitshuffle-LZ4 chunk each")
    block = int.from_bytes(blobs[0][8:12], "big") // raw.itemsize
    dec = np.empty_like(raw)
    img = np.empty(run.frame_shape, np.float32)
    stored = np.empty(run.frame_shape, run.dtype)
    bad = np.empty(run.frame_shape, bool)
    import h5py

    f = h5py.File(sorted(master.parent.glob("*_data_*.h5"))[0], "r")
    dset = f["/entry/data/data"]
    payloads = [np.frombuffer(b, np.uint8, offset=12) for b in blobs]
    row = {
        "detector": key, "shape": "×".join(map(str, run.frame_shape)),
        "dtype": raw.dtype.name, "compressed_MB": statistics.mean(map(len, blobs)) / 1e6,
        "bitshuffle_ms": per_frame(lambda i: bitshuffle.decompress_lz4(
            payloads[i], raw.shape, raw.dtype, block), n, runs),
        "c_decoder_ms": per_frame(lambda i: bslz4_decode_into(blobs[i], dec), n, runs),
        "chunk_read_decode_ms": per_frame(lambda i: bslz4_decode_into(
            run.read_compressed(i), dec, checked=True), n, runs),
        "h5py_ms": per_frame(lambda i: dset[i], n, runs),
        "read_into_ms": per_frame(lambda i: run.read_into(i, img, bad), n, runs),
        "read_stored_ms": per_frame(lambda i: run.read_into(i, stored, bad), n, runs),
        "read_ms": per_frame(run.read, n, runs),
    }
    f.close()
    row["floor_ms"] = min(row["bitshuffle_ms"], row["c_decoder_ms"])
    row["read_into_ratio"] = row["read_into_ms"] / row["floor_ms"]
    row["read_ratio"] = row["read_ms"] / row["floor_ms"]
    row["read_stored_ratio"] = row["read_stored_ms"] / row["floor_ms"]
    row["dials_ms"], row["dials_note"] = (dials_read(master, n, runs) if with_dials
                                          else (None, "left out"))
    return row


def report(rows: list[dict], header: list[str]) -> str:
    def f(x, spec=".2f"):
        return "–" if x is None else format(x, spec)

    lines = list(header) + ["", "CPU ms per frame (median):", "",
                            "| detector | pixels, dtype | MB compressed | bitshuffle | C "
                            "decoder | **floor** | chunk read + decode | h5py `dset[i]` | "
                            "sxlab `read_into` float32 | ratio to floor | `read_into` "
                            "stored dtype | ratio | sxlab `read` | ratio | DIALS |",
                            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
                            "---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['detector']} | {r['shape']} {r['dtype']} | {r['compressed_MB']:.2f} | "
            f"{r['bitshuffle_ms']:.2f} | {r['c_decoder_ms']:.2f} | **{r['floor_ms']:.2f}** | "
            f"{r['chunk_read_decode_ms']:.2f} | {r['h5py_ms']:.2f} | {r['read_into_ms']:.2f} "
            f"| {r['read_into_ratio']:.2f}× | {r['read_stored_ms']:.2f} | "
            f"{r['read_stored_ratio']:.2f}× | {r['read_ms']:.2f} | {r['read_ratio']:.2f}× | "
            f"{f(r['dials_ms'])} |")
    notes = {r["dials_note"] for r in rows}
    lines += ["", f"Target: sxlab `read_into` (read + decompress + convert to float32 + "
              f"bad-pixel mask) ≤ {TARGET}× the floor. `read_into` in the stored dtype "
              "(flagged pixels zeroed in place + bad-pixel mask, no conversion) is what the "
              "pipeline's workers do (`sxlab.pipeline.read_frame`). DIALS: "
              f"{', '.join(sorted(notes))} (stored integers, no conversion)."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=None, help="frames (default 20; 5 quick)")
    ap.add_argument("--runs", type=int, default=None, help="passes (default 3; 1 quick)")
    ap.add_argument("--detectors", default="1m,4m,16m", help="comma-separated of 1m,4m,16m")
    ap.add_argument("--quick", action="store_true", help="few frames and passes")
    ap.add_argument("--no-dials", action="store_true", help="leave DIALS out")
    ap.add_argument("--out", type=Path, nargs="?", const=Path(__file__).parent / "out",
                    default=None, metavar="DIR", help="also write bench_read.md/.csv/.json")
    args = ap.parse_args()
    n = args.frames or (5 if args.quick else 20)
    runs = args.runs or (1 if args.quick else 3)
    keys = args.detectors.split(",")
    if set(keys) - set(DETECTORS):
        ap.error("--detectors takes 1m,4m,16m")
    if args.out is None and _common.os.environ.get("SXLAB_BENCH_OUT"):
        args.out = Path(_common.os.environ["SXLAB_BENCH_OUT"])
    load_start = _common.load_average()
    rows = [measure(k, n, runs, not args.no_dials) for k in keys]
    header = ["# Frame reading: sxlab vs the bitshuffle-LZ4 decode floor (and DIALS)", ""]
    header += [f"- {line}" for line in _common.machine_description(
        load_start, packages=("numpy", "numba", "h5py", "bitshuffle"))]
    header.append(f"- {n} frames per detector, {runs} timed passes after one untimed")
    text = report(rows, header)
    print(text)
    if args.out is not None:
        _common.write_report(args.out, "bench_read", text, rows, {"rows": rows})


if __name__ == "__main__":
    main()
