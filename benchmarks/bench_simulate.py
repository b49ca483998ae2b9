"""Frames per second of :mod:`sxlab.simulate` on one core.

For the EIGER 4M and 16M built-in geometries (lysozyme, P 43 21 2, defaults otherwise):
hits and non-hits, frame generation alone (truth, background, spots, Poisson noise, gain,
flags) and with writing bitshuffle-LZ4 NXmx files. Each row is the median of several timed
runs after a warm-up run; a run makes a batch of frames.

Run ``python benchmarks/bench_simulate.py`` (``make bench`` runs every benchmark). With
``SXLAB_BENCH_OUT`` set, the table is also written there as ``bench_simulate.md``.
"""

from __future__ import annotations

import _common

# One core: keep BLAS and compression libraries single-threaded.
_common.single_threaded(override=False)

import itertools  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from sxlab.cell import UnitCell  # noqa: E402
from sxlab.geometry import builtin_geometry  # noqa: E402
from sxlab.simulate import Simulator  # noqa: E402

CELL = UnitCell(79.1, 79.1, 37.9, 90, 90, 90, space_group="P 43 21 2")
RUNS = 5
BATCH = {"eiger4m": 4, "eiger16m": 2}


def _machine() -> str:
    return (f"{platform.node()} · {_common.cpu_model()} · {os.cpu_count()} logical CPUs · "
            f"{platform.system()} {platform.release()} · Python {platform.python_version()}")


def _time_batches(make_batch) -> tuple[float, float]:
    """Median wall and CPU seconds of one batch (after one warm-up batch)."""
    runs = itertools.count()  # batch 0 is the warm-up, batches 1 to RUNS are timed
    _, wall, cpu = _common.median_time(lambda: make_batch(next(runs)), RUNS)
    return wall, cpu


def bench_geometry(name: str, tmp: Path) -> list[tuple]:
    from sxlab.io.nxmx import NXmxWriter

    det = builtin_geometry(name)
    rows = []
    for hit in (True, False):
        t0 = time.perf_counter()
        sim = Simulator(det, CELL, seed=2024, hit_fraction=1.0 if hit else 0.0)
        setup = time.perf_counter() - t0
        n = BATCH[name]

        def generate(r, sim=sim, n=n):
            for i in range(n):
                sim.frame(r * n + i)

        def generate_and_write(r, sim=sim, n=n, hit=hit):
            path = tmp / f"{name}_{int(hit)}_{r}_master.h5"
            with NXmxWriter(path, det, n_frames=n, frames_per_file=1000, dtype="uint16",
                            compression="bslz4", pixel_mask=sim.pixel_mask,
                            embed_geometry=False) as w:
                for i in range(n):
                    w.write(sim.frame(r * n + i)[0])

        n_refl = sum(sim.frame_truth(i).n_reflections for i in range(n)) / n
        for label, fn in (("generate", generate), ("generate + write bslz4", generate_and_write)):
            wall, cpu = _time_batches(fn)
            rows.append((name, "hit" if hit else "non-hit", label, n / wall, n / cpu,
                         1e3 * wall / n, n_refl, setup))
    return rows


def main() -> None:
    pin = _common.pin_to_one_core()
    lines = [
        "# sxlab.simulate: frames per second on one core",
        "",
        f"Machine: {_machine()}; {pin}.",
        f"Median of {RUNS} runs after a warm-up; each run is a batch of "
        f"{BATCH['eiger4m']} (4M) or {BATCH['eiger16m']} (16M) frames, uint16.",
        "",
        "| detector | frames | task | frames/s (wall) | frames/s (CPU) | ms/frame | "
        "reflections/frame | set-up s |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    with tempfile.TemporaryDirectory() as d:
        for name in BATCH:
            for row in bench_geometry(name, Path(d)):
                lines.append("| {} | {} | {} | {:.1f} | {:.1f} | {:.0f} | {:.0f} | {:.1f} |"
                             .format(*row))
    text = "\n".join(lines)
    print(text)
    out = os.environ.get("SXLAB_BENCH_OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "bench_simulate.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
