"""Python-side state of the notebook widgets, on seeded and bundled data (no browser).

What a click, a paint stroke or a slider sends is fed to the widgets as the browser sends
it (custom messages and trait changes), and the resulting state is compared with the
core functions and with the plain-NumPy references of ``tests/reference/widgets.py``.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from reference import widgets as ref

import sxlab as sx
from sxlab.geometry import builtin_geometry
from sxlab.widgets import _kernels
from sxlab.widgets._frame import code_colour
from sxlab.widgets._layout import Layout, codes

CELL = sx.UnitCell(79.1, 79.1, 37.9, 90, 90, 90, space_group="P 43 21 2")
PARAMS = sx.Params(peaks=sx.PeakFinderParams(adc_threshold=3.0, min_snr=6.0), cell=CELL)


@pytest.fixture(scope="module")
def run():
    return sx.datasets.load("lysozyme-sample", progress=False)


@pytest.fixture(scope="module")
def results(run):
    return sx.process_run(run, PARAMS, executor="serial", progress=False)


def _msg(widget, **content):
    """Deliver a custom message as the browser sends it."""
    widget._handle_message(widget, content, [])
    assert not widget.status.startswith("error"), widget.status


# ---------------------------------------------------------------------- kernels
@pytest.mark.parametrize("name", ["eiger1m", "agipd", "mpccd"])
def test_lookup_table_matches_reference(name):
    det = builtin_geometry(name)
    lay = Layout(det, det.data_shape)
    expected = ref.lut(det, lay.x_min, lay.y_max, lay.width, lay.height)
    np.testing.assert_array_equal(lay.lut, expected)
    # Every pixel of an unrotated detector is shown exactly once.
    if name == "eiger1m":
        shown = lay.lut[lay.lut >= 0]
        assert shown.size == np.unique(shown).size == det.maps.panel.size


@pytest.mark.parametrize("use_max", [True, False])
@pytest.mark.parametrize("name", ["eiger1m", "agipd"])
def test_render_matches_reference(rng, name, use_max):
    det = builtin_geometry(name)
    lay = Layout(det, det.data_shape)
    data = rng.gamma(2.0, 3.0, det.data_shape).astype(np.float32).ravel()
    data[rng.choice(data.size, 50, replace=False)] = np.nan
    bad = rng.random(data.size) < 0.01
    for _ in range(3):
        x0, y0 = rng.uniform(0, lay.width - 50), rng.uniform(0, lay.height - 50)
        span = rng.uniform(20, 600)
        values, flags, meta = lay.render(data, bad, x0, y0, x0 + span, y0 + 0.8 * span,
                                         int(rng.integers(40, 300)), int(rng.integers(40, 300)),
                                         reduce="max" if use_max else "mean")
        exp_v, exp_f = ref.render(data, bad, lay.lut, meta["row0"], meta["col0"],
                                  meta["step"], meta["h"], meta["w"], use_max)
        np.testing.assert_allclose(values, exp_v, rtol=1e-6, equal_nan=True)
        np.testing.assert_array_equal(flags, exp_f)


def test_render_is_screen_sized_and_full_resolution_when_zoomed(rng):
    det = builtin_geometry("eiger4m")
    lay = Layout(det, det.data_shape)
    data = rng.random(det.data_shape, dtype=np.float32).ravel()
    values, _, meta = lay.render(data, None, 0, 0, lay.width, lay.height, 700, 600)
    assert meta["w"] <= 700 and meta["h"] <= 600 and meta["step"] == 4
    values, _, meta = lay.render(data, None, 100, 100, 180, 160, 700, 600)
    assert meta["step"] == 1
    np.testing.assert_array_equal(values, data[lay.lut[100:160, 100:180]])


def test_colour_codes_match_reference(rng):
    v = np.concatenate([rng.normal(5, 4, 5000), [np.nan, np.inf, -1e9, 1e9]]).astype(np.float32)
    for log in (False, True):
        np.testing.assert_array_equal(codes(v, 1.0, 12.0, log=log),
                                      ref.codes(v, 1.0, 12.0, log))
    out = np.empty(3, np.uint8)
    _kernels.to_codes(np.array([0.0, 5.0, 10.0], np.float32), 0.0, 10.0, False, out)
    assert out.tolist() == [1, 128, 255]


def test_layout_maps_pixel_centres_to_their_cells(rng):
    det = builtin_geometry("eiger1m")
    lay = Layout(det, det.data_shape)
    fs = rng.integers(0, 1030, 500)
    ss = rng.integers(0, 1065, 500)
    gx, gy = lay.data_to_grid(fs + 0.5, ss + 0.5, 0)
    got = [lay.unravel(lay.pixel_at(x, y))[1:] for x, y in zip(gx, gy, strict=True)]
    assert got == list(zip(ss.tolist(), fs.tolist(), strict=True))
    # Lab y points up: a larger ss (lab +y for EIGER) is higher on the screen.
    assert lay.data_to_grid([10.5], [100.5], 0)[1][0] > lay.data_to_grid([10.5], [200.5], 0)[1][0]


# ------------------------------------------------------------------- mask shapes
@pytest.mark.parametrize("name", ["eiger1m", "agipd"])
@pytest.mark.parametrize("kind,points,radius", [
    ("rectangle", [(-60.2, -40.7), (35.5, 20.1)], 0.0),
    ("circle", [(12.3, -7.7)], 41.5),
    # Vertices off the pixel lattice: no centre lies exactly on an edge.
    ("polygon", [(-80.13, -50.37), (60.71, -30.29), (20.43, 70.11), (-30.57, 10.83)], 0.0),
    ("brush", [(-190.3, 0.2), (-40.6, 80.9), (120.1, -95.4), (120.1, -95.4)], 6.5),
])
def test_lab_shapes_match_reference(name, kind, points, radius):
    det = builtin_geometry(name)
    m = sx.mask_lab_shape(det, kind, points, radius=radius)
    expected = ref.shape_pixels(det, kind, points, radius)
    np.testing.assert_array_equal(m.bad, expected)
    assert m.n_bad > 100
    if name == "agipd":  # multi-panel: the shape covers several panels
        assert len(np.unique(det.maps.panel[m.bad])) > 1


def test_lab_shape_errors_name_the_problem():
    det = builtin_geometry("eiger1m")
    with pytest.raises(ValueError, match="unknown shape 'star'"):
        sx.mask_lab_shape(det, "star", [(0, 0)])
    with pytest.raises(ValueError, match="polygon needs at least 3"):
        sx.mask_lab_shape(det, "polygon", [(0, 0), (1, 1)])
    with pytest.raises(ValueError, match="positive radius"):
        sx.mask_lab_shape(det, "circle", [(0, 0)])


# --------------------------------------------------------------------- ImageViewer
def test_viewer_frame_tables_overlays_and_navigation(run, results):
    v = sx.widgets.ImageViewer(run, results=results, frame=4)
    assert v.image_meta["frame"] == 4
    peaks = results.peaks[results.peaks.frame == 4]
    refl = results.reflections[results.reflections.frame == 4]
    assert len(v.overlays["peaks"]["x"]) == len(peaks) > 0
    assert len(v.overlays["reflections"]["x"]) == len(refl) > 0
    assert v.overlays["radii"] == list(PARAMS.integrate.radii)
    assert "frame 4" in v.info_html and f"{len(peaks)} peaks" in v.info_html
    tabs = v.tables()
    assert tabs["frames"]["frame"].tolist() == [4]
    pd.testing.assert_frame_equal(tabs["crystals"], results.crystals[results.crystals.frame == 4])
    # Next / previous hit and indexed frame follow the results' frame table.
    hits = results.frames.loc[results.frames.hit, "frame"].tolist()
    indexed = results.frames.loc[results.frames.indexed, "frame"].tolist()
    _msg(v, type="step", direction=1, what="hit")
    assert v.frame == min(h for h in hits if h > 4)
    _msg(v, type="step", direction=-1, what="indexed")
    assert v.frame == max(i for i in indexed if i < min(h for h in hits if h > 4))
    _msg(v, type="step", direction=1)
    assert v.image_meta["frame"] == v.frame
    v.frame = 99
    assert v.frame == len(run) - 1


def test_viewer_readout_under_the_cursor(run, results):
    v = sx.widgets.ImageViewer(run, results=results, frame=4)
    geom = run.geometry
    peak = results.peaks[results.peaks.frame == 4].iloc[3]
    gx, gy = v.assembly.data_to_grid([peak.fs], [peak.ss], [peak.panel])
    _msg(v, type="hover", x=float(gx[0]), y=float(gy[0]), tol=3)
    r = v.readout
    fs, ss = int(np.floor(peak.fs)), int(np.floor(peak.ss))
    assert (r["fs"], r["ss"], r["panel"]) == (fs, ss, "p0")
    assert r["d_A"] == pytest.approx(float(geom.maps.d_A[ss, fs]), rel=1e-6)
    assert r["value"] == pytest.approx(float(np.asarray(run.read(4)[0])[ss, fs]))
    assert r["peak"]["intensity"] == pytest.approx(peak.intensity)
    refl = results.reflections[results.reflections.frame == 4].iloc[0]
    gx, gy = v.assembly.data_to_grid([refl.fs], [refl.ss], [refl.panel])
    r = v.readout_at(gx[0], gy[0], tol=0.5)
    assert [r["reflection"][c] for c in "hkl"] == [refl.h, refl.k, refl.l]
    assert r["reflection"]["I"] == pytest.approx(refl.I, rel=1e-5)
    assert r["reflection"]["sigma"] == pytest.approx(refl.sigma, rel=1e-5)
    assert "fs" not in v.readout_at(-50.0, -50.0)


def test_viewer_view_request_contrast_and_mask(run):
    mask = sx.mask_beamstop(run.geometry, 30)
    v = sx.widgets.ImageViewer(run, mask=mask, frame=2)
    data = np.asarray(run.read(2)[0]).ravel()
    # A view request from the browser (zoomed in: full resolution).
    v.view = {"x0": 300.0, "y0": 400.0, "x1": 380.0, "y1": 460.0, "width": 720, "height": 600,
              "seq": 7}
    meta = v.image_meta
    assert (meta["seq"], meta["step"], meta["col0"], meta["row0"]) == (7, 1, 300, 400)
    expected = ref.codes(data[v.assembly.lut[400:460, 300:380]], meta["vmin"], meta["vmax"],
                         False)
    np.testing.assert_array_equal(np.frombuffer(v.image, np.uint8).reshape(60, 80), expected)
    # Percentile limits come from the frame; log and manual limits are applied as given.
    good = data[~(np.asarray(run.read(2)[1]).ravel() | mask.bad.ravel())]
    lo, hi = np.percentile(good, v.percentiles)
    assert meta["vmin"] == pytest.approx(lo, abs=1.0) and meta["vmax"] == pytest.approx(hi, abs=1)
    v.contrast = "log"
    v.vmin, v.vmax = 0.0, 50.0
    expected = ref.codes(data[v.assembly.lut[400:460, 300:380]], 0.0, 50.0, True)
    np.testing.assert_array_equal(np.frombuffer(v.image, np.uint8).reshape(60, 80), expected)
    # The mask overlay marks the beam stop; turning it off sends none.
    v.reset_view()
    assert np.frombuffer(v.mask_image, np.uint8).any()
    v.show = {**v.show, "mask": False}
    assert v.mask_image == b""
    assert v.image_meta["nbytes"] == len(v.image) <= 720 * 600


def test_viewer_reads_ahead_and_survives_unreadable_frames(run):
    class Flaky:
        """A run whose frame 2 cannot be read."""

        geometry = run.geometry
        name = "flaky"

        def __len__(self):
            return len(run)

        def read(self, i):
            if i == 2:
                raise OSError("frame 2: truncated chunk")
            return run.read(i)

    v = sx.widgets.ImageViewer(Flaky(), frame=0)
    for i in (1, 2, 3, 4, 3):  # frame 2 fails; the others come from the read-ahead
        v.frame = i
        expected = np.asarray(run.read(i)[0]).ravel() if i != 2 else None
        if expected is None:
            assert "frame 2" in v.status and "truncated chunk" in v.status
            assert np.isnan(v.data).all() and v.image_meta["frame"] == 2
        else:
            assert v.status == ""
            np.testing.assert_array_equal(v.data.ravel(), expected)


def test_every_widget_carries_a_static_png(run, results):
    widgets = [sx.widgets.ImageViewer(run, results=results), sx.widgets.MaskPainter(run),
               sx.widgets.PeakTuner(run, params=PARAMS), sx.widgets.RunStats(results),
               sx.widgets.ProfileView(results.profile, block=2)]
    for w in widgets:
        data, _ = w._repr_mimebundle_()
        png = base64.b64decode(data["image/png"])
        assert png[:8] == b"\x89PNG\r\n\x1a\n", type(w).__name__
        assert len(png) > 2000
        assert "application/vnd.jupyter.widget-view+json" in data


def test_code_colour_is_the_front_end_lookup():
    table = np.asarray(sx.widgets._frame.colormap_tables()["viridis"]).reshape(256, 3)
    assert code_colour(255) == tuple(table[255]) and code_colour(1) == tuple(table[0])


# --------------------------------------------------------------------- MaskPainter
def test_painter_strokes_as_the_browser_sends_them(run):
    geom = run.geometry
    p = sx.widgets.MaskPainter(run)
    lay = p.assembly

    def lab(points):
        return np.array([lay.grid_to_lab_px(x, y) for x, y in points])

    rect = [(200.4, 300.2), (260.7, 340.9)]
    _msg(p, type="shape", kind="rectangle", points=rect, erase=False)
    expected = ref.shape_pixels(geom, "rectangle", lab(rect))
    np.testing.assert_array_equal(p.mask.bad, expected)
    assert p.mask_state["n_bad"] == expected.sum()
    circle = [(500.0, 500.0), (500.0, 540.0)]  # centre, then a point on the rim
    _msg(p, type="shape", kind="circle", points=circle, erase=False)
    expected |= ref.shape_pixels(geom, "circle", lab(circle[:1]), 40.0)
    np.testing.assert_array_equal(p.mask.bad, expected)
    poly = [(600, 100), (700, 120), (650, 220)]
    _msg(p, type="shape", kind="polygon", points=poly, erase=False)
    expected |= ref.shape_pixels(geom, "polygon", lab(poly))
    brush = [(100, 900), (150, 920), (190, 880)]
    _msg(p, type="shape", kind="brush", points=brush, radius=4.0, erase=False)
    expected |= ref.shape_pixels(geom, "brush", lab(brush), 4.0)
    np.testing.assert_array_equal(p.mask.bad, expected)
    # The eraser marks good what it covers, and only that.
    _msg(p, type="shape", kind="brush", points=[(210, 310), (250, 330)], radius=3.0,
         erase=True)
    expected &= ~ref.shape_pixels(geom, "brush", lab([(210, 310), (250, 330)]), 3.0)
    np.testing.assert_array_equal(p.mask.bad, expected)
    # The overlay the browser receives is the mask.
    p.reset_view()
    meta = p.image_meta
    _, flags, _ = lay.render(np.zeros(expected.size, np.float32), expected.ravel(),
                             p.view["x0"], p.view["y0"], p.view["x1"], p.view["y1"],
                             p.view["width"], p.view["height"])
    np.testing.assert_array_equal(np.frombuffer(p.mask_image, np.uint8).reshape(
        meta["h"], meta["w"]), flags)
    # Undo and redo restore exactly the earlier masks.
    after = p.mask.bad.copy()
    _msg(p, type="undo")
    _msg(p, type="undo")
    assert p.mask_state["n_operations"] == 3
    _msg(p, type="redo")
    _msg(p, type="redo")
    np.testing.assert_array_equal(p.mask.bad, after)
    assert len(p.mask.provenance) == 1 + 5 and "(erase)" in p.mask.provenance[-1]


def test_painter_beamstop_tool_in_lab_coordinates(run):
    geom = run.geometry
    p = sx.widgets.MaskPainter(run)
    bx, by = p.assembly.beam_grid()
    # Drag from the beam centre 30 cells up (lab +y), rod 8 px wide.
    _msg(p, type="shape", kind="beamstop", points=[(bx, by), (bx, by - 30.0)], rod_width=8.0,
         erase=False)
    expected = sx.mask_beamstop(geom, 30.0, rod_width_px=8.0, rod_angle_deg=90.0)
    np.testing.assert_array_equal(p.mask.bad, expected.bad)


def test_painter_saves_reopens_and_writes_crystfel_lines(run, tmp_path):
    geom = run.geometry
    start = sx.mask_from_geometry(geom)
    p = sx.widgets.MaskPainter(run, mask=start)
    p.rectangle(-100, -80, -20, 10)
    p.circle(120, 60, 15)
    path = p.save(tmp_path / "mask.h5")
    reopened = sx.widgets.MaskPainter.from_file(path, run)
    assert reopened.mask == p.mask
    reopened.rectangle(-100, -80, -20, 10, erase=True)
    assert reopened.mask.n_bad < p.mask.n_bad
    # CrystFEL bad lines: the geometry read back declares exactly the painted pixels.
    text = sx.write_geom(geom) + p.geom_lines()
    (tmp_path / "painted.geom").write_text(text)
    back = sx.read_geom(tmp_path / "painted.geom")
    np.testing.assert_array_equal(back.bad_pixel_mask(), p.mask.bad)


# ----------------------------------------------------------------------- PeakTuner
def test_tuner_recomputes_on_every_change(run):
    t = sx.widgets.PeakTuner(run, params=PARAMS, frame=4)
    image, bad = run.read(4)
    mask = sx.masks.build_mask(run.geometry, PARAMS.mask)

    def direct(**changes):
        return sx.find_peaks(image, run.geometry, mask, bad=bad, frame=4,
                             params=PARAMS.peaks.replace(**changes))

    assert t.tuner_state["n_peaks"] == len(direct())
    t.settings = {**t.settings, "min_snr": 9.0}  # what a slider sends
    assert t.tuner_state["n_peaks"] == len(direct(min_snr=9.0))
    pd.testing.assert_frame_equal(t.peaks, direct(min_snr=9.0))
    assert len(t.overlays["peaks"]["x"]) == len(t.peaks)
    t.set(min_peaks=len(t.peaks) + 1)
    assert t.tuner_state["hit"] is False
    t.set(method="dispersion")
    assert "sigma_strong" in [c["name"] for c in t.controls]
    assert t.tuner_state["n_peaks"] == len(direct(min_snr=9.0, method="dispersion"))
    saved = sx.Params.from_toml(t.params.to_toml())
    assert saved.peaks.method == "dispersion" and saved.peaks.min_snr == 9.0
    assert saved.hits.min_peaks == t.settings["min_peaks"] and saved.cell == PARAMS.cell
    t.frame = 5
    assert t.tuner_state["frame"] == 5
    with pytest.raises(KeyError, match="unknown parameter"):
        t.set(min_sn=3)


def test_tuner_sample_statistics(run):
    t = sx.widgets.PeakTuner(run, params=PARAMS, sample=4)
    table = t.sample_table()
    assert table["frame"].tolist() == [0, 2, 5, 7]
    finder = sx.PeakFinder(run.geometry, sx.masks.build_mask(run.geometry, PARAMS.mask),
                           PARAMS.peaks)
    assert table["n_peaks"].tolist() == [len(finder(*run.read(i))) for i in (0, 2, 5, 7)]
    s = t.tuner_state["sample"]
    assert s["hit_rate"] == table["hit"].mean() and sum(s["counts"]) == 4


def test_with_params_keeps_the_preparation(run):
    finder = sx.PeakFinder(run.geometry, None, PARAMS.peaks)
    same = finder.with_params(min_snr=8.0, adc_threshold=1.0)
    assert same._ann is finder._ann and same.params.min_snr == 8.0
    assert finder.params.min_snr == 6.0
    other = finder.with_params(fast=True)
    assert other._ann is not finder._ann and other.params.fast
    image, bad = run.read(4)
    fresh = sx.PeakFinder(run.geometry, None, PARAMS.peaks.replace(min_snr=8.0,
                                                                   adc_threshold=1.0))
    pd.testing.assert_frame_equal(same(image, bad), fresh(image, bad))


# -------------------------------------------------------------- RunStats, ProfileView
def test_runstats_points_selection_and_link(run, results):
    v = sx.widgets.ImageViewer(run, results=results)
    w = sx.widgets.RunStats(results, viewer=v)
    stats = sx.run_stats(results.frames)
    assert w.points["n_peaks"] == stats.frames["n_peaks"].tolist()
    assert w.points["indexed"] == stats.frames["indexed"].astype(int).tolist()
    assert w.runs[0]["indexed"] == int(stats.runs["indexed"].iloc[0])
    assert [r["frame"] for r in w.lists["indexed"]] == \
        stats.strongest(10, indexed=True)["frame"].tolist()
    w.selected = {"run": "lysozyme-sample", "frame": 5, "shot": 5}  # a click
    assert v.frame == 5
    w.select(frame=2)
    assert v.frame == 2
    with pytest.raises(KeyError, match="frame 42"):
        w.select(frame=42)


def test_runstats_and_profile_follow_a_growing_directory(run, results, tmp_path):
    done = tmp_path / "done"
    sx.process_run(run, PARAMS, executor="serial", out=done, chunk_size=2, progress=False)
    live = tmp_path / "live"
    (live / "parts").mkdir(parents=True)
    stems = sorted(p.name[len("frames-"):] for p in (done / "parts").glob("frames-*"))
    stats = sx.widgets.RunStats(live)
    view = sx.widgets.ProfileView(path=live, block=2)
    assert view.data["n_records"] == 0 and stats.points == {}
    n_committed = 0  # the first frame is a part of its own (processed before the rest)
    for stem in stems:
        for kind in sx.results.KINDS:  # the frames file, last, commits the part
            shutil.copy(done / "parts" / f"{kind}-{stem}", live / "parts" / f"{kind}-{stem}")
        n_committed += len(pd.read_parquet(done / "parts" / f"frames-{stem}"))
        assert view.poll() > 0
        stats.refresh()
        assert view.data["n_records"] == n_committed
        assert stats.points["n_shots"] == n_committed
    assert view.poll() == 0
    expected = sx.profiling.profile_blocks(sx.Results.load(done).profile, 2, 10, True)
    assert view.data["categories"] == [str(c) for c in expected["category"].cat.categories]
    view.append(results.profile.assign(worker=9))
    assert view.data["n_records"] == 16


def test_profile_view_follows_in_the_background(tmp_path, run):
    sx.process_run(run, PARAMS, executor="serial", out=tmp_path / "r", progress=False)
    view = sx.widgets.ProfileView(path=tmp_path / "r", block=4, follow=0.05)
    try:
        assert view.following and view.data["n_records"] == 8
    finally:
        view.stop()
    assert not view.following


# ------------------------------------------------------------------------ packaging
@pytest.mark.slow
def test_wheel_install_ships_the_front_end(tmp_path):
    """A non-editable install (wheel) finds the ES modules and CSS in the package."""
    repo = Path(__file__).resolve().parents[1]
    src = tmp_path / "src"
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                            "--exclude-standard"], cwd=repo, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        if (repo / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(repo / name, src / name)
    wheels = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(wheels), str(src)], check=True, capture_output=True)
    site = tmp_path / "site"
    (wheel,) = wheels.glob("sxlab-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(site), str(wheel)], check=True, capture_output=True)
    probe = ("import sxlab, sxlab.widgets as w\n"
             "from sxlab.widgets import _assets\n"
             "print(sxlab.__file__)\nprint(_assets.asset_dir())\n"
             "print(w.ImageViewer._esm.count('export default'), len(w.RunStats._css))\n")
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(site)})
    assert out.returncode == 0, out.stderr
    pkg, assets, counts = out.stdout.strip().splitlines()
    assert pkg.startswith(str(site)) and assets == str(site / "sxlab" / "widgets" / "static")
    n_export, n_css = counts.split()
    assert n_export == "1" and int(n_css) > 1000


def test_runstats_from_an_experiment_requeries_on_refresh(results):
    class Database:
        """Stands for sx.Experiment: run_stats(trial, ...) from the frames it holds."""

        def __init__(self):
            self.frames = results.frames.iloc[:4]
            self.calls = []

        def run_stats(self, trial, **options):
            self.calls.append((trial, options))
            return sx.run_stats(self.frames, **options)

    db = Database()
    w = sx.widgets.RunStats(db, trial=3, hq_resolution=2.0)
    assert db.calls == [(3, {"hq_resolution": 2.0})]
    assert w.points["n_shots"] == 4 and w.settings["hq_resolution"] == 2.0
    db.frames = results.frames
    w.refresh()
    assert w.points["n_shots"] == len(results.frames) and len(db.calls) == 2
