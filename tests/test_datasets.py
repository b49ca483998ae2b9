import functools
import hashlib
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest

from sxlab import datasets


@pytest.fixture
def cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("SXLAB_CACHE", str(d))
    return d


@pytest.fixture
def http_root(tmp_path):
    """A directory served over HTTP on 127.0.0.1 (random port) during the test."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _write_registry(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_registry_entries_are_complete():
    reg = datasets._load_registry()
    for name in ("lysozyme-demo", "lysozyme-4m", "lysozyme-16m", "thermolysin-agipd",
                 "c2221-mpccd", "agbeh-powder", "cxidb-21", "cxidb-43", "cxidb-81",
                 "lysozyme-sample"):
        assert name in reg, name
    for ds in reg.values():
        if ds.kind == "generated":
            assert {"geometry", "n_frames", "seed"} <= set(ds.spec), ds.name
            assert "powder_d_A" in ds.spec or {"cell", "space_group"} <= set(ds.spec)
        elif ds.kind == "remote":
            assert ds.spec["base_url"].startswith("https://")
        else:
            assert (ds.registry.parent / ds.spec["path"]).suffix == ".h5"
    table = datasets.list_datasets()
    assert list(table.columns) == ["name", "kind", "description", "cached"]
    assert len(table) == len(reg)


def test_demo_recipe():
    spec = datasets.info("lysozyme-demo").spec
    assert spec["space_group"] == "P 43 21 2"
    assert spec["cell"][:3] == [79.1, 79.1, 37.9]
    assert 150 <= spec["n_frames"] <= 300
    assert spec["params"]["hit_fraction"] == 0.5


def test_unknown_names_and_kinds(tmp_path):
    with pytest.raises(KeyError, match="no-such-set"):
        datasets.info("no-such-set")
    reg = _write_registry(tmp_path / "r.toml", '[x]\nkind = "magic"\n')
    with pytest.raises(ValueError, match="kind 'magic'"):
        datasets.info("x", registry=reg)


def test_fetch_pinned_hash(cache, http_root, tmp_path):
    root, url = http_root
    payload = np.arange(1000, dtype="<u2").tobytes()
    (root / "a.bin").write_bytes(payload)
    sha = hashlib.sha256(payload).hexdigest()
    reg = _write_registry(
        tmp_path / "r.toml",
        f'[remote-a]\nkind = "remote"\nbase_url = "{url}"\n'
        f'files = [{{ name = "a.bin", sha256 = "{sha}" }}]\n',
    )
    (p,) = datasets.fetch("remote-a", registry=reg, progress=False)
    assert p.read_bytes() == payload
    assert p.parent == cache / "remote-a"
    # A second fetch uses the cache even with the server gone.
    (root / "a.bin").unlink()
    (p2,) = datasets.fetch("remote-a", registry=reg, progress=False)
    assert p2 == p


def test_fetch_rejects_wrong_hash(cache, http_root, tmp_path):
    root, url = http_root
    (root / "a.bin").write_bytes(b"tampered")
    reg = _write_registry(
        tmp_path / "r.toml",
        f'[remote-a]\nkind = "remote"\nbase_url = "{url}"\n'
        f'files = [{{ name = "a.bin", sha256 = "{"0" * 64}" }}]\n',
    )
    with pytest.raises(ValueError, match="(?i)hash"):
        datasets.fetch("remote-a", registry=reg, progress=False)


def test_fetch_records_hash_on_first_use(cache, http_root, tmp_path):
    root, url = http_root
    (root / "run1.cxi").write_bytes(b"first version")
    reg = _write_registry(
        tmp_path / "r.toml", f'[archive]\nkind = "remote"\nbase_url = "{url}"\n'
    )
    with pytest.raises(ValueError, match="files="):
        datasets.fetch("archive", registry=reg, progress=False)
    (p,) = datasets.fetch("archive", registry=reg, files=["run1.cxi"], progress=False)
    recorded = (cache / "archive" / "sha256.json").read_text()
    assert hashlib.sha256(b"first version").hexdigest() in recorded
    # The file changes on the server and the local copy is lost: the recorded hash wins.
    p.unlink()
    (root / "run1.cxi").write_bytes(b"second version")
    with pytest.raises(ValueError, match="(?i)hash"):
        datasets.fetch("archive", registry=reg, files=["run1.cxi"], progress=False)


def test_generated_once_and_regenerated_on_recipe_change(cache, tmp_path):
    text = (
        '[tiny]\nkind = "generated"\ngeometry = "eiger1m"\n'
        'geometry_args = { clen = 0.1, wavelength_A = 1.0 }\n'
        "cell = [79.1, 79.1, 37.9, 90.0, 90.0, 90.0]\n"
        'space_group = "P 43 21 2"\nn_frames = 3\nframes_per_file = 2\nseed = 7\n'
        "params = { hit_fraction = 1.0 }\n"
    )
    reg = _write_registry(tmp_path / "r.toml", text)
    run = datasets.load("tiny", registry=reg, progress=False)
    assert len(run) == 3
    master = datasets.path("tiny", registry=reg)
    stamp = master.stat().st_mtime_ns
    again = datasets.load("tiny", registry=reg, progress=False)
    assert master.stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(run[1].values, again[1].values)
    reg = _write_registry(tmp_path / "r.toml", text.replace("seed = 7", "seed = 8"))
    changed = datasets.load("tiny", registry=reg, progress=False)
    assert not np.array_equal(run[1].values, changed[1].values)


def test_bundled_sample_is_reproduced_by_its_recipe():
    run = datasets.load("lysozyme-sample", progress=False)
    truth = datasets.truth("lysozyme-sample")
    sim = datasets.simulator("lysozyme-sample")
    assert len(run) == len(truth.frames) == 8
    assert truth.frames.hit.any() and not truth.frames.hit.all()
    for i in (0, 5):
        data, ft = sim.frame(i)
        np.testing.assert_array_equal(run.read_raw(i), data)
        assert ft.hit == bool(truth.frames.hit.iloc[i])
    assert run.geometry == sim.detector


def test_same_seed_gives_identical_files(tmp_path):
    import time

    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        datasets.generate("lysozyme-sample", tmp_path / sub / "s_master.h5", n_frames=2,
                          progress=False)
        time.sleep(1.1)  # any clock-derived content would now differ
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert "s_master.h5" in names and "s_data_000001.h5" in names
    for name in names:
        a = (tmp_path / "a" / name).read_bytes()
        b = (tmp_path / "b" / name).read_bytes()
        assert hashlib.sha256(a).digest() == hashlib.sha256(b).digest(), name


def test_cache_is_invalidated_by_simulator_code(monkeypatch):
    ds = datasets.info("lysozyme-demo")
    before = ds.recipe_hash
    monkeypatch.setattr(datasets, "_simulator_code_digest", lambda: "changed")
    assert ds.recipe_hash != before
