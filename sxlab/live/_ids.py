"""Redis stream entry ids and values as Python values (the broker and the ingest share them)."""

from __future__ import annotations


def entry_ms(entry_id) -> int:
    """Milliseconds part of a stream entry id (``b"1712345678901-0"`` -> ``1712345678901``)."""
    if isinstance(entry_id, bytes):
        entry_id = entry_id.decode()
    return int(str(entry_id).split("-", 1)[0])


def as_text(value) -> str:
    """A Redis value (bytes or not) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)
