"""The ``sxlab`` command."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def _cmd_demo(args: argparse.Namespace) -> int:
    from sxlab import demo

    argv = ["--dataset", args.dataset] + (["--no-progress"] if args.no_progress else [])
    return demo.main(argv) or 0


def _cmd_version(args: argparse.Namespace) -> int:
    from sxlab import __version__

    print(f"sxlab {__version__}")
    return 0


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
