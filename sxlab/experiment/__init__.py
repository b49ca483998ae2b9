"""Experiment bookkeeping after the cctbx.xfel GUI: runs, trials, run groups, tags, jobs.

A database (SQLite file in the experiment folder by default, PostgreSQL for a team)
records the runs discovered in a folder (or registered by the live system), the tags on
them, numbered trials (crystal-specific parameters), blocks of runs (detector-level
parameters: geometry, mask), one job per trial × block × run run by a local process
pool, a Dask cluster or a batch scheduler, and every frame's result ingested from the
jobs' output as it grows. The run statistics of :mod:`sxlab.runstats` come from it.

>>> import sxlab as sx
>>> exp = sx.Experiment("beamtime/")                  # doctest: +SKIP
>>> exp.add_trial(sx.Params(), comment="first look")  # doctest: +SKIP
1

Modules: :mod:`.core` (:class:`Experiment`), :mod:`.schema` (tables), :mod:`.db`
(connections, migrations, bulk I/O), :mod:`.watch` (run discovery), :mod:`.jobs`
(executors and the job runner), :mod:`.ingest` (results into the database).
"""

from .core import JOB_STATES, Experiment
from .jobs import DaskExecutor, LocalExecutor, jobqueue_cluster

__all__ = ["JOB_STATES", "DaskExecutor", "Experiment", "LocalExecutor", "jobqueue_cluster"]
