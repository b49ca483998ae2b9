"""Time per call of :class:`sxlab.cell.CellMatcher` and :func:`sxlab.cell.niggli_reduce`.

Each reference cell is matched against found bases as an indexer returns them: the
primitive basis of the lattice with 1 % length and 0.5° angle noise, in a random setting
(random unimodular matrix), random orientation and either handedness; "matched" counts the
calls that found a setting (the noise puts a few cells outside the 5 %/1.5° tolerances).
The table gives the median and 95th percentile of the thread CPU time per call after a
warm-up, on one core (CPU time, so that a loaded machine's preemption does not count).

Run ``python benchmarks/bench_cell.py`` (``make bench`` runs every benchmark). With
``SXLAB_BENCH_OUT`` set, the table is also written there as ``bench_cell.md``.
"""

from __future__ import annotations

import _common

_common.single_threaded(override=False)

import os  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from sxlab.cell import CellMatcher, UnitCell, niggli_reduce, to_primitive  # noqa: E402

REFERENCES = [
    ("P 43 21 2", (79.1, 79.1, 37.9, 90, 90, 90)),
    ("C 2 2 21", (46.2, 103.0, 128.7, 90, 90, 90)),
    ("C 1 2 1", (60.1, 40.2, 50.3, 90, 112.4, 90)),
    ("P 61 2 2", (92.9, 92.9, 130.4, 90, 90, 120)),
    ("R 3", (81.3, 81.3, 212.6, 90, 90, 120)),
    ("I 2 3", (78.0, 78.0, 78.0, 90, 90, 90)),
    ("F 2 3", (101.5, 101.5, 101.5, 90, 90, 90)),
]
N_CALLS = 2000


def _unimodular(rng):
    m = np.eye(3, dtype=np.int64)
    for _ in range(8):
        i, j = rng.choice(3, size=2, replace=False)
        e = np.eye(3, dtype=np.int64)
        e[i, j] = rng.choice([-2, -1, 1, 2])
        m = e @ m
    return m


def _rotation(rng):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def _found_bases(ref: UnitCell, rng, n: int) -> list[np.ndarray]:
    out = []
    for _ in range(n):
        p = np.array(ref.parameters)
        p[:3] *= 1 + rng.normal(0, 0.01, 3)
        p[3:] += rng.normal(0, 0.5, 3)
        noisy = UnitCell(*p, lattice_type=ref.lattice_type, centering=ref.centering)
        prim, _ = to_primitive(noisy.direct_basis, ref.centering)
        basis = _unimodular(rng) @ prim @ _rotation(rng).T
        out.append(-basis if rng.integers(2) else basis)
    return out


def _times(func, items) -> np.ndarray:
    for item in items[:20]:
        func(item)
    out = np.empty(len(items))
    for i, item in enumerate(items):
        t0 = time.thread_time()
        func(item)
        out[i] = time.thread_time() - t0
    return out * 1e3


def main() -> str:
    _common.pin_to_one_core()
    rng = np.random.default_rng(0)
    rows = ["| reference | match median (ms) | match p95 (ms) | matched | Niggli median (ms) |",
            "|---|---|---|---|---|"]
    for symbol, params in REFERENCES:
        ref = UnitCell(*params, space_group=symbol)
        bases = _found_bases(ref, rng, N_CALLS)
        matcher = CellMatcher(ref)
        matched = sum(matcher(b) is not None for b in bases)
        t_match = _times(matcher, bases)
        t_niggli = _times(niggli_reduce, bases)
        rows.append(f"| {symbol} | {np.median(t_match):.3f} | {np.percentile(t_match, 95):.3f}"
                    f" | {matched}/{N_CALLS} | {np.median(t_niggli):.3f} |")
    table = "\n".join(rows) + "\n"
    out = os.environ.get("SXLAB_BENCH_OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "bench_cell.md").write_text(table, encoding="utf-8")
    return table


if __name__ == "__main__":
    print(main(), end="")
