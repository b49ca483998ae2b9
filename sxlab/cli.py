"""The ``sxlab`` command."""

from __future__ import annotations

import argparse
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
    from sxlab.pipeline import Results

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
        table = pd.read_parquet(source / "profile.parquet")
    else:
        table = read_crystfel_profile(source)
    ax = plots.profile(table, block=args.block, top=args.top,
                       include_wait=not args.no_wait)
    ax.figure.savefig(args.output, dpi=120, bbox_inches="tight")
    print(f"wrote {args.output}")
    return 0


_PROCESS_HELP = """\
Process every frame of a run: peak search, hit decision, indexing and integration.

Writes Parquet tables (frames, peaks, crystals, reflections, profile), a CrystFEL
stream (results.stream), the parameters with their hash and the software versions to
DIR. Rerunning into the same DIR skips finished frames."""


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``sxlab`` command."""
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
    p.set_defaults(func=_cmd_profile)
    return parser


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
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
