"""Tests for sxlab.tables: the schema helpers themselves."""

import io
import re

import numpy as np
import pandas as pd
import pytest

from sxlab import tables
from sxlab.tables import Column, Schema, TableError

DEMO = Schema("demo", "one row per thing", [
    Column("frame", "int64", "", "frame"),
    Column("panel", "int16", "", "panel"),
    Column("d_A", "float64", "Å", "resolution"),
    Column("name", "str", "", "a name"),
    Column("ok", "bool", "", "a flag"),
    Column("h", "int32", "", "index", fill=0),
])


def test_make_casts_every_column_in_order():
    t = DEMO.make({"name": ["a", None], "frame": [1, 2], "panel": [0, 3], "d_A": [2, 3],
                   "ok": [1, 0], "h": [5, 6]})
    assert list(t.columns) == list(DEMO.names)
    assert t.dtypes.astype(str).tolist() == ["int64", "int16", "float64", "str", "bool",
                                             "int32"]
    assert t["name"].isna().tolist() == [False, True]
    assert DEMO.validate(t) is t


def test_make_rejects_unknown_and_missing_columns_unless_filled():
    with pytest.raises(TableError, match=r"demo.*unknown columns \['x'\]"):
        DEMO.make({"frame": [1], "x": [2]})
    with pytest.raises(TableError, match="not given"):
        DEMO.make({"frame": [1]})
    t = DEMO.make({"frame": [1, 2]}, fill_missing=True)
    assert t["panel"].tolist() == [-1, -1] and t["h"].tolist() == [0, 0]
    assert t["d_A"].isna().all() and t["name"].isna().all() and not t["ok"].any()
    DEMO.validate(t)


def test_empty_keeps_types_and_concat():
    e = DEMO.empty()
    assert len(e) == 0 and e.dtypes.astype(str).tolist() == list(DEMO.dtypes.values())
    a = DEMO.make({"frame": [1], "panel": [0], "d_A": [1.5], "name": ["x"], "ok": [True],
                   "h": [1]})
    both = DEMO.concat([a, e, None, a.assign(frame=2)])
    assert both["frame"].tolist() == [1, 2] and both.index.tolist() == [0, 1]
    DEMO.validate(both)
    DEMO.validate(DEMO.concat([]))
    # concat casts back what a plain pandas operation widened
    widened = a.astype({"panel": "int64"})
    assert str(DEMO.concat([widened])["panel"].dtype) == "int16"


def test_validate_names_every_problem():
    bad = pd.DataFrame({"frame": [1.0], "d_A": [1.0], "extra": [0]})
    with pytest.raises(TableError) as err:
        DEMO.validate(bad, where="x.parquet")
    msg = str(err.value)
    assert msg.startswith("demo table from x.parquet:")
    for part in ("column 'frame': dtype float64, expected int64", "'panel' is missing",
                 "undeclared columns ['extra']"):
        assert part in msg
    good = DEMO.empty()
    swapped = good[["panel", "frame", *DEMO.names[2:]]]
    assert DEMO.problems(swapped) == [f"columns in the order {list(swapped.columns)}, "
                                      f"expected {list(DEMO.names)}"]
    assert DEMO.problems(good.assign(more=1)) == ["undeclared columns ['more']"]
    assert DEMO.problems(good.assign(more=1), extra=True) == []
    assert DEMO.problems([1, 2]) == ["expected a DataFrame, got list"]


def test_parquet_round_trip_keeps_every_schema(rng):
    for schema in tables.SCHEMAS.values():
        n = 3
        data = {}
        for c in schema:
            if c.dtype == "str" or c.dtype == "category":
                data[c.name] = ["a", "b", None]
            elif c.dtype == "bool":
                data[c.name] = rng.random(n) < 0.5
            else:
                data[c.name] = rng.integers(-5, 5, n)
        t = schema.make(data)
        buf = io.BytesIO()
        t.to_parquet(buf, index=False)
        buf.seek(0)
        back = pd.read_parquet(buf)
        if any(c.dtype == "category" for c in schema):
            back = schema.cast(back)
        schema.validate(back, where=f"{schema.name}.parquet")
        pd.testing.assert_frame_equal(back, t, check_categorical=False)


def test_declarations_are_complete_and_units_follow_the_names():
    suffix_unit = {"_A": "Å", "_s": "s", "_deg": "deg", "_invA": "1/Å", "_px": "px",
                   "_eV": "eV", "_m": "m", "_mm": "mm", "_rad": "rad", "_A2": "Å²"}
    for schema in tables.SCHEMAS.values():
        assert tables.get(schema.name) is schema
        assert schema.row.startswith("one row per")
        for c in schema:
            assert re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", c.name), c.name
            assert c.meaning and "\n" not in c.meaning, (schema.name, c.name)
            for suffix, unit in suffix_unit.items():
                if c.name.endswith(suffix) and c.dtype == "float64":
                    assert c.unit == unit, (schema.name, c.name, c.unit)
    with pytest.raises(KeyError, match="no table 'nope'"):
        tables.get("nope")
    with pytest.raises(ValueError, match="dtype"):
        Column("x", "float32", "", "single precision is not a table dtype")
    with pytest.raises(ValueError, match="twice"):
        Schema("dup", "one row per x", [Column("a", "int64", "", "a")] * 2)


def test_design_contract_columns_are_declared():
    """The columns DESIGN.md's data-shape contract names, in every table it names."""
    contract = {
        "peaks": "frame panel fs ss intensity snr npix background d_A",
        "crystals": "frame crystal a b c alpha beta gamma lattice centering astar_x astar_y "
                    "astar_z bstar_x bstar_y bstar_z cstar_x cstar_y cstar_z "
                    "n_peaks_indexed method",
        "reflections": "frame crystal h k l I sigma bg fs ss panel d_A partiality",
        "frames": "frame run n_peaks hit indexed n_crystals resolution_A solvent_ratio "
                  "status error",
        "profile": "frame worker path start_s duration_s",
    }
    for name, columns in contract.items():
        declared = tables.get(name).names
        for col in columns.split():
            assert col in declared, (name, col)
    assert any(c.startswith("flag_") for c in tables.REFLECTIONS.names)
    assert any(c.endswith("_s") and c != "total_s" for c in tables.FRAMES.names)
    assert tables.PEAKS["crystal"].fill == -1 and tables.PEAKS["h"].fill == 0


def test_documented_writes_the_column_table():
    def f():
        """Do it.

        Returns
        -------
        DataFrame
            Hits:

            [columns: hits]
        """

    tables.documented(f)
    lines = f.__doc__.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("===="))
    assert lines[start].startswith(" " * 12)
    body = [line.split()[0] for line in lines[start + 3:] if line.strip() and "==" not in line]
    assert body == list(tables.HITS.names)
    assert "[columns" not in f.__doc__
    assert tables.documented(np.sum) is np.sum  # no marker: unchanged
    html = tables.PEAKS._repr_html_()
    assert "two_theta_deg" in html and "peaks" in repr(tables.PEAKS)
