"""DECTRIS EIGER ZeroMQ stream messages: stream v1 ("legacy" JSON multipart) and stream2 (CBOR).

A detector control unit binds a ZeroMQ PUSH socket and sends, per series, one header
message (at ``arm``), one image message per frame, and one end message (at ``disarm``).
This module turns those messages into three plain objects and back:

:class:`SeriesHeader`
    series id, ``header_detail``, the detector configuration (SIMPLON parameter names:
    ``beam_center_x``, ``detector_distance``, ``wavelength``, ``nimages`` ...), the pixel
    mask, flat field and count-rate table when sent, and the ``header_appendix``.
:class:`ImageMessage`
    series, frame number, shape ``(ny, nx)`` in NumPy order, dtype, blob encoding
    (``bslz4``, ``lz4``, ``lz4-hdf5``, ``none``; see :mod:`sxlab.io.compression`), the
    blob exactly as sent, and the detector's start/stop/real times in seconds. The blob
    stays compressed until :meth:`ImageMessage.pixels` is called.
:class:`SeriesEnd`
    series id.

Stream v1 messages are lists of frames (``recv_multipart``): ``dheader-1.0`` with 1, 2
or 8 parts for ``header_detail`` none/basic/all (+1 appendix), ``dimage-1.0`` +
``dimage_d-1.0`` + blob + ``dconfig-1.0`` (+1 appendix), ``dseries_end-1.0``. Stream2
messages are one CBOR item each (self-describe tag 55799), with typed arrays (RFC 8746),
multi-dimensional arrays (tag 40) and the DECTRIS compression tag 56500 wrapping
``[algorithm, element size, payload]``.

Any malformed message raises :class:`StreamMessageError`, which names the series and
frame when they could be read, and says what was expected.

Examples
--------
>>> import numpy as np
>>> from sxlab.io.compression import compress
>>> img = np.arange(12, dtype="<u2").reshape(3, 4)
>>> msg = ImageMessage(series=7, frame=0, shape=(3, 4), dtype="uint16",
...                    encoding="bslz4", blob=compress(img))
>>> parts = encode_stream1(msg)
>>> [json.loads(p)["htype"] for p in (parts[0], parts[1], parts[3])]
['dimage-1.0', 'dimage_d-1.0', 'dconfig-1.0']
>>> back = decode(parts)
>>> back.frame, back.shape, bool((back.pixels() == img).all())
(0, (3, 4), True)
>>> decode(encode_stream2(msg)).encoding
'bslz4'
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

from sxlab.io.compression import BlobError, decompress

__all__ = [
    "FORMATS",
    "ImageMessage",
    "SeriesEnd",
    "SeriesHeader",
    "StreamMessageError",
    "decode",
    "decode_stream1",
    "decode_stream2",
    "encode",
    "encode_stream1",
    "encode_stream2",
]

#: Stream formats: ``stream1`` (legacy JSON multipart), ``stream2`` (CBOR).
FORMATS = ("stream1", "stream2")

_CBOR_MAGIC = b"\xd9\xd9\xf7"
_DTYPES = ("uint8", "uint16", "uint32", "int32", "float32")
_V1_ENCODING = re.compile(r"^(?:bs(?P<bits>8|16|32)-)?(?P<lz4>lz4)?(?P<order>[<>])$")
# RFC 8746 typed-array tags for the little-endian types used here.
_TYPED_TAG = {"uint8": 64, "uint16": 69, "uint32": 70, "int32": 78, "float32": 85}
_TAG_DTYPE = {64: "uint8", 68: "uint8", 69: "uint16", 70: "uint32", 71: "uint64",
              72: "int8", 77: "int16", 78: "int32", 79: "int64", 85: "float32",
              86: "float64"}
# stream2 start-message names of the SIMPLON configuration keys used here.
_V2_NAMES = {
    "image_size_x": "x_pixels_in_detector",
    "image_size_y": "y_pixels_in_detector",
    "pixel_size_x": "x_pixel_size",
    "pixel_size_y": "y_pixel_size",
    "incident_wavelength": "wavelength",
    "incident_energy": "photon_energy",
    "number_of_images": "nimages",
    "detector_description": "description",
    "detector_serial_number": "detector_number",
    "saturation_value": "countrate_correction_count_cutoff",
}
_V2_PLAIN = ("beam_center_x", "beam_center_y", "count_time", "frame_time", "sensor_material",
             "sensor_thickness", "countrate_correction_enabled", "flatfield_enabled",
             "pixel_mask_enabled", "virtual_pixel_interpolation_enabled")


class StreamMessageError(ValueError):
    """A detector message that cannot be decoded.

    Attributes
    ----------
    series : int or None
        Series id, when it could be read.
    frame : int or None
        Frame number, when it could be read.
    reason : str
        What was wrong and what was expected.
    """

    def __init__(self, reason: str, *, series: int | None = None, frame: int | None = None):
        where = []
        if series is not None:
            where.append(f"series {series}")
        if frame is not None:
            where.append(f"frame {frame}")
        prefix = ", ".join(where) or "message"
        super().__init__(f"{prefix}: {reason}")
        self.series = series
        self.frame = frame
        self.reason = reason


@dataclass
class SeriesHeader:
    """The series header (``dheader-1.0`` / stream2 ``start``).

    Attributes
    ----------
    series : int
    detail : {"all", "basic", "none"}
        Stream ``header_detail``.
    config : dict
        Detector configuration under SIMPLON names (lengths in m, wavelength in Å,
        energy in eV, times in s).
    pixel_mask : ndarray of uint32 or None
        ``(ny, nx)``, nonzero = bad (sent with detail ``all``).
    flatfield, countrate_table : ndarray or None
    appendix : str or None
        ``header_appendix`` (sxlab's replay puts JSON there: run name, geometry).
    unique_id : str
        stream2 ``series_unique_id``.
    """

    series: int
    detail: str = "basic"
    config: dict = field(default_factory=dict)
    pixel_mask: np.ndarray | None = None
    flatfield: np.ndarray | None = None
    countrate_table: np.ndarray | None = None
    appendix: str | None = None
    unique_id: str = ""

    @property
    def shape(self) -> tuple[int, int] | None:
        """Frame shape ``(ny, nx)`` from the configuration, if it says."""
        nx, ny = self.config.get("x_pixels_in_detector"), self.config.get("y_pixels_in_detector")
        return (int(ny), int(nx)) if nx and ny else None

    def appendix_json(self) -> dict:
        """The appendix parsed as a JSON object ({} when it is not one)."""
        if not self.appendix:
            return {}
        try:
            value = json.loads(self.appendix)
        except (TypeError, ValueError):
            return {}
        return value if isinstance(value, dict) else {}


@dataclass
class ImageMessage:
    """One frame as the detector sent it (``dimage-1.0`` / stream2 ``image``).

    Attributes
    ----------
    series, frame : int
    shape : tuple of int
        ``(ny, nx)`` in NumPy order.
    dtype : str
        ``uint8``, ``uint16``, ``uint32`` (``int32``, ``float32`` accepted).
    encoding : {"bslz4", "lz4", "lz4-hdf5", "none"}
    blob : bytes or memoryview
        The compressed pixels, untouched.
    start_time_s, stop_time_s, real_time_s : float
        Detector clock: start and stop of the exposure relative to the series start,
        and the exposure time.
    hash : str
        The v1 ``hash`` field (not validated: which part it covers is unspecified).
    appendix : str or None
        ``image_appendix`` / stream2 ``user_data``.
    """

    series: int
    frame: int
    shape: tuple
    dtype: str
    encoding: str
    blob: bytes
    start_time_s: float = 0.0
    stop_time_s: float = 0.0
    real_time_s: float = 0.0
    hash: str = ""
    appendix: str | None = None

    def pixels(self) -> np.ndarray:
        """Decode the blob (raises :class:`StreamMessageError` naming series and frame)."""
        try:
            return decompress(self.blob, self.encoding, self.shape, np.dtype(self.dtype))
        except (BlobError, ValueError) as exc:
            raise StreamMessageError(str(exc), series=self.series, frame=self.frame) from exc


@dataclass
class SeriesEnd:
    """The end-of-series message (``dseries_end-1.0`` / stream2 ``end``)."""

    series: int
    unique_id: str = ""


# --------------------------------------------------------------------------- v1
def _bytes_like(part):
    """``part`` as bytes, or as a byte memoryview when it is a buffer (no copy)."""
    if isinstance(part, bytes):
        return part
    if isinstance(part, memoryview):
        return part.cast("B") if part.format != "B" or part.ndim != 1 else part
    return bytes(part)


def _json_part(part, what: str, series=None, frame=None) -> dict:
    try:
        value = json.loads(bytes(part))
    except (UnicodeDecodeError, ValueError) as exc:
        raise StreamMessageError(f"{what} is not valid JSON ({exc})", series=series,
                                 frame=frame) from exc
    if not isinstance(value, dict):
        raise StreamMessageError(f"{what} is not a JSON object", series=series, frame=frame)
    return value


def _int_field(d: dict, key: str, what: str, series=None, frame=None) -> int:
    value = d.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise StreamMessageError(f"{what} has no integer {key!r} (got {value!r})",
                                 series=series, frame=frame)
    return value


def _v1_encoding(enc: str, dtype: str, series, frame) -> str:
    m = _V1_ENCODING.match(str(enc))
    if m is None:
        raise StreamMessageError(f"unknown encoding {enc!r}; expected '<', 'lz4<' or "
                                 "'bs8-lz4<', 'bs16-lz4<', 'bs32-lz4<'", series=series,
                                 frame=frame)
    if m["order"] != "<":
        raise StreamMessageError(f"big-endian encoding {enc!r} is not supported",
                                 series=series, frame=frame)
    if m["bits"]:
        if not m["lz4"]:
            raise StreamMessageError(f"unknown encoding {enc!r}: bitshuffle without lz4",
                                     series=series, frame=frame)
        bits = 8 * np.dtype(dtype).itemsize
        if int(m["bits"]) != bits:
            raise StreamMessageError(f"encoding {enc!r} does not match pixel type {dtype}",
                                     series=series, frame=frame)
        return "bslz4"
    return "lz4" if m["lz4"] else "none"


def _v1_array(meta_part, blob, htype: str, series) -> np.ndarray:
    meta = _json_part(meta_part, f"{htype} part", series=series)
    try:
        x, y = (int(v) for v in meta["shape"])
        dtype = np.dtype(meta["type"]).newbyteorder("<")
        arr = np.frombuffer(bytes(blob), dtype=dtype)
        return arr.reshape(y, x).copy()
    except (KeyError, TypeError, ValueError) as exc:
        raise StreamMessageError(f"{htype} array does not match its shape/type ({exc})",
                                 series=series) from exc


def decode_stream1(parts) -> SeriesHeader | ImageMessage | SeriesEnd:
    """Decode one stream v1 multipart message (a list of byte strings).

    Raises
    ------
    StreamMessageError
        Bad JSON, an unknown ``htype``, missing parts or fields, an unknown encoding, a
        blob whose size differs from the ``size`` field.
    """
    parts = list(parts)
    if not parts:
        raise StreamMessageError("empty message")
    head = _json_part(parts[0], "first part")
    htype = str(head.get("htype", ""))
    series = head.get("series") if isinstance(head.get("series"), int) else None
    if htype.startswith("dheader"):
        series = _int_field(head, "series", "dheader", series)
        detail = str(head.get("header_detail", "basic"))
        if detail not in ("all", "basic", "none"):
            raise StreamMessageError(f"unknown header_detail {detail!r}", series=series)
        need = {"none": 1, "basic": 2, "all": 8}[detail]
        if len(parts) < need:
            raise StreamMessageError(f"header_detail {detail!r} needs {need} parts, got "
                                     f"{len(parts)}", series=series)
        hdr = SeriesHeader(series=series, detail=detail)
        if need >= 2:
            hdr.config = _json_part(parts[1], "detector configuration", series=series)
        if need == 8:
            hdr.flatfield = _v1_array(parts[2], parts[3], "dflatfield", series)
            hdr.pixel_mask = _v1_array(parts[4], parts[5], "dpixelmask", series)
            hdr.countrate_table = _v1_array(parts[6], parts[7], "dcountrate_table", series)
        if len(parts) > need:
            hdr.appendix = bytes(parts[need]).decode("utf-8", "replace")
        return hdr
    if htype.startswith("dimage"):
        series = _int_field(head, "series", "dimage", series)
        frame = _int_field(head, "frame", "dimage", series)
        if len(parts) < 4:
            raise StreamMessageError(f"image message has {len(parts)} parts, expected 4 "
                                     "(dimage, dimage_d, blob, dconfig)", series=series,
                                     frame=frame)
        d = _json_part(parts[1], "dimage_d part", series, frame)
        try:
            x, y = (int(v) for v in d["shape"][:2])
        except (KeyError, TypeError, ValueError) as exc:
            raise StreamMessageError(f"dimage_d has no [x, y] shape (got "
                                     f"{d.get('shape')!r})", series=series,
                                     frame=frame) from exc
        dtype = str(d.get("type", ""))
        if dtype not in _DTYPES:
            raise StreamMessageError(f"unknown pixel type {dtype!r}; expected one of "
                                     f"{_DTYPES}", series=series, frame=frame)
        encoding = _v1_encoding(d.get("encoding", ""), dtype, series, frame)
        blob = _bytes_like(parts[2])
        size = d.get("size")
        if isinstance(size, int) and size != len(blob):
            raise StreamMessageError(f"blob of {len(blob)} bytes, dimage_d says size "
                                     f"{size}", series=series, frame=frame)
        if encoding == "none" and len(blob) != x * y * np.dtype(dtype).itemsize:
            raise StreamMessageError(f"raw blob of {len(blob)} bytes for {x} x {y} "
                                     f"{dtype}", series=series, frame=frame)
        cfg = _json_part(parts[3], "dconfig part", series, frame)
        ns = 1e-9
        return ImageMessage(
            series=series, frame=frame, shape=(y, x), dtype=dtype, encoding=encoding,
            blob=blob, start_time_s=float(cfg.get("start_time", 0)) * ns,
            stop_time_s=float(cfg.get("stop_time", 0)) * ns,
            real_time_s=float(cfg.get("real_time", 0)) * ns, hash=str(head.get("hash", "")),
            appendix=bytes(parts[4]).decode("utf-8", "replace") if len(parts) > 4 else None,
        )
    if htype.startswith("dseries_end"):
        return SeriesEnd(series=_int_field(head, "series", "dseries_end", series))
    raise StreamMessageError(f"unknown htype {htype!r}; expected dheader-1.0, dimage-1.0 "
                             "or dseries_end-1.0", series=series)


def _v1_config_part(hdr: SeriesHeader) -> bytes:
    return json.dumps(hdr.config).encode()


def encode_stream1(msg) -> list[bytes]:
    """Encode a message as stream v1 multipart frames (the detector's side)."""
    if isinstance(msg, SeriesHeader):
        parts = [json.dumps({"htype": "dheader-1.0", "series": msg.series,
                             "header_detail": msg.detail}).encode()]
        if msg.detail in ("basic", "all"):
            parts.append(_v1_config_part(msg))
        if msg.detail == "all":
            ny, nx = msg.shape or (msg.pixel_mask.shape if msg.pixel_mask is not None
                                   else (0, 0))
            arrays = (("dflatfield-1.0", msg.flatfield, "float32"),
                      ("dpixelmask-1.0", msg.pixel_mask, "uint32"),
                      ("dcountrate_table-1.0", msg.countrate_table, "float32"))
            for htype, arr, typ in arrays:
                a = np.zeros((ny, nx), typ) if arr is None else np.asarray(arr, typ)
                parts.append(json.dumps({"htype": htype, "shape": [a.shape[-1], a.shape[0]],
                                         "type": typ}).encode())
                parts.append(np.ascontiguousarray(a, a.dtype.newbyteorder("<")).tobytes())
        if msg.appendix:
            parts.append(msg.appendix.encode())
        return parts
    if isinstance(msg, ImageMessage):
        blob = bytes(msg.blob)
        bits = 8 * np.dtype(msg.dtype).itemsize
        enc = {"bslz4": f"bs{bits}-lz4<", "lz4": "lz4<", "none": "<"}.get(msg.encoding)
        if enc is None:
            raise ValueError(f"stream v1 cannot carry encoding {msg.encoding!r}")
        ny, nx = msg.shape
        parts = [
            json.dumps({"htype": "dimage-1.0", "series": msg.series, "frame": msg.frame,
                        "hash": msg.hash or hashlib.md5(blob).hexdigest()}).encode(),
            json.dumps({"htype": "dimage_d-1.0", "shape": [nx, ny], "type": msg.dtype,
                        "encoding": enc, "size": len(blob)}).encode(),
            blob,
            json.dumps({"htype": "dconfig-1.0", "start_time": round(msg.start_time_s * 1e9),
                        "stop_time": round(msg.stop_time_s * 1e9),
                        "real_time": round(msg.real_time_s * 1e9)}).encode(),
        ]
        if msg.appendix:
            parts.append(msg.appendix.encode())
        return parts
    if isinstance(msg, SeriesEnd):
        return [json.dumps({"htype": "dseries_end-1.0", "series": msg.series}).encode()]
    raise TypeError(f"cannot encode {type(msg).__name__}")


# --------------------------------------------------------------------------- v2
class _Compressed:
    """Tag 56500 content seen while decoding: [algorithm, elem_size, payload]."""

    __slots__ = ("algorithm", "elem_size", "payload")

    def __init__(self, algorithm, elem_size, payload):
        self.algorithm, self.elem_size, self.payload = algorithm, elem_size, payload


class _Typed:
    __slots__ = ("dtype", "data")

    def __init__(self, dtype, data):
        self.dtype, self.data = dtype, data


class _MultiDim:
    __slots__ = ("dims", "array")

    def __init__(self, dims, array):
        self.dims, self.array = dims, array


def _tag_hook(*args):
    # cbor2 >= 6 calls tag_hook(tag, immutable); older versions tag_hook(decoder, tag).
    tag = args[0] if hasattr(args[0], "tag") else args[1]
    t, v = tag.tag, tag.value
    if t == 56500:
        if not (isinstance(v, (list, tuple)) and len(v) == 3):
            raise StreamMessageError(f"compression tag 56500 holds {type(v).__name__}, "
                                     "expected [algorithm, elem_size, payload]")
        return _Compressed(str(v[0]), int(v[1]), v[2])
    if t in _TAG_DTYPE:
        return _Typed(_TAG_DTYPE[t], v)
    if t == 40:
        if not (isinstance(v, (list, tuple)) and len(v) == 2):
            raise StreamMessageError("multi-dimensional array tag 40 is not [dims, array]")
        return _MultiDim([int(d) for d in v[0]], v[1])
    if t == 1040:
        raise StreamMessageError("column-major arrays (tag 1040) are not supported")
    return v


def _v2_array(value, what: str, series, frame=None) -> np.ndarray:
    """A MultiDimArray as an ndarray (decompressing a compressed payload)."""
    if not isinstance(value, _MultiDim) or not isinstance(value.array, _Typed):
        raise StreamMessageError(f"{what} is not a tag-40 typed array", series=series,
                                 frame=frame)
    data = value.array.data
    shape = tuple(value.dims)
    if isinstance(data, _Compressed):
        enc = {"bslz4": "bslz4", "lz4": "lz4-hdf5"}.get(data.algorithm)
        if enc is None:
            raise StreamMessageError(f"{what}: unknown compression {data.algorithm!r}; "
                                     "expected 'bslz4' or 'lz4'", series=series, frame=frame)
        try:
            return decompress(data.payload, enc, shape, value.array.dtype)
        except BlobError as exc:
            raise StreamMessageError(f"{what}: {exc}", series=series, frame=frame) from exc
    try:
        return np.frombuffer(bytes(data), dtype=np.dtype(value.array.dtype).newbyteorder(
            "<")).reshape(shape).copy()
    except (TypeError, ValueError) as exc:
        raise StreamMessageError(f"{what} does not match its dims {shape}", series=series,
                                 frame=frame) from exc


def _rational(v) -> float:
    if isinstance(v, (list, tuple)) and len(v) == 2 and v[1]:
        return float(v[0]) / float(v[1])
    return float(v) if isinstance(v, (int, float)) else 0.0


def decode_stream2(data: bytes) -> SeriesHeader | ImageMessage | SeriesEnd:
    """Decode one stream2 (CBOR) message.

    Raises
    ------
    StreamMessageError
        Not CBOR, no self-describe tag, an unknown ``type``, missing fields, an unknown
        compression, more or fewer than one image channel.
    """
    import cbor2

    data = _bytes_like(data)
    if bytes(data[:len(_CBOR_MAGIC)]) != _CBOR_MAGIC:
        raise StreamMessageError("stream2 message does not start with the CBOR "
                                 "self-describe tag 55799")
    try:
        msg = cbor2.loads(data, tag_hook=_tag_hook)
    except StreamMessageError:
        raise
    except Exception as exc:  # cbor2.CBORDecodeError and friends
        raise StreamMessageError(f"not valid CBOR ({type(exc).__name__}: {exc})") from exc
    if not hasattr(msg, "get"):
        raise StreamMessageError(f"stream2 message is a {type(msg).__name__}, not a map")
    kind = msg.get("type")
    series = msg.get("series_id") if isinstance(msg.get("series_id"), int) else None
    if kind == "start":
        series = _int_field(msg, "series_id", "start message", series)
        config = {}
        for k, v in msg.items():
            if k in _V2_NAMES:
                config[_V2_NAMES[k]] = v
            elif k in _V2_PLAIN:
                config[k] = v
        trans = msg.get("detector_translation")
        if isinstance(trans, (list, tuple)) and len(trans) == 3:
            config["detector_distance"] = float(trans[2])
            config["detector_translation"] = [float(t) for t in trans]
        if "countrate_correction_count_cutoff" in config:
            config["bit_depth_image"] = 8 * np.dtype(msg.get("image_dtype", "uint16")).itemsize
        hdr = SeriesHeader(series=series, detail="basic", config=config,
                           unique_id=str(msg.get("series_unique_id", "")))
        user = msg.get("user_data")
        if user is not None:
            hdr.appendix = user if isinstance(user, str) else json.dumps(user)
        masks = msg.get("pixel_mask") or {}
        if masks:
            hdr.detail = "all"
            hdr.pixel_mask = _v2_array(next(iter(masks.values())), "pixel_mask", series)
        flat = msg.get("flatfield") or {}
        if flat:
            hdr.flatfield = _v2_array(next(iter(flat.values())), "flatfield", series)
        return hdr
    if kind == "image":
        series = _int_field(msg, "series_id", "image message", series)
        frame = _int_field(msg, "image_id", "image message", series)
        channels = msg.get("data")
        if not hasattr(channels, "values") or len(channels) != 1:
            n = len(channels) if hasattr(channels, "__len__") else 0
            raise StreamMessageError(f"image message has {n} data channels, expected 1",
                                     series=series, frame=frame)
        value = next(iter(channels.values()))
        if not isinstance(value, _MultiDim) or not isinstance(value.array, _Typed):
            raise StreamMessageError("image data is not a tag-40 typed array",
                                     series=series, frame=frame)
        dtype = value.array.dtype
        if dtype not in _DTYPES:
            raise StreamMessageError(f"unknown pixel type {dtype!r}", series=series,
                                     frame=frame)
        payload = value.array.data
        if isinstance(payload, _Compressed):
            encoding = {"bslz4": "bslz4", "lz4": "lz4-hdf5"}.get(payload.algorithm)
            if encoding is None:
                raise StreamMessageError(f"unknown compression {payload.algorithm!r}; "
                                         "expected 'bslz4' or 'lz4'", series=series,
                                         frame=frame)
            blob = bytes(payload.payload)
        else:
            encoding, blob = "none", bytes(payload)
        shape = tuple(value.dims)
        if len(shape) != 2:
            raise StreamMessageError(f"image dims {list(shape)}, expected [height, width]",
                                     series=series, frame=frame)
        if encoding == "none" and len(blob) != shape[0] * shape[1] * np.dtype(dtype).itemsize:
            raise StreamMessageError(f"raw image of {len(blob)} bytes for dims "
                                     f"{list(shape)} {dtype}", series=series, frame=frame)
        user = msg.get("user_data")
        return ImageMessage(
            series=series, frame=frame, shape=shape, dtype=dtype, encoding=encoding,
            blob=blob, start_time_s=_rational(msg.get("start_time")),
            stop_time_s=_rational(msg.get("stop_time")),
            real_time_s=_rational(msg.get("real_time")),
            appendix=None if user is None else (user if isinstance(user, str)
                                                 else json.dumps(user)),
        )
    if kind == "end":
        return SeriesEnd(series=_int_field(msg, "series_id", "end message", series),
                         unique_id=str(msg.get("series_unique_id", "")))
    raise StreamMessageError(f"unknown stream2 message type {kind!r}; expected 'start', "
                             "'image' or 'end'", series=series)


def _v2_typed(arr: np.ndarray, compressed: bytes | None = None, algorithm: str = "bslz4"):
    import cbor2

    dtype = np.dtype(arr.dtype).name if compressed is None else str(arr.dtype)
    tag = _TYPED_TAG[dtype]
    if compressed is None:
        payload = np.ascontiguousarray(arr, np.dtype(dtype).newbyteorder("<")).tobytes()
    else:
        elem = np.dtype(dtype).itemsize if algorithm == "bslz4" else 0
        payload = cbor2.CBORTag(56500, [algorithm, elem, compressed])
    return cbor2.CBORTag(40, [list(arr.shape), cbor2.CBORTag(tag, payload)])


class _Shape:
    """Stands for an array of known shape and dtype whose pixels are already encoded."""

    def __init__(self, shape, dtype):
        self.shape, self.dtype = tuple(shape), dtype


def encode_stream2(msg) -> bytes:
    """Encode a message as one stream2 CBOR item (the detector's side)."""
    import cbor2

    if isinstance(msg, SeriesHeader):
        names = {v: k for k, v in _V2_NAMES.items()}
        out = {"type": "start", "series_id": msg.series,
               "series_unique_id": msg.unique_id or f"series-{msg.series}",
               "arm_date": datetime.now(timezone.utc).isoformat()}
        for k, v in msg.config.items():
            if k in names:
                out[names[k]] = v
            elif k in _V2_PLAIN:
                out[k] = v
        if "detector_distance" in msg.config:
            out["detector_translation"] = [0.0, 0.0, float(msg.config["detector_distance"])]
        bits = msg.config.get("bit_depth_image")
        out["image_dtype"] = {8: "uint8", 16: "uint16", 32: "uint32"}.get(bits, "uint16")
        out["channels"] = ["threshold_1"]
        if msg.pixel_mask is not None:
            out["pixel_mask"] = {"threshold_1": _v2_typed(np.asarray(msg.pixel_mask,
                                                                     "uint32"))}
        if msg.flatfield is not None:
            out["flatfield"] = {"threshold_1": _v2_typed(np.asarray(msg.flatfield,
                                                                    "float32"))}
        if msg.appendix is not None:
            out["user_data"] = msg.appendix
        return cbor2.dumps(cbor2.CBORTag(55799, out))
    if isinstance(msg, ImageMessage):
        algorithm = {"bslz4": "bslz4", "lz4-hdf5": "lz4"}.get(msg.encoding)
        if algorithm is None and msg.encoding != "none":
            raise ValueError(f"stream2 cannot carry encoding {msg.encoding!r}")
        shape = _Shape(msg.shape, msg.dtype)
        if algorithm is None:
            arr = cbor2.CBORTag(40, [list(msg.shape), cbor2.CBORTag(_TYPED_TAG[msg.dtype],
                                                                     bytes(msg.blob))])
        else:
            arr = _v2_typed(shape, bytes(msg.blob), algorithm)
        ticks = 10**9
        out = {"type": "image", "series_id": msg.series,
               "series_unique_id": f"series-{msg.series}", "image_id": msg.frame,
               "start_time": [round(msg.start_time_s * ticks), ticks],
               "stop_time": [round(msg.stop_time_s * ticks), ticks],
               "real_time": [round(msg.real_time_s * ticks), ticks],
               "data": {"threshold_1": arr}}
        if msg.appendix is not None:
            out["user_data"] = msg.appendix
        return cbor2.dumps(cbor2.CBORTag(55799, out))
    if isinstance(msg, SeriesEnd):
        return cbor2.dumps(cbor2.CBORTag(55799, {"type": "end", "series_id": msg.series,
                                                 "series_unique_id": msg.unique_id
                                                 or f"series-{msg.series}"}))
    raise TypeError(f"cannot encode {type(msg).__name__}")


# ---------------------------------------------------------------------- either
def decode(parts) -> SeriesHeader | ImageMessage | SeriesEnd:
    """Decode a message of either format (a list of ZeroMQ frames, or one byte string).

    A single frame starting with the CBOR self-describe tag is stream2, anything else
    stream v1.
    """
    if isinstance(parts, (bytes, bytearray, memoryview)):
        parts = [parts]
    parts = list(parts)
    if len(parts) == 1 and bytes(parts[0][:3]) == _CBOR_MAGIC:
        return decode_stream2(parts[0])
    return decode_stream1(parts)


def encode(msg, fmt: str = "stream1") -> list[bytes]:
    """Encode a message in ``fmt`` (``stream1`` or ``stream2``) as a list of frames."""
    if fmt == "stream1":
        return encode_stream1(msg)
    if fmt == "stream2":
        return [encode_stream2(msg)]
    raise ValueError(f"unknown stream format {fmt!r}; expected one of {FORMATS}")

