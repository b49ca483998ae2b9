"""Ingest a job's results into the database as its output directory grows, exactly once.

A job's ``results/`` is a results directory (:mod:`sxlab.results`): its writer commits
parts, and a :class:`sxlab.results.ResultsReader` returns the rows of the parts
committed since its last poll. The new parts are ingested in one transaction together
with their rows in the ``parts`` table, whose primary key (job, part) makes a second
ingest of the same part fail and roll back. A watcher killed mid-way, two watchers at
once, or a job resumed after a crash therefore never duplicate a frame row.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy as sa

from ..integration import resolution_shells
from ..results import ResultsReader
from . import schema
from .db import insert_rows

__all__ = ["JobIngester", "ingest_job", "pack_stats", "unpack_stats"]

_CELL = ["a", "b", "c", "alpha", "beta", "gamma"]


def _part_range(stem: str) -> tuple[int, int]:
    """First and last frame of a part from its stem (``<first>-<last>[-<tag>]``)."""
    first, last = stem.split("-")[:2]
    return int(first), int(last)


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def pack_stats(frames: pd.DataFrame) -> bytes:
    """A frames table's run-statistics columns as bytes (:data:`.schema.PART_STATS_DTYPE`)."""
    arr = np.zeros(len(frames), dtype=schema.PART_STATS_DTYPE)
    arr["frame"] = frames["frame"].to_numpy(np.int64)
    arr["ok"] = (frames["status"] == "ok").to_numpy()
    for col in ("n_peaks", "hit", "n_crystals", "resolution_A", "solvent_ratio"):
        arr[col] = frames[col].to_numpy()
    return arr.tobytes()


def unpack_stats(blobs) -> pd.DataFrame:
    """Frames table (frame, status, n_peaks, hit, n_crystals, resolution_A, solvent_ratio)
    from packed parts, concatenated in the given order."""
    arr = np.frombuffer(b"".join(blobs), dtype=schema.PART_STATS_DTYPE)
    return pd.DataFrame({
        "frame": arr["frame"].astype(np.int64),
        "status": pd.Categorical.from_codes(1 - arr["ok"].astype(np.int8),
                                            categories=["ok", "failed"]),
        "n_peaks": arr["n_peaks"].astype(np.int64), "hit": arr["hit"].astype(bool),
        "n_crystals": arr["n_crystals"].astype(np.int64),
        "resolution_A": arr["resolution_A"].astype(np.float64),
        "solvent_ratio": arr["solvent_ratio"].astype(np.float64)})


def part_rows(tables: dict[str, pd.DataFrame], job_id: int, trial_id: int,
              run_id: int) -> dict[str, pd.DataFrame]:
    """The database rows (frames, crystals, shells) of one part's tables."""
    keys = {"job_id": job_id, "trial_id": trial_id, "run_id": run_id}
    f = tables["frames"]
    frames = f[[c for c in schema.FRAME_COLUMNS if c in f.columns]].assign(**keys)
    frames = frames.astype({"hit": bool, "indexed": bool}).fillna(
        {c: "" for c in ("event", "status", "error") if c in frames.columns})
    c = tables["crystals"]
    crystals = c[["frame", "crystal", *_CELL, "lattice", "centering",
                  "n_peaks_indexed"]].assign(**keys)
    shells = resolution_shells(tables["reflections"]).assign(**keys)
    return {"frames": frames, "crystals": crystals, "shells": shells}


class JobIngester:
    """Ingest one job's result parts as they are committed (keeps a reader between calls).

    Parameters
    ----------
    engine : sqlalchemy.Engine
    job : mapping
        A ``jobs`` row (``id``, ``trial_id``, ``run_id``, ``job_dir``).
    """

    def __init__(self, engine: sa.Engine, job: dict):
        self.engine = engine
        self.job = dict(job)
        self.results = Path(job["job_dir"]) / "results"
        self._reader: ResultsReader | None = None

    def ingest(self) -> int:
        """Ingest the parts committed since the last call; returns the frame rows added."""
        job = self.job
        if self._reader is None:
            self._reader = ResultsReader(self.results)
        reader = self._reader
        n_before = len(reader.parts)
        try:
            new = reader.poll()
        except Exception:
            self._reader = None  # read again from the start next time
            raise
        stems = reader.parts[n_before:]
        if not stems:
            return 0
        with self.engine.connect() as conn:
            known = set(conn.execute(sa.select(schema.parts.c.name).where(
                schema.parts.c.job_id == job["id"])).scalars())
        stems = [s for s in stems if s not in known]
        if not stems:
            return 0
        frame_of = {kind: t["frame"].to_numpy() for kind, t in new.items()}
        ranges = [_part_range(s) for s in stems]

        def in_new(kind):
            f = frame_of[kind]
            keep = np.zeros(len(f), bool)
            for lo, hi in ranges:
                keep |= (f >= lo) & (f <= hi)
            return new[kind][keep].reset_index(drop=True)

        rows = part_rows({k: in_new(k) for k in ("frames", "crystals", "reflections")},
                         job["id"], job["trial_id"], job["run_id"])
        f = rows["frames"]
        try:
            with self.engine.begin() as conn:
                for stem, (lo, hi) in zip(stems, ranges, strict=True):
                    part = f[(f["frame"] >= lo) & (f["frame"] <= hi)]
                    conn.execute(schema.parts.insert().values(
                        job_id=job["id"], name=stem, trial_id=job["trial_id"],
                        run_id=job["run_id"], first_frame=lo, n_frames=len(part),
                        stats=pack_stats(part), ingested_at=_now()))
                for kind in ("frames", "crystals", "shells"):
                    insert_rows(conn, getattr(schema, kind), rows[kind])
                conn.execute(schema.jobs.update().where(schema.jobs.c.id == job["id"]).values(
                    ingested_frames=schema.jobs.c.ingested_frames + len(f)))
        except sa.exc.IntegrityError:
            self._reader = None  # another process ingested these parts; resynchronise
            return 0
        except Exception:
            self._reader = None
            raise
        return len(f)


def ingest_job(engine: sa.Engine, job: dict, *, final: bool = False,
               ingester: JobIngester | None = None) -> int:
    """Ingest the parts of one job not yet in the database.

    Parameters
    ----------
    engine : sqlalchemy.Engine
    job : mapping
        A ``jobs`` row (``id``, ``trial_id``, ``run_id``, ``job_dir``).
    final : bool
        The job has finished: mark its ingest done once every part is in.
    ingester : JobIngester, optional
        Kept from an earlier call, so that only new parts are read.

    Returns
    -------
    int
        Frame rows added.
    """
    ingester = ingester or JobIngester(engine, job)
    added = ingester.ingest()
    if final:
        with engine.begin() as conn:
            conn.execute(schema.jobs.update().where(schema.jobs.c.id == job["id"]).values(
                ingest_done=True))
    return added
