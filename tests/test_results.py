"""Tests for sxlab.results: committed parts, incremental reading, every frame once."""

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import sxlab as sx
from sxlab import tables
from sxlab.results import KINDS, Results, ResultsReader, ResultsWriter
from sxlab.tables import TableError

PARAMS = sx.Params().replace(hits={"min_peaks": 2})


def chunk(frames, n_peaks=3):
    """The five tables of a chunk of frames with ``n_peaks`` peaks each."""
    frames = list(frames)
    f = tables.FRAMES.make({"frame": frames, "status": ["ok"] * len(frames),
                            "run": ["r"] * len(frames), "n_peaks": [n_peaks] * len(frames),
                            "hit": [True] * len(frames)}, fill_missing=True)
    rows = np.repeat(frames, n_peaks)
    p = tables.PEAKS.make({"frame": rows, "panel": 0, "fs": np.arange(rows.size) + 0.5,
                           "ss": np.full(rows.size, 3.5)}, fill_missing=True)
    return {"frames": f, "peaks": p}


def test_write_poll_finish(tmp_path):
    det = sx.builtin_geometry("eiger1m")
    out = tmp_path / "out"
    reader = ResultsReader(out)
    assert all(len(t) == 0 for t in reader.poll().values())  # nothing yet, no directory
    writer = ResultsWriter(out, PARAMS, det)
    assert writer.done == set()
    assert writer.write(**chunk([4, 5])) == "000000004-000000005"
    new = reader.poll()
    assert new["frames"].frame.tolist() == [4, 5] and len(new["peaks"]) == 6
    for kind in KINDS:
        tables.get(kind).validate(new[kind])
    writer.write(**chunk([0, 1, 2]))
    new = reader.poll()
    assert new["frames"].frame.tolist() == [0, 1, 2]  # only what was committed since
    assert reader.parts == ["000000004-000000005", "000000000-000000002"]
    assert all(len(t) == 0 for t in reader.poll().values())
    res = writer.finish(wall_s=1.5)
    assert isinstance(res, Results) and res.frames.frame.tolist() == [0, 1, 2, 4, 5]
    assert res.wall_s == 1.5 and res.geometry == det and res.params == PARAMS
    for kind in KINDS:
        pd.testing.assert_frame_equal(pd.read_parquet(out / f"{kind}.parquet"),
                                      res.table(kind))
    stream = sx.read_stream(out / "results.stream")
    assert stream.frames.frame.tolist() == [0, 1, 2, 4, 5] and len(stream.peaks) == 15
    loaded = Results.load(out)
    pd.testing.assert_frame_equal(loaded.peaks, res.peaks)
    assert loaded.geometry == det


def test_only_committed_parts_count_and_crashed_writers_leave_nothing(tmp_path):
    out = tmp_path / "out"
    writer = ResultsWriter(out, PARAMS)
    writer.write(**chunk([0]))
    parts = out / "parts"
    # A writer that died after its peaks but before its frames file: not committed.
    chunk([7])["peaks"].to_parquet(parts / "peaks-000000007-000000007.parquet")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    pid = int(dead.stdout)
    from sxlab import results as results_module

    stale = parts / f"frames-x.parquet.{results_module._HOST}.{pid}.tmp"
    stale.write_text("half a file")
    mine = parts / f"frames-y.parquet.{results_module._HOST}.{os.getpid()}.tmp"
    mine.write_text("in progress")
    reopened = ResultsWriter(out, PARAMS)
    assert reopened.done == {0}
    assert not stale.exists() and mine.exists()  # a live process's file is left alone
    assert ResultsReader(out).poll()["frames"].frame.tolist() == [0]
    assert Results.load(out).peaks.frame.unique().tolist() == [0]


def test_several_tagged_writers_and_frames_found_twice(tmp_path):
    out = tmp_path / "out"
    a = ResultsWriter(out, PARAMS, tag="w0")
    b = ResultsWriter(out, PARAMS, tag="w1")
    assert a.write(**chunk([0, 1])) == "000000000-000000001-w0"
    b.write(**chunk([2]))
    b.write(**chunk([1, 3], n_peaks=5))  # frame 1 again (handed to a second worker)
    reader = ResultsReader(out)
    got = reader.poll()
    assert got["frames"].frame.tolist() == [0, 1, 2, 3]
    assert got["peaks"].groupby("frame").size().tolist() == [3, 3, 3, 5]
    assert reader.duplicates == [("000000001-000000003-w1", 1)]
    assert ResultsWriter(out, PARAMS).done == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="tag"):
        ResultsWriter(out, PARAMS, tag="a/b")


def test_bad_parts_are_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "out"
    writer = ResultsWriter(out, PARAMS)
    c = chunk([0])
    with pytest.raises(TableError, match="peaks table from part peaks.*'snr' is missing"):
        writer.write(c["frames"], c["peaks"].drop(columns="snr"))
    with pytest.raises(ValueError, match=r"frames \[9\]"):
        writer.write(c["frames"], c["peaks"].assign(frame=9))
    with pytest.raises(ValueError, match="at least one frame"):
        writer.write(tables.FRAMES.empty())
    assert list((out / "parts").iterdir()) == []
    with pytest.raises(ValueError, match="other parameters"):
        ResultsWriter(out, PARAMS.replace(hits={"min_peaks": 3}))
    ResultsWriter(out, PARAMS.replace(hits={"min_peaks": 3}), overwrite=True)


def test_parts_of_the_earlier_layout_are_read(tmp_path):
    """Parts written before sxlab.tables (text as object, panel int64) still read."""
    out = tmp_path / "out"
    ResultsWriter(out, PARAMS)
    c = chunk([3])
    old = {k: t.astype({col: object for col in t.columns if str(t[col].dtype) == "str"})
           for k, t in c.items()}
    old["peaks"] = old["peaks"].astype({"panel": "int64"})
    for kind in KINDS:
        t = old.get(kind, tables.get(kind).empty())
        t.to_parquet(out / "parts" / f"{kind}-000000003-000000003.parquet", index=False)
    got = ResultsReader(out).poll()
    tables.PEAKS.validate(got["peaks"])
    assert got["frames"].run.tolist() == ["r"]
