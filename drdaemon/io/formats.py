"""Writing enhanced frames: 16-bit TIFF bytes, an optional 8-bit PNG preview, and atomic files.

Outputs are encoded in memory first so that the bytes written are the bytes hashed for the
sidecar, without reading the file back. Every file under a final name appears in one
``rename``: it is written under a temporary dot-name in the same folder, flushed to disk
with ``fsync``, then renamed, so a reader (or a crash) never sees half a file.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np
import tifffile

#: Every temporary file the daemon writes ends with this suffix, so that start-up can remove
#: the leftovers of a crash without touching anybody else's files.
TEMP_SUFFIX = ".drdaemon.tmp"
#: Long side of the PNG preview in pixels; a preview is for a glance, not for diagnosis.
PREVIEW_MAX_SIDE = 1024

_COMPRESSION = {"none": None, "zstd": "zstd", "deflate": "deflate"}


def encode_tiff_u16(
    pixels: np.ndarray, tags: Mapping[str, object] | None = None, compression: str = "zstd"
) -> bytes:
    """A single-page uint16 TIFF of ``pixels`` with the input's resolution and description tags.

    Compressed outputs use horizontal-difference prediction, which roughly halves the size of
    smooth 16-bit images at little cost; compression runs on two threads.
    """
    if pixels.ndim != 2:
        raise ValueError(f"expected a 2-D frame, got shape {pixels.shape}")
    if compression not in _COMPRESSION:
        raise ValueError(f"unknown compression {compression!r}; expected one of {', '.join(_COMPRESSION)}")
    codec = _COMPRESSION[compression]
    buffer = io.BytesIO()
    tifffile.imwrite(
        buffer,
        np.ascontiguousarray(pixels, dtype=np.uint16),
        photometric="minisblack",
        compression=codec,
        predictor=True if codec else None,
        maxworkers=2 if codec else 1,
        metadata=None,  # no tifffile JSON description: the input's description is kept instead
        **_tiff_tag_arguments(tags or {}),
    )
    return buffer.getvalue()


def _tiff_tag_arguments(tags: Mapping[str, object]) -> dict[str, object]:
    """Translate tags read by :mod:`drdaemon.io.readers` into ``tifffile.imwrite`` arguments."""
    arguments: dict[str, object] = {}
    if "XResolution" in tags and "YResolution" in tags:
        arguments["resolution"] = (tags["XResolution"], tags["YResolution"])
        if "ResolutionUnit" in tags:
            arguments["resolutionunit"] = tags["ResolutionUnit"]
    description = tags.get("ImageDescription")
    if isinstance(description, str) and description:
        arguments["description"] = description
    software = tags.get("Software")
    if isinstance(software, str) and software:
        arguments["software"] = software
    return arguments


def encode_preview_png(pixels: np.ndarray, max_side: int = PREVIEW_MAX_SIDE) -> bytes:
    """An 8-bit PNG of a uint16 frame, shrunk so its long side is at most ``max_side``."""
    height, width = pixels.shape
    scale = min(1.0, max_side / max(height, width))
    small = pixels
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        small = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
    ok, encoded = cv2.imencode(".png", (small >> 8).astype(np.uint8))
    if not ok:
        raise ValueError("PNG encoder refused the preview")
    return encoded.tobytes()


def temp_path_for(final: Path, tag: str = "") -> Path:
    """The temporary dot-name next to ``final`` under which its content is written first."""
    return final.with_name(f".{final.name}.{os.getpid()}{tag}{TEMP_SUFFIX}")


def atomic_write(final: Path, data: bytes, *, replace: bool = False) -> None:
    """Write ``data`` to ``final`` so that the name appears only with the whole content.

    Without ``replace`` an existing file is never overwritten (``FileExistsError``): outputs
    are immutable once committed. The check and the rename are one step (a hard link), so a
    file that appears between them is not clobbered either.
    """
    final = Path(final)
    temp = temp_path_for(final)
    try:
        with open(temp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if replace:
            os.replace(temp, final)
        else:
            _rename_no_replace(temp, final)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _rename_no_replace(source: Path, target: Path) -> None:
    try:
        os.link(source, target)  # fails with FileExistsError instead of replacing
    except FileExistsError:
        raise
    except OSError:
        # Shares without hard links (SMB, FAT): the daemon is the only writer of its
        # folders (the work-folder lock), so checking first is enough there.
        if target.exists():
            raise FileExistsError(target) from None
        os.rename(source, target)
        return
    os.unlink(source)


def fsync_directory(directory: Path) -> None:
    """Make the renames inside ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_tiff_u16(
    path: Path, pixels: np.ndarray, tags: Mapping[str, object] | None = None, compression: str = "zstd"
) -> bytes:
    """Encode and atomically write a 16-bit TIFF; returns the bytes written (for hashing)."""
    data = encode_tiff_u16(pixels, tags, compression)
    atomic_write(Path(path), data)
    return data


__all__ = [
    "TEMP_SUFFIX",
    "atomic_write",
    "encode_preview_png",
    "encode_tiff_u16",
    "fsync_directory",
    "temp_path_for",
    "write_tiff_u16",
]
