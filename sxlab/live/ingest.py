"""Ingest: EIGER ZeroMQ stream -> one Redis stream per series (the connector).

:class:`Ingest` connects a PULL socket to the detector's PUSH endpoint, decodes the
message headers (never the pixels) and appends each frame to the run's stream with its
compressed blob untouched. Frame ``f`` gets the entry id ``<f + 1>-0``, so the stream
itself says which frames arrived: a duplicate is refused by Redis and counted, a gap
(frames lost while an ingest was down, or never sent) is filled from the detector's files
when ``backfill`` names them, else with ``failed`` entries that say why. A restarted
ingest finds its run again from the series id.

The stream is a bounded cache: with ``maxlen_frames`` (or ``maxlen_minutes`` of data at
the detector's frame time) the oldest entries are trimmed; entries trimmed before a
consumer group read them are counted per group in the run's info hash
(``trimmed:<group>``, ``trimmed_ranges:<group>``) and logged as warnings.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from ._ids import as_text, entry_ms
from .broker import HEADER_ID, Broker, frame_id
from .eiger import ImageMessage, SeriesEnd, SeriesHeader, StreamMessageError, decode

__all__ = ["Ingest", "IngestSummary"]

log = logging.getLogger("sxlab.live")


@dataclass
class IngestSummary:
    """What an :class:`Ingest` did (also kept in each run's info hash)."""

    runs: list = field(default_factory=list)
    frames: int = 0
    failed: int = 0
    duplicates: int = 0
    backfilled: int = 0
    missing: int = 0
    trimmed: int = 0
    bytes: int = 0
    cpu_s: float = 0.0
    wall_s: float = 0.0


@dataclass
class _RunState:
    key: str
    series: int
    last_ms: int = 0          # entry-id ms of the newest image/failed entry (frame + 1)
    trim_ms: int = 1          # entries with ms < trim_ms have been trimmed
    nimages: int | None = None
    frame_time_s: float | None = None
    held: list = field(default_factory=list)   # reasons of messages without a frame number
    t_first: float = 0.0
    n: int = 0


class Ingest:
    """Move one detector's ZeroMQ stream into the broker.

    Parameters
    ----------
    endpoint : str
        The detector's stream endpoint, e.g. ``tcp://127.0.0.1:9999``.
    broker : Broker
    run : str, optional
        Run name (default: the ``run`` of the header appendix, else ``series<N>``).
    maxlen_frames : int, optional
        Keep at most this many frames per run in the broker.
    maxlen_minutes : float, optional
        Keep at most this many minutes of data (converted with the header's
        ``frame_time``); the smaller limit wins.
    backfill : Run or path, optional
        The detector's files of the series: frames missing from the stream are read from
        them (frame ``f`` is file frame ``f % len(run)``).
    rcvhwm : int
        ZeroMQ receive high-water mark: messages buffered in this process. Kept small so
        that little is in flight when the ingest dies.

    Examples
    --------
    >>> ingest = Ingest("tcp://127.0.0.1:9999", broker)  # doctest: +SKIP
    >>> ingest.run(n_series=1)  # doctest: +SKIP
    IngestSummary(runs=['sx:local:eiger:lysozyme-demo'], frames=200, ...)
    """

    def __init__(self, endpoint: str, broker: Broker, *, run: str | None = None,
                 maxlen_frames: int | None = None, maxlen_minutes: float | None = None,
                 backfill=None, rcvhwm: int = 4):
        self.endpoint = endpoint
        self.broker = broker
        self.run_name = run
        self.maxlen_frames = maxlen_frames
        self.maxlen_minutes = maxlen_minutes
        if backfill is not None and not hasattr(backfill, "read_compressed"):
            from sxlab.io import open_run

            backfill = open_run(backfill)
        self.backfill = backfill
        self.rcvhwm = rcvhwm
        self.summary = IngestSummary()
        self._runs: dict[int, _RunState] = {}
        self._bad_seq = 0

    # ---------------------------------------------------------------- runs
    def _maxlen(self, st: _RunState) -> int | None:
        limits = []
        if self.maxlen_frames:
            limits.append(int(self.maxlen_frames))
        if self.maxlen_minutes and st.frame_time_s:
            limits.append(max(1, int(self.maxlen_minutes * 60 / st.frame_time_s)))
        return min(limits) if limits else None

    def _start_run(self, hdr: SeriesHeader) -> _RunState:
        from sxlab.io.compression import compress

        b = self.broker
        appendix = hdr.appendix_json()
        name = self.run_name or str(appendix.get("run") or f"series{hdr.series}")
        key = b.key(name)
        info = b.info(key)
        if info.get("state") == "ended" and int(info.get("series", -1)) != hdr.series:
            key = b.key(f"{name}-series{hdr.series}")
            info = b.info(key)
        shape = hdr.shape
        if shape is None and hdr.pixel_mask is not None:
            shape = tuple(hdr.pixel_mask.shape)
        header = {"run": key.rsplit(":", 1)[1], "series": hdr.series,
                  "config": json.dumps(hdr.config), "detail": hdr.detail,
                  "appendix": json.dumps(appendix), "appendix_raw": hdr.appendix or "",
                  "shape": json.dumps(list(shape) if shape else None),
                  "created": time.time()}
        if hdr.pixel_mask is not None:
            header["pixel_mask"] = compress(np.asarray(hdr.pixel_mask, np.uint32), "bslz4")
        pipe = b.client.pipeline()
        pipe.hset(f"{key}:header", mapping=header)
        pipe.hset(f"{key}:info", mapping={"state": "receiving", "series": hdr.series,
                                          "run": header["run"], "endpoint": self.endpoint})
        pipe.execute()
        try:
            b.client.xadd(key, {"type": "header", "series": hdr.series}, id=HEADER_ID)
        except Exception:  # noqa: BLE001 - header entry already there (restarted ingest)
            pass
        b.register_run(key, hdr.series)
        st = self._resume(key, hdr.series)
        st.nimages = int(hdr.config["nimages"]) * int(hdr.config.get("ntrigger", 1) or 1) \
            if hdr.config.get("nimages") else None
        ft = hdr.config.get("frame_time")
        st.frame_time_s = float(ft) if ft else None
        maxlen = self._maxlen(st)
        b.client.hset(f"{key}:info", mapping={
            "maxlen": maxlen or 0, "nimages": st.nimages or 0,
            "frame_time_s": st.frame_time_s or 0})
        log.info("series %d -> %s", hdr.series, key)
        return st

    def _resume(self, key: str, series: int) -> _RunState:
        info = self.broker.info(key)
        # The stream's newest entry is the truth (an ingest killed between appending and
        # updating the info hash leaves the hash behind).
        top = self.broker.client.xrevrange(key, "+", "-", count=1)
        last_ms = entry_ms(info.get("last_id", "0-0"))
        if top and as_text(top[0][1].get(b"type", b"")) in ("image", "failed"):
            last_ms = max(last_ms, entry_ms(top[0][0]))
        st = _RunState(key=key, series=series, last_ms=last_ms,
                       trim_ms=int(info.get("trim_ms", 1)), t_first=time.time())
        if int(info.get("nimages", 0) or 0):
            st.nimages = int(info["nimages"])
        if float(info.get("frame_time_s", 0) or 0):
            st.frame_time_s = float(info["frame_time_s"])
        self._runs[series] = st
        if key not in self.summary.runs:
            self.summary.runs.append(key)
        return st

    def _run_for(self, series: int) -> _RunState:
        st = self._runs.get(series)
        if st is not None:
            return st
        key = self.broker.key_for_series(series)
        if key is None:
            log.warning("series %d: images without a header; recording them as run "
                        "series%d (workers need --geometry)", series, series)
            return self._start_run(SeriesHeader(series=series, detail="none"))
        return self._resume(key, series)

    # ------------------------------------------------------------- frames
    def _image_fields(self, msg: ImageMessage, now: float) -> dict:
        return {"type": "image", "frame": msg.frame, "series": msg.series,
                "shape": json.dumps(list(msg.shape)), "dtype": msg.dtype,
                "encoding": msg.encoding, "data": msg.blob,
                "t_start_s": msg.start_time_s, "t_stop_s": msg.stop_time_s,
                "t_real_s": msg.real_time_s, "t_received": now}

    def _failed_fields(self, st: _RunState, frame: int, reason: str, now: float) -> dict:
        return {"type": "failed", "frame": frame, "series": st.series, "reason": reason,
                "t_received": now}

    def _fill_gap(self, st: _RunState, pipe, upto_ms: int, now: float) -> None:
        """Entries for frames st.last_ms .. upto_ms - 2 (missing ones), in order."""
        from sxlab.io.compression import compress

        first = st.last_ms
        for ms in range(st.last_ms + 1, upto_ms):
            frame = ms - 1
            if st.held:
                reason = st.held.pop(0)
                fields = self._failed_fields(st, frame, reason, now)
                self.summary.failed += 1
            elif self.backfill is not None:
                k = frame % len(self.backfill)
                try:
                    blob = self.backfill.read_compressed(k)
                    raw = None if blob is not None else self.backfill.read_raw(k)
                    if blob is None:
                        blob = compress(raw, "bslz4")
                    dtype = str(self.backfill.dtype)
                    fields = self._image_fields(ImageMessage(
                        st.series, frame, tuple(self.backfill.frame_shape), dtype, "bslz4",
                        blob), now)
                    fields["backfilled"] = 1
                    self.summary.backfilled += 1
                except Exception as exc:  # noqa: BLE001 - recorded as a failed frame
                    fields = self._failed_fields(
                        st, frame, f"not received from the detector and not readable from "
                        f"the backfill files: {exc}", now)
                    self.summary.missing += 1
            else:
                fields = self._failed_fields(
                    st, frame, f"not received from the detector (frames {first} to "
                    f"{upto_ms - 2} missing from the stream; no backfill files given)", now)
                self.summary.missing += 1
            pipe.xadd(st.key, fields, id=frame_id(frame))
            st.last_ms = ms
        if st.held:  # messages that were not frames of this series
            for reason in st.held:
                log.warning("%s: message without a frame number dropped: %s", st.key,
                            reason)
                pipe.hincrby(f"{st.key}:info", "bad_messages", 1)
            st.held.clear()

    def _add(self, st: _RunState, frame: int, fields: dict, now: float) -> None:
        ms = frame + 1
        if ms <= st.last_ms:
            self.summary.duplicates += 1
            self.broker.client.hincrby(f"{st.key}:info", "duplicates", 1)
            log.warning("%s: frame %d received again; the copy was dropped (the stream "
                        "already has it)", st.key, frame)
            return
        pipe = self.broker.client.pipeline(transaction=False)
        self._fill_gap(st, pipe, ms, now)
        pipe.xadd(st.key, fields, id=frame_id(frame))
        st.last_ms = ms
        st.n += 1
        self.summary.frames += 1
        rate = st.n / max(now - st.t_first, 1e-9)
        pipe.hset(f"{st.key}:info", mapping={"last_id": frame_id(frame),
                                              "last_frame": frame, "rate:ingest": rate,
                                              "heartbeat": now})
        pipe.hincrby(f"{st.key}:info", "frames_in", 1)
        for r in pipe.execute(raise_on_error=False):
            if isinstance(r, Exception):
                # An id Redis already holds: a frame appended just before a restart.
                self.summary.duplicates += 1
                log.warning("%s: frame %d already in the stream; the copy was dropped "
                            "(%s)", st.key, frame, r)
        self._trim(st)

    def _trim(self, st: _RunState) -> None:
        maxlen = self._maxlen(st)
        if not maxlen:
            return
        slack = max(1, maxlen // 10)
        if st.last_ms - st.trim_ms + 1 <= maxlen + slack - 1:
            return
        cut = st.last_ms - maxlen + 1          # keep entries with ms >= cut
        c = self.broker.client
        groups = self.broker.groups(st.key)
        lost = {}
        if not groups:
            lost[""] = cut - st.trim_ms
        for g in groups:
            name = as_text(g["name"])
            delivered = entry_ms(g["last-delivered-id"])
            unread = max(0, cut - max(delivered + 1, st.trim_ms))
            if unread:
                lost[name] = (max(delivered + 1, st.trim_ms), cut - 1)
        pipe = c.pipeline(transaction=False)
        pipe.execute_command("XTRIM", st.key, "MINID", f"{cut}-0")
        pipe.hset(f"{st.key}:info", "trim_ms", cut)
        for name, rng in lost.items():
            n = rng if isinstance(rng, int) else rng[1] - rng[0] + 1
            a, b = (st.trim_ms, cut - 1) if isinstance(rng, int) else rng
            pipe.hincrby(f"{st.key}:info", f"trimmed:{name}", n)
            pipe.rpush(f"{st.key}:trimmed:{name}", json.dumps([a - 1, b - 1]))
            self.summary.trimmed += n
            who = f"consumer group {name!r}" if name else "any consumer group"
            log.warning("%s: broker cache full (%d frames): %d frames (%d to %d) trimmed "
                        "before %s read them", st.key, maxlen, n, a - 1, b - 1, who)
        pipe.execute()
        st.trim_ms = cut

    def _end(self, st: _RunState, now: float) -> None:
        pipe = self.broker.client.pipeline(transaction=False)
        if st.nimages is not None and st.last_ms < st.nimages:
            self._fill_gap(st, pipe, st.nimages + 1, now)
        end_id = f"{st.last_ms + 1}-0"
        pipe.xadd(st.key, {"type": "end", "series": st.series, "n_frames": st.last_ms},
                  id=end_id)
        pipe.hset(f"{st.key}:info", mapping={"state": "ended", "end_id": end_id,
                                              "n_frames": st.last_ms, "last_id":
                                              frame_id(st.last_ms - 1), "ended": now})
        pipe.execute()
        self._trim(st)
        log.info("%s: series %d ended after %d frames", st.key, st.series, st.last_ms)

    # ----------------------------------------------------------------- loop
    def handle(self, parts) -> str:
        """Handle one message (list of ZeroMQ frames); returns its kind."""
        now = time.time()
        self.summary.bytes += sum(len(p) for p in parts)
        try:
            msg = decode(parts)
        except StreamMessageError as exc:
            return self._bad(exc, now)
        if isinstance(msg, SeriesHeader):
            self._start_run(msg)
            return "header"
        st = self._run_for(msg.series)
        if isinstance(msg, ImageMessage):
            self._add(st, msg.frame, self._image_fields(msg, now), now)
            return "image"
        if isinstance(msg, SeriesEnd):
            self._end(st, now)
            self._runs.pop(msg.series, None)
            return "end"
        return "unknown"

    def _bad(self, exc: StreamMessageError, now: float) -> str:
        reason = f"malformed detector message: {exc}"
        st = self._runs.get(exc.series) if exc.series is not None else None
        if st is None and len(self._runs) == 1:
            st = next(iter(self._runs.values()))
        if st is None:
            log.warning("message outside any known series dropped: %s", exc)
            return "bad"
        if exc.frame is not None:
            self.summary.failed += 1
            self._add(st, exc.frame, self._failed_fields(st, exc.frame, reason, now), now)
            self.summary.frames -= 1
        else:
            # Frame number unknown: assigned when the next frame shows where the gap is.
            st.held.append(reason + " (frame number inferred from the message order)")
        return "bad"

    def run(self, *, n_series: int | None = None, stop: threading.Event | None = None,
            idle_timeout_s: float | None = None) -> IngestSummary:
        """Receive until ``n_series`` series have ended, ``stop`` is set, or nothing
        arrived for ``idle_timeout_s`` seconds."""
        import zmq

        ctx = zmq.Context.instance()
        sock = ctx.socket(zmq.PULL)
        sock.setsockopt(zmq.RCVHWM, self.rcvhwm)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.endpoint)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        ended = 0
        last_msg = time.monotonic()
        try:
            while not (stop is not None and stop.is_set()):
                if not sock.poll(200):
                    if idle_timeout_s and time.monotonic() - last_msg > idle_timeout_s:
                        break
                    continue
                last_msg = time.monotonic()
                kind = self.handle(sock.recv_multipart())
                if kind == "end":
                    ended += 1
                    if n_series is not None and ended >= n_series:
                        break
        finally:
            sock.close(0)
            self.summary.cpu_s += time.process_time() - cpu0
            self.summary.wall_s += time.perf_counter() - wall0
        return self.summary
