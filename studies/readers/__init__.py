"""Frame readers that only studies use, registered with the model on import.

``import studies.readers`` adds the log-polar, top-K, hybrid (``spatial``) and fixation (``fixation``) readers to
the model's reader registry (``readers_foveated.FRAME_READERS``) and their configs to
``reader_config_foveated.READER_CONFIGS``, so that a config naming one builds and a checkpoint trained with one
loads (from a checkout of the repository: these readers are not in a checkpoint's files). In the readers
comparison (``studies/readers/RESULTS.md``) none of them learned to look where the prompt pointed.
"""

from __future__ import annotations

from readers_foveated import register_reader
from studies.readers.fixation import STUDY_FIXATION_READERS
from studies.readers.spatial import STUDY_SPATIAL_READERS

STUDY_READERS = {**STUDY_SPATIAL_READERS, **STUDY_FIXATION_READERS}
"""``{name: (reader module class, reader config class)}`` of every study reader."""

for _name, (_reader, _config) in STUDY_READERS.items():
    register_reader(_name, _reader, _config)

__all__ = ["STUDY_READERS"]
