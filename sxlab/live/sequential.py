"""The single consumer of a group that handles a stream in order (writer, binner).

Processing workers share a group and take entries in any order; a file writer or a
binning worker must see a stream in order and may hold many entries before
acknowledging them (a data file's worth). :class:`SequentialConsumer` reads such a group:
on start it takes over whatever the group has pending (a predecessor that died, under any
consumer name), hands those entries back in order once, then new ones; it never reclaims
its own entries while it holds them. Run one per group at a time.
"""

from __future__ import annotations

from .broker import ConsumerGroup, Entry

__all__ = ["SequentialConsumer"]


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class SequentialConsumer:
    """Read a consumer group in stream order as its only consumer.

    Parameters
    ----------
    client : redis.Redis
    stream, group, consumer : str
    batch : int
        Entries per read.

    Examples
    --------
    >>> c = SequentialConsumer(broker.client, key, "write", "writer")  # doctest: +SKIP
    >>> entries = c.read(block_s=0.5)  # doctest: +SKIP
    """

    def __init__(self, client, stream: str, group: str, consumer: str, *, batch: int = 64):
        self.client = client
        self.stream = stream
        self.consumer = consumer
        self.batch = int(batch)
        self._group = ConsumerGroup(client, stream, group, consumer)
        self.group = self._group.group
        self._cursor: str | None = "0"
        self._take_over()

    def _take_over(self) -> None:
        start = "-"
        while True:
            pending = self.client.xpending_range(self.stream, self.group, min=start,
                                                 max="+", count=1000)
            if not pending:
                break
            ids = [_text(p["message_id"]) for p in pending
                   if _text(p["consumer"]) != self.consumer]
            if ids:
                self.client.xclaim(self.stream, self.group, self.consumer, 0, ids,
                                   justid=True)
            last = _text(pending[-1]["message_id"])
            start = "(" + last
            if len(pending) < 1000:
                break

    @property
    def replaying(self) -> bool:
        """True while entries held before a restart are being handed back."""
        return self._cursor is not None

    def read(self, block_s: float | None = 0.5) -> list[Entry]:
        """Next entries: those held before a restart first, then new ones (waiting up to
        ``block_s`` seconds; None: do not wait)."""
        if self._cursor is not None:
            resp = self.client.xreadgroup(self.group, self.consumer,
                                          {self.stream: self._cursor}, count=self.batch)
            entries = _entries(resp)
            if entries:
                self._cursor = entries[-1].id
                return entries
            self._cursor = None
        block = None if block_s is None else max(1, int(block_s * 1000))
        resp = self.client.xreadgroup(self.group, self.consumer, {self.stream: ">"},
                                      count=self.batch, block=block)
        return _entries(resp)

    def ack(self, ids, pipeline=None) -> None:
        """Acknowledge entries (inside ``pipeline`` when given)."""
        self._group.ack(ids, pipeline)


def _entries(resp) -> list[Entry]:
    out = []
    for _stream, items in resp or []:
        for item in items:
            fields = item[1] if len(item) > 1 else None
            out.append(Entry(_text(item[0]), fields or None))
    return out
