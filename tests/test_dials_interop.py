"""NXmx interoperability with DIALS: Debian's ``dials`` reads what sxlab writes, and back.

Each test writes a run with sxlab, imports it with ``dials.import`` and dumps the models
DIALS built (``tests/dials_dump.py``, run by Debian's Python), then compares them with
sxlab's geometry panel by panel: every corner to 0.01 mm, the pixel axes to 0.01 degree,
distance and beam centre, wavelength, trusted range, static mask and pixel values.
DIALS and the bitshuffle HDF5 plugin are installed by ``.ci/services.d/dials.sh``.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import require_service

from sxlab.geometry import builtin_geometry
from sxlab.io.dials import read_dials_expt, read_dials_geometry
from sxlab.io.hdf5 import open_run
from sxlab.io.nxmx import NXmxWriter, read_nxmx_geometry

pytestmark = pytest.mark.service

DIALS_PYTHON = "/usr/bin/python3"
DUMP = Path(__file__).with_name("dials_dump.py")
BSHUF_PLUGIN = "/usr/lib/*/hdf5/serial/plugins/libh5bshuf.so"
TO_IMGCIF_MM = np.diag([-1.0, 1.0, -1.0]) * 1000.0  # lab (m) -> DIALS frame (mm)
LAYOUTS = ["eiger4m", "eiger16m", "mpccd", "agipd"]


def _require_dials() -> None:
    ok = (shutil.which("dials.import") is not None and os.path.exists(DIALS_PYTHON)
          and bool(glob.glob(BSHUF_PLUGIN)))
    require_service("dials (Debian packages dials, bitshuffle)", ok)


def _dials(args: list[str], cwd: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(cwd), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)
    if proc.returncode:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")


def dials_models(master: Path, work: Path, *, frames: int = 1, extra: tuple = ()):
    """Import ``master`` with dials.import and dump DIALS's models (summary, arrays)."""
    work.mkdir(exist_ok=True)
    _dials(["dials.import", str(master), "output.experiments=imported.expt",
            "output.log=import.log"], work)
    _dials([DIALS_PYTHON, str(DUMP), "imported.expt", "dump", "--frames", str(frames),
            *extra], work)
    summary = json.loads((work / "dump.json").read_text())
    with np.load(work / "dump.npz") as z:
        arrays = {k: z[k] for k in z.files}
    return summary, arrays


def _angle_deg(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    c = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
    return float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))))


def _dials_value(raw: np.ndarray) -> np.ndarray:
    """Pixel values as dxtbx gives them: the two top values of the bit depth are -1, -2."""
    out = raw.astype(np.int64)
    top = np.iinfo(raw.dtype).max
    out[raw == top] = -1
    out[raw == top - 1] = -2
    return out


def assert_dials_sees(summary, arrays, det, *, saturation, pixel_mask, frames) -> None:
    """DIALS's detector, beam, mask and pixels are sxlab's (panel order = module order)."""
    assert summary["format_class"] == "FormatNXmx"
    assert summary["file_indices"] == list(range(len(frames)))
    assert summary["beam"]["wavelength_A"] == pytest.approx(det.beam.wavelength_A, rel=1e-9)
    np.testing.assert_allclose(summary["beam"]["sample_to_source"], [0, 0, 1], atol=1e-12)
    assert len(summary["panels"]) == det.n_panels
    for k, (p, d) in enumerate(zip(det.panels, summary["panels"], strict=True)):
        where = f"panel {k} ({p.name})"
        assert d["name"].rsplit("/", 1)[-1] in (p.name, f"module_{p.name}"), where
        assert d["image_size"] == [p.width, p.height], where
        np.testing.assert_allclose(d["pixel_size_mm"], [1e3 / p.res] * 2, rtol=1e-12)
        corner, fs, ss = p.corner_m(), p.fs_m(), p.ss_m()
        ours = [corner + fs * i * p.width + ss * j * p.height for j in (0, 1) for i in (0, 1)]
        o, f, s = (np.asarray(d[k2]) for k2 in ("origin_mm", "fast_axis", "slow_axis"))
        px = np.asarray(d["pixel_size_mm"])
        theirs = [o + f * px[0] * i * p.width + s * px[1] * j * p.height
                  for j in (0, 1) for i in (0, 1)]
        np.testing.assert_allclose(theirs, [TO_IMGCIF_MM @ c for c in ours], rtol=0,
                                   atol=0.01, err_msg=f"{where}: corners (mm)")
        assert _angle_deg(f, TO_IMGCIF_MM @ p.fs) < 0.01, where
        assert _angle_deg(s, TO_IMGCIF_MM @ p.ss) < 0.01, where
        assert d["distance_mm"] == pytest.approx(abs(corner @ p.normal()) * 1e3, abs=0.01)
        bc_fs, bc_ss = det.beam_center_px(k)
        np.testing.assert_allclose(d["beam_centre_px"], [bc_fs - p.min_fs, bc_ss - p.min_ss],
                                   rtol=0, atol=0.01 / px[0], err_msg=f"{where}: beam centre")
        assert d["trusted_range"] == [-1.0, float(saturation)], where
        assert d["material"] == "Si" and d["thickness_mm"] == pytest.approx(0.45)
        sl = det.panel_slice(k)
        np.testing.assert_array_equal(arrays[f"static_mask_{k}"], pixel_mask[sl] == 0,
                                      err_msg=f"{where}: static mask")
        for i, frame in enumerate(frames):
            key = f"data_{i}_{k}"
            if key in arrays:
                np.testing.assert_array_equal(arrays[key], _dials_value(frame[sl]),
                                              err_msg=f"{where}, frame {i}: pixels")


def layout_run(name: str, rng, n_frames: int | None = None):
    """A detector, frames with flagged and saturated pixels, and a pixel mask (two frames,
    one of the 16M)."""
    det = builtin_geometry(name)
    if n_frames is None:
        n_frames = 1 if name == "eiger16m" else 2
    shape = det.data_shape
    frames = rng.integers(0, 40, size=(n_frames, *shape), dtype=np.uint16)
    flat = frames.reshape(n_frames, -1)
    for i in range(n_frames):
        idx = rng.choice(flat.shape[1], 40, replace=False)
        flat[i, idx[:20]] = 65535
        flat[i, idx[20:30]] = 65534
        flat[i, idx[30:]] = 1000
    pixel_mask = det.bad_pixel_mask().astype(np.uint32)
    pixel_mask.reshape(-1)[rng.choice(pixel_mask.size, 500, replace=False)] |= 16
    return det, frames, pixel_mask


@pytest.mark.parametrize("name", LAYOUTS)
def test_dials_reads_batch_writer(tmp_path, rng, name):
    _require_dials()
    det, frames, pixel_mask = layout_run(name, rng)
    master = tmp_path / f"{name}_master.h5"
    with NXmxWriter(master, det, pixel_mask=pixel_mask, saturation_value=1000,
                    frames_per_file=1) as w:
        w.write_many(frames)
    summary, arrays = dials_models(master, tmp_path / "dials", frames=len(frames))
    assert_dials_sees(summary, arrays, det, saturation=1000, pixel_mask=pixel_mask,
                      frames=frames)
    # sxlab reads back the same frames and geometry (stacked where the source was).
    run = open_run(master)
    assert run.frame_shape == det.data_shape and run.geometry == det
    np.testing.assert_array_equal(run.read_raw(len(frames) - 1), frames[-1])
    _, bad = run.read(0)
    np.testing.assert_array_equal(bad.values, (frames[0] >= 65534) | (pixel_mask != 0))


@pytest.mark.parametrize(("name", "refined"), [("mpccd", True), ("agipd", False)])
def test_geometry_from_dials_files(tmp_path, rng, name, refined):
    """.expt from dials.import, a refined-like (moved) .expt and a dials.export .nxs."""
    _require_dials()
    det, frames, pixel_mask = layout_run(name, rng, n_frames=1)
    master = tmp_path / "m_master.h5"
    with NXmxWriter(master, det, pixel_mask=pixel_mask) as w:
        w.write_many(frames)
    work = tmp_path / "dials"
    work.mkdir()
    _dials(["dials.import", str(master), "output.experiments=imported.expt"], work)
    fs = rng.uniform(0, 64, 50)
    ss = rng.uniform(0, 64, 50)
    pid = rng.integers(0, det.n_panels, 50)
    same = read_dials_geometry(work / "imported.expt", like=det)
    assert same.data_shape == det.data_shape and same.panel_names == det.panel_names
    np.testing.assert_allclose(same.pixel_to_lab(fs, ss, panel=pid),
                               det.pixel_to_lab(fs, ss, panel=pid), rtol=0, atol=1e-9)
    assert same.beam.wavelength_A == pytest.approx(det.beam.wavelength_A, rel=1e-12)
    if not refined:
        return

    # Every group and panel turned and shifted: sxlab composes the hierarchy as dxtbx.
    _dials([DIALS_PYTHON, str(DUMP), "imported.expt", "moved", "--perturb", "5",
            "--for-export"], work)
    moved = read_dials_expt(work / "moved.expt")
    dumped = json.loads((work / "moved.json").read_text())["panels"]
    for p, d in zip(moved.panels, dumped, strict=True):
        np.testing.assert_allclose(TO_IMGCIF_MM @ p.corner_m(), d["origin_mm"], atol=1e-9)
        np.testing.assert_allclose(TO_IMGCIF_MM @ p.fs / 1e3, d["fast_axis"], atol=1e-12)
        np.testing.assert_allclose(TO_IMGCIF_MM @ p.ss / 1e3, d["slow_axis"], atol=1e-12)
    assert max(np.abs(a.corner_m() - b.corner_m()).max()
               for a, b in zip(moved.panels, same.panels, strict=True)) > 1e-4

    _dials(["dials.export", "moved.expt", "moved.refl", "format=nxs",
            "nxs.hklout=moved.nxs"], work)
    exported = read_dials_geometry(work / "moved.nxs", like=det)
    back = read_dials_geometry(work / "moved.expt", like=det)
    np.testing.assert_allclose(exported.pixel_to_lab(fs, ss, panel=pid),
                               back.pixel_to_lab(fs, ss, panel=pid), rtol=0, atol=1e-9)
    plain = read_nxmx_geometry(work / "moved.nxs")
    assert plain.n_panels == det.n_panels and len(plain.data_shape) == 2


# ----------------------------------------------------------------- the live writer
def publish_run(broker, name, det, frames, pixel_mask, *, saturation):
    """A run in the broker as the ingest leaves it: header, frame entries, end."""
    from sxlab.io import write_geom
    from sxlab.io.compression import compress
    from sxlab.live.broker import HEADER_ID, frame_id

    key = broker.key(name)
    c = broker.client
    config = {"countrate_correction_count_cutoff": saturation, "sensor_material": "Si",
              "sensor_thickness": 450e-6, "frame_time": 0.01, "count_time": 0.0099,
              "nimages": len(frames)}
    c.hset(f"{key}:header", mapping={
        "run": name, "series": 1, "config": json.dumps(config),
        "appendix": json.dumps({"run": name, "geometry": write_geom(det)}),
        "shape": json.dumps(list(det.data_shape)),
        "pixel_mask": compress(pixel_mask.astype(np.uint32), "bslz4"), "created": 1.0e9})
    c.xadd(key, {"type": "header", "series": 1}, id=HEADER_ID)
    blobs = []
    for f, frame in enumerate(frames):
        blobs.append(compress(frame, "bslz4"))
        c.xadd(key, {"type": "image", "frame": f, "series": 1,
                     "shape": json.dumps(list(frame.shape)), "dtype": str(frame.dtype),
                     "encoding": "bslz4", "data": blobs[-1]}, id=frame_id(f))
    end = frame_id(len(frames))
    c.xadd(key, {"type": "end", "series": 1, "n_frames": len(frames)}, id=end)
    c.hset(f"{key}:info", mapping={"state": "ended", "n_frames": len(frames),
                                    "frames_in": len(frames), "end_id": end,
                                    "last_id": frame_id(len(frames) - 1)})
    broker.register_run(key, 1)
    return key, blobs


@pytest.mark.parametrize("name", LAYOUTS)
def test_dials_reads_live_writer(tmp_path, rng, redis_url, name):
    import uuid

    from sxlab.live.broker import Broker
    from sxlab.live.writer import LiveWriter

    _require_dials()
    det, frames, pixel_mask = layout_run(name, rng)
    with Broker(redis_url, beamtime=f"t{uuid.uuid4().hex[:8]}") as broker:
        key, blobs = publish_run(broker, name, det, frames, pixel_mask, saturation=1000)
        writer = LiveWriter(broker, key, tmp_path / "raw", frames_per_file=1)
        writer.run(idle_timeout_s=60)
        assert writer.done
    master = tmp_path / "raw" / f"{name}_master.h5"
    summary, arrays = dials_models(master, tmp_path / "dials", frames=len(frames))
    assert_dials_sees(summary, arrays, det, saturation=1000, pixel_mask=pixel_mask,
                      frames=frames)
    run = open_run(master)
    assert run.frame_shape == det.data_shape and run.geometry == det
    for i, blob in enumerate(blobs):
        assert run.read_compressed(i) == blob
