import math
import re

import pytest

from sxlab.cell import UnitCell
from sxlab.params import Params, ParamsError

LYSO = UnitCell(79.1, 79.1, 37.9, 90, 90, 90, space_group="P 43 21 2")


def test_defaults_come_from_the_stage_modules():
    from sxlab.hits import HitParams
    from sxlab.indexing import IndexParams
    from sxlab.integration import IntegrationParams
    from sxlab.masks import MaskParams
    from sxlab.merging import MergeParams
    from sxlab.peaks import PeakFinderParams

    p = Params()
    assert p.peaks == PeakFinderParams()
    assert p.index == IndexParams()
    assert p.integrate == IntegrationParams()
    assert p.mask == MaskParams() and p.hits == HitParams() and p.merge == MergeParams()
    assert p.peaks.min_snr == 5 and p.peaks.local_bg_radius == 3  # CrystFEL defaults
    assert p.integrate.radii == (4.0, 5.0, 7.0)
    assert p.hits.min_peaks == 16


def test_toml_round_trip_and_stable_hash(tmp_path):
    p = Params(cell=LYSO).replace(
        peaks={"adc_threshold": 3.0, "min_snr": 6.0, "fast": True},
        index={"fast": True, "retry": True},
        integrate={"radii": (3.0, 4.0, 7.0)},
        mask={"beamstop_radius_px": 30.0, "d_min_A": 1.8},
        hits={"min_peaks": 20, "max_peaks": 500, "solvent_d_high_A": 3.4},
        merge={"d_min": 2.0, "resolve_ambiguity": False, "outlier_sigma": 4.0},
    )
    path = p.save(tmp_path / "trial.toml")
    q = Params.load(path)
    assert q == p
    assert q.digest() == p.digest()
    assert math.isinf(q.integrate.push_res_invA)
    assert Params().digest() != p.digest()
    # The hash depends on values, not on the order keys were written in.
    text = path.read_text()
    sections = text.strip().split("\n\n")
    assert Params.from_toml("\n\n".join(reversed(sections))).digest() == p.digest()


def test_unknown_keys_and_sections_are_named(tmp_path):
    with pytest.raises(ParamsError, match=r"\[peaks\].*'min_sn'"):
        Params.from_toml("[peaks]\nmin_sn = 4\n")
    with pytest.raises(ParamsError, match=r"unknown section \[peak\]"):
        Params.from_toml("[peak]\nmin_snr = 4\n")
    bad = tmp_path / "bad.toml"
    bad.write_text("[cell]\na = 10\nb = 10\nc = 10\nspace_grp = 'P 1'\n")
    with pytest.raises(ParamsError, match="bad.toml.*space_grp"):
        Params.load(bad)
    with pytest.raises(ParamsError, match="invalid TOML"):
        Params.from_toml("[peaks\n")
    with pytest.raises(ParamsError, match="stages.index needs stages.peaks"):
        Params.from_toml("[stages]\npeaks = false\n")
    # One meaning of "no maximum": the key left out. 0 would reject every frame with peaks.
    assert Params.from_toml("[hits]\nmin_peaks = 10\n").hits.max_peaks is None
    with pytest.raises(ParamsError, match=r"\[hits\].*max_peaks 0 is smaller than min_peaks 16"):
        Params.from_toml("[hits]\nmax_peaks = 0\n")
    with pytest.raises(ParamsError, match=r"\[merge\].*resolve_ambiguity"):
        Params.from_toml("[merge]\nresolve_ambiguity = 'maybe'\n")


def test_cell_from_a_crystfel_cell_file(tmp_path):
    from sxlab.io.crystfel_cell import write_cell

    write_cell(LYSO, tmp_path / "lyso.cell")
    (tmp_path / "trial.toml").write_text('[cell]\nfile = "lyso.cell"\n')
    p = Params.load(tmp_path / "trial.toml")
    assert p.cell == LYSO


def test_frozen():
    p = Params()
    with pytest.raises(AttributeError):
        p.peaks = None
    with pytest.raises(AttributeError):
        p.peaks.min_snr = 3


STRICT_CASES = [
    # (section, line, fragments of the message beyond the file name)
    ("index", 'fast = "false"', ["[index]", "fast", "'false'", "true or false"]),
    ("index", 'refine = "no"', ["[index]", "refine", "'no'", "true or false"]),
    ("hits", "min_peaks = -3", ["[hits]", "min_peaks", "-3", ">= "]),
    ("hits", "min_peaks = 2.5", ["[hits]", "min_peaks", "2.5", "integer"]),
    ("peaks", 'min_snr = "six"', ["[peaks]", "min_snr", "'six'", "number"]),
    ("peaks", "min_snr = true", ["[peaks]", "min_snr", "true", "number"]),
]


@pytest.mark.parametrize("section, line, fragments", STRICT_CASES)
def test_strict_values_name_file_section_key_value_and_expectation(tmp_path, section, line,
                                                                   fragments):
    path = tmp_path / "trial.toml"
    path.write_text(f"[{section}]\n{line}\n")
    with pytest.raises(ParamsError) as exc:
        Params.load(path)
    message = str(exc.value)
    assert "trial.toml" in message
    for fragment in fragments:
        assert fragment in message, message


def test_template_uncommented_gives_the_defaults_and_its_cell(tmp_path):
    text = Params.template()
    setting = re.compile(r"^# (\[\w+\]|\w+ = .*)$")
    body = "\n".join(line[2:] for line in text.splitlines()
                     if setting.match(line) and "(not set by default)" not in line
                     and not line.startswith("# file ="))
    path = tmp_path / "trial.toml"
    path.write_text(body)
    params = Params.load(path)
    assert params.replace(cell=None, symmetry=None) == Params()
    assert params.cell.parameters == pytest.approx((79.1, 79.1, 37.9, 90, 90, 90))
    assert params.cell.lattice_type == "tetragonal"
