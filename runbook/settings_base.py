"""The building blocks of every settings model, shared by runbook.config and the modules that own a settings part.

`Settings`: frozen, and unknown keys are errors (a typo is not ignored). `UrlStr`: the one http(s) URL check.
`SecretRef`: where a secret lives (an environment variable or a Prefect Secret block), never its value.
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Any, cast
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, SecretStr, field_validator, model_validator

from runbook.errors import SecretError

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


def sha_path(value: str) -> str:
    """Where a version answer holds the commit SHA: a dotted JSON path (`sha`, `build.sha`)."""
    return dotted_path(value, "'sha' or 'build.sha'")


_ENV_VAR_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")
_BLOCK_NAME = re.compile(r"[a-z0-9-]+")
# How known credentials start (GitHub, Slack, GitLab, AWS, OpenAI/Stripe, Standard Webhooks, JWTs, PEM keys), or
# a URL (a Slack incoming webhook is one).
_CREDENTIAL = re.compile(
    r"gh[pousr]_|github_pat_|xox[abepors]-|xapp-|glpat-|sk-\w|sk_live_|sk_test_|rk_live_|whsec_|eyJ|-----BEGIN"
    r"|(AKIA|ASIA)[A-Z0-9]{16}$|\w+://"
)


def looks_like_credential(value: str) -> bool:
    """Whether a reference's value is more likely a secret than a name: a known prefix, or random-looking."""
    if _CREDENTIAL.match(value.strip()):
        return True
    if len(value) < 16 or not re.search(r"[0-9]", value):
        return False
    # Names are upper-case (variables) or lower-case (blocks) words; keys mix cases and digits, or run long.
    mixed = bool(re.search(r"[a-z]", value)) and bool(re.search(r"[A-Z]", value))
    return mixed or re.search(r"[A-Za-z0-9+/=]{32}", value) is not None


def _reference(value: str, name: re.Pattern[str], what: str, rule: str) -> None:
    """Refuse a reference that is not a name; never repeat it (it may be the secret)."""
    if looks_like_credential(value):
        raise ValueError(
            f"looks like a credential, not the name of {what}: keep the secret in {what} and write its name "
            "here; if it is a real secret, rotate it"
        )
    if not value:
        raise ValueError(f"is empty: give the name of {what} ({rule})")
    if not name.fullmatch(value):
        raise ValueError(f"must be the name of {what} ({rule})")


class SecretRef(Settings):
    """Where a secret lives: an environment variable or a Prefect Secret block, never its value."""

    env: str | None = None
    prefect_secret: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_shorthand(cls, value: Any) -> Any:
        if isinstance(value, str):
            kind, sep, name = value.partition(":")
            if sep and kind == "env":
                return {"env": name}
            if sep and kind in ("prefect-secret", "prefect_secret"):
                return {"prefect_secret": name}
            raise ValueError(
                "secrets are referenced, never written in the file: use {env: VAR_NAME} or "
                "{prefect_secret: block-name} (or the short forms 'env:VAR_NAME', 'prefect-secret:block-name')"
            )
        return value

    # No message below repeats the value: what fails here is, as often as not, the secret itself pasted in.
    @field_validator("env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None:
            _reference(value, _ENV_VAR_NAME, "an environment variable", "A-Z, 0-9 and _, e.g. GITHUB_TOKEN")
        return value

    @field_validator("prefect_secret")
    @classmethod
    def _block_name(cls, value: str | None) -> str | None:
        if value is not None:
            _reference(value, _BLOCK_NAME, "a Prefect Secret block", "a-z, 0-9 and -, e.g. slack-bot-token")
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        if (self.env is None) == (self.prefect_secret is None):
            raise ValueError("give exactly one of 'env' or 'prefect_secret'")
        return self

    def describe(self) -> str:
        """Where to look, for messages: `environment variable GITHUB_TOKEN`."""
        if self.env is not None:
            return f"environment variable {self.env}"
        return f"Prefect Secret block {self.prefect_secret!r}"

    def reveal(self) -> SecretStr:
        """Read the secret now; a missing one is a SecretError naming where it was looked for."""
        if self.env is not None:
            value = os.environ.get(self.env)
            if not value:
                raise SecretError(
                    f"the secret in {self.describe()} is not set",
                    hint=f"export {self.env}=... in the environment of the worker, or change the reference",
                )
            return SecretStr(value)
        from prefect.blocks.system import Secret

        try:
            block = cast(Secret[str], Secret.load(str(self.prefect_secret)))  # sync context: not a coroutine
        except ValueError as exc:
            raise SecretError(
                f"the {self.describe()} cannot be loaded",
                hint="create it in the Prefect UI (Blocks > Secret) or with `prefect block create secret`",
            ) from exc
        return SecretStr(str(block.get()))
