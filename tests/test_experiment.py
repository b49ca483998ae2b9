"""Experiment bookkeeping on SQLite and on a throwaway PostgreSQL cluster.

The same tests run on both databases (the ``db`` fixture). The beamtime test plays a
small beamtime: runs land in a folder over time (with and without a status file), a
watcher process discovers them, tags them, submits jobs and ingests their frames; the
watcher and a job are killed mid-way and the watcher is restarted.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pgserver
import pytest
import sqlalchemy as sa
from conftest import require_service

import sxlab as sx
from sxlab.experiment import Experiment, LocalExecutor, jobqueue_cluster
from sxlab.experiment import db as dbmod
from sxlab.experiment import schema as S
from sxlab.experiment.jobs import job_state
from sxlab.experiment.watch import FolderWatcher, check_run, find_runs, run_name
from sxlab.integration import resolution_shells
from sxlab.runstats import run_stats

CELL = sx.UnitCell(79.1, 79.1, 37.9, 90, 90, 90, space_group="P 43 21 2")
PARAMS = sx.Params(cell=CELL).replace(peaks={"adc_threshold": 3.0, "min_snr": 6.0})
#: name -> (frames, frames per data file, first simulated frame)
RUNS = {"run0001": (6, 3, 0), "run0002": (6, 3, 6), "run0003": (12, 4, 12)}


# ------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def sim_runs(tmp_path_factory):
    """Tiny simulated runs (lysozyme, EIGER 1M), written once per module."""
    from sxlab import datasets

    sim = datasets.simulator("lysozyme-demo")
    root = tmp_path_factory.mktemp("sim-runs")
    for name, (n, per_file, start) in RUNS.items():
        (root / name).mkdir()
        sim.write(root / name / f"{name}_master.h5", n, start=start,
                  frames_per_file=per_file, progress=False)
    return root


_counter = itertools.count()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def db_kind(request):
    if request.param == "sqlite":
        yield ("sqlite", None)
        return
    require_service("postgresql", pgserver.available())
    server = pgserver.PostgresServer().start()
    try:
        yield ("postgresql", server)
    finally:
        server.stop()


@pytest.fixture
def db(db_kind, tmp_path):
    """(database: folder or URL, root folder for job output) of a fresh experiment."""
    kind, server = db_kind
    if kind == "sqlite":
        return str(tmp_path / "exp"), tmp_path / "exp"
    url = server.createdb(f"t{os.getpid()}_{next(_counter)}")
    return url, tmp_path / "exp"


def _open(db, **kw) -> Experiment:
    url, root = db
    return Experiment(url, root=root, **kw)


def _results_frames(job_dir: Path, run: str) -> pd.DataFrame:
    f = sx.Results.load(Path(job_dir) / "results").frames
    return f.assign(run=run)


# ----------------------------------------------------------------------- schema
def test_migrations_create_the_declared_schema(db):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    exp = _open(db)
    try:
        with exp.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), S.metadata)
            assert diff == []
            assert dbmod.current_revision(conn) == "0001"
        dbmod.upgrade(exp.engine)  # idempotent
        again = _open(db)  # a second client on the same database
        assert again.id == exp.id
        again.close()
    finally:
        exp.close()


def test_trials_blocks_tags_and_registered_runs(db, tmp_path):
    exp = _open(db)
    try:
        assert exp.add_trial(PARAMS, comment="lysozyme", d_min=2.0) == 1
        assert exp.add_trial(PARAMS.replace(cell=None), active=False) == 2
        t = exp.trials()
        assert t.number.tolist() == [1, 2] and t.active.tolist() == [True, False]
        assert t.params_hash[0] == PARAMS.digest() and t.d_min_A[0] == 2.0
        assert exp.trial_params(1) == PARAMS
        with pytest.raises(KeyError, match="trial 7"):
            exp.trial_params(7)
        geom = tmp_path / "det.geom"
        geom.write_text(sx.write_geom(sx.builtin_geometry("eiger1m")))
        assert exp.add_block(1, 9, geometry=geom, params={"peaks": {"min_snr": 7.0}}) == 1
        assert exp.add_block(10) == 2
        with pytest.raises(ValueError, match="detector-level"):
            exp.add_block(1, params={"index": {"fast": True}})
        with pytest.raises(FileNotFoundError, match="nowhere.geom"):
            exp.add_block(1, geometry=tmp_path / "nowhere.geom")
        b = exp.blocks()
        assert b.has_geometry.tolist() == [True, False] and pd.isna(b.last_run[1])

        exp.add_tag("lysozyme", persistent=True)
        assert exp.register_run("run0003", "/data/run0003_master.h5", n_frames=100)
        assert not exp.register_run("run0003", "/data/run0003_master.h5", n_frames=100)
        exp.add_tag("lysozyme", persistent=False)
        exp.register_run("run0012", status="live", source="live")
        exp.tag(["run0012"], "dark")
        runs = exp.runs()
        assert runs.name.tolist() == ["run0003", "run0012"]
        assert runs.number.tolist() == [3, 12]
        assert runs.tags.tolist() == [["lysozyme"], ["dark"]]
        assert runs.status.tolist() == ["complete", "live"]
        exp.untag("run0012", "dark")
        assert exp.tags().set_index("name").runs.to_dict() == {"dark": 0, "lysozyme": 1}
        with pytest.raises(KeyError, match="run9999"):
            exp.tag(["run9999"], "x")
        with pytest.raises(ValueError, match="status"):
            exp.register_run("run1", status="bogus")
    finally:
        exp.close()


def test_jobs_follow_blocks_and_active_trials(db):
    class Recorder:  # an executor that records submissions and runs nothing
        name, max_jobs, workers = "recorder", 10, 1

        def __init__(self):
            self.submitted = []

        def submit(self, job_dir):
            self.submitted.append(job_dir)
            return str(len(self.submitted))

        def poll(self):
            pass

        def terminate(self, external_id, job_dir):
            pass

    rec = Recorder()
    exp = _open(db, executor=rec)
    try:
        exp.add_trial(PARAMS)
        exp.add_trial(PARAMS, active=False)
        exp.add_block(1, 5)
        exp.add_block(4)
        for k in (1, 4, 8):
            exp.register_run(f"run{k:04d}", f"/data/run{k:04d}_master.h5")
        exp.register_run("run0009", status="acquiring")
        jobs = exp.update(ingest=False)
        # run 1: block 1; run 4: blocks 1 and 2; run 8: block 2; run 9 not complete
        assert sorted(zip(jobs.run, jobs.block, strict=True)) == [
            ("run0001", 1), ("run0004", 1), ("run0004", 2), ("run0008", 2)]
        assert (jobs.trial == 1).all() and (jobs.status == "submitted").all()
        assert len(rec.submitted) == 4
        exp.update(ingest=False)  # nothing twice
        assert len(exp.jobs()) == 4 and len(rec.submitted) == 4
        job_dir = Path(jobs.job_dir[0])
        spec = json.loads((job_dir / "job.json").read_text())
        assert spec["argv"][:3] == ["sxlab", "process", "/data/run0001_master.h5"]
        assert json.loads(jobs.command[0]) == spec["argv"]
        assert sx.Params.load(job_dir / "params.toml") == PARAMS
        assert job_dir.parent.name == "run0001" and job_dir.name == "t001_b001"
        # explicit submission of the inactive trial on one run
        assert len(exp.submit(2, ["run0008"])) == 1
        assert exp.submit(2, ["run0008"]) == []
        with pytest.raises(ValueError, match="acquiring"):
            exp.submit(2, ["run0009"])
        jid = int(jobs.id[0])
        exp.terminate(jid)
        assert exp.jobs().set_index("id").status[jid] == "held"
        exp.delete_job(jid)
        assert jid not in set(exp.jobs().id) and not job_dir.exists()
    finally:
        exp.close()


# ------------------------------------------------------------------------ watch
def test_completion_rules(tmp_path, sim_runs):
    src = sim_runs / "run0001"
    folder = tmp_path / "raw"
    folder.mkdir()
    master = folder / "run0001_master.h5"
    shutil.copy(src / "run0001_master.h5", master)
    check = check_run(master)
    assert not check.complete and "missing" in check.reason
    for p in sorted(src.glob("run0001_data_*.h5")):
        shutil.copy(p, folder)
    first = check_run(master)
    assert not first.complete and "settle" in first.reason
    assert check_run(master, first.signature).complete
    assert check_run(master, expected_frames=6).n_frames == 6
    assert not check_run(master, expected_frames=7).complete
    status = folder / "status.txt"
    status.write_text("# Cheetah status\nStatus: Running\nFrames processed: 3\n")
    assert not check_run(master, first.signature).complete
    status.write_text("Status: Finished\n")
    assert check_run(master).complete
    assert find_runs(tmp_path, "**/run*_master.h5") == [master]
    assert run_name(master) == "run0001"

    calls = []
    w = FolderWatcher(folder, lambda: calls.append(time.monotonic()), interval=30.0,
                      polling=False).start()
    try:
        deadline = time.monotonic() + 10
        while len(calls) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        (folder / "new_file").write_text("x")  # an event wakes the watcher long before 30 s
        while len(calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(calls) >= 2
    finally:
        w.stop()
    assert not w.running


def test_jobqueue_job_scripts(tmp_path):
    for system, marker in (("slurm", "#SBATCH"), ("pbs", "#PBS"), ("lsf", "#BSUB")):
        cluster = jobqueue_cluster(system, cores=4, memory="8GB", walltime="01:30:00",
                                   queue="sx", log_directory=str(tmp_path))
        try:
            script = cluster.job_script()
        finally:
            cluster.close()
        assert marker in script
        assert sys.executable in script
        assert "01:30" in script and "sx" in script
        assert "--nthreads 4" in script or "--nworkers 1 --nthreads 4" in script
        assert "sxlab" in script  # job name
    with pytest.raises(ValueError, match="sge"):
        jobqueue_cluster("sge")


# --------------------------------------------------------------------- beamtime
def _place(src: Path, dest: Path, name: str, *, status_file: bool) -> None:
    """Write a run into the watched folder over time: master, then data files."""
    dest.mkdir(parents=True, exist_ok=True)
    if status_file:
        (dest / "status.txt").write_text("Status: Running\n")
    shutil.copy(src / f"{name}_master.h5", dest)
    for p in sorted(src.glob(f"{name}_data_*.h5")):
        time.sleep(0.2)
        shutil.copy(p, dest)
    if status_file:
        time.sleep(0.2)
        (dest / "status.txt").write_text("Status: Finished\n")


def _poll(what, timeout=240.0, interval=0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = what()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met after {timeout} s")
        time.sleep(interval)


def _watcher_process(db, raw: Path, log: Path) -> subprocess.Popen:
    url, root = db
    with open(log, "ab") as out:
        return subprocess.Popen(
        [sys.executable, "-m", "sxlab", "experiment", "watch", str(raw), "-e", str(url),
         "--root", str(root), "--template", "**/run*_master.h5", "--interval", "0.3",
         "--max-jobs", "2", "--workers", "1"],
            stdout=out, stderr=subprocess.STDOUT)


def _done(exp, n_jobs):
    jobs = exp.jobs()
    if len(jobs) == n_jobs and (jobs.status == "done").all():
        with exp.engine.connect() as conn:
            pending = conn.execute(sa.select(sa.func.count()).select_from(S.jobs).where(
                S.jobs.c.ingest_done.is_(False))).scalar()
        return jobs if pending == 0 else None
    failed = jobs[jobs.status == "failed"]
    if len(failed):
        raise AssertionError(f"job failed:\n{failed[['run', 'error']].to_string()}")
    return None


@pytest.mark.slow
def test_beamtime_end_to_end(db, sim_runs, tmp_path):
    exp = _open(db, executor=LocalExecutor(max_jobs=2, workers=1))
    raw = tmp_path / "raw"
    raw.mkdir()
    exp.add_tag("lysozyme", persistent=True)
    exp.add_trial(PARAMS, comment="lysozyme")
    exp.add_block(1)
    watcher = _watcher_process(db, raw, tmp_path / "watcher.log")
    try:
        # runs land over time: one with a Cheetah-style status file, one without
        _place(sim_runs / "run0001", raw / "r0001", "run0001", status_file=True)
        _place(sim_runs / "run0002", raw, "run0002", status_file=False)
        jobs = _poll(lambda: _done(exp, 2))
        assert sorted(jobs.run) == ["run0001", "run0002"]

        # a third run; kill the watcher and the job mid-way
        _place(sim_runs / "run0003", raw / "r0003", "run0003", status_file=True)
        job3 = _poll(lambda: _job_of(exp, "run0003"))
        parts_dir = Path(job3["job_dir"]) / "results" / "parts"
        _poll(lambda: len(list(parts_dir.glob("frames-*.parquet"))) >= 1, interval=0.005)
        st = _poll(lambda: job_state(job3["job_dir"]) if job_state(job3["job_dir"]).get(
            "pid") else None, interval=0.005)
        os.killpg(os.getpgid(st["pid"]), signal.SIGSTOP)
        watcher.kill()
        watcher.wait(30)
        os.killpg(os.getpgid(st["pid"]), signal.SIGKILL)
        committed = sorted(p.name for p in parts_dir.glob("frames-*.parquet"))
        assert 1 <= len(committed) < 3, "the job should have been killed mid-way"
        mtimes = {p.name: p.stat().st_mtime_ns for p in parts_dir.glob("*.parquet")}
        # the database holds the committed frames of the unfinished job
        exp.ingest()
        partial = exp.frames(1, ["run0003"])
        assert 0 < len(partial) < RUNS["run0003"][0]
        assert exp.jobs().set_index("run").status["run0003"] in ("submitted", "running")
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait(30)

    # restart the watcher (in this process): the lost job resumes, nothing runs twice
    w = exp.watch(raw, "**/run*_master.h5", interval=0.3)
    try:
        jobs = _poll(lambda: _done(exp, 3))
        assert dict(zip(jobs.run, jobs.attempts, strict=True)) == {
            "run0001": 1, "run0002": 1, "run0003": 2}
        for p, m in mtimes.items():  # committed parts were not redone
            assert (parts_dir / p).stat().st_mtime_ns == m

        # a second trial with a different reference cell: a second set of rows
        exp.add_trial(PARAMS.replace(cell=sx.UnitCell(78.2, 78.2, 38.3, 90, 90, 90,
                                                      space_group="P 43 21 2")))
        jobs = _poll(lambda: _done(exp, 6))
    finally:
        w.stop()
    assert not w.errors, w.errors
    assert sorted(jobs.groupby("trial").size().tolist()) == [3, 3]

    runs = exp.runs()
    assert runs.status.tolist() == ["complete"] * 3
    assert runs.n_frames.tolist() == [RUNS[r][0] for r in runs.name]
    assert all(t == ["lysozyme"] for t in runs.tags)
    for trial in (1, 2):
        f = exp.frames(trial)
        assert len(f) == sum(n for n, _, _ in RUNS.values())
        assert not f.duplicated(["run", "frame"]).any()
        with exp.engine.connect() as conn:
            n_rows = conn.execute(sa.select(sa.func.count()).select_from(S.frames)).scalar()
        assert n_rows == 2 * len(f)

    # run statistics from the database == from the jobs' output tables
    done = jobs[jobs.trial == 1].set_index("run")
    direct = pd.concat([_results_frames(done.job_dir[r], r) for r in sorted(RUNS)])
    want = run_stats(direct, min_spots=20)
    got = exp.run_stats(1, min_spots=20)
    pd.testing.assert_frame_equal(got.runs, want.runs)
    cols = [c for c in want.frames.columns if c not in ("filename", "event")]
    pd.testing.assert_frame_equal(got.frames[cols], want.frames[cols])
    assert got.runs.indexed.sum() > 0
    # and at another I/σ cutoff, through the shells table
    refl = pd.concat([sx.Results.load(Path(done.job_dir[r]) / "results").reflections
                      .assign(run=r) for r in sorted(RUNS)])
    shells = pd.concat([resolution_shells(g).assign(run=r) for r, g in refl.groupby("run")])
    pd.testing.assert_frame_equal(exp.run_stats(1, i_sigma=2.0).frames[cols],
                                  run_stats(direct, shells=shells, i_sigma=2.0).frames[cols])
    # by tag, by run and the last runs
    assert exp.run_stats(1, tag="lysozyme").runs.shots.sum() == len(direct)
    assert exp.run_stats(1, last=1).runs.run.tolist() == ["run0003"]
    cx = exp.crystals(1)
    assert len(cx) == int(exp.frames(1).n_crystals.sum())

    cmp = exp.compare_trials([1, 2])
    assert cmp.trial.tolist() == [1] * 4 + [2] * 4
    assert cmp.run.tolist() == ["run0001", "run0002", "run0003", "all"] * 2
    assert (cmp.shots == np.tile([6, 6, 12, 24], 2)).all()
    c2 = exp.crystals(2)
    assert len(c2) and np.isfinite(cmp.a).any()

    # merge a tag of trial 1: recorded with its selection
    res = exp.merge(1, tag="lysozyme")
    m = exp.merges()
    assert len(m) == 1 and m.n_unique[0] == len(res.merged) > 0
    assert json.loads(m.selection[0])["runs"] == sorted(RUNS)
    assert (Path(m.out_dir[0]) / "merged.mtz").is_file()

    # restart one job: its rows go, it runs again, its rows come back
    jid = int(jobs[(jobs.trial == 2) & (jobs.run == "run0001")].id.iloc[0])
    exp.restart(jid)
    assert exp.frames(2, ["run0001"]).empty
    exp.wait(120)
    assert len(exp.frames(2, ["run0001"])) == 6
    exp.close()


def _job_of(exp, run):
    jobs = exp.jobs()
    jobs = jobs[jobs.run == run]
    return jobs.iloc[0].to_dict() if len(jobs) else None


# ------------------------------------------------------------- report and commands
@pytest.fixture(scope="module")
def processed(sim_runs, tmp_path_factory):
    """An SQLite experiment with run0001 processed under trial 1."""
    folder = tmp_path_factory.mktemp("processed") / "exp"
    exp = Experiment(folder, executor=LocalExecutor(max_jobs=1, workers=1))
    exp.add_trial(PARAMS)
    exp.add_block(1)
    exp.register_run("run0001", sim_runs / "run0001" / "run0001_master.h5", n_frames=6)
    jobs = exp.wait(240)
    exp.close()
    assert (jobs.status == "done").all()
    return folder, Path(jobs.job_dir[0])


@pytest.mark.slow
def test_report_reproduces_its_numbers(processed, sim_runs, tmp_path):
    from sxlab.cli import main
    from sxlab.report import file_checksum, report

    folder, job_dir = processed
    results = job_dir / "results"
    a = report(results, tmp_path / "a" / "report.html", command="sxlab report (test)")
    b = report(results, tmp_path / "b" / "report.html")
    page = a.read_text()
    assert "sxlab-provenance" in page and "Provenance" in page
    assert sx.Params.load(results / "params.toml").digest() in page
    master = sim_runs / "run0001" / "run0001_master.h5"
    assert str(master) in page and file_checksum(master) in page
    assert "sxlab report (test)" in page and "sxlab process" in page
    assert page.count("<img") >= 2  # run-statistics figure and unit-cell histograms
    numbers = json.loads(a.with_suffix(".numbers.json").read_text())
    assert numbers == json.loads(b.with_suffix(".numbers.json").read_text())
    direct = run_stats(sx.Results.load(results).frames)
    assert numbers["total"][0]["shots"] == direct.runs.shots.sum() == 6
    assert numbers["total"][0]["indexed"] == direct.runs.indexed.sum()
    # the same report for a trial of the experiment, from the command line
    out = tmp_path / "c" / "trial.html"
    assert main(["report", "--trial", "1", "-e", str(folder), "-o", str(out)]) == 0
    by_trial = json.loads(out.with_suffix(".numbers.json").read_text())
    assert by_trial["runs"] == numbers["runs"]


def test_experiment_commands(processed, tmp_path, capsys):
    from sxlab.cli import main

    folder, _ = processed
    e = ["-e", str(folder)]
    assert main(["experiment", "tag", "lysozyme", "run0001", *e]) == 0
    assert main(["experiment", "runs", *e]) == 0
    out = capsys.readouterr().out
    assert "run0001" in out and "lysozyme" in out
    png = tmp_path / "stats.png"
    assert main(["experiment", "stats", "--trial", "1", "--tag", "lysozyme", "-o", str(png),
                 *e]) == 0
    out = capsys.readouterr().out
    st = Experiment(folder).run_stats(1)
    assert png.stat().st_size > 10_000
    assert f"{int(st.runs.shots[0])}" in out and "run0001" in out
    assert main(["experiment", "jobs", *e]) == 0
    assert "done" in capsys.readouterr().out
    assert main(["experiment", "trial", "list", *e]) == 0
    assert PARAMS.digest() in capsys.readouterr().out


@pytest.mark.slow
def test_dask_executor_runs_a_job(sim_runs, tmp_path):
    from distributed import Client, LocalCluster

    from sxlab.experiment import DaskExecutor

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        exp = Experiment(tmp_path / "exp", executor=DaskExecutor(client, workers=1))
        exp.add_trial(PARAMS)
        exp.add_block(1)
        exp.register_run("run0002", sim_runs / "run0002" / "run0002_master.h5", n_frames=6)
        jobs = exp.wait(240)
        assert jobs.status.tolist() == ["done"] and jobs.executor.tolist() == ["dask"]
        assert len(exp.frames(1)) == 6
        exp.close()
