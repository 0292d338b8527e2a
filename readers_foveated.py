"""The registry of frame readers: ``config.frame_reader`` names one of ``FRAME_READERS``.

The Hub files ship the readers a released checkpoint may use: ``query`` (``reader_base_foveated``), ``multi_scale``
and ``cascade`` (``spatial_readers_foveated``). Their knobs are their configs (``reader_config_foveated``). Readers
that only studies use register themselves, module and config, through :func:`register_reader` when the
repository's ``studies.readers`` package is imported.
"""

from __future__ import annotations

try:
    from .reader_base_foveated import FrameReader, QueryReader
    from .reader_config_foveated import ReaderConfig, reader_config_class, register_reader_config
    from .spatial_readers_foveated import SPATIAL_READERS
except ImportError:  # imported as a top-level module from a checkout of the repository
    from reader_base_foveated import FrameReader, QueryReader
    from reader_config_foveated import ReaderConfig, reader_config_class, register_reader_config
    from spatial_readers_foveated import SPATIAL_READERS

FRAME_READERS: dict[str, type[FrameReader]] = {"query": QueryReader, **SPATIAL_READERS}


def register_reader(name: str, reader: type[FrameReader], config: type[ReaderConfig] = ReaderConfig) -> None:
    """Add a reader (its module class and its config class) under ``name`` at run time."""
    if name in FRAME_READERS:
        raise ValueError(f"a frame reader named {name!r} exists already: {FRAME_READERS[name].__name__}")
    if not (isinstance(reader, type) and issubclass(reader, FrameReader)):
        raise TypeError(f"frame reader {name!r} must be a FrameReader subclass, got {reader!r}")
    register_reader_config(name, config)
    FRAME_READERS[name] = reader


def reader_class(name: str) -> type[FrameReader]:
    """The reader class named ``name``; a ``ValueError`` that names the readers (or where a study reader lives)."""
    reader_config_class(name)  # the error for an unknown or study reader
    return FRAME_READERS[name]


def build_reader(config) -> FrameReader:
    """The configured reader module (``config.frame_reader``)."""
    return reader_class(config.frame_reader)(config)


__all__ = ["FRAME_READERS", "build_reader", "reader_class", "register_reader"]
