"""Dump the models DIALS builds for an experiment list, for the NXmx interoperability tests.

Run with the Python that has DIALS (Debian's ``/usr/bin/python3``), not sxlab's::

    python3 tests/dials_dump.py imported.expt out --frames 2
    python3 tests/dials_dump.py imported.expt moved --perturb 7

It writes ``out.json`` (beam and, per panel in DIALS's order, the global frame in mm,
pixel and image size, trusted range, sensor, distance and beam centre) and ``out.npz``
(``static_mask_<k>``: the format's static mask, True = good; ``data_<i>_<k>``: raw data of
experiment ``i``'s image as DIALS reads it). With ``--perturb SEED`` it first turns and
shifts every group and panel of the detector hierarchy by small random amounts, as a
refinement would, writes the result to ``out.expt`` and dumps that; ``--for-export``
adds what ``dials.export format=nxs`` needs (crystals in ``out.expt``, ``out.refl``).
Stills import as one experiment per image; ``file_indices`` lists the image of the file
behind each experiment. Nothing here interprets the numbers: the test does.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from dxtbx.model.experiment_list import ExperimentListFactory


def _vec(v) -> list[float]:
    return [float(x) for x in v]


def _rotation(rng, max_deg: float) -> np.ndarray:
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    a = np.deg2rad(rng.uniform(-max_deg, max_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * (k @ k)


def _perturb(detector, seed: int) -> None:
    """Turn (up to 2 degrees) and shift (up to 1 mm) every local frame."""
    rng = np.random.default_rng(seed)

    def move(node, local: bool) -> None:
        get = ((node.get_local_fast_axis, node.get_local_slow_axis, node.get_local_origin)
               if local else (node.get_fast_axis, node.get_slow_axis, node.get_origin))
        fast, slow, origin = (np.array(g()) for g in get)
        rot = _rotation(rng, 2.0)
        frame = (tuple(rot @ fast), tuple(rot @ slow), tuple(origin + rng.uniform(-1, 1, 3)))
        (node.set_local_frame if local else node.set_frame)(*frame)

    if len(detector) == 1:
        move(detector[0], local=False)
        return

    def walk(node) -> None:
        move(node, local=True)
        if node.is_group():
            for child in node.children():
                walk(child)

    walk(detector.hierarchy())


def _add_crystals(experiments, refl_path: str) -> None:
    """What ``dials.export format=nxs`` needs besides the models: a crystal per experiment
    and a reflection table."""
    from dials.array_family import flex
    from dxtbx.model import Crystal

    for e in experiments:
        e.crystal = Crystal((50, 0, 0), (0, 60, 0), (0, 0, 70), space_group_symbol="P1")
    table = flex.reflection_table()
    table["id"] = flex.int([0])
    table["miller_index"] = flex.miller_index([(1, 2, 3)])
    table["intensity.sum.value"] = flex.double([1.0])
    table.as_file(refl_path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("expt")
    parser.add_argument("out")
    parser.add_argument("--frames", type=int, default=1)
    parser.add_argument("--perturb", type=int, default=None, metavar="SEED")
    parser.add_argument("--for-export", action="store_true")
    args = parser.parse_args()

    experiments = ExperimentListFactory.from_json_file(args.expt, check_format=True)
    if args.perturb is not None:
        _perturb(experiments[0].detector, args.perturb)
    if args.for_export:
        _add_crystals(experiments, args.out + ".refl")
    if args.perturb is not None or args.for_export:
        experiments.as_file(args.out + ".expt")
    exp = experiments[0]
    imageset, beam, detector = exp.imageset, exp.beam, exp.detector
    s0 = beam.get_s0()
    panels = []
    for panel in detector:
        try:
            centre = _vec(panel.get_beam_centre_px(s0))
        except RuntimeError:
            centre = None
        panels.append({
            "name": panel.get_name(),
            "origin_mm": _vec(panel.get_origin()),
            "fast_axis": _vec(panel.get_fast_axis()),
            "slow_axis": _vec(panel.get_slow_axis()),
            "normal": _vec(panel.get_normal()),
            "pixel_size_mm": _vec(panel.get_pixel_size()),
            "image_size": [int(x) for x in panel.get_image_size()],
            "trusted_range": _vec(panel.get_trusted_range()),
            "thickness_mm": float(panel.get_thickness()),
            "material": panel.get_material(),
            "distance_mm": float(panel.get_distance()),
            "beam_centre_px": centre,
        })
    summary = {
        "n_experiments": len(experiments),
        "file_indices": [int(i) for e in experiments for i in e.imageset.indices()],
        "format_class": imageset.get_format_class().__name__,
        "hierarchical": len(detector) > 1,
        "beam": {
            "wavelength_A": float(beam.get_wavelength()),
            "sample_to_source": _vec(beam.get_sample_to_source_direction()),
        },
        "panels": panels,
    }
    arrays = {}
    fmt = imageset.get_format_class().get_instance(imageset.paths()[0])
    static = fmt.get_static_mask()
    if static is not None:
        for k, m in enumerate(static):
            arrays[f"static_mask_{k}"] = m.as_numpy_array()
    for i, e in enumerate(experiments[: args.frames]):
        for k, d in enumerate(e.imageset.get_raw_data(0)):
            arrays[f"data_{i}_{k}"] = d.as_numpy_array()
    with open(args.out + ".json", "w") as fh:
        json.dump(summary, fh, indent=1)
    np.savez(args.out + ".npz", **arrays)


if __name__ == "__main__":
    main()
