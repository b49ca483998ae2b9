"""Merged intensities as MTZ files, through gemmi.

:func:`write_mtz` writes a merged table (:data:`sxlab.tables.MERGED`) with the
columns ``H K L I SIGI N`` (column types H H H J Q I), or, for anomalous data,
``H K L I(+) SIGI(+) N(+) I(-) SIGI(-) N(-)`` (H H H K M I K M I) with Friedel mates
on one row of the asymmetric unit. :func:`read_mtz` reads either layout back into a
merged table. Any MTZ reader (gemmi, CCP4, Phenix, reciprocalspaceship) reads the files.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from .. import tables

__all__ = ["read_mtz", "write_mtz"]


def _symmetry(merged: pd.DataFrame, cell, space_group):
    import gemmi

    from ..cell import UnitCell, find_space_group

    if isinstance(cell, UnitCell) and space_group is None:
        space_group = cell.space_group
    if cell is None:
        cell = merged.attrs.get("cell")
    if space_group is None:
        space_group = merged.attrs.get("symmetry")
    if cell is None or space_group is None:
        raise ValueError("pass cell and space_group (the table's attrs do not give them)")
    if isinstance(cell, UnitCell):
        gcell = cell.to_gemmi()
    elif isinstance(cell, gemmi.UnitCell):
        gcell = cell
    else:
        gcell = gemmi.UnitCell(*[float(v) for v in cell])
    return gcell, find_space_group(space_group)


def write_mtz(merged: pd.DataFrame, path: str | os.PathLike, cell=None, space_group=None, *,
              anomalous: bool | None = None, dataset: str = "sxlab",
              wavelength_A: float = 0.0, history: list[str] | None = None) -> Path:
    """Write merged intensities to an MTZ file.

    Parameters
    ----------
    merged : DataFrame
        ``h, k, l, I, sigma, n_obs`` (:data:`sxlab.tables.MERGED`), in the
        asymmetric unit (I(-) rows of anomalous data as the Friedel mate).
    path : path
    cell : UnitCell, gemmi.UnitCell or six floats, optional
        Default ``merged.attrs["cell"]`` (set by :func:`sxlab.merge`).
    space_group : str or gemmi.SpaceGroup, optional
        Default the UnitCell's space group, else ``merged.attrs["symmetry"]``.
    anomalous : bool, optional
        Write I(+) / I(-) columns; default ``merged.attrs.get("anomalous", False)``.
    dataset : str
        Project, crystal and data-set name. Default "sxlab".
    wavelength_A : float
        Wavelength recorded with the data set (Å); 0: unknown.
    history : list of str, optional
        History lines (default: one naming sxlab).

    Returns
    -------
    pathlib.Path

    Examples
    --------
    >>> import gemmi
    >>> t = pd.DataFrame({"h": [1, 2], "k": [0, 1], "l": [0, 3], "I": [10.0, 5.0],
    ...                   "sigma": [1.0, 0.5], "n_obs": [3, 4], "d_A": [79.1, 11.9]})
    >>> p = write_mtz(t, "x.mtz", (79.1, 79.1, 37.9, 90, 90, 90), "P 43 21 2")
    ... # doctest: +SKIP
    >>> gemmi.read_mtz_file(str(p)).column_labels()  # doctest: +SKIP
    ['H', 'K', 'L', 'I', 'SIGI', 'N']
    """
    import gemmi

    from .. import __version__

    gcell, sg = _symmetry(merged, cell, space_group)
    if anomalous is None:
        anomalous = bool(merged.attrs.get("anomalous", False))
    hkl = merged[["h", "k", "l"]].to_numpy(np.int64)
    i = merged["I"].to_numpy(np.float64)
    s = merged["sigma"].to_numpy(np.float64)
    n = merged["n_obs"].to_numpy(np.float64) if "n_obs" in merged else np.zeros(len(i))
    mtz = gemmi.Mtz(with_base=True)
    mtz.spacegroup = sg
    mtz.set_cell_for_all(gcell)
    ds = mtz.add_dataset(dataset)
    ds.project_name = dataset
    ds.crystal_name = dataset
    ds.wavelength = float(wavelength_A)
    if anomalous:
        from ..symmetry import AsuTable, cell_d_spacings

        d = cell_d_spacings(gcell, hkl)
        lim = float(d[np.isfinite(d)].min()) if np.isfinite(d).any() else 1.0
        table = AsuTable(gcell, sg, lim * (1 - 1e-6))
        u, friedel = table.lookup(hkl)
        if np.any(u < 0):
            raise ValueError("a reflection is systematically absent or 0 0 0")
        minus = friedel & ~table.centric[u]
        uniq, row = np.unique(u, return_inverse=True)
        data = np.full((len(uniq), 9), np.nan, dtype=np.float32)
        data[:, :3] = table.hkl[uniq]
        for sel, col in ((~minus, 3), (minus, 6)):
            data[row[sel], col] = i[sel]
            data[row[sel], col + 1] = s[sel]
            data[row[sel], col + 2] = n[sel]
        columns = (("I(+)", "K"), ("SIGI(+)", "M"), ("N(+)", "I"),
                   ("I(-)", "K"), ("SIGI(-)", "M"), ("N(-)", "I"))
    else:
        data = np.column_stack([hkl, i, s, n]).astype(np.float32)
        columns = (("I", "J"), ("SIGI", "Q"), ("N", "I"))
    for label, kind in columns:
        mtz.add_column(label, kind)
    mtz.set_data(np.ascontiguousarray(data))
    mtz.title = f"merged by sxlab {__version__}"
    mtz.history = list(history) if history is not None else [
        f"sxlab {__version__}: Monte Carlo merge"]
    mtz.sort()
    path = Path(path)
    mtz.write_to_file(str(path))
    return path


@tables.documented
def read_mtz(path: str | os.PathLike) -> pd.DataFrame:
    """Read merged intensities from an MTZ file into a merged table.

    Parameters
    ----------
    path : path
        A file with ``I`` and ``SIGI`` (optionally ``N``) or ``I(+)``, ``SIGI(+)``,
        ``I(-)``, ``SIGI(-)`` (optionally ``N(+)``, ``N(-)``) columns.

    Returns
    -------
    DataFrame
        :data:`sxlab.tables.MERGED` columns (``n_obs`` 0 where the file has no
        count), one row per measured intensity (I(-) as ``-h -k -l``); ``attrs`` hold
        ``symmetry``, ``cell`` and ``anomalous``:

        [columns: merged]

    Examples
    --------
    >>> merged = read_mtz("merged.mtz")  # doctest: +SKIP
    """
    import gemmi

    mtz = gemmi.read_mtz_file(str(path))
    labels = mtz.column_labels()
    data = np.asarray(mtz.array, dtype=np.float64)
    col = {lab: data[:, j] for j, lab in enumerate(labels)}
    hkl = np.rint(data[:, :3]).astype(np.int64)
    parts = []
    anomalous = "I" not in col and "I(+)" in col
    if anomalous:
        for sign, suffix in ((1, "(+)"), (-1, "(-)")):
            ok = np.isfinite(col["I" + suffix])
            nn = col.get("N" + suffix)
            parts.append((sign * hkl[ok], col["I" + suffix][ok], col["SIGI" + suffix][ok],
                          np.nan_to_num(nn[ok]) if nn is not None else np.zeros(ok.sum())))
    elif "I" in col and "SIGI" in col:
        ok = np.isfinite(col["I"])
        nn = col.get("N")
        parts.append((hkl[ok], col["I"][ok], col["SIGI"][ok],
                      np.nan_to_num(nn[ok]) if nn is not None else np.zeros(ok.sum())))
    else:
        raise ValueError(f"{path}: no I/SIGI or I(+)/I(-) columns (found {labels})")
    h = np.concatenate([p[0] for p in parts])
    cell = mtz.get_cell()
    d = cell.calculate_d_array(h.astype(np.int32)) if len(h) else np.zeros(0)
    out = tables.MERGED.make({
        "h": h[:, 0], "k": h[:, 1], "l": h[:, 2],
        "I": np.concatenate([p[1] for p in parts]),
        "sigma": np.concatenate([p[2] for p in parts]),
        "n_obs": np.rint(np.concatenate([p[3] for p in parts])).astype(np.int64),
        "d_A": d,
    })
    sg = mtz.spacegroup
    out.attrs.update({"symmetry": sg.xhm() if sg.ext == "R" else sg.hm,
                      "cell": list(cell.parameters), "anomalous": bool(anomalous)})
    return out
