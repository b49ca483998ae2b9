"""A throwaway PostgreSQL cluster for tests: initdb + pg_ctl on loopback, a free port.

Debian's ``postgresql`` package provides the binaries (``.ci/services.d/postgresql.sh``
installs it). PostgreSQL refuses to run as root, so as root the cluster belongs to the
``postgres`` user (or ``nobody``); its folder is a private temporary directory.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


def find_bin(name: str) -> str | None:
    """``initdb`` / ``pg_ctl`` from PATH or Debian's versioned folders (newest first)."""
    for path in sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True):
        return path
    return shutil.which(name)


def available() -> bool:
    return find_bin("initdb") is not None and find_bin("pg_ctl") is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """Start with :meth:`start`, connect with :attr:`url`, end with :meth:`stop`."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="sxlab-pg-"))
        self.port = _free_port()
        self.user = None
        if os.geteuid() == 0:
            for candidate in ("postgres", "nobody"):
                try:
                    self.user = pwd.getpwnam(candidate)
                    break
                except KeyError:
                    continue
            if self.user is None:
                raise RuntimeError("running as root and no 'postgres' or 'nobody' user")
            os.chown(self.dir, self.user.pw_uid, self.user.pw_gid)
        self.data = self.dir / "data"
        self.url = f"postgresql://sxlab@127.0.0.1:{self.port}/sxlab"

    def _run(self, argv, **kwargs):
        kwargs.setdefault("check", True)
        kwargs.setdefault("capture_output", True)
        if self.user is not None:
            kwargs["user"] = self.user.pw_uid
            kwargs["group"] = self.user.pw_gid
            kwargs["extra_groups"] = []
        return subprocess.run(argv, cwd=self.dir, **kwargs)

    def start(self) -> PostgresServer:
        self._run([find_bin("initdb"), "-D", str(self.data), "-U", "sxlab", "--auth=trust",
                   "-E", "UTF8", "--no-sync"])
        opts = (f"-c listen_addresses=127.0.0.1 -c port={self.port} "
                f"-c unix_socket_directories={self.dir} -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off")
        self._run([find_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "log"),
                   "-o", opts, "-w", "-t", "60", "start"])
        createdb = Path(find_bin("initdb")).with_name("createdb")
        self._run([str(createdb), "-h", "127.0.0.1", "-p", str(self.port), "-U", "sxlab",
                   "sxlab"])
        return self

    def stop(self) -> None:
        try:
            self._run([find_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w",
                       "stop"], check=False)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def createdb(self, name: str) -> str:
        """A new empty database on the server; returns its URL."""
        createdb = Path(find_bin("initdb")).with_name("createdb")
        self._run([str(createdb), "-h", "127.0.0.1", "-p", str(self.port), "-U", "sxlab", name])
        return f"postgresql://sxlab@127.0.0.1:{self.port}/{name}"
