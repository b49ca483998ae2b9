"""Every public function that returns a table follows its declaration in sxlab.tables.

Each is called on the demo data (the bundled lysozyme sample: the first frames of the
lysozyme-demo recipe) and on an empty frame; every result is checked against its schema,
again after a round trip through Parquet, and so are the tables the CrystFEL stream
reader and a batch output directory give back. A function whose documentation lists a
table's columns (``@tables.documented``) must appear here.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import numpy as np
import pandas as pd
import pytest

import sxlab as sx
from sxlab import tables

LYSO = sx.UnitCell(79.1, 79.1, 37.9, 90, 90, 90, space_group="P 43 21 2")

#: Every public function or method documented with a column table, and its table(s).
COVERED = {
    "sxlab.peaks.find_peaks": "peaks",
    "sxlab.peaks.PeakFinder.__call__": "peaks",
    "sxlab.peaks.PeakFinder.annulus_stats": "annuli",
    "sxlab.hits.hit_table": "hits",
    "sxlab.indexing.indexer.index": "crystals",
    "sxlab.indexing.indexer.Indexer.__call__": "crystals",
    "sxlab.indexing.indexer.Indexer.index": "crystals, peaks",
    "sxlab.integration.predict": "predictions",
    "sxlab.integration.Integrator.predict": "predictions",
    "sxlab.integration.Integrator.__call__": "reflections",
    "sxlab.integration.integrate": "reflections",
    "sxlab.integration.resolution_shells": "resolution_shells",
    "sxlab.merging.merge": "merged, statistics, scales",
    "sxlab.merging.merging_statistics": "statistics",
    "sxlab.profiling.Profiler.table": "profile",
    "sxlab.profiling.combine_profiles": "profile",
    "sxlab.profiling.read_crystfel_profile": "profile",
    "sxlab.profiling.profile_blocks": "profile_blocks",
    "sxlab.results.Results.summary": "run_summary",
    "sxlab.simulate.Truth": "truth tables",
    "sxlab.datasets.list_datasets": "datasets",
    "sxlab.demo.summarize": "demo_summary",
    "sxlab.io.mtz.read_mtz": "merged",
    "sxlab.io.crystfel_hkl.read_hkl": "merged",
    "sxlab.live.broker.Broker.status": "broker_status",
    "sxlab.calibration.stills.refine_geometry": "geometry_residuals, crystals",
    "sxlab.calibration.rings.calibrate_rings": "ring_points",
    "sxlab.indexing.scoring.score_indexing": "indexing_scores",
}


def _documented_objects():
    """Qualified names of public functions, methods and classes with a column table."""
    marker = "column"
    found = set()
    for info in pkgutil.walk_packages(sx.__path__, "sxlab."):
        if any(part.startswith("_") for part in info.name.split(".")[1:]):
            continue
        if info.name.startswith(("sxlab.plots", "sxlab.widgets", "sxlab.experiment.migrations")):
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            candidates = [(f"{module.__name__}.{name}", obj)]
            if inspect.isclass(obj):
                candidates += [(f"{module.__name__}.{name}.{m}", f)
                               for m, f in vars(obj).items()
                               if (not m.startswith("_") or m == "__call__") and callable(f)]
            for qual, f in candidates:
                doc = inspect.getdoc(f) or ""
                if any(line.split()[:4] == [marker, "dtype", "unit", "meaning"]
                       for line in doc.splitlines()):
                    found.add(qual)
    return found


def test_every_documented_table_function_is_checked_here():
    documented = _documented_objects()
    assert documented, "no documented table function found: the scan is broken"
    missing = sorted(documented - set(COVERED))
    assert not missing, f"functions returning tables not checked here: {missing}"
    stale = sorted(set(COVERED) - documented)
    assert not stale, f"listed here but not documented with their columns: {stale}"


def check(df: pd.DataFrame, schema: tables.Schema, what: str, *, extra: bool = False):
    """The table follows its schema, also after a Parquet round trip."""
    schema.validate(df, extra=extra, where=what)
    back = pd.read_parquet(_parquet(df))
    schema.validate(schema.cast(back) if "category" in schema.dtypes.values() else back,
                    extra=extra, where=f"{what} via Parquet")
    return df


def _parquet(df):
    import io

    buf = io.BytesIO()
    plain = df.copy()
    plain.attrs = {}  # attrs are not part of the table (the demo's carry a DataFrame)
    plain.to_parquet(buf, index=False)
    buf.seek(0)
    return buf


@pytest.fixture(scope="module")
def demo():
    run = sx.datasets.load("lysozyme-sample", progress=False)
    truth = sx.datasets.truth("lysozyme-sample")
    hit = int(truth.frames.query("hit").frame.iloc[0])
    image, bad = run.read(hit)
    return run, truth, hit, image, bad


@pytest.mark.parametrize("empty", [False, True], ids=["demo frame", "empty frame"])
def test_stage_functions_on_a_frame(demo, empty, tmp_path):
    run, truth, hit, image, bad = demo
    geom = run.geometry
    if empty:
        image = image * 0
    mask = sx.masks.build_mask(geom, sx.masks.MaskParams(beamstop_radius_px=36))
    finder = sx.PeakFinder(geom, mask, adc_threshold=3.0, min_snr=6.0)
    peaks = check(finder(image, bad, frame=hit), tables.PEAKS, "PeakFinder")
    assert (len(peaks) == 0) == empty
    check(sx.find_peaks(image, geom, mask, bad=bad, frame=hit, adc_threshold=3.0,
                        min_snr=6.0), tables.PEAKS, "find_peaks")
    check(finder.annulus_stats(image, bad), tables.ANNULI, "annulus_stats")
    check(sx.hit_table(peaks, [hit]), tables.HITS, "hit_table")
    indexer = sx.Indexer(geom, LYSO)
    crystals = check(indexer(peaks), tables.CRYSTALS, "Indexer")
    assert (len(crystals) == 0) == empty
    indexed = indexer.index(peaks)
    check(indexed.crystals, tables.CRYSTALS, "Indexer.index crystals")
    check(indexed.peaks, tables.PEAKS, "Indexer.index peaks")
    check(sx.index(peaks, geom, LYSO), tables.CRYSTALS, "index")
    integrator = sx.Integrator(geom, mask, radii=(3, 4, 7))
    pred = check(integrator.predict(crystals), tables.PREDICTIONS, "Integrator.predict")
    check(sx.predict(crystals, geom), tables.PREDICTIONS, "predict")
    refl = check(integrator(image, crystals, bad), tables.REFLECTIONS, "Integrator")
    check(integrator(image, bad=bad, predictions=pred), tables.REFLECTIONS,
          "Integrator(predictions=)")
    check(sx.integrate(image, geom, crystals, mask=mask, bad=bad), tables.REFLECTIONS,
          "integrate")
    check(sx.integration.resolution_shells(refl), tables.RESOLUTION_SHELLS,
          "resolution_shells")
    # the profile of the frame
    prof = sx.Profiler(worker=2)
    with prof.frame(hit):
        with prof.section("peak-search"):
            finder(image, bad)
        with prof.section("index"):
            indexer.index(peaks)
    table = check(prof.table(), tables.PROFILE, "Profiler.table")
    other = sx.Profiler(worker=3, epoch_ns=prof.epoch_ns)
    with other.frame(hit + 1):
        pass
    check(sx.profiling.combine_profiles([table, other.table()]), tables.PROFILE,
          "combine_profiles")
    check(sx.profiling.profile_blocks(table, block=1), tables.PROFILE_BLOCKS,
          "profile_blocks")
    check(sx.read_crystfel_profile(sx.profiling.to_crystfel_profile(table)), tables.PROFILE,
          "read_crystfel_profile")


def test_merging_and_merged_files(demo, tmp_path):
    run, truth, *_ = demo
    res = sx.process_run(run, sx.Params(cell=LYSO).replace(
        peaks={"adc_threshold": 3.0, "min_snr": 6.0}), executor="serial", progress=False)
    for reflections in (res.reflections, res.reflections.iloc[:0]):
        result = sx.merge(reflections, LYSO, scale=False, n_shells=4)
        for name, schema in (("merged", tables.MERGED), ("stats", tables.STATISTICS),
                             ("scales", tables.SCALES), ("half1", tables.MERGED),
                             ("half2", tables.MERGED)):
            check(getattr(result, name), schema, f"merge {name}")
        check(sx.merging_statistics(result.merged, result.half1, result.half2, LYSO,
                                    n_shells=4), tables.STATISTICS, "merging_statistics")
    result = sx.merge(res.reflections, LYSO, scale=False)
    check(sx.read_mtz(sx.write_mtz(result.merged, tmp_path / "m.mtz")), tables.MERGED,
          "read_mtz")
    sx.write_hkl(result.merged, tmp_path / "m.hkl")
    check(sx.read_hkl(tmp_path / "m.hkl", cell=LYSO), tables.MERGED, "read_hkl")


def test_batch_directory_stream_truth_and_summaries(demo, tmp_path):
    run, truth, *_ = demo
    out = tmp_path / "out"
    params = sx.Params(cell=LYSO).replace(peaks={"adc_threshold": 3.0, "min_snr": 6.0})
    res = sx.process_run(run[:4], params, executor="serial", out=out, progress=False)
    for source in (res, sx.Results.load(out)):
        for kind in ("frames", "peaks", "crystals", "reflections", "profile"):
            check(getattr(source, kind), tables.get(kind), f"Results.{kind}")
        check(source.summary(), tables.RUN_SUMMARY, "Results.summary")
    for kind in ("frames", "peaks", "crystals", "reflections", "profile"):
        tables.get(kind).validate(pd.read_parquet(out / f"{kind}.parquet"), where=kind)
        for part in (out / "parts").glob(f"{kind}-*.parquet"):
            tables.get(kind).validate(pd.read_parquet(part), where=str(part))
    stream = sx.read_stream(out / "results.stream")
    for name, schema in (("frames", tables.STREAM_FRAMES), ("peaks", tables.PEAKS),
                         ("crystals", tables.STREAM_CRYSTALS),
                         ("reflections", tables.REFLECTIONS),
                         ("headers", tables.STREAM_HEADERS)):
        check(getattr(stream, name), schema, f"read_stream {name}")
    assert len(stream.crystals) == len(res.crystals) > 0
    # ground truth, fresh and read back
    info = sx.datasets.info("lysozyme-sample")
    for source in (truth, sx.simulate.Truth.load(info.registry.parent / info.spec["path"])):
        for name in ("frames", "crystals", "reflections", "intensities"):
            check(getattr(source, name), tables.get(f"truth_{name}"), f"Truth.{name}")
    empty = sx.datasets.simulator("lysozyme-sample")
    ft = empty.frame_truth(int(truth.frames.query("not hit").frame.iloc[0]))
    check(ft.crystals, tables.TRUTH_CRYSTALS, "empty frame truth crystals")
    check(ft.reflections, tables.TRUTH_REFLECTIONS, "empty frame truth reflections")
    check(sx.datasets.list_datasets(), tables.DATASETS, "list_datasets")
    check(sx.demo.summarize("lysozyme-sample", progress=False, executor="serial"),
          tables.DEMO_SUMMARY, "demo.summarize")
    st = sx.runstats.run_stats(res.frames, min_spots=16)
    check(st.frames, tables.RUN_STATS_FRAMES, "run_stats frames", extra=True)
    check(st.runs, tables.RUN_STATS_RUNS, "run_stats runs")
    assert np.all(res.frames.frame.to_numpy() == np.arange(4))


def test_calibration_and_indexing_scores(demo):
    from sxlab.calibration import calibrate_rings, refine_geometry
    from sxlab.indexing import score_indexing
    from sxlab.simulate import simulate_powder

    run, truth, *_ = demo
    params = sx.Params(cell=LYSO).replace(peaks={"adc_threshold": 3.0, "min_snr": 6.0})
    res = sx.process_run(run[:12], params, executor="serial", progress=False)
    assert len(res.crystals) >= 3
    _, report = refine_geometry(res, run.geometry, LYSO, refine="beam", n_cycles=1)
    check(report.panels, tables.GEOMETRY_RESIDUALS, "refine_geometry panels")
    check(report.crystals, tables.CRYSTALS, "refine_geometry crystals")
    for crystals, what in ((res.crystals, "demo"), (res.crystals.iloc[:0], "no crystal")):
        scores = check(score_indexing(crystals, truth.crystals, LYSO),
                       tables.INDEXING_SCORES, f"score_indexing, {what}")
        assert len(scores) == len(crystals)
    det = sx.builtin_geometry("eiger1m", clen=0.2, wavelength_A=1.0)
    data, rings = simulate_powder(det, d_spacing_A=58.38, seed=3, n_orders=8)
    _, rep = calibrate_rings(data.astype(float), det, rings.d_A, bad=data == 65535,
                             mask=sx.mask_beamstop(det, 40), refine="beam")
    check(rep.points, tables.RING_POINTS, "calibrate_rings points")
    assert len(rep.points) > 0


def test_broker_status(redis_url):
    from sxlab.live.broker import Broker, ConsumerGroup

    with Broker(redis_url, beamtime="contract") as broker:
        check(broker.status(), tables.BROKER_STATUS, "Broker.status, no run")
        key = broker.key("run0001")
        broker.register_run(key)
        check(broker.status(), tables.BROKER_STATUS, "Broker.status, run without group")
        for i in range(3):
            broker.publish(key, {"frame": i})
        group = ConsumerGroup(broker.client, key, "process")
        group.ack([e.id for e in group.read(2, block_s=None)])
        status = check(broker.status(key), tables.BROKER_STATUS, "Broker.status, a group")
        assert status.group.tolist() == ["process"]
