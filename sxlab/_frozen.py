"""Shared methods of the frozen parameter dataclasses.

:class:`FrozenParams` is a mixin for ``@dataclass(frozen=True)`` parameter classes
(:class:`~sxlab.peaks.PeakFinderParams`, :class:`~sxlab.integration.IntegrationParams`,
:class:`~sxlab.indexing.IndexParams`, :class:`~sxlab.simulate.SimulationParams`): copies with
changes, plain dictionaries in and out, and a stable digest. Validation stays in each
class's ``__post_init__``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

__all__ = ["FrozenParams"]


class FrozenParams:
    """Mixin giving a frozen dataclass ``replace``, ``to_dict``, ``from_dict`` and ``digest``.

    Fields whose default is a tuple are written as lists by :meth:`to_dict` and read back
    as tuples by :meth:`from_dict`.
    """

    __slots__ = ()

    def replace(self, **changes):
        """Copy with fields changed; unknown names raise ``TypeError``."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """Plain dict of all fields (JSON-serialisable; tuples as lists, ``inf`` a float)."""
        d = dataclasses.asdict(self)
        for name, value in d.items():
            if isinstance(value, tuple):
                d[name] = list(value)
        return d

    @classmethod
    def from_dict(cls, d: dict):
        """Inverse of :meth:`to_dict`; unknown keys raise ``TypeError`` naming them."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(fields))
        if unknown:
            raise TypeError(f"{cls.__name__}: unknown keys {unknown}; "
                            f"known keys: {sorted(fields)}")
        kwargs = dict(d)
        for name, value in kwargs.items():
            if isinstance(value, list) and isinstance(fields[name].default, tuple):
                kwargs[name] = tuple(value)
        return cls(**kwargs)

    def digest(self) -> str:
        """SHA-256 (hex, 16 characters) of the canonical JSON of the parameters."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]
