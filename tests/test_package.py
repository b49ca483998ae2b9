import subprocess
import sys

import pytest

import sxlab
from sxlab import cli


def test_version():
    assert sxlab.__version__.count(".") >= 2


def test_cli_version(capsys):
    assert cli.main(["version"]) == 0
    assert capsys.readouterr().out.strip() == f"sxlab {sxlab.__version__}"


def test_cli_requires_command(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([])
    assert exc.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


def test_python_m_sxlab():
    proc = subprocess.run(
        [sys.executable, "-m", "sxlab", "version"], capture_output=True, text=True, check=True
    )
    assert proc.stdout.strip() == f"sxlab {sxlab.__version__}"


def test_submodules_are_lazy_attributes():
    assert sxlab.cli is cli
    assert "cli" in dir(sxlab)
    assert not hasattr(sxlab, "no_such_module")
    with pytest.raises(AttributeError, match="no_such_module"):
        sxlab.no_such_module  # noqa: B018


def test_stage_functions_are_plain_functions_with_their_signature_and_doc():
    """``sx.index``, ``sx.integrate``, ``sx.merge`` are the functions, whatever was imported
    first; their modules have other names."""
    script = """
import inspect, pydoc, sys, types
import sxlab.indexing, sxlab.integration, sxlab.merging   # modules first
import sxlab as sx
for name, module in (("index", "indexing"), ("integrate", "integration"),
                     ("merge", "merging")):
    fn = getattr(sx, name)
    assert isinstance(fn, types.FunctionType), (name, type(fn))
    assert fn is getattr(getattr(sx, module), name)
    params = list(inspect.signature(fn).parameters)
    assert params[:2] != ["args", "kwargs"], params
    doc = pydoc.render_doc(fn)
    assert fn.__doc__.splitlines()[0] in doc
    print(name, params)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = dict(line.split(" ", 1) for line in proc.stdout.strip().splitlines())
    assert out["index"].startswith("['peaks', 'geometry', 'cell'")
    assert out["integrate"].startswith("['image', 'geometry', 'crystals'")
    assert "'peaks'" not in out["integrate"]
    assert out["merge"].startswith("['reflections', 'symmetry'")
    assert sxlab.merge.__doc__.startswith("Scale and merge")
    assert not hasattr(sxlab, "_callable")
    with pytest.raises(TypeError):
        sxlab.integrate()  # the function's own signature is enforced


def test_demo_summary_on_the_bundled_sample():
    from sxlab import demo

    table = demo.summarize("lysozyme-sample", progress=False, executor="serial")
    value = table.set_index("quantity").value
    assert value["frames processed / failed"] == "8 / 0"
    assert value["hit decisions agreeing with truth"] == "100.0 %"
    assert float(value["recall of true spots ≥ 100 photons"]) > 0.9
    assert value["indexed hits"] == "4 (100 %)"
    assert float(value["CC(I, true photons), spots ≥ 200 photons"].split()[0]) > 0.95


def test_cli_process_stats_and_profile(tmp_path, capsys):
    import sxlab as sx
    from sxlab.params import Params

    run = sx.datasets.load("lysozyme-sample", progress=False)
    params = Params(cell=sx.UnitCell(79.1, 79.1, 37.9, 90, 90, 90,
                                     space_group="P 43 21 2"))
    params = params.replace(peaks={"adc_threshold": 3.0, "min_snr": 6.0})
    ptoml = params.save(tmp_path / "trial.toml")
    out = tmp_path / "out"
    assert cli.main(["process", run.files[0], "--params", str(ptoml), "--out", str(out),
                     "-j", "1", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "indexed" in printed and "hits" in printed
    assert cli.main(["stats", str(out)]) == 0
    stats = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines())
    assert int(stats["frames"]) == 8 and int(stats["indexed"]) == 4
    png = tmp_path / "profile.png"
    assert cli.main(["profile", str(out), "-o", str(png), "--block", "2"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
