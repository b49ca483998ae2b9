"""File formats: HDF5/NeXus frame readers, the NXmx writer, CrystFEL geometry, cell, stream
and reflection-list files, MTZ.

Names are imported from their submodule on first access, so ``import sxlab.io`` stays
light:

>>> from sxlab.io import open_run, NXmxWriter  # doctest: +SKIP
"""

from __future__ import annotations

from sxlab._lazy import lazy_exports

_EXPORTS = {
    "FrameReadError": "hdf5",
    "Run": "hdf5",
    "open_run": "hdf5",
    "NXmxWriter": "nxmx",
    "read_nxmx_geometry": "nxmx",
    "read_dials_expt": "dials",
    "read_dials_geometry": "dials",
    "read_geom": "crystfel_geom",
    "write_geom": "crystfel_geom",
    "StreamData": "stream",
    "StreamError": "stream",
    "StreamFollower": "stream",
    "StreamWriter": "stream",
    "read_stream": "stream",
    "write_stream": "stream",
    "CellFileError": "crystfel_cell",
    "read_cell": "crystfel_cell",
    "write_cell": "crystfel_cell",
    "HklFileError": "crystfel_hkl",
    "crystfel_symmetry": "crystfel_hkl",
    "read_hkl": "crystfel_hkl",
    "write_hkl": "crystfel_hkl",
    "read_mtz": "mtz",
    "write_mtz": "mtz",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
