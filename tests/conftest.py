import os

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
