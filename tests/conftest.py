import os
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest

SEED = 12345


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def require_service(name: str, available: bool) -> None:
    """Skip the calling test when service `name` is unavailable; fail instead when CI=true.

    Call it directly (``from conftest import require_service``) or through the fixture of
    the same name: ``def test_x(require_service): require_service("redis", ok)``.
    """
    __tracebackhide__ = True
    if available:
        return
    message = f"service {name!r} is not available"
    if in_ci():
        pytest.fail(f"{message} (CI=true: optional services are required in CI)", pytrace=False)
    pytest.skip(message)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(SEED)


@pytest.fixture(name="require_service")
def _require_service_fixture():
    return require_service


@pytest.fixture(scope="session", autouse=True)
def _sxlab_cache(tmp_path_factory):
    """Generated data sets go to a per-session directory unless SXLAB_CACHE is set."""
    if "SXLAB_CACHE" in os.environ:
        yield
        return
    os.environ["SXLAB_CACHE"] = str(tmp_path_factory.mktemp("sxlab-cache"))
    try:
        yield
    finally:
        os.environ.pop("SXLAB_CACHE", None)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    """A loopback Redis server (free port, private directory) for one test module."""
    from sxlab.live.server import EmbeddedRedis, RedisNotFoundError, find_redis_server

    try:
        find_redis_server()
        ok = True
    except RedisNotFoundError:
        ok = False
    require_service("redis", ok)
    with EmbeddedRedis(directory=tmp_path_factory.mktemp("redis")) as server:
        yield server.url


@pytest.fixture
def broker(redis_url):
    """A broker connection with a beamtime of its own (keys do not collide)."""
    from sxlab.live.broker import Broker

    b = Broker(redis_url, beamtime=f"t{uuid.uuid4().hex[:8]}")
    yield b
    b.close()


def run_sxlab(*args, log=None) -> subprocess.Popen:
    """Start ``python -m sxlab ARGS...`` (output to ``log`` or nowhere)."""
    return subprocess.Popen([sys.executable, "-m", "sxlab", *map(str, args)],
                            stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)


def wait_until(cond, timeout_s: float, what: str) -> None:
    """Poll ``cond()`` until it is true; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
