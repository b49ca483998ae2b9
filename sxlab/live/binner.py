"""The binning worker: a run's frames binned 2×2, 3×3 or 4×4 into a new frame stream.

:class:`LiveBinner` is the one consumer of group ``bin<N>`` on a run's frame stream. For
each frame it decodes the blob, bins it with :class:`sxlab.binning.Binner` (each binned
pixel the sum of its ``N × N`` pixels; a block with a bad pixel, flagged by value or by the
header's pixel mask, is bad) and encodes the result with the same bitshuffle-LZ4 codec
the detector uses. The binned stream ``<source>_binned<N>`` (:func:`derived_key`) is a
frame stream like the ingest's: same entry ids (``<frame + 1>-0``), ``failed`` entries
passed on, an ``end`` entry, a header whose appendix holds the binned geometry (CrystFEL
text) and ``binning`` (factor, source stream), an info hash with ``state``, ``frames_in``,
``n_frames``. Processing workers and the NeXus writer consume it like any run
(``--input binned2``).

Binned frames are ``uint32`` (a sum of 16 ``uint16`` pixels does not fit 16 bits); bad
binned pixels hold ``2**32 - 1``, which readers flag as bad, and the binned pixel mask is
in the header. Frames are published in order; a restarted binner takes over what its
predecessor held and skips frames already published.
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .broker import HEADER_ID, Broker, Entry, derived_key, frame_id
from .sequential import SequentialConsumer

__all__ = ["BinnerSummary", "LiveBinner", "binned_header_fields", "binned_params",
           "header_mask"]

log = logging.getLogger("sxlab.live")

_BAD = np.uint32(2**32 - 1)
_TOP = float(2**32 - 3)
#: Image entry fields copied from the source entry.
_COPIED = (b"series", b"t_start_s", b"t_stop_s", b"t_real_s", b"t_received", b"backfilled")


def binned_params(params, factor: int):
    """Processing parameters for frames binned ``factor`` × ``factor``.

    Lengths in pixels shrink by the factor (beam-stop radius and rod width, peak-search
    resolution radii and background radius, integration radii), pixel counts of a peak by
    its square, and the absolute ADU threshold grows by its square (a binned pixel holds
    ``factor²`` pixels' counts). Everything else is kept.

    Examples
    --------
    >>> from sxlab.params import Params
    >>> p = binned_params(Params().replace(peaks={"min_pix_count": 3}), 2)
    >>> p.peaks.min_pix_count, p.integrate.radii
    (1, (2.0, 2.5, 3.5))
    """
    import math

    f = int(factor)
    if f == 1:
        return params
    pk, mk, ig = params.peaks, params.mask, params.integrate
    return params.replace(
        mask={"beamstop_radius_px": mk.beamstop_radius_px / f,
              "beamstop_rod_width_px": mk.beamstop_rod_width_px / f},
        peaks={"adc_threshold": pk.adc_threshold * f * f,
               "min_pix_count": max(1, math.ceil(pk.min_pix_count / (f * f))),
               "max_pix_count": max(1, math.ceil(pk.max_pix_count / (f * f))),
               "local_bg_radius": max(1, round(pk.local_bg_radius / f)),
               "min_res": pk.min_res / f, "max_res": pk.max_res / f},
        integrate={"radii": tuple(r / f for r in ig.radii)},
    )


def header_mask(header: dict, geometry):
    """The static :class:`~sxlab.masks.Mask` of a run header's pixel mask (non-zero = bad),
    or None when the header has none of the geometry's size."""
    from sxlab.masks import Mask

    pm = header.get("pixel_mask")
    shape = tuple(geometry.data_shape)
    if pm is None or pm.size != int(np.prod(shape)):
        return None
    return Mask.from_bad(np.asarray(pm).reshape(shape) != 0)


@dataclass
class BinnerSummary:
    """What a :class:`LiveBinner` did."""

    frames: int = 0
    failed: int = 0
    skipped: int = 0
    cpu_s: float = 0.0
    wall_s: float = 0.0


def binned_header_fields(header: dict, binner, source_key: str) -> dict:
    """The header hash of a binned stream, from the source run's header and a Binner."""
    from sxlab.io import write_geom
    from sxlab.io.compression import compress

    f = binner.factor
    geom = binner.geometry
    cfg = dict(header.get("config", {}))
    for k in ("beam_center_x", "beam_center_y"):
        if k in cfg:
            cfg[k] = float(cfg[k]) / f
    for k in ("x_pixel_size", "y_pixel_size"):
        if k in cfg:
            cfg[k] = float(cfg[k]) * f
    shape = tuple(geom.data_shape)
    cfg["x_pixels_in_detector"], cfg["y_pixels_in_detector"] = shape[-1], shape[-2]
    cfg["bit_depth_image"] = 32
    cutoff = cfg.get("countrate_correction_count_cutoff")
    if cutoff:
        cfg["countrate_correction_count_cutoff"] = int(min(float(cutoff) * f * f, _TOP))
    appendix = dict(header.get("appendix", {}))
    appendix["geometry"] = write_geom(geom)
    appendix["binning"] = {"factor": f, "source": source_key,
                           "bad_fraction": binner.bad_fraction}
    bad = binner.mask.bad.astype(np.uint32)
    return {"run": header["run"], "series": header["series"], "config": json.dumps(cfg),
            "detail": "all", "appendix": json.dumps(appendix), "appendix_raw": "",
            "shape": json.dumps(list(shape)), "pixel_mask": compress(bad, "bslz4"),
            "created": time.time()}


class LiveBinner:
    """Bin a run's frame stream into a new frame stream (see the module notes).

    Parameters
    ----------
    broker : Broker
    key : str
        The source frame stream.
    factor : int
        2, 3, 4 ... pixels per binned pixel along each axis.
    bad_fraction : float
        A binned pixel is bad when more than this fraction of its pixels is bad (0: any);
        otherwise it is the sum of its good pixels scaled to the full block.
    threads : int
        Frames binned in parallel (decoding, binning and encoding release the GIL).
    consumer : str
    batch : int
        Entries read at a time.

    Examples
    --------
    >>> b = LiveBinner(broker, broker.key("run0012"), 2)  # doctest: +SKIP
    >>> b.run()  # doctest: +SKIP
    BinnerSummary(frames=10000, ...)
    """

    def __init__(self, broker: Broker, key: str, factor: int, *, bad_fraction: float = 0.0,
                 threads: int = 1, consumer: str = "binner", batch: int = 8,
                 header_timeout_s: float | None = 60.0):
        from sxlab.binning import Binner

        from .worker import geometry_from_header

        self.broker = broker
        self.key = key
        self.factor = int(factor)
        self.out_key = derived_key(key, f"binned{self.factor}")
        self.header = broker.wait_header(key, timeout_s=header_timeout_s)
        geometry = geometry_from_header(self.header)
        shape = tuple(geometry.data_shape)
        self.binner = Binner(geometry, header_mask(self.header, geometry), self.factor,
                             bad_fraction=bad_fraction)
        self.source_shape = shape
        self.group = SequentialConsumer(broker.client, key, f"bin{self.factor}", consumer,
                                        batch=batch)
        self.threads = max(1, int(threads))
        self._pool = ThreadPoolExecutor(self.threads) if self.threads > 1 else None
        self.summary = BinnerSummary()
        self.done = False
        c = broker.client
        if not c.exists(f"{self.out_key}:header"):
            c.hset(f"{self.out_key}:header",
                   mapping=binned_header_fields(self.header, self.binner, key))
            c.hset(f"{self.out_key}:info", mapping={
                "state": "receiving", "series": self.header["series"],
                "run": self.header["run"], "binning": self.factor, "source": key})
        self._publish_once(HEADER_ID, {"type": "header", "series": self.header["series"]})

    def _publish_once(self, entry_id: str, fields: dict, ack: str | None = None) -> bool:
        """Append ``fields`` as entry ``entry_id`` unless it is there (then just ack)."""
        import redis

        c = self.broker.client
        if self.group.replaying and c.xrange(self.out_key, entry_id, entry_id):
            if ack:                      # published before a restart: only acknowledge
                self.group.ack([ack])
            return False
        pipe = c.pipeline(transaction=True)
        pipe.xadd(self.out_key, fields, id=entry_id)
        if fields.get("type") in ("image", "failed"):
            pipe.hincrby(f"{self.out_key}:info", "frames_in", 1)
            pipe.hset(f"{self.out_key}:info", mapping={"last_id": entry_id,
                                                        "last_frame": fields["frame"]})
        if ack:
            self.group.ack([ack], pipe)
        try:
            pipe.execute()
            return True
        except redis.exceptions.ResponseError as exc:
            if "equal or smaller" not in str(exc) or fields.get("type") != "header":
                raise
            return False                 # the header entry of an earlier binner

    def bin_blob(self, entry: Entry) -> bytes:
        """The binned frame of an image entry, bitshuffle-LZ4 encoded (uint32)."""
        from sxlab.io.compression import compress, decompress
        from sxlab.io.hdf5 import value_flags

        shape = tuple(json.loads(entry.text("shape")))
        raw = decompress(entry.get("data"), entry.text("encoding"), shape,
                         np.dtype(entry.text("dtype")))
        if raw.size != int(np.prod(self.source_shape)):
            raise ValueError(f"frame of shape {shape}, the run's geometry has "
                             f"{self.source_shape}")
        raw = raw.reshape(self.source_shape)
        img, bad = self.binner(raw, value_flags(raw, True))
        out = np.rint(np.clip(img.values, 0.0, _TOP)).astype(np.uint32)
        out[bad.values] = _BAD
        return compress(out, "bslz4")

    def _work(self, entry: Entry):
        if entry.type != "image":
            return None
        try:
            return self.bin_blob(entry)
        except Exception as exc:  # noqa: BLE001 - passed on as a failed frame
            return exc

    def step(self, block_s: float | None = 0.5) -> int:
        """Bin and publish one batch; returns entries handled."""
        entries = self.group.read(block_s)
        if not entries:
            return 0
        work = (self._pool.map(self._work, entries) if self._pool is not None
                else map(self._work, entries))
        shape = json.dumps(list(self.binner.geometry.data_shape))
        for e, result in zip(entries, list(work), strict=True):
            kind = e.type
            if kind == "image" and not isinstance(result, Exception):
                fields = {"type": "image", "frame": e.frame, "shape": shape,
                          "dtype": "uint32", "encoding": "bslz4", "data": result,
                          "binning": self.factor}
                fields.update({k.decode(): v for k, v in e.fields.items() if k in _COPIED})
                self.summary.frames += self._publish_once(e.id, fields, ack=e.id)
            elif kind in ("image", "failed", "deleted"):
                reason = (f"binning failed: {result}" if kind == "image" else
                          e.text("reason") if kind == "failed" else
                          "trimmed from the broker cache before the binning worker read it")
                self.summary.failed += self._publish_once(e.id, {
                    "type": "failed", "frame": e.frame, "reason": reason}, ack=e.id)
            elif kind == "end":
                n = int(e.number("n_frames", 0))
                self._publish_once(e.id, {"type": "end", "series": self.header["series"],
                                          "n_frames": n}, ack=e.id)
                self.broker.client.hset(f"{self.out_key}:info", mapping={
                    "state": "ended", "end_id": e.id, "n_frames": n,
                    "last_id": frame_id(n - 1), "ended": time.time()})
                self.done = True
                break
            else:
                self.group.ack([e.id])
        return len(entries)

    def run(self, *, stop=None, idle_timeout_s: float | None = None) -> BinnerSummary:
        """Bin until the source run has ended (or ``stop`` is set, or nothing came for
        ``idle_timeout_s``)."""
        cpu0, wall0 = time.process_time(), time.perf_counter()
        idle_since = time.monotonic()
        try:
            while not self.done and not (stop is not None and stop.is_set()):
                if self.step():
                    idle_since = time.monotonic()
                elif idle_timeout_s and time.monotonic() - idle_since > idle_timeout_s:
                    break
        finally:
            if self._pool is not None:
                self._pool.shutdown()
            self.summary.cpu_s += time.process_time() - cpu0
            self.summary.wall_s += time.perf_counter() - wall0
        return self.summary
