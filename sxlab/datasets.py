"""Data set registry: generated samples, bundled files and cached downloads.

The registry is the TOML file ``datasets/registry.toml`` of the source tree (installed
copies look in ``<prefix>/share/sxlab/datasets``; ``SXLAB_REGISTRY`` overrides it). Three
kinds of entries exist:

``generated``
    Made by :mod:`sxlab.simulate` from the recipe in the registry (geometry, cell, space
    group, number of frames, seed, simulation parameters). Generated once into the cache
    directory; the recipe's hash is stored with the files and a changed recipe regenerates.
``bundled``
    Committed to the repository (small samples for tests and tutorials).
``remote``
    Downloaded with :mod:`pooch` into the cache and verified by SHA-256.

The cache directory is ``SXLAB_CACHE`` if set, else the user cache directory
(``~/.cache/sxlab`` on Linux).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from . import tables

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

__all__ = [
    "DatasetInfo",
    "cache_dir",
    "fetch",
    "generate",
    "info",
    "list_datasets",
    "load",
    "path",
    "simulator",
    "truth",
]

_COMPLETE = "sxlab-complete.json"


def _registry_file() -> Path:
    env = os.environ.get("SXLAB_REGISTRY")
    if env:
        return Path(env)
    candidates = [
        Path(__file__).resolve().parents[1] / "datasets" / "registry.toml",
        Path(sys.prefix) / "share" / "sxlab" / "datasets" / "registry.toml",
    ]
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(
        "sxlab dataset registry not found; looked in "
        + ", ".join(str(c) for c in candidates)
        + " (set SXLAB_REGISTRY to its path)"
    )


def cache_dir() -> Path:
    """Directory where generated and downloaded data sets are kept."""
    env = os.environ.get("SXLAB_CACHE")
    if env:
        return Path(env)
    import pooch

    return Path(pooch.os_cache("sxlab"))


@dataclass(frozen=True)
class DatasetInfo:
    """One registry entry.

    Attributes
    ----------
    name : str
    kind : {"generated", "bundled", "remote"}
    description : str
    spec : dict
        The entry's remaining keys (recipe, path or URL).
    registry : pathlib.Path
        The registry file the entry comes from.
    """

    name: str
    kind: str
    description: str
    spec: dict = field(repr=False)
    registry: Path = field(repr=False)

    @property
    def recipe_hash(self) -> str:
        """Hash of the recipe and, for generated sets, of the simulator's code.

        A change to either makes :func:`load` regenerate the cached files, so cached data
        always equal what the current simulator makes from the recipe.
        """
        blob = json.dumps({"name": self.name, **self.spec}, sort_keys=True).encode()
        h = hashlib.sha256(blob)
        if self.kind == "generated":
            h.update(_simulator_code_digest().encode())
        return h.hexdigest()[:16]


def _simulator_code_digest() -> str:
    from . import simulate

    return simulate.code_digest()


def _load_registry(registry: Path | None = None) -> dict[str, DatasetInfo]:
    reg = Path(registry) if registry is not None else _registry_file()
    with open(reg, "rb") as fh:
        try:
            raw = tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{reg}: invalid TOML: {exc}") from exc
    out = {}
    for name, entry in raw.items():
        entry = dict(entry)
        kind = entry.pop("kind", None)
        if kind not in ("generated", "bundled", "remote"):
            raise ValueError(
                f"{reg}: data set {name!r} has kind {kind!r}; expected generated, bundled "
                "or remote"
            )
        desc = entry.pop("description", "")
        out[name] = DatasetInfo(name, kind, desc, entry, reg)
    return out


@tables.documented
def list_datasets(registry: Path | None = None):
    """Table of the registered data sets.

    Returns
    -------
    pandas.DataFrame
        One row per data set (:data:`sxlab.tables.DATASETS`):

        [columns: datasets]

    Examples
    --------
    >>> import sxlab as sx
    >>> "lysozyme-demo" in set(sx.datasets.list_datasets().name)
    True
    """
    entries = list(_load_registry(registry).values())
    return tables.DATASETS.make({
        "name": [ds.name for ds in entries], "kind": [ds.kind for ds in entries],
        "description": [ds.description for ds in entries],
        "cached": [_is_present(ds) for ds in entries],
    })


def info(name: str, registry: Path | None = None) -> DatasetInfo:
    """The registry entry called ``name``."""
    reg = _load_registry(registry)
    try:
        return reg[name]
    except KeyError:
        raise KeyError(f"unknown data set {name!r}; registered: {sorted(reg)}") from None


def _generated_dir(ds: DatasetInfo) -> Path:
    return cache_dir() / ds.name


def _master_name(name: str) -> str:
    return f"{name}_master.h5"


def _is_present(ds: DatasetInfo) -> bool:
    if ds.kind == "bundled":
        return (ds.registry.parent / ds.spec["path"]).is_file()
    if ds.kind == "generated":
        marker = _generated_dir(ds) / _COMPLETE
        if not marker.is_file():
            return False
        try:
            return json.loads(marker.read_text()).get("recipe_hash") == ds.recipe_hash
        except (OSError, ValueError):
            return False
    return (cache_dir() / ds.name).is_dir()


def path(name: str, *, progress: bool = True, registry: Path | None = None,
         files=None) -> Path:
    """Local path of a data set's master file (or first file), making it available first.

    Generated data sets are simulated once into the cache; remote ones are downloaded.
    """
    ds = info(name, registry)
    if ds.kind == "bundled":
        p = ds.registry.parent / ds.spec["path"]
        if not p.is_file():
            raise FileNotFoundError(f"bundled data set {name!r}: {p} is missing")
        return p
    if ds.kind == "generated":
        return _ensure_generated(ds, progress=progress)
    paths = fetch(name, files=files, registry=registry, progress=progress)
    return paths[0]


def load(name: str, *, progress: bool = True, registry: Path | None = None, files=None):
    """Open a registered data set as a :class:`~sxlab.io.Run`, generating or fetching it once.

    Parameters
    ----------
    name : str
        Registry name, e.g. ``"lysozyme-demo"``.
    progress : bool
        Show a progress bar while generating or downloading.
    registry : path, optional
        Use another registry file.
    files : list of str, optional
        For remote archives holding many files: which files to fetch.

    Returns
    -------
    Run
        Lazy run; ``run.geometry`` is set for sxlab-written data. The simulator's ground
        truth of generated and bundled sets comes from :func:`truth`.

    Examples
    --------
    >>> import sxlab as sx
    >>> run = sx.datasets.load("lysozyme-sample")
    >>> len(run)
    8
    """
    from .io import open_run

    ds = info(name, registry)
    if ds.kind == "remote":
        return open_run(fetch(name, files=files, registry=registry, progress=progress))
    return open_run(path(name, progress=progress, registry=registry))


def truth(name: str, *, registry: Path | None = None):
    """Ground truth (:class:`sxlab.simulate.Truth`) of a generated or bundled data set."""
    from .simulate import Truth

    return Truth.load(path(name, registry=registry))


def _ensure_generated(ds: DatasetInfo, *, progress: bool) -> Path:
    target = _generated_dir(ds)
    master = target / _master_name(ds.name)
    if _is_present(ds) and master.is_file():
        return master
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{ds.name}-", dir=target.parent))
    try:
        generate(ds, tmp / _master_name(ds.name), progress=progress)
        (tmp / _COMPLETE).write_text(
            json.dumps({"recipe_hash": ds.recipe_hash, "name": ds.name}, indent=1)
        )
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
        try:
            tmp.rename(target)
        except OSError:
            # Another process finished the same recipe first: use its files.
            if not (_is_present(ds) and master.is_file()):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return master


def simulator(name: DatasetInfo | str, *, registry: Path | None = None):
    """The :class:`~sxlab.simulate.Simulator` behind a generated (or bundled) data set.

    Useful to regenerate any frame alone, or to get its noise-free expected image.

    Examples
    --------
    >>> import sxlab as sx
    >>> sim = sx.datasets.simulator("lysozyme-demo")
    >>> data, truth = sim.frame(0)  # identical to frame 0 of the generated data set
    """
    from . import simulate
    from .cell import UnitCell
    from .geometry import builtin_geometry

    ds = info(name, registry) if isinstance(name, str) else name
    if ds.kind == "bundled":
        ds = info(ds.spec["recipe"], ds.registry)
    if ds.kind != "generated" or "cell" not in ds.spec:
        raise ValueError(f"data set {ds.name!r} is not made by the still simulator")
    spec = ds.spec
    det = builtin_geometry(spec["geometry"], **spec.get("geometry_args", {}))
    cell = UnitCell(*spec["cell"], space_group=spec["space_group"])
    params = simulate.SimulationParams(**spec.get("params", {}))
    return simulate.Simulator(det, cell, seed=int(spec["seed"]), params=params)


def generate(ds: DatasetInfo | str, master_path, *, n_frames: int | None = None,
             progress: bool = True):
    """Run a generated data set's recipe, writing it to ``master_path``.

    Returns the simulator's :class:`~sxlab.simulate.Truth`.
    """
    from . import simulate
    from .geometry import builtin_geometry

    if isinstance(ds, str):
        ds = info(ds)
    spec = ds.spec
    if ds.kind == "bundled":
        recipe = info(spec["recipe"], ds.registry)
        return generate(recipe, master_path, n_frames=n_frames or spec.get("n_frames"),
                        progress=progress)
    if ds.kind != "generated":
        raise ValueError(f"data set {ds.name!r} is {ds.kind}, not generated")
    n = int(n_frames or spec["n_frames"])
    per_file = int(spec.get("frames_per_file", 1000))
    if "powder_d_A" in spec:
        det = builtin_geometry(spec["geometry"], **spec.get("geometry_args", {}))
        return simulate.write_powder(
            master_path, det, d_spacing_A=float(spec["powder_d_A"]), n_frames=n,
            seed=int(spec["seed"]), frames_per_file=per_file,
        )
    return simulator(ds).write(master_path, n, frames_per_file=per_file, progress=progress)


# --------------------------------------------------------------------------- remote
def _known_hashes_file(name: str) -> Path:
    return cache_dir() / name / "sha256.json"


def fetch(name: str, *, files=None, registry: Path | None = None,
          progress: bool = True) -> list[Path]:
    """Download (once) the files of a remote data set; return their local paths.

    Files listed in the registry with a ``sha256`` are verified against it. Files named
    with ``files=`` that the registry does not pin are verified against the hash recorded
    at their first download (stored in ``<cache>/<name>/sha256.json``).
    """
    import pooch

    ds = info(name, registry)
    if ds.kind != "remote":
        raise ValueError(f"data set {name!r} is {ds.kind}, not remote")
    base = ds.spec["base_url"]
    pinned = {f["name"]: f.get("sha256") for f in ds.spec.get("files", [])}
    wanted = list(files) if files is not None else list(pinned)
    if not wanted:
        raise ValueError(
            f"remote data set {name!r} pins no files; choose them with "
            f"load({name!r}, files=[...]) from {base}"
        )
    dest = cache_dir() / name
    dest.mkdir(parents=True, exist_ok=True)
    known_file = _known_hashes_file(name)
    known = json.loads(known_file.read_text()) if known_file.is_file() else {}
    out = []
    for fname in wanted:
        sha = pinned.get(fname) or known.get(fname)
        local = pooch.retrieve(
            url=base.rstrip("/") + "/" + fname,
            known_hash=f"sha256:{sha}" if sha else None,
            fname=fname,
            path=dest,
            progressbar=progress,
        )
        if not sha:
            known[fname] = pooch.file_hash(local, alg="sha256")
            known_file.write_text(json.dumps(known, indent=1, sort_keys=True))
        out.append(Path(local))
    return out
