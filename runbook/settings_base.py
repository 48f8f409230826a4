"""The base of every settings model: frozen, and unknown keys are errors (a typo is not ignored)."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict

# Upper bounds of the durations in the settings: past them a value is a typo or a unit mix-up (ms for s), and a
# deadline longer than the rollback flow's own timeout (4 h) could never be reached.
MAX_REQUEST_SECONDS = 600.0  # one HTTP request
MAX_INTERVAL_SECONDS = 3600.0  # between two polls or probes
MAX_WAIT_SECONDS = 4 * 3600.0  # a deadline, or how long something must hold


class Settings(BaseModel):
    """A frozen settings model that forbids unknown keys, and NaN or infinite numbers (a deadline never reached)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def http_url(value: str) -> str:
    """An http(s) URL naming a host, for a settings validator (`file://`, `shop/health` or `http://` are not)."""
    try:
        parts = urlsplit(value)
        host = parts.hostname
    except ValueError:
        raise ValueError("must be a URL such as https://host/path") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError("must start with http:// or https://")
    if not host:
        raise ValueError("must name a host, e.g. https://host/path")
    return value


UrlStr = Annotated[str, AfterValidator(http_url)]
"""A settings field holding an http(s) URL (kept as the text written)."""


def dotted_path(value: str, example: str) -> str:
    """A JSON path such as `build.sha`: non-empty parts separated by dots (ValueError naming `example`)."""
    if not value or any(not part for part in value.split(".")):
        raise ValueError(f"must be a dotted path such as {example}")
    return value
