"""Ingest a job's results into the database as its output directory grows, exactly once.

:func:`sxlab.process_run` commits its results in parts (``parts/frames-<first>-<last>
.parquet`` written last, after the part's peaks, crystals and reflections); a part is
ingested in one transaction together with its row in the ``parts`` table, whose primary
key (job, part) makes a second ingest of the same part fail and roll back. A watcher
killed mid-way, two watchers at once, or a job resumed after a crash therefore never
duplicate a frame row.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy as sa

from ..integrate import resolution_shells
from . import schema
from .db import insert_rows

__all__ = ["committed_parts", "ingest_job", "pack_stats", "read_part", "unpack_stats"]

_CELL = ["a", "b", "c", "alpha", "beta", "gamma"]


def committed_parts(results_dir) -> list[str]:
    """Names of the committed parts of a :func:`sxlab.process_run` output directory."""
    parts = Path(results_dir) / "parts"
    return sorted(p.name[len("frames-"):-len(".parquet")]
                  for p in parts.glob("frames-*.parquet"))


def read_part(results_dir, name: str) -> dict[str, pd.DataFrame]:
    """The frames, crystals and reflections tables of one committed part."""
    parts = Path(results_dir) / "parts"
    out = {}
    for kind, cols in (("frames", None), ("crystals", None),
                       ("reflections", ["frame", "d_A", "I", "sigma"])):
        path = parts / f"{kind}-{name}.parquet"
        try:
            out[kind] = pd.read_parquet(path, columns=cols)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: part {name} is committed (its frames file "
                                    f"exists) but its {kind} table is missing") from None
    return out


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
    frames = frames.astype({"hit": bool, "indexed": bool})
    c = tables["crystals"]
    crystals = c[["frame", "crystal", *_CELL, "lattice", "centering",
                  "n_peaks_indexed"]].assign(**keys)
    shells = resolution_shells(tables["reflections"]).assign(**keys)
    return {"frames": frames, "crystals": crystals, "shells": shells}


def ingest_job(engine: sa.Engine, job: dict, *, final: bool = False) -> int:
    """Ingest the parts of one job not yet in the database.

    Parameters
    ----------
    engine : sqlalchemy.Engine
    job : mapping
        A ``jobs`` row (``id``, ``trial_id``, ``run_id``, ``job_dir``).
    final : bool
        The job has finished: mark its ingest done once every part is in.

    Returns
    -------
    int
        Frame rows added.
    """
    results = Path(job["job_dir"]) / "results"
    with engine.connect() as conn:
        done = set(conn.execute(sa.select(schema.parts.c.name).where(
            schema.parts.c.job_id == job["id"])).scalars())
    added = 0
    for name in committed_parts(results):
        if name in done:
            continue
        rows = part_rows(read_part(results, name), job["id"], job["trial_id"], job["run_id"])
        try:
            with engine.begin() as conn:
                f = rows["frames"]
                conn.execute(schema.parts.insert().values(
                    job_id=job["id"], name=name, trial_id=job["trial_id"],
                    run_id=job["run_id"], first_frame=int(f["frame"].min()) if len(f) else 0,
                    n_frames=len(f), stats=pack_stats(f), ingested_at=_now()))
                for kind in ("frames", "crystals", "shells"):
                    insert_rows(conn, getattr(schema, kind), rows[kind])
                conn.execute(schema.jobs.update().where(schema.jobs.c.id == job["id"]).values(
                    ingested_frames=schema.jobs.c.ingested_frames + len(rows["frames"])))
        except sa.exc.IntegrityError:
            continue  # another process ingested this part meanwhile
        added += len(rows["frames"])
    if final:
        with engine.begin() as conn:
            conn.execute(schema.jobs.update().where(schema.jobs.c.id == job["id"]).values(
                ingest_done=True))
    return added
