"""Tests for sxlab.profiling (timers, CrystFEL profile lines, blocks) and sxlab.plots.profile."""

import threading
import time

import matplotlib
import numpy as np
import pandas as pd
import pytest

from sxlab import profiling
from sxlab.profiling import (
    INDEX,
    PEAK_SEARCH,
    PF8_RSTATS,
    PF8_SEARCH,
    WAIT,
    Profiler,
    active,
    combine_profiles,
    profile_blocks,
    profiled,
    read_crystfel_profile,
    record,
    section,
    to_crystfel_profile,
)
from sxlab.tables import PROFILE, PROFILE_BLOCKS

matplotlib.use("Agg")


def _busy(seconds):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


# ============================================================================ timers
def test_nested_sections_paths_depths_and_times():
    prof = Profiler(worker=4)
    for frame in (10, 11):
        with prof.frame(frame):
            with prof.section(WAIT):
                _busy(0.002)
            with prof.section(PEAK_SEARCH):
                with prof.section(PF8_RSTATS):
                    _busy(0.003)
                with prof.section(PF8_SEARCH):
                    pass
            with prof.section(INDEX):
                pass
    t = prof.table()
    PROFILE.validate(t)
    expected = ["root", "root/wait", "root/peak-search", "root/peak-search/pf8-rstats",
                "root/peak-search/pf8-search", "root/index"]
    assert t["path"].tolist() == expected * 2
    assert t["depth"].tolist() == [0, 1, 1, 2, 2, 1] * 2
    assert t["frame"].tolist() == [10] * 6 + [11] * 6
    assert t["completion"].tolist() == [0] * 6 + [1] * 6
    assert (t["worker"] == 4).all()
    first = t[t["frame"] == 10].set_index("path")
    assert first.loc["root/wait", "duration_s"] >= 0.002
    assert first.loc["root/peak-search/pf8-rstats", "duration_s"] >= 0.003
    # Children lie inside their parents, siblings one after the other.
    end = first["start_s"] + first["duration_s"]
    assert first.loc["root", "start_s"] <= first.loc["root/wait", "start_s"]
    assert end["root/wait"] <= first.loc["root/peak-search", "start_s"]
    assert end["root/peak-search/pf8-search"] <= end["root/peak-search"] <= end["root"]
    children = first.loc[["root/wait", "root/peak-search", "root/index"], "duration_s"].sum()
    assert children <= first.loc["root", "duration_s"]
    assert prof.rows()[0]["path"] == "root"
    prof.clear()
    assert len(PROFILE.validate(prof.table())) == 0


def test_decorator_and_module_section_use_the_open_frame():
    @profiled("refine")
    def refine(x):
        with section("prerefine-cell-check"):
            return x + 1

    assert refine(1) == 2  # no frame open: runs untimed
    prof = Profiler()
    with prof.frame(0), section(INDEX):
        assert refine(2) == 3
    assert prof.table()["path"].tolist() == [
        "root", "root/index", "root/index/refine", "root/index/refine/prerefine-cell-check"]
    assert refine.__name__ == "refine"


def test_disabled_profiler_records_nothing_but_still_measures():
    prof = Profiler(enabled=False)
    with prof.frame(0) as whole, prof.section("a") as seg:
        with section("b"):
            _busy(0.002)
        record("c", 1.0)
    assert len(prof.table()) == 0 and not active()
    assert 0.002 <= seg.seconds <= whole.seconds
    # Enabled: the stage's seconds are its recorded duration, one timer for both.
    prof = Profiler()
    with prof.frame(1) as whole, prof.section("a") as seg:
        _busy(0.002)
    t = prof.table().set_index("path").duration_s
    assert seg.seconds == t["root/a"] and whole.seconds <= t["root"] + 1e-6


def test_misuse_and_exceptions():
    prof = Profiler()
    with pytest.raises(RuntimeError, match="outside a frame"), prof.section("x"):
        pass
    with pytest.raises(RuntimeError, match="still open"), prof.frame(0), prof.frame(1):
        pass
    prof.clear()
    with pytest.raises(ZeroDivisionError), prof.frame(5), prof.section(INDEX):
        1 / 0  # noqa: B018
    assert prof.table()["path"].tolist() == ["root", "root/index"]
    with prof.frame(6):
        pass
    assert prof.table()["completion"].tolist() == [1, 1, 2]  # frame 0 completed first


def test_add_known_duration_and_clear_on_table():
    prof = Profiler()
    with prof.frame(0):
        prof.add("load-image-data", 0.5)
        with prof.section(INDEX):
            prof.add("refine", 0.001)
    t = prof.table(clear=True)
    assert t["path"].tolist() == ["root", "root/load-image-data", "root/index",
                                  "root/index/refine"]
    assert t["depth"].tolist() == [0, 1, 1, 2]
    times = t.set_index("path")
    assert times.loc["root/load-image-data", "duration_s"] == pytest.approx(0.5, abs=1e-6)
    # The open segments were extended back to cover what was added.
    assert times.loc["root", "start_s"] <= times.loc["root/load-image-data", "start_s"]
    assert times.loc["root", "duration_s"] >= 0.5
    assert times.loc["root/index", "duration_s"] >= 0.001
    assert len(prof.table()) == 0
    with prof.frame(1):
        pass
    assert prof.table()["completion"].tolist() == [1]
    with pytest.raises(RuntimeError, match="outside a frame"):
        prof.add("x", 1.0)
    Profiler(enabled=False).add("x", 1.0)


def test_threads_record_into_their_own_profilers():
    @profiled("work")
    def work():
        _busy(0.001)

    profs = [Profiler(worker=w) for w in range(3)]

    def run(prof):
        for i in range(5):
            with prof.frame(i):
                work()

    threads = [threading.Thread(target=run, args=(p,)) for p in profs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in profs:
        t = p.table()
        assert len(t) == 10 and (t["worker"] == p.worker).all()
        assert t["path"].tolist() == ["root", "root/work"] * 5


def _per_call_ns(fn, n=20000, repeats=5):
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter_ns() - t0) / n)
    return best


def test_overhead_on_and_off():
    on, off = Profiler(), Profiler(enabled=False)

    def timed(prof):
        with prof.section(INDEX):
            pass

    def nothing():
        pass

    base = _per_call_ns(nothing)
    with on.frame(0):
        cost_on = _per_call_ns(lambda: timed(on)) - base
    cost_off = _per_call_ns(lambda: timed(off)) - base
    # Typical: ~1 µs on, ~0.4 µs off (a disabled profiler's section only reads the clock
    # twice, for the stage's seconds); a frame has ~15 sections and takes >= 10 ms.
    assert cost_on < 10_000
    assert cost_off < 10_000
    assert 15 * cost_on < 0.01 * 10e6


# ============================================================================ CrystFEL
LINES = [
    "Waiting for the next image...",
    "3 (root 0.455 (wait 0.010) (load-image-data 0.021) (peak-search 0.170 "
    "(pf8-rstats 0.120) (pf8-search 0.045)) (index 0.210 (asdf-triplets 0.020) "
    "(asdf-search 0.150) (asdf-findcell 0.030) (refine 0.005) (refine 0.004)) "
    "(integration 0.037) (write-stream 0.002))",
    "  0 (root 0.186 (wait 0.004) (peak-search 0.170))",
    "12 (root 0.010)",
]


def test_read_crystfel_profile_lines(tmp_path):
    t = PROFILE.validate(read_crystfel_profile(LINES))
    assert t["worker"].tolist() == [3] * 14 + [0] * 3 + [12]
    assert t["frame"].tolist() == [0] * 14 + [1] * 3 + [2]
    assert t["completion"].tolist() == t["frame"].tolist()
    assert t["start_s"].isna().all()
    first = t[t["frame"] == 0]
    assert first["path"].tolist() == [
        "root", "root/wait", "root/load-image-data", "root/peak-search",
        "root/peak-search/pf8-rstats", "root/peak-search/pf8-search", "root/index",
        "root/index/asdf-triplets", "root/index/asdf-search", "root/index/asdf-findcell",
        "root/index/refine", "root/index/refine", "root/integration", "root/write-stream"]
    assert first["depth"].tolist() == [0, 1, 1, 1, 2, 2, 1, 2, 2, 2, 2, 2, 1, 1]
    assert first["duration_s"].tolist()[:4] == [0.455, 0.010, 0.021, 0.170]
    assert (first["path"] == "root/index/refine").sum() == 2
    path = tmp_path / "indexamajig.log"
    path.write_text("\n".join(LINES) + "\n")
    pd.testing.assert_frame_equal(read_crystfel_profile(path), t)
    pd.testing.assert_frame_equal(read_crystfel_profile(str(path)), t)
    pd.testing.assert_frame_equal(read_crystfel_profile("\n".join(LINES)), t)
    assert len(read_crystfel_profile(["nothing here"])) == 0


@pytest.mark.parametrize("bad, message", [
    ("1 (root 0.1 (wait 0.2)", "expected 1 more"),
    ("1 (root 0.1 (wait x))", "expected a number of seconds after 'wait'"),
    ("1 (root 0.1)) (x 1)", "unbalanced|end of the line"),
    ("1 (root 0.1 wait 0.2)", "expected '\\(' or '\\)'"),
])
def test_read_crystfel_profile_errors(bad, message):
    with pytest.raises(ValueError, match=f"<lines>, line 2: .*({message})"):
        read_crystfel_profile(["ok line", bad])


def test_crystfel_profile_round_trip():
    text = "\n".join(LINES[1:]) + "\n"
    assert to_crystfel_profile(read_crystfel_profile(text)) == text.replace("  0 (", "0 (")
    prof = Profiler(worker=7)
    for i in range(3):
        with prof.frame(i), prof.section(PEAK_SEARCH):
            with prof.section(PF8_RSTATS):
                pass
            with prof.section(PF8_SEARCH):
                pass
    table = prof.table()
    back = read_crystfel_profile(to_crystfel_profile(table).splitlines())
    for col in ("worker", "path", "depth", "completion", "frame"):
        assert back[col].tolist() == table[col].tolist()
    np.testing.assert_allclose(back["duration_s"], table["duration_s"], atol=5e-4 + 1e-12)
    bad = table.iloc[[1, 0]]
    with pytest.raises(ValueError, match="parents first"):
        to_crystfel_profile(bad.assign(completion=0))


def test_combine_profiles_orders_by_end_time():
    epoch = time.perf_counter_ns()
    a, b = Profiler(worker=0, epoch_ns=epoch), Profiler(worker=1, epoch_ns=epoch)
    with a.frame(0):
        with b.frame(100):
            pass
        with b.frame(101):
            pass
    with a.frame(1):
        pass
    both = combine_profiles([a.table(), b.table()])
    roots = both[both["depth"] == 0]
    assert roots["frame"].tolist() == [100, 101, 0, 1]
    assert roots["completion"].tolist() == [0, 1, 2, 3]
    assert len(combine_profiles([])) == 0


# ============================================================================ blocks
def _synthetic(n_records=10, rng=None):
    """Records with 12 first-level stages of known durations (stage k takes k ms)."""
    lines = []
    for r in range(n_records):
        stages = [(f"s{k:02d}", 0.001 * k * (1 + r % 3)) for k in range(1, 13)]
        stages.append((WAIT, 0.050))
        children = " ".join(f"({name} {sec:.3f})" for name, sec in stages)
        total = sum(sec for _, sec in stages) + 0.004
        lines.append(f"{r % 2} (root {total:.3f} {children} (peak-search 0.000 "
                     f"(pf8-rstats 0.000)))")
    return read_crystfel_profile(lines)


def test_profile_blocks_top_and_other():
    t = _synthetic(10)
    b = profile_blocks(t, block=4, top=10)
    PROFILE_BLOCKS.validate(b)
    cats = list(b["category"].cat.categories)
    # wait (50 ms) is the largest; then s12 ... ; the smallest go to "other".
    assert cats[0] == WAIT and cats[-1] == "other" and len(cats) == 11
    assert cats[1:10] == [f"s{k:02d}" for k in range(12, 3, -1)]
    assert b["block"].unique().tolist() == [0, 1, 2]
    assert b.groupby("block")["n_records"].first().tolist() == [4, 4, 2]
    assert b.groupby("block")["first_record"].first().tolist() == [0, 4, 8]
    wide = b.pivot(index="block", columns="category", values="seconds_per_frame")
    t2 = t.assign(name=t["path"].str.split("/").str[-1])
    per_record = t2[t2["depth"] == 1].pivot_table(index="frame", columns="name",
                                                   values="duration_s", aggfunc="sum")
    blocks = np.arange(10) // 4
    root_self = (t[t["depth"] == 0].set_index("frame")["duration_s"]
                 - per_record.sum(axis=1))
    other = per_record[["s01", "s02", "s03", "peak-search"]].sum(axis=1) + root_self
    np.testing.assert_allclose(wide["other"], other.groupby(blocks).mean(), atol=1e-12)
    np.testing.assert_allclose(wide["s12"], per_record["s12"].groupby(blocks).mean())
    # The blocks' totals are the mean root time per frame.
    root_mean = t[t["depth"] == 0]["duration_s"].groupby(blocks).mean()
    np.testing.assert_allclose(wide.sum(axis=1), root_mean, atol=1e-12)
    assert "root" not in cats  # the root's own 4 ms went to "other"

    no_wait = profile_blocks(t, block=4, top=10, include_wait=False)
    assert WAIT not in list(no_wait["category"].cat.categories)
    nw = no_wait.pivot(index="block", columns="category", values="seconds_per_frame")
    np.testing.assert_allclose(nw.sum(axis=1), root_mean - 0.05, atol=1e-12)


def test_profile_blocks_levels():
    t = read_crystfel_profile(["0 (root 1.0 (peak-search 0.5 (pf8-rstats 0.25)) (wait 0.125))"])
    one = profile_blocks(t, block=1)
    assert dict(zip(one["category"].astype(str), one["seconds_per_frame"], strict=True)) == {
        "peak-search": 0.5, "root": 0.375, "wait": 0.125}
    two = profile_blocks(t, block=1, level=2)
    assert dict(zip(two["category"].astype(str), two["seconds_per_frame"], strict=True)) == {
        "root": 0.375, "peak-search/pf8-rstats": 0.25, "peak-search": 0.25, "wait": 0.125}
    assert len(profile_blocks(t.iloc[:0])) == 0
    with pytest.raises(ValueError):
        profile_blocks(t, block=0)


def test_plot_profile_areas():
    from sxlab import plots

    t = _synthetic(300)
    ax = plots.profile(t, block=50, top=10)
    assert len(ax.collections) == 11
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert labels[0] == "other" and labels[-1] == WAIT  # legend top to bottom
    assert "completion order" in ax.get_xlabel() and "(s)" in ax.get_ylabel()
    assert "blocks of 50" in ax.get_title()
    top = ax.collections[-1].get_paths()[0].vertices[:, 1].max()
    data = profile_blocks(t, 50, 10, True)
    assert top == pytest.approx(data.groupby("block")["seconds_per_frame"].sum().max())
    ax2 = plots.profile(t, block=400, include_wait=False, top=3)
    assert len(ax2.collections) == 4 and "wait excluded" in ax2.get_title()
    matplotlib.pyplot.close("all")
    with pytest.raises(ValueError, match="no records"):
        plots.profile(t.iloc[:0])


def test_stage_names():
    assert profiling.STAGES[0] == "root"
    assert {"peak-search", "pf8-rstats", "asdf-findcell", "prerefine-cell-check",
            "integration", "write-stream"} <= set(profiling.STAGES)


def test_profile_plot_of_a_short_run_is_readable_and_colours_are_fixed():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.colors import to_hex

    from sxlab import plots
    from sxlab.profiling import default_block, read_crystfel_profile

    lines = [f"{i} (root 0.4 (wait 0.1) (index 0.{i % 3 + 1}) (peak-search 0.05))"
             for i in range(200)]
    table = read_crystfel_profile(lines)
    ax = plots.profile(table)
    assert default_block(200) == 3 and "blocks of 3 frames" in ax.get_title()
    n_points = len(ax.collections[0].get_paths()[0].vertices) // 2
    assert n_points >= 60  # not two points for 200 frames
    colours = {c.get_label(): to_hex(c.get_facecolor()[0]) for c in ax.collections}
    # the same stage has the same colour in another plot with other categories
    other = plots.profile(table, include_wait=False, top=1)
    again = {c.get_label(): to_hex(c.get_facecolor()[0]) for c in other.collections}
    assert again["index"] == colours["index"] == plots.stage_colour("index")
    assert again["other"] == "#b0b0b0"
    assert len(set(colours.values())) == len(colours)
    matplotlib.pyplot.close("all")


def test_merging_stats_threshold_line_is_labelled():
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd

    from sxlab import plots

    stats = pd.DataFrame({"shell": [0, 1, -1], "d_max_A": [10.0, 3.0, 10.0],
                          "d_min_A": [3.0, 2.0, 2.0], "cc_half": [0.9, 0.3, 0.8],
                          "cc_star": [0.97, 0.68, 0.94], "completeness": [1.0, 0.9, 0.95],
                          "i_over_sigma": [10.0, 2.0, 6.0]})
    ax = plots.merging_stats(stats)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "CC* = 0.5" in labels
    matplotlib.pyplot.close("all")
