"""Notebook widgets (anywidget): frames, masks, peak search, run statistics, profiles.

This is the view layer: it imports the core and anywidget; the core never imports it.
Front-end code (ES modules and CSS) lives in the top-level ``widgets/`` folder of the
source tree and in ``sxlab/widgets/static/`` of an installed wheel.

* :class:`ImageViewer` — a frame assembled in lab coordinates, zoom and pan, contrast and
  colour maps, peaks, reflections with their integration rings, mask, resolution rings,
  hover readout, frame navigation linked to :class:`~sxlab.results.Results`;
* :class:`MaskPainter` — rectangles, circles, polygons, brush, eraser and a beam-stop tool;
  the painted :class:`~sxlab.masks.Mask` is what is shown;
* :class:`PeakTuner` — peak-search parameters re-run on the shown frame as they change;
* :class:`ProfileView` — the per-stage time profile as stacked areas, live;
* :class:`RunStats` — the run-statistics panels, linked to an ImageViewer.

Every widget also carries a static PNG (``_repr_mimebundle_``) so that saved notebooks and
rendered HTML show a picture.
"""

from .painter import MaskPainter
from .profile import ProfileView
from .runstats import RunStats
from .tuner import PeakTuner
from .viewer import ImageViewer

__all__ = ["ImageViewer", "MaskPainter", "PeakTuner", "ProfileView", "RunStats"]
