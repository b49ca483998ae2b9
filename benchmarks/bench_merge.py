"""Merging: accuracy against the truth next to CrystFEL's partialator, and speed.

**Accuracy** (``--accuracy``, the first table): a simulated lysozyme run (EIGER X 1M,
λ = 1 Å, 0.1 % bandwidth, mosaic spread 0.05°, 5 µm crystals; ``--frames`` hits) is
processed by sxlab's pipeline (peakfinder8, asdf, ring integration) into a CrystFEL
stream. Both programs merge **that same stream**: sxlab reads it back
(:func:`sxlab.io.read_stream`) and merges with the ``unity`` model and with
post-refinement (``gaussian`` and ``xsphere`` models, :mod:`sxlab.postrefinement`);
``partialator -y 4/mmm --iterations=3 -j 1`` runs with ``--model=unity``, ``xsphere``
and ``offset``. Per resolution shell (10 shells of equal reciprocal volume): CC of the
merged intensities with the true ones (the simulator's), and CC1/2 of each program's
two halves. CPU seconds per merge.

partialator is optional: without it (``$CRYSTFEL_BIN``, ``indexamajig``'s folder on the
PATH, or ``/opt/crystfel/bin``) its columns are left out and the report says so. Build
it with ``bash /work/shared/peers/build_crystfel.sh GITDIR`` (Debian 12, as root;
installs to /opt/crystfel).

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

    python benchmarks/bench_merge.py [--frames N] [--observations N] [--runs R]
                                     [--accuracy | --speed] [--out [DIR]]

With ``--out`` (default directory ``benchmarks/out``), or with ``SXLAB_BENCH_OUT`` set as
``make bench`` does, the report is also written to ``bench_merge.md`` and ``.json`` there.
"""

from __future__ import annotations

import _common

# One core: every thread pool has one thread (before numpy and numba are imported).
_common.single_threaded()

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
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


# ========================================================================= accuracy
ACCURACY_SHELLS = 10
SXLAB_MODELS = ("unity", "gaussian", "xsphere")
PARTIALATOR_MODELS = ("unity", "xsphere", "offset")


def accuracy_data(n_frames: int):
    """Stream of a processed simulated run (cached) and its truth."""
    from sxlab.cell import UnitCell
    from sxlab.datasets import cache_dir
    from sxlab.demo import demo_params
    from sxlab.geometry import builtin_geometry
    from sxlab.io import open_run
    from sxlab.pipeline import process_run
    from sxlab.simulate import Simulator, Truth, code_digest

    recipe = json.dumps({"frames": n_frames, "code": code_digest(), "v": 1})
    folder = cache_dir() / "bench_merge" / hashlib.sha256(recipe.encode()).hexdigest()[:12]
    master = folder / "lyso_master.h5"
    stream = folder / "results" / "results.stream"
    if not stream.exists():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        det = builtin_geometry("eiger1m", clen=0.1, wavelength_A=1.0, bandwidth=0.001)
        cell = UnitCell(79.1, 79.1, 37.9, 90, 90, 90, space_group="P 43 21 2")
        log(f"simulating {n_frames} frames")
        truth = Simulator(det, cell, seed=20261205, hit_fraction=1.0,
                          multi_lattice_probability=0.0).write(master, n_frames,
                                                                progress=False)
        log("processing them with sxlab (peaks, asdf, integration)")
        process_run(open_run(master), demo_params(truth), executor="serial",
                    out=folder / "results", progress=False)
    return stream, Truth.load(master)


def _asu_table(table, cell):
    """A merged table (any hkl) in sxlab's asymmetric unit with d from the cell."""
    from sxlab.merging import map_to_asu
    from sxlab.reciprocal import d_spacing

    hkl = map_to_asu(table[["h", "k", "l"]].to_numpy(np.int64), "P 43 21 2")
    return table.assign(h=hkl[:, 0], k=hkl[:, 1], l=hkl[:, 2],
                        d_A=d_spacing(hkl, cell.reciprocal_basis))


def _shell_ccs(full, half1, half2, truth_i, edges):
    """Per shell: CC(full, truth) and CC(half1, half2) over the shell's reflections."""
    both = full.merge(truth_i[["h", "k", "l", "I"]], on=["h", "k", "l"],
                      suffixes=("", "_true"))
    halves = half1.merge(half2[["h", "k", "l", "I"]], on=["h", "k", "l"],
                         suffixes=("", "_2"))
    out = []
    for d_max, d_min in edges:
        b = both[(both.d_A <= d_max) & (both.d_A > d_min)]
        h = halves[(halves.d_A <= d_max) & (halves.d_A > d_min)]
        out.append((float(np.corrcoef(b.I, b.I_true)[0, 1]) if len(b) > 5 else np.nan,
                    float(np.corrcoef(h.I, h.I_2)[0, 1]) if len(h) > 5 else np.nan,
                    len(b)))
    return out


def run_accuracy(n_frames: int):
    import sxlab as sx
    from sxlab.cell import UnitCell
    from sxlab.io import read_hkl, read_stream

    stream, truth = accuracy_data(n_frames)
    data = read_stream(stream)
    cell = UnitCell(79.1, 79.1, 37.9, 90, 90, 90, space_group="P 43 21 2")
    results = {}
    edges = None
    for model in SXLAB_MODELS:
        c0 = time.process_time()
        res = sx.merge(data.reflections, "P43212", cell=cell, crystals=data.crystals,
                       beam=data.geometry, model=model, n_shells=ACCURACY_SHELLS)
        cpu = time.process_time() - c0
        if edges is None:
            st = res.stats[res.stats.shell >= 0]
            edges = st[["d_max_A", "d_min_A"]].to_numpy()
        results[f"sxlab {model}"] = (_shell_ccs(res.merged, res.half1, res.half2,
                                                truth.intensities, edges), cpu)
        log(f"sxlab {model}: {cpu:.1f} s")
    bindir = _common.crystfel_bindir("partialator")
    version = None
    if bindir is not None:
        out = subprocess.run([str(bindir / "partialator"), "--version"],
                                       capture_output=True, text=True, check=False)
        version = (out.stdout or out.stderr).splitlines()[0].strip()
        work = stream.parent / "partialator"
        work.mkdir(exist_ok=True)
        for model in PARTIALATOR_MODELS:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            proc = subprocess.run(
                [str(bindir / "partialator"), "-i", str(stream), "-o", f"{model}.hkl",
                 "-y", "4/mmm", f"--model={model}", "--iterations=3", "-j", "1"],
                cwd=work, capture_output=True, text=True, check=False)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            if proc.returncode != 0:
                raise RuntimeError(f"partialator --model={model} failed: "
                                   f"{proc.stderr[-2000:]}")
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            tabs = [_asu_table(read_hkl(work / f"{model}.hkl{x}"), cell)
                    for x in ("", "1", "2")]
            results[f"partialator {model}"] = (_shell_ccs(*tabs, truth.intensities,
                                                          edges), cpu)
            log(f"partialator {model}: {cpu:.1f} s")
    info = {"frames": n_frames, "crystals": len(data.crystals),
            "observations": len(data.reflections), "partialator": version}
    return edges, results, info


def format_accuracy(edges, results, info) -> str:
    names = list(results)
    lines = ["## Accuracy: CC(merged, true intensities) per shell, on the same stream", "",
             f"{info['frames']} simulated frames, {info['crystals']} crystals, "
             f"{info['observations']:,} integrated reflections (sxlab pipeline), written "
             "as a CrystFEL stream and merged by both programs. partialator: "
             + (info["partialator"] or "not available on this machine (columns left out; "
                "see the docstring to build it)") + ".", ""]
    lines.append("| shell (Å) | n | " + " | ".join(names) + " |")
    lines.append("|---|---:|" + "---:|" * len(names))
    for i, (d_max, d_min) in enumerate(edges):
        n = results[names[0]][0][i][2]
        cells = " | ".join(f"{results[k][0][i][0]:.3f}" for k in names)
        lines.append(f"| {d_max:.2f}–{d_min:.2f} | {n} | {cells} |")
    lines += ["", "CC1/2 of each program's two halves:", "",
              "| shell (Å) | " + " | ".join(names) + " |",
              "|---|" + "---:|" * len(names)]
    for i, (d_max, d_min) in enumerate(edges):
        cells = " | ".join(f"{results[k][0][i][1]:.3f}" for k in names)
        lines.append(f"| {d_max:.2f}–{d_min:.2f} | {cells} |")
    lines += ["", "| merge | CPU s |", "|---|---:|"]
    lines += [f"| {k} | {results[k][1]:.2f} |" for k in names]
    return "\n".join(lines) + "\n"


# ============================================================================ speed
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
    lines = ["## Speed: merging one million observations on one core", ""]
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
    parser.add_argument("--frames", type=int, default=600,
                        help="simulated hits of the accuracy comparison (default 600)")
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--accuracy", action="store_true", help="the accuracy table only")
    only.add_argument("--speed", action="store_true", help="the speed table only")
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
    parts, payload = [], {"runs": args.runs}
    if not args.speed:
        edges, results, info = run_accuracy(args.frames)
        parts.append(format_accuracy(edges, results, info))
        payload["accuracy"] = {"shells_A": edges.tolist(), "info": info,
                               "results": {k: {"shells": v[0], "cpu_s": v[1]}
                                           for k, v in results.items()}}
    if not args.accuracy:
        rows = run(args.observations, args.runs)
        parts.append(format_report([], rows, args.runs))
        payload["rows"] = rows
    header = _common.machine_description(load_start, pinned=pinned,
                                         packages=("numpy", "pandas", "numba", "gemmi"))
    text = "\n".join(["# Merging: sxlab and CrystFEL's partialator", "",
                      *[f"- {h}" for h in header], "", *parts])
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench_merge.md").write_text(text)
        payload["machine"] = header
        (args.out / "bench_merge.json").write_text(json.dumps(_common.json_safe(payload),
                                                              indent=1))


if __name__ == "__main__":
    main()
