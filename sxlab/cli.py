"""The ``sxlab`` command.

Every subcommand reports a problem with its input (a missing or unreadable file, a bad
parameter, a flag that does not fit) as one line ``sxlab: error: ...`` on stderr naming
the file, line, key or flag, and exits with status 2; ``--debug`` (anywhere on the command
line, or ``SXLAB_DEBUG=1``) shows the Python traceback instead. An unexpected failure is
one line ``sxlab: internal error: ...`` with status 1. Ctrl-C ends with one line and
status 130 (``sxlab process`` has committed every finished frame by then: rerun the same
command to resume), and output piped into a command that stops reading early
(``sxlab stats --frames | head``) ends quietly.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from .executors import system_arrow_allocator

#: Exit status of a user error (bad input, file or flag), as argparse uses for usage errors.
EXIT_USAGE = 2
#: Exit status after Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130


class CommandError(ValueError):
    """A problem with what the user asked for; printed as ``sxlab: error: <message>``."""


class Interrupted(Exception):
    """Ctrl-C, with the one line to print (what was kept and how to go on)."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``sxlab: error: <what> (see 'sxlab CMD --help')``."""

    def error(self, message: str):
        sys.stderr.write(f"sxlab: error: {message} (see '{self.prog} --help')\n")
        raise SystemExit(EXIT_USAGE)


def _one_line(text: str) -> str:
    lines = [s.strip() for s in str(text).splitlines() if s.strip()]
    return "; ".join(lines) if lines else ""


def _message(exc: BaseException) -> str:
    """The text of a user error: the exception's message, or its type when it has none."""
    if isinstance(exc, KeyError) and len(exc.args) == 1:
        text = str(exc.args[0])
    elif isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}"
    else:
        text = str(exc)
    return _one_line(text) or type(exc).__name__


# ------------------------------------------------------------------------- commands
def _cmd_demo(args: argparse.Namespace) -> int:
    from sxlab import demo

    argv = ["--dataset", args.dataset] + (["--no-progress"] if args.no_progress else [])
    return demo.main(argv) or 0


def _cmd_version(args: argparse.Namespace) -> int:
    from sxlab import __version__

    print(f"sxlab {__version__}")
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from sxlab import datasets

    if args.name is None:
        table = datasets.list_datasets()
        print(f"cache: {datasets.cache_dir()} (SXLAB_CACHE moves it)")
        print(table.to_string(index=False))
        return 0
    try:
        datasets.info(args.name)
    except KeyError:
        names = ", ".join(datasets.list_datasets().name)
        raise CommandError(f"no data set called {args.name!r} (known: {names})") from None
    print(datasets.path(args.name, progress=False))
    return 0


def _read_cell_option(path: str):
    from sxlab.io import read_cell

    if not Path(path).is_file():
        raise CommandError(f"--cell {path}: no such file")
    return read_cell(path)


def _params_of(args: argparse.Namespace):
    """The trial parameters: ``--params`` file, then ``--cell`` and ``--symmetry``."""
    from sxlab.params import Params

    if args.params and not Path(args.params).is_file():
        raise CommandError(f"--params {args.params}: no such file")
    params = Params.load(args.params) if args.params else Params()
    cell = _read_cell_option(args.cell) if getattr(args, "cell", None) else params.cell
    symmetry = getattr(args, "symmetry", None)
    if symmetry is not None:
        from sxlab.symmetry import resolve_symmetry

        try:
            sg, _ = resolve_symmetry(symmetry)
        except ValueError as exc:
            raise CommandError(f"--symmetry {symmetry}: {exc}") from None
        if cell is not None:
            from sxlab.cell import UnitCell
            from sxlab.lattice import lattice_mismatch

            cell = UnitCell(*cell.parameters, space_group=sg.hm)
            problem = lattice_mismatch(cell)
            if problem:
                raise CommandError(f"--symmetry {symmetry}: the cell {problem}")
        params = params.replace(symmetry=sg.hm)
    if cell is not params.cell:
        params = params.replace(cell=cell)
    return params


def _open_run_option(args: argparse.Namespace):
    from sxlab.io import open_run, read_geom

    geometry = None
    if args.geometry:
        if not Path(args.geometry).is_file():
            raise CommandError(f"--geometry {args.geometry}: no such file")
        geometry = read_geom(args.geometry)
    run = open_run(args.runs if len(args.runs) > 1 else args.runs[0], geometry=geometry)
    beam = {k: v for k, v in (("wavelength_A", args.wavelength),
                              ("photon_energy_eV", args.photon_energy)) if v is not None}
    if len(beam) > 1:
        raise CommandError("give --wavelength or --photon-energy, not both")
    if beam:
        run = run.with_beam(**beam)
    if run.geometry is None:
        raise CommandError(f"{run.files[0]}: no geometry stored with the data; give one with "
                           "--geometry GEOM")
    return run


def _cmd_process(args: argparse.Namespace) -> int:
    from sxlab.pipeline import process_run
    from sxlab.results import ResultsDirError, ResultsReader

    if args.jobs is not None and args.jobs < 1:
        raise CommandError(f"-j/--jobs must be at least 1, got {args.jobs}")
    params = _params_of(args)
    run = _open_run_option(args)
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
                          retry_failed=not args.keep_failed,
                          progress=not args.no_progress)
    except ResultsDirError as exc:
        if "holds results of" not in str(exc):
            raise
        raise CommandError(f"{exc}; give another --out, or --overwrite to replace them"
                           ) from exc
    except KeyboardInterrupt:
        n = len(ResultsReader(args.out).poll()["frames"]) if args.out.is_dir() else 0
        raise Interrupted(f"interrupted; {n} of {len(run)} frames are committed in "
                          f"{args.out}, run the same command again to resume") from None
    finally:
        if client is not None:
            client.close()
    for note in res.notes:
        print(f"sxlab: note: {note}", file=sys.stderr)
    print(res.summary().astype(object).T.to_string(header=False))
    return 0 if (res.frames.status == "ok").any() or not len(res.frames) else 1


def _load_results(path: Path):
    from sxlab.results import Results

    return Results.load(path)


def _cmd_stats(args: argparse.Namespace) -> int:
    res = _load_results(args.dir)
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

    if args.block is not None and args.block < 1:
        raise CommandError(f"--block must be at least 1, got {args.block}")
    source = args.dir
    if not source.exists():
        raise CommandError(f"{source}: no such results directory or profile log")
    if source.is_dir():
        if (source / "profile.parquet").is_file():
            table = pd.read_parquet(source / "profile.parquet")
        else:  # a directory still being written (live run): its committed parts
            table = _load_results(source).profile
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
    crystals = beam = cell = None
    symmetry = args.symmetry
    if not source.exists():
        raise CommandError(f"{source}: no such results directory or reflections file")
    if source.is_dir():
        res = _load_results(source)
        reflections, crystals, cell = res.reflections, res.crystals, res.params.cell
        if args.model != "unity":
            beam = res.geometry
        if symmetry is None:
            symmetry = res.params.symmetry or (res.params.cell.space_group
                                               if res.params.cell is not None else None)
            if symmetry:
                print(f"symmetry {symmetry} (from {source / 'params.toml'})")
    else:
        if args.model != "unity":
            raise CommandError(f"--model {args.model} needs an output directory (crystals "
                               f"and geometry), not the reflections file {source}")
        reflections = pd.read_parquet(source)
    if symmetry is None:
        raise CommandError(f"{source} records no symmetry; give the space group with "
                           "--symmetry, e.g. -y P43212")
    result = merge(reflections, symmetry, cell=cell, crystals=crystals, beam=beam,
                   scale=not args.no_scale,
                   iterations=args.iterations, min_measurements=args.min_measurements,
                   partiality=args.partiality, anomalous=args.anomalous,
                   n_shells=args.shells, d_min=args.d_min, d_max=args.d_max,
                   max_adu=args.max_adu, model=args.model)
    for line in result.notes:
        print(line)
    write_mtz(result.merged, args.output)
    written = [args.output]
    if args.hkl is not None:
        written += write_hkl(result.merged, args.hkl, half_sets=(result.half1, result.half2))
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(result.stats.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    rejected = int(result.scales.rejected.sum())
    d_cc = result.cc_star_resolution_A
    where = f"CC* > 0.5 to {d_cc:.2f} Å" if d_cc == d_cc else "CC* not above 0.5 in any shell"
    print(f"\n{len(result.merged)} unique reflections from {len(result.scales) - rejected} "
          f"crystal(s) ({rejected} rejected, {result.n_reindexed} reindexed by the "
          f"indexing-ambiguity resolver); {where}; "
          f"data to {result.stats.d_min_A.iloc[-1]:.2f} Å")
    print("wrote " + ", ".join(str(p) for p in written))
    return 0 if len(result.merged) else 1


def _cmd_params(args: argparse.Namespace) -> int:
    from sxlab.params import Params

    if args.template:
        if args.file is not None:
            raise CommandError("give --template or a parameter file, not both")
        sys.stdout.write(Params.template())
        return 0
    if args.file is not None and not Path(args.file).is_file():
        raise CommandError(f"{args.file}: no such file")
    params = Params.load(args.file) if args.file else Params()
    sys.stdout.write(params.to_toml())
    return 0


_MERGE_HELP = """\
Scale and merge the reflections of a processed output directory (or a reflections
Parquet file) and print the statistics in resolution shells.

The space group is --symmetry, else the one recorded with the results (sxlab process
--symmetry or the [cell] of the parameters). With an output directory, every crystal's
cell is checked against the space group and against the others first: crystals indexed
in another setting of the same lattice are reindexed, the others rejected, and the merge
refuses to go on when most crystals do not fit. The cell is the reference cell of the
results, else fitted to the reflections' resolutions (said so). Shells never go beyond
the highest resolution of the data.

Writes an MTZ file (H K L I SIGI N) and, with --hkl, a CrystFEL reflection list with its
half sets (.hkl1, .hkl2) for compare_hkl and check_hkl."""


_PROCESS_HELP = """\
Process every frame of a run: peak search, hit decision, indexing and integration.

Writes Parquet tables (frames, peaks, crystals, reflections, profile), a CrystFEL
stream (results.stream), the parameters with their hash, the input files' identity and
the software versions to DIR. Rerunning into the same DIR resumes: finished frames are
kept, failed frames are tried again (--keep-failed keeps them), and a DIR holding results
of other input files, another geometry or other parameters is refused.

Give the unit cell with --cell (a CrystFEL .cell file or a PDB file's CRYST1 line) or in
the [cell] section of --params (sxlab params --template shows every key). Without one,
each lattice is reported in its conventional setting (the Bravais lattice of its reduced
cell)."""


#: Subcommands defined in this module; the others are registered by their own modules.
CORE_COMMANDS = ("demo", "data", "version", "params", "process", "stats", "profile", "merge")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Return the argument parser of the ``sxlab`` command.

    For a ``command`` of :data:`CORE_COMMANDS` the subcommands of other modules are left
    out (their imports stay off the start-up path of ``sxlab process``).
    """
    from sxlab import __version__

    parser = _Parser(
        prog="sxlab", description="Serial crystallography processing, notebook-first.",
        epilog="--debug (anywhere) shows the Python traceback of an error.")
    parser.add_argument("--version", action="version", version=f"sxlab {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                parser_class=_Parser)

    p = sub.add_parser("demo", help="run the end-to-end demo on bundled synthetic data")
    p.add_argument("--dataset", default="lysozyme-demo", help="registry name of the data set")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("data", help="print where a registered data set is (made once)",
                       description="Print the master file of a registered data set, "
                       "generating or downloading it into the cache once; without NAME, "
                       "list the data sets and the cache directory.")
    p.add_argument("name", nargs="?", metavar="NAME", help="e.g. lysozyme-demo")
    p.set_defaults(func=_cmd_data)

    p = sub.add_parser("version", help="print the sxlab version")
    p.set_defaults(func=_cmd_version)

    p = sub.add_parser("params", help="print trial parameters (defaults, a template, a file)",
                       description="Print the parameters of a trial as TOML: the defaults, "
                       "a commented template of every section and key (--template), or the "
                       "full parameters a file gives (checked).")
    p.add_argument("file", nargs="?", metavar="TOML", help="parameter file to check and print")
    p.add_argument("--template", action="store_true",
                   help="commented template with every key, its default and meaning")
    p.set_defaults(func=_cmd_params)

    p = sub.add_parser("process", help="process runs into an output directory",
                       description=_PROCESS_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN",
                   help="NXmx master, data, CXI or HDF5 files, or a folder of single-frame "
                   "files (several: one run)")
    p.add_argument("--params", metavar="TOML", help="parameter file (default: defaults)")
    p.add_argument("--cell", metavar="FILE",
                   help="reference unit cell: CrystFEL .cell file or PDB file (CRYST1)")
    p.add_argument("--symmetry", "-y", metavar="SPACEGROUP",
                   help="space group of the crystals, e.g. P43212 (recorded for merging)")
    p.add_argument("--geometry", metavar="GEOM",
                   help="CrystFEL geometry file (default: the one stored with the data)")
    p.add_argument("--wavelength", type=float, metavar="Å",
                   help="wavelength, when neither the geometry nor the data give it")
    p.add_argument("--photon-energy", type=float, metavar="EV",
                   help="photon energy, when neither the geometry nor the data give it")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output directory")
    p.add_argument("-j", "--jobs", type=int, default=None, metavar="N",
                   help="worker processes (default: all cores; 1: in this process)")
    p.add_argument("--dask", metavar="ADDRESS",
                   help="run on a Dask scheduler, e.g. tcp://127.0.0.1:8786")
    p.add_argument("--overwrite", action="store_true",
                   help="delete DIR first instead of resuming")
    p.add_argument("--keep-failed", action="store_true",
                   help="when resuming, keep frames that failed instead of trying them again")
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
    p.add_argument("--block", type=int, default=None,
                   help="frames averaged per point (default: about 60 points, 1 to 133 "
                   "frames each)")
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
    p.add_argument("--symmetry", "-y", metavar="SPACEGROUP",
                   help="space group, e.g. P43212 (default: the one recorded in DIR)")
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


# ----------------------------------------------------------------------------- main
def _quiet_stdout() -> None:
    """After a broken pipe: send what is still buffered for stdout nowhere."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass  # stdout is not a file descriptor (a notebook, a test's capture)


def _is_user_error(exc: BaseException) -> bool:
    return isinstance(exc, (OSError, ValueError, LookupError))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``sxlab`` command and return its exit status.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name; ``sys.argv[1:]`` when omitted.

    Returns
    -------
    int
        Exit status: 0 on success, 1 when the command ran but produced nothing usable
        (or an internal error), 2 for an error in the input, 130 after Ctrl-C.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("SXLAB_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    system_arrow_allocator()
    try:
        return int(args.func(args) or 0)
    except (KeyboardInterrupt, Interrupted) as exc:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C: no traceback
        if debug:
            raise
        text = str(exc) if isinstance(exc, Interrupted) else "interrupted"
        print(f"sxlab: {text}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _quiet_stdout()
        return 0
    except SystemExit as exc:  # raise SystemExit("message") of a subcommand
        if isinstance(exc.code, str):
            print(f"sxlab: error: {_one_line(exc.code)}", file=sys.stderr)
            return EXIT_USAGE
        raise
    except Exception as exc:
        if debug:
            raise
        if _is_user_error(exc):
            print(f"sxlab: error: {_message(exc)}", file=sys.stderr)
            return EXIT_USAGE
        print(f"sxlab: internal error: {type(exc).__name__}: {_message(exc)} (run with "
              "--debug for the traceback and report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
