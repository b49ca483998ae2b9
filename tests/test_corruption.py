"""Damaged bitshuffle-LZ4 chunks: what is detected (README, "Damaged data").

Every damage to a chunk's framing (the 12-byte header with the decoded size and block
size, the big-endian length of each LZ4 block) is detected before decoding and the frame
is recorded as failed with the reason; damage inside a compressed block is detected only
when the LZ4 decoder fails (the format has no checksum), which the last test documents.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

import sxlab as sx
from sxlab.io.hdf5 import FrameReadError

FRAME = 3


@pytest.fixture(scope="module")
def source():
    return Path(sx.datasets.path("lysozyme-sample", progress=False)).parent


def _damaged_copy(source: Path, dst: Path, damage) -> tuple[Path, np.ndarray]:
    shutil.copytree(source, dst)
    master = next(dst.glob("*_master.h5"))
    good = sx.open_run(master).read_raw(FRAME).copy()
    data_file = next(dst.glob("*_data_*.h5"))
    with h5py.File(data_file) as f:
        info = f["/entry/data/data"].id.get_chunk_info(FRAME)
    with open(data_file, "r+b") as fh:
        damage(fh, info.byte_offset, info.size)
    return master, good


def _flip(fh, pos: int, bit: int) -> None:
    fh.seek(pos)
    byte = fh.read(1)[0]
    fh.seek(pos)
    fh.write(bytes([byte ^ (1 << bit)]))


def _cases(n: int = 8):
    rng = np.random.default_rng(11)
    cases = []
    for _ in range(n):  # a bit of the header (decoded size, block size)
        off, bit = int(rng.integers(0, 12)), int(rng.integers(0, 8))
        cases.append(("header", lambda fh, at, size, off=off, bit=bit: _flip(fh, at + off,
                                                                               bit)))
    for _ in range(n):  # a high bit of the first block's length
        off, bit = int(rng.integers(0, 3)), int(rng.integers(0, 8))
        cases.append(("block length", lambda fh, at, size, off=off, bit=bit:
                      _flip(fh, at + 12 + off, bit)))
    return cases


@pytest.mark.parametrize("case", range(16))
def test_framing_damage_is_detected_and_the_frame_fails(source, tmp_path, case):
    what, damage = _cases()[case]
    master, _ = _damaged_copy(source, tmp_path / "data", damage)
    run = sx.open_run(master)
    with pytest.raises(FrameReadError) as exc:
        run.read_raw(FRAME)
    assert f"frame {FRAME}" in str(exc.value) and "_data_000001.h5" in str(exc.value)
    if case == 0:  # and in a batch run: recorded with the reason, the others go on
        res = sx.process_run(run, sx.Params(), executor="serial", progress=False)
        frames = res.frames.set_index("frame")
        assert frames.loc[FRAME, "status"] == "failed"
        assert f"frame {FRAME}" in frames.loc[FRAME, "error"]
        assert (frames.drop(index=FRAME).status == "ok").all() and len(frames) == 8


def test_damage_inside_a_block_is_only_sometimes_detectable(source, tmp_path):
    """Random bytes inside the LZ4 stream: a decoding failure is reported, otherwise the
    frame reads with changed pixels (documented; no checksum to catch it)."""
    rng = np.random.default_rng(5)
    outcomes = []
    for k in range(8):
        off = int(rng.integers(64, 4000))
        blob = rng.bytes(8)

        def damage(fh, at, size, off=off, blob=blob):
            fh.seek(at + min(off, size - 16))
            fh.write(blob)

        master, good = _damaged_copy(source, tmp_path / f"d{k}", damage)
        try:
            raw = sx.open_run(master).read_raw(FRAME)
        except FrameReadError:
            outcomes.append("detected")
            continue
        outcomes.append("silent" if (raw != good).any() else "unchanged")
    assert set(outcomes) <= {"detected", "silent", "unchanged"}
    assert "silent" in outcomes  # what README says cannot be detected
