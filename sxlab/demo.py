"""End-to-end demonstration run by ``make demo`` and ``sxlab demo``.

Loads (generating it once) the ``lysozyme-demo`` data set, runs every processing stage
sxlab has on all its frames through the batch pipeline (reading, masking, peak search,
hit and solvent decisions, indexing, integration), merges the integrated reflections
(scaling, Monte Carlo merge, statistics in shells) and prints a summary table, compared
with the simulator's ground truth.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Sequence

import numpy as np
import pandas as pd

from . import tables


def demo_params(truth):
    """Processing parameters for a simulated data set: its cell, beam stop and detector.

    Merging post-refines with the ``gaussian`` partiality model (the crystals and the
    geometry of the results are passed to :func:`sxlab.merging.merge`).
    """
    from .cell import UnitCell
    from .params import Params

    meta = truth.metadata
    cell = UnitCell(**meta["cell"], space_group=meta["space_group"])
    bs = meta["beamstop"]
    return Params(cell=cell).replace(
        merge={"model": "gaussian"},
        peaks={"adc_threshold": 3.0, "min_snr": 6.0},
        mask={"beamstop_radius_px": bs["radius_px"] + 3,
              "beamstop_rod_width_px": bs["rod_width_px"] + 6,
              "beamstop_rod_angle_deg": bs["rod_angle_deg"]},
    )


def _recall(peaks: pd.DataFrame, spots: pd.DataFrame, radius: float = 2.0) -> float:
    """Fraction of true spots with a found peak within ``radius`` pixels (same frame)."""
    found = 0
    for frame, group in spots.groupby("frame"):
        p = peaks[peaks.frame == frame]
        if not len(p):
            continue
        d = np.hypot(group.fs.values[:, None] - p.fs.values[None, :],
                     group.ss.values[:, None] - p.ss.values[None, :])
        found += int((d.min(axis=1) <= radius).sum())
    return found / len(spots) if len(spots) else float("nan")


def _intensity_cc(reflections: pd.DataFrame, truth_refl: pd.DataFrame,
                  min_photons: float = 200.0) -> tuple[float, int]:
    """CC of integrated I with the true photons, reflections paired by position (< 1 px)."""
    xs, ys = [], []
    ok = reflections[~(reflections.flag_masked | reflections.flag_saturated
                       | reflections.flag_overlap)]
    for frame, t in truth_refl[truth_refl.photons >= min_photons].groupby("frame"):
        r = ok[ok.frame == frame]
        if not len(r):
            continue
        d = np.hypot(t.fs.values[:, None] - r.fs.values[None, :],
                     t.ss.values[:, None] - r.ss.values[None, :])
        j = d.argmin(axis=1)
        near = d[np.arange(len(t)), j] < 1.0
        xs.append(t.photons.values[near])
        ys.append(r.I.values[j[near]])
    if not xs:
        return float("nan"), 0
    x, y = np.concatenate(xs), np.concatenate(ys)
    return float(np.corrcoef(x, y)[0, 1]), len(x)


def _merged_cc(merged: pd.DataFrame, intensities: pd.DataFrame) -> tuple[float, int]:
    """CC of merged intensities with the true ones (both in gemmi's asymmetric unit)."""
    both = merged.merge(intensities[["h", "k", "l", "I"]], on=["h", "k", "l"],
                        suffixes=("", "_true"))
    if len(both) < 3:
        return float("nan"), len(both)
    return float(np.corrcoef(both.I, both.I_true)[0, 1]), len(both)


@tables.documented
def summarize(name: str = "lysozyme-demo", *, progress: bool = True,
              executor: str = "local") -> pd.DataFrame:
    """Process data set ``name`` end to end and return the summary as a two-column table.

    The per-shell merging statistics are in ``table.attrs["merging_stats"]``.

    Returns
    -------
    DataFrame
        One row per quantity (:data:`sxlab.tables.DEMO_SUMMARY`):

        [columns: demo_summary]

    Every stage sxlab has runs through :func:`sxlab.process_run`, then the reflections
    are merged with :func:`sxlab.merge` in the data set's space group; the numbers are
    compared with the simulator's ground truth.

    Examples
    --------
    >>> from sxlab.demo import summarize
    >>> table = summarize("lysozyme-sample", progress=False)  # doctest: +SKIP
    """
    from . import datasets
    from .cell import UnitCell
    from .merging import merge
    from .pipeline import process_run

    t_start = time.perf_counter()
    run = datasets.load(name, progress=progress)
    t_load = time.perf_counter() - t_start
    geom = run.geometry
    truth = datasets.truth(name)
    res = process_run(run, demo_params(truth), executor=executor, progress=progress)

    f = res.frames
    ok = f[f.status == "ok"]
    tf = truth.frames.set_index("frame")
    true_hit = tf.hit.reindex(ok.frame).to_numpy()
    refl = truth.reflections
    bad_at = geom.bad_pixel_mask()
    strong = refl[(refl.photons >= 100)
                  & ~bad_at[refl.ss.astype(int).to_numpy(), refl.fs.astype(int).to_numpy()]]
    hits = ok[ok.hit]
    indexed = ok[ok.indexed]
    true_cell = truth.metadata["cell"]
    cc, n_cc = _intensity_cc(res.reflections, refl)
    xt = res.crystals

    t_merge = time.perf_counter()
    result = merge(res.reflections, UnitCell(**true_cell,
                                              space_group=truth.metadata["space_group"]),
                   crystals=res.crystals, beam=geom, params=res.params.merge)
    t_merge = time.perf_counter() - t_merge
    overall = result.stats[result.stats.shell == -1]
    o = overall.iloc[0] if len(overall) else None
    m_cc, n_m_cc = _merged_cc(result.merged, truth.intensities)
    by_d = result.merged.sort_values("d_A", ascending=False, kind="stable")
    thirds = [by_d.iloc[i * len(by_d) // 3:(i + 1) * len(by_d) // 3] for i in range(3)]
    cc_thirds = " / ".join(f"{_merged_cc(t, truth.intensities)[0]:.3f}" for t in thirds)
    n_merged = int((~result.scales.rejected).sum())

    def ms(col, rows):
        return f"{1e3 * rows[col].median():.1f}" if len(rows) else "–"

    rows = [
        ("data set", name),
        ("detector", f"{geom.name}, {geom.n_panels} panel(s), {geom.data_shape}"),
        ("frames processed / failed", f"{len(ok)} / {len(f) - len(ok)}"),
        ("hits found (≥ 16 peaks)", f"{len(hits)} ({100 * len(hits) / max(len(ok), 1):.0f} %)"),
        ("hit decisions agreeing with truth",
         f"{100 * (ok.hit.to_numpy() == true_hit).mean():.1f} %"),
        ("recall of true spots ≥ 100 photons", f"{_recall(res.peaks, strong):.3f}"),
        ("peaks per hit (median)", int(hits.n_peaks.median()) if len(hits) else 0),
        ("indexed hits", f"{len(indexed)} ({100 * len(indexed) / max(len(hits), 1):.0f} %)"),
        ("cell a, b, c (Å, median; truth)",
         f"{xt.a.median():.2f} {xt.b.median():.2f} {xt.c.median():.2f}; "
         f"{true_cell['a']:.2f} {true_cell['b']:.2f} {true_cell['c']:.2f}"
         if len(xt) else "–"),
        ("reflections integrated", len(res.reflections)),
        ("CC(I, true photons), spots ≥ 200 photons", f"{cc:.3f} (n = {n_cc})"),
        ("resolution estimate (Å, median)",
         f"{indexed.resolution_A.median():.2f}" if len(indexed) else "–"),
        ("crystals merged / rejected",
         f"{n_merged} / {len(result.scales) - n_merged}"),
        ("unique reflections merged (≥ 2 observations)", len(result.merged)),
        ("completeness (%)", f"{100 * o.completeness:.1f}" if o is not None else "–"),
        ("multiplicity", f"{o.multiplicity:.2f}" if o is not None else "–"),
        ("CC1/2", f"{o.cc_half:.3f}" if o is not None else "–"),
        ("CC*", f"{o.cc_star:.3f}" if o is not None else "–"),
        ("resolution where CC* < 0.5 (Å)", f"{result.cc_star_resolution_A:.2f}"),
        ("CC(merged I, true I)", f"{m_cc:.3f} (n = {n_m_cc})"),
        ("CC(merged I, true I), low / middle / high resolution thirds", cc_thirds),
        ("partiality model (merging)", res.params.merge.model),
        ("read + decompress (ms/frame)", ms("read_s", ok)),
        ("peak search (ms/frame)", ms("peaks_s", ok)),
        ("indexing (ms/hit)", ms("index_s", hits)),
        ("integration (ms/indexed frame)", ms("integrate_s", indexed)),
        ("merging (s)", f"{t_merge:.2f}"),
        ("load / generate (s)", f"{t_load:.1f}"),
        ("total time (s)", f"{time.perf_counter() - t_start:.1f}"),
    ]
    table = tables.DEMO_SUMMARY.make({"quantity": [q for q, _ in rows],
                                      "value": [str(v) for _, v in rows]})
    table.attrs["merging_stats"] = result.stats
    return table


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo and print its summary table.

    Returns
    -------
    int
        Exit status, 0 on success.
    """
    from . import __version__

    parser = argparse.ArgumentParser(prog="sxlab demo", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="lysozyme-demo", help="registry name")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--serial", action="store_true",
                        help="process in this process instead of a pool over all cores")
    args = parser.parse_args(argv)

    table = summarize(args.dataset, progress=not args.no_progress,
                      executor="serial" if args.serial else "local")
    print(f"sxlab {__version__} demo — python {platform.python_version()}, "
          f"numpy {np.__version__}")
    print(table.to_string(index=False))
    stats = table.attrs.get("merging_stats")
    if stats is not None:
        print()
        print("Merging statistics in resolution shells (shell -1: overall)")
        print(stats.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
