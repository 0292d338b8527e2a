"""The registry of frame readers: ``config.frame_reader`` names one of ``FRAME_READERS``.

Each family of readers lives in its own Hub file and exports a ``{name: FrameReader subclass}`` dict; this file
imports the families and merges them (a new family adds its import and its dict to ``FAMILIES``). Nothing here
imports the model, so the config can ask a reader for its plan width and tokens without an import cycle.
"""

from __future__ import annotations

try:
    from .fixation_readers_foveated import FIXATION_READERS
    from .reader_base_foveated import FrameReader, QueryReader
    from .spatial_readers_foveated import SPATIAL_READERS
except ImportError:  # imported as a top-level module from a checkout of the repository
    from fixation_readers_foveated import FIXATION_READERS
    from reader_base_foveated import FrameReader, QueryReader
    from spatial_readers_foveated import SPATIAL_READERS

FAMILIES: tuple[dict[str, type[FrameReader]], ...] = (
    {"query": QueryReader},
    SPATIAL_READERS,
    FIXATION_READERS,
)
FRAME_READERS: dict[str, type[FrameReader]] = {}
for family in FAMILIES:
    clashes = sorted(set(family) & set(FRAME_READERS))
    if clashes:
        raise ValueError(f"frame readers named twice: {clashes}")
    FRAME_READERS.update(family)


def register_reader(name: str, reader: type[FrameReader]) -> None:
    """Add a reader under ``name`` at run time (a family not shipped as a Hub file, e.g. in a test)."""
    if name in FRAME_READERS:
        raise ValueError(f"a frame reader named {name!r} exists already: {FRAME_READERS[name].__name__}")
    if not (isinstance(reader, type) and issubclass(reader, FrameReader)):
        raise TypeError(f"frame reader {name!r} must be a FrameReader subclass, got {reader!r}")
    FRAME_READERS[name] = reader


def reader_class(name: str) -> type[FrameReader]:
    """The reader class named ``name``; a ``ValueError`` listing the readers otherwise."""
    if name not in FRAME_READERS:
        raise ValueError(
            f"FoveatedVLMConfig.frame_reader must be one of {sorted(FRAME_READERS)}, got {name!r}"
        )
    return FRAME_READERS[name]


def build_reader(config) -> FrameReader:
    """The configured reader module (``config.frame_reader``)."""
    return reader_class(config.frame_reader)(config)


__all__ = ["FRAME_READERS", "build_reader", "reader_class", "register_reader"]
