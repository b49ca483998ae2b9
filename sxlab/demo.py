"""End-to-end demonstration run by ``make demo`` and ``sxlab demo``.

Loads (generating it once) the ``lysozyme-demo`` data set, runs every processing stage
sxlab has on all its frames and prints a summary table.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Sequence

import numpy as np
import pandas as pd


def _read_all(run, *, progress: bool = True) -> pd.DataFrame:
    """Read and decode every frame; one row per frame (failures recorded, never dropped)."""
    from tqdm.auto import tqdm

    from .io import FrameReadError

    rows = []
    for i in tqdm(range(len(run)), desc="read frames", unit="frame", leave=False,
                  disable=not progress):
        t0 = time.perf_counter()
        try:
            image, bad = run.read(i)
        except FrameReadError as exc:
            rows.append({"frame": i, "status": "failed", "error": str(exc),
                         "read_s": time.perf_counter() - t0})
            continue
        values = image.values
        good = ~bad.values
        rows.append(
            {
                "frame": i,
                "status": "ok",
                "error": "",
                "read_s": time.perf_counter() - t0,
                "bad_pixels": int(bad.values.sum()),
                "mean_adu": float(values[good].mean()),
                "max_adu": float(values[good].max()),
            }
        )
    return pd.DataFrame(rows)


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
    frames = _read_all(run, progress=progress)

    ok = frames[frames.status == "ok"]
    tf = truth.frames
    hits = tf[tf.hit]
    refl = truth.reflections
    per_hit = refl.groupby("frame").size().reindex(hits.frame, fill_value=0)
    d = geom.maps.d_A
    corner_res = float(np.nanmin(d))
    strong = refl[refl.photons >= 100]
    rows = [
        ("data set", name),
        ("detector", f"{geom.name}, {geom.n_panels} panel(s), {geom.data_shape}"),
        ("wavelength (Å)", f"{geom.wavelength_A:.4f}"),
        ("resolution at detector corner (Å)", f"{corner_res:.2f}"),
        ("frames", len(run)),
        ("frames read / failed", f"{len(ok)} / {len(frames) - len(ok)}"),
        ("read + decompress (ms/frame, median)", f"{1e3 * ok.read_s.median():.1f}"),
        ("flagged pixels per frame (median)", int(ok.bad_pixels.median())),
        ("true hits", f"{len(hits)} ({100 * len(hits) / len(tf):.0f} %)"),
        ("lattices (truth)", int(truth.crystals.shape[0])),
        ("true reflections per hit (median)", int(per_hit.median()) if len(per_hit) else 0),
        ("true spots ≥ 100 photons per hit (median)",
         int(strong.groupby("frame").size().reindex(hits.frame, fill_value=0).median())
         if len(hits) else 0),
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
