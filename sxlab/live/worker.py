"""Live workers: consume a run's frame stream, process each frame, commit, acknowledge.

A :class:`LiveWorker` is one consumer of the processing group. For each batch of entries
it decodes the blobs, runs :func:`sxlab.pipeline.process_frame` (the batch pipeline's
implementation, with a :func:`~sxlab.pipeline.prepare`\\ d context), writes the tables as
one committed part of the output directory, and only then acknowledges the entries and
publishes the derived ``results`` (and optionally ``hits``) streams in one transaction.
A worker killed at any point leaves its entries pending; they are reclaimed by another
worker after ``claim_idle_s`` and processed again. A frame committed twice that way is
read once (the output reader keys rows by frame), so nothing is lost or duplicated.

:class:`LiveOutput` is the output directory of a live run: the same layout as a batch
run (``sxlab stats``, ``profile``, ``merge`` and :meth:`Results.load` work while it
grows), the CrystFEL stream ``results.stream`` appended chunk by chunk as parts commit,
and :meth:`LiveOutput.finish`, which records every frame that never reached the workers
(trimmed from the cache, lost from the detector) as failed and writes the consolidated
tables.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import time
from dataclasses import dataclass

import numpy as np

from .broker import Broker, ConsumerGroup, Deferred, Entry, derived_key, split_key
from .storage import Selection

__all__ = ["FrameDecoder", "LiveOutput", "LiveWorker", "WorkerSummary", "decode_frame",
           "geometry_from_header"]

log = logging.getLogger("sxlab.live")

def geometry_from_header(header: dict):
    """Detector geometry of a run: the CrystFEL geometry in the header appendix, else
    a single-panel detector built from the SIMPLON configuration."""
    from sxlab.geometry import Beam, Detector, Panel
    from sxlab.io import read_geom

    text = header.get("appendix", {}).get("geometry")
    if text:
        return read_geom(text, source_name=f"header of run {header.get('run')}")
    cfg = header.get("config", {})
    need = ("beam_center_x", "beam_center_y", "detector_distance", "x_pixel_size",
            "wavelength", "x_pixels_in_detector", "y_pixels_in_detector")
    missing = [k for k in need if k not in cfg]
    if missing:
        raise ValueError(f"run {header.get('run')!r}: the header has no geometry and its "
                         f"configuration lacks {missing}; give a geometry file")
    nx, ny = int(cfg["x_pixels_in_detector"]), int(cfg["y_pixels_in_detector"])
    cutoff = cfg.get("countrate_correction_count_cutoff")
    panel = Panel(name="p0", min_fs=0, max_fs=nx - 1, min_ss=0, max_ss=ny - 1,
                  corner_x=-float(cfg["beam_center_x"]),
                  corner_y=-float(cfg["beam_center_y"]), res=1.0 / float(cfg["x_pixel_size"]),
                  clen=float(cfg["detector_distance"]), data="/entry/data/data",
                  max_adu=float(cutoff) if cutoff else float("inf"))
    return Detector(panels=(panel,), beam=Beam(float(cfg["wavelength"])),
                    groups=(("all", ("p0",)),), name=str(cfg.get("description", "")))


class FrameDecoder:
    """Stream entries into images and bad-pixel masks, in reused arrays.

    The conversion is the batch workers' (:func:`sxlab.pipeline.read_frame`,
    :func:`~sxlab.io.hdf5.convert_frame`): pixels flagged by value (EIGER convention:
    ``2**bits - 1`` and ``2**bits - 2``) are set to 0 and marked bad, as are the header's
    ``pixel_mask`` pixels; frames of the dtypes the processing takes as they are
    (uint16, uint32, int32, float32) stay in that dtype, others become float32.
    Bitshuffle-LZ4 blobs are decoded straight into a buffer kept from frame to frame; the
    mask (and image) arrays are reused too, so the arrays returned by :meth:`decode` hold
    only the latest frame.

    Parameters
    ----------
    pixel_mask : ndarray, optional
        The run header's pixel mask (non-zero = bad).
    binner : Binner, optional
        Bin every frame (:meth:`Binner.bin_stored_into <sxlab.binning.Binner.bin_stored_into>`,
        one pass over the stored frame; the binner's static mask replaces ``pixel_mask``):
        images and masks come out in the binned geometry.

    Examples
    --------
    >>> dec = FrameDecoder(header["pixel_mask"])  # doctest: +SKIP
    >>> image, bad = dec.decode(entry)  # doctest: +SKIP
    """

    def __init__(self, pixel_mask=None, *, binner=None):
        self.pixel_mask = (None if pixel_mask is None
                           else np.ascontiguousarray(np.asarray(pixel_mask) != 0))
        self.binner = binner
        self._raw: dict = {}
        self._out: dict = {}

    def _buffer(self, store: dict, key, make):
        buf = store.get(key)
        if buf is None:
            buf = store[key] = make()
        return buf

    def decode(self, entry: Entry) -> tuple[np.ndarray, np.ndarray]:
        """Image and bad mask (bool) of an image entry, in this decoder's arrays.

        Raises
        ------
        StreamMessageError
            A blob that does not decode or a frame of the wrong shape (names the series
            and frame).
        """
        from sxlab._frames import NATIVE_DTYPES
        from sxlab.io.compression import BlobError, bslz4_decode_into, decompress
        from sxlab.io.hdf5 import convert_frame

        from .eiger import StreamMessageError

        frame = entry.frame
        series = int(entry.number("series", -1))
        try:
            shape = tuple(int(n) for n in json.loads(entry.get("shape")))
            dtype = np.dtype(entry.text("dtype"))
            encoding = entry.text("encoding")
            blob = entry.get("data")
            if encoding == "bslz4" and dtype.isnative and dtype.kind in "uif":
                raw = self._buffer(self._raw, (shape, dtype.str),
                                   lambda: np.empty(shape, dtype))
                bslz4_decode_into(blob, raw)
            else:
                raw = decompress(blob, encoding, shape, dtype)
        except (BlobError, ValueError, TypeError) as exc:
            raise StreamMessageError(str(exc), series=series, frame=frame) from exc
        if self.binner is not None:
            want = tuple(self.binner.source_geometry.data_shape)
            if raw.size != int(np.prod(want)):
                raise StreamMessageError(f"image of shape {shape}, the run's geometry has "
                                         f"{want}", series=series, frame=frame)
            out_shape = tuple(self.binner.geometry.data_shape)
            image, bad = self._buffer(self._out, out_shape, lambda: (
                np.empty(out_shape, np.float32), np.empty(out_shape, bool)))
            self.binner.bin_stored_into(raw.reshape(want), image, bad)
            return image, bad
        if self.pixel_mask is not None and self.pixel_mask.shape != raw.shape:
            raise StreamMessageError(f"image of shape {raw.shape}, the header's pixel mask "
                                     f"has {self.pixel_mask.shape}", series=series,
                                     frame=frame)
        if raw.dtype.name in NATIVE_DTYPES:   # processed as stored: flagged pixels zeroed
            image = raw
            bad = self._buffer(self._out, (raw.shape, "bad"), lambda: np.empty(raw.shape, bool))
        else:
            image, bad = self._buffer(self._out, raw.shape, lambda: (
                np.empty(raw.shape, np.float32), np.empty(raw.shape, bool)))
        convert_frame(raw, True, self.pixel_mask, image, bad)
        return image, bad


def decode_frame(entry: Entry, pixel_mask=None, *, attrs: dict | None = None):
    """Image and bad-pixel mask of a stream entry, exactly as :meth:`Run.read` makes them.

    New arrays wrapped as DataArrays, for one-off use (viewers, notebooks); workers
    decode into reused arrays with :class:`FrameDecoder`.

    Returns
    -------
    image : xarray.DataArray of float32, dims ``("ss", "fs")``
    bad : xarray.DataArray of bool
    """
    import xarray as xr

    image, bad = FrameDecoder(pixel_mask).decode(entry)
    image = image.astype(np.float32, copy=False)
    attrs = {"frame": entry.frame, **(attrs or {})}
    return (xr.DataArray(image, dims=("ss", "fs"), attrs=attrs),
            xr.DataArray(bad, dims=("ss", "fs"), attrs=dict(attrs)))


# ------------------------------------------------------------------------ output
class LiveOutput:
    """The output directory of a live run (batch layout, growing), for one writer.

    Parameters
    ----------
    out : path
    params : Params
    geometry : Detector
    tag : str
        Tag of the parts this writer commits (a worker's consumer name), so that
        several writers fill one directory (see :class:`sxlab.results.ResultsWriter`).
    """

    def __init__(self, out, params, geometry, *, tag: str = ""):
        from sxlab.results import ResultsWriter

        tag = re.sub(r"[^A-Za-z0-9_-]", "_", tag)
        self.writer = ResultsWriter(out, params, geometry, tag=tag)
        self.out = self.writer.out
        self.params = params
        self.geometry = geometry
        self._reader = None
        self._stream = None
        self._stream_frames: set[int] = set()

    def commit(self, results) -> str:
        """Write the :class:`~sxlab.pipeline.FrameResult` s of some frames as one part."""
        from sxlab.pipeline import frame_tables

        return self.writer.write(**frame_tables(results))

    def follow(self) -> int:
        """Append chunks of newly committed frames to ``results.stream``; returns how many."""
        from sxlab.io import StreamWriter
        from sxlab.results import ResultsReader

        if self._reader is None:
            self._reader = ResultsReader(self.out)
        t = self._reader.poll()
        frames = t["frames"][~t["frames"].frame.isin(self._stream_frames)]
        if not len(frames):
            return 0
        if self._stream is None:
            self._stream = StreamWriter(self.out / "results.stream", self.geometry,
                                        cell=self.params.cell,
                                        command_line="sxlab live run")
        self._stream.write_frames(frames, t["peaks"], t["crystals"], t["reflections"])
        self._stream_frames.update(frames.frame.tolist())
        return len(frames)

    def finish(self, broker: Broker | None = None, key: str | None = None,
               group: str = "process", n_frames: int | None = None):
        """Record frames that never reached the workers as failed, then write the
        consolidated tables and the final stream. Returns :class:`~sxlab.Results`."""
        from sxlab.pipeline import failed_result
        from sxlab.results import ResultsReader

        run_name = ""
        reasons: dict[int, str] = {}
        if broker is not None and key is not None:
            info = broker.info(key)
            run_name = info.get("run", split_key(key)[3])
            n_frames = int(info.get("n_frames", n_frames or 0))
            for who in ("", group):
                for item in broker.client.lrange(f"{key}:trimmed:{who}", 0, -1):
                    a, b = json.loads(item)
                    for f in range(a, b + 1):
                        reasons[f] = ("trimmed from the broker cache before the "
                                      f"{group!r} group read it (cache of "
                                      f"{info.get('maxlen', '?')} frames full)")
        reader = ResultsReader(self.out)
        reader.poll()
        done = reader.frames_done()
        missing = [f for f in range(n_frames or 0) if f not in done]
        if missing:
            writer = LiveOutput(self.out, self.params, self.geometry, tag="finish")
            results = [failed_result(f, reasons.get(f, "never processed: not delivered to "
                                                        "any worker"), -1, run_name,
                                     {"event": f"//{f}", "source": key or ""})
                       for f in missing]
            for k in range(0, len(results), 1000):
                writer.commit(results[k:k + 1000])
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        return self.writer.finish()


# ------------------------------------------------------------------------ worker
@dataclass
class WorkerSummary:
    """What one worker did."""

    frames: int = 0
    failed: int = 0
    reclaimed: int = 0
    cpu_s: float = 0.0
    wall_s: float = 0.0
    wait_s: float = 0.0


class LiveWorker:
    """One processing consumer of a run's frame stream.

    Parameters
    ----------
    broker : Broker
    key : str
        The run's stream key (:meth:`Broker.key`).
    out : path
        Output directory (shared by all workers of the run).
    params : Params, optional
    geometry : Detector or path, optional
        Default: from the run header (:func:`geometry_from_header`).
    group : str
        Consumer group (``process``).
    consumer : str, optional
        Consumer name; a worker restarted with its old name first finishes what it had.
    worker : int
        Worker number recorded in the tables.
    claim_idle_s : float
        Reclaim entries pending longer than this from dead consumers.
    batch : int
        Entries read, processed and committed together.
    publish : tuple of str
        Derived streams to publish: ``results`` (per-frame summary with the peaks of
        hits, for viewers and ``tail``), ``hits`` and ``indexed`` (the entries of hit /
        indexed frames, blob untouched, plus the run's blank sample; see
        :mod:`sxlab.live.storage`).
    bin_factor : int, optional
        Bin every frame ``bin_factor`` × ``bin_factor`` in this worker as it is decoded
        (:class:`~sxlab.binning.Binner` with the header's pixel mask; no second stream, no
        re-encoding) and process it with the binned geometry and
        :func:`~sxlab.live.binner.binned_params`. Peak and reflection positions are
        reported in the unbinned detector's pixels (:meth:`Binner.unbin_peaks
        <sxlab.binning.Binner.unbin_peaks>`), so the output directory has the run's own
        geometry; ``params.toml`` holds the binned parameters that ran.
    """

    def __init__(self, broker: Broker, key: str, out, params=None, *, geometry=None,
                 group: str = "process", consumer: str | None = None, worker: int = 0,
                 claim_idle_s: float = 30.0, batch: int = 4,
                 publish: tuple = ("results",), results_maxlen: int = 100_000,
                 bin_factor: int | None = None):
        from sxlab.io import read_geom
        from sxlab.params import Params
        from sxlab.pipeline import prepare

        from .binner import binned_params, header_mask

        self.broker = broker
        self.key = key
        self.params = params or Params()
        self.header = broker.wait_header(key, timeout_s=60)
        binning = self.header.get("appendix", {}).get("binning")
        if binning:   # a binning worker's stream: pixel lengths and counts follow the factor
            if bin_factor and bin_factor > 1:
                raise ValueError(f"{key} is already binned {binning['factor']}x"
                                 f"{binning['factor']}; do not bin it again in the worker")
            self.params = binned_params(self.params, int(binning["factor"]))
        if isinstance(geometry, (str, os.PathLike)):
            geometry = read_geom(geometry)
        self.geometry = geometry or geometry_from_header(self.header)
        self.binner = None
        process_geometry = self.geometry
        if bin_factor and bin_factor > 1:
            from sxlab.binning import Binner

            self.binner = Binner(self.geometry, header_mask(self.header, self.geometry),
                                 int(bin_factor))
            self.params = binned_params(self.params, int(bin_factor))
            process_geometry = self.binner.geometry
        self.decoder = FrameDecoder(self.header.get("pixel_mask"), binner=self.binner)
        self.worker = int(worker)
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.group = ConsumerGroup(broker.client, key, group, self.consumer,
                                   claim_idle_s=claim_idle_s)
        self.output = LiveOutput(out, self.params, self.geometry, tag=self.consumer)
        self.context = prepare(process_geometry, self.params, worker=self.worker)
        self.batch = int(batch)
        self.publish = tuple(publish)
        self.results_maxlen = results_maxlen
        self.summary = WorkerSummary()
        self.selection = Selection.for_run(broker, key)
        self._attrs = {"run": self.header["run"], "source": key}
        self._rate_t: list[float] = []

    def _process(self, entry: Entry, wait_s: float):
        from sxlab.pipeline import failed_result, process_frame

        frame = entry.frame
        attrs = {**self._attrs, "event": f"//{frame}"}
        if entry.type == "deleted":
            return failed_result(frame, "trimmed from the broker cache after delivery to a "
                                 "worker that died; its data is gone", self.worker,
                                 self.header["run"], attrs)
        if entry.type == "failed":
            return failed_result(frame, entry.text("reason"), self.worker,
                                 self.header["run"], attrs)
        t0 = time.perf_counter()
        try:
            image, bad = self.decoder.decode(entry)
        except Exception as exc:  # noqa: BLE001 - recorded as a failed frame
            return failed_result(frame, exc, self.worker, self.header["run"], attrs)
        decode_s = time.perf_counter() - t0
        try:
            r = process_frame(image, bad, self.context, frame=frame, read_s=decode_s,
                              wait_s=wait_s, attrs={"frame": frame, **attrs})
        except Exception as exc:  # noqa: BLE001
            self.context.profiler.clear()
            return failed_result(frame, exc, self.worker, self.header["run"], attrs)
        if self.binner is not None:      # positions in the detector's own pixels
            if len(r.peaks):
                r.peaks = self.binner.unbin_peaks(r.peaks)
            if len(r.reflections):
                r.reflections = self.binner.unbin_peaks(r.reflections)
        return r

    def _result_fields(self, r, entry: Entry, now: float) -> dict:
        f = r.frame
        fields = {"frame": f["frame"], "status": f["status"], "error": f["error"],
                  "hit": int(bool(f["hit"])), "indexed": int(bool(f["indexed"])),
                  "n_peaks": f["n_peaks"], "n_crystals": f["n_crystals"],
                  "n_reflections": f["n_reflections"],
                  "resolution_A": float(f["resolution_A"]),
                  "solvent_ratio": float(f["solvent_ratio"]), "worker": self.worker,
                  "t_received": entry.number("t_received", 0.0), "t_committed": now,
                  "total_s": float(f["total_s"])}
        if f["hit"] and len(r.peaks):
            p = r.peaks
            fields["peaks"] = json.dumps({"fs": np.round(p.fs.to_numpy(), 2).tolist(),
                                          "ss": np.round(p.ss.to_numpy(), 2).tolist(),
                                          "intensity": np.round(p.intensity.to_numpy(),
                                                                1).tolist()})
        return fields

    def step(self, block_s: float = 0.5) -> int:
        """Read, process, commit and acknowledge one batch; returns entries handled."""
        t0 = time.perf_counter()
        entries = self.group.read(count=self.batch, block_s=block_s)
        wait_s = time.perf_counter() - t0
        if self.group.last_source == "claimed":
            self.summary.reclaimed += len(entries)
        if not entries:
            self.summary.wait_s += wait_s
            return 0
        self.summary.wait_s += wait_s
        results, pairs, ids = [], [], []
        for e in entries:
            ids.append(e.id)
            if e.type in ("header", "end"):
                continue
            r = self._process(e, wait_s)
            wait_s = 0.0
            results.append(r)
            pairs.append((r, e))
        if results:
            self.output.commit(results)
        now = time.time()
        pipe = self.broker.client.pipeline(transaction=True)
        # derived entries go out only with a frame's first acknowledgement: a frame
        # reclaimed from a slow (not dead) worker is published once
        deferred = {}
        rkey = derived_key(self.key, "results")
        for r, e in pairs:
            d = deferred.setdefault(e.id, Deferred())
            if "results" in self.publish:
                d.xadd(rkey, self._result_fields(r, e, now), maxlen=self.results_maxlen,
                       approximate=True)
            self.selection.publish(d, [(r, e)], self.publish)
        self.group.ack_then(pipe, ids, deferred)
        self._rate_t = [t for t in self._rate_t if now - t < 10.0] + [now] * len(results)
        span = max(now - self._rate_t[0], 1e-3) if len(self._rate_t) > 1 else 10.0
        pipe.hset(f"{self.key}:info", mapping={
            f"rate:{self.group.group}:{self.consumer}": len(self._rate_t) / max(span, 1.0),
            f"seen:{self.group.group}:{self.consumer}": now})
        pipe.execute()
        self.summary.frames += len(results)
        self.summary.failed += sum(r.frame["status"] != "ok" for r in results)
        return len(entries)

    def run(self, *, stop: threading.Event | None = None, until_finished: bool = True,
            idle_timeout_s: float | None = None) -> WorkerSummary:
        """Process until the run has ended and the group acknowledged every entry (or
        ``stop`` is set, or nothing came for ``idle_timeout_s``)."""
        cpu0, wall0 = time.process_time(), time.perf_counter()
        idle_since = time.monotonic()
        try:
            while not (stop is not None and stop.is_set()):
                n = self.step()
                if n:
                    idle_since = time.monotonic()
                    continue
                if until_finished and self.broker.finished(self.key, self.group.group):
                    break
                if idle_timeout_s and time.monotonic() - idle_since > idle_timeout_s:
                    break
        finally:
            self.summary.cpu_s += time.process_time() - cpu0
            self.summary.wall_s += time.perf_counter() - wall0
        self.group.leave()
        return self.summary
