"""The widgets in a real browser: JupyterLab on loopback, Debian's Chromium via Playwright.

One notebook with every widget is run in JupyterLab (started on 127.0.0.1, a free port,
a token and private directories); the test drives the page with the mouse and keyboard
and reads the Python-side state through a client of the notebook's own kernel.
Screenshots of each widget go to ``test-artefacts/widgets/`` (git-ignored); with
``SXLAB_UPDATE_SCREENSHOTS=1`` they also replace the README's ``widgets/screenshots/``.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import require_service
from lab_harness import (
    Lab,
    browser,
    chromium_available,
    evaluate,
    lab_available,
    open_and_run,
    write_notebook,
)

import sxlab as sx

REPO = Path(__file__).resolve().parents[1]
ARTEFACTS = REPO / "test-artefacts" / "widgets"
README_SHOTS = REPO / "widgets" / "screenshots"

pytestmark = [pytest.mark.service, pytest.mark.slow]

CELLS = [
    """\
import numpy as np
import sxlab as sx
run = sx.datasets.load("lysozyme-sample", progress=False)
cell = sx.UnitCell(79.1, 79.1, 37.9, 90, 90, 90, space_group="P 43 21 2")
params = sx.Params(peaks=sx.PeakFinderParams(adc_threshold=3.0, min_snr=6.0), cell=cell)
res = sx.process_run(run, params, executor="serial", progress=False)""",
    'viewer = sx.widgets.ImageViewer(run, results=res, frame=4, title="viewer")\nviewer',
    'painter = sx.widgets.MaskPainter(run, frame=0, title="painter")\npainter',
    'tuner = sx.widgets.PeakTuner(run, params=params, frame=4, sample=8, title="tuner")\ntuner',
    'linked = sx.widgets.ImageViewer(run, results=res, frame=0, title="linked")\n'
    'stats = sx.widgets.RunStats(res, viewer=linked, title="stats")\ndisplay(stats, linked)',
    'profile = sx.widgets.ProfileView(res.profile, block=2, title="profile")\nprofile',
]


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    require_service("chromium (Debian package, .ci/services.d/chromium.sh)",
                    chromium_available())
    require_service("jupyterlab (test extra)", lab_available())
    root = tmp_path_factory.mktemp("lab")
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    with Lab(root, env={"SXLAB_CACHE": os.environ["SXLAB_CACHE"]}) as lab:
        write_notebook(lab.notebooks / "widgets.ipynb", CELLS)
        with browser() as page:
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            open_and_run(page, lab, "widgets.ipynb")
            try:
                for title in ("viewer", "painter", "tuner", "linked", "stats", "profile"):
                    page.wait_for_selector(f".sx-widget[data-title='{title}']",
                                           timeout=60_000)
                page.wait_for_selector(".sx-widget[data-title='viewer'][data-frame='4']",
                                       timeout=30_000)
            except Exception:
                page.screenshot(path=str(ARTEFACTS / "failed-start.png"), full_page=True)
                raise
            kernel = lab.kernel("widgets.ipynb")
            try:
                yield {"page": page, "kernel": kernel, "errors": errors, "lab": lab}
            finally:
                kernel.stop_channels()


@pytest.fixture(scope="module")
def run():
    return sx.datasets.load("lysozyme-sample", progress=False)


def _widget(page, title):
    loc = page.locator(f".sx-widget[data-title='{title}']")
    loc.scroll_into_view_if_needed()
    return loc


def _transform(loc) -> dict:
    d = loc.evaluate("e => ({...e.dataset})")
    return {k: float(d[k]) for k in ("scale", "cx", "cy")} | {"raw": d}


def _screen(loc, gx, gy) -> tuple[float, float]:
    """Page coordinates of grid point (gx, gy) in a frame widget's canvas."""
    t = _transform(loc)
    box = loc.locator("canvas.sx-overlay").bounding_box()
    return (box["x"] + box["width"] / 2 + (gx - t["cx"]) * t["scale"],
            box["y"] + box["height"] / 2 + (gy - t["cy"]) * t["scale"])


def _pixel(loc, px, py) -> tuple[int, int, int]:
    """RGB of the image canvas at page position (px, py)."""
    box = loc.locator("canvas.sx-image").bounding_box()
    x, y = int(px - box["x"]), int(py - box["y"])
    rgb = loc.locator("canvas.sx-image").evaluate(
        "(c, p) => Array.from(c.getContext('2d').getImageData(p[0], p[1], 1, 1).data)",
        [x, y])
    return tuple(rgb[:3])


def _expected_colour(value, vmin, vmax, colormap="viridis"):
    from sxlab.widgets._frame import code_colour
    from sxlab.widgets._layout import codes

    return code_colour(int(codes(np.array([value], np.float32), vmin, vmax)[0]), colormap)


def _wait(predicate, timeout_s=20.0, what=""):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _shoot(loc, name):
    path = ARTEFACTS / f"{name}.png"
    loc.screenshot(path=str(path))
    if os.environ.get("SXLAB_UPDATE_SCREENSHOTS") == "1":
        README_SHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, README_SHOTS / path.name)
    return path


# ------------------------------------------------------------------------ tests
def test_viewer_draws_the_frame(session, run):
    page, kernel = session["page"], session["kernel"]
    v = _widget(page, "viewer")
    best = evaluate(kernel, "viewer.tables()['peaks'].sort_values('max_value').iloc[-1]"
                            "[['fs', 'ss', 'max_value']].tolist()")
    image, _ = run.read(4)
    data = np.asarray(image)
    # The brightest pixel of the brightest peak.
    f0, s0 = int(best[0]), int(best[1])
    win = data[s0 - 3:s0 + 4, f0 - 3:f0 + 4]
    ds, df = np.unravel_index(np.argmax(win), win.shape)
    fs, ss = f0 - 3 + df, s0 - 3 + ds
    from sxlab.widgets._layout import Layout

    lay = Layout(run.geometry, run.geometry.data_shape)
    gx, gy = lay.data_to_grid([fs + 0.5], [ss + 0.5], [0])
    t = _transform(v)["raw"]
    px, py = _screen(v, gx[0], gy[0])
    colour = _pixel(v, px, py)
    expected = _expected_colour(data[ss, fs], float(t["vmin"]), float(t["vmax"]))
    assert colour == expected
    # A dark background pixel is drawn in another colour (the test can tell them apart).
    assert _pixel(v, *_screen(v, 5.5, 5.5)) != expected
    _shoot(v, "image_viewer")


def test_hover_readout(session, run):
    page = session["page"]
    v = _widget(page, "viewer")
    geom = run.geometry
    from sxlab.widgets._layout import Layout

    lay = Layout(geom, geom.data_shape)
    box = v.locator("canvas.sx-overlay").bounding_box()
    t = _transform(v)
    for ox, oy in ((402, 170), (123, 455)):
        x, y = round(box["x"]) + ox, round(box["y"]) + oy
        page.mouse.move(x, y)
        # The pixel under the mouse, from the view transform the widget reports.
        gx = t["cx"] + (x - box["x"] - box["width"] / 2) / t["scale"]
        gy = t["cy"] + (y - box["y"] - box["height"] / 2) / t["scale"]
        _, ss, fs = lay.unravel(lay.pixel_at(gx, gy))
        ro = v.locator(".sx-readout")
        _wait(lambda ro=ro, fs=fs: ro.get_attribute("data-fs") == str(fs), what="readout")
        assert ro.get_attribute("data-ss") == str(ss)
        d = float(geom.maps.d_A[ss, fs])
        assert float(ro.get_attribute("data-d")) == pytest.approx(d, rel=1e-5)
        assert f"fs {fs}  ss {ss}" in ro.inner_text() and " Å" in ro.inner_text()


def test_zoom_shows_full_resolution_pixels(session, run):
    page, kernel = session["page"], session["kernel"]
    v = _widget(page, "viewer")
    geom = run.geometry
    from sxlab.widgets._layout import Layout

    lay = Layout(geom, geom.data_shape)
    fs, ss = 400, 700
    gx, gy = lay.data_to_grid([fs + 0.5], [ss + 0.5], [0])
    assert v.get_attribute("data-step") != "1"
    for _ in range(40):
        page.mouse.move(*_screen(v, gx[0], gy[0]))
        page.mouse.wheel(0, -240)
        if float(v.get_attribute("data-scale")) >= 8:
            break
    _wait(lambda: v.get_attribute("data-step") == "1", what="full-resolution image")
    page.wait_for_timeout(300)
    assert evaluate(kernel, "viewer.image_meta['step']") == 1
    data = np.asarray(run.read(4)[0])
    t = _transform(v)["raw"]
    vmin, vmax = float(t["vmin"]), float(t["vmax"])
    seen = set()
    for dfs in range(-3, 4):
        f = fs + dfs
        g = lay.data_to_grid([f + 0.5], [ss + 0.5], [0])
        colour = _pixel(v, *_screen(v, g[0][0], g[1][0]))
        assert colour == _expected_colour(data[ss, f], vmin, vmax), f"pixel fs={f}"
        seen.add(colour)
    assert len(seen) > 1  # neighbouring detector pixels are drawn apart
    _shoot(v, "image_viewer_zoomed")
    v.focus()
    page.keyboard.press("r")  # reset the view (a widget shortcut, not JupyterLab's)
    _wait(lambda: v.get_attribute("data-step") != "1", what="the reset view")


def test_painted_rectangle_changes_exactly_those_pixels(session, run):
    page, kernel = session["page"], session["kernel"]
    p = _widget(page, "painter")
    before = evaluate(kernel, "int(painter.mask.n_bad)")
    box = p.locator("canvas.sx-overlay").bounding_box()
    a = (round(box["x"]) + 200, round(box["y"]) + 150)
    b = (round(box["x"]) + 261, round(box["y"]) + 190)
    page.mouse.move(*a)
    page.mouse.down()
    page.mouse.move(*b, steps=5)
    page.mouse.up()
    _wait(lambda: evaluate(kernel, "len(painter._ops)") == 1, what="the stroke")
    t = _transform(p)
    grid = [(t["cx"] + (x - box["x"] - box["width"] / 2) / t["scale"],
             t["cy"] + (y - box["y"] - box["height"] / 2) / t["scale"]) for x, y in (a, b)]
    from sxlab.widgets._layout import Layout

    geom = run.geometry
    lay = Layout(geom, geom.data_shape)
    lab = [lay.grid_to_lab_px(gx, gy) for gx, gy in grid]
    expected = sx.mask_lab_shape(geom, "rectangle", np.array(lab, float) / lay.res, units="m")
    got = evaluate(kernel, "np.flatnonzero(painter.mask.bad.ravel()).tolist()")
    assert before == 0
    assert got == np.flatnonzero(expected.bad.ravel()).tolist()
    assert len(got) > 100
    assert p.get_attribute("data-n-bad") == str(len(got))
    _shoot(p, "mask_painter")


def test_runstats_click_opens_the_frame(session):
    page, kernel = session["page"], session["kernel"]
    s = _widget(page, "stats")
    linked = page.locator(".sx-widget[data-title='linked']")
    assert linked.get_attribute("data-frame") == "0"
    s.locator(".sx-plot-spots circle[data-frame='5']").click()
    _wait(lambda: linked.get_attribute("data-frame") == "5", what="the linked viewer")
    assert evaluate(kernel, "[linked.frame, stats.selected['frame']]") == [5, 5]
    s.locator(".sx-list-unindexed tr.sx-row").first.click()
    frame = evaluate(kernel, "stats.selected['frame']")
    _wait(lambda: linked.get_attribute("data-frame") == str(frame), what="list click")
    _shoot(s, "run_stats")


def test_tuner_slider_changes_the_peak_count(session):
    page, kernel = session["page"], session["kernel"]
    tu = _widget(page, "tuner")
    n0 = int(tu.get_attribute("data-n-peaks"))
    slider = tu.locator("input.sx-param-min_snr")
    slider.fill("12")
    _wait(lambda: tu.get_attribute("data-n-peaks") not in (str(n0), ""), what="new count")
    n1 = int(tu.get_attribute("data-n-peaks"))
    assert n1 < n0
    check = evaluate(kernel, "[tuner.peak_params.min_snr, len(sx.PeakFinder(run.geometry, "
                             "tuner._finder._mask, tuner.peak_params)(*run.read(4)))]")
    assert check == [12.0, n1]
    _shoot(tu, "peak_tuner")


def test_profile_view_draws_every_stage(session):
    page, kernel = session["page"], session["kernel"]
    pv = _widget(page, "profile")
    cats = evaluate(kernel, "profile.data['categories']")
    drawn = pv.locator("path.sx-area").evaluate_all(
        "els => els.map(e => e.getAttribute('data-category'))")
    assert drawn == cats and len(cats) >= 3
    assert pv.get_attribute("data-n-records") == "8"
    _shoot(pv, "profile_view")


def test_no_javascript_errors(session):
    assert not session["errors"], session["errors"]
