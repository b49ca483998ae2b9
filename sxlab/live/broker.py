"""The frame broker: Redis Streams with consumer groups (layout in :mod:`sxlab.live`).

:class:`Broker` connects to a Redis/Valkey server (or starts an embedded one) and knows
the key layout; :class:`ConsumerGroup` is the read / claim / acknowledge helper every
consumer (processing workers, a file writer, a viewer) uses; :func:`stream_key` names
streams from beamtime, source and run.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from sxlab import tables

from ._ids import as_text, entry_ms

__all__ = [
    "Broker",
    "ConsumerGroup",
    "Deferred",
    "Entry",
    "frame_id",
    "id_frame",
    "stream_key",
]

PREFIX = "sx"
HEADER_ID = "0-1"

def _safe(part: str, what: str) -> str:
    part = str(part)
    if not part or ":" in part or any(c.isspace() for c in part):
        raise ValueError(f"{what} {part!r} must be non-empty without ':' or spaces")
    return part


def stream_key(beamtime: str, source: str, run: str, *, prefix: str = PREFIX) -> str:
    """Key of a run's frame stream: ``<prefix>:<beamtime>:<source>:<run>``.

    Derived streams use the source name with a suffix (ASAP::O convention):
    ``sx:bt1:eiger_hits:run12``.

    Examples
    --------
    >>> stream_key("bt2026", "eiger", "run0012")
    'sx:bt2026:eiger:run0012'
    """
    return ":".join((_safe(prefix, "prefix"), _safe(beamtime, "beamtime"),
                     _safe(source, "source"), _safe(run, "run")))


def split_key(key: str) -> tuple[str, str, str, str]:
    """``(prefix, beamtime, source, run)`` of a stream key."""
    parts = key.split(":")
    if len(parts) != 4:
        raise ValueError(f"{key!r} is not a stream key <prefix>:<beamtime>:<source>:<run>")
    return tuple(parts)


def derived_key(key: str, kind: str) -> str:
    """Key of the derived stream ``kind`` (``results``, ``hits`` ...) of a frame stream."""
    prefix, bt, source, run = split_key(key)
    return stream_key(bt, f"{source}_{_safe(kind, 'kind')}", run, prefix=prefix)


def frame_id(frame: int) -> str:
    """Stream entry id of frame ``frame`` (``<frame + 1>-0``; the header is ``0-1``)."""
    return f"{int(frame) + 1}-0"


def id_frame(entry_id) -> int:
    """Frame number of an image entry id (inverse of :func:`frame_id`)."""
    if isinstance(entry_id, bytes):
        entry_id = entry_id.decode()
    return int(str(entry_id).split("-", 1)[0]) - 1


@dataclass
class Entry:
    """One stream entry handed to a consumer.

    Attributes
    ----------
    id : str
    fields : dict of bytes -> bytes, or None
        None when the entry was trimmed from the cache after it was delivered (a
        reclaimed entry whose data is gone).
    """

    id: str
    fields: dict | None

    @property
    def type(self) -> str:
        if self.fields is None:
            return "deleted"
        return as_text(self.fields.get(b"type", b"image"))

    @property
    def frame(self) -> int:
        if self.fields is not None and b"frame" in self.fields:
            return int(self.fields[b"frame"])
        return id_frame(self.id)

    def get(self, name: str, default=None):
        if self.fields is None:
            return default
        v = self.fields.get(name.encode())
        return default if v is None else v

    def text(self, name: str, default: str = "") -> str:
        v = self.get(name)
        return default if v is None else as_text(v)

    def number(self, name: str, default: float = 0.0) -> float:
        v = self.get(name)
        return default if v is None else float(v)


class ConsumerGroup:
    """One consumer in a Redis Streams consumer group, with reclaiming of dead consumers' work.

    Parameters
    ----------
    client : redis.Redis
    stream : str
        Stream key.
    group : str
        Group name. Every group sees every entry once; inside a group each entry goes to
        one consumer.
    consumer : str, optional
        Consumer name (default: ``<host>-<pid>``). A consumer that restarts with its old
        name first gets back what it had been handed and not acknowledged.
    claim_idle_s : float
        Entries pending (delivered, not acknowledged) for longer than this are taken over
        from their consumer with ``XAUTOCLAIM``: that consumer is presumed dead.
    start : str
        Where a new group starts: ``"0"`` (the whole cached stream) or ``"$"`` (only new
        entries, for viewers).

    Examples
    --------
    >>> g = ConsumerGroup(broker.client, key, "process")  # doctest: +SKIP
    >>> for entry in g.read(count=8, block_s=1.0):  # doctest: +SKIP
    ...     handle(entry)
    ...     g.ack([entry.id])
    """

    def __init__(self, client, stream: str, group: str, consumer: str | None = None, *,
                 claim_idle_s: float = 30.0, start: str = "0"):
        self.client = client
        self.stream = stream
        self.group = _safe(group, "group")
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.claim_idle_ms = max(1, int(claim_idle_s * 1000))
        self._own_checked = False
        self._claim_cursor = "0-0"
        #: Where the last :meth:`read` got its entries: "own", "claimed" or "new".
        self.last_source = "new"
        self.create(start)

    def create(self, start: str = "0") -> None:
        """Create the group (and an empty stream) unless it exists."""
        import redis

        try:
            self.client.xgroup_create(self.stream, self.group, id=start, mkstream=True)
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    @staticmethod
    def _entries(raw) -> list[Entry]:
        out = []
        for item in raw or []:
            eid, fields = item[0], item[1] if len(item) > 1 else None
            if eid is None:
                continue
            out.append(Entry(as_text(eid), fields if fields else None))
        return out

    def claim(self, count: int = 16) -> list[Entry]:
        """Take over entries idle longer than ``claim_idle_s`` from any consumer.

        Entries trimmed from the stream since delivery come back with ``fields=None``.
        """
        cmd = ["XAUTOCLAIM", self.stream, self.group, self.consumer, self.claim_idle_ms,
               self._claim_cursor, "COUNT", count]
        resp = self.client.execute_command(*cmd)
        self._claim_cursor = as_text(resp[0])
        entries = []
        for item in resp[1] or []:
            if item is None:
                continue
            eid, fields = item[0], item[1]
            entries.append(Entry(as_text(eid), _pairs(fields)))
        # Redis >= 7 lists entries deleted from the stream separately (and drops them from
        # the pending list); report them as deleted so that their frames are accounted.
        if len(resp) > 2:
            entries += [Entry(as_text(eid), None) for eid in resp[2] or []]
        return entries

    def read(self, count: int = 1, block_s: float | None = 1.0) -> list[Entry]:
        """Next entries for this consumer: its own unacknowledged ones first (after a
        restart), then entries reclaimed from dead consumers, then new ones (waiting up to
        ``block_s`` seconds; None: do not wait)."""
        if not self._own_checked:
            resp = self.client.xreadgroup(self.group, self.consumer, {self.stream: "0"},
                                          count=count)
            own = self._entries(resp[0][1]) if resp else []
            if own:
                self.last_source = "own"
                return own
            self._own_checked = True
        claimed = self.claim(count)
        if claimed:
            self.last_source = "claimed"
            return claimed
        self.last_source = "new"
        block = None if block_s is None else max(1, int(block_s * 1000))
        resp = self.client.xreadgroup(self.group, self.consumer, {self.stream: ">"},
                                      count=count, block=block)
        return self._entries(resp[0][1]) if resp else []

    def ack(self, ids, pipeline=None) -> None:
        """Acknowledge entries (inside ``pipeline`` when given, to make it atomic with
        other commands)."""
        ids = list(ids)
        if ids:
            (pipeline or self.client).xack(self.stream, self.group, *ids)

    def ack_then(self, pipeline, ids, deferred: dict | None = None) -> None:
        """Acknowledge ``ids`` and run each entry's deferred commands only if this
        acknowledgement was the first.

        An entry reclaimed from a consumer that was only slow (not dead) is processed
        twice; whichever of the two acknowledges first publishes its derived entries, the
        other's are dropped, so a derived stream carries every frame once. Runs as one
        server-side script, queued in ``pipeline`` (atomic with the worker's other
        commands).

        Parameters
        ----------
        pipeline : redis pipeline
        ids : iterable of str
            Entry ids to acknowledge.
        deferred : dict of str to Deferred, optional
            Commands to run for an entry when its acknowledgement counts.
        """
        deferred = deferred or {}
        args = [self.group]
        for eid in ids:
            commands = deferred[eid].commands if eid in deferred else []
            args += [eid, len(commands)]
            for command in commands:
                args += [len(command), *command]
        if len(args) > 1:
            pipeline.eval(_ACK_THEN, 1, self.stream, *args)

    def touch(self, ids) -> None:
        """Reset the idle time of entries still being worked on (so nobody reclaims them)."""
        ids = list(ids)
        if ids:
            self.client.xclaim(self.stream, self.group, self.consumer, 0, ids, justid=True)

    def info(self) -> dict:
        """``pending``, ``last_delivered`` (entry id), ``consumers`` of this group."""
        for g in self.client.xinfo_groups(self.stream):
            if as_text(g["name"]) == self.group:
                return {"pending": int(g["pending"]),
                        "last_delivered": as_text(g["last-delivered-id"]),
                        "consumers": int(g["consumers"])}
        return {"pending": 0, "last_delivered": "0-0", "consumers": 0}

    def leave(self) -> None:
        """Remove this consumer from the group if it holds nothing unacknowledged."""
        pending = self.client.xpending_range(self.stream, self.group, "-", "+", 1,
                                             consumername=self.consumer)
        if not pending:
            self.client.xgroup_delconsumer(self.stream, self.group, self.consumer)


#: Server-side script of :meth:`ConsumerGroup.ack_then`. KEYS[1]: the stream; ARGV: the
#: group, then per entry its id, its number of commands and each command as its argument
#: count followed by its arguments.
_ACK_THEN = """
local i = 2
while i <= #ARGV do
  local first = redis.call('XACK', KEYS[1], ARGV[1], ARGV[i]) == 1
  local n = tonumber(ARGV[i + 1])
  i = i + 2
  for _ = 1, n do
    local nargs = tonumber(ARGV[i])
    if first then
      redis.call(unpack(ARGV, i + 1, i + nargs))
    end
    i = i + 1 + nargs
  end
end
return 1
"""


class Deferred:
    """Redis commands recorded for one entry, run by :meth:`ConsumerGroup.ack_then` only
    when that entry's acknowledgement is the first (the ``xadd`` and ``hincrby`` of a
    redis-py pipeline, recorded instead of sent).

    Examples
    --------
    >>> d = Deferred()
    >>> d.xadd("results", {"frame": 3}, maxlen=100, approximate=True)
    >>> d.commands
    [['XADD', 'results', 'MAXLEN', '~', 100, '*', 'frame', 3]]
    """

    def __init__(self):
        self.commands: list[list] = []

    def xadd(self, key, fields: dict, maxlen: int | None = None, approximate: bool = True):
        command = ["XADD", key]
        if maxlen is not None:
            command += ["MAXLEN", "~" if approximate else "=", maxlen]
        command.append("*")
        for name, value in fields.items():
            command += [name, value]
        self.commands.append(command)

    def hincrby(self, key, field, amount: int = 1):
        self.commands.append(["HINCRBY", key, field, amount])


def _pairs(fields) -> dict | None:
    if fields is None:
        return None
    if isinstance(fields, dict):
        return fields or None
    it = iter(fields)
    return dict(zip(it, it, strict=False)) or None


class Broker:
    """Connection to the frame broker and its key layout.

    Parameters
    ----------
    url : str, optional
        ``redis://[:password@]host:port/db`` or ``rediss://`` (TLS) of a Redis/Valkey
        server >= 6.2. Without one an embedded loopback server is started
        (:class:`~sxlab.live.server.EmbeddedRedis`) and stopped by :meth:`close`.
    beamtime : str
        Beamtime id, first level of the key hierarchy.
    prefix : str
        First key component (default ``sx``).
    **redis_kwargs
        Passed to :meth:`redis.Redis.from_url` (``password``, ``ssl_ca_certs``,
        ``ssl_certfile``, ``socket_timeout`` ...).

    Examples
    --------
    >>> with Broker() as broker:  # doctest: +SKIP
    ...     key = broker.key("run0012")
    ...     broker.status()
    """

    def __init__(self, url: str | None = None, *, beamtime: str = "local",
                 source: str = "eiger", prefix: str = PREFIX, **redis_kwargs):
        import redis

        self.server = None
        if url is None:
            from .server import EmbeddedRedis

            self.server = EmbeddedRedis().start()
            url = self.server.url
        self.url = url
        self.beamtime = _safe(beamtime, "beamtime")
        self.source = _safe(source, "source")
        self.prefix = _safe(prefix, "prefix")
        self.client = redis.Redis.from_url(url, **redis_kwargs)
        self.client.ping()

    # ------------------------------------------------------------------- naming
    def key(self, run: str, *, source: str | None = None, beamtime: str | None = None) -> str:
        """Stream key of ``run`` (see :func:`stream_key`)."""
        return stream_key(beamtime or self.beamtime, source or self.source, run,
                          prefix=self.prefix)

    def resolve(self, run_or_key: str) -> str:
        """A stream key from a key or a run name (latest run of that name)."""
        if run_or_key.count(":") == 3:
            return run_or_key
        for key in reversed(self.run_keys()):
            if split_key(key)[3] == run_or_key:
                return key
        return self.key(run_or_key)

    def _runs_key(self) -> str:
        return f"{self.prefix}:{self.beamtime}:runs"

    def register_run(self, key: str, series: int | None = None) -> None:
        """Record a run in the beamtime's run list (and its series id -> key)."""
        self.client.zadd(self._runs_key(), {key: time.time()}, nx=True)
        if series is not None:
            _, bt, source, _ = split_key(key)
            self.client.set(f"{self.prefix}:{bt}:{source}:series:{series}", key)

    def key_for_series(self, series: int, source: str | None = None) -> str | None:
        v = self.client.get(f"{self.prefix}:{self.beamtime}:{source or self.source}:"
                            f"series:{series}")
        return None if v is None else as_text(v)

    def wait_run(self, *, since: float = 0.0, run: str | None = None,
                 timeout_s: float | None = None) -> str | None:
        """Key of the first run registered at or after ``since`` (epoch seconds), named
        ``run`` if given; waits up to ``timeout_s`` (None: forever), then None."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            for k in self.client.zrangebyscore(self._runs_key(), since, "+inf"):
                key = as_text(k)
                if run is None or split_key(key)[3] == run:
                    return key
            if deadline is not None and time.monotonic() >= deadline:
                return None
            time.sleep(0.05)

    def run_keys(self) -> list[str]:
        """Stream keys of the beamtime's runs, oldest first."""
        return [as_text(k) for k in self.client.zrange(self._runs_key(), 0, -1)]

    # ------------------------------------------------------------ run metadata
    def info(self, key: str) -> dict:
        """The run's info hash (state, counters, header) as str -> str."""
        return {as_text(k): as_text(v) for k, v in self.client.hgetall(f"{key}:info").items()}

    def header(self, key: str) -> dict:
        """The run header: ``run``, ``series``, ``config`` (dict), ``appendix`` (dict),
        ``pixel_mask`` (ndarray or None), ``shape``."""
        from sxlab.io.compression import decompress

        raw = self.client.hgetall(f"{key}:header")
        if not raw:
            raise KeyError(f"no run header for {key} (was the series header ingested?)")
        h = {as_text(k): v for k, v in raw.items()}
        shape = tuple(json.loads(h["shape"])) if h.get("shape") else None
        mask = None
        if h.get("pixel_mask"):
            mask = decompress(h["pixel_mask"], "bslz4", shape, np.uint32)
        return {"run": as_text(h.get("run", b"")), "series": int(h.get("series", -1)),
                "config": json.loads(h.get("config", b"{}")),
                "appendix": json.loads(h.get("appendix", b"{}")),
                "shape": shape, "pixel_mask": mask, "created": float(h.get("created", 0))}

    def wait_header(self, key: str, timeout_s: float | None = None) -> dict:
        """:meth:`header`, waiting until the ingest has written it."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            try:
                return self.header(key)
            except KeyError:
                if deadline is not None and time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def groups(self, key: str) -> list[dict]:
        try:
            return self.client.xinfo_groups(key)
        except Exception:  # noqa: BLE001 - no such stream
            return []

    def finished(self, key: str, group: str) -> bool:
        """True when the run has ended and ``group`` has acknowledged every entry."""
        info = self.info(key)
        if info.get("state") != "ended":
            return False
        end_ms = entry_ms(info.get("end_id", "0-0"))
        for g in self.groups(key):
            if as_text(g["name"]) == group:
                return (int(g["pending"]) == 0
                        and entry_ms(g["last-delivered-id"]) >= end_ms)
        return False

    # ------------------------------------------------------------- publishing
    def publish(self, key: str, fields: dict, *, maxlen: int | None = None, pipeline=None):
        """Append an entry to a (derived) stream, keeping at most ``maxlen`` entries."""
        target = pipeline or self.client
        return target.xadd(key, fields, maxlen=maxlen, approximate=maxlen is not None)

    # ----------------------------------------------------------------- status
    @tables.documented
    def status(self, run: str | None = None) -> pd.DataFrame:
        """Per run and consumer group: frames in, cached, delivered, acknowledged,
        pending, lag, trimmed before being read, and the group's frames/s.

        Returns
        -------
        DataFrame
            One row per run and group (:data:`sxlab.tables.BROKER_STATUS`):

            [columns: broker_status]
        """
        keys = [self.resolve(run)] if run else self.run_keys()
        rows = []
        for key in keys:
            info = self.info(key)
            frames_in = int(info.get("frames_in", 0))
            last_ms = entry_ms(info.get("last_id", "0-0"))
            cached = int(self.client.xlen(key)) if self.client.exists(key) else 0
            base = {"stream": key, "run": split_key(key)[3],
                    "state": info.get("state", "unknown"), "frames_in": frames_in,
                    "cached": cached}
            groups = self.groups(key)
            if not groups:
                rows.append({**base, "group": "", "consumers": 0, "delivered": 0,
                             "acked": 0, "pending": 0, "lag": frames_in,
                             "trimmed": int(info.get("trimmed:", 0)),
                             "rate_hz": np.nan})
            for g in groups:
                name = as_text(g["name"])
                delivered = min(entry_ms(g["last-delivered-id"]), last_ms)
                pending = int(g["pending"])
                now = time.time()
                rates = [float(v) for k, v in info.items()
                         if k.startswith(f"rate:{name}:")
                         and now - float(info.get("seen:" + k[5:], 0)) < 10.0]
                rows.append({**base, "group": name, "consumers": int(g["consumers"]),
                             "delivered": delivered, "acked": max(delivered - pending, 0),
                             "pending": pending, "lag": max(last_ms - delivered, 0),
                             "trimmed": int(info.get(f"trimmed:{name}", 0))
                             + int(info.get("trimmed:", 0)),
                             "rate_hz": float(sum(rates)) if rates else np.nan})
        return tables.BROKER_STATUS.make(pd.DataFrame(rows, columns=list(
            tables.BROKER_STATUS.names)))

    # -------------------------------------------------------------- lifecycle
    def close(self) -> None:
        """Close the connection (and stop an embedded server)."""
        self.client.close()
        if self.server is not None:
            self.server.stop()
            self.server = None

    def __enter__(self) -> Broker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        where = "embedded " if self.server is not None else ""
        return f"<Broker {where}{self.url} beamtime={self.beamtime!r}>"
