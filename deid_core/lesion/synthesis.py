"""Healthy twins by FlowEdit: the "pathological -> healthy" edit that feeds the twin mask.

Kept apart from `twin.py` so that the masks import without torch; FlowEdit is imported when a
generator is made.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from deid_core.lesion.twin import TwinGenerator

if TYPE_CHECKING:
    from deid_core.models import RectifiedFlowModel

#: Default prompt pair of the healthy-twin edit; routes may set their own.
DEFAULT_LESION_PROMPT = "a clinical photograph of skin with a red inflamed lesion"
DEFAULT_HEALTHY_PROMPT = "a clinical photograph of healthy normal skin"


def flowedit_twins(
    model: RectifiedFlowModel,
    lesion_prompt: str = DEFAULT_LESION_PROMPT,
    healthy_prompt: str = DEFAULT_HEALTHY_PROMPT,
    twin_long_side: int = 512,
    **param_overrides: Any,
) -> TwinGenerator:
    """A twin generator on `model` with the family's published FlowEdit settings (overridable).

    The prompt embeddings are computed here, once. Make every editor of a model before calling
    `model.release_text_encoders()`. Twins are edited at most `twin_long_side` pixels a side
    (`healthy_twins` already hands them over that small)."""
    from deid_core.flowedit import FlowEditor, FlowEditParams

    overrides = {"max_side": twin_long_side, **param_overrides}
    params = FlowEditParams.defaults_for(model.family, **overrides)
    return FlowEditor(model, params, lesion_prompt, healthy_prompt).edit
