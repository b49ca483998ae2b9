"""Shared methods of the frozen parameter dataclasses.

:class:`FrozenParams` is a mixin for ``@dataclass(frozen=True)`` parameter classes
(:class:`~sxlab.peaks.PeakFinderParams`, :class:`~sxlab.integration.IntegrationParams`,
:class:`~sxlab.indexing.IndexParams`, :class:`~sxlab.simulate.SimulationParams`): copies with
changes, plain dictionaries in and out, a stable digest, and strict field checks.

**Strict fields.** Every value is checked against the field's declared type before the
class's own ``__post_init__`` runs: a ``bool`` field takes only ``True``/``False`` (never
the string ``"false"``), an ``int`` field only integers (not ``16.0``, not ``True``), a
``float`` field any real number but not NaN (and not ±inf unless its range allows it),
``str`` fields strings, tuples the declared number of elements; ``X | None`` also takes
None. A class declares the ranges of its numeric fields in ``_LIMITS`` as interval text
(``"[0, inf)"``, ``"(0, 0.5)"``, ``"[0, 1]"``; ``inf`` inside a closed bracket allows
infinity). Ranges of fields that depend on each other stay in ``__post_init__``. Errors
are :class:`ValueError` naming the field, the value given and what was expected.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
import re
import types
import typing

__all__ = ["FrozenParams", "check_value"]

_INTERVAL = re.compile(r"\s*([\[(])\s*([-+]?(?:inf|[\d.eE+-]+))\s*,\s*"
                       r"([-+]?(?:inf|[\d.eE+-]+))\s*([\])])\s*")


def _interval(text: str):
    m = _INTERVAL.fullmatch(text)
    if m is None:
        raise ValueError(f"bad interval {text!r}")
    lo_b, lo, hi, hi_b = m.groups()
    return float(lo), lo_b == "[", float(hi), hi_b == "]"


def _describe(value) -> str:
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, (list, tuple)):
        return f"the list {list(value)!r}"
    if value is None:
        return "nothing"
    return repr(value)


def _in_range(value: float, spec: str) -> bool:
    lo, lo_closed, hi, hi_closed = _interval(spec)
    above = value >= lo if lo_closed else value > lo
    below = value <= hi if hi_closed else value < hi
    return above and below


def _check_scalar(kind, value, limit: str | None):
    """``value`` as the field's type ``kind`` (bool, int, float, str); ValueError if not."""
    if kind is bool:
        if isinstance(value, bool) or type(value).__name__ == "bool_":
            return bool(value)
        raise ValueError(f"expected true or false, got {_describe(value)}")
    if kind is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool) and \
                type(value).__name__ != "bool_":
            value = int(value)
        else:
            raise ValueError(f"expected an integer{_range_text(limit)}, got "
                             f"{_describe(value)}")
    elif kind is float:
        if isinstance(value, str) and value.strip().lower() in ("inf", "+inf", "-inf"):
            value = float(value)
        if isinstance(value, numbers.Real) and not isinstance(value, bool) and \
                type(value).__name__ != "bool_":
            value = float(value)
        else:
            raise ValueError(f"expected a number{_range_text(limit)}, got {_describe(value)}")
        if math.isnan(value):
            raise ValueError(f"expected a number{_range_text(limit)}, got NaN")
        if math.isinf(value) and (limit is None or not _in_range(value, limit)):
            raise ValueError(f"expected a finite number{_range_text(limit)}, got {value}")
    elif kind is str:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {_describe(value)}")
        return value
    else:
        return value
    if limit is not None and not _in_range(value, limit):
        raise ValueError(f"expected a value in {limit}, got {value!r}")
    return value


def _range_text(limit: str | None) -> str:
    return f" in {limit}" if limit else ""


def check_value(hint, value, limit: str | None = None):
    """Check ``value`` against a type hint (and an interval); return it normalised.

    Parameters
    ----------
    hint : type or typing construct
        ``bool``, ``int``, ``float``, ``str``, ``X | None``, ``X | Y``,
        ``tuple[float, float, float]`` or ``tuple[float, ...]``.
    value : object
    limit : str, optional
        Interval the number must lie in, e.g. ``"[0, inf)"``.

    Returns
    -------
    object
        The value as the declared type (an integer given for a float field becomes a
        float, a list for a tuple field a tuple).

    Raises
    ------
    ValueError
        The value does not fit; the message says what was expected and what was given.

    Examples
    --------
    >>> check_value(float, 3)
    3.0
    >>> check_value(bool, "false")
    Traceback (most recent call last):
    ...
    ValueError: expected true or false, got the string 'false'
    >>> check_value(int | None, -3, "[0, inf)")
    Traceback (most recent call last):
    ...
    ValueError: expected a value in [0, inf), got -3
    """
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        options = [o for o in options if o is not type(None)]
        errors = []
        for option in options:
            try:
                return check_value(option, value, limit)
            except ValueError as exc:
                errors.append(str(exc))
        if len(options) == 1:
            raise ValueError(errors[0])
        names = " or ".join(getattr(o, "__name__", str(o)) for o in options)
        raise ValueError(f"expected {names}, got {_describe(value)}")
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"expected a list, got {_describe(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            kinds = [args[0]] * len(value)
        else:
            kinds = list(args)
            if len(value) != len(kinds):
                raise ValueError(f"expected a list of {len(kinds)} values, got "
                                 f"{_describe(value)}")
        out = []
        for i, (kind, item) in enumerate(zip(kinds, value, strict=True)):
            try:
                out.append(check_value(kind, item, limit))
            except ValueError as exc:
                raise ValueError(f"item {i + 1}: {exc}") from None
        return tuple(out)
    if hint is typing.Any or not isinstance(hint, type):
        return value
    return _check_scalar(hint, value, limit)


def _hints(cls) -> dict:
    cached = cls.__dict__.get("_frozen_hints")
    if cached is None:
        cached = typing.get_type_hints(cls)
        type.__setattr__(cls, "_frozen_hints", cached)
    return cached


def _checked_post_init(own):
    def __post_init__(self):
        self._check_fields()
        if own is not None:
            own(self)

    __post_init__.__doc__ = getattr(own, "__doc__", None)
    __post_init__._checks_fields = True
    return __post_init__


class FrozenParams:
    """Mixin giving a frozen dataclass ``replace``, ``to_dict``, ``from_dict`` and ``digest``.

    Fields whose default is a tuple are written as lists by :meth:`to_dict` and read back
    as tuples by :meth:`from_dict`. Every field is checked on construction (see the module
    notes); ``_LIMITS`` maps field names to their allowed interval.
    """

    __slots__ = ()

    #: Allowed interval of numeric fields, e.g. ``{"min_snr": "[0, inf)"}``.
    _LIMITS: typing.ClassVar[dict[str, str]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("__post_init__")
        if own is None and getattr(cls, "__post_init__", None) is not None:
            return  # inherited from a checked base class
        if not getattr(own, "_checks_fields", False):
            cls.__post_init__ = _checked_post_init(own)

    def _check_fields(self) -> None:
        hints = _hints(type(self))
        limits = type(self)._LIMITS
        for f in dataclasses.fields(self):
            if not f.init:
                continue
            value = getattr(self, f.name)
            try:
                checked = check_value(hints.get(f.name, typing.Any), value,
                                      limits.get(f.name))
            except ValueError as exc:
                raise ValueError(f"{f.name}: {exc}") from None
            if checked is not value:
                object.__setattr__(self, f.name, checked)

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
