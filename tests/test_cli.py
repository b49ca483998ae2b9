"""The ``sxlab`` command as a user meets it: README's path, resume, signals, errors.

The README's command-line block is run as written (in a temporary directory, on the demo
run of the session's cache) and the merged intensities are compared with the simulator's
truth; the other tests cover resuming, failed-frame retry, SIGKILL and Ctrl-C of
``sxlab process``, and the one-line errors of every user mistake the CLI can meet.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import gemmi
import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import wait_until

import sxlab as sx
from sxlab.cli import main

ROOT = Path(__file__).resolve().parents[1]
LYSO_PDB = "CRYST1   79.100   79.100   37.900  90.00  90.00  90.00 P 43 21 2\n"


def _env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("SXLAB_DEBUG", None)
    return env


def _sxlab(*args, cwd=None, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sxlab", *map(str, args)], cwd=cwd,
                          env=_env(), capture_output=True, text=True, timeout=timeout)


def _readme_block(section: str) -> list[str]:
    """The command lines of the first ``console`` block under README's ``## section``."""
    text = (ROOT / "README.md").read_text()
    part = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```console\n(.*?)```", part, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def _read_mtz(path) -> pd.DataFrame:
    mtz = gemmi.read_mtz_file(str(path))
    table = pd.DataFrame(np.array(mtz, copy=False), columns=mtz.column_labels())
    table[["H", "K", "L"]] = table[["H", "K", "L"]].astype(np.int64)
    table = table.rename(columns={"H": "h", "K": "k", "L": "l"})
    table["d_A"] = [mtz.cell.calculate_d([h, k, l]) for h, k, l in
                    table[["h", "k", "l"]].to_numpy()]
    return table


def _stats_d_min(stdout: str) -> float:
    """The smallest ``d_min_A`` of the shells table ``sxlab merge`` printed."""
    lines = stdout.splitlines()
    head = next(i for i, s in enumerate(lines) if s.split()[:3] == ["shell", "d_max_A",
                                                                     "d_min_A"])
    values = []
    for s in lines[head + 1:]:
        parts = s.split()
        if not parts or not re.fullmatch(r"-?\d+", parts[0]):
            break
        values.append(float(parts[2]))
    assert values, stdout
    return min(values)


def _check_merged_against_truth(mtz_path, results_dir, merge_stdout):
    truth = sx.datasets.truth("lysozyme-demo")
    merged = _read_mtz(mtz_path)
    both = merged.merge(truth.intensities[["h", "k", "l", "I"]], on=["h", "k", "l"],
                        suffixes=("", "_true"))
    assert len(both) == len(merged) > 2000  # every merged index is a true reflection
    cc = np.corrcoef(both.I, both.I_true)[0, 1]
    assert cc > 0.7, cc
    # nothing beyond the data: the merged set and every printed shell stay within the
    # integrated reflections' resolution, itself within the detector's edge
    d_data = pd.read_parquet(Path(results_dir) / "reflections.parquet").d_A.min()
    assert d_data >= truth.metadata["d_min_A"] * 0.99
    assert merged.d_A.min() >= d_data * (1 - 1e-4)
    assert _stats_d_min(merge_stdout) >= d_data * (1 - 1e-3)
    cc_star = re.search(r"CC\* > 0.5 to ([\d.]+) Å", merge_stdout)
    assert cc_star is None or float(cc_star.group(1)) >= d_data * (1 - 1e-3)
    return cc


def test_readme_command_line_path_on_the_demo_run(tmp_path):
    lines = _readme_block("Command line")
    assert any(line.startswith("sxlab process") and "--cell" in line for line in lines)
    script = "set -e\n" + "\n".join(lines) + "\n"
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "sxlab: error" not in done.stderr and "Traceback" not in done.stderr
    # the space group and the cell came from the --cell file, recorded with the results
    assert "symmetry P 43 21 2 (from results/params.toml)" in out
    assert "cell 79.10 79.10 37.90 Å 90.00 90.00 90.00° (given)" in out
    crystals = pd.read_parquet(tmp_path / "results" / "crystals.parquet")
    assert (crystals.lattice == "tetragonal").all()
    wall = float(re.search(r"^wall_s\s+([\d.]+)$", out, re.M).group(1))
    assert wall > 0.5  # the real wall time, in stats as in process
    _check_merged_against_truth(tmp_path / "merged.mtz", tmp_path / "results", out)
    for name in ("merged.hkl", "merged.hkl1", "merged.hkl2", "profile.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_without_a_cell_conventional_setting_and_correct_merge(tmp_path):
    master = sx.datasets.path("lysozyme-demo", progress=False)
    done = _sxlab("process", master, "--out", "res", "-j", "2", "--no-progress",
                  cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "conventional setting" in done.stderr
    crystals = pd.read_parquet(tmp_path / "res" / "crystals.parquet")
    tetragonal = crystals[(crystals.lattice == "tetragonal") & (crystals.centering == "P")]
    assert len(tetragonal) >= 0.9 * len(crystals)
    np.testing.assert_allclose(tetragonal[["a", "b", "c"]].median(), [79.1, 79.1, 37.9],
                               rtol=0.005)
    # no space group recorded: merge says how to give one
    done = _sxlab("merge", "res", "-o", "m.mtz", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "--symmetry" in done.stderr
    done = _sxlab("merge", "res", "-y", "P43212", "-o", "m.mtz", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "fitted to the resolutions" in done.stdout  # says where the cell came from
    _check_merged_against_truth(tmp_path / "m.mtz", tmp_path / "res", done.stdout)

    # Reflections indexed in the wrong setting (a triclinic reduced cell, c first) do
    # not get a cell fitted to them: merge stops and says why.
    refl = pd.read_parquet(tmp_path / "res" / "reflections.parquet")
    swapped = refl.assign(h=refl.l, k=refl.h, l=refl.k)
    swapped.to_parquet(tmp_path / "swapped.parquet")
    done = _sxlab("merge", "swapped.parquet", "-y", "P43212", "-o", "s.mtz", cwd=tmp_path)
    assert done.returncode == 2, done.stdout[-2000:]
    assert done.stderr.startswith("sxlab: error: ") and done.stderr.count("\n") == 1
    assert "crystals" in done.stderr and not (tmp_path / "s.mtz").exists()


# ------------------------------------------------------------------ resume and retry
@pytest.fixture()
def sample_copy(tmp_path):
    """A private copy of the bundled 8-frame sample (master and data file)."""
    src = Path(sx.datasets.path("lysozyme-sample", progress=False)).parent
    dst = tmp_path / "data"
    dst.mkdir()
    for f in src.glob("lysozyme-sample_*.h5"):
        shutil.copy2(f, dst / f.name)
    return dst / "lysozyme-sample_master.h5"


def _run_cli(capsys, *args) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _one_error_line(err: str) -> str:
    lines = [s for s in err.splitlines() if s.strip()]
    assert len(lines) == 1 and lines[0].startswith("sxlab: error: "), err
    return lines[0]


def test_resume_with_other_input_is_refused(sample_copy, tmp_path, capsys):
    out = tmp_path / "out"
    rc, _, err = _run_cli(capsys, "process", sample_copy, "--out", out, "-j", "1",
                          "--no-progress")
    assert rc == 0, err
    before = pd.read_parquet(out / "frames.parquet")
    # another run (the issue's `sxlab process other.h5 --out k6`)
    other = sx.datasets.path("lysozyme-demo", progress=False)
    rc, stdout, err = _run_cli(capsys, "process", other, "--out", out, "-j", "1",
                               "--no-progress")
    line = _one_error_line(err)
    assert rc == 2 and stdout == ""
    assert "other input" in line and "lysozyme-sample" in line and "lysozyme-demo" in line
    assert "--overwrite" in line and "overwrite=True" not in line
    # same file names, other content: the fingerprint frames differ
    with h5py.File(sample_copy.parent / "lysozyme-sample_data_000001.h5", "r+") as f:
        ds = f["/entry/data/data"]
        _, blob = ds.id.read_direct_chunk((1, 0, 0))
        ds.id.write_direct_chunk((0, 0, 0), blob)
    rc, _, err = _run_cli(capsys, "process", sample_copy, "--out", out, "-j", "1",
                          "--no-progress")
    line = _one_error_line(err)
    assert rc == 2 and "other content" in line
    pd.testing.assert_frame_equal(pd.read_parquet(out / "frames.parquet"), before)
    # --overwrite starts afresh on the new content
    rc, _, err = _run_cli(capsys, "process", sample_copy, "--out", out, "-j", "1",
                          "--no-progress", "--overwrite")
    assert rc == 0, err


def test_failed_frame_is_retried_after_repair(sample_copy, tmp_path, capsys):
    data_file = sample_copy.parent / "lysozyme-sample_data_000001.h5"
    with h5py.File(data_file, "r") as f:
        info = f["/entry/data/data"].id.get_chunk_info(5)
    with open(data_file, "r+b") as fh:
        fh.seek(info.byte_offset + 8)
        original = fh.read(4)
        fh.seek(info.byte_offset + 8)
        fh.write(b"\xff\xff\xff\xff")  # the bitshuffle framing of frame 5 broken
    out = tmp_path / "out"
    args = ("process", sample_copy, "--out", out, "-j", "1", "--no-progress")
    rc, _, err = _run_cli(capsys, *args)
    assert rc == 0, err
    frames = pd.read_parquet(out / "frames.parquet").set_index("frame")
    assert frames.loc[5, "status"] == "failed" and "frame 5" in frames.loc[5, "error"]
    with open(data_file, "r+b") as fh:  # repaired
        fh.seek(info.byte_offset + 8)
        fh.write(original)
    rc, _, err = _run_cli(capsys, *args, "--keep-failed")
    assert rc == 0, err
    assert pd.read_parquet(out / "frames.parquet").set_index("frame").loc[5, "status"] \
        == "failed"
    rc, stdout, err = _run_cli(capsys, *args)
    assert rc == 0, err
    frames = pd.read_parquet(out / "frames.parquet")
    assert frames.frame.tolist() == list(range(8))  # every frame once
    assert (frames.status == "ok").all()
    assert re.search(r"^failed\s+0$", stdout, re.M)
    reference = sx.process_run(sx.open_run(sample_copy), sx.Params(), executor="serial",
                               progress=False)
    pd.testing.assert_frame_equal(
        pd.read_parquet(out / "peaks.parquet").sort_values(["frame", "fs", "ss"])
        .reset_index(drop=True)[["frame", "fs", "ss"]],
        reference.peaks.sort_values(["frame", "fs", "ss"]).reset_index(drop=True)[
            ["frame", "fs", "ss"]])


# ------------------------------------------------------------------------ signals
def _children(pid: int) -> set[int]:
    """All live descendants of ``pid`` (from /proc)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if fields[0] != "Z":
                parents.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _start_process(tmp_path, out):
    """``sxlab process`` of the demo run in a session of its own; stderr to a file."""
    master = sx.datasets.path("lysozyme-demo", progress=False)
    log = tmp_path / "stderr.txt"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sxlab", "process", str(master), "--out", str(out),
             "-j", "2", "--no-progress"], cwd=tmp_path, env=_env(),
            stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    return proc, log


def _committed(out) -> int:
    return len(list((out / "parts").glob("frames-*.parquet"))) if out.is_dir() else 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigkill_of_the_parent_leaves_no_process(tmp_path):
    out = tmp_path / "out"
    proc, log = _start_process(tmp_path, out)
    try:
        wait_until(lambda: len(_children(proc.pid)) >= 2 and _committed(out) >= 1
                   or proc.poll() is not None, 300, "the workers")
        assert proc.poll() is None, log.read_text()[-2000:]
        workers = _children(proc.pid)
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 5.0
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [w for w in workers if _alive(w)]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        for w in _children(proc.pid) | (locals().get("workers") or set()):
            if _alive(w):
                os.kill(w, signal.SIGKILL)


def test_ctrl_c_prints_one_line_and_leaves_a_resumable_directory(tmp_path):
    out = tmp_path / "out"
    proc, log = _start_process(tmp_path, out)
    try:
        wait_until(lambda: _committed(out) >= 2 or proc.poll() is not None, 300,
                   "the first committed frames")
        assert proc.poll() is None, log.read_text()[-2000:]
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        proc.wait(timeout=60)
        err = log.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130
    lines = [s for s in err.splitlines() if s.strip()]
    assert len(lines) == 1, err
    assert re.fullmatch(r"sxlab: interrupted; \d+ of 200 frames are committed in .*, run "
                        r"the same command again to resume", lines[0])
    n_kept = int(re.search(r"(\d+) of 200", lines[0]).group(1))
    assert n_kept >= 1
    master = sx.datasets.path("lysozyme-demo", progress=False)
    done = _sxlab("process", master, "--out", out, "-j", "2", "--no-progress",
                  cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    frames = pd.read_parquet(out / "frames.parquet")
    assert frames.frame.tolist() == list(range(200))
    peaks = pd.read_parquet(out / "peaks.parquet")
    assert not peaks.duplicated(["frame", "panel", "fs", "ss"]).any()


# ------------------------------------------------------------------- user errors
def _bad_geom(tmp_path) -> Path:
    text = sx.io.write_geom(sx.datasets.load("lysozyme-sample", progress=False).geometry)
    path = tmp_path / "bad.geom"
    lines = text.splitlines()
    lines.insert(3, "clen = 0.1\xe9 m")
    path.write_bytes("\n".join(lines).encode("latin-1"))
    return path


def _user_errors(tmp_path, sample_copy):
    """(arguments, fragments the one line must hold) for each user error."""
    empty = tmp_path / "empty.h5"
    empty.write_bytes(b"")
    truncated = tmp_path / "trunc_master.h5"
    blob = (sample_copy.parent / "lysozyme-sample_data_000001.h5").read_bytes()
    truncated.write_bytes(blob[: len(blob) // 3])
    nogeom = tmp_path / "plain.h5"
    with h5py.File(nogeom, "w") as f:
        f["/data/data"] = np.zeros((2, 16, 16), np.uint16)
    bool_toml = tmp_path / "bool.toml"
    bool_toml.write_text('[index]\nfast = "false"\n')
    neg_toml = tmp_path / "neg.toml"
    neg_toml.write_text("[hits]\nmin_peaks = -3\n")
    snr_toml = tmp_path / "snr.toml"
    snr_toml.write_text('[peaks]\nmin_snr = "six"\n')
    out = tmp_path / "o"
    s = str(sample_copy)
    return [
        (["process", "missing.h5", "--out", out], ["missing.h5"]),
        (["process", s, "--out", out, "--params", "missing.toml"], ["--params", "missing"]),
        (["process", s, "--out", out, "--cell", "missing.cell"], ["--cell", "missing.cell"]),
        (["process", s, "--out", out, "--params", bool_toml],
         ["bool.toml", "[index]", "fast", "'false'", "true or false"]),
        (["process", s, "--out", out, "--params", neg_toml],
         ["neg.toml", "[hits]", "min_peaks", "-3", ">= "]),
        (["process", s, "--out", out, "--params", snr_toml],
         ["snr.toml", "[peaks]", "min_snr", "'six'", "number"]),
        (["process", empty, "--out", out], ["empty.h5"]),
        (["process", truncated, "--out", out], ["trunc_master.h5"]),
        (["process", nogeom, "--out", out], ["plain.h5", "--geometry"]),
        (["process", s, "--out", out, "--geometry", _bad_geom(tmp_path)],
         ["bad.geom", "line 4"]),
        (["process", s, "--out", out, "--geometry", "missing.geom"], ["--geometry"]),
        (["process", s, "--out", out, "-y", "P99"], ["--symmetry", "P99"]),
        (["process", s, "--out", out, "-j", "0"], ["--jobs", "0"]),
        (["process", s, "--out", out, "--wavelength", "1", "--photon-energy", "9000"],
         ["--wavelength", "--photon-energy"]),
        (["process", s, "--out", sample_copy], [s, "not a results directory"]),
        (["stats", tmp_path / "nothing"], ["nothing"]),
        (["merge", tmp_path / "nothing"], ["nothing"]),
        (["profile", tmp_path / "nothing", "--block", "0"], ["--block"]),
        (["params", bool_toml], ["bool.toml", "fast"]),
        (["process", s, "--out", out, "--bogus"], ["--bogus"]),
        (["data", "nope"], ["nope"]),
    ]


def test_each_user_error_is_one_line_with_status_2(tmp_path, sample_copy, capsys):
    for args, fragments in _user_errors(tmp_path, sample_copy):
        try:
            rc = main([str(a) for a in args])
        except SystemExit as exc:  # argparse's usage errors
            rc = exc.code
        cap = capsys.readouterr()
        assert rc == 2, (args, cap.err)
        line = _one_error_line(cap.err)
        assert "Traceback" not in cap.err and "overwrite=True" not in line
        for fragment in fragments:
            assert fragment in line, (args, line)
    # --debug shows the traceback of the same error
    with pytest.raises(FileNotFoundError):
        main(["process", "missing.h5", "--out", str(tmp_path / "o"), "--debug"])


def test_version_broken_pipe_and_stats(tmp_path, sample_copy):
    done = _sxlab("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"sxlab {sx.__version__}"
    out = tmp_path / "out"
    assert _sxlab("process", sample_copy, "--out", out, "-j", "1",
                  "--no-progress").returncode == 0
    # a reader that stops reading at once (`sxlab stats --frames | head`)
    proc = subprocess.Popen([sys.executable, "-m", "sxlab", "stats", "--frames", str(out)],
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    with proc.stderr:
        err = proc.stderr.read()
    assert proc.wait(timeout=60) == 0 and err == b""
    done = _sxlab("stats", out)
    assert float(re.search(r"^wall_s\s+([\d.]+)$", done.stdout, re.M).group(1)) > 0
