"""The widgets in the browser: frame latency, pan/zoom redraws, bytes per frame, tuner.

A notebook with an ImageViewer on an EIGER X 4M and on an EIGER2 X 16M run (6 simulated
frames each) and a PeakTuner on the 4M run is opened in JupyterLab (loopback, private
directories) in Debian's Chromium driven by Playwright (``tests/lab_harness.py``).

Rows:

* **frame request → pixels drawn**: the ``→`` key is pressed in the viewer; the time from
  the key press to the end of the canvas draw of the new frame, measured in the page
  (``performance.now()``), median over every frame of the run after a warm-up pass. It
  includes reading and decompressing the frame (HDF5, bitshuffle-LZ4), the screen-sized
  render in Python, the transfer and the colour mapping in the browser; the Python-side
  read and render times are listed beside it.
* **bytes per frame**: the image sent for the whole detector in the 720 × 600 canvas, against
  the full frame as float32.
* **Python CPU per frame**: CPU time of reading one frame and of rendering the whole
  detector for the canvas, measured in the benchmark's own process (less sensitive to
  the load of a shared machine than the wall times of the browser rows).
* **pan / zoom**: 120 mouse-move steps of a drag, and 40 wheel steps; canvas redraws per
  second during the motion (each move redraws from the last image at once; a new view is
  requested whenever none is in flight) and the time from the last input to the final
  full-quality image.
* **PeakTuner**: the min-SNR slider moved to 8 values in turn; browser latency from the
  change to the new peak count drawn (includes the 120 ms debounce), and the peak search
  itself in Python on the 4M frame.

Run ``python benchmarks/bench_widgets.py`` (``make bench`` runs every benchmark). With
``SXLAB_BENCH_OUT`` set, the table is also written there as ``bench_widgets.md``.
"""

from __future__ import annotations

import os  # noqa: E402,I001
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import _common

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from lab_harness import Lab, browser, evaluate, open_and_run, write_notebook  # noqa: E402

import sxlab as sx  # noqa: E402

N_FRAMES = 6


def _cells(m4: str, m16: str) -> list[str]:
    return [
        "import sxlab as sx\n"
        f"run4 = sx.open_run({m4!r})\nrun16 = sx.open_run({m16!r})\n"
        "params = sx.Params(peaks=sx.PeakFinderParams(adc_threshold=3.0, min_snr=6.0))",
        'v4 = sx.widgets.ImageViewer(run4, title="4M")\nv4',
        'v16 = sx.widgets.ImageViewer(run16, title="16M")\nv16',
        'tuner = sx.widgets.PeakTuner(run4, params=params, title="tuner")\ntuner',
    ]


def _frame_latency(page, kernel, title: str, name: str) -> dict:
    w = page.locator(f".sx-widget[data-title='{title}']")
    w.scroll_into_view_if_needed()
    w.focus()
    times, reads, renders = [], [], []
    for k in range(2 * N_FRAMES - 1):
        key = "ArrowRight" if (k // (N_FRAMES - 1)) % 2 == 0 else "ArrowLeft"
        before = int(w.get_attribute("data-frames-drawn") or 0)
        page.keyboard.press(key)
        page.wait_for_function(
            "([e, n]) => +(e.dataset.framesDrawn || 0) > n", arg=[w.element_handle(), before],
            timeout=30_000)
        if k >= N_FRAMES - 1:  # the first pass reads each frame once (warm-up)
            times.append(float(w.get_attribute("data-frame-ms")))
            meta = evaluate(kernel, f"{name}.image_meta")
            reads.append(meta["read_ms"])
            renders.append(meta["render_ms"])
    meta = evaluate(kernel, f"{name}.image_meta")
    full = evaluate(kernel, f"int({name}.data.size * 4)")
    return {"latency_ms": statistics.median(times), "read_ms": statistics.median(reads),
            "render_ms": statistics.median(renders), "image_bytes": meta["nbytes"],
            "full_bytes": full, "step": meta["step"], "n": len(times)}


def _pan_zoom(page, title: str) -> dict:
    """Redraws per second during the motion; time from its end to the final image."""
    w = page.locator(f".sx-widget[data-title='{title}']")
    w.scroll_into_view_if_needed()
    box = w.locator("canvas.sx-overlay").bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2

    def settle() -> float:
        t0 = time.perf_counter()
        page.wait_for_function("e => e.dataset.seq === e.dataset.sent",
                               arg=w.element_handle(), timeout=30_000)
        return 1e3 * (time.perf_counter() - t0)

    out = {}
    d0 = int(w.get_attribute("data-draws"))
    page.mouse.move(cx, cy)
    t0 = time.perf_counter()
    for _ in range(40):
        page.mouse.wheel(0, -120)
    t1 = time.perf_counter()
    d1 = int(w.get_attribute("data-draws"))
    out["zoom"] = ((d1 - d0) / (t1 - t0), settle())
    page.mouse.down()
    t0 = time.perf_counter()
    page.mouse.move(cx + 240, cy + 160, steps=120)
    t1 = time.perf_counter()
    page.mouse.up()
    d2 = int(w.get_attribute("data-draws"))
    out["pan"] = ((d2 - d1) / (t1 - t0), settle())
    w.focus()
    page.keyboard.press("r")
    settle()
    return out


def _python_side(master) -> dict:
    """CPU time of reading a frame and of one whole-detector render, in this process."""
    run = sx.open_run(master)
    v = sx.widgets.ImageViewer(run)
    _, read_wall, read_cpu = _common.median_time(lambda: run.read(1), 5)
    _, rend_wall, rend_cpu = _common.median_time(v.render_view, 7)
    return {"read_cpu_ms": 1e3 * read_cpu, "render_cpu_ms": 1e3 * rend_cpu,
            "read_wall_ms": 1e3 * read_wall, "render_wall_ms": 1e3 * rend_wall}


def _tuner(page, kernel) -> dict:
    w = page.locator(".sx-widget[data-title='tuner']")
    w.scroll_into_view_if_needed()
    slider = w.locator("input.sx-param-min_snr")
    lat, py = [], []
    for value in (7.0, 8.0, 9.5, 11.0, 5.5, 6.5, 12.0, 6.0):
        before = w.get_attribute("data-recompute-ms")
        t0 = time.perf_counter()
        slider.fill(str(value))
        page.wait_for_function(
            "([e, v]) => e.dataset.recomputeMs !== v", arg=[w.element_handle(), before],
            timeout=30_000)
        lat.append(1e3 * (time.perf_counter() - t0))
        py.append(evaluate(kernel, "tuner.tuner_state['recompute_ms']"))
    return {"latency_ms": statistics.median(lat), "recompute_ms": statistics.median(py)}


def main() -> None:
    load = _common.load_average()
    tmp = Path(tempfile.mkdtemp(prefix="sxlab-bench-widgets-"))
    masters = {}
    for name in ("lysozyme-4m", "lysozyme-16m"):
        masters[name] = tmp / f"{name}_master.h5"
        sx.datasets.generate(name, masters[name], n_frames=N_FRAMES, progress=False)
    python = {"4M": _python_side(masters["lysozyme-4m"]),
              "16M": _python_side(masters["lysozyme-16m"])}
    with Lab(tmp / "lab") as lab:
        write_notebook(lab.notebooks / "bench.ipynb",
                       _cells(str(masters["lysozyme-4m"]), str(masters["lysozyme-16m"])))
        with browser() as page:
            open_and_run(page, lab, "bench.ipynb")
            for title in ("4M", "16M", "tuner"):
                page.wait_for_selector(f".sx-widget[data-title='{title}'][data-frame]",
                                       timeout=300_000)
            kernel = lab.kernel("bench.ipynb")
            try:
                frame = {"4M": _frame_latency(page, kernel, "4M", "v4"),
                         "16M": _frame_latency(page, kernel, "16M", "v16")}
                motion = {"4M": _pan_zoom(page, "4M"), "16M": _pan_zoom(page, "16M")}
                tuner = _tuner(page, kernel)
            finally:
                kernel.stop_channels()
    rows = []
    for det in ("4M", "16M"):
        f = frame[det]
        rows.append({"detector": det, "measure": "frame request → pixels drawn (ms)",
                     "value": f"{f['latency_ms']:.0f}",
                     "note": f"read {f['read_ms']:.0f} ms + render {f['render_ms']:.0f} ms "
                             f"in Python; median of {f['n']}"})
        rows.append({"detector": det, "measure": "bytes sent per frame (whole detector)",
                     "value": f"{f['image_bytes'] / 1e6:.2f} MB",
                     "note": f"blocks of {f['step']}×{f['step']} px; full frame as float32: "
                             f"{f['full_bytes'] / 1e6:.1f} MB"})
        p = python[det]
        rows.append({"detector": det, "measure": "Python CPU per frame: read + render (ms)",
                     "value": f"{p['read_cpu_ms'] + p['render_cpu_ms']:.0f}",
                     "note": f"read {p['read_cpu_ms']:.0f} ms, render {p['render_cpu_ms']:.0f}"
                             " ms CPU (median, this process)"})
        for what in ("pan", "zoom"):
            redraw, settle_ms = motion[det][what]
            rows.append({"detector": det, "measure": f"{what}: canvas redraws per second",
                         "value": f"{redraw:.0f}",
                         "note": f"final full-quality image {settle_ms:.0f} ms after the "
                                 "last input"})
    rows.append({"detector": "4M", "measure": "PeakTuner: slider change → new count (ms)",
                 "value": f"{tuner['latency_ms']:.0f}",
                 "note": f"peak search {tuner['recompute_ms']:.1f} ms in Python; includes the "
                         "120 ms debounce"})
    header = "| detector | measure | value | note |\n|---|---|---|---|"
    body = "\n".join(f"| {r['detector']} | {r['measure']} | {r['value']} | {r['note']} |"
                     for r in rows)
    machine = "\n".join(f"- {line}" for line in _common.machine_description(
        load, packages=("numpy", "numba"), threads=False))
    text = (f"## Widgets in the browser (JupyterLab, Chromium headless)\n\n{header}\n{body}\n\n"
            f"Target: a 16M frame drawn in < 300 ms.\n\n{machine}\n")
    print(text)
    out = os.environ.get("SXLAB_BENCH_OUT")
    if out:
        _common.write_report(Path(out), "bench_widgets", text, rows,
                             {"frame": frame, "motion": motion, "tuner": tuner,
                              "python": python})


if __name__ == "__main__":
    main()
