"""Fuzzing of every text parser: only the parser's own error may escape.

Valid files (a geometry, a unit cell, a stream, trial parameters, a reflection list) are
mutated by hypothesis (bytes replaced, inserted and deleted, lines duplicated and dropped,
tokens a parser trips on put in) and read back: each reader either returns or raises its
named error (:class:`GeomError`, :class:`CellFileError`, :class:`StreamError`,
:class:`ParamsError`, :class:`HklFileError`). Seeded (``derandomize``), without an example
database, and bounded in examples; about 20 s in all.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sxlab.cell import UnitCell
from sxlab.geometry import builtin_geometry
from sxlab.io.crystfel_cell import CellFileError, read_cell, write_cell
from sxlab.io.crystfel_geom import GeomError, read_geom, write_geom
from sxlab.io.crystfel_hkl import HklFileError, read_hkl
from sxlab.io.stream import StreamError, read_stream
from sxlab.params import Params, ParamsError

DATA = Path(__file__).parent / "data"

FUZZ = settings(derandomize=True, database=None, deadline=None, max_examples=150,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

TOKENS = [b"nan", b"inf", b"-inf", b"1e400", b"-1", b"0", b"0.0", b"2147483648", b"=",
          b" = ", b"/", b";", b"\x00", b"\xff", b"\xe9", b"\x1f", b"\t", b"\r", b"\n", b" ",
          b"-", b"+", b"e", b"A", b"m", b"mm", b"eV", b"keV", b"deg", b"nm^-1", b"x", b"y",
          b"%", b"[", b"]", b'"', b"'", b"{", b"#", b"p0/", b"panel", b"bad", b"rigid_group",
          b"----- Begin chunk -----\n", b"----- End chunk -----\n", b"--- Begin crystal\n",
          b"--- End crystal\n", b"End of peak list\n", b"End of reflections\n",
          b"Reflections measured after indexing\n", b"End of reflections\n",
          b"----- End geometry file -----\n", b"CRYST1", b"lattice_type = ", b"centering = ",
          b"unique_axis = ", b"true", b"false", b"[index]\n", b"[cell]\n"]


@st.composite
def _mutated(draw, seed: bytes) -> bytes:
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["replace", "insert", "delete", "token", "dupline",
                                   "dropline"]))
        pos = draw(st.integers(0, len(data)))
        if op == "replace" and data:
            data[min(pos, len(data) - 1)] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            data[pos:pos + draw(st.integers(1, 40))] = b""
        elif op == "token":
            token = draw(st.sampled_from(TOKENS))
            if draw(st.booleans()):  # replace the field at pos
                data[pos:pos + len(token)] = token
            else:
                data[pos:pos] = token
        else:
            lines = bytes(data).split(b"\n")
            k = min(pos, len(lines) - 1)
            if op == "dupline":
                lines.insert(k, lines[k])
            elif len(lines) > 1:
                del lines[k]
            data = bytearray(b"\n".join(lines))
    return bytes(data)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def _written(workdir, name: str, data: bytes) -> Path:
    path = workdir / name
    path.write_bytes(data)
    return path


GEOM_SEED = write_geom(builtin_geometry("eiger4m", clen=0.15)).encode() \
    + b"; comment\nbadregion/min_fs = 0\nbadregion/max_fs = 3\nbadregion/min_ss = 0\n" \
    b"badregion/max_ss = 3\n"
CELL_SEED = write_cell(UnitCell(79.1, 79.1, 37.9, 90, 90, 90,
                                space_group="P 43 21 2")).encode()
PDB_SEED = b"HEADER    LYSOZYME\nCRYST1   79.100   79.100   37.900  90.00  90.00  90.00 " \
           b"P 43 21 2     8\nEND\n"
TOML_SEED = (b'[peaks]\nmin_snr = 6.0\nadc_threshold = 3.0\n[hits]\nmin_peaks = 10\n'
             b'[index]\nfast = false\nmethod = "asdf"\n[cell]\na = 79.1\nb = 79.1\nc = 37.9\n'
             b'alpha = 90\nbeta = 90\ngamma = 90\nspace_group = "P 43 21 2"\n'
             b'[merge]\nmin_measurements = 2\n')
HKL_SEED = (b"CrystFEL reflection list version 2.0\nSymmetry: 422\n"
            b"   h    k    l          I    phase   sigma(I)   nmeas\n"
            b"   1    0    0     100.00        -      10.00       3\n"
            b"   1    1    0      -5.50        -       2.25       4\n"
            b"   2    1    3    1234.50        -      40.00      12\n"
            b"End of reflections\n")
STREAM_SEED = (DATA / "fuzz_seed.stream").read_bytes()


def _quiet(call):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return call()


def test_seeds_are_valid(workdir):
    """The unmutated seeds read without error (else the fuzzing would test nothing)."""
    assert read_geom(GEOM_SEED.decode()).panels
    assert read_cell(_written(workdir, "s.cell", CELL_SEED)).a == pytest.approx(79.1)
    assert read_cell(_written(workdir, "s.pdb", PDB_SEED)).c == pytest.approx(37.9)
    assert Params.from_toml(TOML_SEED.decode()).cell is not None
    assert len(read_hkl(_written(workdir, "s.hkl", HKL_SEED))) == 3
    assert len(read_stream(_written(workdir, "s.stream", STREAM_SEED)).crystals) == 1


PARSERS = {
    # name: (seed, reader, its error, file suffix)
    "geometry": (GEOM_SEED, read_geom, GeomError, ".geom"),
    "cell": (CELL_SEED, read_cell, CellFileError, ".cell"),
    "pdb": (PDB_SEED, read_cell, CellFileError, ".pdb"),
    "params": (TOML_SEED, Params.load, ParamsError, ".toml"),
    "hkl": (HKL_SEED, read_hkl, HklFileError, ".hkl"),
    "stream": (STREAM_SEED, read_stream, StreamError, ".stream"),
}


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_mutated_files_raise_only_the_parsers_error(workdir, name):
    seed, read, error, suffix = PARSERS[name]

    @FUZZ
    @given(data=_mutated(seed))
    def check(data):
        path = _written(workdir, f"f{suffix}", data)
        try:
            _quiet(lambda: read(path))
        except error:
            pass

    check()


@FUZZ
@given(data=st.binary(max_size=300))
def test_every_parser_on_arbitrary_bytes(workdir, data):
    for name, (_, read, error, suffix) in PARSERS.items():
        path = _written(workdir, f"a-{name}{suffix}", data)
        try:
            _quiet(lambda read=read, path=path: read(path))
        except error:
            pass


@pytest.mark.parametrize("name", ["p0", "zz"])
def test_stream_panel_field_after_a_control_byte_is_refused(workdir, name):
    """0x1f is no field separator (C's isspace, CrystFEL): '\\x1fp0' is no panel name, and
    the line is named whether the rest spells a known panel or not."""
    lines = STREAM_SEED.decode().split("\n")
    i = next(k for k, s in enumerate(lines) if s.endswith("   p0") and "/" not in s)
    lines[i] = lines[i][:-5] + "  \x1f" + name
    path = _written(workdir, "ctl.stream", "\n".join(lines).encode())
    with pytest.raises(StreamError, match=rf"line {i + 1}: peak list: panel '\\x1f{name}'"):
        read_stream(path)
