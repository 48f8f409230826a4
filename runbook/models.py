"""The base of every settings model: frozen, and unknown keys are errors (a typo is not ignored)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Settings(BaseModel):
    """A frozen settings model that forbids unknown keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)
