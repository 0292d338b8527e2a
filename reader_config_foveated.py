"""The frame readers' own configs: each reader's knobs, their defaults, validation and the shapes they imply.

``FoveatedVLMConfig.frame_reader`` names a reader and ``FoveatedVLMConfig.reader_config`` holds its knobs by name;
the reader's :class:`ReaderConfig` subclass (registered here under the reader's name) declares them as dataclass
fields with a docstring each, checks them (``validate``) and says what they imply for the model's shapes
(``plan_width``, ``tokens_per_plan``). This file is plain configuration: no torch, no model module, so the model
config validates itself without importing a reader. The reader modules (``readers_foveated.FRAME_READERS``) read
their knobs from ``config.reader_settings``.

The Hub files register the readers a released checkpoint may use (``query``, ``multi_scale``, ``cascade``). Study
readers register their configs and modules on import of the repository's ``studies.readers`` package; a config
that names one without it fails with an error that says so.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

STUDY_READERS_PACKAGE = "studies.readers"
"""Where the readers that only studies use live (the repository's ``studies/readers``; not in a checkpoint)."""
STUDY_READER_NAMES = (
    "log_polar",
    "top_k",
    "hybrid",
    "dual_stream",
    "multi_fixation",
    "glimpse_rl",
    "adaptive_fixation",
)
"""Readers that moved out of the Hub files into ``studies.readers`` (named so that an error can say where)."""


@dataclass
class ReaderConfig:
    """Knobs of the ``query`` reader (none) and the base of every reader's config.

    A subclass adds dataclass fields (each with a docstring) and overrides :meth:`validate`, :meth:`plan_width`
    and :meth:`tokens_per_plan` where its reader differs from reading with a query of width ``query_dim``.
    """

    def validate(self, config) -> None:
        """Raise a ``ValueError`` naming a bad knob (``self.check``)."""

    def plan_width(self, config) -> int:
        """Width W of one plan: what the LLM's plan head predicts per plan (``query_dim`` for a query)."""
        return config.query_dim

    def tokens_per_plan(self, config) -> int:
        """Visual tokens one plan reads from a frame."""
        return 1

    def check(self, reader: str, checks: dict[str, tuple[bool, str]]) -> None:
        """``{knob: (ok, what it must be)}`` -> a ``ValueError`` naming the first bad knob, its value and the
        reader."""
        for name, (ok, expected) in checks.items():
            if not ok:
                raise ValueError(
                    f"FoveatedVLMConfig.reader_config[{name!r}] must be {expected} for frame_reader={reader!r}, "
                    f"got {getattr(self, name)!r}"
                )

    @classmethod
    def from_knobs(cls, reader: str, knobs: dict[str, Any] | None) -> ReaderConfig:
        """This config from ``reader_config``'s knobs; a ``ValueError`` naming any knob it does not have."""
        names = [field.name for field in dataclasses.fields(cls)]
        unknown = sorted(set(knobs or {}) - set(names))
        if unknown:
            raise ValueError(
                f"FoveatedVLMConfig.reader_config has {unknown}, which frame_reader={reader!r} does not take; "
                f"its knobs are {names or 'none'}"
            )
        return cls(**(knobs or {}))


@dataclass
class MultiScaleReaderConfig(ReaderConfig):
    """Knobs of ``multi_scale``: the query's attention-weighted pools of the patch grid at several scales."""

    multi_scale_factors: list[int] = dataclasses.field(default_factory=lambda: [1, 2, 4])
    """Average-pooling factors of the patch grid (each divides it); the query's attention-weighted pool at each
    scale, mixed by learned scale weights, is the token."""

    def validate(self, config) -> None:
        side = round(config.num_patches**0.5)
        factors = list(self.multi_scale_factors)
        self.check(
            "multi_scale",
            {
                "multi_scale_factors": (
                    len(factors) > 0
                    and len(set(factors)) == len(factors)
                    and all(isinstance(f, int) and f >= 1 and side % f == 0 for f in factors),
                    f"distinct pooling factors that divide the {side}x{side} patch grid",
                )
            },
        )


@dataclass
class CascadeReaderConfig(ReaderConfig):
    """Knobs of ``cascade``: coarse-to-fine glimpses through the encoder within a frame."""

    cascade_steps: int = 2
    """Glimpses per frame (>= 2); each refines the query (a residual MLP of its output) and centres the next
    glimpse's Gaussian bias where it looked; the last glimpse is the token."""
    cascade_sigma: float = 0.5
    """Std of the Gaussian patch bias around the previous glimpse, in the -1..1 frame coordinates of
    ``glimpse_location`` (smaller narrows more)."""
    cascade_hidden_dim: int = 256
    """Hidden width of the residual MLP that refines the query between glimpses."""

    def validate(self, config) -> None:
        self.check(
            "cascade",
            {
                "cascade_steps": (self.cascade_steps >= 2, ">= 2 (one glimpse is the query reader)"),
                "cascade_sigma": (self.cascade_sigma > 0, "positive"),
                "cascade_hidden_dim": (self.cascade_hidden_dim > 0, "positive"),
            },
        )


READER_CONFIGS: dict[str, type[ReaderConfig]] = {
    "query": ReaderConfig,
    "multi_scale": MultiScaleReaderConfig,
    "cascade": CascadeReaderConfig,
}
LEGACY_READER_KNOBS: dict[str, Any] = {
    "multi_scale_factors": [1, 2, 4],
    "cascade_steps": 2,
    "cascade_sigma": 0.5,
    "cascade_hidden_dim": 256,
    "log_polar_rings": 4,
    "log_polar_wedges": 8,
    "log_polar_min_radius": 0.1,
    "log_polar_max_radius": 1.0,
    "top_k_patches": 4,
    "top_k_output": "weighted_sum",
    "fixation_crop_size": 64,
    "fixation_token": "cls",
    "fixation_min_scale": 0.125,
    "fixation_max_scale": 0.5,
    "fixation_centre_range": 1.0,
    "fixation_periphery": "token",
    "fixation_periphery_grid": 1,
    "fixation_box_loss": "gaussian",
    "fixation_box_sigma": 1.0,
    "num_fixations": 2,
    "glimpse_grid": 4,
    "glimpse_window": 1.0,
    "glimpse_entropy_weight": 0.0,
    "glimpse_baseline_hidden_dim": 64,
    "glimpse_budget_levels": [1, 2, 4],
    "glimpse_budget_temperature": 1.0,
    "glimpse_cost": 0.01,
    "reader_loss_weight": 1.0,
}
"""Reader knobs that were top-level config fields before ``reader_config`` (with the defaults they had): a config
saved then carries every one of them; :func:`adopt_legacy_reader_knobs` moves them where they belong now."""


def register_reader_config(name: str, config_class: type[ReaderConfig]) -> None:
    """Register the config of a reader that does not ship in the Hub files (``studies.readers`` does this)."""
    if not (isinstance(config_class, type) and issubclass(config_class, ReaderConfig)):
        raise TypeError(
            f"the config of reader {name!r} must be a ReaderConfig subclass, got {config_class!r}"
        )
    if READER_CONFIGS.get(name, config_class) is not config_class:
        raise ValueError(f"a reader named {name!r} is registered already: {READER_CONFIGS[name].__name__}")
    READER_CONFIGS[name] = config_class


def reader_config_class(name: str) -> type[ReaderConfig]:
    """The config class of reader ``name``; a ``ValueError`` that says where a study reader lives otherwise."""
    if name in READER_CONFIGS:
        return READER_CONFIGS[name]
    if name in STUDY_READER_NAMES:
        raise ValueError(
            f"frame_reader={name!r} is a study reader: it lives in the foveated-vlm repository's "
            f"`{STUDY_READERS_PACKAGE}` package, not in the model's files. Run from a checkout of the repository "
            f"and `import {STUDY_READERS_PACKAGE}` before building or loading this model."
        )
    raise ValueError(f"FoveatedVLMConfig.frame_reader must be one of {sorted(READER_CONFIGS)}, got {name!r}")


def adopt_legacy_reader_knobs(reader: str, reader_config: dict | None, kwargs: dict[str, Any]) -> dict:
    """``reader_config`` (tuples as lists, as JSON keeps them) with the top-level reader knobs of an older config
    (popped from ``kwargs``) moved in.

    A knob of the configured reader joins ``reader_config`` (where that does not set it already); a knob of
    another reader is dropped at its old default (it never acted) and refused otherwise (it would be lost).
    """
    knobs = {name: _as_plain(value) for name, value in (reader_config or {}).items()}
    own = {field.name for field in dataclasses.fields(reader_config_class(reader))}
    for name, default in LEGACY_READER_KNOBS.items():
        if name not in kwargs:
            continue
        value = kwargs.pop(name)
        if name in own:
            knobs.setdefault(name, _as_plain(value))
        elif _as_plain(value) != default:
            raise ValueError(
                f"{name}={value!r} is not a knob of frame_reader={reader!r} (its knobs go in reader_config, "
                f"and it takes {sorted(own) or 'none'})"
            )
    return knobs


def _as_plain(value: Any) -> Any:
    """Tuples as lists, so a knob compares equal to its default however it was written."""
    return list(value) if isinstance(value, tuple) else value


__all__ = [
    "READER_CONFIGS",
    "CascadeReaderConfig",
    "MultiScaleReaderConfig",
    "ReaderConfig",
    "adopt_legacy_reader_knobs",
    "reader_config_class",
    "register_reader_config",
]
