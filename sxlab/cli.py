"""The ``sxlab`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def _cmd_demo(args: argparse.Namespace) -> int:
    from sxlab import demo

    argv = ["--dataset", args.dataset] + (["--no-progress"] if args.no_progress else [])
    return demo.main(argv) or 0


def _cmd_version(args: argparse.Namespace) -> int:
    from sxlab import __version__

    print(f"sxlab {__version__}")
    return 0


def _cmd_process(args: argparse.Namespace) -> int:
    from sxlab.io import open_run, read_geom
    from sxlab.params import Params
    from sxlab.pipeline import process_run

    params = Params.load(args.params) if args.params else Params()
    geometry = read_geom(args.geometry) if args.geometry else None
    run = open_run(args.runs if len(args.runs) > 1 else args.runs[0], geometry=geometry)
    executor = "local"
    client = None
    if args.dask:
        from distributed import Client

        client = executor = Client(args.dask)
    elif args.jobs == 1:
        executor = "serial"
    try:
        res = process_run(run, params, executor=executor, n_workers=args.jobs,
                          out=args.out, overwrite=args.overwrite,
                          progress=not args.no_progress)
    finally:
        if client is not None:
            client.close()
    print(res.summary().astype(object).T.to_string(header=False))
    return 0 if (res.frames.status == "ok").any() or not len(res.frames) else 1


def _cmd_stats(args: argparse.Namespace) -> int:
    from sxlab.results import Results

    res = Results.load(args.dir)
    print(res.summary().astype(object).T.to_string(header=False))
    if args.frames:
        print()
        print(res.frames.drop(columns=["error"]).to_string(index=False))
    failed = res.frames[res.frames.status != "ok"]
    if len(failed):
        print()
        print(f"{len(failed)} failed frame(s):")
        for row in failed.itertuples():
            print(f"  frame {row.frame}: {row.error}")
    return 0


def _cmd_profile(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd

    from sxlab import plots
    from sxlab.profiling import read_crystfel_profile

    source = args.dir
    if source.is_dir():
        if (source / "profile.parquet").is_file():
            table = pd.read_parquet(source / "profile.parquet")
        else:  # a directory still being written (live run): its committed parts
            from sxlab.results import Results

            table = Results.load(source).profile
    else:
        table = read_crystfel_profile(source)
    ax = plots.profile(table, block=args.block, top=args.top, level=args.level,
                       include_wait=not args.no_wait)
    ax.figure.savefig(args.output, dpi=120, bbox_inches="tight")
    print(f"wrote {args.output}")
    return 0


def _cmd_merge(args: argparse.Namespace) -> int:
    import pandas as pd

    from sxlab.io import write_hkl, write_mtz
    from sxlab.merging import merge

    source = args.dir
    crystals = beam = None
    if source.is_dir():
        from sxlab.results import Results

        if args.model != "unity":
            res = Results.load(source)
            reflections, crystals = res.reflections, res.crystals
            beam = res.geometry
        elif (source / "reflections.parquet").is_file():
            reflections = pd.read_parquet(source / "reflections.parquet")
        else:
            reflections = Results.load(source).reflections
    else:
        if args.model != "unity":
            print("error: --model needs an output directory (crystals and geometry)",
                  file=sys.stderr)
            return 2
        reflections = pd.read_parquet(source)
    result = merge(reflections, args.symmetry, crystals=crystals, beam=beam,
                   scale=not args.no_scale,
                   iterations=args.iterations, min_measurements=args.min_measurements,
                   partiality=args.partiality, anomalous=args.anomalous,
                   n_shells=args.shells, d_min=args.d_min, d_max=args.d_max,
                   max_adu=args.max_adu, model=args.model)
    write_mtz(result.merged, args.output)
    written = [args.output]
    if args.hkl is not None:
        written += write_hkl(result.merged, args.hkl, half_sets=(result.half1, result.half2))
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(result.stats.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    rejected = int(result.scales.rejected.sum())
    print(f"\n{len(result.merged)} unique reflections from {len(result.scales) - rejected} "
          f"crystal(s) ({rejected} rejected, {result.n_reindexed} reindexed); "
          f"CC* > 0.5 to {result.cc_star_resolution_A:.2f} Å")
    print("wrote " + ", ".join(str(p) for p in written))
    return 0 if len(result.merged) else 1


_MERGE_HELP = """\
Scale and merge the reflections of a processed output directory (or a reflections
Parquet file) and print the statistics in resolution shells. The cell is fitted to the
reflections' indices and resolutions.

Writes an MTZ file (H K L I SIGI N) and, with --hkl, a CrystFEL reflection list with its
half sets (.hkl1, .hkl2) for compare_hkl and check_hkl."""


_PROCESS_HELP = """\
Process every frame of a run: peak search, hit decision, indexing and integration.

Writes Parquet tables (frames, peaks, crystals, reflections, profile), a CrystFEL
stream (results.stream), the parameters with their hash and the software versions to
DIR. Rerunning into the same DIR skips finished frames."""


#: Subcommands defined in this module; the others are registered by their own modules.
CORE_COMMANDS = ("demo", "version", "process", "stats", "profile", "merge")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Return the argument parser of the ``sxlab`` command.

    For a ``command`` of :data:`CORE_COMMANDS` the subcommands of other modules are left
    out (their imports stay off the start-up path of ``sxlab process``).
    """
    parser = argparse.ArgumentParser(
        prog="sxlab", description="Serial crystallography processing, notebook-first."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("demo", help="run the end-to-end demo on bundled synthetic data")
    p.add_argument("--dataset", default="lysozyme-demo", help="registry name of the data set")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("version", help="print the sxlab version")
    p.set_defaults(func=_cmd_version)

    p = sub.add_parser("process", help="process runs into an output directory",
                       description=_PROCESS_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN",
                   help="NXmx master, data, CXI or HDF5 files (several: one run)")
    p.add_argument("--params", metavar="TOML", help="parameter file (default: defaults)")
    p.add_argument("--geometry", metavar="GEOM",
                   help="CrystFEL geometry file (default: the one stored with the data)")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output directory")
    p.add_argument("-j", "--jobs", type=int, default=None, metavar="N",
                   help="worker processes (default: all cores; 1: in this process)")
    p.add_argument("--dask", metavar="ADDRESS",
                   help="run on a Dask scheduler, e.g. tcp://127.0.0.1:8786")
    p.add_argument("--overwrite", action="store_true",
                   help="delete DIR first instead of resuming")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=_cmd_process)

    p = sub.add_parser("stats", help="summary of a processed output directory")
    p.add_argument("dir", type=Path, metavar="DIR")
    p.add_argument("--frames", action="store_true", help="also print the per-frame table")
    p.set_defaults(func=_cmd_stats)

    p = sub.add_parser("profile", help="stacked-area plot of per-stage processing time")
    p.add_argument("dir", type=Path, metavar="DIR",
                   help="output directory, or a CrystFEL --profile log")
    p.add_argument("-o", "--output", type=Path, default=Path("profile.png"), metavar="PNG")
    p.add_argument("--block", type=int, default=133, help="frames averaged per point")
    p.add_argument("--top", type=int, default=10, help="categories kept before 'other'")
    p.add_argument("--no-wait", action="store_true", help="leave out the wait time")
    p.add_argument("--level", type=int, default=1,
                   help="depth of the categories (2: pf8-rstats, asdf-search, ...)")
    p.set_defaults(func=_cmd_profile)

    p = sub.add_parser("merge", help="scale and merge reflections into MTZ / CrystFEL .hkl",
                       description=_MERGE_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", type=Path, metavar="DIR",
                   help="output directory of 'sxlab process' or a reflections .parquet")
    p.add_argument("--symmetry", "-y", required=True, metavar="SPACEGROUP",
                   help="space group, e.g. P43212")
    p.add_argument("-o", "--output", type=Path, default=Path("merged.mtz"), metavar="MTZ",
                   help="MTZ file to write (default merged.mtz)")
    p.add_argument("--hkl", type=Path, metavar="HKL",
                   help="also write a CrystFEL reflection list and its half sets")
    p.add_argument("--no-scale", action="store_true", help="do not refine scales")
    p.add_argument("--model", choices=("unity", "gaussian", "xsphere"), default="unity",
                   help="partiality model: unity (Monte Carlo, default) or post-refinement "
                        "with the gaussian or xsphere model (needs an output directory)")
    p.add_argument("--iterations", type=int, default=3, help="scaling cycles (default 3)")
    p.add_argument("--min-measurements", type=int, default=2, metavar="N",
                   help="observations a reflection needs to be output (default 2)")
    p.add_argument("--partiality", action="store_true",
                   help="divide by the partiality column instead of Monte Carlo averaging")
    p.add_argument("--anomalous", action="store_true", help="keep Friedel mates apart")
    p.add_argument("--shells", type=int, default=20, help="resolution shells (default 20)")
    p.add_argument("--d-min", type=float, metavar="Å", help="high-resolution limit")
    p.add_argument("--d-max", type=float, metavar="Å", help="low-resolution limit")
    p.add_argument("--max-adu", type=float, metavar="ADU",
                   help="leave out reflections with a brighter peak pixel")
    p.set_defaults(func=_cmd_merge)
    if command in CORE_COMMANDS:
        return parser

    from sxlab.calibration.cli import add_parser as add_calibration_parser
    from sxlab.experiment.cli import add_parser as add_experiment_parser
    from sxlab.report import add_parser as add_report_parser

    add_experiment_parser(sub, figure=_run_stats_figure)
    add_report_parser(sub)
    add_calibration_parser(sub)

    from sxlab.live.cli import register as register_live

    register_live(sub)
    return parser


def _run_stats_figure(stats, tags: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from sxlab import plots

    plots.run_stats(stats, tags=tags).savefig(path, dpi=110)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``sxlab`` command and return its exit status.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name; ``sys.argv[1:]`` when omitted.

    Returns
    -------
    int
        Exit status, 0 on success.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
