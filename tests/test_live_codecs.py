"""EIGER stream v1 / stream2 codecs, detector blob codecs and the replay detector's rate."""

from __future__ import annotations

import json
import struct
import time

import numpy as np
import pytest

from sxlab.io.compression import BlobError, bslz4_problem, compress, decompress
from sxlab.live.eiger import (
    ImageMessage,
    SeriesEnd,
    SeriesHeader,
    StreamMessageError,
    decode,
    decode_stream2,
    encode,
    encode_stream1,
    encode_stream2,
)


def _bitshuffle_reference(a: np.ndarray, block_elems: int) -> bytes:
    """Plain-NumPy bit transposition of each block (what bitshuffle does before LZ4)."""
    out = []
    n = a.size
    itemsize = a.itemsize
    bytes_ = a.view(np.uint8).reshape(n, itemsize)
    for start in range(0, n - n % 8, block_elems):
        size = min(block_elems, (n - start) - (n - start) % 8)
        if size < 8:
            break
        blk = bytes_[start:start + size]                       # (size, itemsize)
        bits = np.unpackbits(blk, axis=1, bitorder="little")   # (size, 8*itemsize)
        bits = bits.reshape(size, itemsize, 8).transpose(1, 2, 0)  # byte, bit, element
        out.append(np.packbits(bits.reshape(itemsize * 8, size), axis=1,
                               bitorder="little").tobytes())
    return b"".join(out)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint32"])
@pytest.mark.parametrize("shape", [(13,), (37, 41), (200, 301)])
def test_bslz4_matches_a_numpy_reference(rng, dtype, shape):
    import lz4.block

    a = rng.integers(0, 50, size=shape).astype(dtype)
    blob = compress(a, "bslz4")
    total, block = struct.unpack(">QI", blob[:12])
    assert total == a.nbytes and block == 8192
    assert bslz4_problem(blob, a.nbytes, a.itemsize) is None
    # Walk the blocks by hand: each one LZ4-decodes to the reference bit transposition.
    elems = block // a.itemsize
    flat = a.reshape(-1)
    pos, start, got = 12, 0, []
    n_full = flat.size - flat.size % 8
    while start < n_full:
        size = min(elems, n_full - start)
        (length,) = struct.unpack(">I", blob[pos:pos + 4])
        got.append(lz4.block.decompress(blob[pos + 4:pos + 4 + length],
                                        uncompressed_size=size * a.itemsize))
        pos += 4 + length
        start += size
    assert b"".join(got) == _bitshuffle_reference(flat, elems)
    assert blob[pos:] == flat[n_full:].tobytes()
    np.testing.assert_array_equal(decompress(blob, "bslz4", shape, dtype), a)


def test_bslz4_test_vector_from_the_format_notes():
    blob = compress(np.arange(20, dtype="<u2"), "bslz4")
    assert blob.hex() == ("000000000000002800002000" "00000012"
                          "9eaaaaccccf0f000ff000100500000000000" "1000110012001300")


@pytest.mark.parametrize("encoding", ["none", "lz4", "lz4-hdf5", "bslz4"])
def test_every_encoding_round_trips(rng, encoding):
    a = rng.integers(0, 2**16, size=(61, 53), dtype=np.uint16)
    np.testing.assert_array_equal(decompress(compress(a, encoding), encoding, a.shape, a.dtype),
                                  a)


def test_lz4_hdf5_stores_incompressible_blocks_raw(rng):
    a = rng.integers(0, 2**32, size=1000, dtype=np.uint32)   # random: does not compress
    blob = compress(a, "lz4-hdf5")
    total, block = struct.unpack(">QI", blob[:12])
    (length,) = struct.unpack(">I", blob[12:16])
    assert total == block == length == a.nbytes
    np.testing.assert_array_equal(decompress(blob, "lz4-hdf5", a.shape, a.dtype), a)


@pytest.mark.parametrize("encoding,cut,match", [
    ("bslz4", 10, "shorter than its 12-byte header"),
    ("bslz4", -5, "block lengths add up"),
    ("lz4", -5, "does not decode"),
    ("lz4-hdf5", -5, "lz4"),
    ("none", -2, "raw blob"),
])
def test_truncated_blobs_are_named_errors(rng, encoding, cut, match):
    a = rng.integers(0, 100, size=(40, 40)).astype(np.uint16)
    blob = compress(a, encoding)
    with pytest.raises(BlobError, match=match):
        decompress(blob[:cut], encoding, a.shape, a.dtype)


def test_bslz4_of_the_wrong_frame_size_is_refused(rng):
    blob = compress(np.zeros((10, 10), np.uint16), "bslz4")
    with pytest.raises(BlobError, match="header announces 200 bytes, the frame has 400"):
        decompress(blob, "bslz4", (20, 10), np.uint16)
    with pytest.raises(ValueError, match="unknown blob encoding"):
        decompress(blob, "zstd", (10, 10), np.uint16)


# ------------------------------------------------------------------------ messages
def _header(detail="all", shape=(6, 5)):
    mask = np.zeros(shape, np.uint32)
    mask[1, 2] = 1
    return SeriesHeader(series=3, detail=detail,
                        config={"beam_center_x": 2.5, "beam_center_y": 3.0,
                                "detector_distance": 0.12, "x_pixel_size": 75e-6,
                                "y_pixel_size": 75e-6, "wavelength": 1.0,
                                "x_pixels_in_detector": shape[1],
                                "y_pixels_in_detector": shape[0], "nimages": 4,
                                "frame_time": 0.01, "bit_depth_image": 16},
                        pixel_mask=mask if detail == "all" else None,
                        flatfield=np.ones(shape, np.float32) if detail == "all" else None,
                        appendix=json.dumps({"run": "r1"}))


@pytest.mark.parametrize("detail,n_parts", [("none", 2), ("basic", 3), ("all", 9)])
def test_stream1_header_parts_follow_header_detail(detail, n_parts):
    hdr = _header(detail)
    parts = encode_stream1(hdr)
    assert len(parts) == n_parts  # + 1 appendix part
    back = decode(parts)
    assert isinstance(back, SeriesHeader)
    assert back.series == 3 and back.detail == detail
    assert back.appendix_json() == {"run": "r1"}
    if detail == "none":
        assert back.config == {}
    else:
        assert back.config["detector_distance"] == 0.12 and back.shape == (6, 5)
    if detail == "all":
        np.testing.assert_array_equal(back.pixel_mask, hdr.pixel_mask)
        assert json.loads(parts[4]) == {"htype": "dpixelmask-1.0", "shape": [5, 6],
                                        "type": "uint32"}


def test_stream2_start_message_maps_to_simplon_names():
    hdr = _header("all")
    back = decode([encode_stream2(hdr)])
    assert encode_stream2(hdr)[:3] == b"\xd9\xd9\xf7"
    for k in ("beam_center_x", "x_pixel_size", "wavelength", "nimages",
              "x_pixels_in_detector", "detector_distance", "frame_time"):
        assert back.config[k] == hdr.config[k], k
    np.testing.assert_array_equal(back.pixel_mask, hdr.pixel_mask)
    assert back.appendix_json() == {"run": "r1"}


@pytest.mark.parametrize("fmt,encoding", [("stream1", "bslz4"), ("stream1", "lz4"),
                                          ("stream1", "none"), ("stream2", "bslz4"),
                                          ("stream2", "lz4-hdf5"), ("stream2", "none")])
@pytest.mark.parametrize("dtype", ["uint16", "uint32"])
def test_image_messages_round_trip_with_the_blob_untouched(rng, fmt, encoding, dtype):
    a = rng.integers(0, 1000, size=(7, 9)).astype(dtype)
    blob = compress(a, encoding)
    msg = ImageMessage(series=3, frame=11, shape=a.shape, dtype=dtype, encoding=encoding,
                       blob=blob, start_time_s=0.11, stop_time_s=0.12, real_time_s=0.0099)
    back = decode(encode(msg, fmt))
    assert back.blob == blob and back.encoding == encoding
    assert (back.series, back.frame, back.shape, back.dtype) == (3, 11, (7, 9), dtype)
    assert back.start_time_s == pytest.approx(0.11) and back.real_time_s == pytest.approx(
        0.0099)
    np.testing.assert_array_equal(back.pixels(), a)
    end = decode(encode(SeriesEnd(3), fmt))
    assert isinstance(end, SeriesEnd) and end.series == 3


def test_stream1_dimage_d_part_is_as_the_detector_writes_it():
    blob = compress(np.zeros((4, 6), np.uint32), "bslz4")
    parts = encode_stream1(ImageMessage(1, 0, (4, 6), "uint32", "bslz4", blob))
    assert json.loads(parts[1]) == {"htype": "dimage_d-1.0", "shape": [6, 4],
                                    "type": "uint32", "encoding": "bs32-lz4<",
                                    "size": len(blob)}


def _v1_image(blob_len_field=None, encoding="bs16-lz4<", blob=None, head=None):
    blob = compress(np.zeros((4, 6), np.uint16), "bslz4") if blob is None else blob
    return [head or json.dumps({"htype": "dimage-1.0", "series": 5, "frame": 9}).encode(),
            json.dumps({"htype": "dimage_d-1.0", "shape": [6, 4], "type": "uint16",
                        "encoding": encoding,
                        "size": len(blob) if blob_len_field is None else blob_len_field}
                       ).encode(),
            blob, json.dumps({"htype": "dconfig-1.0", "start_time": 0, "stop_time": 1,
                              "real_time": 1}).encode()]


@pytest.mark.parametrize("parts,match,frame", [
    ([b"{not json"], "first part is not valid JSON", None),
    (_v1_image(blob_len_field=3), "dimage_d says size 3", 9),
    (_v1_image(encoding="bs16-zstd<"), "unknown encoding 'bs16-zstd<'", 9),
    (_v1_image(encoding="bs32-lz4<"), "does not match pixel type uint16", 9),
    (_v1_image()[:2], "image message has 2 parts", 9),
    ([json.dumps({"htype": "dheader-1.0", "series": 5, "header_detail": "all"}).encode()],
     "needs 8 parts", None),
    ([json.dumps({"htype": "dfoo-1.0", "series": 5}).encode()], "unknown htype", None),
])
def test_malformed_stream1_messages_name_series_and_frame(parts, match, frame):
    with pytest.raises(StreamMessageError, match=match) as info:
        decode(parts)
    assert info.value.frame == frame
    if frame is not None:
        assert str(info.value).startswith("series 5, frame 9: ")


def test_truncated_blob_is_reported_when_pixels_are_needed():
    blob = compress(np.arange(24, dtype=np.uint16).reshape(4, 6), "bslz4")
    msg = decode(_v1_image(blob=blob[:-6]))       # size field consistent with the blob
    with pytest.raises(StreamMessageError, match="series 5, frame 9: bitshuffle-LZ4 blob"):
        msg.pixels()


def test_malformed_stream2_messages_are_named_errors():
    import cbor2

    with pytest.raises(StreamMessageError, match="self-describe tag"):
        decode_stream2(b"\xa1\x61a\x01")
    with pytest.raises(StreamMessageError, match="not valid CBOR"):
        decode([b"\xd9\xd9\xf7\xbf\x61"])
    msg = {"type": "image", "series_id": 2, "image_id": 4,
           "data": {"t1": cbor2.CBORTag(40, [[2, 2], cbor2.CBORTag(
               69, cbor2.CBORTag(56500, ["zstd", 2, b"xx"]))])}}
    with pytest.raises(StreamMessageError, match="series 2, frame 4: unknown compression"):
        decode([cbor2.dumps(cbor2.CBORTag(55799, msg))])
    with pytest.raises(StreamMessageError, match="unknown stream2 message type 'bogus'"):
        decode([cbor2.dumps(cbor2.CBORTag(55799, {"type": "bogus"}))])


# -------------------------------------------------------------------------- replay
def test_replay_serves_a_run_at_the_asked_rate_without_recompressing(tmp_path):
    import subprocess
    import sys

    import zmq

    import sxlab as sx
    from sxlab.live.server import free_port

    run = sx.open_run("datasets/samples/lysozyme-sample_master.h5")
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    log = tmp_path / "replay.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "sxlab", "replay", str(run.files[0]),
                                 "--endpoint", endpoint, "--rate", "50", "--frames", "100",
                                 "--loop", "--preload"], stdout=fh, stderr=subprocess.STDOUT)
    sock = zmq.Context.instance().socket(zmq.PULL)
    sock.connect(endpoint)
    got, times = [], []
    try:
        while True:
            assert sock.poll(30_000), "replay stopped sending"
            msg = decode(sock.recv_multipart())
            times.append(time.perf_counter())
            got.append(msg)
            if isinstance(msg, SeriesEnd):
                break
        assert proc.wait(30) == 0
    finally:
        sock.close(0)
        if proc.poll() is None:
            proc.kill()
    hdr, images = got[0], got[1:-1]
    assert isinstance(hdr, SeriesHeader) and hdr.detail == "all"
    assert hdr.appendix_json()["run"] == run.name and "geometry" in hdr.appendix_json()
    np.testing.assert_array_equal(hdr.pixel_mask != 0, run.pixel_mask())
    assert [m.frame for m in images] == list(range(100))
    assert images[9].blob == run.read_compressed(9 % len(run))     # sent as stored
    sent = float(log.read_text().split("sent at ")[1].split()[0])
    assert sent == pytest.approx(50.0, rel=0.01)                   # as sent
    rx = (len(images) - 11) / (times[-2] - times[11])
    assert rx == pytest.approx(50.0, rel=0.05)                     # as received
