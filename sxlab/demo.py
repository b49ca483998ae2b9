"""End-to-end demonstration run by ``make demo`` and ``sxlab demo``.

Loads (generating it once) the ``lysozyme-demo`` data set, runs every processing stage
sxlab has on all its frames (reading, masking, peak search, hit and solvent decisions)
and prints a summary table, compared with the simulator's ground truth.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Sequence

import numpy as np
import pandas as pd


def _process_all(run, truth, *, progress: bool = True) -> pd.DataFrame:
    """Read every frame, find peaks and decide hits; one row per frame.

    Frames that fail to read are recorded with their error, never dropped.
    """
    from tqdm.auto import tqdm

    from .hits import DEFAULT_MIN_PEAKS, solvent_ratio
    from .io import FrameReadError
    from .masks import mask_beamstop, mask_from_geometry
    from .peaks import PeakFinder

    geom = run.geometry
    bs = truth.metadata["beamstop"]
    mask = mask_from_geometry(geom) & mask_beamstop(
        geom, bs["radius_px"] + 3, rod_width_px=bs["rod_width_px"] + 6,
        rod_angle_deg=bs["rod_angle_deg"])
    finder = PeakFinder(geom, mask, adc_threshold=3, min_snr=6)
    rows = []
    peaks = []
    for i in tqdm(range(len(run)), desc="frames", unit="frame", leave=False,
                  disable=not progress):
        t0 = time.perf_counter()
        try:
            image, bad = run.read(i)
        except FrameReadError as exc:
            rows.append({"frame": i, "status": "failed", "error": str(exc)})
            continue
        t1 = time.perf_counter()
        found = finder(image, bad, frame=i)
        t2 = time.perf_counter()
        peaks.append(found)
        rows.append(
            {
                "frame": i,
                "status": "ok",
                "error": "",
                "read_s": t1 - t0,
                "peaks_s": t2 - t1,
                "n_peaks": len(found),
                "hit": len(found) >= DEFAULT_MIN_PEAKS,
                "bad_pixels": int(bad.values.sum()),
                "solvent_ratio": solvent_ratio(image, geom, mask, bad=bad,
                                               two_theta_high_deg=17.9,
                                               two_theta_low_deg=9.0),
            }
        )
    return pd.DataFrame(rows), pd.concat(peaks, ignore_index=True)


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


def summarize(name: str = "lysozyme-demo", *, progress: bool = True) -> pd.DataFrame:
    """Run the demo on data set ``name`` and return the summary as a two-column table.

    Examples
    --------
    >>> from sxlab.demo import summarize
    >>> table = summarize("lysozyme-sample", progress=False)  # doctest: +SKIP
    """
    from . import datasets

    t_start = time.perf_counter()
    run = datasets.load(name, progress=progress)
    t_load = time.perf_counter() - t_start
    geom = run.geometry
    truth = datasets.truth(name)
    frames, peaks = _process_all(run, truth, progress=progress)

    ok = frames[frames.status == "ok"]
    tf = truth.frames
    true_hit = tf.set_index("frame").hit.reindex(ok.frame).to_numpy()
    refl = truth.reflections
    bad_at = run.geometry.bad_pixel_mask()
    strong = refl[(refl.photons >= 100)
                  & ~bad_at[refl.ss.astype(int).to_numpy(), refl.fs.astype(int).to_numpy()]]
    hits = ok[ok.hit]
    rows = [
        ("data set", name),
        ("detector", f"{geom.name}, {geom.n_panels} panel(s), {geom.data_shape}"),
        ("wavelength (Å)", f"{geom.wavelength_A:.4f}"),
        ("resolution at detector corner (Å)", f"{float(np.nanmin(geom.maps.d_A)):.2f}"),
        ("frames", len(run)),
        ("frames processed / failed", f"{len(ok)} / {len(frames) - len(ok)}"),
        ("read + decompress (ms/frame, median)", f"{1e3 * ok.read_s.median():.1f}"),
        ("peak search (ms/frame, median)", f"{1e3 * ok.peaks_s.median():.1f}"),
        ("hits found (≥ 16 peaks)", f"{len(hits)} ({100 * len(hits) / max(len(ok), 1):.0f} %)"),
        ("true hits (simulator)", f"{int(tf.hit.sum())} ({100 * tf.hit.mean():.0f} %)"),
        ("hit decisions agreeing with truth",
         f"{100 * (ok.hit.to_numpy() == true_hit).mean():.1f} %"),
        ("peaks per hit (median)", int(hits.n_peaks.median()) if len(hits) else 0),
        ("peaks per non-hit (mean)", f"{ok[~ok.hit].n_peaks.mean():.2f}"),
        ("recall of true spots ≥ 100 photons", f"{_recall(peaks, strong):.3f}"),
        ("frames with solvent ring (ratio ≥ 1)",
         f"{int((ok.solvent_ratio >= 1).sum())} (truth {int(tf.solvent.sum())})"),
        ("load / generate (s)", f"{t_load:.1f}"),
        ("total time (s)", f"{time.perf_counter() - t_start:.1f}"),
    ]
    return pd.DataFrame(rows, columns=["quantity", "value"])


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
    args = parser.parse_args(argv)

    table = summarize(args.dataset, progress=not args.no_progress)
    print(f"sxlab {__version__} demo — python {platform.python_version()}, "
          f"numpy {np.__version__}")
    print(table.to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
