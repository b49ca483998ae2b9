"""Detector calibration: geometry refinement from indexed stills and from powder rings.

* :func:`refine_geometry` (``sx.refine_geometry``): the detector distance, beam position,
  tilt and each panel group's shift, rotation and height from the indexed peaks of many
  frames (:mod:`sxlab.calibration.stills`);
* :func:`calibrate_rings` (``sx.calibrate_rings``): beam centre, distance and tilt from
  powder rings of known d-spacings (:mod:`sxlab.calibration.rings`);
* the rigid-body parameter model both fit (:mod:`sxlab.calibration.model`);
* ``sxlab refine-geometry`` and ``sxlab calibrate`` (:mod:`sxlab.calibration.cli`).

Examples
--------
>>> import sxlab as sx
>>> sx.refine_geometry is sx.calibration.stills.refine_geometry
True
"""

from .model import DetectorModel, GeometryReport, panel_groups, write_geometry
from .rings import RingCalibration, calibrate_rings, ring_d_spacings
from .stills import GeometryRefinement, refine_geometry

__all__ = [
    "DetectorModel",
    "GeometryRefinement",
    "GeometryReport",
    "RingCalibration",
    "calibrate_rings",
    "panel_groups",
    "refine_geometry",
    "ring_d_spacings",
    "write_geometry",
]
