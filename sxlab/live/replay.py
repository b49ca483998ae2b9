"""A replay detector: serve a recorded run over the EIGER ZeroMQ stream interface.

:class:`Replay` behaves like a detector control unit with streaming enabled: it binds a
PUSH socket, and per series sends the header (``header_detail`` ``all``: configuration,
flat field, pixel mask, count-rate table), one image message per frame at a steady rate,
and the end message. Frames stored as bitshuffle-LZ4 chunks (EIGER/NXmx files) are read
with ``read_direct_chunk`` and sent without recompression; other files are compressed
once. The header appendix carries the run name, the geometry (CrystFEL format) and the
source file as JSON, so that a live pipeline downstream knows what it receives.

Examples
--------
>>> rep = Replay(sx.open_run("run7_master.h5"), rate=100)  # doctest: +SKIP
>>> rep.serve()  # doctest: +SKIP
ReplaySummary(frames=200, rate_hz=99.98, ...)
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from .eiger import FORMATS, ImageMessage, SeriesEnd, SeriesHeader, encode

__all__ = ["Replay", "ReplaySummary", "header_config"]


@dataclass
class ReplaySummary:
    """What a replay sent: frames, achieved rate (Hz) and each frame's send time (epoch s)."""

    frames: int = 0
    series: int = 0
    rate_hz: float = float("nan")
    wall_s: float = 0.0
    send_times: list = field(default_factory=list, repr=False)


def header_config(geometry, *, shape, dtype, nimages: int, frame_time_s: float) -> dict:
    """SIMPLON detector configuration of a series (what ``dheader`` part 2 carries).

    Beam centre and distance come from the first panel (exact for single-panel EIGERs).
    """
    p = geometry.panels[0]
    bits = 8 * np.dtype(dtype).itemsize
    return {
        "beam_center_x": float(-p.corner_x - p.min_fs),
        "beam_center_y": float(-p.corner_y - p.min_ss),
        "detector_distance": float(p.clen + p.coffset),
        "x_pixel_size": float(1.0 / p.res), "y_pixel_size": float(1.0 / p.res),
        "wavelength": float(geometry.beam.wavelength_A),
        "photon_energy": float(geometry.beam.photon_energy_eV),
        "x_pixels_in_detector": int(shape[-1]), "y_pixels_in_detector": int(shape[-2]),
        "nimages": int(nimages), "ntrigger": 1,
        "frame_time": float(frame_time_s), "count_time": float(frame_time_s) * 0.999,
        "bit_depth_image": bits, "bit_depth_readout": bits,
        "countrate_correction_count_cutoff": int(2**bits - 3),
        "description": geometry.name or "replay", "detector_number": "sxlab-replay",
        "sensor_material": "Si", "sensor_thickness": 450e-6,
    }


class Replay:
    """Serve a run as an EIGER stream.

    Parameters
    ----------
    run : Run or path
        What to send (:func:`sxlab.open_run` input).
    geometry : Detector or path, optional
        Geometry for the header (default: the run's).
    endpoint : str
        Where to bind the PUSH socket (loopback port 9999 by default).
    rate : float, optional
        Frames per second (default: as fast as the receiver takes them).
    fmt : {"stream1", "stream2"}
    frames : int, optional
        Frames to send (default: the run's length; more than that needs ``loop``).
    series : int
        Series id.
    loop : bool
        Start the run over when it ends (frame ``f`` is run frame ``f % len(run)``).
    run_name : str, optional
        Run name in the header appendix (default: the run's).
    preload : bool
        Read every blob before sending, so that disk speed does not limit the rate.
    sndhwm : int
        ZeroMQ send high-water mark (messages queued before sending blocks).
    """

    def __init__(self, run, *, geometry=None, endpoint: str = "tcp://127.0.0.1:9999",
                 rate: float | None = None, fmt: str = "stream1", frames: int | None = None,
                 series: int = 1, loop: bool = False, run_name: str | None = None,
                 preload: bool = False, sndhwm: int = 64):
        from sxlab.io import open_run, read_geom

        if not hasattr(run, "read_raw"):
            run = open_run(run, geometry=read_geom(geometry) if isinstance(geometry, str)
                           else geometry)
        if isinstance(geometry, str):
            geometry = read_geom(geometry)
        self.run = run
        self.geometry = geometry or run.geometry
        if self.geometry is None:
            raise ValueError(f"run {run.name!r} has no geometry; give geometry=")
        if fmt not in FORMATS:
            raise ValueError(f"unknown stream format {fmt!r}; expected one of {FORMATS}")
        n = len(run) if frames is None else int(frames)
        if n > len(run) and not loop:
            raise ValueError(f"{n} frames asked from a run of {len(run)}; pass loop=True")
        self.n_frames = n
        self.endpoint = endpoint
        self.rate = rate
        self.fmt = fmt
        self.series = int(series)
        self.run_name = run_name or run.name
        self.sndhwm = sndhwm
        self._blobs: dict[int, bytes] = {}
        self._compressed_once = not self._stored_chunks()
        if preload:
            for i in range(min(n, len(run))):
                self._blob(i)

    def _stored_chunks(self) -> bool:
        try:
            return self.run.read_compressed(0) is not None
        except Exception:  # noqa: BLE001 - the frame read reports it later
            return False

    def _blob(self, i: int) -> bytes:
        blob = self._blobs.get(i)
        if blob is not None:
            return blob
        from sxlab.io.compression import compress

        blob = None if self._compressed_once else self.run.read_compressed(i)
        if blob is None:
            blob = compress(self.run.read_raw(i), "bslz4")
        if self._compressed_once or len(self._blobs) < 4096:
            self._blobs[i] = blob
        return blob

    def header(self) -> SeriesHeader:
        from sxlab.io import write_geom

        frame_time = 1.0 / self.rate if self.rate else 0.01
        cfg = header_config(self.geometry, shape=self.run.frame_shape, dtype=self.run.dtype,
                            nimages=self.n_frames, frame_time_s=frame_time)
        mask = self.run.pixel_mask(0) if hasattr(self.run, "pixel_mask") else None
        appendix = {"run": self.run_name, "source": str(self.run.files[0]),
                    "n_frames": self.n_frames}
        try:
            appendix["geometry"] = write_geom(self.geometry)
        except ValueError:
            pass
        shape = tuple(self.run.frame_shape)
        return SeriesHeader(
            series=self.series, detail="all", config=cfg,
            pixel_mask=None if mask is None else mask.astype(np.uint32),
            flatfield=np.ones(shape, np.float32),
            countrate_table=np.zeros((2, 1000), np.float32),
            appendix=json.dumps(appendix), unique_id=f"sxlab-replay-{self.series}")

    def image(self, frame: int) -> ImageMessage:
        i = frame % len(self.run)
        frame_time = 1.0 / self.rate if self.rate else 0.01
        return ImageMessage(series=self.series, frame=frame,
                            shape=tuple(self.run.frame_shape), dtype=str(self.run.dtype),
                            encoding="bslz4", blob=self._blob(i),
                            start_time_s=frame * frame_time,
                            stop_time_s=frame * frame_time + frame_time * 0.999,
                            real_time_s=frame_time * 0.999)

    def serve(self, stop: threading.Event | None = None, *, ready=None,
              linger_s: float = 30.0) -> ReplaySummary:
        """Send one series; returns when its end message was handed to ZeroMQ.

        ``ready`` (a threading.Event) is set once the socket is bound.
        """
        import zmq

        ctx = zmq.Context.instance()
        sock = ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.SNDHWM, self.sndhwm)
        sock.setsockopt(zmq.LINGER, int(linger_s * 1000))
        sock.bind(self.endpoint)
        if ready is not None:
            ready.set()
        out = ReplaySummary(series=self.series)
        try:
            sock.send_multipart(encode(self.header(), self.fmt))
            period = 1.0 / self.rate if self.rate else 0.0
            t0 = None
            for f in range(self.n_frames):
                if stop is not None and stop.is_set():
                    break
                parts = encode(self.image(f), self.fmt)
                if t0 is None:
                    t0 = time.perf_counter()
                if period:
                    target = t0 + f * period
                    delay = target - time.perf_counter()
                    if delay > 0.002:
                        time.sleep(delay - 0.0015)
                    while time.perf_counter() < target:
                        time.sleep(0)           # lets other threads run while it waits
                out.send_times.append(time.time())
                sock.send_multipart(parts)
                out.frames += 1
            t1 = time.perf_counter()
            sock.send_multipart(encode(SeriesEnd(self.series, f"sxlab-replay-{self.series}"),
                                       self.fmt))
            if out.frames > 1:
                out.rate_hz = (out.frames - 1) / (out.send_times[-1] - out.send_times[0])
            out.wall_s = t1 - t0 if t0 is not None else 0.0
        finally:
            # Closing waits (up to linger_s) until queued messages have gone out.
            sock.close(linger=int(linger_s * 1000))
        return out

    def __repr__(self) -> str:
        rate = f"{self.rate:g} Hz" if self.rate else "unthrottled"
        return (f"<Replay {self.run_name!r} {self.n_frames} frames {self.fmt} on "
                f"{self.endpoint}, {rate}>")
