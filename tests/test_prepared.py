"""The one-call functions reuse their prepared objects, and only when they may."""

import threading

import numpy as np

import sxlab as sx
from sxlab._prepared import PreparedCache
from sxlab.geometry import builtin_geometry


def counting_cache(size=2):
    built = []

    def build(geometry, mask, *key):
        built.append(key)
        return object()

    return PreparedCache(build, size=size), built


def test_reuse_needs_the_same_geometry_mask_and_parameters():
    cache, built = counting_cache()
    det = builtin_geometry("eiger1m")
    mask = sx.mask_from_geometry(det)
    first = cache.get(det, mask, "p")
    assert cache.get(det, mask, "p") is first
    assert cache.get(builtin_geometry("eiger1m"), mask, "p") is first  # an equal geometry
    assert cache.get(det, sx.mask_from_geometry(det), "p") is first  # an equal mask
    assert cache.get(det, mask, "q") is not first  # other parameters
    assert cache.get(det.with_clen(0.2), mask, "p") is not first
    assert len(built) == 3
    # A writable array changed in place since is not reused.
    arr = mask.good.copy()
    a = cache.get(det, arr, "p")
    assert cache.get(det, arr, "p") is a
    arr[5, 5] = not arr[5, 5]
    assert cache.get(det, arr, "p") is not a
    assert cache.get(det, None, "p") is not cache.get(det, arr, "p")


def test_bounded_and_per_thread():
    cache, built = counting_cache(size=2)
    det = builtin_geometry("eiger1m")
    a, b = cache.get(det, None, 1), cache.get(det, None, 2)
    cache.get(det, None, 3)  # evicts 1, the least recently used
    assert cache.get(det, None, 2) is b and cache.get(det, None, 1) is not a
    other = []
    t = threading.Thread(target=lambda: other.append(cache.get(det, None, 2)))
    t.start()
    t.join()
    assert other[0] is not b  # prepared objects are not shared between threads
    cache.clear()
    assert cache.get(det, None, 2) is not b


def test_one_call_functions_equal_the_prepared_objects(rng):
    run = sx.datasets.load("lysozyme-sample", progress=False)
    hits = sx.datasets.truth("lysozyme-sample").frames.query("hit").frame.tolist()
    geom = run.geometry
    mask = sx.mask_from_geometry(geom)
    finder = sx.PeakFinder(geom, mask, adc_threshold=3.0, min_snr=6.0)
    for i in (hits[0], 0, hits[0]):
        image, bad = run.read(i)
        one = sx.find_peaks(image, geom, mask, bad=bad, adc_threshold=3.0, min_snr=6.0)
        assert one.equals(finder(image, bad))
    cell = sx.UnitCell(79.1, 79.1, 37.9, 90, 90, 90, space_group="P 43 21 2")
    image, bad = run.read(hits[0])
    peaks = finder(image, bad, frame=hits[0])
    xtals = sx.index(peaks, geom, cell)
    assert xtals.equals(sx.Indexer(geom, cell)(peaks)) and len(xtals) == 1
    refl = sx.integrate(image, geom, xtals, mask=mask, bad=bad, radii=(3, 4, 7))
    assert refl.equals(sx.Integrator(geom, mask, radii=(3, 4, 7))(image, xtals, bad))
    # Another mask content gives another result: the cache does not return a stale finder.
    arr = mask.good.copy()
    before = sx.find_peaks(image, geom, arr, bad=bad, adc_threshold=3.0, min_snr=6.0)
    arr[:, : geom.data_shape[-1] // 2] = False
    after = sx.find_peaks(image, geom, arr, bad=bad, adc_threshold=3.0, min_snr=6.0)
    assert len(after) < len(before) and (after.fs >= geom.data_shape[-1] // 2).all()
    assert np.isfinite(after.d_A).all()
