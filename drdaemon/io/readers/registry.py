"""The reader registry: every frame format drdaemon reads, in the order a file is recognised.

:data:`FRAME_FORMATS` lists one :class:`~drdaemon.io.readers.base.FrameFormat` per format. The
reading functions of :mod:`drdaemon.io.readers` (``read_frame``, ``decode_frame``,
``check_header``, ``looks_complete``) ask it which format a file is and call that format's
functions; the default ``watch.patterns`` (:mod:`drdaemon.config`), the evaluation's frame
listing (:mod:`drdaemon.evaluate.run`) and the trainer's (:mod:`trainer.shared.data`, the
self-describing formats only) take their suffixes from it, and the frame formats reference page
(``docs/reference/frame-formats.md``) is generated from it. A file that no format recognises is
unreadable, with a message naming every format: never a guess.

The order is the precedence: the first format whose ``recognises(head, suffix)`` is true reads
the file. DICOM comes first, since a DICOM preamble may hold a TIFF header; then ``.his`` and
``.raw``, by suffix, since their pixels may begin like any signature; then the PNG and TIFF
signatures, whatever the file's suffix.

Adding a format:

1. one new module under ``drdaemon/io/readers/`` (``tiff.py`` is a complete example) with
   ``recognises(head, suffix)``, ``decode(data, name, limits) -> Frame`` (checking sizes
   against ``limits`` from the header before decoding, raising
   :class:`~drdaemon.errors.FrameError` with a :class:`~drdaemon.errors.Reason`), ``complete(file,
   head, size, limits)`` (the watcher's cheap "is it all written?") and, where the header lies
   at the start of a file that may be large, ``check_header(file, head, name, size, limits)``;
   and one ``FrameFormat(name=..., title=..., suffixes=(...), ...)`` value built from them;
2. one entry in :data:`FRAME_FORMATS`, at the place of its precedence (a format recognised by
   its suffix before the signature formats, a signature format anywhere after the suffix ones);
3. ``python docs/gen_reference.py`` to regenerate the reference pages (the frame formats table
   and the default ``watch.patterns``), and a test that reads, checks and refuses such files.

The tests add a toy format the same way (``tests/toy_format.py``) through
:meth:`ReaderRegistry.with_format`, which returns a new registry instead of changing this one;
the reading functions, the watcher, the daemon's frame loader, the evaluation's and the
trainer's listings take a registry as a parameter (default :data:`FRAME_FORMATS`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from drdaemon.errors import FrameError, Reason, Stage
from drdaemon.io.readers.base import FrameFormat
from drdaemon.io.readers.dicom import DICOM
from drdaemon.io.readers.his import HIS
from drdaemon.io.readers.png import PNG
from drdaemon.io.readers.raw import RAW
from drdaemon.io.readers.tiff import TIFF


def suffix_of(name: str) -> str:
    """A file name's suffix as the formats see it: lower case, with its dot; ``""`` for none."""
    return Path(name).suffix.lower()


@dataclass(frozen=True)
class ReaderRegistry:
    """Frame formats in the order a file is recognised; immutable (:meth:`with_format` returns a new one)."""

    formats: tuple[FrameFormat, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "formats", tuple(self.formats))
        names = [fmt.name for fmt in self.formats]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"frame format name(s) {', '.join(twice)} registered twice")

    def with_format(self, fmt: FrameFormat, before: str | None = None) -> ReaderRegistry:
        """This registry plus ``fmt``, recognised just before the format named ``before`` (default: last)."""
        if fmt.name in self.names():
            raise ValueError(f"frame format name {fmt.name!r} is taken")
        at = len(self.formats) if before is None else self.names().index(self.format(before).name)
        return ReaderRegistry((*self.formats[:at], fmt, *self.formats[at:]))

    def names(self) -> tuple[str, ...]:
        """The formats' names, in the order a file is recognised."""
        return tuple(fmt.name for fmt in self.formats)

    def format(self, name: str) -> FrameFormat:
        """The format called ``name``; ValueError naming the registered ones otherwise."""
        for fmt in self.formats:
            if fmt.name == name:
                return fmt
        raise ValueError(f"unknown frame format {name!r}; the frame formats are: {', '.join(self.names())}")

    def self_describing(self) -> ReaderRegistry:
        """The formats read without any configuration (not ``.raw``, which needs ``[input.raw]``)."""
        return ReaderRegistry(tuple(fmt for fmt in self.formats if fmt.self_describing))

    def suffixes(self) -> tuple[str, ...]:
        """Every format's suffixes (lower case, with the dot), in the registry's order."""
        return tuple(dict.fromkeys(suffix for fmt in self.formats for suffix in fmt.suffixes))

    def takes_suffix(self, name: str) -> bool:
        """Whether a file called ``name`` has a suffix of one of the formats (in either case)."""
        return suffix_of(name) in self.suffixes()

    def watch_patterns(self) -> list[str]:
        """The default ``watch.patterns``: each suffix in lower and upper case (the match is case-sensitive)."""
        return [
            pattern for suffix in self.suffixes() for pattern in dict.fromkeys((f"*{suffix}", f"*{suffix.upper()}"))
        ]

    def find(self, head: bytes, name: str) -> FrameFormat | None:
        """The first format that recognises a file starting with ``head`` called ``name``; None if none does."""
        suffix = suffix_of(name)
        return next((fmt for fmt in self.formats if fmt.recognises(head, suffix)), None)

    def recognise(self, head: bytes, name: str) -> FrameFormat:
        """:meth:`find`, or the :class:`FrameError` (``unreadable``) that says why no format reads the file."""
        found = self.find(head, name)
        if found is not None:
            return found
        suffix = suffix_of(name)
        for fmt in self.formats:
            if suffix in fmt.suffixes and fmt.misnamed is not None:
                raise FrameError(Stage.READ, Reason.UNREADABLE, f"{name} {fmt.misnamed}")
        known = "; ".join(f"{fmt.title}: {fmt.recognised_by}" for fmt in self.formats)
        raise FrameError(
            Stage.READ,
            Reason.UNREADABLE,
            f"{name} is none of the frame formats drdaemon reads ({known}); "
            "convert it to one of them, or keep it out of watch.patterns",
        )

    def __iter__(self) -> Iterator[FrameFormat]:
        return iter(self.formats)


#: Every frame format, in the order a file is recognised. Add a format here (see the module's docstring).
FRAME_FORMATS = ReaderRegistry((DICOM, HIS, RAW, PNG, TIFF))
