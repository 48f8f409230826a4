"""What the alert sources share: validating a webhook body (naming the field) and the bearer-token check."""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class PayloadError(ValueError):
    """A body that is not the shape a source expects: the first problem in the message, up to 20 in `problems`."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(f"invalid payload: {problems[0]}")
        self.problems = problems[:20]


class Unauthorized(Exception):
    """A request without the credentials a source wants (its message says which, never the expected value)."""


def validate_payload(model: type[M], data: Any) -> M:
    """`data` as `model`, or a PayloadError naming each field that is wrong (`alerts.0.startsAt: Field required`)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise PayloadError(
            [
                f"{'.'.join(str(p) for p in error['loc']) or '(body)'}: {error['msg']}"
                for error in exc.errors(include_url=False)
            ]
        ) from None


def check_bearer_token(headers: Mapping[str, str], expected: bytes) -> None:
    """`Authorization: Bearer <expected>`, compared in constant time, or Unauthorized."""
    header = headers.get("authorization")
    if header is None:  # a plain mapping (HTTP header names are case-insensitive; ASGI's are lower case)
        header = next((value for name, value in headers.items() if name.lower() == "authorization"), None)
    if not header:
        raise Unauthorized("missing bearer token (Authorization: Bearer <token>)")
    scheme, _, value = header.partition(" ")
    # compare_digest on bytes: on str it raises for non-ASCII input instead of answering False.
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), expected):
        raise Unauthorized("invalid bearer token")
