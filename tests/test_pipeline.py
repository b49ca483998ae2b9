import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import sxlab as sx
from sxlab.params import Params
from sxlab.pipeline import prepare, process_frame, process_run
from sxlab.results import Results

LYSO = sx.UnitCell(79.1, 79.1, 37.9, 90, 90, 90, space_group="P 43 21 2")
PARAMS = Params(cell=LYSO).replace(peaks={"adc_threshold": 3.0, "min_snr": 6.0},
                                   mask={"beamstop_radius_px": 33.0,
                                         "beamstop_rod_width_px": 18.0,
                                         "beamstop_rod_angle_deg": 30.0})
# Columns that legitimately differ between executors: timings and worker ids.
VOLATILE = {"worker", "read_s", "peaks_s", "index_s", "integrate_s", "total_s"}


@pytest.fixture(scope="module")
def sample():
    return sx.datasets.load("lysozyme-sample", progress=False)


@pytest.fixture(scope="module")
def serial(sample):
    return process_run(sample, PARAMS, executor="serial", progress=False)


def _stable(table: pd.DataFrame) -> pd.DataFrame:
    return table[[c for c in table.columns if c not in VOLATILE]].reset_index(drop=True)


def _assert_same(a: Results, b: Results):
    for kind in ("frames", "peaks", "crystals", "reflections"):
        pd.testing.assert_frame_equal(_stable(getattr(a, kind)), _stable(getattr(b, kind)))


def test_serial_results_against_truth(serial):
    truth = sx.datasets.truth("lysozyme-sample")
    f = serial.frames
    assert f.frame.tolist() == list(range(8))
    assert (f.status == "ok").all()
    assert f.hit.tolist() == truth.frames.hit.tolist()
    assert f.indexed[f.hit].all()
    assert (f.n_reflections[f.indexed] > 50).all()
    for col in ("a", "b"):
        np.testing.assert_allclose(serial.crystals[col], 79.1, rtol=0.005)
    np.testing.assert_allclose(serial.crystals["c"], 37.9, rtol=0.005)
    # The peaks carry the indexer's assignment: as many per crystal as it says it indexed.
    assigned = serial.peaks[serial.peaks.crystal >= 0].groupby(["frame", "crystal"]).size()
    indexed = serial.crystals.set_index(["frame", "crystal"]).n_peaks_indexed
    pd.testing.assert_series_equal(assigned, indexed, check_names=False)
    assert (serial.peaks[~serial.peaks.frame.isin(f.frame[f.indexed])].crystal == -1).all()
    # Profile: every processed frame has its root and peak-search segments.
    paths = serial.profile.groupby("frame").path.apply(set)
    assert all({"root", "root/peak-search"} <= p for p in paths)
    s = serial.summary().iloc[0]
    assert s.frames == 8 and s.hits == 4 and s.indexed == 4
    assert "Results" in serial._repr_html_()


def test_profile_records_the_papers_segments_and_draws_them(serial):
    import matplotlib

    matplotlib.use("Agg")
    import sxlab.plots

    prof = serial.profile
    f = serial.frames.set_index("frame")
    paths = prof.groupby("frame").path.apply(set)
    stages = {"root/peak-search/pf8-rstats", "root/peak-search/pf8-search"}
    index = {f"root/index/{name}" for name in (
        "asdf-triplets", "asdf-search", "asdf-findcell", "prerefine-cell-check", "refine",
        "postrefine-cell-check")}
    for frame, found in paths.items():
        assert stages <= found, frame
        assert (index <= found) == bool(f.loc[frame, "indexed"]), frame
    # Children fit in their parents; the frames table's stage times are the segments'.
    dur = prof.set_index(["frame", "path"]).duration_s
    for frame in f.index[f.indexed]:
        d = dur.loc[frame]
        assert d[list(index)].sum() <= d["root/index"] * (1 + 1e-9)
        assert d[list(stages)].sum() <= d["root/peak-search"] * (1 + 1e-9)
        assert f.loc[frame, "index_s"] == d["root/index"]
        assert f.loc[frame, "peaks_s"] == d["root/peak-search"]
    ax = sxlab.plots.profile(prof, block=2, top=20, level=2)
    labels = ax.get_legend_handles_labels()[1]
    assert {"peak-search/pf8-rstats", "index/asdf-search", "index/refine"} <= set(labels)
    matplotlib.pyplot.close("all")


def test_two_workers_and_dask_give_identical_tables(sample, serial, tmp_path):
    two = process_run(sample, PARAMS, executor="local", n_workers=2, chunk_size=2,
                      progress=False)
    _assert_same(serial, two)
    assert set(two.frames.worker) == {0, 1}
    import distributed
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        viadask = process_run(sample, PARAMS, executor=client, chunk_size=3, progress=False)
    _assert_same(serial, viadask)


def test_process_frame_by_hand_equals_the_run(sample, serial):
    ctx = prepare(sample.geometry, PARAMS)
    image, bad = sample.read(4)
    res = process_frame(image, bad, ctx)
    assert res.frame["frame"] == 4
    pd.testing.assert_frame_equal(_stable(res.peaks),
                                  _stable(serial.peaks[serial.peaks.frame == 4]))
    pd.testing.assert_frame_equal(_stable(res.reflections),
                                  _stable(serial.reflections[serial.reflections.frame == 4]))


def test_stages_can_be_switched_off(sample):
    p = PARAMS.replace(stages={"index": False, "integrate": False})
    res = process_run(sample[:3], p, executor="serial", progress=False)
    assert len(res.frames) == 3 and len(res.peaks) > 0
    assert len(res.crystals) == 0 and len(res.reflections) == 0
    assert not res.frames.indexed.any()


def test_output_directory_stream_and_reload(sample, serial, tmp_path):
    out = tmp_path / "out"
    res = process_run(sample, PARAMS, executor="serial", out=out, progress=False)
    _assert_same(serial, res)
    for name in ("frames.parquet", "peaks.parquet", "crystals.parquet",
                 "reflections.parquet", "profile.parquet", "results.stream", "params.toml",
                 "params.sha256", "versions.json", "geometry.geom"):
        assert (out / name).is_file(), name
    assert (out / "params.sha256").read_text().strip() == PARAMS.digest()
    _assert_same(serial, Results.load(out))
    from sxlab.io.stream import read_stream

    stream = read_stream(out / "results.stream")
    assert len(stream.frames) == 8
    assert len(stream.crystals) == len(serial.crystals)
    assert len(stream.reflections) == len(serial.reflections)
    np.testing.assert_array_equal(stream.reflections[["h", "k", "l"]].to_numpy(),
                                  serial.reflections[["h", "k", "l"]].to_numpy())
    # Different parameters into the same directory are refused.
    with pytest.raises(ValueError, match="other parameters"):
        process_run(sample, PARAMS.replace(hits={"min_peaks": 5}), executor="serial",
                    out=out, progress=False)


def test_a_corrupt_frame_is_recorded_and_processing_goes_on(sample, tmp_path):
    import h5py

    src = Path(sample.files[0]).parent
    dst = tmp_path / "data"
    shutil.copytree(src, dst)
    data_file = next(dst.glob("*_data_000001.h5"))
    with h5py.File(data_file, "r") as f:
        info = f["/entry/data/data"].id.get_chunk_info(5)
    with open(data_file, "r+b") as fh:  # break the bitshuffle framing of frame 5
        fh.seek(info.byte_offset + 8)
        fh.write(b"\xff\xff\xff\xff")
    run = sx.open_run(next(dst.glob("*_master.h5")))
    res = process_run(run, PARAMS, executor="serial", progress=False)
    f = res.frames.set_index("frame")
    assert len(f) == 8
    assert f.loc[5, "status"] == "failed" and "frame 5" in f.loc[5, "error"]
    assert (f.drop(index=5).status == "ok").all()
    assert f.drop(index=5).indexed.sum() >= 3


_KILL_SCRIPT = textwrap.dedent("""
    import sys
    import sxlab as sx
    from sxlab.params import Params
    from sxlab.pipeline import process_run

    run = sx.datasets.load("lysozyme-demo", progress=False)[:{n}]
    params = Params.load(sys.argv[2])
    process_run(run, params, executor="serial", out=sys.argv[1], chunk_size=1,
                progress=False)
""")


def test_killed_run_resumes_with_every_frame_once(tmp_path):
    n = 30
    out = tmp_path / "out"
    ptoml = PARAMS.save(tmp_path / "trial.toml")
    script = tmp_path / "run.py"
    script.write_text(_KILL_SCRIPT.format(n=n))
    env = dict(os.environ)
    proc = subprocess.Popen([sys.executable, str(script), str(out), str(ptoml)], env=env)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            done = list((out / "parts").glob("frames-*.parquet")) if out.exists() else []
            if len(done) >= 5:
                break
            if proc.poll() is not None:
                pytest.fail(f"the run ended before it could be killed (rc {proc.returncode})")
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    committed = len(list((out / "parts").glob("frames-*.parquet")))
    assert 5 <= committed < n
    run = sx.datasets.load("lysozyme-demo", progress=False)[:n]
    res = process_run(run, PARAMS, executor="serial", out=out, chunk_size=1, progress=False)
    assert res.frames.frame.tolist() == list(range(n))
    assert not res.frames.frame.duplicated().any()
    assert not res.peaks.duplicated(["frame", "panel", "fs", "ss"]).any()
    reference = process_run(run, PARAMS, executor="serial", progress=False)
    _assert_same(reference, res)


@pytest.mark.parametrize("preset, import_first, expected", [
    (None, False, "system"),       # the command line: before pandas is imported
    (None, True, "system"),        # pyarrow already loaded: switched from then on
    ("jemalloc", False, "jemalloc"),  # a user's choice is kept
])
def test_command_line_processes_allocate_arrow_memory_with_malloc(preset, import_first,
                                                                  expected):
    code = ("import pyarrow\n" if import_first else "") + (
        "from sxlab.executors import system_arrow_allocator\n"
        "system_arrow_allocator()\n"
        "import pandas, pyarrow\n"
        "print(pyarrow.default_memory_pool().backend_name)\n")
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    if preset:
        env["ARROW_DEFAULT_MEMORY_POOL"] = preset
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == expected
