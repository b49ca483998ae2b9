"""Time OnDA Monitor's peakfinder8 on frames prepared by ``bench_peaks.py``.

This script runs inside the separate OnDA Monitor virtual environment
(``benchmarks/.venv-om``, numpy < 2) and imports nothing from sxlab. It calls the
compiled ``peakfinder_8`` function of ``om.algorithms._crystallography`` directly on
C-contiguous float32 frames, with the arguments ``om.algorithms.crystallography.
Peakfinder8PeakDetection.find_peaks`` passes, but without that method's per-call float32
copy of the frame.

Usage::

    python om_worker.py JOB_DIR

``JOB_DIR`` holds ``job.json`` (peakfinder8 parameters and modes), ``frames.npy``
(float32, ``(n_frames, ss, fs)``), ``mask.npy`` (int8, 1 = use the pixel) and
``radius.npy`` (float32, distance of each pixel centre from the beam in pixels).

The worker answers on stdout with one JSON object per line. It first prints
``{"versions": {...}, "setup_s": {mode: seconds}}`` once its set-up is done, then reads
requests ``{"frame": j, "mode": name, "runs": r}`` from stdin, one per line, and for each
runs peakfinder8 once untimed and ``r`` times timed on frame ``j``, answering
``{"wall_s": [...], "cpu_s": [...], "peaks": {column: [...]}}`` (wall-clock and process
CPU seconds of each timed run) with peak columns ``fs``, ``ss``,
``intensity``, ``snr``, ``npix``, ``max_value`` and ``background_sigma``. Peak positions
are data-array coordinates with pixel centres at +0.5 (OM puts pixel centres at
integers; 0.5 is added here). ``snr`` is the last value of ``peakfinder_8``'s result
tuple; ``find_peaks`` of ondamonitor 23.8 returns the one before it, the local background
sigma, under the name ``snr``. The worker exits at the end of its input.
"""

from __future__ import annotations

import json
import platform
import random
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np

#: Positions of the values in the tuple returned by ``peakfinder_8`` (ondamonitor 23.8).
_FS, _SS, _INTENSITY, _INDEX, _NPIX, _MAX, _SIGMA, _SNR = range(8)


def fast_mode_sample(radius: np.ndarray, n_per_bin: int, seed: int):
    """Pixels used for the radial statistics in OM's fast mode.

    The selection of ``Peakfinder8PeakDetection._compute_radial_stats_pixels``: pixels
    are binned by ``rint(radius)`` and, in every bin holding at least ``n_per_bin``
    pixels, ``n_per_bin`` of them are drawn at random (all pixels of smaller bins).

    Parameters
    ----------
    radius : ndarray of float32
        Radius map (pixels).
    n_per_bin : int
        Pixels drawn per radial bin.
    seed : int
        Seed of the :class:`random.Random` generator used for the draw.

    Returns
    -------
    pixel_index : ndarray of int32
        Flat indices of the chosen pixels.
    radius_bin : ndarray of int32
        Radial bin of each chosen pixel.
    """
    rng = random.Random(seed)
    rbin = np.rint(radius).astype(np.int64).ravel()
    order = np.argsort(rbin, kind="mergesort")
    splits = np.cumsum(np.bincount(rbin)[:-1])
    index, rad = [], []
    for idx in np.split(order, splits):
        if len(idx) >= n_per_bin:
            idx = np.asarray(rng.sample(list(idx), n_per_bin), dtype=np.int64)
        index.append(idx)
        rad.append(rbin[idx])
    return np.concatenate(index).astype(np.int32), np.concatenate(rad).astype(np.int32)


class Peakfinder8:
    """OM's peakfinder8 with fixed parameters, mask and radius map.

    Parameters
    ----------
    mask : ndarray of int8, shape (ss, fs)
        1 for pixels to use, 0 for pixels to ignore.
    radius : ndarray of float32, shape (ss, fs)
        Radius map in pixels.
    params : dict
        ``adc_threshold``, ``minimum_snr``, ``min_pixel_count``, ``max_pixel_count``,
        ``local_bg_radius``, ``max_num_peaks``.
    fast : bool
        Radial statistics from a random sample of pixels per radial bin.
    n_pixels_per_bin : int
        Sample size per bin in fast mode.
    seed : int
        Seed of the fast-mode sample.
    """

    def __init__(self, mask, radius, params: dict, *, fast: bool = False,
                 n_pixels_per_bin: int = 100, seed: int = 0):
        from om.algorithms._crystallography import peakfinder_8

        self._pf8 = peakfinder_8
        self.mask = np.ascontiguousarray(mask, dtype=np.int8)
        self.radius = np.ascontiguousarray(radius, dtype=np.float32)
        self.params = params
        self.fast = bool(fast)
        if self.fast:
            self.pidx, self.prad = fast_mode_sample(self.radius, n_pixels_per_bin, seed)
        else:
            self.pidx = self.prad = None

    def __call__(self, frame: np.ndarray) -> tuple:
        """Raw ``peakfinder_8`` result for a C-contiguous float32 frame."""
        p = self.params
        ss_size, fs_size = self.mask.shape
        return self._pf8(
            int(p["max_num_peaks"]), frame, self.mask, self.radius,
            0 if self.pidx is None else int(self.pidx.size), self.pidx, self.prad,
            int(self.fast), fs_size, ss_size, 1, 1, float(p["adc_threshold"]),
            float(p["minimum_snr"]), int(p["min_pixel_count"]), int(p["max_pixel_count"]),
            int(p["local_bg_radius"]),
        )


def peak_table(result: tuple) -> dict:
    """Columns of a ``peakfinder_8`` result, positions shifted to pixel centres at +0.5."""
    return {
        "fs": [v + 0.5 for v in result[_FS]],
        "ss": [v + 0.5 for v in result[_SS]],
        "intensity": list(result[_INTENSITY]),
        "snr": list(result[_SNR]),
        "npix": list(result[_NPIX]),
        "max_value": list(result[_MAX]),
        "background_sigma": list(result[_SIGMA]),
    }


def timed(finder: Peakfinder8, frame: np.ndarray, runs: int) -> dict:
    """One untimed warm-up call, then ``runs`` timed calls; the answer to one request."""
    result = finder(frame)
    wall, cpu = [], []
    for _ in range(runs):
        t0, c0 = time.perf_counter(), time.process_time()
        finder(frame)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"wall_s": wall, "cpu_s": cpu, "peaks": peak_table(result)}


def serve(job_dir: Path, requests, answer) -> None:
    """Set up from ``job_dir``, then answer each request line read from ``requests``."""
    job = json.loads((job_dir / "job.json").read_text())
    frames = np.load(job_dir / "frames.npy", mmap_mode="r")
    mask = np.load(job_dir / "mask.npy")
    radius = np.load(job_dir / "radius.npy")
    finders, setup = {}, {}
    for mode in job["modes"]:
        t0 = time.perf_counter()
        finders[mode["name"]] = Peakfinder8(
            mask, radius, job["params"], fast=mode.get("fast", False),
            n_pixels_per_bin=int(mode.get("n_pixels_per_bin", 100)),
            seed=int(mode.get("seed", 0)),
        )
        setup[mode["name"]] = time.perf_counter() - t0
    versions = {"python": platform.python_version(), "numpy": np.__version__,
                "ondamonitor": metadata.version("ondamonitor")}
    answer({"versions": versions, "setup_s": setup})
    current, frame = None, None
    for line in requests:
        if not line.strip():
            continue
        req = json.loads(line)
        if req["frame"] != current:
            current = req["frame"]
            frame = np.array(frames[current], dtype=np.float32, order="C")
        answer(timed(finders[req["mode"]], frame, int(req["runs"])))


def main() -> None:
    """Entry point: ``om_worker.py JOB_DIR``."""
    if len(sys.argv) != 2:
        sys.exit("usage: om_worker.py JOB_DIR")

    def answer(obj: dict) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    serve(Path(sys.argv[1]), sys.stdin, answer)


if __name__ == "__main__":
    main()
