"""Time to build masks and to bin, profile and test a frame of an EIGER2 X 16M.

Rows: the lab-coordinate beam-stop mask (disc + rod) and a lab-frame rectangle, the
resolution mask and the geometry mask (each "cold", on a fresh detector whose per-pixel
maps must be computed first, and "warm", with the maps cached as a prepared pipeline has
them), binning 2×2, 3×3 and 4×4 of one 4148 × 4362 float32 frame (with a static mask and
per-frame bad pixels, and without any), the radial profile and the solvent-ring ratio.
Each row is the median of several runs after a warm-up run (which also compiles the
numba kernels), on one core.

Run ``python benchmarks/bench_masks.py`` (``make bench`` runs every benchmark). With
``SXLAB_BENCH_OUT`` set, the table is also written there as ``bench_masks.md``.
"""

from __future__ import annotations

import _common

# One core: keep BLAS and numba single-threaded.
_common.single_threaded(override=False)

import os  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from sxlab.binning import Binner, bin_frame  # noqa: E402
from sxlab.geometry import builtin_geometry  # noqa: E402
from sxlab.hits import RadialProfiler, SolventRatio  # noqa: E402
from sxlab.masks import (  # noqa: E402
    mask_beamstop,
    mask_from_geometry,
    mask_lab_region,
    mask_resolution,
)

RUNS = 7
COLD_RUNS = 5


def _machine() -> str:
    return (f"{platform.node()} · {_common.cpu_model()} · {os.cpu_count()} logical CPUs · "
            f"{platform.system()} {platform.release()} · Python {platform.python_version()} · "
            f"NumPy {np.__version__}")


def _median_ms(fn, runs: int = RUNS, setup=None) -> float:
    """Median wall time (ms) of ``fn(setup())`` over ``runs`` runs after one warm-up."""
    _, wall, _ = _common.median_time(fn, runs, setup=setup or (lambda: None))
    return 1e3 * wall


def main() -> None:
    pin = _common.pin_to_one_core()
    det = builtin_geometry("eiger16m", clen=0.15, wavelength_A=1.3)
    rng = np.random.default_rng(0)
    frame = rng.poisson(3.0, det.data_shape).astype(np.float32)
    bad = rng.random(det.data_shape) < 1e-3
    det.maps.d_A  # noqa: B018  (warm the resolution map of the shared detector)
    geo_mask = mask_from_geometry(det)
    static = geo_mask & mask_beamstop(det, 60, rod_width_px=14, rod_angle_deg=30)

    def fresh(_=None):
        return builtin_geometry("eiger16m", clen=0.15, wavelength_A=1.3)

    rows = [
        ("beam-stop mask (disc r = 60 px + rod 14 px at 30°)", "lab frame",
         _median_ms(lambda _: mask_beamstop(det, 60, rod_width_px=14, rod_angle_deg=30))),
        ("beam-stop mask, cold (fresh detector)", "lab frame",
         _median_ms(lambda d: mask_beamstop(d, 60, rod_width_px=14, rod_angle_deg=30),
                    COLD_RUNS, fresh)),
        ("lab-frame rectangle 400 × 200 px (CrystFEL rule)", "lab frame",
         _median_ms(lambda _: mask_lab_region(det, -200, 200, -100, 100))),
        ("resolution mask 2.0-50 Å, warm (maps cached)", "geometry maps",
         _median_ms(lambda _: mask_resolution(det, d_min=2.0, d_max=50.0))),
        ("resolution mask, cold (computes the d map)", "geometry maps",
         _median_ms(lambda d: mask_resolution(d, d_min=2.0, d_max=50.0), COLD_RUNS, fresh)),
        ("geometry mask (32 module-gap regions), warm", "geometry",
         _median_ms(lambda _: mask_from_geometry(det))),
        ("geometry mask, cold (fresh detector)", "geometry",
         _median_ms(lambda d: mask_from_geometry(d), COLD_RUNS, fresh)),
    ]
    for f in (2, 3, 4):
        binner = Binner(det, static, f)
        shape = binner.geometry.data_shape
        rows.append((f"Binner {f}×{f} → {shape[1]} × {shape[0]} (mask + per-frame bad)",
                     "per frame", _median_ms(lambda _, b=binner: b(frame, bad))))
        rows.append((f"bin_frame {f}×{f}, no mask", "per frame",
                     _median_ms(lambda _, f=f: bin_frame(frame, f))))
    t0 = time.perf_counter()
    prof = RadialProfiler(det, static)
    setup_s = time.perf_counter() - t0
    rows.append((f"radial profile, {prof.n_bins} q bins (set-up {setup_s:.1f} s, maps cached)",
                 "per frame", _median_ms(lambda _: prof(frame, bad))))
    sr = SolventRatio(det, static, two_theta_high_deg=22.8, two_theta_low_deg=12.5)
    rows.append(("solvent ratio 22.8° / 12.5° ± 0.25°", "per frame",
                 _median_ms(lambda _: sr(frame, bad))))

    lines = [
        "# sxlab.masks / binning / hits on an EIGER2 X 16M (4148 × 4362 px)",
        "",
        f"Machine: {_machine()}; {pin}.",
        f"Median of {RUNS} runs ({COLD_RUNS} for cold rows) after a warm-up run; wall time.",
        "",
        "| task | kind | ms |",
        "|---|---|---:|",
    ]
    lines += [f"| {task} | {kind} | {ms:.1f} |" for task, kind, ms in rows]
    text = "\n".join(lines)
    print(text)
    out = os.environ.get("SXLAB_BENCH_OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "bench_masks.md").write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
