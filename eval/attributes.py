"""Caption attribute scoring, the one recipe of ``eval.captioning`` and ``eval.probes``: the attributes a
generated caption names (``parse_caption``) against the clip's own, exact match per scored attribute."""

from __future__ import annotations

from typing import Any

from foveated_vlm.data.procedural import parse_caption

ATTRIBUTES = ("colour", "shape", "size", "motion")
DEFAULT_SCORED_ATTRIBUTES = ("colour", "shape", "motion")
"""Scored when a clip does not say (clips made before ``scored_attributes`` existed, real captions)."""


def scored_attributes_of(item: dict[str, Any]) -> tuple[str, ...]:
    """The attributes a clip's caption is scored on (``item["scored_attributes"]``, else colour/shape/motion)."""
    scored = tuple(item.get("scored_attributes") or DEFAULT_SCORED_ATTRIBUTES)
    unknown = [name for name in scored if name not in ATTRIBUTES]
    if unknown:
        raise ValueError(
            f"clip {item.get('clip_id')!r} scores unknown attributes {unknown}; known: {ATTRIBUTES}"
        )
    return scored


def true_attributes(item: dict[str, Any]) -> dict[str, str | None]:
    """The clip's attributes read from its exact caption; the target object's record fills what the parser lacks."""
    truth = dict(parse_caption(item["caption"]))
    objects, target = item.get("objects"), item.get("target_index")
    if objects is not None and target is not None:
        for name in ATTRIBUTES:
            if truth.get(name) is None:
                truth[name] = objects[target].get(name)
    return truth


def score_caption(item: dict[str, Any], generated: str) -> dict[str, bool]:
    """Exact match of each scored attribute between the generated text and the clip (``parse_caption``).

    An attribute the parser cannot read from text (absent from its result) is never matched.
    """
    truth, predicted = true_attributes(item), parse_caption(generated)
    return {
        name: truth.get(name) is not None and predicted.get(name) == truth.get(name)
        for name in scored_attributes_of(item)
    }


__all__ = [
    "ATTRIBUTES",
    "DEFAULT_SCORED_ATTRIBUTES",
    "score_caption",
    "scored_attributes_of",
    "true_attributes",
]
