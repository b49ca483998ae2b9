"""The NeXus writer of a live run: data files of 1000 frames and a master that is always valid.

:class:`LiveWriter` is the one consumer of the ``write`` group on a run's frame stream, or
on a derived stream (``hits``, ``indexed``: a storage policy, see
:mod:`sxlab.live.storage`; ``binned2`` ...: a binned run, see :mod:`sxlab.live.binner`).
It stores every entry's blob as it came from the detector, with ``write_direct_chunk``:
nothing is decompressed or recompressed (bitshuffle-LZ4 blobs become HDF5 filter 32008
chunks, LZ4 blobs filter 32004 chunks, the 16-byte framing of a bare LZ4 block added).

Files (``<prefix>`` is the run name, plus ``_<input>`` for other inputs than the frames):

* ``<prefix>_data_000001.h5`` ...: ``frames_per_file`` frames each in
  ``/entry/data/data`` with ``image_nr_low``/``image_nr_high``, ``frame_number`` (the
  frame numbers of the source run) and ``blank_sample`` (1 for frames of the blank
  sample). A data file is written as ``.part`` and renamed when complete.
* ``<prefix>_master.h5``: NXmx metadata from the run header (geometry, wavelength, pixel
  mask, exposure, sensor), the virtual dataset over the complete data files,
  ``/entry/data/frame_number`` and the NXcollection ``/entry/storage`` (policy, input
  stream, source run and frame count, blank sample, frames that could not be stored and
  why). It is replaced atomically when the writer starts and whenever a data file
  completes, so it opens at any moment and shows complete frames only.

A frame is acknowledged only once its data file is complete and renamed. A writer that
dies loses its ``.part`` file; restarted (with any consumer name: it takes over what the
group had pending), it keeps the complete files, deletes the ``.part`` file and writes the
frames it had not acknowledged again, skipping any it finds already stored: every frame
ends up in the files exactly once. The broker's cache must therefore hold at least one
file's worth of frames (``maxlen`` of the ingest).

Frames that cannot be stored (lost before the ingest, trimmed from the cache, a malformed
blob) are listed in the master with their reason, never dropped silently.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from .broker import Broker, Entry, derived_key, split_key
from .sequential import SequentialConsumer
from .storage import POLICIES, storage_policy

__all__ = ["LiveWriter", "WriterSummary", "input_streams", "master_path"]

log = logging.getLogger("sxlab.live")

#: NXmxWriter compression of each blob encoding (see :mod:`sxlab.io.compression`).
_COMPRESSION = {"bslz4": "bslz4", "lz4-hdf5": "lz4", "lz4": "lz4", "none": None}
_LZ4_HEADER = struct.Struct(">QII")
#: Per-frame values stored with the frames.
FRAME_INFO = {"frame_number": "int64", "blank_sample": "uint8"}

def input_streams(key: str, input: str = "frames") -> tuple[str, str, str]:
    """``(input stream, frame stream, policy)`` of writer input ``input`` of run ``key``.

    ``frames`` is the run's frame stream; ``binned2`` a derived frame stream; ``hits`` and
    ``indexed`` (also ``binned2_hits`` ...) are selections of a frame stream.

    Examples
    --------
    >>> input_streams("sx:bt:eiger:r1", "binned2_hits")
    ('sx:bt:eiger_binned2_hits:r1', 'sx:bt:eiger_binned2:r1', 'hits')
    """
    parts = [p for p in str(input).split("_") if p]
    if not parts:
        raise ValueError("empty writer input")
    policy = "all"
    if parts[-1] in POLICIES and parts[-1] != "all":
        policy = parts.pop()
    frame_key = key
    for p in parts:
        if p not in ("frames", "all"):
            frame_key = derived_key(frame_key, p)
    input_key = frame_key if policy == "all" else derived_key(frame_key, policy)
    return input_key, frame_key, policy


def master_path(out, run: str, input: str = "frames") -> Path:
    """Master file a writer of ``input`` writes for ``run`` in directory ``out``.

    Examples
    --------
    >>> master_path("raw", "run12", "hits").as_posix()
    'raw/run12_hits_master.h5'
    """
    suffix = "" if input in ("frames", "all") else f"_{input}"
    return Path(out) / f"{run}{suffix}_master.h5"


def _chunk_for(blob: bytes, encoding: str, nbytes: int) -> bytes:
    """The HDF5 chunk of a detector blob, without decoding it.

    A bare LZ4 block (EIGER stream v1 ``lz4<``) gets the HDF5-LZ4 framing (one block)
    in front. The rare block exactly as long as the frame would read as stored-raw, so
    it is decoded instead.
    """
    if encoding != "lz4":
        return blob
    if len(blob) == nbytes:
        import lz4.block

        raw = lz4.block.decompress(blob, uncompressed_size=nbytes)
        return _LZ4_HEADER.pack(nbytes, nbytes, nbytes) + raw
    return _LZ4_HEADER.pack(nbytes, nbytes, len(blob)) + bytes(blob)


@dataclass
class WriterSummary:
    """What a :class:`LiveWriter` did."""

    stored: int = 0
    failed: int = 0
    skipped: int = 0        # frames found already stored (after a restart)
    recoded: int = 0        # frames whose encoding differed from the files'
    files: int = 0
    bytes: int = 0
    max_lag: int = 0
    cpu_s: float = 0.0
    wall_s: float = 0.0


class LiveWriter:
    """The NeXus writer consumer group of a live run (see the module notes).

    Parameters
    ----------
    broker : Broker
    key : str
        The run's frame stream key.
    out : path
        Directory for the files.
    input : str
        ``frames`` (every frame), ``hits``, ``indexed`` (storage policies), ``binned2``
        ... (a binned stream), ``binned2_hits`` ...
    group : str
        Consumer group (one writer per group at a time).
    consumer : str
        Consumer name.
    frames_per_file : int
    process_group : str
        Group of the processing workers whose ``hits``/``indexed`` streams this writer
        stores: the selection is complete when that group has finished the run.
    prefix : str, optional
        File name prefix (default: run name, plus ``_<input>`` unless ``frames``).
    geometry : Detector, optional
        Default: from the run header.
    batch : int
        Entries read at a time.

    Examples
    --------
    >>> w = LiveWriter(broker, broker.key("run0012"), "raw/", input="hits")  # doctest: +SKIP
    >>> w.run()  # doctest: +SKIP
    WriterSummary(stored=5012, failed=0, ...)
    """

    def __init__(self, broker: Broker, key: str, out, *, input: str = "frames",
                 group: str = "write", consumer: str = "writer",
                 frames_per_file: int = 1000, process_group: str = "process",
                 prefix: str | None = None, geometry=None, batch: int = 64,
                 header_timeout_s: float | None = 60.0):
        from .worker import geometry_from_header

        self.broker = broker
        self.key = key
        self.input = input
        self.input_key, self.frame_key, self.policy = input_streams(key, input)
        self.header = broker.wait_header(self.frame_key, timeout_s=header_timeout_s)
        self.geometry = geometry if geometry is not None else geometry_from_header(
            self.header)
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        run = self.header["run"] or split_key(self.frame_key)[3]
        self.master_path = (master_path(self.out, run, input) if prefix is None
                            else self.out / f"{prefix}_master.h5")
        self.frames_per_file = int(frames_per_file)
        self.process_group = process_group
        self.group = SequentialConsumer(broker.client, self.input_key, group, consumer,
                                        batch=batch)
        self.failed_key = f"{self.input_key}:failed:{group}"
        self.summary = WriterSummary()
        self.writer = None
        self._file_ids: list[str] = []
        self._stored: set[int] = set()
        self._failed: dict[int, str] = {
            int(k): v.decode() for k, v in broker.client.hgetall(self.failed_key).items()}
        self._rate: list[tuple[float, int, int]] = []
        self.done = False
        maxlen = int(broker.info(self.frame_key).get("maxlen", 0) or 0)
        if maxlen and maxlen < self.frames_per_file:
            log.warning("%s: the broker keeps only %d frames, less than a data file (%d): "
                        "frames of an unfinished file are lost if the writer dies",
                        self.frame_key, maxlen, self.frames_per_file)
        if os.path.exists(self._first_data_file()):
            self._open_writer(None, None, resume=True)

    # ------------------------------------------------------------------ set-up
    def _first_data_file(self) -> str:
        from sxlab.io.nxmx import data_file_name

        return data_file_name(self.master_path, 1)

    def _note_lost(self, entry_id: str) -> None:
        frame = self._frame_of(Entry(entry_id, None))
        reason = ("trimmed from the broker cache after it was handed to a writer that died "
                  "before storing it")
        if frame is None:
            log.warning("%s: entry %s was trimmed from the broker cache before the writer "
                        "stored it; its frame number is unknown", self.input_key, entry_id)
            return
        self._record_failed([(frame, reason)], [])

    def _frame_of(self, e: Entry) -> int | None:
        """Frame number of an entry: its ``frame`` field, or (frame streams) its id."""
        if e.fields is not None and b"frame" in e.fields:
            return int(e.fields[b"frame"])
        return _frame_of_id(e.id) if self.policy == "all" else None

    def _storage_fields(self) -> dict:
        info = self.broker.info(self.frame_key)
        fields = {
            "policy": self.policy,
            "input_stream": self.input_key,
            "source_stream": self.frame_key,
            "source_run": self.header["run"],
            "source_frames": int(info.get("n_frames", info.get("nimages", -1)) or -1),
        }
        if self.policy != "all":
            sp = storage_policy(self.broker, self.frame_key)
            fields["blank_sample_fraction"] = sp["blank_fraction"]
            fields["blank_sample_seed"] = sp["blank_seed"]
        binning = self.header.get("appendix", {}).get("binning")
        if binning:
            fields["binning_factor"] = int(binning["factor"])
            fields["binning_source_stream"] = str(binning.get("source", ""))
        frames = sorted(f for f in self._failed if f not in self._stored)
        fields["failed_frame_number"] = np.asarray(frames, dtype=np.int64)
        fields["failed_reason"] = np.asarray([self._failed[f] for f in frames],
                                             dtype=h5py.string_dtype())
        return fields

    def _open_writer(self, dtype, encoding, *, resume: bool = False) -> None:
        import datetime as dt

        from sxlab.io.nxmx import NXmxWriter

        if resume:
            with h5py.File(self._first_data_file(), "r") as f:
                ds = f["entry/data/data"]
                dtype = ds.dtype
                filters = ds.id.get_create_plist()
                ids = [filters.get_filter(k)[0] for k in range(filters.get_nfilters())]
            compression = ("bslz4" if 32008 in ids else "lz4" if 32004 in ids else None)
        else:
            compression = _COMPRESSION[encoding]
        cfg = self.header.get("config", {})
        mask = self.header.get("pixel_mask")
        shape = tuple(self.geometry.data_shape)
        if mask is not None:
            mask = np.asarray(mask).reshape(shape) if mask.size == np.prod(shape) else None
        cutoff = cfg.get("countrate_correction_count_cutoff")
        material = str(cfg.get("sensor_material") or "Si")
        created = float(self.header.get("created") or time.time())
        self.writer = NXmxWriter(
            self.master_path, self.geometry, frames_per_file=self.frames_per_file,
            dtype=dtype, compression=compression, pixel_mask=mask,
            saturation_value=int(cutoff) if cutoff else None,
            count_time=cfg.get("count_time"), frame_time=cfg.get("frame_time"),
            sample_name=self.header["run"],
            extra_attrs={"run": self.header["run"], "series": int(self.header["series"])},
            start_time=dt.datetime.fromtimestamp(created, dt.timezone.utc),
            sensor_material=material if material in ("Si", "CdTe", "GaAs") else "Si",
            sensor_thickness_m=float(cfg.get("sensor_thickness") or 450e-6),
            frame_info=FRAME_INFO, collections={"storage": self._storage_fields()},
            atomic=True, resume=resume)
        self._encoding = {v: k for k, v in _COMPRESSION.items() if k != "lz4"}[compression]
        self._nbytes = int(np.prod(shape)) * self.writer.dtype.itemsize
        self._stored = set(self.writer.stored_info()["frame_number"].tolist())
        self.summary.files = len(self.writer.data_paths)

    # ----------------------------------------------------------------- writing
    def _record_failed(self, items: list[tuple[int, str]], ids: list[str]) -> None:
        pipe = self.broker.client.pipeline(transaction=True)
        for frame, reason in items:
            if frame in self._stored:
                continue
            self._failed[frame] = reason
            pipe.hset(self.failed_key, frame, reason)
        self.group.ack(ids, pipe)
        pipe.execute()
        self.summary.failed = len(self._failed)

    def _blob(self, e: Entry) -> bytes:
        """The chunk to store for image entry ``e`` (ValueError: it cannot be stored)."""
        from sxlab.io.compression import BlobError, bslz4_problem, compress, decompress

        shape = tuple(json.loads(e.text("shape", "null")) or ())
        if int(np.prod(shape)) != int(np.prod(self.geometry.data_shape)) or (
                shape[-1] != self.geometry.data_shape[-1]):
            raise ValueError(f"frame of shape {shape}, the run's geometry has "
                             f"{tuple(self.geometry.data_shape)}")
        dtype = np.dtype(e.text("dtype"))
        if dtype != self.writer.dtype:
            raise ValueError(f"frame of dtype {dtype}, the run's files hold "
                             f"{self.writer.dtype}")
        encoding, blob = e.text("encoding"), e.get("data")
        if blob is None:
            raise ValueError("image entry without data")
        if encoding != self._encoding and not (encoding == "lz4"
                                               and self._encoding == "lz4-hdf5"):
            # Not the encoding the files were started with: the only case that recodes.
            try:
                raw = decompress(blob, encoding, shape, dtype)
            except (BlobError, ValueError) as exc:
                raise ValueError(f"{encoding} blob does not decode: {exc}") from exc
            self.summary.recoded += 1
            encoding, blob = self._encoding, compress(raw, self._encoding)
        if encoding == "bslz4":
            problem = bslz4_problem(blob, self._nbytes, dtype.itemsize)
            if problem:
                raise ValueError(f"damaged bitshuffle-LZ4 blob: {problem}")
        return _chunk_for(blob, encoding, self._nbytes)

    def _store(self, e: Entry) -> None:
        frame = e.frame
        if frame in self._stored:
            self.summary.skipped += 1
            self.group.ack([e.id])
            return
        if self.writer is None:
            self._open_writer(np.dtype(e.text("dtype", "uint16")), e.text("encoding"))
        try:
            chunk = self._blob(e)
        except ValueError as exc:
            self._record_failed([(frame, f"not stored: {exc}")], [e.id])
            return
        if self.writer.frames_in_file == 0:
            # A new data file: bring the master's list of failed frames up to date.
            self.writer.collections["storage"] = self._storage_fields()
        self.writer.write_chunk(chunk, frame_number=frame,
                                blank_sample=int(e.number("blank_sample", 0)))
        self._stored.add(frame)
        self._failed.pop(frame, None)
        self._file_ids.append(e.id)
        self.summary.stored += 1
        self.summary.bytes += len(chunk)
        if self.writer.frames_in_file >= self.frames_per_file:
            self._complete_file()

    def _complete_file(self) -> None:
        """Finish the data file, rewrite the master, then acknowledge its frames."""
        self.writer.collections["storage"] = self._storage_fields()
        self.writer.finish_file()
        self.summary.files = len(self.writer.data_paths)
        self.group.ack(self._file_ids)
        self._file_ids = []

    def step(self, block_s: float | None = 0.5) -> int:
        """Read and handle one batch of entries; returns how many."""
        entries = self.group.read(block_s)
        for e in entries:
            kind = e.type
            if kind == "image":
                self._store(e)
            elif kind == "failed":
                self._record_failed([(e.frame, e.text("reason"))], [e.id])
            elif kind == "deleted":
                self._note_lost(e.id)
                self.group.ack([e.id])
            elif kind == "end":
                self._finish(end_id=e.id)
                break
            else:  # header, or anything else: nothing to store
                self.group.ack([e.id])
        self._track(len(entries))
        return len(entries)

    def _selection_complete(self) -> bool:
        """For hits/indexed input: the workers have finished the run."""
        return self.broker.finished(self.frame_key, self.process_group)

    def _finish(self, end_id: str | None = None) -> None:
        if self.writer is None:
            self._open_writer(np.dtype(f"uint{self.header['config'].get('bit_depth_image', 16)}"),
                              "bslz4")
        self.writer.collections["storage"] = self._storage_fields()
        self.writer.close()
        self.summary.files = len(self.writer.data_paths)
        ids = self._file_ids + ([end_id] if end_id else [])
        self.group.ack(ids)
        self._file_ids = []
        self.broker.client.hset(f"{self.frame_key}:info",
                                f"written:{self.input}", self.summary.stored)
        self.done = True

    # ------------------------------------------------------------------ status
    def lag(self) -> int:
        """Frames of the input stream this writer has not handled yet (published to the
        stream, neither stored nor recorded as failed)."""
        published = int(self.broker.info(self.input_key).get("frames_in", 0) or 0)
        return max(published - len(self._stored | set(self._failed)), 0)

    def _track(self, n: int) -> None:
        now = time.time()
        self._rate = [r for r in self._rate if now - r[0] < 10.0]
        self._rate.append((now, self.summary.stored, self.summary.bytes))
        if n:
            lag = self.lag()
            if lag > 2 * self.frames_per_file and lag > 2 * self.summary.max_lag:
                log.warning("%s: the writer is %d entries behind", self.input_key, lag)
            self.summary.max_lag = max(self.summary.max_lag, lag)
            self.broker.client.hset(f"{self.frame_key}:info", mapping={
                f"writer:{self.input}:lag": lag, f"writer:{self.input}:stored":
                self.summary.stored, f"writer:{self.input}:seen": now})

    def status(self) -> pd.DataFrame:
        """One row: stored, failed, files, frames in the open file, lag and rates.

        Columns: :data:`sxlab.tables.WRITER_STATUS`.
        """
        from sxlab import tables

        (t0, n0, b0), (t1, n1, b1) = (self._rate[0], self._rate[-1]) if self._rate else (
            (0, 0, 0), (0, 0, 0))
        span = t1 - t0
        row = {"input": self.input_key, "group": self.group.group,
               "stored": len(self._stored),
               "failed": len(self._failed), "files": self.summary.files,
               "in_open_file": self.writer.frames_in_file if self.writer else 0,
               "lag": self.lag(),
               "rate_hz": (n1 - n0) / span if span > 0 else np.nan,
               "throughput_MBps": (b1 - b0) / span / 1e6 if span > 0 else np.nan}
        return tables.WRITER_STATUS.make(pd.DataFrame([row]))

    # --------------------------------------------------------------------- run
    def run(self, *, stop=None, idle_timeout_s: float | None = None,
            progress: bool = False) -> WriterSummary:
        """Write until the input is complete (end of the run; for selections, the end of
        processing), ``stop`` is set or nothing came for ``idle_timeout_s``."""
        cpu0, wall0 = time.process_time(), time.perf_counter()
        idle_since = time.monotonic()
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(desc=f"write {self.input}", unit="frame")
        try:
            while not self.done and not (stop is not None and stop.is_set()):
                before = self.summary.stored
                n = self.step()
                if bar is not None and self.summary.stored > before:
                    bar.update(self.summary.stored - before)
                    bar.set_postfix(lag=self.summary.max_lag, files=self.summary.files)
                if n:
                    idle_since = time.monotonic()
                    continue
                if self.policy == "all" and self.broker.finished(self.input_key,
                                                                 self.group.group):
                    self._finish()   # an earlier writer already stored the whole run
                    break
                if self.policy != "all" and not self.group.replaying \
                        and self._selection_complete():
                    # Everything the workers published is in the stream: drain it.
                    while self.step(block_s=None):
                        pass
                    if not self.done:
                        self._finish()
                    break
                if idle_timeout_s and time.monotonic() - idle_since > idle_timeout_s:
                    break
        finally:
            if bar is not None:
                bar.close()
            self.summary.cpu_s += time.process_time() - cpu0
            self.summary.wall_s += time.perf_counter() - wall0
        return self.summary


def _frame_of_id(entry_id: str) -> int | None:
    ms = int(entry_id.split("-", 1)[0])
    return ms - 1 if ms > 0 else None
