"""Numba kernels of the CrystFEL stream reader: one pass over the file's bytes.

:func:`scan_stream` walks the lines of a stream from a chunk boundary, follows the chunk
structure (chunk, peak list, crystal, reflection list), reads the numbers and the byte
ranges of the text values of the known chunk and crystal lines, and tokenises every peak
and reflection row into preallocated arrays. Lines it does not know are handed back to
Python by position.

Numbers are converted on a fast path: at most 15 significant digits and a decimal exponent
within ±22, where one IEEE multiplication or division of the integer mantissa by an exact
power of ten gives the correctly rounded value, the same as ``float()``; ``nan`` and
``inf`` are recognised. Other tokens mark the row (or line) for conversion in Python.
Panel names are reduced to a 64-bit FNV-1a hash (0 when a row has no name field).
"""

from __future__ import annotations

import numba as nb
import numpy as np

#: Field kinds of a table row.
FLOAT = 0
SKIP = 1
NAME = 2

#: Status codes of :func:`scan_stream`; the error position is the line concerned.
OK = 0
TRUNCATED_CHUNK = 1
UNTERMINATED_PEAKS = 2
UNTERMINATED_CRYSTAL = 3
UNTERMINATED_REFLECTIONS = 4
PEAK_FIELDS = 5
REFLECTION_FIELDS = 6
FULL = 7

#: Columns of the chunk integer array.
CI_BEGIN, CI_END, CI_SERIAL, CI_HIT, CI_TRIES, CI_NPEAKS = 0, 1, 2, 3, 4, 5
CI_FILE, CI_EVENT, CI_INDEXER = 6, 8, 10  # (start, end) byte ranges, -1 when absent
CI_HAS_ENERGY, CI_NCRYST, CI_HAS_PEAKS = 12, 13, 14
N_CI = 15
#: Columns of the chunk float array.
CF_ENERGY, CF_DIV, CF_BW, CF_CLEN, CF_RES_NM, CF_RES_A = 0, 1, 2, 3, 4, 5
N_CF = 6
#: Columns of the crystal integer array.
XI_CHUNK, XI_INDEX, XI_NREFL, XI_NSAT, XI_NIMP = 0, 1, 2, 3, 4
XI_LATTICE, XI_CENTERING, XI_AXIS = 5, 7, 9  # (start, end) byte ranges
XI_HAS_CELL, XI_HAS_BASIS, XI_HAS_REFL, XI_BEGIN = 11, 12, 13, 14
N_XI = 15
#: Columns of the crystal float array (cell in nm and deg, basis in 1/nm).
XF_CELL, XF_BASIS, XF_RADIUS, XF_LIMIT_NM, XF_LIMIT_A, XF_DX, XF_DY = 0, 6, 15, 16, 17, 18, 19
N_XF = 20
#: Columns of the row integer arrays.
#: (``RI_LINE`` is the line's offset, or ``-offset - 1`` when Python must convert a number.)
RI_OWNER, RI_LINE = 0, 1
N_RI = 2
#: Columns of the array of lines handed to Python.
OI_CHUNK, OI_START, OI_END, OI_CRYSTAL = 0, 1, 2, 3
N_OI = 4

_POW10 = np.array([10.0**k for k in range(23)])
_FNV_OFFSET = np.uint64(14695981039346656037)
_FNV_PRIME = np.uint64(1099511628211)
_MAX_DIGITS = 15

_OUTSIDE, _HEADER, _PEAKS, _CRYSTAL, _REFLECTIONS, _AFTER_REFLECTIONS = 0, 1, 2, 3, 4, 5


def _pattern(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("ascii"), dtype=np.uint8).copy()


_CHUNK_BEGIN = _pattern("----- Begin chunk -----")
_CHUNK_END = _pattern("----- End chunk -----")
_PEAKS_BEGIN = _pattern("Peaks from peak search")
_PEAKS_END = _pattern("End of peak list")
_CRYSTAL_BEGIN = _pattern("--- Begin crystal")
_CRYSTAL_END = _pattern("--- End crystal")
_REFL_BEGIN = _pattern("Reflections measured after indexing")
_REFL_END = _pattern("End of reflections")
_K_FILE = _pattern("Image filename: ")
_K_EVENT = _pattern("Event: ")
_K_SERIAL = _pattern("Image serial number: ")
_K_HIT = _pattern("hit = ")
_K_INDEXER = _pattern("indexed_by = ")
_K_TRIES = _pattern("n_indexing_tries = ")
_K_ENERGY = _pattern("photon_energy_eV = ")
_K_DIV = _pattern("beam_divergence = ")
_K_BW = _pattern("beam_bandwidth = ")
_K_CLEN = _pattern("average_camera_length = ")
_K_NPEAKS = _pattern("num_peaks = ")
_K_PEAKRES = _pattern("peak_resolution = ")
_K_CELL = _pattern("Cell parameters ")
_K_ASTAR = _pattern("astar = ")
_K_BSTAR = _pattern("bstar = ")
_K_CSTAR = _pattern("cstar = ")
_K_LATTICE = _pattern("lattice_type = ")
_K_CENTERING = _pattern("centering = ")
_K_AXIS = _pattern("unique_axis = ")
_K_RADIUS = _pattern("profile_radius = ")
_K_LIMIT = _pattern("diffraction_resolution_limit = ")
_K_NREFL = _pattern("num_reflections = ")
_K_NSAT = _pattern("num_saturated_reflections = ")
_K_NIMP = _pattern("num_implausible_reflections = ")
_K_SHIFT = _pattern("predict_refine/det_shift x = ")


# ------------------------------------------------------------------ primitives
@nb.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _is_space(c):
    return c == 32 or c == 9 or c == 13


@nb.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _starts_number(c):
    # Digits, sign, decimal point, or the first letter of nan / inf.
    return ((48 <= c <= 57) or c == 43 or c == 45 or c == 46 or c == 110 or c == 78
            or c == 105 or c == 73)


@nb.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _lower(c):
    return c + 32 if 65 <= c <= 90 else c


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _word(buf, s, e, word):
    """True when ``buf[s:e]`` equals ``word`` (lower-case ASCII), ignoring case."""
    if e - s != len(word):
        return False
    for k in range(e - s):
        if _lower(buf[np.uint64(s + k)]) != ord(word[k]):
            return False
    return True


@nb.njit(cache=True, nogil=True, error_model="numpy")
def number(buf, s, e):
    """Value of the token ``buf[s:e]`` and True, or (nan, False) when Python must decide."""
    if s >= e:
        return np.nan, False
    i = s
    neg = False
    if buf[np.uint64(i)] == 45:
        neg = True
        i += 1
    elif buf[np.uint64(i)] == 43:
        i += 1
    lead = _lower(buf[np.uint64(i)]) if i < e else 0
    if lead == 110 or lead == 105:  # n(an) or i(nf)
        if _word(buf, i, e, "nan"):
            return np.nan, True
        if _word(buf, i, e, "inf") or _word(buf, i, e, "infinity"):
            return (-np.inf if neg else np.inf), True
        return np.nan, False
    mant = 0
    digits = 0
    seen = False
    exp10 = 0
    while i < e and 48 <= buf[np.uint64(i)] <= 57:
        seen = True
        if mant > 0 or buf[np.uint64(i)] != 48:
            digits += 1
            if digits > _MAX_DIGITS:
                return np.nan, False
        mant = mant * 10 + (buf[np.uint64(i)] - 48)
        i += 1
    if i < e and buf[np.uint64(i)] == 46:
        i += 1
        while i < e and 48 <= buf[np.uint64(i)] <= 57:
            seen = True
            if mant > 0 or buf[np.uint64(i)] != 48:
                digits += 1
                if digits > _MAX_DIGITS:
                    return np.nan, False
            mant = mant * 10 + (buf[np.uint64(i)] - 48)
            exp10 -= 1
            i += 1
    if not seen:
        return np.nan, False
    if i < e and (buf[np.uint64(i)] == 101 or buf[np.uint64(i)] == 69):
        i += 1
        eneg = False
        if i < e and (buf[np.uint64(i)] == 45 or buf[np.uint64(i)] == 43):
            eneg = buf[np.uint64(i)] == 45
            i += 1
        if i >= e:
            return np.nan, False
        ev = 0
        while i < e and 48 <= buf[np.uint64(i)] <= 57:
            ev = ev * 10 + (buf[np.uint64(i)] - 48)
            i += 1
            if ev > 10000:
                return np.nan, False
        exp10 += -ev if eneg else ev
    if i != e:
        return np.nan, False
    if mant == 0:
        return (-0.0 if neg else 0.0), True
    if exp10 < -22 or exp10 > 22:
        return np.nan, False
    v = float(mant)
    if exp10 < 0:
        v = v / _POW10[-exp10]
    elif exp10 > 0:
        v = v * _POW10[exp10]
    return (-v if neg else v), True


@nb.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _token(buf, p, e):
    while p < e and _is_space(buf[np.uint64(p)]):
        p += 1
    t0 = p
    while p < e and not _is_space(buf[np.uint64(p)]):
        p += 1
    return t0, p


@nb.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _equals(buf, s, e, pat):
    if e - s != pat.size:
        return False
    for k in range(pat.size):
        if buf[np.uint64(s + k)] != pat[k]:
            return False
    return True


@nb.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _prefix(buf, s, e, pat):
    if e - s < pat.size:
        return False
    for k in range(pat.size):
        if buf[np.uint64(s + k)] != pat[k]:
            return False
    return True


@nb.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _line_end(buf, p, n):
    while p < n and buf[np.uint64(p)] != 10:
        p += 1
    return p


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _numbers(buf, p, e, out, row, col, count):
    """Parse ``count`` numbers from ``buf[p:e]`` into ``out[row, col:col + count]``."""
    for k in range(count):
        t0, p = _token(buf, p, e)
        v, ok = number(buf, t0, p)
        if not ok:
            return False
        out[row, col + k] = v
    return True


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _resolution(buf, p, e, out, row, col):
    """``<1/d> nm^-1 or <d> A`` into ``out[row, col]`` and ``out[row, col + 1]``."""
    t0, p = _token(buf, p, e)
    v, ok = number(buf, t0, p)
    if not ok:
        return False
    out[row, col] = v
    t0, p = _token(buf, p, e)
    t0, p = _token(buf, p, e)
    if p - t0 == 2 and buf[np.uint64(t0)] == 111 and buf[np.uint64(t0 + 1)] == 114:
        t0, p = _token(buf, p, e)
        v, ok = number(buf, t0, p)
        if not ok:
            return False
        out[row, col + 1] = v
    return True


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _integer(buf, p, e, out, row, col):
    t0, p = _token(buf, p, e)
    v, ok = number(buf, t0, p)
    if not ok or v != np.floor(v):
        return False
    out[row, col] = np.int64(v)
    return True


@nb.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _row(buf, ls, first, kinds, fmap, vals, ints, r):
    """Tokenise the table row at ``ls`` into column ``r`` of ``vals`` (number field ``k`` to
    row ``fmap[k]``) and row ``r`` of ``ints``.

    The line must end with a newline inside ``buf``. Returns ``(line_end, n_fields,
    name_hash)``; ``n_fields`` is -1 for a column-header line (the first line of a block
    whose first token cannot start a number). Bytes up to 32 other than the newline
    separate fields. Plain decimals are converted while they are scanned; other numbers
    go through :func:`number`.
    """
    nk = kinds.size
    nfloat = fmap.size
    ten = np.uint64(10)
    nine = np.uint64(9)
    zero = np.uint64(48)
    p = ls
    f = 0
    col = 0
    slow = False
    h = np.uint64(0)
    while True:
        c = buf[np.uint64(p)]
        while c == 32:
            p += 1
            c = buf[np.uint64(p)]
        if c == 10:
            break
        if c < 32:
            p += 1
            continue
        t0 = p
        if f == 0 and first and not _starts_number(c):
            while buf[np.uint64(p)] != 10:
                p += 1
            return p, -1, h
        k = kinds[np.uint64(f)] if f < nk else SKIP
        if k == FLOAT:
            q = p
            neg = c == 45
            if neg or c == 43:
                q += 1
            mant = np.uint64(0)
            q0 = q
            while True:
                d = np.uint64(buf[np.uint64(q)]) - zero
                if d > nine:
                    break
                mant = mant * ten + d
                q += 1
            nd = q - q0
            frac = 0
            if buf[np.uint64(q)] == 46:
                q += 1
                q0 = q
                while True:
                    d = np.uint64(buf[np.uint64(q)]) - zero
                    if d > nine:
                        break
                    mant = mant * ten + d
                    q += 1
                frac = q - q0
            if buf[np.uint64(q)] <= 32 and 0 < nd + frac <= _MAX_DIGITS:
                v = float(mant) / _POW10[np.uint64(frac)]
                vals[np.uint64(fmap[np.uint64(col)]), np.uint64(r)] = -v if neg else v
                p = q
            else:
                while buf[np.uint64(p)] > 32:
                    p += 1
                v, ok = number(buf, t0, p)
                vals[np.uint64(fmap[np.uint64(col)]), np.uint64(r)] = v
                if not ok:
                    slow = True
            col += 1
        elif k == NAME:
            h = _FNV_OFFSET
            while buf[np.uint64(p)] > 32:
                h = (h ^ np.uint64(buf[np.uint64(p)])) * _FNV_PRIME
                p += 1
        else:
            while buf[np.uint64(p)] > 32:
                p += 1
        f += 1
    for c in range(col, nfloat):
        vals[fmap[c], r] = np.nan
    ints[r, RI_LINE] = -ls - 1 if slow else ls
    return p, f, h


@nb.njit(cache=True, nogil=True, error_model="numpy")
def reflection_resolution(h, k, l, owner, basis, out):
    """d (Å) of each reflection from the reciprocal basis (rows of 9) of its crystal."""
    for i in range(h.size):
        b = owner[i]
        qx = h[i] * basis[b, 0] + k[i] * basis[b, 3] + l[i] * basis[b, 6]
        qy = h[i] * basis[b, 1] + k[i] * basis[b, 4] + l[i] * basis[b, 7]
        qz = h[i] * basis[b, 2] + k[i] * basis[b, 5] + l[i] * basis[b, 8]
        q2 = qx * qx + qy * qy + qz * qz
        out[i] = 1.0 / np.sqrt(q2) if q2 > 0 else np.inf


# ------------------------------------------------------------------ the scanner
@nb.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _table_line(buf, ls, first, kinds, fmap, vals, ints, hashes, r, owner):
    """Parse one table line into row ``r``; ``(line_end, n_fields)`` as :func:`_row`."""
    le, nf, h = _row(buf, ls, first, kinds, fmap, vals, ints, r)
    if nf > 0:
        ints[r, RI_OWNER] = owner
        hashes[r] = h
    return le, nf


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _table_marker(buf, ls, le, state):
    """True for a line that ends a peak or reflection list (or the chunk)."""
    if _equals(buf, ls, le, _CHUNK_BEGIN) or _equals(buf, ls, le, _CHUNK_END):
        return True
    if state == _PEAKS:
        return _equals(buf, ls, le, _PEAKS_END)
    return _equals(buf, ls, le, _REFL_END) or _equals(buf, ls, le, _CRYSTAL_END)


@nb.njit(cache=True, nogil=True, error_model="numpy")
def scan_stream(buf, start, stop, follow, pk_kinds, pk_map, pk_min, rf_kinds,
                rf_map, rf_min, bases, limits, ch_i, ch_f, cr_i, cr_f, pk_v, pk_i, pk_h, rf_v, rf_i,
                rf_h, other):
    """Count or parse the chunks of ``buf[start:stop]``.

    Parameters
    ----------
    buf : uint8 array
    start, stop : int
        Byte range: ``start`` is a line start and ``buf[stop - 1]`` is a newline.
    follow : bool
        Stop before a chunk that the range ends in (a file being written) instead of
        reporting it as truncated.
    pk_kinds, rf_kinds : int8 arrays
        Field kinds of peak and reflection rows; ``pk_min``, ``rf_min`` the fields a row
        needs; ``pk_map``, ``rf_map`` the row of ``pk_v``, ``rf_v`` that each number field
        goes to.
    bases : int64 array
        Index of this range's first chunk, crystal, peak row, reflection row and line for
        Python in the output arrays; the owners written are global indices.
    limits : int64 array
        End (exclusive) of the room for each of them; running out returns :data:`FULL`.
    ch_i, ch_f, cr_i, cr_f : arrays
        Chunk and crystal rows (columns ``CI_*``, ``CF_*``, ``XI_*``, ``XF_*``).
    pk_v, rf_v : float64 arrays (fields, rows)
        Numbers of peak and reflection rows, one array row per field.
    pk_i, pk_h, rf_i, rf_h : arrays
        ``RI_*`` integers of each row (owner: chunk for peaks, crystal for reflections)
        and name hashes.
    other : int64 array
        Lines for Python (``OI_*`` columns): unknown chunk lines, and known chunk or
        crystal lines whose numbers the fast path did not take (``OI_CRYSTAL`` >= 0).

    Returns
    -------
    status, error_pos, aux_pos, done, n_chunks, n_crystals, n_peaks, n_reflections,
    n_other : int
        ``done`` is the offset after the last complete chunk; counts cover complete
        chunks only and are local to the range.
    """
    n = stop
    cb, xb, pb, rb, ob = bases[0], bases[1], bases[2], bases[3], bases[4]
    state = _OUTSIDE
    nc = nx = npk = nrf = no = 0
    keep = (0, 0, 0, 0, 0)
    done = start
    ls = start
    first = False
    c = -1
    x = -1
    block_pos = -1
    chunk_pos = -1
    while ls < n:
        b0 = buf[np.uint64(ls)]
        if state == _PEAKS or state == _REFLECTIONS:
            # Table rows go to the tokeniser; only lines starting with 'E' or '-' can be
            # markers.
            row = True
            if b0 == 69 or b0 == 45:
                le = _line_end(buf, ls, n)
                row = not _table_marker(buf, ls, le, state)
            if row:
                if pb + npk >= limits[2] or rb + nrf >= limits[3]:
                    return FULL, ls, -1, done, nc, nx, npk, nrf, no
                if state == _PEAKS:
                    le, nf = _table_line(buf, ls, first, pk_kinds, pk_map, pk_v, pk_i, pk_h,
                                         pb + npk, cb + c)
                    if nf > 0:
                        if nf < pk_min:
                            return PEAK_FIELDS, ls, -1, done, nc, nx, npk, nrf, no
                        npk += 1
                else:
                    le, nf = _table_line(buf, ls, first, rf_kinds, rf_map, rf_v, rf_i, rf_h,
                                         rb + nrf, xb + x)
                    if nf > 0:
                        if nf < rf_min:
                            return REFLECTION_FIELDS, ls, -1, done, nc, nx, npk, nrf, no
                        nrf += 1
                if nf != 0:
                    first = False
                ls = le + 1
                continue
        le = _line_end(buf, ls, n)
        if le >= n:
            break
        if state == _OUTSIDE:
            if _equals(buf, ls, le, _CHUNK_BEGIN):
                if cb + nc >= limits[0]:
                    return FULL, ls, -1, done, nc, nx, npk, nrf, no
                c = nc
                nc += 1
                chunk_pos = ls
                g = cb + c
                for k in range(N_CI):
                    ch_i[g, k] = -1
                for k in range(N_CF):
                    ch_f[g, k] = np.nan
                ch_i[g, CI_BEGIN] = ls
                ch_i[g, CI_HAS_ENERGY] = 0
                ch_i[g, CI_NCRYST] = 0
                ch_i[g, CI_HAS_PEAKS] = 0
                state = _HEADER
            ls = le + 1
            continue
        if b0 == 45 and _equals(buf, ls, le, _CHUNK_BEGIN):
            return TRUNCATED_CHUNK, chunk_pos, ls, done, keep[0], keep[1], keep[2], keep[3], \
                keep[4]
        if b0 == 45 and _equals(buf, ls, le, _CHUNK_END):
            if state == _PEAKS:
                return UNTERMINATED_PEAKS, block_pos, ls, done, keep[0], keep[1], keep[2], \
                    keep[3], keep[4]
            if state == _CRYSTAL or state == _AFTER_REFLECTIONS:
                return UNTERMINATED_CRYSTAL, block_pos, ls, done, keep[0], keep[1], keep[2], \
                    keep[3], keep[4]
            if state == _REFLECTIONS:
                return UNTERMINATED_REFLECTIONS, block_pos, ls, done, keep[0], keep[1], \
                    keep[2], keep[3], keep[4]
            ch_i[cb + c, CI_END] = ls
            state = _OUTSIDE
            done = le + 1
            keep = (nc, nx, npk, nrf, no)
            ls = le + 1
            continue
        if state == _PEAKS:  # the end of the peak list
            state = _HEADER
            ls = le + 1
            continue
        if state == _REFLECTIONS:
            if _equals(buf, ls, le, _CRYSTAL_END):
                return UNTERMINATED_REFLECTIONS, block_pos, ls, done, keep[0], keep[1], \
                    keep[2], keep[3], keep[4]
            state = _AFTER_REFLECTIONS
            ls = le + 1
            continue
        if state == _HEADER:
            if _equals(buf, ls, le, _PEAKS_BEGIN):
                state = _PEAKS
                first = True
                block_pos = ls
                ch_i[cb + c, CI_HAS_PEAKS] = 1
            elif _equals(buf, ls, le, _CRYSTAL_BEGIN):
                if xb + nx >= limits[1]:
                    return FULL, ls, -1, done, nc, nx, npk, nrf, no
                x = nx
                nx += 1
                block_pos = ls
                state = _CRYSTAL
                g = xb + x
                for k in range(N_XI):
                    cr_i[g, k] = -1
                for k in range(N_XF):
                    cr_f[g, k] = np.nan
                cr_i[g, XI_CHUNK] = cb + c
                cr_i[g, XI_INDEX] = ch_i[cb + c, CI_NCRYST]
                cr_i[g, XI_HAS_CELL] = 0
                cr_i[g, XI_HAS_BASIS] = 0
                cr_i[g, XI_HAS_REFL] = 0
                cr_i[g, XI_BEGIN] = ls
                ch_i[cb + c, CI_NCRYST] += 1
            elif not _chunk_line(buf, ls, le, cb + c, ch_i, ch_f):
                if ob + no >= limits[4]:
                    return FULL, ls, -1, done, nc, nx, npk, nrf, no
                g = ob + no
                other[g, OI_CHUNK] = cb + c
                other[g, OI_START] = ls
                other[g, OI_END] = le
                other[g, OI_CRYSTAL] = -1
                no += 1
            ls = le + 1
            continue
        # state is _CRYSTAL or _AFTER_REFLECTIONS
        if _equals(buf, ls, le, _CRYSTAL_END):
            state = _HEADER
        elif state == _CRYSTAL and _equals(buf, ls, le, _REFL_BEGIN):
            state = _REFLECTIONS
            first = True
            block_pos = ls
            cr_i[xb + x, XI_HAS_REFL] = 1
        elif state == _CRYSTAL:
            if _crystal_line(buf, ls, le, xb + x, cr_i, cr_f) == 2:
                if ob + no >= limits[4]:
                    return FULL, ls, -1, done, nc, nx, npk, nrf, no
                g = ob + no
                other[g, OI_CHUNK] = cb + c
                other[g, OI_START] = ls
                other[g, OI_END] = le
                other[g, OI_CRYSTAL] = xb + x
                no += 1
        ls = le + 1
    if state != _OUTSIDE and not follow:
        return TRUNCATED_CHUNK, chunk_pos, -1, done, keep[0], keep[1], keep[2], keep[3], \
            keep[4]
    return OK, -1, -1, done, keep[0], keep[1], keep[2], keep[3], keep[4]


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _chunk_line(buf, ls, le, c, ch_i, ch_f):
    """Read a known chunk line into row ``c``; False for lines Python must read."""
    b0 = buf[np.uint64(ls)]
    if b0 == 73:  # I
        if _prefix(buf, ls, le, _K_FILE):
            ch_i[c, CI_FILE] = ls + _K_FILE.size
            ch_i[c, CI_FILE + 1] = le
            return True
        if _prefix(buf, ls, le, _K_SERIAL):
            return _integer(buf, ls + _K_SERIAL.size, le, ch_i, c, CI_SERIAL)
        return False
    if b0 == 69 and _prefix(buf, ls, le, _K_EVENT):
        ch_i[c, CI_EVENT] = ls + _K_EVENT.size
        ch_i[c, CI_EVENT + 1] = le
        return True
    if b0 == 104 and _prefix(buf, ls, le, _K_HIT):
        return _integer(buf, ls + _K_HIT.size, le, ch_i, c, CI_HIT)
    if b0 == 105 and _prefix(buf, ls, le, _K_INDEXER):
        ch_i[c, CI_INDEXER] = ls + _K_INDEXER.size
        ch_i[c, CI_INDEXER + 1] = le
        return True
    if b0 == 110:  # n
        if _prefix(buf, ls, le, _K_TRIES):
            return _integer(buf, ls + _K_TRIES.size, le, ch_i, c, CI_TRIES)
        if _prefix(buf, ls, le, _K_NPEAKS):
            return _integer(buf, ls + _K_NPEAKS.size, le, ch_i, c, CI_NPEAKS)
        return False
    if b0 == 112:  # p
        if _prefix(buf, ls, le, _K_ENERGY):
            ok = _numbers(buf, ls + _K_ENERGY.size, le, ch_f, c, CF_ENERGY, 1)
            if ok:
                ch_i[c, CI_HAS_ENERGY] = 1
            return ok
        if _prefix(buf, ls, le, _K_PEAKRES):
            return _resolution(buf, ls + _K_PEAKRES.size, le, ch_f, c, CF_RES_NM)
        return False
    if b0 == 98:  # b
        if _prefix(buf, ls, le, _K_DIV):
            return _numbers(buf, ls + _K_DIV.size, le, ch_f, c, CF_DIV, 1)
        if _prefix(buf, ls, le, _K_BW):
            return _numbers(buf, ls + _K_BW.size, le, ch_f, c, CF_BW, 1)
        return False
    if b0 == 97 and _prefix(buf, ls, le, _K_CLEN):
        return _numbers(buf, ls + _K_CLEN.size, le, ch_f, c, CF_CLEN, 1)
    return False


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _crystal_line(buf, ls, le, x, cr_i, cr_f):
    """Read a known crystal line into row ``x``.

    Returns 1 when read, 0 for lines that are not known (free-text notes), 2 for known
    lines whose numbers Python must read.
    """
    ok = True
    b0 = buf[np.uint64(ls)]
    if b0 == 67 and _prefix(buf, ls, le, _K_CELL):  # Cell parameters a b c nm, al be ga deg
        p = ls + _K_CELL.size
        for k in range(3):
            t0, p = _token(buf, p, le)
            v, good = number(buf, t0, p)
            ok = ok and good
            cr_f[x, XF_CELL + k] = v
        t0, p = _token(buf, p, le)
        for k in range(3):
            t0, p = _token(buf, p, le)
            v, good = number(buf, t0, p)
            ok = ok and good
            cr_f[x, XF_CELL + 3 + k] = v
        if ok:
            cr_i[x, XI_HAS_CELL] = 1
    elif b0 == 97 and _prefix(buf, ls, le, _K_ASTAR):
        ok = _numbers(buf, ls + _K_ASTAR.size, le, cr_f, x, XF_BASIS, 3)
        if ok:
            cr_i[x, XI_HAS_BASIS] |= 1
    elif b0 == 98 and _prefix(buf, ls, le, _K_BSTAR):
        ok = _numbers(buf, ls + _K_BSTAR.size, le, cr_f, x, XF_BASIS + 3, 3)
        if ok:
            cr_i[x, XI_HAS_BASIS] |= 2
    elif b0 == 99 and _prefix(buf, ls, le, _K_CSTAR):
        ok = _numbers(buf, ls + _K_CSTAR.size, le, cr_f, x, XF_BASIS + 6, 3)
        if ok:
            cr_i[x, XI_HAS_BASIS] |= 4
    elif b0 == 108 and _prefix(buf, ls, le, _K_LATTICE):
        cr_i[x, XI_LATTICE] = ls + _K_LATTICE.size
        cr_i[x, XI_LATTICE + 1] = le
    elif b0 == 99 and _prefix(buf, ls, le, _K_CENTERING):
        cr_i[x, XI_CENTERING] = ls + _K_CENTERING.size
        cr_i[x, XI_CENTERING + 1] = le
    elif b0 == 117 and _prefix(buf, ls, le, _K_AXIS):
        cr_i[x, XI_AXIS] = ls + _K_AXIS.size
        cr_i[x, XI_AXIS + 1] = le
    elif b0 == 112 and _prefix(buf, ls, le, _K_RADIUS):
        ok = _numbers(buf, ls + _K_RADIUS.size, le, cr_f, x, XF_RADIUS, 1)
    elif b0 == 112 and _prefix(buf, ls, le, _K_SHIFT):
        p = ls + _K_SHIFT.size
        t0, p = _token(buf, p, le)
        v, ok = number(buf, t0, p)
        cr_f[x, XF_DX] = v
        t0, p = _token(buf, p, le)
        t0, p = _token(buf, p, le)
        t0, p = _token(buf, p, le)
        v, good = number(buf, t0, p)
        cr_f[x, XF_DY] = v
        ok = ok and good
    elif b0 == 100 and _prefix(buf, ls, le, _K_LIMIT):
        ok = _resolution(buf, ls + _K_LIMIT.size, le, cr_f, x, XF_LIMIT_NM)
    elif b0 == 110 and _prefix(buf, ls, le, _K_NREFL):
        ok = _integer(buf, ls + _K_NREFL.size, le, cr_i, x, XI_NREFL)
    elif b0 == 110 and _prefix(buf, ls, le, _K_NSAT):
        ok = _integer(buf, ls + _K_NSAT.size, le, cr_i, x, XI_NSAT)
    elif b0 == 110 and _prefix(buf, ls, le, _K_NIMP):
        ok = _integer(buf, ls + _K_NIMP.size, le, cr_i, x, XI_NIMP)
    else:
        return 0
    return 1 if ok else 2



@nb.njit(cache=True, nogil=True, error_model="numpy")
def count_newlines(buf, start, stop):
    """Number of newline bytes in ``buf[start:stop]``."""
    view = buf[start:stop]
    n = 0
    for i in range(view.size):
        if view[i] == 10:
            n += 1
    return n


@nb.njit(cache=True, nogil=True, error_model="numpy")
def factorize(hashes):
    """Codes of ``hashes`` in order of first appearance, the distinct values and the row of
    their first appearance (open addressing; a handful of distinct values is typical)."""
    n = hashes.size
    size = 256
    table = np.full(size, -1, dtype=np.int64)
    uniq = np.empty(16, dtype=np.uint64)
    first = np.empty(16, dtype=np.int64)
    nu = 0
    codes = np.empty(n, dtype=np.int64)
    last_h = np.uint64(0)
    last_code = -1
    for i in range(n):
        h = hashes[i]
        if last_code >= 0 and h == last_h:
            codes[i] = last_code
            continue
        slot = np.int64(h & np.uint64(size - 1))
        while True:
            u = table[slot]
            if u < 0:
                if nu == uniq.size:
                    uniq = np.concatenate((uniq, np.empty(nu, dtype=np.uint64)))
                    first = np.concatenate((first, np.empty(nu, dtype=np.int64)))
                uniq[nu] = h
                first[nu] = i
                table[slot] = nu
                u = nu
                nu += 1
                if 2 * nu > size:
                    size *= 4
                    table = np.full(size, -1, dtype=np.int64)
                    for j in range(nu):
                        s2 = np.int64(uniq[j] & np.uint64(size - 1))
                        while table[s2] >= 0:
                            s2 = (s2 + 1) & (size - 1)
                        table[s2] = j
                break
            if uniq[u] == h:
                break
            slot = (slot + 1) & (size - 1)
        codes[i] = u
        last_h = h
        last_code = u
    return codes, uniq[:nu].copy(), first[:nu].copy()


@nb.njit(cache=True, nogil=True, error_model="numpy")
def peak_resolution(fs, ss, panel, wavelength, panels, d_out, tth_out):
    """d (Å) and 2θ (deg) of peaks at data-array positions on their panels.

    ``panels`` has one row per panel: min_fs, min_ss, corner (3), fs step (3), ss step (3)
    in metres. Rows with panel -1, or a non-finite result, are left untouched.
    """
    for i in range(fs.size):
        p = panel[i]
        if p < 0:
            continue
        g = panels[p]
        u = fs[i] - g[0]
        v = ss[i] - g[1]
        x = g[2] + u * g[5] + v * g[8]
        y = g[3] + u * g[6] + v * g[9]
        z = g[4] + u * g[7] + v * g[10]
        tth = np.arctan2(np.sqrt(x * x + y * y), z)
        d = wavelength[i] / (2.0 * np.sin(tth / 2.0))
        if np.isfinite(d):
            d_out[i] = d
            tth_out[i] = np.degrees(tth)
