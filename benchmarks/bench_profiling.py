"""Overhead of :mod:`sxlab.profiling` timers, on and off.

Times an empty ``with profiler.section(...)`` block (enabled, disabled), a call through a
:func:`~sxlab.profiling.profiled` function with and without an open frame, and a whole
frame of the real-time pipeline's shape (root plus 14 nested sections) with no work
inside, against a plain loop. The table gives the minimum over repeats of the mean cost
per call, in nanoseconds, and the overhead of one frame's timers relative to the
single-thread time per frame measured for CrystFEL (186 ms for a non-hit, see
``specs/algorithms.md``).

Run ``python benchmarks/bench_profiling.py``; with ``SXLAB_BENCH_OUT`` set (or
``--out DIR``) the report is also written there as ``bench_profiling.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import _common

from sxlab import profiling as P

HERE = Path(__file__).resolve().parent
NON_HIT_FRAME_S = 0.186
CALLS = 100_000
REPEATS = 7


def per_call_ns(fn, calls: int = CALLS, repeats: int = REPEATS) -> float:
    """Minimum over ``repeats`` of the mean wall time of ``fn()`` in nanoseconds."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter_ns() - t0) / calls)
    return best


def pipeline_frame(prof: P.Profiler, i: int) -> None:
    """A frame shaped like the real-time pipeline's profile tree, with no work."""
    with prof.frame(i):
        with prof.section(P.WAIT):
            pass
        with prof.section(P.LOAD_IMAGE_DATA):
            pass
        with prof.section(P.FLAG_VALUES):
            pass
        with prof.section(P.PEAK_SEARCH):
            with prof.section(P.PF8_RSTATS):
                pass
            with prof.section(P.PF8_SEARCH):
                pass
        with prof.section(P.INDEX):
            for name in (P.ASDF_TRIPLETS, P.ASDF_SEARCH, P.ASDF_FINDCELL,
                         P.PREREFINE_CELL_CHECK, P.REFINE):
                with prof.section(name):
                    pass
        with prof.section(P.INTEGRATION):
            pass
        with prof.section(P.WRITE_STREAM):
            pass


def run() -> list[tuple[str, float]]:
    on, off = P.Profiler(), P.Profiler(enabled=False)

    @P.profiled(P.INDEX)
    def decorated():
        pass

    def plain():
        pass

    def section_on():
        with on.section(P.INDEX):
            pass

    def section_off():
        with off.section(P.INDEX):
            pass

    base = per_call_ns(plain)
    rows = [("plain function call (baseline)", base)]
    with on.frame(0):
        rows.append(("section, profiler on", per_call_ns(section_on) - base))
        rows.append(("profiled() call in an open frame", per_call_ns(decorated) - base))
    on.clear()
    rows.append(("section, profiler off", per_call_ns(section_off) - base))
    rows.append(("profiled() call, no frame open", per_call_ns(decorated) - base))
    counter = iter(range(10**9))
    rows.append(("whole frame, 15 segments, on",
                 per_call_ns(lambda: pipeline_frame(on, next(counter)), calls=10_000)))
    rows.append(("whole frame, 15 segments, off",
                 per_call_ns(lambda: pipeline_frame(off, 0), calls=10_000)))
    return rows


def format_report(rows) -> str:
    lines = [
        "# Profiling timer overhead",
        "",
        f"- CPU: {_common.cpu_model()}, {os.cpu_count()} logical CPUs; "
        f"Python {platform.python_version()}",
        f"- Minimum over {REPEATS} repeats of the mean per call",
        "",
        "| what | ns per call | share of a 186 ms frame |",
        "|---|---:|---:|",
    ]
    for name, ns in rows:
        share = f"{ns * 1e-9 / NON_HIT_FRAME_S:.5%}" if name.startswith("whole") else ""
        lines.append(f"| {name} | {ns:.0f} | {share} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, nargs="?", const=HERE / "out", default=None,
                    metavar="DIR", help="also write bench_profiling.md to DIR")
    args = ap.parse_args(argv)
    if args.out is None and os.environ.get("SXLAB_BENCH_OUT"):
        args.out = Path(os.environ["SXLAB_BENCH_OUT"])
    text = format_report(run())
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench_profiling.md").write_text(text + "\n")
        print(f"[bench_profiling] wrote {args.out}/bench_profiling.md", file=sys.stderr)


if __name__ == "__main__":
    main()
