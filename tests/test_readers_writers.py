"""Frames in and out: the formats a station writes, the 16-bit output, atomic files, sidecars."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import tifffile

from drdaemon.errors import FrameError, Reason
from drdaemon.io.durable import TEMP_SUFFIX, atomic_write
from drdaemon.io.formats import encode_preview_png, encode_tiff_u16
from drdaemon.io.limits import ReadLimits
from drdaemon.io.readers import decode_frame, looks_complete, read_frame, read_frame_bytes
from drdaemon.io.sidecar import SCHEMA_VERSION, Sidecar, software_record, utc_iso
from tests.testkit import png_bytes, tiff_bytes


def ramp(shape: tuple[int, int] = (37, 53), dtype: type[np.number[Any]] = np.uint16) -> np.ndarray:
    values = np.arange(shape[0] * shape[1], dtype=np.float64).reshape(shape)
    top = {np.uint16: 65535, np.uint8: 255, np.float32: 1.0}[dtype]
    return (values / values.max() * top).astype(dtype)


def first_page(tif: tifffile.TiffFile) -> tifffile.TiffPage:
    """The first page of a file, which holds the frame."""
    page = tif.pages[0]
    assert isinstance(page, tifffile.TiffPage)
    return page


# -- reading -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "dtype, kwargs",
    [
        (np.uint16, {}),
        (np.uint16, {"compression": "zstd"}),
        (np.uint16, {"compression": "deflate", "predictor": True}),
        (np.uint16, {"bigtiff": True}),
        (np.uint16, {"tile": (16, 16)}),
        (np.uint8, {}),
        (np.float32, {}),
    ],
    ids=["plain", "zstd", "deflate", "bigtiff", "tiled", "8bit", "float32"],
)
def test_reads_the_tiff_variants_a_station_writes(
    tmp_path: Path, dtype: type[np.number[Any]], kwargs: dict[str, Any]
) -> None:
    pixels = ramp(dtype=dtype)
    path = tmp_path / "frame.tif"
    path.write_bytes(tiff_bytes(pixels, **kwargs))
    frame = read_frame(path)
    assert frame.pixels.dtype == pixels.dtype
    np.testing.assert_array_equal(frame.pixels, pixels)


def test_reads_16bit_png_and_returns_the_bytes_it_decoded(tmp_path: Path) -> None:
    pixels = ramp()
    path = tmp_path / "frame.png"
    cv2.imwrite(str(path), pixels)
    frame, data = read_frame_bytes(path)
    assert data == path.read_bytes()
    assert frame.format == "png"
    np.testing.assert_array_equal(frame.pixels, pixels)


def test_multi_page_and_rgb_are_refused_as_unsupported() -> None:
    stack = np.stack([ramp(), ramp()])
    with pytest.raises(FrameError) as pages:
        decode_frame(tiff_bytes(stack), "stack.tif")
    assert pages.value.reason is Reason.UNSUPPORTED and "2 pages" in str(pages.value)
    rgb = np.zeros((20, 30, 3), np.uint8)
    with pytest.raises(FrameError) as colour:
        decode_frame(tiff_bytes(rgb, photometric="rgb"), "rgb.tif")
    assert colour.value.reason is Reason.UNSUPPORTED


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda: b"", Reason.EMPTY),
        (lambda: b"this is a text file, not an image\n" * 4, Reason.UNREADABLE),
        (lambda: tiff_bytes(ramp((200, 200)))[:30000], Reason.TRUNCATED),
        (lambda: b"II*\x00" + bytes(range(256)) * 8, Reason.UNREADABLE),
    ],
    ids=["zero-byte", "not-an-image", "truncated", "corrupt-header"],
)
def test_bad_files_fail_with_their_reason(make: Callable[[], bytes], reason: Reason) -> None:
    with pytest.raises(FrameError) as error:
        decode_frame(make(), "bad.tif")
    assert error.value.reason is reason
    assert error.value.stage.value == "read"


def oversized_header_tiff(path: Path) -> None:
    """A tiny file whose header claims a 100000 x 100000 frame."""
    tifffile.imwrite(path, np.zeros((8, 8), np.uint16))
    with tifffile.TiffFile(path, mode="r+") as tif:
        first_page(tif).tags["ImageWidth"].overwrite(100000)
        first_page(tif).tags["ImageLength"].overwrite(100000)


def test_oversized_header_is_refused_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "huge.tif"
    oversized_header_tiff(path)
    with pytest.raises(FrameError) as error:
        read_frame(path, ReadLimits(max_pixels=50_000_000))
    assert error.value.reason is Reason.TOO_LARGE


def test_looks_complete_only_once_the_whole_file_is_there(tmp_path: Path) -> None:
    for name, data in (("a.tif", tiff_bytes(ramp((128, 128)))), ("a.png", png_bytes(ramp()))):
        path = tmp_path / name
        path.write_bytes(data[: len(data) // 2])
        assert not looks_complete(path)
        path.write_bytes(data)
        assert looks_complete(path)


# -- writing -----------------------------------------------------------------------------------
@pytest.mark.parametrize("compression", ["none", "lzw", "adobe_deflate", "deflate", "zstd"])
def test_16bit_round_trip_keeps_shape_dtype_values_and_tags(tmp_path: Path, compression: str) -> None:
    source = tmp_path / "in.tif"
    pixels = ramp((41, 67))
    tifffile.imwrite(
        source,
        pixels,
        resolution=((254, 1), (127, 1)),
        resolutionunit="CENTIMETER",
        description="station 7, 90 kV",
        metadata=None,
    )
    frame = read_frame(source)
    out = tmp_path / "out.tif"
    atomic_write(out, encode_tiff_u16(frame.pixels, frame.tags, compression))
    with tifffile.TiffFile(out) as tif:
        page = first_page(tif)
        assert page.shape == (41, 67) and page.dtype == np.uint16
        np.testing.assert_array_equal(page.asarray(), pixels)
        assert page.tags["XResolution"].value == (254, 1)
        assert page.tags["YResolution"].value == (127, 1)
        assert page.tags["ResolutionUnit"].value == 3
        assert page.tags["ImageDescription"].value == "station 7, 90 kV"
        expected = {"none": 1, "lzw": 5, "adobe_deflate": 8, "deflate": 32946, "zstd": 50000}[compression]
        assert page.compression == expected
        if compression != "none":
            assert page.predictor == 2  # horizontal differencing


def test_the_default_output_opens_in_libtiff_with_the_same_pixels_and_names_drdaemon() -> None:
    """What a plant's viewer sees: LZW with the predictor (TIFF 6.0's own pair), decoded by libtiff."""
    from PIL import Image, features

    from drdaemon import __version__
    from drdaemon.config import OutputConfig
    from drdaemon.io.formats import output_format

    config = OutputConfig()
    assert config.compression == "lzw"
    pixels = ramp((61, 83))
    pixels[::7] = 65535 - pixels[::7]  # not only a smooth ramp
    data = output_format("tiff", config.compression).encode(pixels, {})
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        page = first_page(tif)
        assert (page.compression, page.predictor) == (5, 2)
        assert page.tags["Software"].value == f"drdaemon {__version__}"
    if not features.check("libtiff"):
        pytest.skip("Pillow built without libtiff")
    with Image.open(io.BytesIO(data)) as image:
        assert image.mode.startswith("I;16")
        np.testing.assert_array_equal(np.asarray(image).astype(np.uint16), pixels)


def test_the_software_tag_names_drdaemon_and_keeps_the_station_after_it() -> None:
    from drdaemon import __version__

    for tags, expected in (
        ({}, f"drdaemon {__version__}"),
        ({"Software": "Station 4.2"}, f"drdaemon {__version__} (input: Station 4.2)"),
        ({"Software": f"drdaemon {__version__}"}, f"drdaemon {__version__}"),  # an output enhanced again
    ):
        with tifffile.TiffFile(io.BytesIO(encode_tiff_u16(ramp(), tags))) as tif:
            assert first_page(tif).tags["Software"].value == expected
            assert "tifffile" not in first_page(tif).tags["Software"].value


def test_encoder_refuses_what_is_not_a_frame() -> None:
    with pytest.raises(ValueError):
        encode_tiff_u16(np.zeros((4, 4, 3), np.uint16))
    with pytest.raises(ValueError):
        encode_tiff_u16(np.zeros((4, 4), np.uint16), compression="lzma")


def test_atomic_write_never_overwrites_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out.tif"
    atomic_write(target, b"first")
    with pytest.raises(FileExistsError):
        atomic_write(target, b"second")
    assert target.read_bytes() == b"first"
    atomic_write(target, b"third", replace=True)
    assert target.read_bytes() == b"third"
    assert not list(tmp_path.glob(f"*{TEMP_SUFFIX}"))


def test_preview_is_8bit_and_small() -> None:
    data = encode_preview_png(ramp((2333, 5732)))
    preview = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert preview is not None and preview.dtype == np.uint8
    assert max(preview.shape) == 1024 and preview.shape[0] == round(2333 * 1024 / 5732)


# -- sidecar -----------------------------------------------------------------------------------
def test_sidecar_has_the_documented_keys() -> None:
    sidecar = Sidecar(
        input={
            "path": "/a/x.tif",
            "original_path": "/in/x.tif",
            "sha256": "ab" * 32,
            "bytes": 10,
            "shape": [2, 3],
            "dtype": "uint16",
        },
        output={
            "path": "/o/x.tif",
            "sha256": "cd" * 32,
            "bytes": 9,
            "shape": [2, 3],
            "dtype": "uint16",
            "compression": "zstd",
        },
        engine={"name": "classical", "parameters": {"clahe_clip_limit": 2.0}, "weights_sha256": None},
        software=software_record("cpu"),
        timings={"wait": 0.1, "read": 0.01, "enhance": 0.2, "write": 0.03},
        started_utc=utc_iso(0.0),
        finished_utc=utc_iso(1.5),
    )
    data = json.loads(sidecar.to_bytes())
    assert data["schema_version"] == SCHEMA_VERSION
    assert data["input"]["sha256"] == "ab" * 32 and data["output"]["sha256"] == "cd" * 32
    assert set(data["input"]) >= {"path", "sha256", "bytes", "shape", "dtype"}
    assert set(data["output"]) >= {"path", "sha256", "shape", "dtype", "compression"}
    assert set(data["engine"]) == {"name", "parameters", "weights_sha256"}
    assert set(data["software"]) == {"drdaemon", "python", "numpy", "opencv", "tifffile", "torch", "pydicom", "device"}
    assert data["started_utc"] == "1970-01-01T00:00:00.000Z" and data["finished_utc"].endswith("01.500Z")
    assert Sidecar.model_validate_json(sidecar.to_bytes()) == sidecar


def test_output_format_from_config_encodes_the_frame_and_keeps_the_input_tags() -> None:
    from drdaemon.config import OutputConfig
    from drdaemon.io.formats import output_format

    config = OutputConfig(compression="deflate")
    output = output_format(config.format, config.compression)
    assert output.suffix == ".tif" and output.compression == "deflate"
    pixels = ramp()
    data = output.encode(pixels, {"ImageDescription": "line 3", "DateTime": "2026:01:01 00:00:00"})
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        np.testing.assert_array_equal(first_page(tif).asarray(), pixels)
        assert first_page(tif).tags["ImageDescription"].value == "line 3"
    assert "ImageDescription" in output.kept_tags and "DateTime" not in output.kept_tags
    preview = cv2.imdecode(np.frombuffer(output.preview(pixels), np.uint8), cv2.IMREAD_UNCHANGED)
    assert preview is not None and preview.dtype == np.uint8
    with pytest.raises(ValueError, match="unknown output format"):
        output_format("jpeg", "zstd")
