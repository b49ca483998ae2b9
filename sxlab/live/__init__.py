"""Real-time processing: EIGER ZeroMQ stream -> Redis Streams frame broker -> live workers.

Frames leave the detector over its ZeroMQ stream interface (:mod:`sxlab.live.eiger`:
stream v1 and stream2 codecs; :mod:`sxlab.live.replay`: a detector that serves a recorded
run), are appended by the ingest (:mod:`sxlab.live.ingest`) to a Redis stream with their
compressed blob untouched, and are processed by any number of workers in a consumer group
(:mod:`sxlab.live.worker`) running the batch pipeline's ``process_frame``. The output
directory has the batch layout and grows while the run goes on;
:func:`sxlab.live.tail` watches it (or the broker) from a notebook.

>>> import sxlab as sx
>>> sx.live.tail("redis://127.0.0.1:6379", run="run0012")  # doctest: +SKIP

Broker layout (for every consumer: processing, file writers, binning, viewers)
------------------------------------------------------------------------------
Server: Redis >= 6.2 or Valkey (``XAUTOCLAIM``, ``XTRIM MINID``). Keys follow the ASAP::O
hierarchy beamtime / data source / run, with a common prefix (``sx``):

=================================  ====================================================
key                                content
=================================  ====================================================
``sx:<bt>:runs``                   sorted set: stream keys of the beamtime's runs, by
                                   registration time (epoch s)
``sx:<bt>:<src>:series:<id>``      string: stream key of detector series ``id``
``sx:<bt>:<src>:<run>``            **frame stream** (entries below)
``sx:<bt>:<src>:<run>:header``     hash: the run header (below)
``sx:<bt>:<src>:<run>:info``       hash: ``state`` (receiving, ended), ``series``,
                                   ``run``, ``frames_in``, ``last_id``, ``last_frame``,
                                   ``end_id``, ``n_frames``, ``maxlen``, ``trim_ms``,
                                   ``duplicates``, ``bad_messages``,
                                   ``trimmed:<group>`` (frames trimmed before that group
                                   read them; group ``""``: before any group existed),
                                   ``rate:ingest``, ``rate:<group>:<consumer>`` and
                                   ``seen:<group>:<consumer>`` (frames/s, last seen)
``sx:<bt>:<src>:<run>:trimmed:<g>``  list of JSON ``[first, last]`` frame ranges trimmed
                                   before group ``g`` read them
``sx:<bt>:<src>_<kind>:<run>``     **derived streams** published by consumers:
                                   ``results`` (one entry per processed frame),
                                   ``hits``, ``indexed`` (the frame entries of hits /
                                   indexed frames and a seeded blank sample, blob
                                   untouched, ids by Redis: :mod:`sxlab.live.storage`),
                                   ``binned<N>`` (a frame stream of its own, with
                                   header: :mod:`sxlab.live.binner`)
``sx:<bt>:<src>:<run>:storage``    hash: the run's blank sample (``blank_fraction``,
                                   ``blank_seed``)
=================================  ====================================================

Frame stream entries. Ids are ``<frame + 1>-0`` (the header is ``0-1``, the end entry
the id after the last frame), so an id names its frame, a duplicate frame is refused by
Redis, and gaps are visible. Field ``type`` says what an entry is:

``header``
    ``series``. The header itself is in ``...:header``: ``run``, ``series``, ``config``
    (JSON, SIMPLON names: ``beam_center_x/y`` px, ``detector_distance`` m,
    ``x_pixel_size`` m, ``wavelength`` Å, ``photon_energy`` eV, ``frame_time`` s,
    ``nimages``, ``x/y_pixels_in_detector``, ``countrate_correction_count_cutoff`` ...),
    ``detail``, ``appendix`` (JSON object; sxlab's replay puts ``run``, ``geometry``
    (CrystFEL text) and ``source`` there), ``appendix_raw``, ``shape`` (JSON ``[ny, nx]``),
    ``pixel_mask`` (bitshuffle-LZ4 uint32, nonzero = bad), ``created`` (epoch s).
``image``
    ``frame``, ``series``, ``shape`` (JSON ``[ny, nx]``), ``dtype`` (``uint16`` ...),
    ``encoding`` (``bslz4``, ``lz4``, ``lz4-hdf5``, ``none``; see
    :mod:`sxlab.io.compression`), ``data`` (the blob as the detector sent it),
    ``t_start_s``, ``t_stop_s``, ``t_real_s`` (detector clock), ``t_received`` (epoch s
    at the ingest), ``backfilled`` (1 when read from the detector's files).
``failed``
    ``frame``, ``series``, ``reason``: a malformed message, or a frame that never
    arrived; consumers record it as a failed frame.
``end``
    ``series``, ``n_frames``.

``results`` entries: ``frame``, ``status``, ``error``, ``hit``, ``indexed``,
``n_peaks``, ``n_crystals``, ``n_reflections``, ``resolution_A``, ``solvent_ratio``,
``worker``, ``t_received``, ``t_committed`` (epoch s), ``total_s`` and, for hits,
``peaks`` (JSON ``{"fs": [...], "ss": [...], "intensity": [...]}``).

Consuming. :class:`~sxlab.live.broker.ConsumerGroup` is the helper every consumer uses:
``read`` returns the consumer's own unacknowledged entries after a restart, then entries
reclaimed with ``XAUTOCLAIM`` from consumers idle longer than ``claim_idle_s`` (presumed
dead), then new ones; ``ack`` acknowledges (inside a transaction with the consumer's
commit when given a pipeline). Each group sees every entry; within a group each entry
goes to one consumer. A viewer that wants only the newest frames makes its own group
with ``start="$"``, or reads with ``XREVRANGE``. Processing workers commit their tables
first and acknowledge afterwards, so a re-delivered frame may be committed twice; the
output reader keys rows by frame and keeps one copy. Publish derived streams with
:meth:`~sxlab.live.broker.Broker.publish` or, in a worker, ``publish=("results",
"hits")``.

The cache is bounded by the ingest (``maxlen``, frames or minutes of data); frames it
trims before a group read them are counted and logged, and recorded as failed frames in
the output when the run finishes.

Consumers that must see a stream in order and hold many entries before acknowledging
them (:class:`~sxlab.live.writer.LiveWriter`, the ``write`` group storing a run as NeXus
files; :class:`~sxlab.live.binner.LiveBinner`, the ``bin<N>`` group publishing a binned
frame stream) are the single consumer of their group
(:class:`~sxlab.live.sequential.SequentialConsumer`). The storage policies, hits or
indexed frames plus a seeded blank sample, are in :mod:`sxlab.live.storage`.
"""

from __future__ import annotations

from sxlab._lazy import lazy_exports

_EXPORTS = {
    "Broker": "broker",
    "ConsumerGroup": "broker",
    "stream_key": "broker",
    "EmbeddedRedis": "server",
    "free_port": "server",
    "Ingest": "ingest",
    "Replay": "replay",
    "LiveWorker": "worker",
    "LiveWriter": "writer",
    "LiveBinner": "binner",
    "Selection": "storage",
    "blank_sample": "storage",
    "LiveOutput": "worker",
    "run_live": "supervisor",
    "live_demo": "demo",
    "tail": "viewer",
    "Tail": "viewer",
    "TailState": "viewer",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
