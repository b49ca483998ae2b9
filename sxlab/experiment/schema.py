"""The experiment database's tables (SQLAlchemy Core), one declaration for SQLite and PostgreSQL.

The migrations in ``migrations/versions`` create exactly these tables; a test compares
the migrated database with this metadata.

=============  ===============================================================
experiments    one row per experiment tag (several experiments may share a server)
runs           discovered or registered runs: path, times, frame count, status
tags           sample / condition labels; persistent tags go on every new run
run_tags       which run carries which tag
trials         crystal-specific processing parameters (TOML + hash), numbered
blocks         run groups: a range of runs with detector-level parameters
jobs           trial × block × run: status, output directory, log, command
parts          committed result parts of a job already ingested (exactly once)
frames         per-frame results of every job (the frames table)
crystals       per-lattice cells of every job
shells         per-frame resolution shells (per-image resolution at any I/σ)
merges         merged data sets made from a trial and a selection of runs
=============  ===============================================================
"""

from __future__ import annotations

import sqlalchemy as sa

__all__ = ["FRAME_COLUMNS", "PART_STATS_DTYPE", "metadata"]

metadata = sa.MetaData(naming_convention={
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
})

_TS = sa.DateTime(timezone=True)


def _fk(table: str, **kwargs) -> sa.ForeignKey:
    return sa.ForeignKey(f"{table}.id", ondelete="CASCADE", **kwargs)


experiments = sa.Table(
    "experiments", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("tag", sa.String(100), nullable=False, unique=True),
    sa.Column("root", sa.Text, nullable=False),
    sa.Column("created_at", _TS, nullable=False),
    sa.Column("comment", sa.Text, nullable=False, server_default=""),
)

runs = sa.Table(
    "runs", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("experiment_id", sa.Integer, _fk("experiments"), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("number", sa.Integer, nullable=True),
    sa.Column("path", sa.Text, nullable=False, server_default=""),
    sa.Column("source", sa.String(20), nullable=False, server_default="watch"),
    sa.Column("status", sa.String(20), nullable=False, server_default="acquiring"),
    sa.Column("discovered_at", _TS, nullable=False),
    sa.Column("completed_at", _TS, nullable=True),
    sa.Column("n_frames", sa.Integer, nullable=True),
    sa.Column("signature", sa.Text, nullable=False, server_default=""),
    sa.UniqueConstraint("experiment_id", "name", name="uq_runs_experiment_name"),
)

tags = sa.Table(
    "tags", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("experiment_id", sa.Integer, _fk("experiments"), nullable=False),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("comment", sa.Text, nullable=False, server_default=""),
    sa.Column("persistent", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("created_at", _TS, nullable=False),
    sa.UniqueConstraint("experiment_id", "name", name="uq_tags_experiment_name"),
)

run_tags = sa.Table(
    "run_tags", metadata,
    sa.Column("run_id", sa.Integer, _fk("runs"), primary_key=True),
    sa.Column("tag_id", sa.Integer, _fk("tags"), primary_key=True),
)

trials = sa.Table(
    "trials", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("experiment_id", sa.Integer, _fk("experiments"), nullable=False),
    sa.Column("number", sa.Integer, nullable=False),
    sa.Column("params_toml", sa.Text, nullable=False),
    sa.Column("params_hash", sa.String(16), nullable=False),
    sa.Column("comment", sa.Text, nullable=False, server_default=""),
    sa.Column("d_min_A", sa.Float, nullable=True),
    sa.Column("active", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("created_at", _TS, nullable=False),
    sa.UniqueConstraint("experiment_id", "number", name="uq_trials_experiment_number"),
)

blocks = sa.Table(
    "blocks", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("experiment_id", sa.Integer, _fk("experiments"), nullable=False),
    sa.Column("number", sa.Integer, nullable=False),
    sa.Column("first_run", sa.Integer, nullable=False),
    sa.Column("last_run", sa.Integer, nullable=True),
    sa.Column("geometry", sa.Text, nullable=True),
    sa.Column("mask", sa.Text, nullable=True),
    sa.Column("params_toml", sa.Text, nullable=False, server_default=""),
    sa.Column("comment", sa.Text, nullable=False, server_default=""),
    sa.Column("active", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("created_at", _TS, nullable=False),
    sa.UniqueConstraint("experiment_id", "number", name="uq_blocks_experiment_number"),
)

jobs = sa.Table(
    "jobs", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("trial_id", sa.Integer, _fk("trials"), nullable=False),
    sa.Column("block_id", sa.Integer, _fk("blocks"), nullable=False),
    sa.Column("run_id", sa.Integer, _fk("runs"), nullable=False),
    sa.Column("status", sa.String(20), nullable=False, server_default="queued"),
    sa.Column("executor", sa.String(100), nullable=False, server_default=""),
    sa.Column("external_id", sa.String(200), nullable=False, server_default=""),
    sa.Column("job_dir", sa.Text, nullable=False),
    sa.Column("command", sa.Text, nullable=False),
    sa.Column("params_toml", sa.Text, nullable=False),
    sa.Column("params_hash", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("exit_code", sa.Integer, nullable=True),
    sa.Column("error", sa.Text, nullable=False, server_default=""),
    sa.Column("created_at", _TS, nullable=False),
    sa.Column("submitted_at", _TS, nullable=True),
    sa.Column("started_at", _TS, nullable=True),
    sa.Column("finished_at", _TS, nullable=True),
    sa.Column("ingested_frames", sa.Integer, nullable=False, server_default="0"),
    sa.Column("ingest_done", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.UniqueConstraint("trial_id", "block_id", "run_id", name="uq_jobs_trial_block_run"),
)

parts = sa.Table(
    "parts", metadata,
    sa.Column("job_id", sa.Integer, _fk("jobs"), primary_key=True),
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("trial_id", sa.Integer, nullable=False),
    sa.Column("run_id", sa.Integer, nullable=False),
    sa.Column("first_frame", sa.Integer, nullable=False),
    sa.Column("n_frames", sa.Integer, nullable=False),
    sa.Column("ingested_at", _TS, nullable=False),
    # The part's run-statistics columns packed as one NumPy structured array
    # (PART_STATS_DTYPE): the run-statistics query reads a few hundred of these instead of
    # a million frame rows. Written in the same transaction as the part's frame rows.
    sa.Column("stats", sa.LargeBinary, nullable=False),
    sa.Index("ix_parts_trial_run", "trial_id", "run_id"),
)

frames = sa.Table(
    "frames", metadata,
    sa.Column("job_id", sa.Integer, _fk("jobs"), primary_key=True),
    sa.Column("frame", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("trial_id", sa.Integer, nullable=False),
    sa.Column("run_id", sa.Integer, nullable=False),
    sa.Column("event", sa.String(100), nullable=False, server_default=""),
    sa.Column("status", sa.String(10), nullable=False),
    sa.Column("error", sa.Text, nullable=False, server_default=""),
    sa.Column("n_peaks", sa.Integer, nullable=False),
    sa.Column("hit", sa.Boolean, nullable=False),
    sa.Column("indexed", sa.Boolean, nullable=False),
    sa.Column("n_crystals", sa.Integer, nullable=False),
    sa.Column("n_reflections", sa.Integer, nullable=False),
    sa.Column("resolution_A", sa.Float, nullable=True),
    sa.Column("solvent_ratio", sa.Float, nullable=True),
    sa.Column("total_s", sa.Float, nullable=True),
    sa.Index("ix_frames_trial_run_frame", "trial_id", "run_id", "frame"),
)

crystals = sa.Table(
    "crystals", metadata,
    sa.Column("job_id", sa.Integer, _fk("jobs"), primary_key=True),
    sa.Column("frame", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("crystal", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("trial_id", sa.Integer, nullable=False),
    sa.Column("run_id", sa.Integer, nullable=False),
    *(sa.Column(c, sa.Float, nullable=True) for c in ("a", "b", "c", "alpha", "beta", "gamma")),
    sa.Column("lattice", sa.String(20), nullable=False, server_default=""),
    sa.Column("centering", sa.String(2), nullable=False, server_default=""),
    sa.Column("n_peaks_indexed", sa.Integer, nullable=False),
    sa.Index("ix_crystals_trial_run", "trial_id", "run_id"),
)

shells = sa.Table(
    "shells", metadata,
    sa.Column("job_id", sa.Integer, _fk("jobs"), primary_key=True),
    sa.Column("frame", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("shell", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("trial_id", sa.Integer, nullable=False),
    sa.Column("run_id", sa.Integer, nullable=False),
    sa.Column("d_max_A", sa.Float, nullable=False),
    sa.Column("d_min_A", sa.Float, nullable=False),
    sa.Column("n", sa.Integer, nullable=False),
    sa.Column("mean_i_sigma", sa.Float, nullable=False),
    sa.Index("ix_shells_trial_run", "trial_id", "run_id"),
)

merges = sa.Table(
    "merges", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("trial_id", sa.Integer, _fk("trials"), nullable=False),
    sa.Column("selection", sa.Text, nullable=False),
    sa.Column("symmetry", sa.String(40), nullable=False),
    sa.Column("out_dir", sa.Text, nullable=False),
    sa.Column("n_crystals", sa.Integer, nullable=False),
    sa.Column("n_reflections", sa.Integer, nullable=False),
    sa.Column("n_unique", sa.Integer, nullable=False),
    sa.Column("cc_half", sa.Float, nullable=True),
    sa.Column("d_cc_star_A", sa.Float, nullable=True),
    sa.Column("stats_json", sa.Text, nullable=False),
    sa.Column("created_at", _TS, nullable=False),
)

#: Columns packed in ``parts.stats`` (little-endian structured array, one item per frame).
PART_STATS_DTYPE = [("frame", "<i8"), ("ok", "u1"), ("n_peaks", "<i4"), ("hit", "u1"),
                    ("n_crystals", "<i4"), ("resolution_A", "<f8"), ("solvent_ratio", "<f8")]

#: Columns of the database frames table that come from a job's frames table.
FRAME_COLUMNS = ["frame", "event", "status", "error", "n_peaks", "hit", "indexed",
                 "n_crystals", "n_reflections", "resolution_A", "solvent_ratio", "total_s"]
