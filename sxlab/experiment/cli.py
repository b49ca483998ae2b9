"""``sxlab experiment ...``: the experiment bookkeeping on the command line.

Every subcommand takes the experiment as ``-e/--experiment`` (a folder or a database
URL; default ``$SXLAB_EXPERIMENT`` or the current folder) and ``--exp-tag``.
"""

from __future__ import annotations

import argparse
import os
import sys

__all__ = ["add_parser"]


def _open(args):
    from .core import Experiment
    from .jobs import LocalExecutor

    executor = LocalExecutor(max_jobs=args.max_jobs, workers=args.workers)
    if getattr(args, "dask", None):
        from distributed import Client

        from .jobs import DaskExecutor

        executor = DaskExecutor(Client(args.dask), workers=args.workers or 1)
    return Experiment(args.experiment, tag=args.exp_tag, root=args.root, executor=executor)


def _print(table, *, file=None) -> None:
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_columns", 30,
                           "display.max_colwidth", 60):
        print(table.to_string(index=False) if len(table) else "(none)", file=file)


def _cmd_init(args) -> int:
    with _open(args) as exp:
        print(repr(exp))
    return 0


def _cmd_trial(args) -> int:
    with _open(args) as exp:
        if args.action == "add":
            n = exp.add_trial(args.params, comment=args.comment, active=not args.inactive,
                              d_min=args.d_min)
            print(f"trial {n}")
        elif args.action in ("activate", "deactivate"):
            exp.set_trial(args.number, active=args.action == "activate")
        _print(exp.trials())
    return 0


def _cmd_block(args) -> int:
    with _open(args) as exp:
        if args.action == "add":
            n = exp.add_block(args.first_run, args.last_run, geometry=args.geometry,
                              mask=args.mask, mask_dataset=args.mask_dataset,
                              comment=args.comment)
            print(f"block {n}")
        _print(exp.blocks().drop(columns="params_toml"))
    return 0


def _cmd_tag(args) -> int:
    with _open(args) as exp:
        if args.persistent or not args.runs:
            exp.add_tag(args.name, persistent=args.persistent)
        if args.runs:
            (exp.untag if args.remove else exp.tag)(args.runs, args.name)
        _print(exp.tags())
    return 0


def _cmd_runs(args) -> int:
    with _open(args) as exp:
        _print(exp.runs())
    return 0


def _cmd_watch(args) -> int:
    with _open(args) as exp:
        if args.once:
            _print(exp.watch(args.folder, args.template, once=True,
                             expected_frames=args.expected_frames,
                             auto_submit=not args.no_submit))
            return 0
        w = exp.watch(args.folder, args.template, expected_frames=args.expected_frames,
                      auto_submit=not args.no_submit, interval=args.interval,
                      polling=args.polling)
        print(f"watching {args.folder} ({args.template}); Ctrl-C to stop", flush=True)
        w.join()
        for err in w.errors[-5:]:
            print(f"watch error: {err}", file=sys.stderr)
    return 0


def _cmd_jobs(args) -> int:
    with _open(args) as exp:
        if args.action != "list":
            for job in args.ids:
                {"terminate": exp.terminate, "restart": exp.restart,
                 "delete": exp.delete_job}[args.action](job)
        table = exp.update(ingest=False) if args.update else exp.jobs(args.trial)
        if args.trial is not None:
            table = table[table.trial == args.trial]
        _print(table[["id", "trial", "block", "run", "status", "attempts", "ingested_frames",
                      "n_frames", "error"]])
    return 0


def _cmd_stats(args, figure) -> int:
    with _open(args) as exp:
        st = exp.run_stats(args.trial, args.runs or None, tag=args.tag, last=args.last,
                           min_spots=args.min_spots, i_sigma=args.i_sigma,
                           hq_resolution=args.hq_resolution)
        import pandas as pd

        _print(pd.concat([st.runs, st.total()], ignore_index=True).round(2))
        if args.frames:
            print()
            _print(st.frames)
        if args.output is not None:
            if figure is None:
                raise SystemExit("figures need the sxlab command (sxlab.cli)")
            runs = exp.runs().set_index("name")
            figure(st, {r: list(t) for r, t in runs["tags"].items()}, args.output)
            print(f"wrote {args.output}")
    return 0


def _cmd_merge(args) -> int:
    with _open(args) as exp:
        res = exp.merge(args.trial, args.runs or None, tag=args.tag, symmetry=args.symmetry)
        _print(res.stats.round(3))
        _print(exp.merges().tail(1))
    return 0


def add_parser(sub, figure=None) -> argparse.ArgumentParser:
    """Register ``sxlab experiment`` on the ``sxlab`` subparsers.

    Parameters
    ----------
    sub : argparse subparsers action
    figure : callable, optional
        ``figure(stats, tags, path)`` draws the run-statistics figure (``stats -o``); the
        command line passes one from the view layer.
    """
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-e", "--experiment", default=os.environ.get("SXLAB_EXPERIMENT", "."),
                        metavar="DIR|URL", help="experiment folder or database URL "
                        "(default: $SXLAB_EXPERIMENT or .)")
    common.add_argument("--exp-tag", default="default", help="experiment tag in the database")
    common.add_argument("--root", metavar="DIR", help="folder for job output (with a URL)")
    common.add_argument("--max-jobs", type=int, default=1, help="jobs at once (local pool)")
    common.add_argument("--workers", type=int, default=None, help="worker processes per job")
    common.add_argument("--dask", metavar="ADDRESS", help="run jobs on a Dask scheduler")

    p = sub.add_parser("experiment", help="runs, trials, blocks, tags, jobs, run statistics")
    esub = p.add_subparsers(dest="experiment_command", metavar="ACTION", required=True)

    e = esub.add_parser("init", parents=[common], help="create or open an experiment")
    e.set_defaults(func=_cmd_init)

    e = esub.add_parser("trial", parents=[common], help="add / list / (de)activate trials")
    e.add_argument("action", choices=["add", "list", "activate", "deactivate"])
    e.add_argument("number", nargs="?", type=int, help="trial number (activate/deactivate)")
    e.add_argument("--params", metavar="TOML", help="parameter file")
    e.add_argument("--comment", default="")
    e.add_argument("--d-min", type=float, metavar="Å", help="aggregation resolution")
    e.add_argument("--inactive", action="store_true", help="add without auto-submitting")
    e.set_defaults(func=_cmd_trial)

    e = esub.add_parser("block", parents=[common], help="add / list run groups")
    e.add_argument("action", choices=["add", "list"])
    e.add_argument("first_run", nargs="?", type=int)
    e.add_argument("last_run", nargs="?", type=int, help="omit for open-ended")
    e.add_argument("--geometry", metavar="GEOM")
    e.add_argument("--mask", metavar="H5")
    e.add_argument("--mask-dataset", metavar="PATH")
    e.add_argument("--comment", default="")
    e.set_defaults(func=_cmd_block)

    e = esub.add_parser("tag", parents=[common], help="tag runs; --persistent for new runs")
    e.add_argument("name")
    e.add_argument("runs", nargs="*", metavar="RUN")
    e.add_argument("--persistent", action="store_true", help="apply to every new run")
    e.add_argument("--remove", action="store_true", help="remove the tag from RUN...")
    e.set_defaults(func=_cmd_tag)

    e = esub.add_parser("runs", parents=[common], help="list runs")
    e.set_defaults(func=_cmd_runs)

    e = esub.add_parser("watch", parents=[common], help="discover runs, submit and ingest jobs")
    e.add_argument("folder")
    e.add_argument("--template", default="*_master.h5", help="glob of master files")
    e.add_argument("--once", action="store_true", help="one pass, then exit")
    e.add_argument("--interval", type=float, default=2.0, help="seconds between passes")
    e.add_argument("--polling", action="store_true", help="poll (network file systems)")
    e.add_argument("--expected-frames", type=int, metavar="N", help="frames per run")
    e.add_argument("--no-submit", action="store_true", help="discover only")
    e.set_defaults(func=_cmd_watch)

    e = esub.add_parser("jobs", parents=[common], help="list / terminate / restart / delete")
    e.add_argument("action", nargs="?", default="list",
                   choices=["list", "terminate", "restart", "delete"])
    e.add_argument("ids", nargs="*", type=int, metavar="ID")
    e.add_argument("--trial", type=int)
    e.add_argument("--update", action="store_true", help="refresh job states first")
    e.set_defaults(func=_cmd_jobs)

    e = esub.add_parser("stats", parents=[common], help="run statistics of a trial")
    e.add_argument("--trial", type=int, required=True)
    e.add_argument("--runs", nargs="*", metavar="RUN")
    e.add_argument("--tag")
    e.add_argument("--last", type=int, metavar="N", help="the last N runs")
    e.add_argument("--min-spots", type=int)
    e.add_argument("--i-sigma", type=float, default=1.0)
    e.add_argument("--hq-resolution", type=float, default=2.5)
    e.add_argument("--frames", action="store_true", help="also print every frame")
    e.add_argument("-o", "--output", metavar="PNG", help="write the run-statistics figure")
    e.set_defaults(func=lambda a: _cmd_stats(a, figure))

    e = esub.add_parser("merge", parents=[common], help="merge a trial's runs; recorded")
    e.add_argument("--trial", type=int, required=True)
    e.add_argument("--runs", nargs="*", metavar="RUN")
    e.add_argument("--tag")
    e.add_argument("--symmetry", "-y")
    e.set_defaults(func=_cmd_merge)
    return p
