"""Reproducible reprocessing reports: a parameterised notebook executed and rendered to HTML.

:func:`report` gathers the provenance of a processed output directory (or of a trial of
an experiment): parameters and their hash, software versions, input files with SHA-256
checksums, the geometry, the processing and report command lines and the date; then it
executes the report notebook (``sxlab/data/report_template.ipynb``) with papermill and
renders it with nbconvert. The notebook shows the provenance block, the run statistics
(table, the four-panel figure, strongest images) and the unit-cell distribution, and
writes every number it shows to ``<report>.numbers.json``: rerunning the report on the
same inputs gives the same numbers (only the date differs).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import platform
import sys
from pathlib import Path

__all__ = ["add_parser", "file_checksum", "provenance", "report"]

TEMPLATE = Path(__file__).with_name("data") / "report_template.ipynb"


def file_checksum(path, *, max_bytes: int = 2 << 30) -> str | None:
    """SHA-256 of a file (hex); None for files larger than ``max_bytes``."""
    path = Path(path)
    if path.stat().st_size > max_bytes:
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _versions() -> dict:
    import h5py
    import numba
    import numpy
    import pandas

    from . import __version__

    return {"sxlab": __version__, "python": platform.python_version(),
            "numpy": numpy.__version__, "pandas": pandas.__version__,
            "numba": numba.__version__, "h5py": h5py.__version__}


def _input_files(frames, results_dir: Path) -> list[Path]:
    files = set()
    if "filename" in frames.columns:
        files |= {Path(f) for f in frames["filename"].dropna().unique() if f}
    job = results_dir.parent / "job.json"
    if job.is_file():
        argv = json.loads(job.read_text()).get("argv", [])
        if len(argv) > 2:
            files.add(Path(argv[2]))
    return sorted(f for f in files if f.is_file())


def _dir_provenance(results_dir: Path, max_bytes: int) -> dict:
    import pandas as pd

    if not (results_dir / "params.toml").is_file():
        raise FileNotFoundError(f"{results_dir}: not an output directory of sxlab process "
                                "(no params.toml)")
    frames = pd.read_parquet(results_dir / "frames.parquet", columns=["filename"]) \
        if (results_dir / "frames.parquet").is_file() else pd.DataFrame()
    job = results_dir.parent / "job.json"
    command = json.loads(job.read_text()).get("argv") if job.is_file() else None
    tables = sorted(results_dir.glob("*.parquet"))
    return {
        "results": str(results_dir),
        "params_toml": (results_dir / "params.toml").read_text(),
        "params_hash": _read(results_dir / "params.sha256").strip(),
        "processing_versions": json.loads(_read(results_dir / "versions.json") or "{}"),
        "geometry": _read(results_dir / "geometry.geom"),
        "processing_command": " ".join(command) if command else "",
        "inputs": [{"path": str(p), "bytes": p.stat().st_size,
                    "sha256": file_checksum(p, max_bytes=max_bytes)}
                   for p in _input_files(frames, results_dir)],
        "tables": [{"path": str(p), "bytes": p.stat().st_size,
                    "sha256": file_checksum(p, max_bytes=max_bytes)} for p in tables],
    }


def _read(path: Path) -> str:
    return path.read_text() if path.is_file() else ""


def provenance(source=None, *, experiment=None, exp_tag: str = "default", trial=None,
               runs=None, tag=None, command: str | None = None,
               max_checksum_bytes: int = 2 << 30) -> dict:
    """The provenance block of a report.

    Parameters
    ----------
    source : path-like, optional
        An output directory of ``sxlab process`` / :func:`sxlab.process_run`.
    experiment, exp_tag, trial, runs, tag
        Or a trial of an experiment (folder or URL) and a selection of its runs.
    command : str, optional
        The report's command line (default: ``sys.argv``).
    max_checksum_bytes : int
        Larger files are listed with their size but not hashed.

    Returns
    -------
    dict
        ``date``, ``command``, ``versions``, and ``sources``: per output directory its
        parameters (TOML and hash), processing versions, geometry, processing command,
        input files and result tables with sizes and SHA-256.
    """
    if (source is None) == (experiment is None):
        raise ValueError("give either an output directory or experiment= with trial=")
    if source is not None:
        dirs = [Path(source)]
        selection = {"source": str(Path(source).resolve())}
    else:
        from .experiment import Experiment

        if trial is None:
            raise ValueError("a report on an experiment needs trial=")
        with Experiment(experiment, tag=exp_tag) as exp:
            jobs = exp.jobs(trial)
            if runs is not None or tag is not None:
                keep = set(exp.frames(trial, runs, tag=tag, columns=["frame"])["run"])
                jobs = jobs[jobs["run"].isin(keep)]
            dirs = [Path(d) / "results" for d in jobs.loc[jobs.status == "done", "job_dir"]]
        selection = {"experiment": str(experiment), "exp_tag": exp_tag, "trial": int(trial),
                     "runs": None if runs is None else list(runs), "tag": tag}
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command if command is not None else " ".join(sys.argv),
        "selection": selection,
        "versions": _versions(),
        "sources": [_dir_provenance(d, max_checksum_bytes) for d in dirs],
    }


def report(source=None, output="report.html", *, experiment=None, exp_tag: str = "default",
           trial=None, runs=None, tag=None, min_spots=None, hq_resolution: float = 2.5,
           command: str | None = None, timeout: float = 600.0) -> Path:
    """Execute the report notebook on a processed output or a trial and render it to HTML.

    Parameters
    ----------
    source : path-like, optional
        An output directory of ``sxlab process``.
    output : path-like
        The HTML file; the executed notebook (``.ipynb``) and the numbers
        (``.numbers.json``) are written next to it.
    experiment, exp_tag, trial, runs, tag
        Or a trial of an experiment and a selection of its runs.
    min_spots, hq_resolution
        Run-statistics cutoffs (see :func:`sxlab.runstats.run_stats`).
    command : str, optional
        Command line recorded in the provenance (default: ``sys.argv``).
    timeout : float
        Seconds a notebook cell may take.

    Returns
    -------
    pathlib.Path
        The HTML file.
    """
    import papermill
    from nbconvert import HTMLExporter

    output = Path(output).resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    prov = provenance(source, experiment=experiment, exp_tag=exp_tag, trial=trial, runs=runs,
                      tag=tag, command=command)
    prov_path = output.with_suffix(".provenance.json")
    prov_path.write_text(json.dumps(prov, indent=1))
    notebook = output.with_suffix(".ipynb")
    numbers = output.with_suffix(".numbers.json")
    parameters = {
        "source": None if source is None else str(Path(source).resolve()),
        "experiment": None if experiment is None else str(experiment),
        "exp_tag": exp_tag, "trial": trial, "runs": None if runs is None else list(runs),
        "tag": tag, "min_spots": min_spots, "hq_resolution": float(hq_resolution),
        "provenance_file": str(prov_path), "numbers_file": str(numbers),
    }
    papermill.execute_notebook(str(TEMPLATE), str(notebook), parameters=parameters,
                               kernel_name="python3", progress_bar=False,
                               execution_timeout=timeout, cwd=str(output.parent))
    exporter = HTMLExporter(exclude_input=True)
    body, _ = exporter.from_filename(str(notebook))
    output.write_text(body)
    return output


def _cmd_report(args) -> int:
    if args.source is None and args.trial is None:
        raise SystemExit("sxlab report: give an output directory or --trial N (with -e)")
    out = report(args.source, args.output,
                 experiment=args.experiment if args.source is None else None,
                 exp_tag=args.exp_tag, trial=args.trial, runs=args.runs or None, tag=args.tag,
                 min_spots=args.min_spots, hq_resolution=args.hq_resolution,
                 command=" ".join(["sxlab", *sys.argv[1:]]))
    print(f"wrote {out}")
    return 0


def add_parser(sub) -> argparse.ArgumentParser:
    """Register ``sxlab report`` on the ``sxlab`` subparsers."""
    import os

    p = sub.add_parser("report", help="reproducible HTML report of a processed run or trial")
    p.add_argument("source", nargs="?", metavar="OUTDIR", help="output directory")
    p.add_argument("-o", "--output", default="report.html", metavar="HTML")
    p.add_argument("-e", "--experiment", default=os.environ.get("SXLAB_EXPERIMENT", "."),
                   metavar="DIR|URL", help="experiment (with --trial)")
    p.add_argument("--exp-tag", default="default")
    p.add_argument("--trial", type=int)
    p.add_argument("--runs", nargs="*", metavar="RUN")
    p.add_argument("--tag")
    p.add_argument("--min-spots", type=int)
    p.add_argument("--hq-resolution", type=float, default=2.5)
    p.set_defaults(func=_cmd_report)
    return p
