"""Storage policies: which frames of a live run are kept (all, hits, indexed + blank sample).

Processing workers publish the entries of the frames a policy keeps to derived streams
(:func:`~sxlab.live.broker.derived_key` kinds ``hits`` and ``indexed``), blob untouched;
the NeXus writer (:mod:`sxlab.live.writer`) stores such a stream instead of the whole run.
As evidence of what was thrown away (the "integrity" sample of the real-time paper), a
seeded random fraction of the other frames goes to those streams too, marked
``blank_sample = 1``. Whether frame ``f`` is sampled depends only on ``f``, the fraction
and the seed, never on which worker saw it or in which order, so the sample is the same
every time the run is processed.

The policy of a run lives in the hash ``<frame stream key>:storage`` (``blank_fraction``,
``blank_seed``), set by whoever starts the run (:func:`set_storage_policy`) before the
workers start; workers and writers read it from there.

Derived entries keep the frame's fields (``frame`` says which frame it is) and get
``n_peaks``, ``indexed`` and ``blank_sample``. Their ids are assigned by Redis: workers
finish frames out of order. ``<derived stream>:info`` counts them (``frames_in``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["POLICIES", "Selection", "blank_sample", "set_storage_policy", "storage_policy"]

#: Storage policies: the derived stream each one stores (``all``: the frame stream).
POLICIES = {"all": None, "hits": "hits", "indexed": "indexed"}


def blank_sample(frame: int, fraction: float, seed: int) -> bool:
    """Whether blank frame ``frame`` belongs to the seeded random sample kept as evidence.

    Each frame draws one uniform number from a generator seeded with ``(seed, frame)``,
    so the decision is reproducible and independent of processing order.

    Examples
    --------
    >>> [f for f in range(40) if blank_sample(f, 0.1, seed=3)]
    [0, 2, 28]
    """
    if fraction <= 0.0:
        return False
    if fraction >= 1.0:
        return True
    return bool(np.random.default_rng([int(seed), int(frame)]).random() < fraction)


def set_storage_policy(broker, key: str, *, blank_fraction: float = 0.0,
                       blank_seed: int = 0) -> None:
    """Record the blank sample of run ``key`` (before its workers start)."""
    if not 0.0 <= float(blank_fraction) <= 1.0:
        raise ValueError(f"blank_fraction must be in [0, 1], got {blank_fraction}")
    broker.client.hset(f"{key}:storage", mapping={"blank_fraction": float(blank_fraction),
                                                  "blank_seed": int(blank_seed)})


def storage_policy(broker, key: str) -> dict:
    """``{"blank_fraction": float, "blank_seed": int}`` of run ``key`` (0 and 0 if unset)."""
    raw = broker.client.hgetall(f"{key}:storage")
    v = {k.decode(): val.decode() for k, val in raw.items()}
    return {"blank_fraction": float(v.get("blank_fraction", 0.0)),
            "blank_seed": int(v.get("blank_seed", 0))}


class Selection:
    """What a processing worker publishes for the storage policies of its run.

    Parameters
    ----------
    key : str
        The frame stream the worker processes.
    blank_fraction, blank_seed : float, int
        The run's blank sample (see :func:`blank_sample`).

    Examples
    --------
    >>> sel = Selection.for_run(broker, key)  # doctest: +SKIP
    >>> sel.publish(pipeline, [(result, entry)], ("results", "hits"))  # doctest: +SKIP
    """

    def __init__(self, key: str, *, blank_fraction: float = 0.0, blank_seed: int = 0):
        self.key = key
        self.blank_fraction = float(blank_fraction)
        self.blank_seed = int(blank_seed)

    @classmethod
    def for_run(cls, broker, key: str) -> Selection:
        """The selection recorded for run ``key`` (:func:`storage_policy`)."""
        return cls(key, **storage_policy(broker, key))

    def kept(self, kind: str, hit: bool, indexed: bool) -> bool:
        """Whether a frame that is (not) a hit / (not) indexed goes to stream ``kind``."""
        return bool(hit) if kind == "hits" else bool(indexed)

    def publish(self, pipeline, pairs, kinds) -> int:
        """Queue the derived ``hits``/``indexed`` entries of processed frames.

        Parameters
        ----------
        pipeline : redis pipeline
            The worker's transaction (with its acknowledgements).
        pairs : iterable of (FrameResult, Entry)
        kinds : iterable of str
            The streams the worker publishes; others than ``hits`` and ``indexed`` are
            ignored here.

        Returns
        -------
        int
            Entries queued.
        """
        from .broker import derived_key

        wanted = [k for k in ("hits", "indexed") if k in kinds]
        n = 0
        for result, entry in pairs:
            if entry.fields is None or entry.type != "image":
                continue
            f = result.frame
            hit, indexed = bool(f["hit"]), bool(f["indexed"])
            sampled = None
            for kind in wanted:
                keep = self.kept(kind, hit, indexed)
                if not keep:
                    if sampled is None:
                        sampled = blank_sample(entry.frame, self.blank_fraction,
                                               self.blank_seed)
                    if not sampled:
                        continue
                target = derived_key(self.key, kind)
                pipeline.xadd(target, {**entry.fields, "n_peaks": int(f["n_peaks"]),
                                       "indexed": int(indexed),
                                       "blank_sample": int(not keep)})
                pipeline.hincrby(f"{target}:info", "frames_in", 1)
                n += 1
        return n
