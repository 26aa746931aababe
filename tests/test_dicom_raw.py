"""DICOM/DICONDE and detector raw frames in, derived DICOM out: what an inspector's viewer sees."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest

from drdaemon.cli import main
from drdaemon.config import WatchConfig
from drdaemon.errors import FrameError, Reason
from drdaemon.folders.watcher import InboxWatcher
from drdaemon.io.dicom_writer import Derivation, DerivedIdentity, TransferChoice, derived_identity, encode_derived_dicom
from drdaemon.io.formats import DicomOutput, format_for_frame, output_format
from drdaemon.io.limits import RawLayout, ReadLimits
from drdaemon.io.raw import encode_his
from drdaemon.io.readers import Frame, decode_frame, looks_complete, read_frame
from tests.dicom_testkit import (
    DX_FOR_PRESENTATION,
    NDE_CREATOR,
    NDE_VALUES,
    dicom_bytes,
    diconde_dataset,
    has_decoder,
    pydicom,
    pydicom_data_file,
)
from tests.testkit import tiff_bytes

JPEG2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
JPEGLS_LOSSLESS = "1.2.840.10008.1.2.4.80"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"
DEFLATED = "1.2.840.10008.1.2.1.99"
EXPLICIT = "1.2.840.10008.1.2.1"
CR_FRAMES = ("RG1_UNCR.dcm", "RG3_UNCR.dcm")
DERIVATION = Derivation("classical", {"clahe_clip_limit": 2.0, "gamma": 1.0}, "ab" * 32)


def ramp(shape: tuple[int, ...] = (40, 56), top: int = 4095) -> np.ndarray:
    values = np.arange(shape[0] * shape[1], dtype=np.float64).reshape(shape)
    return np.round(values / values.max() * top).astype(np.uint16)


def derived(
    frame: Frame,
    enhanced: np.ndarray,
    *,
    root: str | None = None,
    transfer: TransferChoice = "explicit",
    derivation: Derivation = DERIVATION,
) -> tuple[pydicom.dataset.Dataset, DerivedIdentity]:
    assert frame.dicom is not None
    identity = derived_identity(frame.dicom, derivation, root, transfer)
    return pydicom.dcmread(io.BytesIO(encode_derived_dicom(frame.dicom, enhanced, derivation, identity))), identity


def dciodvfy_errors(path: Path) -> list[str]:
    """dciodvfy's error lines for a file (its warnings are advice, e.g. on unknown private tags)."""
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy is not installed (Debian package dicom3tools)")
    dataset = pydicom.dcmread(path)
    if dataset.file_meta.TransferSyntaxUID == DEFLATED:
        # dicom3tools reads no deflated data sets: it validates the same data set inflated.
        path = path.with_name(path.name + ".inflated.dcm")
        dataset.file_meta.TransferSyntaxUID = EXPLICIT
        dataset.save_as(path, enforce_file_format=True)
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


# -- input: pydicom-data's CR frames ------------------------------------------------------------
@pytest.mark.parametrize("name", CR_FRAMES)
def test_cr_frame_is_read_as_dicom_despite_the_tiff_header_in_its_preamble(name: str) -> None:
    path = pydicom_data_file(name)
    assert path.read_bytes()[:4] == b"II*\x00"  # the preamble holds a TIFF header
    reference = pydicom.dcmread(path)
    frame = read_frame(path)
    assert frame.format == "dicom" and frame.dicom is not None and frame.dicom.photometric == "MONOCHROME1"
    top = (1 << reference.BitsStored) - 1
    # MONOCHROME1: the engines see more signal = brighter, the stored values inverted within their bits.
    np.testing.assert_array_equal(frame.pixels, top - reference.pixel_array)
    assert frame.dicom.value_range == (0.0, float(top))
    assert frame.dicom.uids.instance == reference.SOPInstanceUID
    assert looks_complete(path)


@pytest.mark.parametrize("name", CR_FRAMES)
@pytest.mark.parametrize(
    "syntax", [JPEG2000_LOSSLESS, JPEGLS_LOSSLESS, RLE_LOSSLESS, DEFLATED], ids=["jpeg2000", "jpegls", "rle", "deflate"]
)
def test_recompressed_cr_frame_reads_as_the_reference_decoder_reads_it(tmp_path: Path, syntax: str, name: str) -> None:
    if not has_decoder(syntax):
        pytest.skip(f"no decoder for {syntax} (pip install 'drdaemon[dicom]')")
    source = pydicom_data_file(name)
    uncompressed = read_frame(source)
    path = tmp_path / "IM0001"  # no suffix: recognised by its DICM marker
    path.write_bytes(dicom_bytes(pydicom.dcmread(source), syntax))
    frame = read_frame(path)
    assert frame.dicom is not None and uncompressed.dicom is not None
    assert frame.dicom.transfer_syntax == syntax
    np.testing.assert_array_equal(frame.pixels, uncompressed.pixels)
    reference = pydicom.dcmread(path).pixel_array
    np.testing.assert_array_equal(frame.pixels, int(uncompressed.dicom.value_range[1]) - reference)


def test_missing_codec_is_unsupported_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    source = pydicom_data_file("RG3_UNCR.dcm")
    if not has_decoder(RLE_LOSSLESS):
        pytest.skip("no RLE decoder")
    data = dicom_bytes(pydicom.dcmread(source), RLE_LOSSLESS)
    decoder = pydicom.pixels.get_decoder(RLE_LOSSLESS)
    monkeypatch.setattr(type(decoder), "is_available", property(lambda self: False))
    with pytest.raises(FrameError) as error:
        decode_frame(data, "rle.dcm")
    assert error.value.reason is Reason.UNSUPPORTED and "drdaemon[dicom]" in str(error.value)


# -- input: generated DICONDE-like frames -------------------------------------------------------
def test_monochrome2_frame_reaches_the_engines_as_stored() -> None:
    pixels = ramp()
    frame = decode_frame(dicom_bytes(diconde_dataset(pixels, bits_stored=12)), "frame.dcm")
    assert frame.pixels.dtype == np.uint16
    np.testing.assert_array_equal(frame.pixels, pixels)
    assert frame.dicom is not None and frame.dicom.value_range == (0.0, 4095.0)


def test_8bit_frame_stays_8bit() -> None:
    pixels = ramp(top=255).astype(np.uint8)
    frame = decode_frame(dicom_bytes(diconde_dataset(pixels)), "frame.dcm")
    assert frame.pixels.dtype == np.uint8
    np.testing.assert_array_equal(frame.pixels, pixels)


def test_rescale_slope_and_intercept_are_applied() -> None:
    pixels = ramp()
    frame = decode_frame(dicom_bytes(diconde_dataset(pixels, bits_stored=12, slope=0.5, intercept=-100)), "f.dcm")
    assert frame.pixels.dtype == np.float32
    np.testing.assert_allclose(frame.pixels, pixels * 0.5 - 100)
    assert frame.dicom is not None and frame.dicom.value_range == (-100.0, 4095 * 0.5 - 100)


def test_signed_pixels_reach_the_engines_as_their_values() -> None:
    values = (ramp().astype(np.int32) - 2048).astype(np.int16)
    ds = diconde_dataset(values.view(np.uint16), bits_stored=12)
    ds.PixelRepresentation = 1
    frame = decode_frame(dicom_bytes(ds), "signed.dcm")
    np.testing.assert_array_equal(frame.pixels, values.astype(np.float32))
    assert frame.dicom is not None and frame.dicom.value_range == (-2048.0, 2047.0)


def _few_bits(pixels: np.ndarray) -> bytes:
    ds = diconde_dataset((pixels // 64).astype(np.uint8))
    ds.BitsStored, ds.HighBit = 6, 5
    return dicom_bytes(ds)


def _multi_frame(pixels: np.ndarray) -> bytes:
    ds = diconde_dataset(pixels)
    ds.NumberOfFrames = 2
    ds.PixelData = np.stack([pixels, pixels]).tobytes()
    return dicom_bytes(ds)


def _rgb(pixels: np.ndarray) -> bytes:
    ds = diconde_dataset(pixels.astype(np.uint8))
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.PixelData = np.repeat(pixels.astype(np.uint8)[..., None], 3, axis=2).tobytes()
    return dicom_bytes(ds)


def _no_image(pixels: np.ndarray) -> bytes:
    ds = diconde_dataset(pixels)
    for keyword in ("PixelData", "Rows", "Columns"):
        delattr(ds, keyword)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.UID(
        "1.2.840.10008.5.1.4.1.1.88.11"
    )  # basic text SR
    return dicom_bytes(ds)


def _unknown_syntax(pixels: np.ndarray) -> bytes:
    ds = diconde_dataset(pixels)
    data = dicom_bytes(ds)
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG-2: no decoder exists
    ds.PixelData = pydicom.encaps.encapsulate([b"\x00" * 16])
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: dicom_bytes(diconde_dataset(p))[:-300], Reason.TRUNCATED),
        (lambda p: dicom_bytes(diconde_dataset(p))[:700], Reason.TRUNCATED),
        (_multi_frame, Reason.UNSUPPORTED),
        (_rgb, Reason.UNSUPPORTED),
        (_no_image, Reason.UNSUPPORTED),
        (_unknown_syntax, Reason.UNSUPPORTED),
        (_few_bits, Reason.UNSUPPORTED),
        (lambda p: b"\0" * 128 + b"DICM" + b"\xff" * 40, Reason.UNREADABLE),
    ],
    ids=["truncated-pixels", "truncated-header", "multi-frame", "rgb", "no-image", "no-decoder", "6-bits", "garbage"],
)
def test_bad_dicom_files_fail_with_their_reason(make: Callable[[np.ndarray], bytes], reason: Reason) -> None:
    with pytest.raises(FrameError) as error:
        decode_frame(make(ramp()), "bad.dcm")
    assert error.value.reason is reason, str(error.value)


def test_truncated_compressed_frame_fails_as_truncated_and_looks_incomplete(tmp_path: Path) -> None:
    if not has_decoder(RLE_LOSSLESS):
        pytest.skip("no RLE decoder")
    data = dicom_bytes(diconde_dataset(ramp()), RLE_LOSSLESS)
    path = tmp_path / "part.dcm"
    path.write_bytes(data[: len(data) - 40])
    assert not looks_complete(path)
    with pytest.raises(FrameError) as error:
        read_frame(path)
    assert error.value.reason is Reason.TRUNCATED
    path.write_bytes(data)
    assert looks_complete(path)


def test_header_size_is_checked_before_decoding() -> None:
    ds = diconde_dataset(ramp((8, 8)))
    ds.Rows, ds.Columns = 60000, 60000  # the header lies; no pixel is decoded to find out
    with pytest.raises(FrameError) as error:
        decode_frame(dicom_bytes(ds), "huge.dcm", ReadLimits(max_pixels=10_000_000))
    assert error.value.reason is Reason.TOO_LARGE


def test_a_dcm_name_without_dicom_content_is_unreadable() -> None:
    with pytest.raises(FrameError) as error:
        decode_frame(b"not a dicom file at all" * 10, "frame.dcm")
    assert error.value.reason is Reason.UNREADABLE


# -- output: the derived DICOM image -----------------------------------------------------------
@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_derived_output_round_trips_with_the_input_polarity(photometric: str) -> None:
    source = diconde_dataset(ramp(), bits_stored=12, photometric=photometric)
    frame = decode_frame(dicom_bytes(source), "frame.dcm")
    enhanced = ramp(top=60000)[::-1].copy()
    out, identity = derived(frame, enhanced)
    assert out.PhotometricInterpretation == photometric
    assert (out.BitsAllocated, out.BitsStored, out.HighBit, out.PixelRepresentation) == (16, 16, 15, 0)
    stored = out.pixel_array
    expected = 65535 - enhanced if photometric == "MONOCHROME1" else enhanced
    np.testing.assert_array_equal(stored, expected)
    # The window spans the enhanced range; read back through the reader, the engines' view is the enhanced frame.
    low, high = int(expected.min()), int(expected.max())
    assert float(out.WindowCenter) == pytest.approx((low + high + 1) / 2)
    assert float(out.WindowWidth) == pytest.approx(high - low + 1)
    assert frame.dicom is not None
    again = decode_frame(encode_derived_dicom(frame.dicom, enhanced, DERIVATION, identity), "out.dcm")
    np.testing.assert_array_equal(again.pixels, enhanced)


def test_uids_and_references_of_the_derived_image() -> None:
    root = "1.2.826.0.1.3680043.10.999"
    first = diconde_dataset(ramp())
    second = diconde_dataset(ramp())  # same series, another instance
    other_series = diconde_dataset(ramp(), series_uid="1.2.826.0.1.3680043.8.498.2002")
    frames = [decode_frame(dicom_bytes(ds), "f.dcm") for ds in (first, second, other_series)]
    enhanced = ramp(top=65535)
    out_first, _ = derived(frames[0], enhanced, root=root)
    out_second, _ = derived(frames[1], enhanced, root=root)
    out_again, _ = derived(frames[0], enhanced, root=root)
    out_other, _ = derived(frames[2], enhanced, root=root)
    out_other_engine, _ = derived(frames[0], enhanced, root=root, derivation=Derivation("he", {"gamma": 1.0}, None))
    for out in (out_first, out_second, out_other):
        assert out.SOPInstanceUID.startswith(root + ".") and out.SeriesInstanceUID.startswith(root + ".")
        assert out.StudyInstanceUID == first.StudyInstanceUID
        assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    # A new instance every time; one enhanced series per source series and engine.
    instances = {o.SOPInstanceUID for o in (out_first, out_second, out_again, out_other, out_other_engine)}
    assert len(instances) == 5 and first.SOPInstanceUID not in instances
    assert out_first.SeriesInstanceUID == out_second.SeriesInstanceUID == out_again.SeriesInstanceUID
    assert out_first.SeriesInstanceUID != first.SeriesInstanceUID
    assert out_other.SeriesInstanceUID != out_first.SeriesInstanceUID
    assert out_other_engine.SeriesInstanceUID != out_first.SeriesInstanceUID
    assert list(out_first.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    reference = out_first.SourceImageSequence[0]
    assert reference.ReferencedSOPInstanceUID == first.SOPInstanceUID
    assert reference.ReferencedSOPClassUID == first.SOPClassUID
    description = out_first.DerivationDescription
    assert "classical" in description and DERIVATION.parameters_sha256 in description and "ab" * 32 in description
    # A DX "for processing" input gives a "for presentation" image.
    assert out_first.SOPClassUID == DX_FOR_PRESENTATION and out_first.PresentationIntentType == "FOR PRESENTATION"


def test_generated_root_is_documented_pydicoms() -> None:
    frame = decode_frame(dicom_bytes(diconde_dataset(ramp())), "f.dcm")
    out, _ = derived(frame, ramp(top=65535))
    assert out.SOPInstanceUID.startswith("1.2.826.0.1.3680043.8.498.")


#: Attributes the derived image changes on purpose; every other one is kept as it was.
CHANGED = {
    "SOPClassUID",
    "SOPInstanceUID",
    "SeriesInstanceUID",
    "SeriesDescription",
    "ImageType",
    "DerivationDescription",
    "SourceImageSequence",
    "InstanceCreationDate",
    "InstanceCreationTime",
    "ContentDate",
    "ContentTime",
    "PresentationIntentType",
    "BitsStored",
    "HighBit",
    "WindowCenter",
    "WindowWidth",
    "PixelData",
    "RescaleSlope",
    "RescaleIntercept",
    "RescaleType",
}


def test_non_pixel_attributes_and_private_nde_values_are_kept() -> None:
    source = diconde_dataset(ramp(), bits_stored=12)
    frame = decode_frame(dicom_bytes(source), "f.dcm")
    out, _ = derived(frame, ramp(top=65535))
    for element in source:
        if element.keyword in CHANGED:
            continue
        assert element.tag in out, element
        assert out[element.tag].value == element.value, element
    block = out.private_block(0x0009, NDE_CREATOR)
    for offset, (_vr, value) in NDE_VALUES.items():
        written = block[offset].value
        assert (written if isinstance(written, bytes) else str(written)) == value


@pytest.mark.parametrize(
    "syntax, expected",
    [
        (EXPLICIT, EXPLICIT),
        ("1.2.840.10008.1.2", "1.2.840.10008.1.2"),
        (DEFLATED, DEFLATED),
        (RLE_LOSSLESS, RLE_LOSSLESS),
        (JPEG2000_LOSSLESS, JPEG2000_LOSSLESS),
        (JPEGLS_LOSSLESS, JPEGLS_LOSSLESS),
    ],
    ids=["explicit", "implicit", "deflate", "rle", "jpeg2000", "jpegls"],
)
def test_output_keeps_the_input_transfer_syntax_when_asked(tmp_path: Path, syntax: str, expected: str) -> None:
    if not has_decoder(syntax):
        pytest.skip(f"no decoder for {syntax}")
    frame = decode_frame(dicom_bytes(diconde_dataset(ramp(), bits_stored=12), syntax), "f.dcm")
    enhanced = ramp(top=65535)
    out, identity = derived(frame, enhanced, transfer="input")
    assert identity.transfer_syntax == expected and out.file_meta.TransferSyntaxUID == expected
    np.testing.assert_array_equal(out.pixel_array, enhanced)  # lossless, whatever the syntax
    default, _ = derived(frame, enhanced)
    assert default.file_meta.TransferSyntaxUID == EXPLICIT
    block = default.private_block(0x0009, NDE_CREATOR)  # the NDE values survive a change of syntax
    assert block[0x12].value == NDE_VALUES[0x12][1]
    path = tmp_path / "out.dcm"
    assert frame.dicom is not None
    path.write_bytes(encode_derived_dicom(frame.dicom, enhanced, DERIVATION, identity))
    assert dciodvfy_errors(path) == []


def test_lossy_input_is_never_reencoded_lossily() -> None:
    path = pydicom_data_file("RG3_J2KI.dcm")
    if not has_decoder(str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)):
        pytest.skip("no JPEG 2000 decoder")
    frame = read_frame(path)
    _out, identity = derived(frame, ramp((frame.pixels.shape), top=65535), transfer="input")
    assert identity.transfer_syntax == EXPLICIT


@pytest.mark.parametrize("make", ["diconde-mono2", "diconde-mono1", "cr"])
def test_every_output_passes_dciodvfy(tmp_path: Path, make: str) -> None:
    if make == "cr":
        frame = read_frame(pydicom_data_file("RG3_UNCR.dcm"))
    else:
        photometric = "MONOCHROME1" if make.endswith("mono1") else "MONOCHROME2"
        source = tmp_path / "source.dcm"
        source.write_bytes(dicom_bytes(diconde_dataset(ramp(), bits_stored=12, photometric=photometric)))
        assert dciodvfy_errors(source) == []  # the test object itself is valid
        frame = read_frame(source)
    enhanced = np.ascontiguousarray(np.clip(frame.pixels.astype(np.float64) * 16, 0, 65535).astype(np.uint16))
    out = tmp_path / "out.dcm"
    assert frame.dicom is not None
    identity = derived_identity(frame.dicom, DERIVATION, "1.2.826.0.1.3680043.10.999", "explicit")
    out.write_bytes(encode_derived_dicom(frame.dicom, enhanced, DERIVATION, identity))
    assert dciodvfy_errors(out) == []


def test_dicom_format_refuses_a_frame_without_a_dicom_source() -> None:
    frame = decode_frame(tiff_bytes(ramp()), "frame.tif")
    with pytest.raises(FrameError) as error:
        DicomOutput().for_frame(frame, DERIVATION)
    assert error.value.reason is Reason.UNSUPPORTED and "auto" in str(error.value)
    auto = output_format("auto")
    assert format_for_frame(auto, frame, DERIVATION).suffix == ".tif"
    dicom_frame = decode_frame(dicom_bytes(diconde_dataset(ramp())), "f.dcm")
    assert format_for_frame(auto, dicom_frame, DERIVATION).suffix == ".dcm"
    assert format_for_frame(output_format("tiff"), dicom_frame, DERIVATION).suffix == ".tif"


# -- raw detector frames ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "dtype, order, header",
    [("uint16", "little", 0), ("uint16", "big", 512), ("uint8", "little", 16), ("float32", "little", 0)],
)
def test_raw_frame_is_read_with_the_configured_layout(
    dtype: Literal["uint8", "uint16", "float32"], order: Literal["little", "big"], header: int
) -> None:
    pixels = ramp((24, 40), top=255 if dtype == "uint8" else 65535).astype(dtype)
    body = pixels.astype(np.dtype(dtype).newbyteorder("<" if order == "little" else ">")).tobytes()
    layout = RawLayout(width=40, height=24, dtype=dtype, byte_order=order, header_bytes=header)
    frame = decode_frame(b"\x7f" * header + body, "frame.raw", ReadLimits(raw=layout))
    assert frame.format == "raw" and frame.pixels.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(frame.pixels, pixels)
    assert frame.raw is not None
    assert (frame.raw.width, frame.raw.height, frame.raw.header_bytes, frame.raw.source) == (40, 24, header, "config")


@pytest.mark.parametrize(
    "size, reason",
    [(24 * 40 * 2 - 2, Reason.TRUNCATED), (24 * 40 * 2 + 2, Reason.UNSUPPORTED), (24 * 40 * 4, Reason.UNSUPPORTED)],
)
def test_raw_size_mismatch_fails(size: int, reason: Reason) -> None:
    limits = ReadLimits(raw=RawLayout(width=40, height=24))
    with pytest.raises(FrameError) as error:
        decode_frame(b"\x01" * size, "frame.raw", limits)
    assert error.value.reason is reason


def test_raw_without_a_layout_is_unsupported_naming_the_table() -> None:
    with pytest.raises(FrameError) as error:
        decode_frame(b"\x01" * 64, "frame.raw")
    assert error.value.reason is Reason.UNSUPPORTED and "[input.raw]" in str(error.value)


def test_raw_geometry_over_the_pixel_limit_is_too_large() -> None:
    limits = ReadLimits(max_pixels=100, raw=RawLayout(width=40, height=24))
    with pytest.raises(FrameError) as error:
        decode_frame(b"\x01" * (40 * 24 * 2), "frame.raw", limits)
    assert error.value.reason is Reason.TOO_LARGE


@pytest.mark.parametrize("dtype", [np.uint16, np.float32, np.uint8])
def test_his_frame_is_read_from_its_own_header(dtype: type[np.number[Any]]) -> None:
    pixels = ramp((24, 40), top=255).astype(dtype)
    frame = decode_frame(encode_his(pixels), "frame.his")
    assert frame.format == "his" and frame.pixels.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(frame.pixels, pixels)
    assert frame.raw is not None
    assert (frame.raw.width, frame.raw.height, frame.raw.frames, frame.raw.source) == (40, 24, 1, "his")


def test_bad_his_files_fail_with_their_reason(tmp_path: Path) -> None:
    pixels = ramp((24, 40))
    cases = {
        "stack": (encode_his(np.stack([pixels, pixels])), Reason.UNSUPPORTED),
        "truncated": (encode_his(pixels)[:-10], Reason.TRUNCATED),
        "short-header": (encode_his(pixels)[:30], Reason.TRUNCATED),
        "not-his": (b"\x12\x34" * 200, Reason.UNREADABLE),
    }
    for label, (data, reason) in cases.items():
        with pytest.raises(FrameError) as error:
            decode_frame(data, "frame.his")
        assert error.value.reason is reason, label
    partial = tmp_path / "partial.his"
    partial.write_bytes(encode_his(pixels)[:-10])
    assert not looks_complete(partial)
    partial.write_bytes(encode_his(pixels))
    assert looks_complete(partial)


def test_default_patterns_take_dicom_raw_and_his_and_a_pattern_takes_suffixless_dicom(tmp_path: Path) -> None:
    watcher = InboxWatcher(tmp_path, WatchConfig())
    for name in ("a.dcm", "b.DCM", "c.raw", "d.his", "e.tif", "f.png"):
        assert watcher.accepts(name), name
    assert not watcher.accepts("IM0001")
    assert InboxWatcher(tmp_path, WatchConfig(patterns=["IM*"])).accepts("IM0001")


def test_raw_layout_and_dicom_output_keys_come_from_the_environment_and_print_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from drdaemon.cli import settings_to_toml
    from drdaemon.config import load_settings
    from drdaemon.service.frame import read_limits

    monkeypatch.setenv("DRDAEMON_INPUT__RAW__WIDTH", "3072")
    monkeypatch.setenv("DRDAEMON_INPUT__RAW__HEIGHT", "2048")
    monkeypatch.setenv("DRDAEMON_INPUT__RAW__BYTE_ORDER", "big")
    monkeypatch.setenv("DRDAEMON_OUTPUT__FORMAT", "dicom")
    monkeypatch.setenv("DRDAEMON_OUTPUT__DICOM_UID_ROOT", "1.2.826.0.1.3680043.10.999")
    settings = load_settings(None)
    assert read_limits(settings.input).raw == RawLayout(width=3072, height=2048, byte_order="big")
    assert settings.output.format == "dicom"
    printed = tmp_path / "printed.toml"
    printed.write_text(settings_to_toml(settings), encoding="utf-8")
    for name in (
        "DRDAEMON_INPUT__RAW__WIDTH",
        "DRDAEMON_INPUT__RAW__HEIGHT",
        "DRDAEMON_INPUT__RAW__BYTE_ORDER",
        "DRDAEMON_OUTPUT__FORMAT",
        "DRDAEMON_OUTPUT__DICOM_UID_ROOT",
    ):
        monkeypatch.delenv(name)
    again = load_settings(printed)
    assert again.input == settings.input and again.output == settings.output


@pytest.mark.parametrize("root", ["1.2.03", "1.2.", "abc", "1." + "2" * 60])
def test_a_bad_uid_root_is_a_configuration_error(tmp_path: Path, root: str) -> None:
    from drdaemon.config import ConfigError, load_settings

    with pytest.raises(ConfigError, match="dicom_uid_root"):
        load_settings(_config(tmp_path, f'[output]\ndicom_uid_root = "{root}"\n'))


# -- the batch command end to end ---------------------------------------------------------------
def _config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "drdaemon.toml"
    path.write_text('[engine]\nname = "classical"\n[logging]\nformat = "json"\n' + extra, encoding="utf-8")
    return path


def test_one_source_series_gives_one_enhanced_series_per_engine_configuration(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    series = {
        "a1.dcm": "1.2.826.0.1.3680043.8.498.1002",
        "a2.dcm": "1.2.826.0.1.3680043.8.498.1002",
        "b1.dcm": "1.2.826.0.1.3680043.8.498.2002",
    }
    for index, (name, series_uid) in enumerate(series.items()):  # different content: different windows
        (inputs / name).write_bytes(dicom_bytes(diconde_dataset(ramp(top=1000 + 1000 * index), series_uid=series_uid)))
    written: dict[str, dict[str, str]] = {}
    for label, clip in (("clip2", 2.0), ("clip3", 3.0)):
        config = tmp_path / f"{label}.toml"
        config.write_text(f'[engine]\nname = "classical"\nclahe_clip_limit = {clip}\n', encoding="utf-8")
        out = tmp_path / label
        assert main(["enhance", *map(str, sorted(inputs.iterdir())), "--out", str(out), "--config", str(config)]) == 0
        written[label] = {name: pydicom.dcmread(out / name).SeriesInstanceUID for name in series}
    for uids in written.values():
        assert uids["a1.dcm"] == uids["a2.dcm"] != uids["b1.dcm"]
    assert written["clip2"]["a1.dcm"] != written["clip3"]["a1.dcm"]


def test_enhance_writes_dicom_for_dicom_tiff_for_tiff_and_records_uids(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    source = diconde_dataset(ramp(), bits_stored=12, photometric="MONOCHROME1")
    (inputs / "IM0001").write_bytes(dicom_bytes(source))
    (inputs / "plain.tif").write_bytes(tiff_bytes(ramp()))
    (inputs / "det.his").write_bytes(encode_his(ramp((24, 40))))
    (inputs / "det.raw").write_bytes(ramp((24, 40)).tobytes())
    config = _config(
        tmp_path, '[input.raw]\nwidth = 40\nheight = 24\n[output]\ndicom_uid_root = "1.2.826.0.1.3680043.10.999"\n'
    )
    out = tmp_path / "out"
    files = [str(inputs / n) for n in ("IM0001", "plain.tif", "det.his", "det.raw")]
    assert main(["enhance", *files, "--out", str(out), "--config", str(config)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [
            "IM0001.dcm",
            "IM0001.dcm.json",
            "plain.tif",
            "plain.tif.json",
            "det.tif",
            "det.tif.json",
            "det~1.tif",
            "det~1.tif.json",
        ]
    )
    sidecar = json.loads((out / "IM0001.dcm.json").read_text())
    written = pydicom.dcmread(out / "IM0001.dcm")
    assert sidecar["input"]["format"] == "dicom" and sidecar["output"]["format"] == "dicom"
    assert sidecar["input"]["dicom"]["sop_instance_uid"] == source.SOPInstanceUID
    assert sidecar["input"]["dicom"]["series_instance_uid"] == source.SeriesInstanceUID
    assert sidecar["output"]["dicom"]["sop_instance_uid"] == written.SOPInstanceUID
    assert sidecar["output"]["dicom"]["series_instance_uid"] == written.SeriesInstanceUID
    assert sidecar["output"]["dicom"]["study_instance_uid"] == source.StudyInstanceUID
    assert written.SOPInstanceUID.startswith("1.2.826.0.1.3680043.10.999.")
    assert written.PhotometricInterpretation == "MONOCHROME1"
    assert sidecar["software"]["pydicom"] == pydicom.__version__
    tiff_sidecar = json.loads((out / "plain.tif.json").read_text())
    assert tiff_sidecar["output"]["format"] == "tiff" and tiff_sidecar["output"]["dicom"] is None
    raw_sidecars = [json.loads((out / n).read_text())["input"] for n in ("det.tif.json", "det~1.tif.json")]
    geometry = {r["format"]: r["raw"] for r in raw_sidecars}
    assert geometry["his"]["source"] == "his" and geometry["raw"]["source"] == "config"
    assert all((g["width"], g["height"]) == (40, 24) for g in geometry.values())
    assert dciodvfy_errors(out / "IM0001.dcm") == []


def test_enhance_with_format_dicom_refuses_a_tiff(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "plain.tif").write_bytes(tiff_bytes(ramp()))
    config = _config(tmp_path, '[output]\nformat = "dicom"\n')
    assert main(["enhance", str(tmp_path / "plain.tif"), "--out", str(tmp_path / "out"), "--config", str(config)]) == 1
    assert "unsupported" in capsys.readouterr().err
    assert list((tmp_path / "out").iterdir()) == []


def test_the_evaluation_reads_what_the_daemon_reads(tmp_path: Path) -> None:
    from drdaemon.evaluate.cli import main as evaluate_main

    data = tmp_path / "frames"
    data.mkdir()
    pixels = ramp((48, 64))
    (data / "IM0001").write_bytes(dicom_bytes(diconde_dataset(pixels, bits_stored=12, photometric="MONOCHROME1")))
    (data / "det.his").write_bytes(encode_his(pixels))
    (data / "det.raw").write_bytes(pixels.tobytes())
    config = _config(tmp_path, "[input.raw]\nwidth = 64\nheight = 48\n")
    out = tmp_path / "eval"
    assert (
        evaluate_main(
            ["--data", str(data), "--methods", "identity", "--out", str(out), "--no-progress", "--config", str(config)]
        )
        == 0
    )
    scores = json.loads((out / "scores.json").read_text())
    assert set(scores["frames"]) == {"IM0001", "det.his", "det.raw"}, scores.keys()
    # Without the layout, the .raw frame fails as the daemon would fail it.
    assert evaluate_main(["--data", str(data), "--methods", "identity", "--out", str(out), "--no-progress"]) == 2


@pytest.mark.slow
def test_daemon_takes_dicom_and_his_frames_through_the_folder_lifecycle(tmp_path: Path) -> None:
    from tests.testkit import Station, sha

    station = Station(tmp_path, extra='[output]\ndicom_uid_root = "1.2.826.0.1.3680043.10.999"\n')
    station.config.write_text(
        station.config.read_text().replace("[watch]\n", '[watch]\npatterns = ["*.dcm", "*.his", "IM*"]\n')
    )
    source = diconde_dataset(ramp((96, 80)), bits_stored=12)
    good = {"IM0001": dicom_bytes(source), "det.his": encode_his(ramp((64, 72)))}
    bad = {
        "cut.dcm": dicom_bytes(diconde_dataset(ramp((96, 80))))[:-500],
        "stack.his": encode_his(np.stack([ramp((16, 16))] * 3)),
    }
    station.start()
    try:
        for name, data in {**good, **bad}.items():
            station.drop(name, data)
        station.wait_for(lambda: len(station.names("archive")) == 2 and len(station.names("failed")) == 4, timeout=90)
    finally:
        assert station.stop() == 0
    assert sorted(station.names("outbox")) == ["IM0001.dcm", "IM0001.dcm.json", "det.tif", "det.tif.json"]
    for name, data in good.items():
        assert sha((station.dirs["archive"] / name).read_bytes()) == sha(data)  # archived byte-identical
    sidecar = json.loads((station.dirs["outbox"] / "IM0001.dcm.json").read_text())
    written = pydicom.dcmread(station.dirs["outbox"] / "IM0001.dcm")
    assert sidecar["output"]["dicom"]["sop_instance_uid"] == written.SOPInstanceUID
    assert written.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    reasons = {name: json.loads((station.dirs["failed"] / f"{name}.reason.json").read_text())["reason"] for name in bad}
    assert reasons == {"cut.dcm": "truncated", "stack.his": "unsupported"}
    for name, data in bad.items():
        assert (station.dirs["failed"] / name).read_bytes() == data


# -- the reliability guards (issue 13) hold for DICOM and detector frames too ---------------------
def _decoded_limit_cases() -> list[tuple[str, bytes, ReadLimits]]:
    pixels = ramp((32, 32))
    layout = RawLayout(width=32, height=32)
    return [
        ("frame.dcm", dicom_bytes(diconde_dataset(pixels)), ReadLimits(max_decoded_bytes=1000)),
        ("frame.raw", pixels.astype("<u2").tobytes(), ReadLimits(raw=layout, max_decoded_bytes=1000)),
        ("frame.his", encode_his(pixels), ReadLimits(max_decoded_bytes=1000)),
    ]


@pytest.mark.parametrize("index", range(3))
def test_decoded_size_is_checked_from_the_header_for_dicom_raw_and_his(index: int) -> None:
    name, data, limits = _decoded_limit_cases()[index]
    with pytest.raises(FrameError) as error:
        decode_frame(data, name, limits)
    assert error.value.reason is Reason.TOO_LARGE and "input.max_decoded_bytes=1000" in str(error.value)
    roomy = ReadLimits(raw=limits.raw, max_decoded_bytes=32 * 32 * 2)
    assert decode_frame(data, name, roomy).shape == (32, 32)


@pytest.mark.parametrize("index", range(3))
@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_only_regular_dicom_raw_and_his_files_are_opened(tmp_path: Path, index: int, kind: str) -> None:
    name, data, limits = _decoded_limit_cases()[index]
    limits = ReadLimits(raw=limits.raw)
    target = tmp_path / f"target{Path(name).suffix}"
    target.write_bytes(data)
    path = tmp_path / name
    if kind == "symlink":
        path.symlink_to(target)
    else:
        os.mkfifo(path)
    assert read_frame(target, limits).shape == (32, 32) and looks_complete(target)
    with pytest.raises(FrameError) as error:
        read_frame(path, limits)  # a FIFO would block without O_NONBLOCK
    assert error.value.reason is Reason.UNSUPPORTED and "only regular files are read" in str(error.value)
    assert not looks_complete(path)
