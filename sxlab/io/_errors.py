"""Base class of the errors raised for a file that cannot be read: where and what.

:class:`SourceError` formats ``"<source>, line <lineno>: <message> (in '<line>')"`` and
keeps the three facts as attributes. The readers' own errors
(:class:`~sxlab.io.crystfel_geom.GeomError`, :class:`~sxlab.io.crystfel_cell.CellFileError`,
:class:`~sxlab.io.stream.StreamError`) derive from it and keep their names.
"""

from __future__ import annotations

__all__ = ["SourceError", "decode_text"]


class SourceError(ValueError):
    """A problem at a place in a text source (file path or a name given for text input).

    The message names the source, the line number and the offending line (stripped, and
    cut to :attr:`max_line_chars` characters when that is set); the same facts are
    available as attributes. Instances pickle with their attributes: the default exception
    pickling re-creates the error from its formatted message (with no location, so it is
    not formatted twice) and then restores the attributes.

    Attributes
    ----------
    source : str or None
        File path, or the name given for text input.
    lineno : int or None
        1-based line number (None for problems of the source as a whole).
    line : str or None
        The offending line as written.
    """

    #: Longest offending line quoted in the message (None: the whole line).
    max_line_chars: int | None = None

    def __init__(self, message: str, *, source: str | None = None, lineno: int | None = None,
                 line: str | None = None):
        self.source = source
        self.lineno = lineno
        self.line = line
        text = message
        if source is not None:
            where = source if lineno is None else f"{source}, line {lineno}"
            text = f"{where}: {message}"
        if line is not None:
            text += f" (in {line.strip()[:self.max_line_chars]!r})"
        super().__init__(text)


def decode_text(data: bytes, error: type[SourceError], source: str, *,
                comment: str | None = None) -> str:
    """UTF-8 text of a file's bytes; a byte that is not UTF-8 is ``error`` naming the line.

    Bytes that are not UTF-8 inside a comment (after ``comment`` on its line) are
    replaced, as a reader that ignores comments would. ``error`` is raised with the
    source, the 1-based line number and the column of the first offending byte.
    """
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    lines = []
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        try:
            lines.append(raw.decode("utf-8"))
            continue
        except UnicodeDecodeError as exc:
            start = exc.start
        cut = raw.find(comment.encode()) if comment else -1
        if 0 <= cut < start:  # raw[:cut] decodes: the bad byte is in the comment
            lines.append(raw[:cut].decode("utf-8")
                         + raw[cut:].decode("utf-8", errors="replace"))
            continue
        raise error(f"byte 0x{raw[start]:02x} at column {start + 1} is not UTF-8 text",
                    source=source, lineno=lineno,
                    line=raw.decode("utf-8", errors="replace"))
    return "\n".join(lines)
