"""The notebook API of experiment bookkeeping: :class:`Experiment`."""

from __future__ import annotations

import datetime as _dt
import html
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy as sa

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from ..params import Params
from ..runstats import RunStats, run_stats
from . import schema as S
from .db import connect, read_table
from .ingest import JobIngester, ingest_job, unpack_stats
from .jobs import LocalExecutor, job_state
from .watch import FolderWatcher, check_run, find_runs, run_name, run_number

__all__ = ["JOB_STATES", "Experiment"]

#: Job states: queued (waiting for a slot), submitted (handed to the executor), running,
#: done, failed, held (kept from running: terminated, or its trial/block inactive).
JOB_STATES = ("queued", "submitted", "running", "done", "failed", "held")
_ACTIVE = ("submitted", "running")
#: Parameter sections a block (run group) may set: detector-level ones.
BLOCK_SECTIONS = ("mask", "peaks")


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _as_params(params) -> Params:
    if params is None:
        return Params()
    if isinstance(params, Params):
        return params
    if isinstance(params, dict):
        return Params.from_dict(params)
    p = Path(params)
    if p.is_file():
        return Params.load(p)
    return Params.from_toml(str(params))


def _geometry_text(geometry) -> str | None:
    if geometry is None:
        return None
    from ..io.crystfel_geom import read_geom, write_geom

    if isinstance(geometry, (str, Path)):
        path = Path(geometry)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such geometry file")
        text = path.read_text()
        read_geom(path)  # fail early, naming the file and line
        return text
    return write_geom(geometry)


class Experiment:
    """Runs, trials, run groups (blocks), tags, jobs and per-frame results of a beamtime.

    Parameters
    ----------
    path_or_url : str or path-like
        An experiment folder (SQLite database ``experiment.sqlite`` inside, created if
        needed) or a database URL (``postgresql://user@host:port/db``).
    tag : str
        Experiment tag: one database may hold several experiments.
    root : path-like, optional
        Folder for job output (``<root>/output/<run>/t<trial>_b<block>/``) and merges.
        Default: the experiment folder; required with a database URL the first time.
    executor : "local", LocalExecutor or DaskExecutor
        Where jobs run (default: a local pool of one job using every core).

    Examples
    --------
    >>> exp = sx.Experiment("beamtime/")                          # doctest: +SKIP
    >>> exp.add_trial(sx.Params(cell=cell), comment="lysozyme")   # doctest: +SKIP
    1
    >>> exp.add_block(first_run=1, geometry="eiger.geom")         # doctest: +SKIP
    1
    >>> w = exp.watch("raw/", template="run*_master.h5")          # doctest: +SKIP
    >>> exp.run_stats(trial=1, tag="lysozyme")                    # doctest: +SKIP
    """

    def __init__(self, path_or_url, *, tag: str = "default", root=None, executor="local"):
        text = str(path_or_url)
        self.url = text
        if "://" not in text:
            Path(text).mkdir(parents=True, exist_ok=True)
            root = root or text
        self.engine = connect(text)
        self.exp_tag = str(tag)
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(S.experiments).where(
                S.experiments.c.tag == self.exp_tag)).mappings().first()
            if row is None:
                if root is None:
                    raise ValueError(f"experiment {self.exp_tag!r} is new in {text}: give root= "
                                     "(the folder for job output)")
                try:
                    conn.execute(S.experiments.insert().values(
                        tag=self.exp_tag, root=str(Path(root).resolve()), created_at=_now()))
                except sa.exc.IntegrityError:
                    pass  # created concurrently
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(S.experiments).where(
                S.experiments.c.tag == self.exp_tag)).mappings().one()
        self.id = int(row["id"])
        self.root = Path(row["root"])
        self.executor = LocalExecutor() if executor == "local" else executor
        self._watchers: list[FolderWatcher] = []
        self._ingesters: dict[int, JobIngester] = {}
        self._pending: dict[str, str] = {}

    # ----------------------------------------------------------------- helpers
    def __repr__(self) -> str:
        with self.engine.connect() as conn:
            n = {t.name: conn.execute(sa.select(sa.func.count()).select_from(t).where(
                t.c.experiment_id == self.id)).scalar() for t in (S.runs, S.trials, S.blocks)}
        url = self.engine.url.render_as_string(hide_password=True)
        return (f"<Experiment {self.exp_tag!r} {url}: {n['runs']} runs, {n['trials']} trials, "
                f"{n['blocks']} blocks>")

    def _repr_html_(self) -> str:
        jobs = self.jobs()
        counts = jobs["status"].value_counts().to_dict() if len(jobs) else {}
        text = ", ".join(f"{v} {k}" for k, v in counts.items()) or "no jobs"
        runs = self.runs()
        body = runs.tail(10).to_html(index=False) if len(runs) else ""
        return (f"<div><b>sxlab Experiment</b> {html.escape(self.exp_tag)} — "
                f"{html.escape(repr(self.engine.url))}<br>{len(runs)} runs; jobs: "
                f"{html.escape(text)}{body}</div>")

    def close(self) -> None:
        """Stop the watchers started here and release the database connections."""
        for w in self._watchers:
            w.stop()
        self._watchers.clear()
        close = getattr(self.executor, "close", None)
        if close is not None:
            close()
        self.engine.dispose()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _trial(self, conn, number: int) -> dict:
        row = conn.execute(sa.select(S.trials).where(
            S.trials.c.experiment_id == self.id, S.trials.c.number == int(number))
        ).mappings().first()
        if row is None:
            raise KeyError(f"experiment {self.exp_tag!r} has no trial {number}")
        return dict(row)

    def _block(self, conn, number: int) -> dict:
        row = conn.execute(sa.select(S.blocks).where(
            S.blocks.c.experiment_id == self.id, S.blocks.c.number == int(number))
        ).mappings().first()
        if row is None:
            raise KeyError(f"experiment {self.exp_tag!r} has no block {number}")
        return dict(row)

    def _run_ids(self, conn, runs=None, tag=None, last: int | None = None) -> list[int]:
        """Run ids in run order (number, then name) for a selection."""
        q = sa.select(S.runs.c.id, S.runs.c.name).where(S.runs.c.experiment_id == self.id)
        if tag is not None:
            tags = [tag] if isinstance(tag, str) else list(tag)
            q = q.where(S.runs.c.id.in_(
                sa.select(S.run_tags.c.run_id).join(S.tags, S.tags.c.id == S.run_tags.c.tag_id)
                .where(S.tags.c.experiment_id == self.id, S.tags.c.name.in_(tags))))
        q = q.order_by(S.runs.c.number.is_(None), S.runs.c.number, S.runs.c.name)
        rows = conn.execute(q).all()
        if runs is not None:
            names = [str(r) for r in ([runs] if isinstance(runs, (str, int)) else runs)]
            by_name = {name: rid for rid, name in rows}
            missing = [n for n in names if n not in by_name]
            if missing:
                raise KeyError(f"unknown run(s) {missing} in experiment {self.exp_tag!r}")
            ids = [by_name[n] for n in names]
        else:
            ids = [rid for rid, _ in rows]
        if last is not None:
            ids = ids[-int(last):] if int(last) > 0 else []
        return ids

    # ------------------------------------------------------------------- trials
    def add_trial(self, params=None, *, comment: str = "", active: bool = True,
                  d_min: float | None = None, number: int | None = None) -> int:
        """Add a processing trial (crystal-specific parameters); returns its number.

        Parameters
        ----------
        params : Params, dict, TOML text or path, optional
        comment : str
        active : bool
            Active trials get jobs automatically for every new run.
        d_min : float, optional
            Aggregation resolution (Å) of the trial's statistics.
        number : int, optional
            Default: one more than the largest.
        """
        p = _as_params(params)
        with self.engine.begin() as conn:
            if number is None:
                number = int(conn.execute(sa.select(sa.func.coalesce(
                    sa.func.max(S.trials.c.number), 0)).where(
                    S.trials.c.experiment_id == self.id)).scalar()) + 1
            conn.execute(S.trials.insert().values(
                experiment_id=self.id, number=int(number), params_toml=p.to_toml(),
                params_hash=p.digest(), comment=comment, active=bool(active),
                d_min_A=d_min, created_at=_now()))
        return int(number)

    def set_trial(self, number: int, *, active: bool | None = None,
                  comment: str | None = None) -> None:
        """Activate / deactivate a trial or change its comment."""
        self._set(S.trials, self._trial, number, active=active, comment=comment)

    def _set(self, table: sa.Table, check, number: int, **values) -> None:
        """Update the given (non-None) values of a numbered trial or block."""
        values = {k: v for k, v in values.items() if v is not None}
        with self.engine.begin() as conn:
            check(conn, number)
            if values:
                conn.execute(table.update().where(table.c.experiment_id == self.id,
                                                  table.c.number == int(number)).values(**values))

    def trial_params(self, number: int) -> Params:
        """The parameters of a trial."""
        with self.engine.connect() as conn:
            return Params.from_toml(self._trial(conn, number)["params_toml"],
                                    source=f"trial {number}")

    def trials(self) -> pd.DataFrame:
        """Trials: number, params_hash, comment, d_min_A, active, created_at."""
        q = sa.select(S.trials.c.number, S.trials.c.params_hash, S.trials.c.comment,
                      S.trials.c.d_min_A, S.trials.c.active, S.trials.c.created_at).where(
            S.trials.c.experiment_id == self.id).order_by(S.trials.c.number)
        with self.engine.connect() as conn:
            return _frame(conn.execute(q).mappings().all(),
                          [c.name for c in q.selected_columns])

    # ------------------------------------------------------------------- blocks
    def add_block(self, first_run: int, last_run: int | None = None, *, geometry=None,
                  mask=None, mask_dataset: str | None = None, params=None, comment: str = "",
                  active: bool = True) -> int:
        """Add a run group (block): a range of run numbers with detector-level settings.

        Parameters
        ----------
        first_run, last_run : int
            Run numbers (inclusive); ``last_run=None`` is open-ended.
        geometry : path or Detector, optional
            CrystFEL geometry (default: the one stored with each run's data).
        mask : path, optional
            HDF5 mask file (``[mask] mask_file``), with ``mask_dataset``.
        params : dict or Params, optional
            Detector-level sections overriding the trial's: ``mask`` and ``peaks``.
        comment : str
        active : bool

        Returns
        -------
        int
            The block number.
        """
        sections = {}
        if params is not None:
            d = params.to_dict() if isinstance(params, Params) else dict(params)
            bad = [k for k in d if k not in BLOCK_SECTIONS]
            if bad:
                raise ValueError(f"a block sets detector-level sections {BLOCK_SECTIONS} "
                                 f"only, not {bad}")
            sections = {k: {kk: vv for kk, vv in v.items() if vv is not None}
                        for k, v in d.items()}
        if mask is not None:
            mpath = Path(mask).resolve()
            if not mpath.is_file():
                raise FileNotFoundError(f"{mpath}: no such mask file")
            sections.setdefault("mask", {})["mask_file"] = str(mpath)
            if mask_dataset:
                sections["mask"]["mask_dataset"] = mask_dataset
        Params().replace(**sections)  # validate now, naming the bad key
        import tomli_w

        with self.engine.begin() as conn:
            number = int(conn.execute(sa.select(sa.func.coalesce(
                sa.func.max(S.blocks.c.number), 0)).where(
                S.blocks.c.experiment_id == self.id)).scalar()) + 1
            conn.execute(S.blocks.insert().values(
                experiment_id=self.id, number=number, first_run=int(first_run),
                last_run=None if last_run is None else int(last_run),
                geometry=_geometry_text(geometry), mask=None if mask is None else str(mask),
                params_toml=tomli_w.dumps(sections), comment=comment, active=bool(active),
                created_at=_now()))
        return number

    def blocks(self) -> pd.DataFrame:
        """Blocks: number, first_run, last_run, has_geometry, mask, comment, active."""
        q = sa.select(S.blocks).where(S.blocks.c.experiment_id == self.id).order_by(
            S.blocks.c.number)
        with self.engine.connect() as conn:
            rows = conn.execute(q).mappings().all()
        t = pd.DataFrame(rows, columns=[c.name for c in S.blocks.c])
        t["has_geometry"] = t["geometry"].notna()
        return t[["number", "first_run", "last_run", "has_geometry", "mask", "params_toml",
                  "comment", "active"]]

    def set_block(self, number: int, *, active: bool | None = None,
                  last_run: int | None = None) -> None:
        """Activate / deactivate a block or close its run range."""
        self._set(S.blocks, self._block, number, active=active, last_run=last_run)

    # --------------------------------------------------------------------- tags
    def add_tag(self, name: str, *, persistent: bool = False, comment: str = "") -> None:
        """Create a tag; a persistent tag is applied to every run discovered from now on."""
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(S.tags.c.id).where(
                S.tags.c.experiment_id == self.id, S.tags.c.name == name)).first()
            if row is None:
                conn.execute(S.tags.insert().values(experiment_id=self.id, name=name,
                                                    persistent=bool(persistent),
                                                    comment=comment, created_at=_now()))
            else:
                conn.execute(S.tags.update().where(S.tags.c.id == row[0]).values(
                    persistent=bool(persistent)))

    def tag(self, runs, name: str) -> None:
        """Put tag ``name`` on ``runs`` (names); the tag is created if needed."""
        if name not in set(self.tags()["name"]):
            self.add_tag(name)
        with self.engine.begin() as conn:
            tag_id = conn.execute(sa.select(S.tags.c.id).where(
                S.tags.c.experiment_id == self.id, S.tags.c.name == name)).scalar_one()
            have = set(conn.execute(sa.select(S.run_tags.c.run_id).where(
                S.run_tags.c.tag_id == tag_id)).scalars())
            for rid in self._run_ids(conn, runs=runs):
                if rid not in have:
                    conn.execute(S.run_tags.insert().values(run_id=rid, tag_id=tag_id))

    def untag(self, runs, name: str) -> None:
        """Remove tag ``name`` from ``runs``."""
        with self.engine.begin() as conn:
            ids = self._run_ids(conn, runs=runs)
            conn.execute(S.run_tags.delete().where(
                S.run_tags.c.run_id.in_(ids),
                S.run_tags.c.tag_id.in_(sa.select(S.tags.c.id).where(
                    S.tags.c.experiment_id == self.id, S.tags.c.name == name))))

    def tags(self) -> pd.DataFrame:
        """Tags: name, persistent, comment, runs (count)."""
        q = (sa.select(S.tags.c.name, S.tags.c.persistent, S.tags.c.comment,
                       sa.func.count(S.run_tags.c.run_id).label("runs"))
             .select_from(S.tags.outerjoin(S.run_tags, S.run_tags.c.tag_id == S.tags.c.id))
             .where(S.tags.c.experiment_id == self.id)
             .group_by(S.tags.c.id, S.tags.c.name, S.tags.c.persistent, S.tags.c.comment)
             .order_by(S.tags.c.name))
        with self.engine.connect() as conn:
            return pd.DataFrame(conn.execute(q).mappings().all(),
                                columns=["name", "persistent", "comment", "runs"])

    # --------------------------------------------------------------------- runs
    def register_run(self, name: str, path="", *, n_frames: int | None = None,
                     status: str = "complete", source: str = "manual",
                     number: int | None = None) -> bool:
        """Register a run (the call a live supervisor uses); persistent tags are applied.

        Parameters
        ----------
        name : str
            Run name, unique in the experiment.
        path : path-like
            Master file (or live output directory / stream URL for live runs).
        n_frames : int, optional
        status : {"acquiring", "complete", "live"}
            ``complete`` runs get jobs for every active trial × matching block.
        source : str
            Who registered it: ``watch``, ``live``, ``manual``.
        number : int, optional
            Run number (default: the last digits of the name).

        Returns
        -------
        bool
            True when the run is new; an existing run has its status, path and frame
            count updated.
        """
        if status not in ("acquiring", "complete", "live"):
            raise ValueError(f"run status must be acquiring, complete or live, not {status!r}")
        number = run_number(name) if number is None else int(number)
        now = _now()
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(S.runs.c.id, S.runs.c.status).where(
                S.runs.c.experiment_id == self.id, S.runs.c.name == name)).first()
            if row is not None:
                values = {"status": status, "path": str(path)}
                if n_frames is not None:
                    values["n_frames"] = int(n_frames)
                if status == "complete" and row[1] != "complete":
                    values["completed_at"] = now
                conn.execute(S.runs.update().where(S.runs.c.id == row[0]).values(**values))
                return False
            try:
                with conn.begin_nested():
                    rid = conn.execute(S.runs.insert().values(
                        experiment_id=self.id, name=name, number=number, path=str(path),
                        source=source, status=status, discovered_at=now,
                        completed_at=now if status == "complete" else None,
                        n_frames=n_frames).returning(S.runs.c.id)).scalar_one()
            except sa.exc.IntegrityError:
                return False  # registered concurrently
            for tag_id in conn.execute(sa.select(S.tags.c.id).where(
                    S.tags.c.experiment_id == self.id, S.tags.c.persistent)).scalars():
                conn.execute(S.run_tags.insert().values(run_id=rid, tag_id=tag_id))
        return True

    def runs(self) -> pd.DataFrame:
        """Runs in order: name, number, status, n_frames, path, source, times, tags."""
        q = sa.select(S.runs).where(S.runs.c.experiment_id == self.id).order_by(
            S.runs.c.number.is_(None), S.runs.c.number, S.runs.c.name)
        tq = (sa.select(S.run_tags.c.run_id, S.tags.c.name)
              .join(S.tags, S.tags.c.id == S.run_tags.c.tag_id)
              .where(S.tags.c.experiment_id == self.id).order_by(S.tags.c.name))
        with self.engine.connect() as conn:
            rows = conn.execute(q).mappings().all()
            tag_rows = conn.execute(tq).all()
        t = _frame(rows, [c.name for c in S.runs.c])
        by_run: dict[int, list[str]] = {}
        for rid, name in tag_rows:
            by_run.setdefault(rid, []).append(name)
        t["tags"] = [by_run.get(r, []) for r in t["id"]]
        return t[["name", "number", "status", "n_frames", "path", "source", "discovered_at",
                  "completed_at", "tags"]]

    # -------------------------------------------------------------------- watch
    def scan(self, folder, template: str = "*_master.h5", *,
             expected_frames: int | None = None) -> pd.DataFrame:
        """One discovery pass: register new runs, mark complete ones (see :mod:`.watch`).

        Returns
        -------
        DataFrame
            The runs found in this pass: name, status, reason.
        """
        rows = []
        with self.engine.connect() as conn:
            known = {r.name: r for r in conn.execute(sa.select(
                S.runs.c.name, S.runs.c.status, S.runs.c.signature).where(
                S.runs.c.experiment_id == self.id)).all()}
        for path in find_runs(folder, template):
            name = run_name(path)
            row = known.get(name)
            if row is not None and row.status in ("complete", "live"):
                continue
            if row is None:
                self.register_run(name, path.resolve(), status="acquiring", source="watch")
            check = check_run(path, row.signature if row is not None else "",
                              expected_frames=expected_frames, template=template)
            if check.complete:
                n = check.n_frames
                if n is None:
                    from ..io import open_run

                    with open_run(path) as run:
                        n = len(run)
                self.register_run(name, path.resolve(), n_frames=n, status="complete",
                                  source="watch")
            else:
                with self.engine.begin() as conn:
                    conn.execute(S.runs.update().where(
                        S.runs.c.experiment_id == self.id, S.runs.c.name == name).values(
                        signature=check.signature))
            rows.append({"name": name, "status": "complete" if check.complete else "acquiring",
                         "reason": check.reason})
        return pd.DataFrame(rows, columns=["name", "status", "reason"])

    def watch(self, folder, template: str = "*_master.h5", *, once: bool = False,
              expected_frames: int | None = None, auto_submit: bool = True,
              interval: float = 2.0, polling: bool = False):
        """Discover runs in ``folder`` as they land; submit and ingest their jobs.

        Each pass registers new runs (persistent tags applied), marks complete ones,
        and — with ``auto_submit`` — runs :meth:`update`: jobs for every complete run ×
        active trial × matching active block, job states, ingest of their results.

        Parameters
        ----------
        folder : path-like
        template : str
            Glob of master files relative to ``folder`` (``**`` allowed).
        once : bool
            One pass now (returns its table) instead of a background watcher.
        expected_frames : int, optional
            Frame count that completes a run (see :func:`.watch.check_run`).
        auto_submit : bool
            Submit and follow jobs in each pass.
        interval : float
            Seconds between passes at most (events wake it earlier).
        polling : bool
            Poll the folder instead of inotify (network file systems).

        Returns
        -------
        DataFrame (``once=True``) or FolderWatcher
            The watcher runs in a background thread: ``.stop()`` ends it, ``.join()``
            blocks until then.
        """
        def one_pass():
            found = self.scan(folder, template, expected_frames=expected_frames)
            if auto_submit:
                self.update()
            return found

        if once:
            return one_pass()
        w = FolderWatcher(folder, one_pass, interval=interval, polling=polling).start()
        self._watchers.append(w)
        return w

    # --------------------------------------------------------------------- jobs
    def _job_dir(self, run: str, trial: int, block: int) -> Path:
        return self.root / "output" / run / f"t{trial:03d}_b{block:03d}"

    def _matching_blocks(self, conn, number: int | None) -> list[dict]:
        rows = conn.execute(sa.select(S.blocks).where(
            S.blocks.c.experiment_id == self.id, S.blocks.c.active)).mappings().all()
        if number is None:
            return []
        return [dict(b) for b in rows if b["first_run"] <= number
                and (b["last_run"] is None or number <= b["last_run"])]

    def submit(self, trial: int, runs=None, *, block: int | None = None) -> list[int]:
        """Create jobs for ``trial`` on ``runs`` (default: every complete run).

        Each run gets a job per matching active block (or the given ``block``); existing
        jobs are left alone (one job per trial × block × run). The jobs start as slots
        free up (:meth:`update`).

        Returns
        -------
        list of int
            Ids of the jobs created.
        """
        with self.engine.connect() as conn:
            t = self._trial(conn, trial)
            rids = self._run_ids(conn, runs=runs)
            run_rows = conn.execute(sa.select(S.runs).where(S.runs.c.id.in_(rids))).mappings()
            run_rows = [dict(r) for r in run_rows]
            blocks = [self._block(conn, block)] if block is not None else None
        created = []
        for r in run_rows:
            if r["status"] != "complete":
                if runs is not None:
                    raise ValueError(f"run {r['name']} is {r['status']}, not complete")
                continue
            with self.engine.connect() as conn:
                bl = blocks if blocks is not None else self._matching_blocks(conn, r["number"])
            for b in bl:
                jid = self._new_job(t, b, r)
                if jid is not None:
                    created.append(jid)
        self.update(ingest=False)
        return created

    def _new_job(self, trial: dict, block: dict, run: dict) -> int | None:
        """Insert one job row and prepare its folder; None when it exists already."""
        params = Params.from_toml(trial["params_toml"], source=f"trial {trial['number']}")
        sections = tomllib.loads(block["params_toml"] or "")
        if sections:
            params = params.replace(**sections)
        job_dir = self._job_dir(run["name"], trial["number"], block["number"])
        argv = ["sxlab", "process", str(run["path"]), "--params", str(job_dir / "params.toml"),
                "--out", str(job_dir / "results"), "-j", str(self.executor.workers),
                "--no-progress"]
        if block["geometry"]:
            argv += ["--geometry", str(job_dir / "geometry.geom")]
        with self.engine.begin() as conn:
            try:
                with conn.begin_nested():
                    jid = conn.execute(S.jobs.insert().values(
                        trial_id=trial["id"], block_id=block["id"], run_id=run["id"],
                        status="queued", executor=getattr(self.executor, "name", ""),
                        job_dir=str(job_dir), command=json.dumps(argv),
                        params_toml=params.to_toml(), params_hash=params.digest(),
                        created_at=_now()).returning(S.jobs.c.id)).scalar_one()
            except sa.exc.IntegrityError:
                return None
        return jid

    def _prepare_job_dir(self, job: dict) -> None:
        from .. import __version__

        job_dir = Path(job["job_dir"])
        job_dir.mkdir(parents=True, exist_ok=True)
        (job_dir / "params.toml").write_text(job["params_toml"])
        with self.engine.connect() as conn:
            block = conn.execute(sa.select(S.blocks.c.geometry).where(
                S.blocks.c.id == job["block_id"])).scalar()
        if block:
            (job_dir / "geometry.geom").write_text(block)
        spec = {"job": job["id"], "experiment": self.exp_tag, "argv": json.loads(job["command"]),
                "params_hash": job["params_hash"], "attempt": job["attempts"] + 1,
                "sxlab": __version__, "python": sys.executable}
        (job_dir / "job.json").write_text(json.dumps(spec, indent=1))
        (job_dir / "status.json").unlink(missing_ok=True)

    def update(self, *, ingest: bool = True, max_attempts: int = 3) -> pd.DataFrame:
        """One bookkeeping pass: follow job states, start queued jobs, ingest results.

        * a job whose runner died without finishing (watcher or job killed) is queued
          again (up to ``max_attempts``); :func:`sxlab.process_run` resumes its output
          where it stopped, and ingest skips the parts already in the database;
        * queued jobs start while the executor has free slots;
        * committed result parts of submitted, running and finished jobs are ingested;
        * with active trials, every complete run gets its jobs (auto-submit).

        Returns
        -------
        DataFrame
            :meth:`jobs` after the pass.
        """
        self._auto_submit()
        self.executor.poll()
        with self.engine.connect() as conn:
            active = [dict(r) for r in conn.execute(
                sa.select(S.jobs).where(S.jobs.c.status.in_(_ACTIVE),
                                        S.jobs.c.run_id.in_(self._run_ids(conn)))).mappings()]
        for job in active:
            st = job_state(job["job_dir"])
            values = {}
            if st["state"] == "running" and job["status"] != "running":
                values = {"status": "running", "started_at": _iso(st.get("started"))}
            elif st["state"] in ("done", "failed"):
                if ingest:
                    self._ingest(job)
                values = {"status": st["state"], "exit_code": st.get("exit_code"),
                          "error": st.get("error", ""), "finished_at": _iso(st.get("finished")),
                          "started_at": _iso(st.get("started"))}
            elif st["state"] == "lost":
                if ingest:
                    self._ingest(job)
                again = job["attempts"] < int(max_attempts)
                values = {"status": "queued" if again else "failed",
                          "error": st.get("error", "")}
            if values:
                with self.engine.begin() as conn:
                    conn.execute(S.jobs.update().where(S.jobs.c.id == job["id"],
                                                       S.jobs.c.status == job["status"])
                                 .values(**values))
        self._start_queued()
        if ingest:
            self.ingest()
        return self.jobs()

    def _auto_submit(self) -> None:
        with self.engine.connect() as conn:
            trials = [dict(t) for t in conn.execute(sa.select(S.trials).where(
                S.trials.c.experiment_id == self.id, S.trials.c.active)).mappings()]
            if not trials:
                return
            runs = [dict(r) for r in conn.execute(sa.select(S.runs).where(
                S.runs.c.experiment_id == self.id, S.runs.c.status == "complete")).mappings()]
            have = {tuple(r) for r in conn.execute(sa.select(
                S.jobs.c.trial_id, S.jobs.c.block_id, S.jobs.c.run_id)).all()}
            matches = {r["id"]: self._matching_blocks(conn, r["number"]) for r in runs}
        for r in runs:
            for b in matches[r["id"]]:
                for t in trials:
                    if (t["id"], b["id"], r["id"]) not in have:
                        self._new_job(t, b, r)

    def _start_queued(self) -> None:
        with self.engine.connect() as conn:
            n_active = conn.execute(sa.select(sa.func.count()).select_from(S.jobs).where(
                S.jobs.c.status.in_(_ACTIVE), S.jobs.c.executor == self.executor.name,
                S.jobs.c.run_id.in_(self._run_ids(conn)))).scalar()
            free = self.executor.max_jobs - int(n_active)
            if free <= 0:
                return
            queued = [dict(r) for r in conn.execute(
                sa.select(S.jobs).where(S.jobs.c.status == "queued",
                                        S.jobs.c.run_id.in_(self._run_ids(conn)))
                .order_by(S.jobs.c.id).limit(free)).mappings()]
        for job in queued:
            with self.engine.begin() as conn:
                # claim the job: only one process moves it from queued to submitted
                claimed = conn.execute(S.jobs.update().where(
                    S.jobs.c.id == job["id"], S.jobs.c.status == "queued").values(
                    status="submitted", attempts=S.jobs.c.attempts + 1, submitted_at=_now(),
                    executor=self.executor.name, error="", exit_code=None)).rowcount
            if not claimed:
                continue
            self._prepare_job_dir(job)
            try:
                ext = self.executor.submit(job["job_dir"])
            except Exception as exc:  # noqa: BLE001 - recorded on the job
                with self.engine.begin() as conn:
                    conn.execute(S.jobs.update().where(S.jobs.c.id == job["id"]).values(
                        status="failed", error=f"submission failed: {exc}"))
                continue
            with self.engine.begin() as conn:
                conn.execute(S.jobs.update().where(S.jobs.c.id == job["id"]).values(
                    external_id=str(ext)))

    def ingest(self) -> int:
        """Ingest the new result parts of every job; returns the frame rows added."""
        with self.engine.connect() as conn:
            jobs = [dict(r) for r in conn.execute(sa.select(S.jobs).where(
                S.jobs.c.ingest_done.is_(False), S.jobs.c.status.in_(
                    (*_ACTIVE, "done", "failed", "queued")),
                S.jobs.c.run_id.in_(self._run_ids(conn)))).mappings()]
        added = 0
        for job in jobs:
            if not (Path(job["job_dir"]) / "results").is_dir():
                continue
            added += self._ingest(job, final=job["status"] == "done")
        return added

    def _ingest(self, job: dict, *, final: bool = False) -> int:
        ing = self._ingesters.get(job["id"])
        if ing is None or ing.job["job_dir"] != job["job_dir"]:
            ing = self._ingesters[job["id"]] = JobIngester(self.engine, job)
        added = ingest_job(self.engine, job, final=final, ingester=ing)
        if final:
            self._ingesters.pop(job["id"], None)
        return added

    def jobs(self, trial: int | None = None) -> pd.DataFrame:
        """Jobs: id, trial, block, run, status, attempts, frames ingested, times, folder."""
        q = (sa.select(S.jobs.c.id, S.trials.c.number.label("trial"),
                       S.blocks.c.number.label("block"), S.runs.c.name.label("run"),
                       S.jobs.c.status, S.jobs.c.attempts, S.jobs.c.ingested_frames,
                       S.runs.c.n_frames, S.jobs.c.exit_code, S.jobs.c.error,
                       S.jobs.c.executor, S.jobs.c.external_id, S.jobs.c.submitted_at,
                       S.jobs.c.started_at, S.jobs.c.finished_at, S.jobs.c.job_dir,
                       S.jobs.c.command, S.jobs.c.params_hash)
             .join(S.trials, S.trials.c.id == S.jobs.c.trial_id)
             .join(S.blocks, S.blocks.c.id == S.jobs.c.block_id)
             .join(S.runs, S.runs.c.id == S.jobs.c.run_id)
             .where(S.runs.c.experiment_id == self.id)
             .order_by(S.jobs.c.id))
        if trial is not None:
            q = q.where(S.trials.c.number == int(trial))
        with self.engine.connect() as conn:
            return _frame(conn.execute(q).mappings().all(),
                          [c.name for c in q.selected_columns])

    def _job(self, conn, job_id: int) -> dict:
        row = conn.execute(sa.select(S.jobs).where(S.jobs.c.id == int(job_id))).mappings().first()
        if row is None:
            raise KeyError(f"no job {job_id}")
        return dict(row)

    def terminate(self, job_id: int) -> None:
        """Stop a job and hold it (:meth:`restart` runs it again)."""
        with self.engine.begin() as conn:
            job = self._job(conn, job_id)
            conn.execute(S.jobs.update().where(S.jobs.c.id == job["id"]).values(
                status="held", error="terminated"))
        if job["status"] in _ACTIVE:
            self.executor.terminate(job["external_id"], job["job_dir"])

    def delete_job(self, job_id: int) -> None:
        """Terminate a job, delete its rows (frames, crystals, shells, parts) and its folder."""
        self.terminate(job_id)
        with self.engine.begin() as conn:
            job = self._job(conn, job_id)
            for t in (S.frames, S.crystals, S.shells, S.parts):
                conn.execute(t.delete().where(t.c.job_id == job["id"]))
            conn.execute(S.jobs.delete().where(S.jobs.c.id == job["id"]))
        shutil.rmtree(job["job_dir"], ignore_errors=True)
        self._ingesters.pop(job["id"], None)

    def restart(self, job_id: int) -> None:
        """Run a job again from scratch: its rows and output are deleted, it is queued."""
        self.terminate(job_id)
        with self.engine.begin() as conn:
            job = self._job(conn, job_id)
            for t in (S.frames, S.crystals, S.shells, S.parts):
                conn.execute(t.delete().where(t.c.job_id == job["id"]))
            conn.execute(S.jobs.update().where(S.jobs.c.id == job["id"]).values(
                status="queued", attempts=0, ingested_frames=0, ingest_done=False, error="",
                exit_code=None, started_at=None, finished_at=None, submitted_at=None))
        shutil.rmtree(Path(job["job_dir"]) / "results", ignore_errors=True)
        self._ingesters.pop(job["id"], None)
        self.update(ingest=False)

    def wait(self, timeout: float = 600.0, *, interval: float = 0.5) -> pd.DataFrame:
        """Run :meth:`update` until no job is queued, submitted or running and all is ingested.

        Raises TimeoutError after ``timeout`` seconds.
        """
        import time

        deadline = time.monotonic() + float(timeout)
        while True:
            jobs = self.update()
            busy = jobs["status"].isin(("queued", *_ACTIVE)).any()
            if not busy:
                with self.engine.connect() as conn:
                    pending = conn.execute(sa.select(sa.func.count()).select_from(S.jobs).where(
                        S.jobs.c.status == "done", S.jobs.c.ingest_done.is_(False))).scalar()
                if not pending:
                    return jobs
            if time.monotonic() > deadline:
                raise TimeoutError(f"jobs still busy after {timeout} s:\n"
                                   f"{jobs[['id', 'run', 'status']].to_string(index=False)}")
            time.sleep(interval)

    # ------------------------------------------------------------------ results
    def _result_query(self, table: sa.Table, columns, trial: int, runs, tag, last):
        with self.engine.connect() as conn:
            t = self._trial(conn, trial)
            rids = self._run_ids(conn, runs=runs, tag=tag, last=last)
            names = dict(conn.execute(sa.select(S.runs.c.id, S.runs.c.name).where(
                S.runs.c.id.in_(rids))).all()) if rids else {}
        q = (sa.select(table.c.run_id, *[table.c[c] for c in columns])
             .where(table.c.trial_id == t["id"], table.c.run_id.in_(rids)))
        return q, rids, names

    def _results(self, table, columns, dtypes, trial, runs, tag, last) -> pd.DataFrame:
        q, rids, names = self._result_query(table, columns, trial, runs, tag, last)
        df = read_table(self.engine, q, dtypes) if rids else pd.DataFrame(
            columns=["run_id", *columns])
        rank = {rid: k for k, rid in enumerate(rids)}
        keys = [c for c in ("frame", "crystal", "shell") if c in df.columns]
        if len(df):
            order = np.lexsort(tuple(df[k].to_numpy() for k in reversed(keys))
                               + (df["run_id"].map(rank).to_numpy(),))
            df = df.iloc[order].reset_index(drop=True)
        df.insert(0, "run", df.pop("run_id").map(names).astype(object))
        return df

    def frames(self, trial: int, runs=None, *, tag=None, last: int | None = None,
               columns=None) -> pd.DataFrame:
        """Per-frame results of a trial from the database, runs in order, frames ascending.

        Columns: run, frame, event, status, error, n_peaks, hit, indexed, n_crystals,
        n_reflections, resolution_A, solvent_ratio, total_s (or the given ``columns``).
        """
        cols = list(columns) if columns is not None else list(S.FRAME_COLUMNS)
        dtypes = {"frame": "int64", "n_peaks": "int64", "hit": "bool", "indexed": "bool",
                  "n_crystals": "int64", "n_reflections": "int64", "resolution_A": "float64",
                  "solvent_ratio": "float64", "total_s": "float64", "event": "object",
                  "status": "object", "error": "object"}
        return self._results(S.frames, cols, dtypes, trial, runs, tag, last)

    def crystals(self, trial: int, runs=None, *, tag=None, last: int | None = None):
        """Per-lattice cells of a trial: run, frame, crystal, a … gamma, lattice, ..."""
        cols = ["frame", "crystal", "a", "b", "c", "alpha", "beta", "gamma", "lattice",
                "centering", "n_peaks_indexed"]
        dtypes = {"frame": "int64", "crystal": "int64", "n_peaks_indexed": "int64",
                  "lattice": "object", "centering": "object",
                  **{c: "float64" for c in ("a", "b", "c", "alpha", "beta", "gamma")}}
        return self._results(S.crystals, cols, dtypes, trial, runs, tag, last)

    def shells(self, trial: int, runs=None, *, tag=None, last: int | None = None):
        """Per-frame resolution shells (:data:`sxlab.tables.RESOLUTION_SHELLS` plus run)."""
        cols = ["frame", "shell", "d_max_A", "d_min_A", "n", "mean_i_sigma"]
        dtypes = {"frame": "int64", "shell": "int64", "n": "int64", "d_max_A": "float64",
                  "d_min_A": "float64", "mean_i_sigma": "float64"}
        return self._results(S.shells, cols, dtypes, trial, runs, tag, last)

    def run_stats(self, trial: int, runs=None, *, tag=None, last: int | None = None,
                  min_spots: int | None = None, i_sigma: float = 1.0,
                  hq_resolution: float = 2.5, window: int | None = None,
                  **kwargs) -> RunStats:
        """Run statistics of a trial from the database (:func:`sxlab.runstats.run_stats`).

        Parameters
        ----------
        trial : int
        runs : sequence of str, optional
            Run names (default: all); ``tag`` selects runs carrying a tag (or any of
            several), ``last`` the last N runs of the selection.
        min_spots, i_sigma, hq_resolution, window, **kwargs
            As for :func:`sxlab.runstats.run_stats`.
        """
        f = self._packed_frames(trial, runs, tag, last)
        shells = None
        if float(i_sigma) != 1.0:
            shells = self.shells(trial, runs, tag=tag, last=last)
        return run_stats(f, shells=shells, min_spots=min_spots, i_sigma=i_sigma,
                         hq_resolution=hq_resolution, window=window, **kwargs)

    def _packed_frames(self, trial, runs, tag, last) -> pd.DataFrame:
        """The run-statistics columns of a selection from the packed parts (fast path)."""
        with self.engine.connect() as conn:
            t = self._trial(conn, trial)
            rids = self._run_ids(conn, runs=runs, tag=tag, last=last)
            names = dict(conn.execute(sa.select(S.runs.c.id, S.runs.c.name).where(
                S.runs.c.id.in_(rids))).all()) if rids else {}
            rows = conn.execute(sa.select(S.parts.c.run_id, S.parts.c.first_frame,
                                          S.parts.c.n_frames, S.parts.c.stats).where(
                S.parts.c.trial_id == t["id"], S.parts.c.run_id.in_(rids))).all()
        rank = {rid: k for k, rid in enumerate(rids)}
        rows.sort(key=lambda r: (rank[r.run_id], r.first_frame))
        f = unpack_stats([r.stats for r in rows])
        order = [names[rid] for rid in rids]
        codes = np.repeat(np.array([rank[r.run_id] for r in rows], dtype=np.int64),
                          [r.n_frames for r in rows])
        f.insert(0, "run", pd.Categorical.from_codes(codes, categories=order))
        return f

    def compare_trials(self, trials, runs=None, *, tag=None, **kwargs) -> pd.DataFrame:
        """The statistics bars of several trials on the same runs, side by side.

        Returns
        -------
        DataFrame
            :data:`sxlab.tables.RUN_STATS_RUNS` rows with a leading ``trial`` column
            (one row per trial × run plus a run ``all`` row per trial), and the median
            cell of each trial's crystals (``a`` … ``gamma``).
        """
        rows = []
        for t in trials:
            st = self.run_stats(t, runs, tag=tag, **kwargs)
            table = pd.concat([st.runs, st.total()], ignore_index=True)
            cx = self.crystals(t, runs, tag=tag)
            for c in ("a", "b", "c", "alpha", "beta", "gamma"):
                table[c] = cx.groupby("run")[c].median().reindex(table["run"]).to_numpy()
                table.loc[table["run"] == "all", c] = cx[c].median() if len(cx) else np.nan
            table.insert(0, "trial", int(t))
            rows.append(table)
        return pd.concat(rows, ignore_index=True)

    def merge(self, trial: int, runs=None, *, tag=None, symmetry: str | None = None,
              **kwargs):
        """Merge the reflections of a trial's jobs on a selection of runs; recorded.

        The reflections are read from the jobs' output folders, merged with
        :func:`sxlab.merging.merge`, written to ``<root>/merges/m<NNN>/`` (``merged.mtz``,
        ``stats.csv``, ``selection.json``) and the result recorded in the ``merges``
        table.

        Parameters
        ----------
        trial : int
        runs, tag
            Selection as for :meth:`frames`.
        symmetry : str, optional
            Space group (default: the trial's reference cell's).
        **kwargs
            Passed to :func:`sxlab.merging.merge`.

        Returns
        -------
        sxlab.merging.MergeResult
        """
        from ..io import write_mtz
        from ..merging import merge as merge_reflections

        with self.engine.connect() as conn:
            t = self._trial(conn, trial)
            rids = self._run_ids(conn, runs=runs, tag=tag)
            jobs = [dict(r) for r in conn.execute(
                sa.select(S.jobs.c.job_dir, S.runs.c.name)
                .join(S.runs, S.runs.c.id == S.jobs.c.run_id)
                .where(S.jobs.c.trial_id == t["id"], S.jobs.c.run_id.in_(rids),
                       S.jobs.c.status == "done")).mappings()]
        if not jobs:
            raise ValueError(f"trial {trial} has no finished job on the selected runs")
        params = Params.from_toml(t["params_toml"])
        if symmetry is None:
            if params.cell is None or not params.cell.space_group:
                raise ValueError(f"trial {trial} has no reference cell: give symmetry=")
            symmetry = params.cell.space_group
        tables = []
        for k, job in enumerate(sorted(jobs, key=lambda j: j["name"])):
            refl = pd.read_parquet(Path(job["job_dir"]) / "results" / "reflections.parquet")
            # frames of different runs must stay different crystals
            refl["frame"] = refl["frame"].astype(np.int64) + (k << 32)
            tables.append(refl)
        result = merge_reflections(pd.concat(tables, ignore_index=True), symmetry, **kwargs)
        with self.engine.begin() as conn:
            mid = conn.execute(S.merges.insert().values(
                trial_id=t["id"], selection=json.dumps(
                    {"runs": [j["name"] for j in jobs], "tag": tag}),
                symmetry=str(symmetry), out_dir="", n_crystals=int(len(result.scales)),
                n_reflections=int(sum(len(x) for x in tables)),
                n_unique=int(len(result.merged)),
                cc_half=_overall(result.stats, "cc_half"),
                d_cc_star_A=_finite(result.cc_star_resolution_A),
                stats_json=result.stats.to_json(orient="records"), created_at=_now())
                .returning(S.merges.c.id)).scalar_one()
            out = self.root / "merges" / f"m{mid:03d}"
            conn.execute(S.merges.update().where(S.merges.c.id == mid).values(out_dir=str(out)))
        out.mkdir(parents=True, exist_ok=True)
        write_mtz(result.merged, out / "merged.mtz")
        result.stats.to_csv(out / "stats.csv", index=False)
        (out / "selection.json").write_text(json.dumps(
            {"trial": int(trial), "runs": [j["name"] for j in jobs], "tag": tag,
             "symmetry": symmetry}, indent=1))
        return result

    def merges(self) -> pd.DataFrame:
        """Merges made so far: id, trial, selection, symmetry, crystals, CC1/2, d(CC*)."""
        q = (sa.select(S.merges.c.id, S.trials.c.number.label("trial"), S.merges.c.selection,
                       S.merges.c.symmetry, S.merges.c.n_crystals, S.merges.c.n_unique,
                       S.merges.c.cc_half, S.merges.c.d_cc_star_A, S.merges.c.out_dir,
                       S.merges.c.created_at)
             .join(S.trials, S.trials.c.id == S.merges.c.trial_id)
             .where(S.trials.c.experiment_id == self.id).order_by(S.merges.c.id))
        with self.engine.connect() as conn:
            return _frame(conn.execute(q).mappings().all(),
                          [c.name for c in q.selected_columns])


def _frame(rows, columns) -> pd.DataFrame:
    """A DataFrame of query rows; timestamp columns as UTC (SQLite returns them naive)."""
    t = pd.DataFrame(rows, columns=columns)
    for c in t.columns:
        if c.endswith("_at"):
            t[c] = pd.to_datetime(t[c], utc=True)
    return t


def _iso(text):
    return _dt.datetime.fromisoformat(text) if text else None


def _finite(v):
    return float(v) if v is not None and np.isfinite(v) else None


def _overall(stats: pd.DataFrame, col: str):
    row = stats[stats["shell"] == -1]
    return _finite(float(row[col].iloc[0])) if len(row) else None
