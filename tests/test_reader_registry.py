"""The reader registry: one list of frame formats that reading, the watcher, the watch patterns,
the evaluation and the trainer all take; a file no format recognises is unreadable, never guessed."""

from __future__ import annotations

import os
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
import tifffile

from drdaemon.config import WatchConfig
from drdaemon.errors import FrameError, Reason
from drdaemon.folders.claim import claim
from drdaemon.folders.watcher import InboxWatcher
from drdaemon.io.limits import RawLayout
from drdaemon.io.raw import encode_his
from drdaemon.io.readers import (
    FRAME_FORMATS,
    ReaderRegistry,
    ReadLimits,
    decode_frame,
    looks_complete,
    read_frame,
    read_frame_bytes,
)
from drdaemon.io.readers.png import PNG_SIGNATURE
from drdaemon.service.frame import load_frame
from tests.dicom_testkit import dicom_bytes, diconde_dataset
from tests.testkit import REPO
from tests.toy_format import TOY, encode_toy

WITH_TOY = FRAME_FORMATS.with_format(TOY)


def ramp(shape: tuple[int, int] = (24, 40)) -> np.ndarray:
    return (np.arange(shape[0] * shape[1], dtype=np.uint32).reshape(shape) * 37 % 65536).astype(np.uint16)


def test_a_registered_format_is_read_and_its_header_checked_before_the_whole_read(tmp_path: Path) -> None:
    pixels = ramp()
    path = tmp_path / "frame.toy"
    path.write_bytes(encode_toy(pixels))
    frame, data = read_frame_bytes(path, formats=WITH_TOY)
    assert frame.format == "toy" and data == path.read_bytes()
    np.testing.assert_array_equal(frame.pixels, pixels)
    # Recognised by its content, whatever the name.
    assert decode_frame(path.read_bytes(), "IM0001", formats=WITH_TOY).format == "toy"
    # Its header check runs before the read: a header claiming too many pixels is too large.
    huge = tmp_path / "huge.toy"
    huge.write_bytes(encode_toy(np.zeros((4, 4), np.uint16))[:4] + b"\xff\xff\xff\xff" + bytes(32))
    with pytest.raises(FrameError) as error:
        read_frame(huge, ReadLimits(max_pixels=1_000_000), formats=WITH_TOY)
    assert error.value.reason is Reason.TOO_LARGE and "huge.toy" in str(error.value)
    # The package's registry does not know it: unreadable, naming the formats it does know.
    with pytest.raises(FrameError) as unknown:
        read_frame(path)
    assert unknown.value.reason is Reason.UNREADABLE
    message = str(unknown.value)
    assert "frame.toy is none of the frame formats drdaemon reads" in message
    assert all(fmt.title in message for fmt in FRAME_FORMATS) and TOY.title not in message


def test_the_watcher_and_the_daemons_frame_loader_take_a_registered_format(tmp_path: Path) -> None:
    inbox, work = tmp_path / "inbox", tmp_path / "work"
    inbox.mkdir()
    work.mkdir()
    data = encode_toy(ramp())
    path = inbox / "frame.TOY"
    path.write_bytes(data[: len(data) // 2])
    assert not looks_complete(path, formats=WITH_TOY)  # half written
    assert not looks_complete(path)  # and the package's registry reads no such file
    config = WatchConfig(stability_wait_s=0.5, incomplete_grace_s=60, patterns=WITH_TOY.watch_patterns())
    watcher = InboxWatcher(inbox, config, formats=WITH_TOY)
    assert watcher.accepts("frame.TOY") and watcher.accepts("frame.toy") and watcher.accepts("frame.tif")
    t0 = time.monotonic()
    assert [c.path.name for c in watcher.poll(t0)] == []
    assert [c.path.name for c in watcher.poll(t0 + 1.0)] == []  # stable, but not whole
    path.write_bytes(data)
    os.utime(path)
    assert looks_complete(path, formats=WITH_TOY)
    assert [c.path.name for c in watcher.poll(t0 + 1.1)] == []  # changed: the wait starts again
    assert [c.path.name for c in watcher.poll(t0 + 2.0)] == ["frame.TOY"]
    item = claim(path, work, time.time(), time.monotonic())
    assert item is not None
    loaded = load_frame(item, ReadLimits(), formats=WITH_TOY)
    assert loaded.frame.format == "toy" and loaded.nbytes == len(data)
    np.testing.assert_array_equal(loaded.frame.pixels, ramp())


def test_the_suffix_lists_come_from_the_registry(tmp_path: Path) -> None:
    from drdaemon.evaluate.run import find_dataset
    from trainer.shared.data import list_frames

    # The default watch patterns are the registry's suffixes in both spellings.
    patterns = WatchConfig().patterns
    assert patterns == FRAME_FORMATS.watch_patterns()
    for suffix in (".tif", ".tiff", ".png", ".dcm", ".dicom", ".raw", ".his"):
        assert f"*{suffix}" in patterns and f"*{suffix.upper()}" in patterns
    example = tomllib.loads((REPO / "config.example.toml").read_text("utf-8"))
    assert example["watch"]["patterns"] == patterns  # the example shows the default
    assert "*.toy" in WITH_TOY.watch_patterns() and "*.TOY" in WITH_TOY.watch_patterns()
    assert "*.toy" not in patterns
    # The evaluation and the trainer list the registered format's files.
    folder = tmp_path / "frames"
    folder.mkdir()
    (folder / "a.toy").write_bytes(encode_toy(ramp()))
    tifffile.imwrite(folder / "b.tif", ramp())
    (folder / "notes.txt").write_text("not a frame")
    assert [p.name for p in find_dataset(folder, WITH_TOY).inputs] == ["a.toy", "b.tif"]
    assert [p.name for p in find_dataset(folder).inputs] == ["b.tif"]
    assert [p.name for p in list_frames(folder, WITH_TOY)] == ["a.toy", "b.tif"]
    assert [p.name for p in list_frames(folder)] == ["b.tif"]


def test_the_trainer_lists_every_format_read_without_configuration(tmp_path: Path) -> None:
    from trainer.shared.config import DataConfig
    from trainer.shared.data import TrainingSamples, list_frames

    folder = tmp_path / "frames"
    folder.mkdir()
    frame = ramp((48, 64))
    tifffile.imwrite(folder / "a.tif", frame)
    (folder / "b.dcm").write_bytes(dicom_bytes(diconde_dataset(frame)))
    (folder / "c.his").write_bytes(encode_his(frame))
    (folder / "d.raw").write_bytes(frame.tobytes())  # needs [input.raw], which the trainer has not
    files = list_frames(folder)
    assert [p.name for p in files] == ["a.tif", "b.dcm", "c.his"]
    samples = TrainingSamples(files, files, DataConfig(crop_size=32, workers=0), seed=3)
    seen = set()
    for key in range(12):  # each key draws one of the three frames
        item = samples[key]
        assert item["abnormal"].shape == (1, 32, 32)
        seen.add(float(item["abnormal"].sum()))
    assert len(seen) > 1
    assert not FRAME_FORMATS.format("raw").self_describing
    assert FRAME_FORMATS.self_describing().names() == ("dicom", "his", "png", "tiff")


def test_the_order_of_the_registry_is_the_precedence() -> None:
    assert FRAME_FORMATS.names() == ("dicom", "his", "raw", "png", "tiff")
    layout = ReadLimits(raw=RawLayout(4, 4))
    # A .raw frame whose pixels begin like a PNG is read as raw, by its suffix.
    raw = (PNG_SIGNATURE + bytes(32))[:32]
    assert decode_frame(raw, "frame.raw", layout).format == "raw"
    # A DICOM file whose preamble holds a TIFF header is DICOM.
    data = bytearray(dicom_bytes(diconde_dataset(ramp())))
    data[:4] = b"II*\x00"
    assert decode_frame(bytes(data), "frame.tif").format == "dicom"
    # A .dcm file without the marker says so; a toy file placed before "dicom" would win over it.
    with pytest.raises(FrameError, match=r"frame\.dcm has no DICM marker after a 128-byte preamble"):
        decode_frame(b"not a dicom file" * 10, "frame.dcm")
    first = FRAME_FORMATS.with_format(TOY, before="dicom")
    assert first.names() == ("toy", "dicom", "his", "raw", "png", "tiff")
    assert decode_frame(encode_toy(ramp()), "frame.raw", layout, first).format == "toy"


def test_the_registry_refuses_a_name_twice_and_names_the_formats_for_an_unknown_one() -> None:
    with pytest.raises(ValueError, match="'toy' is taken"):
        WITH_TOY.with_format(TOY)
    with pytest.raises(ValueError, match="registered twice"):
        ReaderRegistry((TOY, TOY))
    with pytest.raises(ValueError, match=r"unknown frame format 'jpeg'.*dicom, his, raw, png, tiff"):
        FRAME_FORMATS.format("jpeg")
    with pytest.raises(ValueError, match="unknown frame format 'jpeg'"):
        FRAME_FORMATS.with_format(TOY, before="jpeg")
    assert FRAME_FORMATS.names() == ("dicom", "his", "raw", "png", "tiff")  # with_format changed nothing
