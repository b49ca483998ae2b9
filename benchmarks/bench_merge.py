"""Merging speed for one million observations, on one core.

The observations are synthetic (no images): lysozyme (P 43 21 2, 79.1 × 79.1 × 37.9 Å)
to 2.0 Å, true intensities from the Wilson distribution, 4 000 crystals of 250
observations each, every observation a random symmetry equivalent (or Friedel mate) of
a random unique reflection with a random partiality, crystal scale (3× spread) and
relative B (±10 Å²) and counting noise. For P 43 the same observations are indexed in
the P 43 setting and half of the crystals reindexed by the twin law, so the ambiguity
resolver has work to do.

Configurations (each the median of 3 timed calls after one untimed warm-up call, which
also compiles or loads the numba kernels), wall clock and process CPU time:

* ``merge(obs, "P43212")``: defaults (cell fitted to the observations' ``d_A``,
  3 scaling iterations, Monte Carlo merge, 20 shells);
* the same with ``partiality=True``;
* ``scale=False``: selection, asymmetric unit, merge and statistics only;
* ``merge(obs, "P43")`` with half of the crystals misindexed: the ambiguity resolver too.

Usage::

    python benchmarks/bench_merge.py [--observations N] [--runs R] [--out [DIR]]

With ``--out`` (default directory ``benchmarks/out``), or with ``SXLAB_BENCH_OUT`` set as
``make bench`` does, the report is also written to ``bench_merge.md`` and ``.json`` there.
"""

from __future__ import annotations

import _common

# One core: every thread pool has one thread (before numpy and numba are imported).
_common.single_threaded()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

HERE = Path(__file__).resolve().parent
CELL = (79.1, 79.1, 37.9, 90.0, 90.0, 90.0)
D_MIN_A = 2.0
OBS_PER_CRYSTAL = 250
TARGET_S = 5.0


def log(message: str) -> None:
    """Progress message on stderr (stdout carries only the report)."""
    print(f"[bench_merge] {message}", file=sys.stderr, flush=True)


# =============================================================================== data
def observations(n_obs: int, space_group: str, seed: int = 0,
                 reindex_fraction: float = 0.0) -> pd.DataFrame:
    """Synthetic observations of ``n_obs`` rows (see the module docstring)."""
    import gemmi

    rng = np.random.default_rng(seed)
    cell = gemmi.UnitCell(*CELL)
    sg = gemmi.SpaceGroup(space_group)
    asu = np.asarray(gemmi.make_miller_array(cell, sg, D_MIN_A, 0.0, True), dtype=np.int64)
    d = cell.calculate_d_array(asu.astype(np.int32))
    s2 = 0.25 / d ** 2
    true_i = rng.exponential(1.0, len(asu)) * 1000.0 * np.exp(-2 * 20.0 * s2)
    rots = np.unique(np.array([op.rot for op in sg.operations().sym_ops]) // gemmi.Op.DEN,
                     axis=0)
    n_cryst = max(1, n_obs // OBS_PER_CRYSTAL)
    crystal = np.repeat(np.arange(n_cryst), OBS_PER_CRYSTAL)[:n_obs]
    u = rng.integers(0, len(asu), n_obs)
    op = rng.integers(0, len(rots), n_obs)
    hkl = np.einsum("ni,nij->nj", asu[u], rots[op])
    hkl *= np.where(rng.random(n_obs) < 0.5, 1, -1)[:, None]
    if reindex_fraction:
        flip = rng.random(n_cryst) < reindex_fraction
        twin = np.array([[0, 1, 0], [1, 0, 0], [0, 0, -1]])
        hkl[flip[crystal]] = hkl[flip[crystal]] @ twin
    g = np.exp(rng.uniform(-0.55, 0.55, n_cryst))
    b = rng.uniform(-10.0, 10.0, n_cryst)
    p = rng.uniform(0.05, 1.0, n_obs)
    photons = g[crystal] * np.exp(-2 * b[crystal] * s2[u]) * p * true_i[u]
    sigma = np.sqrt(photons + 20.0)
    return pd.DataFrame({
        "frame": crystal, "crystal": np.zeros(n_obs, np.int64),
        "h": hkl[:, 0].astype(np.int32), "k": hkl[:, 1].astype(np.int32),
        "l": hkl[:, 2].astype(np.int32),
        "I": photons + sigma * rng.standard_normal(n_obs), "sigma": sigma,
        "d_A": d[u], "partiality": p,
    })


def run(n_obs: int, runs: int) -> list[dict]:
    import sxlab as sx

    log(f"making {n_obs} observations")
    lyso = observations(n_obs, "P 43 21 2", seed=1)
    twinned = observations(n_obs, "P 43", seed=2, reindex_fraction=0.5)
    configs = [
        ("P43212, defaults", lyso, "P43212", {}),
        ("P43212, partiality=True", lyso, "P43212", {"partiality": True}),
        ("P43212, scale=False", lyso, "P43212", {"scale": False}),
        ("P43, ambiguity resolver (half reindexed)", twinned, "P43", {}),
    ]
    rows = []
    for label, obs, symmetry, kwargs in configs:
        log(label)
        result, wall, cpu = _common.median_time(
            lambda obs=obs, symmetry=symmetry, kwargs=kwargs: sx.merge(obs, symmetry, **kwargs),
            runs)
        overall = result.stats.iloc[-1]
        rows.append({
            "configuration": label, "observations": len(obs),
            "crystals": len(result.scales), "unique": len(result.merged),
            "wall_s": wall, "cpu_s": cpu, "cc_half": float(overall.cc_half),
            "completeness": float(overall.completeness),
            "reindexed": int(result.n_reindexed),
        })
    return rows


def format_report(header: list[str], rows: list[dict], runs: int) -> str:
    lines = ["# Merging one million observations on one core", ""]
    lines += [f"- {h}" for h in header]
    lines += [
        "",
        f"Data: synthetic lysozyme observations to {D_MIN_A} Å, {OBS_PER_CRYSTAL} per "
        "crystal (see the script's docstring). Time: median of "
        f"{runs} timed calls of `sxlab.merge` after one warm-up call; single thread.",
        f"Target: under {TARGET_S:.0f} s for 10⁶ observations with the defaults.",
        "",
        "| configuration | observations | crystals | unique | wall s | CPU s | CC1/2 "
        "| completeness | reindexed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['configuration']} | {r['observations']:,} | {r['crystals']:,} | "
            f"{r['unique']:,} | {r['wall_s']:.2f} | {r['cpu_s']:.2f} | {r['cc_half']:.3f} | "
            f"{r['completeness']:.3f} | {r['reindexed']:,} |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--observations", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", nargs="?", type=Path, const=HERE / "out", default=None,
                        metavar="DIR",
                        help="write bench_merge.md/.json (benchmarks/out if DIR is left "
                             "out; $SXLAB_BENCH_OUT if the option is)")
    args = parser.parse_args(argv)
    if args.out is None and os.environ.get("SXLAB_BENCH_OUT"):
        args.out = Path(os.environ["SXLAB_BENCH_OUT"])
    return args


def main(argv=None) -> None:
    """Run the benchmark and print the report."""
    args = parse_args(argv)
    load_start = _common.load_average()
    pinned = _common.pin_to_one_core()
    rows = run(args.observations, args.runs)
    header = _common.machine_description(load_start, pinned=pinned,
                                         packages=("numpy", "pandas", "numba", "gemmi"))
    text = format_report(header, rows, args.runs)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench_merge.md").write_text(text)
        (args.out / "bench_merge.json").write_text(json.dumps(
            {"machine": header, "runs": args.runs, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
