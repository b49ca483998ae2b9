"""sxlab: serial crystallography in the notebook.

Every processing stage is a plain function that works on one frame and returns a tidy
table (`pandas.DataFrame`) or a labelled array (`xarray.DataArray`); the batch and live
pipelines are compositions of the same functions.

>>> import sxlab as sx
>>> sx.__version__  # doctest: +SKIP
'0.1.0'

Submodules are imported on first attribute access, so ``import sxlab`` stays light and
never pulls in matplotlib or ipywidgets: ``sx.plots`` and ``sx.widgets`` load only when
used.
"""

import importlib as _importlib
import importlib.util as _importlib_util
import pkgutil as _pkgutil
from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

try:
    __version__ = _version("sxlab")
except _PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.1.0"

# Public notebook API: name -> module it lives in. Imported on first use so that
# ``import sxlab`` stays light; .plots and .widgets are never imported here.
_EXPORTS = {
    "Beam": "geometry",
    "BadRegion": "geometry",
    "Detector": "geometry",
    "Panel": "geometry",
    "builtin_geometry": "geometry",
    "UnitCell": "cell",
    "match_cell": "cell",
    "niggli_reduce": "cell",
    "FrameReadError": "io",
    "NXmxWriter": "io",
    "Run": "io",
    "open_run": "io",
    "read_cell": "io",
    "read_geom": "io",
    "read_nxmx_geometry": "io",
    "read_dials_geometry": "io",
    "write_cell": "io",
    "write_geom": "io",
    "read_hkl": "io",
    "read_mtz": "io",
    "write_hkl": "io",
    "write_mtz": "io",
    "Mask": "masks",
    "mask_beamstop": "masks",
    "mask_from_geometry": "masks",
    "mask_from_hdf5": "masks",
    "mask_from_panel_masks": "masks",
    "mask_from_values": "masks",
    "mask_lab_region": "masks",
    "mask_lab_shape": "masks",
    "mask_no_index": "masks",
    "mask_panel_edges": "masks",
    "mask_pixel_ranges": "masks",
    "mask_resolution": "masks",
    "RadialProfiler": "hits",
    "has_solvent": "hits",
    "hit_table": "hits",
    "is_hit": "hits",
    "radial_profile": "hits",
    "run_statistics": "hits",
    "solvent_ratio": "hits",
    "virtual_powder": "hits",
    "Binner": "binning",
    "bin_frame": "binning",
    "bin_geometry": "binning",
    "bin_mask": "binning",
    "unbin_peaks": "binning",
    "PeakFinder": "peaks",
    "PeakFinderParams": "peaks",
    "find_peaks": "peaks",
    "Params": "params",
    "Results": "results",
    "ResultsReader": "results",
    "ResultsWriter": "results",
    "open_results": "results",
    "prepare": "pipeline",
    "process_frame": "pipeline",
    "process_run": "pipeline",
    "IndexParams": "indexing",
    "Indexer": "indexing",
    "index": "indexing",
    "IntegrationParams": "integration",
    "Integrator": "integration",
    "integrate": "integration",
    "predict": "integration",
    "MergeResult": "merging",
    "merge": "merging",
    "merging_statistics": "merging",
    "Profiler": "profiling",
    "read_crystfel_profile": "profiling",
    "StreamFollower": "io",
    "StreamWriter": "io",
    "read_stream": "io",
    "write_stream": "io",
    "Experiment": "experiment",
    "RunStats": "runstats",
    "cell_clusters": "runstats",
    "run_stats": "runstats",
    "SimulationParams": "simulate",
    "Simulator": "simulate",
    "Truth": "simulate",
    "simulate_frame": "simulate",
    "simulate_powder": "simulate",
    "calibrate_rings": "calibration",
    "refine_geometry": "calibration",
}


def __getattr__(name: str):
    """Resolve public names and import ``sxlab.<name>`` on first access (PEP 562)."""
    if name in _EXPORTS:
        value = getattr(_importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    if name.isidentifier() and not name.startswith("_"):
        fullname = f"{__name__}.{name}"
        if _importlib_util.find_spec(fullname) is not None:
            return _importlib.import_module(fullname)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    submodules = {m.name for m in _pkgutil.iter_modules(__path__) if not m.name.startswith("_")}
    return sorted({n for n in globals() if not n.startswith('_')} | submodules | set(_EXPORTS))
