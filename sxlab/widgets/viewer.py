"""ImageViewer: one detector frame with its peaks, reflections, mask and resolution rings."""

from __future__ import annotations

from ._frame import _FrameWidget

__all__ = ["ImageViewer"]


class ImageViewer(_FrameWidget):
    """Look at the frames of a run, assembled in lab coordinates, with their results.

    Parameters
    ----------
    source : Run or xarray.DataArray or ndarray
        A run (:func:`sxlab.open_run`, :func:`sxlab.datasets.load`: anything with
        ``len()`` and ``read(i) -> (image, bad)``) or a single frame.
    geometry : Detector, optional
        Default: the run's geometry. Without one, a 2-D image is shown as stored.
    peaks, reflections : DataFrame, optional
        Peak and reflection tables (one frame, or many with a ``frame`` column); by
        default those of ``results``.
    mask : Mask or ndarray of bool, optional
        Static mask, drawn translucent red (a boolean array means True = bad); the
        frame's own bad pixels are drawn too.
    results : Results, optional
        Linked results (:func:`sxlab.process_run`, :meth:`sxlab.Results.load`): the
        frame's row of ``results.frames``, its crystals, peaks and reflections are shown,
        and "next hit" / "next indexed" navigate by its ``hit`` and ``indexed`` columns.
    frame : int
        Frame shown first (run index).
    rings : sequence of float, optional
        Resolution rings in Å (default: a few round values that fall on the detector).

    Attributes
    ----------
    frame : int
        Frame shown (run index); set it to change frame.
    contrast : {"percentile", "linear", "log"}
        ``percentile``: linear between the ``percentiles`` of the frame's good pixels;
        ``linear`` and ``log``: between ``vmin`` and ``vmax`` (log: ``log1p(v - vmin)``).
    vmin, vmax : float
        Colour-scale limits (written back in percentile mode).
    colormap : str
        One of :data:`sxlab.widgets._frame.COLORMAPS`.
    reduce : {"max", "mean"}
        How a screen pixel covering several detector pixels is computed: "max" keeps
        one-pixel spots visible, "mean" averages.
    show : dict
        Overlays drawn: ``peaks``, ``reflections``, ``mask``, ``rings``, ``beam``.
    readout : dict
        What lies under the mouse (see :meth:`readout_at`).

    Notes
    -----
    The display plane has lab x to the right and lab y up; each detector pixel is drawn
    in the cell of the first panel's pixel grid that contains its centre. The browser
    receives a screen-sized image only: blocks of detector pixels reduced by ``reduce``
    when zoomed out, the detector's own pixels once zoomed in; colour maps are applied in
    the browser, contrast limits here.

    Mouse and keys: wheel zooms around the cursor, drag pans, double click resets;
    ``←``/``→`` previous/next frame, ``h``/``H`` next/previous hit, ``i``/``I``
    next/previous indexed frame, ``r`` reset the view, ``l`` cycle the contrast mode,
    ``m`` toggle the mask, ``p`` toggle peaks.

    Examples
    --------
    >>> import sxlab as sx
    >>> run = sx.datasets.load("lysozyme-sample", progress=False)
    >>> viewer = sx.widgets.ImageViewer(run, frame=2)
    >>> viewer.frame, viewer.image_meta["frame"]
    (2, 2)
    >>> viewer.readout_at(100.5, 200.5)["fs"]
    100
    """

    def __init__(self, source, geometry=None, *, peaks=None, reflections=None, mask=None,
                 results=None, frame: int = 0, rings=None, **kwargs):
        super().__init__(source, geometry, peaks=peaks, reflections=reflections, mask=mask,
                         results=results, frame=frame, rings=rings, kind="viewer", **kwargs)
