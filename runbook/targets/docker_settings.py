"""The settings of the Docker deploy target (`deploy.type: docker`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from runbook.settings_base import MAX_INTERVAL_SECONDS, MAX_REQUEST_SECONDS, Settings


class DockerTarget(Settings):
    """Deploy on a Docker engine: pull by digest, replace the container keeping its configuration."""

    type: Literal["docker"]
    host: str | None = Field(default=None, description="unix:///... or tcp://...; default $DOCKER_HOST")
    container: str | None = Field(default=None, description="name of the service's container")
    label: str | None = Field(default=None, description="or a label selecting it, e.g. 'com.acme.service=shop'")
    sha_label: str = Field(
        default="org.opencontainers.image.revision", description="image/container label holding the commit SHA"
    )
    stop_timeout_seconds: int = Field(default=10, ge=0, le=MAX_REQUEST_SECONDS)
    start_timeout_seconds: float = Field(default=30.0, gt=0, le=MAX_INTERVAL_SECONDS)

    @model_validator(mode="after")
    def _selector(self) -> DockerTarget:
        if (self.container is None) == (self.label is None):
            raise ValueError("give exactly one of 'container' (a name) or 'label' (key=value)")
        if self.label is not None and "=" not in self.label:
            raise ValueError("'label' must be key=value, e.g. 'com.acme.service=shop'")
        return self
