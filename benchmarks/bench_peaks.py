"""Peak-search speed and quality on one core: sxlab against OnDA Monitor's peakfinder8.

For frames of the ``lysozyme-4m`` (EIGER X 4M, 2070 × 2167 px) and ``lysozyme-16m``
(EIGER2 X 16M, 4148 × 4362 px) data sets, single-threaded, the table gives for sxlab's
peakfinder8 (full and fast mode), sxlab's dispersion spot finder and OnDA Monitor's
peakfinder8 (full and fast mode, the compiled ``peakfinder_8`` of ondamonitor):

* milliseconds per frame, wall clock and CPU: the median over frames of the median of
  several timed runs per frame, after one warm-up run (also for hits and non-hits apart);
* peaks per frame, recall and precision against the simulator's ground truth;
* OnDA Monitor's CPU time divided by the row's CPU time;
* the one-call function ``sxlab.find_peaks`` in a loop over the frames against the
  prepared ``PeakFinder`` (CPU time ratio, target at most 1.2).

Every method sees the same float32 frames (pixels flagged by value set to 0, as
:meth:`sxlab.io.Run.read` gives them), the same bad-pixel mask and the same
parameters, and the methods take turns frame by frame so that a change of machine load
affects them alike. OnDA Monitor imports only with numpy < 2, so it runs in its own
virtual environment, ``benchmarks/.venv-om``, created on first use; a worker process
(``om_worker.py``) reads the frames from ``.npy`` files and answers timings and peak lists
as JSON.

Usage::

    python benchmarks/bench_peaks.py [--frames N] [--runs R] [--quick] [--out [DIR]]

With ``--out`` (default directory ``benchmarks/out``), or with ``SXLAB_BENCH_OUT`` set as
``make bench`` does, the report is also written to ``bench_peaks.md``, ``.csv`` and
``.json`` there.
"""

from __future__ import annotations

import _common

# One core: every thread pool has one thread (set before numpy and numba are imported).
_common.single_threaded()

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
DATASETS = ("lysozyme-4m", "lysozyme-16m")

#: Peak-search parameters of every method (CrystFEL's defaults except the ADC threshold:
#: the frames are photon counts, for which CrystFEL's 800 ADU would find nothing).
PEAK_PARAMS = {
    "adc_threshold": 3.0,
    "min_snr": 5.0,
    "min_pix_count": 2,
    "max_pix_count": 200,
    "local_bg_radius": 3,
}
#: Pixels per annulus used for the radial statistics in fast mode (sxlab and OM).
FAST_N_PIXELS = 100
#: Peaks OM may return per frame (large enough never to truncate).
OM_MAX_PEAKS = 100_000

#: A found peak matches a simulated reflection closer than this (pixels).
MATCH_RADIUS_PX = 2.0
#: A reflection is a true spot when the expected photons above background in its
#: brightest pixel, S, reach TRUE_SPOT_K · max(sqrt(B), 1) for local background B.
TRUE_SPOT_K = 5.0
#: Local background: median expected photons on a ring of these radii (pixels).
BACKGROUND_RING_PX = (4.0, 6.0)

#: sxlab options of every method: no cap on the number of peaks (as for OM).
SXLAB_COMMON = {"max_peaks_per_panel": 0}
SXLAB_METHODS = {
    "sxlab peakfinder8": {"method": "peakfinder8", "fast": False},
    "sxlab peakfinder8 fast": {"method": "peakfinder8", "fast": True,
                               "fast_n_pixels": FAST_N_PIXELS},
    "sxlab dispersion": {"method": "dispersion"},
}
#: The one-call function timed against the prepared finder of the same configuration.
ONE_CALL = ("sxlab find_peaks (one call)", "sxlab peakfinder8")
#: Largest one-call / prepared CPU-time ratio that counts as reusing the set-up.
ONE_CALL_TARGET = 1.2
OM_MODES = {
    "OM peakfinder8": {"fast": False},
    "OM peakfinder8 fast": {"fast": True, "n_pixels_per_bin": FAST_N_PIXELS, "seed": 0},
}
#: The OM row each sxlab row's time is compared with.
OM_REFERENCE = {
    "sxlab peakfinder8": "OM peakfinder8",
    "sxlab peakfinder8 fast": "OM peakfinder8 fast",
    "sxlab dispersion": "OM peakfinder8",
    "sxlab find_peaks (one call)": "OM peakfinder8",
}

OM_VENV = HERE / ".venv-om"
OM_WORKER = HERE / "om_worker.py"
OM_REQUIREMENT = "ondamonitor==23.8.3"
#: pip installs of OnDA Monitor, tried in order until ``om`` imports: (packages, build
#: dependencies installed first for a ``--no-build-isolation`` source build).
OM_INSTALL_ATTEMPTS = (
    (["numpy<2", OM_REQUIREMENT], []),
    (["numpy<2", "ondamonitor"], []),
    (["numpy<2", "ondamonitor"], ["numpy<2", "cython", "setuptools", "wheel"]),
)
OM_IMPORT_CHECK = "from om.algorithms._crystallography import peakfinder_8"


def log(message: str) -> None:
    """Progress message on stderr (stdout carries only the report)."""
    print(f"[bench_peaks] {message}", file=sys.stderr, flush=True)


# ============================================================================ frames
@dataclass
class FrameSet:
    """The frames of one data set that every method is run on.

    Attributes
    ----------
    name : str
        Data set name.
    detector : sxlab.geometry.Detector
        Geometry.
    indices : list of int
        Frame indices in the data set.
    images : ndarray of float32, shape (n, ss, fs)
        Frames as :meth:`sxlab.io.Run.read` gives them (flagged pixels are 0).
    bad : ndarray of bool, shape (n, ss, fs)
        Per-frame bad pixels (flagged by value or by the NXmx pixel mask).
    mask : ndarray of bool, shape (ss, fs)
        Static bad pixels (True = bad): the geometry's bad regions and every pixel bad
        in any of the frames.
    raw : ndarray
        The first frame as stored, for the conversion timing.
    hits : ndarray of bool
        Whether each frame is a hit.
    """

    name: str
    detector: object
    indices: list
    images: np.ndarray
    bad: np.ndarray
    mask: np.ndarray
    raw: np.ndarray
    hits: np.ndarray


def load_frames(name: str, n_frames: int) -> FrameSet:
    """Read the first ``n_frames`` frames of data set ``name`` (generated on first use)."""
    import sxlab.datasets

    run = sxlab.datasets.load(name, progress=False)
    det = run.geometry
    if len(run.frame_shape) != 2:
        raise ValueError(f"{name}: frames of shape {run.frame_shape}; this benchmark wants 2-D")
    n = min(int(n_frames), len(run))
    images = np.empty((n, *run.frame_shape), dtype=np.float32)
    bad = np.empty(images.shape, dtype=bool)
    for j in range(n):
        img, b = run.read(j)
        images[j] = img.values
        bad[j] = b.values
    hit = sxlab.datasets.truth(name).frames.set_index("frame")["hit"]
    return FrameSet(name=name, detector=det, indices=list(range(n)), images=images, bad=bad,
                    mask=det.bad_pixel_mask() | bad.any(axis=0), raw=run.read_raw(0),
                    hits=np.array([bool(hit[i]) for i in range(n)]))


# ============================================================================= truth
def _simulator(name: str):
    """The simulator of a generated data set, rebuilt from its registry recipe."""
    import sxlab.datasets
    from sxlab.cell import UnitCell
    from sxlab.geometry import builtin_geometry
    from sxlab.simulate import SimulationParams, Simulator

    spec = sxlab.datasets.info(name).spec
    det = builtin_geometry(spec["geometry"], **spec.get("geometry_args", {}))
    cell = UnitCell(*spec["cell"], space_group=spec["space_group"])
    return Simulator(det, cell, seed=int(spec["seed"]),
                     params=SimulationParams(**spec.get("params", {})))


def _ring_offsets(r_in: float, r_out: float) -> tuple[np.ndarray, np.ndarray]:
    n = int(np.ceil(r_out))
    dy, dx = np.mgrid[-n:n + 1, -n:n + 1]
    d = np.hypot(dx, dy)
    keep = (d >= r_in) & (d <= r_out)
    return dy[keep], dx[keep]


def true_spots(expected: np.ndarray, reflections, mask: np.ndarray):
    """Strength of every simulated reflection of a frame and whether it is a true spot.

    Parameters
    ----------
    expected : ndarray of float32, shape (ss, fs)
        Expected photons per pixel (:meth:`sxlab.simulate.Simulator.expected_photons`).
    reflections : DataFrame
        The frame's truth reflections (columns ``fs``, ``ss``).
    mask : ndarray of bool
        Bad pixels (True = bad).

    Returns
    -------
    DataFrame
        One row per reflection:

        ==========  =======  =================================================
        fs, ss      float64  spot centre (data-array px, pixel centres at +0.5)
        signal      float64  S: expected photons above background in the pixel
                             holding the centre, the spot's brightest pixel
        background  float64  B: median expected photons per pixel on the ring
                             :data:`BACKGROUND_RING_PX` around the centre
        true_spot   bool     S >= TRUE_SPOT_K · max(sqrt(B), 1) and the centre
                             pixel is good
        ==========  =======  =================================================
    """
    import pandas as pd

    fs = reflections["fs"].to_numpy(np.float64)
    ss = reflections["ss"].to_numpy(np.float64)
    ny, nx = expected.shape
    col = np.clip(np.floor(fs).astype(np.int64), 0, nx - 1)
    row = np.clip(np.floor(ss).astype(np.int64), 0, ny - 1)
    dy, dx = _ring_offsets(*BACKGROUND_RING_PX)
    rr = row[:, None] + dy[None, :]
    cc = col[:, None] + dx[None, :]
    inside = (rr >= 0) & (rr < ny) & (cc >= 0) & (cc < nx)
    rr, cc = np.clip(rr, 0, ny - 1), np.clip(cc, 0, nx - 1)
    ring = np.where(inside & ~mask[rr, cc], expected[rr, cc], np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # rings lying wholly in a gap
        background = np.nanmedian(ring, axis=1) if len(fs) else np.zeros(0)
    background = np.nan_to_num(background, nan=0.0)
    signal = expected[row, col] - background
    noise = np.sqrt(np.maximum(background, 1.0))
    true = (signal >= TRUE_SPOT_K * noise) & ~mask[row, col]
    return pd.DataFrame({"fs": fs, "ss": ss, "signal": signal, "background": background,
                         "true_spot": true})


def frame_truths(frameset: FrameSet) -> tuple[list, str]:
    """:func:`true_spots` of every frame of ``frameset``.

    Spot positions come from the data set's stored truth; the expected photons from the
    simulator rebuilt from the recipe, whose reflections are checked against the stored
    ones.

    Returns
    -------
    truths : list of DataFrame
        One :func:`true_spots` table per frame.
    problem : str
        Empty, or which frames' stored truth differs from the rebuilt simulator's.
    """
    import sxlab.datasets

    stored = sxlab.datasets.truth(frameset.name).reflections
    sim = _simulator(frameset.name)
    out, differ = [], []
    for i in frameset.indices:
        expected, ft = sim.expected_photons(i)
        refl = stored[stored["frame"] == i]
        cols = ["fs", "ss", "photons"]
        if len(refl) != len(ft.reflections) or not np.allclose(
                refl[cols].to_numpy(), ft.reflections[cols].to_numpy()):
            differ.append(i)
        out.append(true_spots(expected, refl, frameset.mask))
    problem = ""
    if differ:
        problem = (f"{frameset.name}: the stored truth of frames {differ} differs from the "
                   "simulator rebuilt from the recipe (a stale cached data set?); true-spot "
                   "strengths of those frames may be wrong")
        log(problem)
    return out, problem


def match(peaks_fs, peaks_ss, refl_fs, refl_ss, radius: float):
    """Pair peaks with reflections one to one, nearest pairs first, within ``radius``.

    Returns
    -------
    peak_matched : ndarray of bool
        Each peak is paired with a reflection.
    refl_matched : ndarray of bool
        Each reflection is paired with a peak.
    """
    from scipy.spatial import cKDTree

    p = np.column_stack([peaks_fs, peaks_ss]).astype(np.float64).reshape(-1, 2)
    r = np.column_stack([refl_fs, refl_ss]).astype(np.float64).reshape(-1, 2)
    peak_matched = np.zeros(len(p), dtype=bool)
    refl_matched = np.zeros(len(r), dtype=bool)
    if len(p) == 0 or len(r) == 0:
        return peak_matched, refl_matched
    pairs = cKDTree(p).sparse_distance_matrix(cKDTree(r), radius, output_type="ndarray")
    for k in np.argsort(pairs["v"], kind="stable"):
        i, j = pairs["i"][k], pairs["j"][k]
        if not peak_matched[i] and not refl_matched[j]:
            peak_matched[i] = refl_matched[j] = True
    return peak_matched, refl_matched


def score(peak_lists: list, truths: list) -> dict:
    """Recall and precision of one method's peaks over all frames.

    Recall: true spots paired with a peak / true spots. Precision: peaks paired with any
    simulated reflection (true spot or weaker) / peaks. Pairing is one to one.
    """
    n_true = n_true_found = n_peaks = n_peaks_matched = 0
    for (fs, ss), truth in zip(peak_lists, truths, strict=True):
        pm, rm = match(fs, ss, truth["fs"], truth["ss"], MATCH_RADIUS_PX)
        t = truth["true_spot"].to_numpy()
        n_true += int(t.sum())
        n_true_found += int((rm & t).sum())
        n_peaks += len(pm)
        n_peaks_matched += int(pm.sum())
    return {
        "true_spots": n_true,
        "peaks": n_peaks,
        "recall": n_true_found / n_true if n_true else float("nan"),
        "precision": n_peaks_matched / n_peaks if n_peaks else float("nan"),
    }


# =========================================================================== timing
@dataclass
class MethodResult:
    """Timings and peaks of one method on one frame set.

    Attributes
    ----------
    method : str
        Row label.
    setup_s : float
        One-off set-up time (seconds; geometry-only work).
    wall_s, cpu_s : list of list of float
        Wall-clock and CPU seconds of the timed runs of each frame.
    peaks : list of tuple of ndarray
        ``(fs, ss)`` of the peaks found in each frame.
    error : str
        Why the method could not run (empty when it did).
    """

    method: str
    setup_s: float = float("nan")
    wall_s: list = field(default_factory=list)
    cpu_s: list = field(default_factory=list)
    peaks: list = field(default_factory=list)
    error: str = ""

    def add(self, wall: list, cpu: list, fs, ss) -> None:
        """Record one frame."""
        self.wall_s.append(list(wall))
        self.cpu_s.append(list(cpu))
        self.peaks.append((np.asarray(fs), np.asarray(ss)))


class SxlabMethod:
    """One configuration of :class:`sxlab.peaks.PeakFinder` on a frame set.

    Parameters
    ----------
    frameset : FrameSet
        Frames, geometry and mask.
    label : str
        Row label.
    options : dict
        Keyword arguments added to :data:`PEAK_PARAMS` and :data:`SXLAB_COMMON`.
    """

    def __init__(self, frameset: FrameSet, label: str, options: dict):
        self.frameset = frameset
        self.result = MethodResult(label)
        try:
            from sxlab.peaks import PeakFinder
        except ImportError as exc:
            self.result.error = f"sxlab.peaks not importable ({exc})"
            return
        try:
            t0 = time.perf_counter()
            self.finder = PeakFinder(frameset.detector, mask=~frameset.mask,
                                     **PEAK_PARAMS, **SXLAB_COMMON, **options)
            self.result.setup_s = time.perf_counter() - t0
        except Exception as exc:  # reported in the table
            self.result.error = f"{type(exc).__name__}: {exc}"

    def run(self, j: int, runs: int) -> None:
        """Time frame ``j`` of the frame set and record it."""
        if self.result.error:
            return
        image, bad = self.frameset.images[j], self.frameset.bad[j]
        frame = self.frameset.indices[j]
        try:
            table, wall, cpu = _common.time_runs(
                lambda: self.finder(image, bad=bad, frame=frame), runs)
        except Exception as exc:  # reported in the table
            self.result.error = f"{type(exc).__name__}: {exc}"
            return
        self.result.add(wall, cpu, table["fs"].to_numpy(), table["ss"].to_numpy())


class OneCallMethod(SxlabMethod):
    """:func:`sxlab.find_peaks` called per frame, as a notebook loop does.

    Same parameters and mask as the prepared ``sxlab peakfinder8`` row; the set-up is
    done by the first call and reused by the later ones.
    """

    def __init__(self, frameset: FrameSet, label: str, options: dict):
        self.frameset = frameset
        self.result = MethodResult(label)
        self.options = {**PEAK_PARAMS, **SXLAB_COMMON, **options}
        try:
            from sxlab.peaks import find_peaks
        except ImportError as exc:
            self.result.error = f"sxlab.peaks not importable ({exc})"
            return
        self.find_peaks = find_peaks
        self.mask = ~frameset.mask

    def run(self, j: int, runs: int) -> None:
        """Time frame ``j`` of the frame set and record it."""
        if self.result.error:
            return
        image, bad = self.frameset.images[j], self.frameset.bad[j]
        frame = self.frameset.indices[j]
        det = self.frameset.detector
        if j == 0:
            t0 = time.perf_counter()
            self.find_peaks(image, det, self.mask, bad=bad, frame=frame, **self.options)
            self.result.setup_s = time.perf_counter() - t0
        try:
            table, wall, cpu = _common.time_runs(
                lambda: self.find_peaks(image, det, self.mask, bad=bad, frame=frame,
                                        **self.options), runs)
        except Exception as exc:  # reported in the table
            self.result.error = f"{type(exc).__name__}: {exc}"
            return
        self.result.add(wall, cpu, table["fs"].to_numpy(), table["ss"].to_numpy())


# ======================================================================= OnDA Monitor
def _output_tail(proc: subprocess.CompletedProcess, lines: int = 6) -> str:
    text = (proc.stderr or "") + (proc.stdout or "")
    tail = [ln for ln in text.strip().splitlines() if ln.strip()][-lines:]
    return " | ".join(tail)


def ensure_om_venv() -> tuple[Path | None, str]:
    """Create ``benchmarks/.venv-om`` with numpy < 2 and ondamonitor, once.

    The environment is made with ``python3 -m venv``; the pip installs of
    :data:`OM_INSTALL_ATTEMPTS` are tried in order until ``om``'s compiled peakfinder8
    imports. A marker file records success, so later runs start at once.

    Returns
    -------
    python : Path or None
        The environment's interpreter, None when OnDA Monitor could not be installed.
    error : str
        The reason, with the end of pip's output, when it could not.
    """
    python = OM_VENV / "bin" / "python"
    stamp = OM_VENV / ".bench-peaks-ready"
    if stamp.is_file() and python.exists():
        return python, ""
    if not python.exists():
        base = shutil.which("python3") or sys.executable
        log(f"creating {OM_VENV} with {base} (once)")
        proc = subprocess.run([base, "-m", "venv", "--clear", str(OM_VENV)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            return None, f"python3 -m venv failed: {_output_tail(proc)}"
    errors = []
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    for packages, build_deps in OM_INSTALL_ATTEMPTS:
        flags = []
        if build_deps:
            log(f"pip install {' '.join(build_deps)}")
            proc = subprocess.run(pip + build_deps, capture_output=True, text=True)
            if proc.returncode != 0:
                errors.append(f"pip install {' '.join(build_deps)}: {_output_tail(proc)}")
                continue
            flags = ["--no-build-isolation"]
        log(f"pip install {' '.join(flags + packages)}")
        proc = subprocess.run(pip + flags + packages, capture_output=True, text=True)
        if proc.returncode != 0:
            errors.append(f"pip install {' '.join(flags + packages)}: {_output_tail(proc)}")
            continue
        check = subprocess.run([str(python), "-c", OM_IMPORT_CHECK],
                               capture_output=True, text=True)
        if check.returncode == 0:
            stamp.write_text(" ".join(packages) + "\n")
            return python, ""
        errors.append(f"import after pip install {' '.join(packages)}: "
                      f"{_output_tail(check)}")
    return None, errors[-1] if errors else "unknown error"


def om_params() -> dict:
    """:data:`PEAK_PARAMS` under OnDA Monitor's parameter names."""
    return {
        "adc_threshold": PEAK_PARAMS["adc_threshold"],
        "minimum_snr": PEAK_PARAMS["min_snr"],
        "min_pixel_count": PEAK_PARAMS["min_pix_count"],
        "max_pixel_count": PEAK_PARAMS["max_pix_count"],
        "local_bg_radius": PEAK_PARAMS["local_bg_radius"],
        "max_num_peaks": OM_MAX_PEAKS,
    }


def radius_map(detector) -> np.ndarray:
    """Distance of each pixel centre from the beam in pixels (0 outside panels)."""
    r = np.asarray(detector.maps.r_px, dtype=np.float32)
    return np.ascontiguousarray(np.nan_to_num(r, nan=0.0))


class OMWorker:
    """OnDA Monitor's peakfinder8 in its own environment, driven frame by frame.

    The frames, the mask and the radius map are written to a temporary directory as
    ``.npy`` files; ``om_worker.py`` runs under the OM environment's interpreter and
    answers one JSON line per request (see its docstring).

    Parameters
    ----------
    frameset : FrameSet
        Frames, geometry and mask.
    python : Path or None
        Interpreter of the OM environment; None when it could not be installed.
    error : str
        Why it could not be installed.

    Attributes
    ----------
    results : dict of str to MethodResult
        One result per mode of :data:`OM_MODES`.
    versions : dict
        Python, numpy and ondamonitor versions of the worker.
    """

    def __init__(self, frameset: FrameSet, python: Path | None, error: str):
        self.results = {m: MethodResult(m) for m in OM_MODES}
        self.versions = {}
        self._proc = None
        self._tmp = None
        if python is None:
            self._fail(f"ondamonitor unavailable: {error}")
            return
        self._tmp = tempfile.TemporaryDirectory(prefix="bench-peaks-om-")
        job_dir = Path(self._tmp.name)
        np.save(job_dir / "frames.npy", frameset.images)
        np.save(job_dir / "mask.npy", (~frameset.mask).astype(np.int8))
        np.save(job_dir / "radius.npy", radius_map(frameset.detector))
        modes = [{"name": name, **opts} for name, opts in OM_MODES.items()]
        (job_dir / "job.json").write_text(json.dumps({"params": om_params(), "modes": modes}))
        self._stderr = open(job_dir / "stderr.txt", "w+")
        self._proc = subprocess.Popen([str(python), str(OM_WORKER), str(job_dir)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=self._stderr, text=True, bufsize=1)
        hello = self._receive()
        if hello is not None:
            self.versions = hello["versions"]
            for name, setup in hello["setup_s"].items():
                self.results[name].setup_s = setup

    def _fail(self, message: str) -> None:
        for res in self.results.values():
            res.error = res.error or message

    def _receive(self) -> dict | None:
        line = self._proc.stdout.readline()
        if line:
            return json.loads(line)
        self._proc.wait()
        self._stderr.seek(0)
        tail = [ln for ln in self._stderr.read().strip().splitlines() if ln.strip()][-4:]
        self._fail(f"OM worker exited ({self._proc.returncode}): {' | '.join(tail)}")
        return None

    def run(self, j: int, runs: int) -> None:
        """Time frame ``j`` in every mode and record it."""
        for mode, res in self.results.items():
            if res.error:
                continue
            request = {"frame": j, "mode": mode, "runs": runs}
            self._proc.stdin.write(json.dumps(request) + "\n")
            self._proc.stdin.flush()
            reply = self._receive()
            if reply is not None:
                res.add(reply["wall_s"], reply["cpu_s"], reply["peaks"]["fs"],
                        reply["peaks"]["ss"])

    def close(self) -> None:
        """Stop the worker and remove the temporary files."""
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.stdin.close()
                self._proc.wait(timeout=60)
            self._stderr.close()
            self._proc = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def run_methods(frameset: FrameSet, runs: int, python: Path | None,
                om_error: str) -> tuple[list[MethodResult], dict]:
    """Time every method on every frame, the methods taking turns frame by frame.

    Returns
    -------
    results : list of MethodResult
        In the order of :data:`SXLAB_METHODS`, then :data:`OM_MODES`.
    om_versions : dict
        Versions reported by the OM worker (empty when it did not start).
    """
    sxlab_methods = [SxlabMethod(frameset, label, opts) for label, opts in SXLAB_METHODS.items()]
    sxlab_methods.append(OneCallMethod(frameset, ONE_CALL[0], SXLAB_METHODS[ONE_CALL[1]]))
    om = OMWorker(frameset, python, om_error)
    try:
        for j, index in enumerate(frameset.indices):
            log(f"{frameset.name}: frame {index}")
            for method in sxlab_methods:
                method.run(j, runs)
            om.run(j, runs)
    finally:
        om.close()
    return [m.result for m in sxlab_methods] + list(om.results.values()), om.versions


# ====================================================================== memory floor
def memory_floor(frameset: FrameSet, runs: int) -> dict:
    """Median milliseconds to copy one float32 frame and to convert the raw frame to float32.

    The copy is ``np.copyto`` of the frame's bytes into a preallocated array, the memory
    bandwidth floor of any pass over the frame; the conversion is the cast of the stored
    frame (uint16) to float32 that :meth:`sxlab.io.Run.read` does.
    """
    src = np.ascontiguousarray(frameset.images[0])
    dst = np.empty_like(src)
    raw = np.ascontiguousarray(frameset.raw)
    _, copy_wall, copy_cpu = _common.time_runs(lambda: np.copyto(dst, src), runs)
    _, conv_wall, conv_cpu = _common.time_runs(lambda: np.copyto(dst, raw, casting="unsafe"), runs)
    return {
        "frame_bytes": src.nbytes,
        "copy_wall_ms": 1e3 * statistics.median(copy_wall),
        "copy_cpu_ms": 1e3 * statistics.median(copy_cpu),
        "float32_wall_ms": 1e3 * statistics.median(conv_wall),
        "float32_cpu_ms": 1e3 * statistics.median(conv_cpu),
        "raw_dtype": raw.dtype.name,
    }


# ============================================================================ report
def _median_ms(per_frame_runs: list, select: np.ndarray | None = None) -> float:
    """Median over frames (optionally selected) of the per-frame median, in ms."""
    per_frame = np.array([statistics.median(t) for t in per_frame_runs]) * 1e3
    if select is not None:
        per_frame = per_frame[select]
    return float(np.median(per_frame)) if per_frame.size else float("nan")


def summarize(frameset: FrameSet, res: MethodResult, truths: list) -> dict:
    """One table row: times, peaks per frame, recall and precision of ``res``."""
    row = {"dataset": frameset.name, "frames": len(frameset.indices), "method": res.method,
           "error": res.error}
    if res.error:
        return row
    hits = frameset.hits
    row.update({
        "wall_ms": _median_ms(res.wall_s),
        "cpu_ms": _median_ms(res.cpu_s),
        "cpu_ms_hits": _median_ms(res.cpu_s, hits),
        "cpu_ms_non_hits": _median_ms(res.cpu_s, ~hits),
        "setup_s": res.setup_s,
        "runs_per_frame": len(res.wall_s[0]),
        "peaks_per_frame": float(np.mean([len(fs) for fs, _ in res.peaks])),
        **score(res.peaks, truths),
    })
    return row


def add_ratios(rows: list[dict]) -> None:
    """Set ``om_ratio`` (CPU) and ``om_ratio_wall``: OM's time / the row's time.

    The OM row compared with is given by :data:`OM_REFERENCE`.
    """
    by_key = {(r["dataset"], r["method"]): r for r in rows}
    for r in rows:
        om = by_key.get((r["dataset"], OM_REFERENCE.get(r["method"])), {})
        for key, col in (("om_ratio", "cpu_ms"), ("om_ratio_wall", "wall_ms")):
            ref, own = om.get(col), r.get(col)
            r[key] = ref / own if ref and own else float("nan")


def _fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    return format(value, spec)


def format_report(header: list[str], rows: list[dict], floors: dict, frames: dict,
                  runs: int) -> str:
    """The printed report (Markdown).

    ``frames`` maps each data set to its number of frames and of hits.
    """
    p = PEAK_PARAMS
    lines = ["# Peak search on one core: sxlab vs OnDA Monitor", ""]
    lines += [f"- {h}" for h in header]
    lines += [
        "",
        "Frames: " + ", ".join(f"{name} frames 0–{n - 1} ({hits} hits)"
                               for name, (n, hits) in frames.items()) + ".",
        f"Parameters of every method: adc_threshold {p['adc_threshold']:g}, min_snr "
        f"{p['min_snr']:g}, min/max_pix_count {p['min_pix_count']}/{p['max_pix_count']}, "
        f"local_bg_radius {p['local_bg_radius']}, no resolution limits, no cap on the "
        f"number of peaks; fast mode: {FAST_N_PIXELS} pixels per annulus. sxlab dispersion "
        "classifies pixels with its own defaults (7 × 7 box, sigma_background 6, "
        "sigma_strong 3, gain 1) and shares the pixel counts and local_bg_radius. The "
        "same float32 frames (flagged pixels 0) and bad-pixel mask for all.",
        f"Time: median over frames of the per-frame median of {runs} timed runs after one "
        "warm-up run; single thread, benchmark and OM worker pinned to the same CPU; the "
        "methods take turns frame by frame. CPU time is the process's CPU time.",
        f"True spots: simulated reflections whose expected photons above the local "
        f"background in their brightest pixel, S, reach {TRUE_SPOT_K:g}·max(√B, 1), with B "
        f"the median expected background per pixel on a ring of {BACKGROUND_RING_PX[0]:g}–"
        f"{BACKGROUND_RING_PX[1]:g} px around the spot (both from "
        "Simulator.expected_photons), and whose centre pixel is not masked.",
        f"Recall: true spots with a peak within {MATCH_RADIUS_PX:g} px / true spots. "
        f"Precision: peaks within {MATCH_RADIUS_PX:g} px of a simulated reflection (of any "
        "strength) / peaks. Peaks and reflections are paired one to one, nearest first.",
        "OM/this: OnDA Monitor's peakfinder8 CPU time (its fast mode for the fast row, "
        "full mode otherwise) / the row's CPU time; above 1: the row is faster.",
        "",
        "| dataset | method | wall ms | CPU ms | CPU ms hits | CPU ms non-hits | set-up s "
        "| peaks/frame | true spots | recall | precision | OM/this |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    notes = []
    for r in rows:
        if r["error"]:
            notes.append(f"{r['dataset']} / {r['method']}: {r['error']}")
            lines.append(f"| {r['dataset']} | {r['method']} | not run (note {len(notes)}) "
                         "| | | | | | | | | |")
            continue
        lines.append(
            f"| {r['dataset']} | {r['method']} | {_fmt(r['wall_ms'], '.1f')} "
            f"| {_fmt(r['cpu_ms'], '.1f')} | {_fmt(r['cpu_ms_hits'], '.1f')} "
            f"| {_fmt(r['cpu_ms_non_hits'], '.1f')} | {_fmt(r['setup_s'], '.2f')} "
            f"| {_fmt(r['peaks_per_frame'], '.1f')} | {r['true_spots']} "
            f"| {_fmt(r['recall'], '.3f')} | {_fmt(r['precision'], '.3f')} "
            f"| {_fmt(r['om_ratio'], '.2f')} |"
        )
    lines += ["", "Memory floor, one frame (median of the same runs):", "",
              "| dataset | frame MB (float32) | NumPy copy ms (wall / CPU) "
              "| stored → float32 ms (wall / CPU) |",
              "|---|---:|---:|---:|"]
    for name, f in floors.items():
        lines.append(f"| {name} | {f['frame_bytes'] / 1e6:.1f} "
                     f"| {f['copy_wall_ms']:.1f} / {f['copy_cpu_ms']:.1f} "
                     f"| {f['float32_wall_ms']:.1f} / {f['float32_cpu_ms']:.1f} "
                     f"({f['raw_dtype']}) |")
    lines += ["", f"One call vs prepared: `sxlab.find_peaks(frame, geometry, mask, ...)` in a "
              f"loop over the frames against the prepared `PeakFinder` of the same "
              f"parameters (CPU ms per frame; the set-up column of the one-call row is its "
              f"first call); target ratio ≤ {ONE_CALL_TARGET:g}:", "",
              "| dataset | one call CPU ms | prepared CPU ms | ratio |", "|---|---:|---:|---:|"]
    by_key = {(r["dataset"], r["method"]): r for r in rows}
    for name in frames:
        one, prep = by_key.get((name, ONE_CALL[0]), {}), by_key.get((name, ONE_CALL[1]), {})
        if one.get("cpu_ms") and prep.get("cpu_ms"):
            lines.append(f"| {name} | {one['cpu_ms']:.1f} | {prep['cpu_ms']:.1f} "
                         f"| {one['cpu_ms'] / prep['cpu_ms']:.2f} |")
    lines += ["", "pyFAI is not benchmarked: it has no CPU peak finder (its peak finder is "
              "OpenCL only)."]
    if notes:
        lines += ["", "Notes:"] + [f"{k}. {n}" for k, n in enumerate(notes, 1)]
    return "\n".join(lines)


CSV_COLUMNS = ["dataset", "frames", "method", "wall_ms", "cpu_ms", "cpu_ms_hits",
               "cpu_ms_non_hits", "setup_s", "runs_per_frame", "peaks_per_frame",
               "true_spots", "peaks", "recall", "precision", "om_ratio", "om_ratio_wall",
               "error"]


# ============================================================================== main
def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _common.add_frame_options(ap, "bench_peaks", frames=(20, 2), runs=(5, 2),
                              frames_help="frames per data set, at most the data set's")
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS,
                    help="data sets to run (default: both)")
    return _common.resolve_frame_options(ap, ap.parse_args(argv), frames=(20, 2),
                                         runs=(5, 2))


def main(argv=None) -> None:
    """Run the benchmark and print the report."""
    args = parse_args(argv)
    load_start = _common.load_average()
    pinned = _common.pin_to_one_core()
    python, om_error = ensure_om_venv()
    rows, floors, frames, om_versions, problems = [], {}, {}, {}, []
    for name in args.datasets:
        log(f"{name}: loading up to {args.frames} frame(s)")
        frameset = load_frames(name, args.frames)
        frames[name] = (len(frameset.indices), int(frameset.hits.sum()))
        truths, problem = frame_truths(frameset)
        if problem:
            problems.append(problem)
        floors[name] = memory_floor(frameset, max(args.runs, 5))
        results, versions = run_methods(frameset, args.runs, python, om_error)
        om_versions.update(versions)
        rows += [summarize(frameset, res, truths) for res in results]
    add_ratios(rows)
    header = _common.machine_description(load_start, pinned=pinned, memory=True)
    if om_versions:
        header.append(f"OnDA Monitor environment ({OM_VENV.relative_to(HERE.parent)}): "
                      f"ondamonitor {om_versions['ondamonitor']}, numpy "
                      f"{om_versions['numpy']}, Python {om_versions['python']}")
    header += [f"Warning: {p}" for p in problems]
    text = format_report(header, rows, floors, frames, args.runs)
    print(text)
    if args.out is not None:
        payload = {"machine": header, "parameters": PEAK_PARAMS,
                   "sxlab_common": SXLAB_COMMON, "sxlab_methods": SXLAB_METHODS,
                   "om_modes": OM_MODES, "match_radius_px": MATCH_RADIUS_PX,
                   "true_spot_k": TRUE_SPOT_K, "background_ring_px": BACKGROUND_RING_PX,
                   "rows": rows, "memory_floor": floors}
        _common.write_report(args.out, "bench_peaks", text, rows, payload,
                             columns=CSV_COLUMNS)
        log(f"wrote {args.out}/bench_peaks.md, .csv, .json")


if __name__ == "__main__":
    main()
