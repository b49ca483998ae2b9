"""The one declaration of every table sxlab produces or reads.

Every stage returns a tidy :class:`pandas.DataFrame`, one row per peak, crystal,
reflection, frame, timed segment, ...; this module declares each of those tables once, as a
:class:`Schema`: an ordered list of :class:`Column` with its name, dtype, unit and one-line
meaning. The functions that return a table build it through its schema
(:meth:`Schema.make`), an empty result keeps every column with its dtype
(:meth:`Schema.empty`), and any DataFrame can be checked against its schema
(:meth:`Schema.validate`), e.g. after reading it back from Parquet.

Conventions: units are suffixes of the column names (``d_A``, ``duration_s``,
``two_theta_deg``, ``profile_radius_invA`` for 1/Å); reciprocal lengths carry no factor
2π; pixel coordinates are data-array ``fs``/``ss`` with the corner of the first pixel at
0 (pixel centres at +0.5); text columns have pandas' ``str`` dtype. Where a row has no
value for a column (a peak no crystal explains, a column a file format does not hold),
the column's ``fill`` is used: NaN for floats, -1 for counts and indices, False for
flags, missing for text, 0 for Miller indices (0 0 0 is never a reflection).

The contract between stages (DESIGN.md, "Data shapes") in these terms:

* :data:`PEAKS`: ``frame, panel, fs, ss, intensity, snr, npix, background, d_A``, the
  scattering angle, and the crystal and ``h, k, l`` the indexer assigned;
* :data:`CRYSTALS`: ``frame, crystal``, the cell, ``lattice, centering``, the reciprocal
  basis ``astar_x`` ... ``cstar_z`` (1/Å), ``n_peaks_indexed, method``, the profile
  radius and apparent resolution the indexer estimated;
* :data:`REFLECTIONS`: ``frame, crystal, h, k, l, I, sigma, bg, fs, ss, panel, d_A,
  partiality`` and ``flag_*`` columns;
* :data:`FRAMES`: ``frame, run, n_peaks, hit, indexed, n_crystals, resolution_A,
  solvent_ratio, status, error`` and per-stage seconds;
* :data:`PROFILE`: ``frame, worker, path`` (``root/peak-search/pf8-rstats``),
  ``start_s, duration_s``.

Examples
--------
>>> from sxlab import tables
>>> tables.PEAKS["d_A"]
Column(name='d_A', dtype='float64', unit='Å', meaning='resolution at the centroid')
>>> empty = tables.PEAKS.empty()
>>> len(empty), str(empty["panel"].dtype)
(0, 'int16')
>>> t = tables.HITS.make({"frame": [0, 1], "n_peaks": [3, 40], "hit": [False, True]})
>>> tables.HITS.validate(t) is t
True
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = [
    "ANNULI",
    "CRYSTALS",
    "DATASETS",
    "DEMO_SUMMARY",
    "FRAMES",
    "GEOMETRY_RESIDUALS",
    "HITS",
    "INDEXING_SCORES",
    "MERGED",
    "PEAKS",
    "PREDICTIONS",
    "PROFILE",
    "PROFILE_BLOCKS",
    "REFLECTIONS",
    "RESOLUTION_SHELLS",
    "RING_POINTS",
    "RUN_STATS_FRAMES",
    "RUN_STATS_RUNS",
    "RUN_SUMMARY",
    "SCALES",
    "SCHEMAS",
    "STATISTICS",
    "STREAM_CRYSTALS",
    "STREAM_FRAMES",
    "STREAM_HEADERS",
    "TRUTH_CRYSTALS",
    "TRUTH_FRAMES",
    "TRUTH_INTENSITIES",
    "TRUTH_REFLECTIONS",
    "WRITER_STATUS",
    "Column",
    "Schema",
    "TableError",
    "documented",
    "get",
]

#: dtypes a column may have.
DTYPES = ("int16", "int32", "int64", "float64", "bool", "str", "category")

_NO_FILL = object()


class TableError(ValueError):
    """A DataFrame that does not follow its schema; the message names table and columns."""


@dataclass(frozen=True)
class Column:
    """One column of a table.

    Attributes
    ----------
    name : str
        Column name (snake_case, unit as suffix).
    dtype : str
        One of :data:`DTYPES` (``str``: pandas' string dtype).
    unit : str
        Unit of the values (``""`` for counts, flags, text and ratios).
    meaning : str
        One line.
    """

    name: str
    dtype: str
    unit: str
    meaning: str
    fill: object = _NO_FILL

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"column {self.name!r}: dtype {self.dtype!r} is not one of {DTYPES}")
        if self.fill is _NO_FILL:
            object.__setattr__(self, "fill", _default_fill(self.dtype))
        if self.dtype not in ("str", "category"):
            object.__setattr__(self, "_np_dtype", np.dtype(self.dtype))

    def __repr__(self) -> str:
        return (f"Column(name={self.name!r}, dtype={self.dtype!r}, unit={self.unit!r}, "
                f"meaning={self.meaning!r})")

    def values(self, data, n: int | None = None):
        """``data`` as this column's dtype (``n`` fill values when ``data`` is None)."""
        if data is None:
            if self.dtype == "str":
                return pd.array([None] * n, dtype="str")
            if self.dtype == "category":
                return pd.Categorical([None] * n)
            return np.full(n, self.fill, dtype=self.dtype)
        if n is not None and np.ndim(data) == 0:  # a scalar: the same value in every row
            data = [data] * n if self.dtype in ("str", "category") else np.full(n, data)
        if self.dtype == "str":
            if isinstance(data, pd.api.extensions.ExtensionArray | pd.Series) and str(
                    data.dtype) == "str":
                return data
            return pd.array(np.asarray(data, dtype=object), dtype="str")
        if self.dtype == "category":
            return data if isinstance(data, pd.Categorical) else pd.Categorical(data)
        arr = np.asarray(data)
        if arr.dtype == self._np_dtype:
            return arr
        if arr.dtype.kind == "f" and self._np_dtype.kind in "iub":
            with np.errstate(invalid="ignore"):  # NaN to an integer: the caller's fill
                return arr.astype(self._np_dtype)
        return arr.astype(self._np_dtype)


def _default_fill(dtype: str):
    if dtype.startswith("float"):
        return math.nan
    if dtype.startswith("int"):
        return -1
    if dtype == "bool":
        return False
    return None


def _c(name: str, dtype: str, unit: str, meaning: str, **kw) -> Column:
    return Column(name, dtype, unit, meaning, **kw)


class Schema:
    """An ordered set of columns: the declaration of one table.

    Parameters
    ----------
    name : str
        Table name (``"peaks"``, ``"crystals"``, ...).
    row : str
        What one row is (``"one row per peak"``).
    columns : iterable of Column

    Examples
    --------
    >>> s = Schema("demo", "one row per thing", [Column("frame", "int64", "", "frame"),
    ...                                          Column("d_A", "float64", "Å", "resolution")])
    >>> s.make({"frame": [3], "d_A": [2.5]}).dtypes.astype(str).tolist()
    ['int64', 'float64']
    >>> s.problems(pd.DataFrame({"frame": [1.0]}))
    ["column 'frame': dtype float64, expected int64", "column 'd_A' is missing"]
    """

    def __init__(self, name: str, row: str, columns: Iterable[Column]):
        self.name = name
        self.row = row
        self.columns = tuple(columns)
        self._by_name = {c.name: c for c in self.columns}
        if len(self._by_name) != len(self.columns):
            raise ValueError(f"table {name!r} declares a column twice")
        self.names = tuple(self._by_name)
        self.dtypes = {c.name: c.dtype for c in self.columns}

    # -------------------------------------------------------------- mapping
    def __getitem__(self, name: str) -> Column:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"table {self.name!r} has no column {name!r}") from None

    def __contains__(self, name) -> bool:
        return name in self._by_name

    def __iter__(self):
        return iter(self.columns)

    def __len__(self) -> int:
        return len(self.columns)

    def extend(self, name: str, row: str, columns: Iterable[Column]) -> Schema:
        """A new schema: these columns, then ``columns``."""
        return Schema(name, row, (*self.columns, *columns))

    # --------------------------------------------------------------- tables
    def make(self, data: Mapping | pd.DataFrame | None = None, *,
             fill_missing: bool = False) -> pd.DataFrame:
        """A table of this schema: every column, in order, with its dtype.

        Parameters
        ----------
        data : mapping or DataFrame, optional
            Column name -> values (equal lengths; a scalar is repeated). None gives the
            empty table.
        fill_missing : bool
            Fill columns absent from ``data`` with their ``fill`` value; otherwise an
            absent column is an error.

        Raises
        ------
        TableError
            A column of ``data`` that the schema does not declare, or one it lacks.
        """
        if data is None or (not len(data) and not isinstance(data, pd.DataFrame)):
            return self.empty()
        keys = list(data.columns) if isinstance(data, pd.DataFrame) else list(data)
        unknown = [k for k in keys if k not in self._by_name]
        if unknown:
            raise TableError(f"table {self.name!r}: unknown columns {unknown}; "
                             f"declared: {list(self.names)}")
        missing = [c for c in self.names if c not in data]
        if missing and not fill_missing:
            raise TableError(f"table {self.name!r}: columns {missing} not given")
        if isinstance(data, pd.DataFrame):
            n = len(data)
            data = {k: data[k].array for k in keys}
        else:
            n = next((len(data[k]) for k in keys if np.ndim(data[k]) > 0), 1)
        return pd.DataFrame({c.name: c.values(data.get(c.name), n) for c in self.columns},
                            index=pd.RangeIndex(n))

    def empty(self) -> pd.DataFrame:
        """The table without rows, every column typed (a new copy on every call)."""
        template = self.__dict__.get("_empty")
        if template is None:  # built once: a copy is ten times cheaper than a build
            template = self.__dict__["_empty"] = pd.DataFrame(
                {c.name: c.values(None, 0) for c in self.columns})
        return template.copy()

    def concat(self, tables: Iterable[pd.DataFrame]) -> pd.DataFrame:
        """Tables of this schema one after the other (the empty table when none has rows)."""
        tables = [t for t in tables if t is not None and len(t)]
        if not tables:
            return self.empty()
        if len(tables) == 1:
            return self.cast(tables[0].reset_index(drop=True))
        return self.cast(pd.concat(tables, ignore_index=True))

    def cast(self, df: pd.DataFrame) -> pd.DataFrame:
        """``df`` with its declared columns converted to their dtypes (others kept)."""
        current = dict(zip(df.columns, map(str, df.dtypes), strict=True))
        dtypes = {c: t for c, t in self.dtypes.items() if current.get(c, t) != t}
        return df.astype(dtypes) if dtypes else df

    def problems(self, df: pd.DataFrame, *, extra: bool = False) -> list[str]:
        """What keeps ``df`` from following this schema (empty list: nothing)."""
        if not isinstance(df, pd.DataFrame):
            return [f"expected a DataFrame, got {type(df).__name__}"]
        found = []
        cols = [str(c) for c in df.columns]
        for c in self.columns:
            if c.name not in df.columns:
                found.append(f"column {c.name!r} is missing")
            elif str(df[c.name].dtype) != c.dtype:
                found.append(f"column {c.name!r}: dtype {df[c.name].dtype}, expected {c.dtype}")
        found.sort(key=lambda p: "missing" in p)
        if not extra:
            unknown = [c for c in cols if c not in self._by_name]
            if unknown:
                found.append(f"undeclared columns {unknown}")
        if not found:
            declared = [c for c in cols if c in self._by_name]
            if declared != list(self.names):
                found.append(f"columns in the order {declared}, expected {list(self.names)}")
        return found

    def validate(self, df: pd.DataFrame, *, extra: bool = False,
                 where: str | None = None) -> pd.DataFrame:
        """Check ``df`` against this schema; return it unchanged.

        Parameters
        ----------
        df : DataFrame
        extra : bool
            Allow columns the schema does not declare (after its own).
        where : str, optional
            Where the table comes from, for the message (a file name).

        Raises
        ------
        TableError
            Naming the table, ``where`` and every missing, mistyped, undeclared or
            misplaced column.
        """
        found = self.problems(df, extra=extra)
        if found:
            origin = f" from {where}" if where else ""
            raise TableError(f"{self.name} table{origin}: " + "; ".join(found))
        return df

    # ------------------------------------------------------------ describing
    def describe(self) -> pd.DataFrame:
        """One row per column: name, dtype, unit, meaning."""
        return pd.DataFrame({"column": [c.name for c in self.columns],
                             "dtype": [c.dtype for c in self.columns],
                             "unit": [c.unit for c in self.columns],
                             "meaning": [c.meaning for c in self.columns]})

    def rst(self) -> str:
        """The columns as a reStructuredText simple table (for docstrings)."""
        rows = [("column", "dtype", "unit", "meaning")] + [
            (c.name, c.dtype, c.unit or "–", c.meaning) for c in self.columns]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        rule = "  ".join("=" * w for w in widths)

        def line(r):
            return "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()

        return "\n".join([rule, line(rows[0]), rule, *map(line, rows[1:]), rule])

    def __repr__(self) -> str:
        return f"<Schema {self.name}: {self.row}; {len(self)} columns: {', '.join(self.names)}>"

    def _repr_html_(self) -> str:
        return (f"<div><b>{html.escape(self.name)}</b> table, {html.escape(self.row)}"
                f"{self.describe().to_html(index=False)}</div>")


def _basis_columns(note: str = "") -> list[Column]:
    return [_c(f"{v}star_{x}", "float64", "1/Å", f"lab-frame {x} component of {v}*{note}")
            for v in "abc" for x in "xyz"]


def _cell_columns() -> list[Column]:
    return [_c("a", "float64", "Å", "cell edge a"), _c("b", "float64", "Å", "cell edge b"),
            _c("c", "float64", "Å", "cell edge c"),
            _c("alpha", "float64", "deg", "cell angle α"),
            _c("beta", "float64", "deg", "cell angle β"),
            _c("gamma", "float64", "deg", "cell angle γ")]


def _hkl(asu: str = "") -> list[Column]:
    return [_c("h", "int32", "", f"Miller index h{asu}", fill=0),
            _c("k", "int32", "", "Miller index k", fill=0),
            _c("l", "int32", "", "Miller index l", fill=0)]


_FRAME = _c("frame", "int64", "", "frame index in the run (0-based)")
_CRYSTAL = _c("crystal", "int64", "", "lattice index within the frame (0-based)")
_PANEL = _c("panel", "int16", "", "panel index in geometry.panels")
_FS = _c("fs", "float64", "px", "fast-scan position (data-array pixels, centres at +0.5)")
_SS = _c("ss", "float64", "px", "slow-scan position (data-array pixels, centres at +0.5)")

# ================================================================== peak search
PEAKS = Schema("peaks", "one row per peak", [
    _FRAME, _PANEL,
    _c("fs", "float64", "px", "centroid, fast scan (data-array pixels, centres at +0.5)"),
    _c("ss", "float64", "px", "centroid, slow scan (data-array pixels, centres at +0.5)"),
    _c("intensity", "float64", "ADU", "sum of value - background over the peak"),
    _c("snr", "float64", "", "intensity / (local sigma · sqrt(npix))"),
    _c("npix", "int32", "px", "pixels in the peak"),
    _c("background", "float64", "ADU", "mean local background per pixel"),
    _c("max_value", "float64", "ADU", "largest pixel value of the peak"),
    _c("d_A", "float64", "Å", "resolution at the centroid"),
    _c("two_theta_deg", "float64", "deg", "scattering angle at the centroid"),
    _c("crystal", "int64", "", "first lattice explaining the peak (-1: none, not indexed)"),
    _c("h", "int32", "", "Miller index h in that lattice (0 when not indexed)", fill=0),
    _c("k", "int32", "", "Miller index k (0 when not indexed)", fill=0),
    _c("l", "int32", "", "Miller index l (0 when not indexed)", fill=0),
])

ANNULI = Schema("annuli", "one row per annulus of peakfinder8", [
    _c("annulus", "int32", "", "annulus index, floor(r_px)"),
    _c("r_px", "float64", "px", "inner radius of the annulus from the beam"),
    _c("n_pixels", "int64", "px", "good pixels of the annulus (fast mode: of the sample)"),
    _c("n_used", "int64", "px", "pixels of the final clipped statistics"),
    _c("mean", "float64", "ADU", "clipped mean"),
    _c("sigma", "float64", "ADU", "clipped standard deviation"),
    _c("threshold", "float64", "ADU",
       "candidate threshold max(adc_threshold, mean + min_snr · sigma); inf: none"),
])

HITS = Schema("hits", "one row per frame", [
    _FRAME,
    _c("n_peaks", "int64", "", "peaks found"),
    _c("hit", "bool", "", "min_peaks <= n_peaks (<= max_peaks when given)"),
])

# ===================================================================== indexing
CRYSTALS = Schema("crystals", "one row per lattice", [
    _FRAME, _CRYSTAL, *_cell_columns(),
    _c("lattice", "str", "", "lattice type (CrystFEL naming): the reference cell's, else "
       "the Bravais lattice of the reduced cell"),
    _c("centering", "str", "", "centering letter (of the reference, else of the Bravais "
       "lattice)"),
    *_basis_columns(" (no 2π): reflection hkl is at hkl @ A"),
    _c("n_peaks_indexed", "int64", "", "peaks of the frame this lattice explains"),
    _c("n_peaks", "int64", "", "peaks of the frame with a valid position"),
    _c("fraction_indexed", "float64", "", "n_peaks_indexed / n_peaks"),
    _c("method", "str", "", "indexing method (asdf, asdf-fast)"),
    _c("tries", "int64", "", "attempt that found the lattice (1: no peaks dropped)"),
    _c("profile_radius_invA", "float64", "1/Å",
       "profile radius: percentile of |excitation error| of the indexed peaks"),
    _c("resolution_limit_A", "float64", "Å",
       "apparent resolution: d of the highest-resolution peak the lattice explains"),
    _c("residual_invA", "float64", "1/Å", "RMS distance |q - hkl·A| of the indexed peaks"),
])

INDEXING_SCORES = Schema("indexing_scores", "one row per found lattice, against the truth", [
    _FRAME, _CRYSTAL,
    _c("true_crystal", "int64", "", "simulated crystal it matched best (-1: none)"),
    _c("misorientation_deg", "float64", "deg",
       "rotation to that crystal, up to the lattice symmetry (NaN: none)"),
    _c("correct", "bool", "", "right cell and orientation, first solution for the crystal"),
    _c("false", "bool", "", "not correct: blank frame, wrong lattice or a second solution"),
])

# ================================================================== integration
PREDICTIONS = Schema("predictions", "one row per predicted reflection", [
    _FRAME, _CRYSTAL, *_hkl(),
    _c("fs", "float64", "px", "predicted spot centre, fast scan (centres at +0.5)"),
    _c("ss", "float64", "px", "predicted spot centre, slow scan (centres at +0.5)"),
    _PANEL,
    _c("d_A", "float64", "Å", "resolution"),
    _c("partiality", "float64", "", "model partiality, 0..1"),
    _c("excitation_error_invA", "float64", "1/Å",
       "s = k0 - |q + k0 ẑ|, > 0 inside the Ewald sphere"),
])

REFLECTIONS = Schema("reflections", "one row per integrated reflection of one crystal", [
    _FRAME, _CRYSTAL, *_hkl(),
    _c("I", "float64", "ADU", "summed intensity above background"),
    _c("sigma", "float64", "ADU", "σ(I)"),
    _c("bg", "float64", "ADU", "mean background per pixel"),
    _c("peak", "float64", "ADU", "largest usable peak pixel"),
    _c("fs", "float64", "px", "predicted position, fast scan (centres at +0.5)"),
    _c("ss", "float64", "px", "predicted position, slow scan (centres at +0.5)"),
    _PANEL,
    _c("d_A", "float64", "Å", "resolution"),
    _c("partiality", "float64", "", "model partiality, 0..1"),
    _c("excitation_error_invA", "float64", "1/Å", "s = k0 - |q + k0 ẑ|"),
    _c("n_peak_px", "int32", "px", "usable pixels summed in the peak"),
    _c("n_bg_px", "int32", "px", "usable background pixels"),
    _c("flag_masked", "bool", "", "a peak pixel is masked or bad"),
    _c("flag_saturated", "bool", "", "a peak pixel is saturated"),
    _c("flag_edge", "bool", "", "the rings reach beyond the panel"),
    _c("flag_overlap", "bool", "", "peak region shared with another reflection"),
])

# ===================================================================== pipeline
FRAMES = Schema("frames", "one row per frame", [
    _FRAME,
    _c("run", "str", "", "run name"),
    _c("event", "str", "", "CrystFEL-style event id within the file (//<index>)"),
    _c("filename", "str", "", "file the frame was read from"),
    _c("status", "str", "", "ok or failed"),
    _c("error", "str", "", "error of a failed frame (empty when ok)"),
    _c("n_peaks", "int64", "", "peaks found"),
    _c("hit", "bool", "", "min_peaks <= n_peaks (<= max_peaks when set)"),
    _c("indexed", "bool", "", "at least one crystal indexed"),
    _c("n_crystals", "int64", "", "lattices indexed"),
    _c("n_reflections", "int64", "", "reflections integrated"),
    _c("resolution_A", "float64", "Å",
       "highest-resolution shell with mean I/σ(I) >= 1 (NaN if none)"),
    _c("solvent_ratio", "float64", "", "mean intensity at the water ring / at low angle"),
    _c("worker", "int64", "", "worker that processed the frame"),
    _c("read_s", "float64", "s", "reading and decompressing the frame (wall)"),
    _c("peaks_s", "float64", "s", "peak search (wall)"),
    _c("index_s", "float64", "s", "indexing (wall)"),
    _c("integrate_s", "float64", "s", "prediction and integration (wall)"),
    _c("total_s", "float64", "s", "the whole frame, reading included (wall)"),
])

RUN_SUMMARY = Schema("run_summary", "one row per processed run", [
    _c("frames", "int64", "", "frames in the results"),
    _c("failed", "int64", "", "frames that failed"),
    _c("hits", "int64", "", "hits"),
    _c("hit_rate", "float64", "", "hits / frames"),
    _c("indexed", "int64", "", "indexed frames"),
    _c("indexing_rate", "float64", "", "indexed / hits"),
    _c("crystals", "int64", "", "lattices indexed"),
    _c("reflections", "int64", "", "reflections integrated"),
    _c("median_resolution_A", "float64", "Å", "median per-frame resolution of indexed frames"),
    _c("ms_per_frame", "float64", "ms", "mean wall time per frame"),
    _c("wall_s", "float64", "s", "wall time of the processing call"),
])

PROFILE = Schema("profile", "one row per timed segment of a frame", [
    _FRAME,
    _c("worker", "int64", "", "worker id"),
    _c("path", "str", "", "segment path from the root, e.g. root/peak-search/pf8-rstats"),
    _c("depth", "int64", "", "0 for the root, 1 for its children, ..."),
    _c("start_s", "float64", "s", "start, seconds since the profiler's epoch"),
    _c("duration_s", "float64", "s", "wall-clock duration"),
    _c("completion", "int64", "", "order in which the frame finished (0, 1, ...)"),
])

PROFILE_BLOCKS = Schema("profile_blocks", "one row per block of records and category", [
    _c("block", "int64", "", "block number (0-based, completion order)"),
    _c("first_record", "int64", "", "completion number of the block's first record"),
    _c("n_records", "int64", "", "records in the block"),
    _c("category", "category", "", "segment name, or 'other'"),
    _c("seconds_per_frame", "float64", "s", "mean time per record in the category"),
])

# ====================================================================== merging
MERGED = Schema("merged", "one row per unique reflection", [
    *_hkl(" (reciprocal asymmetric unit; I(-): its Friedel mate)"),
    _c("I", "float64", "", "mean of the scaled observations (scale of the mean crystal)"),
    _c("sigma", "float64", "", "σ(I) = sqrt(max(variance of the observations, mean σ_i²) / n)"),
    _c("n_obs", "int64", "", "observations merged"),
    _c("d_A", "float64", "Å", "resolution"),
])

STATISTICS = Schema("statistics", "one row per resolution shell, then the overall row", [
    _c("shell", "int64", "", "shell number from low resolution (0-based); -1: all shells"),
    _c("d_max_A", "float64", "Å", "low-resolution limit of the shell"),
    _c("d_min_A", "float64", "Å", "high-resolution limit of the shell"),
    _c("n_obs", "int64", "", "observations merged into the shell's unique reflections"),
    _c("n_unique", "int64", "", "unique reflections measured"),
    _c("n_possible", "int64", "", "unique reflections possible (absences excluded)"),
    _c("completeness", "float64", "", "n_unique / n_possible (0-1)"),
    _c("multiplicity", "float64", "", "n_obs / n_unique"),
    _c("i_over_sigma", "float64", "", "mean I/σ(I) of the merged reflections"),
    _c("n_pairs", "int64", "", "reflections measured in both half data sets"),
    _c("cc_half", "float64", "", "CC1/2: Pearson CC of the two half data sets"),
    _c("cc_star", "float64", "", "CC* = sqrt(2 CC1/2 / (1 + CC1/2)); 0 where CC1/2 <= 0"),
    _c("r_split", "float64", "", "Rsplit = Σ|I1 - I2| / (√2 · ½ Σ(I1 + I2))"),
])

SCALES = Schema("scales", "one row per crystal", [
    _FRAME, _CRYSTAL,
    _c("n_obs", "int64", "", "observations selected for merging"),
    _c("n_scaled", "int64", "", "observations used in the last scale fit"),
    _c("scale", "float64", "", "linear scale G (I_obs ≈ G exp(-2 B s²) I_merged)"),
    _c("b_A2", "float64", "Å²", "relative B factor"),
    _c("reindex_op", "str", "", "operator applied to the crystal's hkl ('h,k,l': none)"),
    _c("cc", "float64", "", "CC of the crystal's scaled intensities with the merged ones"),
    _c("rejected", "bool", "", "left out of the merged data"),
    _c("reason", "str", "", "why it was rejected ('' when kept)"),
])

# ================================================================== calibration
GEOMETRY_RESIDUALS = Schema("geometry_residuals", "one row per panel", [
    _c("panel", "int64", "", "panel index in geometry.panels"),
    _c("name", "str", "", "panel name"),
    _c("group", "str", "", "rigid group the panel moved with"),
    _c("n_peaks", "int64", "", "indexed peaks on the panel used in the refinement"),
    _c("rms_before_px", "float64", "px",
       "RMS observed - predicted spot in the given geometry (orientations refined)"),
    _c("mean_dfs_before_px", "float64", "px", "mean fs residual before"),
    _c("mean_dss_before_px", "float64", "px", "mean ss residual before"),
    _c("rms_after_px", "float64", "px", "RMS residual in the refined geometry"),
    _c("mean_dfs_after_px", "float64", "px", "mean fs residual after"),
    _c("mean_dss_after_px", "float64", "px", "mean ss residual after"),
])

RING_POINTS = Schema("ring_points", "one row per control point on a powder ring", [
    _c("ring", "int64", "", "ring index in the d-spacings given (0-based)"),
    _c("d_A", "float64", "Å", "d-spacing of the ring"),
    _c("sector", "int64", "", "azimuthal sector of the point"),
    _PANEL, _FS, _SS,
    _c("intensity", "float64", "ADU", "ring signal above background in the sector"),
    _c("residual_before_deg", "float64", "deg", "2θ of the point - 2θ of the ring, given geometry"),
    _c("residual_after_deg", "float64", "deg", "the same in the calibrated geometry"),
    _c("used", "bool", "", "kept by the robust fit"),
])

# ================================================================= ground truth
TRUTH_FRAMES = Schema("truth_frames", "one row per simulated frame", [
    _FRAME,
    _c("hit", "bool", "", "at least one crystal in the beam"),
    _c("n_crystals", "int64", "", "number of lattices"),
    _c("n_reflections", "int64", "", "reflections recorded on the detector"),
    _c("solvent", "bool", "", "water ring present"),
    _c("background_scale", "float64", "", "factor applied to the whole background"),
])

TRUTH_CRYSTALS = Schema("truth_crystals", "one row per simulated lattice", [
    _FRAME, _CRYSTAL, *_cell_columns(), *_basis_columns(" (no 2π)"),
    *[_c(f"u_{i}{j}", "float64", "", f"orientation matrix U, row {i}, column {j}")
      for i in (1, 2, 3) for j in (1, 2, 3)],
    _c("scale", "float64", "", "crystal scale factor (log-normal, median 1)"),
    _c("b_factor_delta_A2", "float64", "Å²", "B factor added to the data set's"),
    _c("n_reflections", "int64", "", "reflections of this crystal on the detector"),
])

TRUTH_REFLECTIONS = Schema("truth_reflections", "one row per simulated spot", [
    _FRAME, _CRYSTAL, *_hkl(),
    _c("d_A", "float64", "Å", "resolution"),
    _c("I_true", "float64", "photons", "full reflection: fluence·scale·I·exp(-2ΔB s²)"),
    _c("partiality", "float64", "", "p = exp(-s0²/(2σ_eff²)), 0..1"),
    _c("excitation_error_invA", "float64", "1/Å", "s0 = k0 - |q + k0 ẑ|, > 0 inside"),
    _c("wavelength_A", "float64", "Å", "wavelength 1/k* the spot is drawn at"),
    _c("polarization", "float64", "", "polarization factor at the spot"),
    _c("photons", "float64", "photons", "expected photons: I_true·partiality·polarization"),
    _c("transmission", "float64", "", "beam-stop transmission at the spot centre"),
    _c("fs", "float64", "px", "spot centre, fast scan (centres at +0.5)"),
    _c("ss", "float64", "px", "spot centre, slow scan (centres at +0.5)"),
    _PANEL,
    _c("panel_name", "str", "", "panel name"),
])

TRUTH_INTENSITIES = Schema("truth_intensities", "one row per unique reflection", [
    *_hkl(" (asymmetric unit)"),
    _c("I", "float64", "", "true intensity (Wilson scale: mean ε·exp(-2B s²))"),
    _c("d_A", "float64", "Å", "resolution"),
    _c("centric", "bool", "", "centric reflection"),
    _c("epsilon", "int32", "", "epsilon factor (point-group multiplicity of hkl)"),
])

# =============================================================== CrystFEL stream
STREAM_FRAMES = Schema("stream_frames", "one row per chunk of a CrystFEL stream", [
    _c("frame", "int64", "", "'Image serial number' - 1 (chunk position if absent)"),
    _c("run", "str", "", "run name (not in the format)"),
    _c("event", "str", "", "event id as written (//12: frame 12 of the file)"),
    _c("filename", "str", "", "image file name"),
    _c("hit", "bool", "", "hit flag"),
    _c("indexed", "bool", "", "indexed_by is not none"),
    _c("n_peaks", "int64", "", "num_peaks"),
    _c("n_crystals", "int64", "", "crystal blocks in the chunk"),
    _c("resolution_A", "float64", "Å", "peak_resolution"),
    _c("status", "str", "", "not in the format"),
    _c("error", "str", "", "not in the format"),
    _c("photon_energy_eV", "float64", "eV", "photon energy"),
    _c("serial", "int64", "", "Image serial number (1-based)"),
    _c("indexed_by", "str", "", "indexing method"),
    _c("n_indexing_tries", "int64", "", "indexing attempts"),
    _c("beam_divergence_rad", "float64", "rad", "beam divergence"),
    _c("beam_bandwidth", "float64", "", "beam bandwidth (fraction)"),
    _c("camera_length_m", "float64", "m", "average camera length"),
    _c("byte_offset", "int64", "B", "offset of the chunk in the file"),
])

STREAM_CRYSTALS = CRYSTALS.extend("stream_crystals", "one row per crystal block of a stream", [
    _c("unique_axis", "str", "", "unique axis (a, b or c; missing for '*')"),
    _c("n_reflections", "int64", "", "num_reflections"),
    _c("n_saturated_reflections", "int64", "", "num_saturated_reflections"),
    _c("n_implausible_reflections", "int64", "", "num_implausible_reflections"),
    _c("det_shift_x_mm", "float64", "mm", "predict_refine detector shift x"),
    _c("det_shift_y_mm", "float64", "mm", "predict_refine detector shift y"),
])

STREAM_HEADERS = Schema("stream_headers", "one row per header value of a chunk", [
    _FRAME,
    _c("name", "str", "", "header path after header/float/, header/int/, ... or hdf5/"),
    _c("value", "float64", "", "value (NaN if not a number)"),
    _c("text", "str", "", "value as written"),
])

# ================================================================ run statistics
RESOLUTION_SHELLS = Schema("resolution_shells", "one row per non-empty resolution shell of a "
                           "frame", [
    _FRAME,
    _c("shell", "int64", "", "shell index, 0 = lowest resolution"),
    _c("d_max_A", "float64", "Å", "low-resolution edge"),
    _c("d_min_A", "float64", "Å", "high-resolution edge"),
    _c("n", "int64", "", "reflections in the shell"),
    _c("mean_i_sigma", "float64", "", "mean I/σ(I) of the shell's reflections"),
])

RUN_STATS_FRAMES = Schema("run_stats_frames", "one row per shot of the selected runs", [
    _c("run", "str", "", "run name"),
    _c("frame", "int64", "", "frame index within the run"),
    _c("shot", "int64", "", "position among the shots of the selection (the plots' x axis)"),
    _c("n_peaks", "int64", "", "strong spots found on the image"),
    _c("hit", "bool", "", "n_peaks >= min_spots"),
    _c("indexed", "bool", "", "at least one lattice indexed"),
    _c("n_crystals", "int64", "", "lattices indexed"),
    _c("multi_lattice", "bool", "", "n_crystals >= n_multiples"),
    _c("solvent_ratio", "float64", "", "water-ring over low-angle intensity"),
    _c("solvent", "bool", "", "solvent_ratio >= solvent_cutoff"),
    _c("resolution_A", "float64", "Å", "per-image resolution at mean I/σ >= i_sigma (NaN: none)"),
    _c("high_quality", "bool", "", "indexed and resolution_A <= hq_resolution"),
    _c("indexing_rate", "float64", "", "moving average of indexed (0-1)"),
    _c("solvent_rate", "float64", "", "moving average of solvent (0-1)"),
    _c("multi_lattice_rate", "float64", "", "moving average of multi_lattice (0-1)"),
    _c("high_quality_rate", "float64", "",
       "high-quality fraction of the indexed shots in the ±hq_window window (0-1)"),
])

RUN_STATS_RUNS = Schema("run_stats_runs", "one row per run (the statistics bar)", [
    _c("run", "str", "", "run name"),
    _c("first_shot", "int64", "", "shot index of the run's first shot in the selection"),
    _c("last_shot", "int64", "", "shot index of the run's last shot"),
    _c("shots", "int64", "", "images processed without error"),
    _c("failed", "int64", "", "images that failed (not counted as shots)"),
    _c("hits", "int64", "", "shots with n_peaks >= min_spots"),
    _c("indexed", "int64", "", "indexed shots"),
    _c("lattices", "int64", "", "lattices indexed in all"),
    _c("multi_lattice", "int64", "", "shots with n_crystals >= n_multiples"),
    _c("high_quality", "int64", "", "indexed shots with resolution_A <= hq_resolution"),
    _c("solvent", "int64", "", "shots with solvent"),
    _c("hit_pct", "float64", "%", "100 hits / shots"),
    _c("indexed_pct", "float64", "%", "100 indexed / shots"),
    _c("high_quality_pct", "float64", "%", "100 high_quality / shots"),
    _c("solvent_pct", "float64", "%", "100 solvent / shots"),
    _c("multi_lattice_pct", "float64", "%", "100 multi_lattice / shots"),
    _c("indexed_of_hits_pct", "float64", "%", "100 indexed / hits"),
    _c("median_resolution_A", "float64", "Å", "median per-image resolution of indexed shots"),
])

# ======================================================================== other
DATASETS = Schema("datasets", "one row per registered data set", [
    _c("name", "str", "", "registry name"),
    _c("kind", "str", "", "generated, bundled or remote"),
    _c("description", "str", "", "one line"),
    _c("cached", "bool", "", "present in the cache directory"),
])

DEMO_SUMMARY = Schema("demo_summary", "one row per reported quantity", [
    _c("quantity", "str", "", "what is reported (units in the name)"),
    _c("value", "str", "", "the value as printed"),
])

BROKER_STATUS = Schema("broker_status", "one row per run and consumer group of the broker", [
    _c("stream", "str", "", "stream key sx:<beamtime>:<source>:<run>"),
    _c("run", "str", "", "run name"),
    _c("state", "str", "", "receiving, ended (series end received) or unknown"),
    _c("frames_in", "int64", "", "frames the ingest appended"),
    _c("cached", "int64", "", "entries in the stream now (the cache)"),
    _c("group", "str", "", "consumer group (empty: no group yet)"),
    _c("consumers", "int64", "", "consumers in the group"),
    _c("delivered", "int64", "", "entries handed to the group's consumers"),
    _c("acked", "int64", "", "entries acknowledged by the group"),
    _c("pending", "int64", "", "entries delivered and not yet acknowledged"),
    _c("lag", "int64", "", "frames appended but not yet delivered to the group"),
    _c("trimmed", "int64", "", "frames trimmed from the cache before the group read them"),
    _c("rate_hz", "float64", "Hz", "frames acknowledged per second (last 10 s)"),
])

WRITER_STATUS = Schema("writer_status", "one row per NeXus writer (sxlab live write)", [
    _c("input", "str", "", "stream key the writer stores"),
    _c("group", "str", "", "its consumer group"),
    _c("stored", "int64", "", "frames in the run's data files (complete or open)"),
    _c("failed", "int64", "", "frames that could not be stored (listed in the master)"),
    _c("files", "int64", "", "data files (the last one may still be open)"),
    _c("in_open_file", "int64", "", "frames in the data file being written"),
    _c("lag", "int64", "", "frames published to the input and not yet handled"),
    _c("rate_hz", "float64", "Hz", "frames stored per second (last 10 s)"),
    _c("throughput_MBps", "float64", "MB/s", "megabytes stored per second (last 10 s)"),
])

#: Every schema by name.
SCHEMAS: dict[str, Schema] = {s.name: s for s in (
    PEAKS, ANNULI, HITS, CRYSTALS, PREDICTIONS, REFLECTIONS, FRAMES, RUN_SUMMARY, PROFILE,
    PROFILE_BLOCKS, MERGED, STATISTICS, SCALES, TRUTH_FRAMES, TRUTH_CRYSTALS,
    TRUTH_REFLECTIONS, TRUTH_INTENSITIES, STREAM_FRAMES, STREAM_CRYSTALS, STREAM_HEADERS,
    RESOLUTION_SHELLS, RUN_STATS_FRAMES, RUN_STATS_RUNS, DATASETS, DEMO_SUMMARY,
    BROKER_STATUS, WRITER_STATUS, GEOMETRY_RESIDUALS, RING_POINTS, INDEXING_SCORES)}


def get(name: str) -> Schema:
    """The schema of table ``name`` (``"peaks"``, ``"crystals"``, ...).

    Examples
    --------
    >>> get("reflections").names[:5]
    ('frame', 'crystal', 'h', 'k', 'l')
    """
    try:
        return SCHEMAS[name]
    except KeyError:
        raise KeyError(f"no table {name!r}; tables: {sorted(SCHEMAS)}") from None


_MARKER = re.compile(r"^(?P<indent>[ \t]*)\[columns: (?P<name>\w+)\][ \t]*$", re.MULTILINE)


def documented(obj):
    """Decorator: replace ``[columns: <table>]`` lines of a docstring by the column table.

    The numpydoc Returns section of a function that returns a table names it with such a
    line; the decorator writes the schema's columns there (:meth:`Schema.rst`), at the
    line's indentation, so the documentation lists exactly the declared columns.

    Examples
    --------
    >>> @documented
    ... def f():
    ...     '''Hits.
    ...
    ...     [columns: hits]
    ...     '''
    >>> "n_peaks" in f.__doc__
    True
    """
    doc = obj.__doc__
    if doc:
        def table(m):
            return "\n".join(m["indent"] + line if line else line
                             for line in get(m["name"]).rst().splitlines())

        new = _MARKER.sub(table, doc)
        if new != doc:
            obj.__doc__ = new
    return obj

