"""``sxlab refine-geometry`` and ``sxlab calibrate``: geometry from indexed stills or rings."""

from __future__ import annotations

import argparse
import sys


def _print_table(df, file=sys.stdout) -> None:
    print(df.to_string(index=False, float_format=lambda v: f"{v:.4f}"), file=file)


def _cmd_refine_geometry(args: argparse.Namespace) -> int:
    from ..io import read_cell, read_geom
    from ..results import Results
    from .stills import refine_geometry

    res = Results.load(args.dir)
    geometry = read_geom(args.geometry) if args.geometry else res.geometry
    if geometry is None:
        print(f"error: {args.dir} holds no geometry.geom; give one with --geometry",
              file=sys.stderr)
        return 2
    cell = read_cell(args.cell) if args.cell else None
    refine = [r.strip() for r in args.refine.split(",") if r.strip()]
    groups = None if args.level is None else int(args.level)
    try:
        new, report = refine_geometry(res, geometry, cell, refine=refine, groups=groups,
                                      min_peaks=args.min_peaks, n_cycles=args.cycles)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    report.write(args.output, nxmx=args.nxmx)
    for key, value in report.summary.items():
        print(f"{key:28s} {value:.4f}" if isinstance(value, float) else f"{key:28s} {value}")
    print()
    _print_table(report.parameters[report.parameters.refined])
    if args.panels:
        print()
        _print_table(report.panels)
    print(f"\nwrote {args.output}" + (f" and {args.nxmx}" if args.nxmx else ""))
    return 0


def _mean_image(run, frames: int):
    import numpy as np

    n = min(len(run), frames) if frames > 0 else len(run)
    total = count = None
    for i in range(n):
        image, bad = run.read(i)
        good = ~bad.values
        if total is None:
            total = np.zeros(image.shape)
            count = np.zeros(image.shape)
        total += np.where(good, image.values, 0.0)
        count += good
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / count, count == 0, n


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from ..io import open_run, read_geom
    from ..masks import mask_beamstop
    from .rings import calibrate_rings, ring_d_spacings

    geometry = read_geom(args.geometry) if args.geometry else None
    run = open_run(args.run, geometry=geometry)
    geometry = run.geometry
    if args.d_spacing:
        d = args.d_spacing
    else:
        d = ring_d_spacings(args.calibrant, args.rings)
    image, bad, n = _mean_image(run, args.frames)
    mask = None
    if args.beamstop_px > 0:
        mask = mask_beamstop(geometry, args.beamstop_px)
    refine = [r.strip() for r in args.refine.split(",") if r.strip()]
    try:
        new, report = calibrate_rings(image, geometry, d, mask=mask, bad=bad, refine=refine)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    report.write(args.output, nxmx=args.nxmx)
    print(f"mean of {n} frame(s) of {args.run}")
    for key, value in report.summary.items():
        print(f"{key:20s} {value:.4f}" if isinstance(value, float) else f"{key:20s} {value}")
    print(f"\nwrote {args.output}" + (f" and {args.nxmx}" if args.nxmx else ""))
    return 0


def add_parser(sub) -> None:
    """Register ``sxlab refine-geometry`` and ``sxlab calibrate`` on the subparsers."""
    p = sub.add_parser("refine-geometry",
                       help="refine the detector geometry from the indexed frames of a "
                            "processed run",
                       description="Refine beam position, distance, tilt and panel groups "
                                   "from the indexed peaks in OUTDIR (see "
                                   "sxlab.refine_geometry).")
    p.add_argument("dir", metavar="OUTDIR", help="results directory of `sxlab process`")
    p.add_argument("-o", "--output", default="refined.geom", metavar="GEOM",
                   help="refined CrystFEL geometry (default refined.geom)")
    p.add_argument("--nxmx", metavar="H5", help="also write an NXmx master with the geometry")
    p.add_argument("-g", "--geometry", metavar="GEOM",
                   help="geometry the run was processed with (default OUTDIR/geometry.geom)")
    p.add_argument("-p", "--cell", metavar="CELL", help="reference cell (CrystFEL .cell); "
                   "default the processing parameters' cell")
    p.add_argument("--refine", default="beam,distance",
                   help="comma-separated: beam, distance, tilt, panels (default "
                        "beam,distance)")
    p.add_argument("--level", type=int, metavar="N",
                   help="with panels: move the groups of this level of the geometry's "
                        "group hierarchy (0 whole detector, 1 quadrants, ...); default "
                        "every panel")
    p.add_argument("--min-peaks", type=int, default=10, metavar="N",
                   help="crystals with fewer indexed peaks are left out (default 10)")
    p.add_argument("--cycles", type=int, default=3, help="refinement cycles (default 3)")
    p.add_argument("--panels", action="store_true", help="print the residuals per panel")
    p.set_defaults(func=_cmd_refine_geometry)

    p = sub.add_parser("calibrate", help="calibrate beam centre, distance and tilt from "
                                         "powder rings",
                       description="Fit the geometry to the rings of a calibrant in the mean "
                                   "of a run's frames (see sxlab.calibrate_rings).")
    p.add_argument("run", metavar="RUN", help="frames of the calibrant (NXmx master, ...)")
    p.add_argument("-g", "--geometry", metavar="GEOM",
                   help="starting geometry (default the run's)")
    p.add_argument("-o", "--output", default="calibrated.geom", metavar="GEOM")
    p.add_argument("--nxmx", metavar="H5", help="also write an NXmx master with the geometry")
    p.add_argument("--calibrant", default="agbeh", help="agbeh (default) or lab6")
    p.add_argument("--rings", type=int, default=12, help="rings of the calibrant (default 12)")
    p.add_argument("--d-spacing", type=float, nargs="+", metavar="Å",
                   help="d-spacings of the rings instead of a calibrant")
    p.add_argument("--frames", type=int, default=0, metavar="N",
                   help="average the first N frames (default all)")
    p.add_argument("--beamstop-px", type=float, default=0.0, metavar="PX",
                   help="mask a disc of this radius around the beam")
    p.add_argument("--refine", default="beam,distance,tilt",
                   help="comma-separated: beam, distance, tilt (default all three)")
    p.set_defaults(func=_cmd_calibrate)
