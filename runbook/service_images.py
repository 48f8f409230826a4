"""The service's images in its registry: which reference a commit has, and whether it exists."""

from __future__ import annotations

from runbook.config import RunbookConfig, ServiceSettings
from runbook.errors import ImageNotFoundError
from runbook.registry import ManifestInfo, RegistryClient, RegistryCredentials, parse_image_ref


def registry_credentials(config: RunbookConfig) -> dict[str, RegistryCredentials]:
    """The configured registry credentials by host, read from their references now."""
    return {
        r.host: RegistryCredentials(r.username, r.password.reveal().get_secret_value())
        for r in config.registries
        if r.username is not None and r.password is not None
    }


def insecure_registries(config: RunbookConfig) -> list[str]:
    """Registry hosts configured for plain HTTP."""
    return [r.host for r in config.registries if r.insecure]


def registry_client(config: RunbookConfig) -> RegistryClient:
    """A registry client with the configured credentials (read from their references now)."""
    credentials = registry_credentials(config)
    insecure = insecure_registries(config)
    # Where each password lives, so a 401 names the secret to check (never its value).
    hints = {r.host: r.password.describe() for r in config.registries if r.password}
    return RegistryClient(credentials=credentials, insecure_registries=insecure, secret_hint=hints)


def find_image(client: RegistryClient, service: ServiceSettings, sha: str) -> ManifestInfo:
    """The manifest of the image built for `sha`, or ImageNotFoundError."""
    return client.head_manifest(
        parse_image_ref(service.image, service.tag_for(sha)), require_platform=service.require_platform
    )


def image_exists(client: RegistryClient, service: ServiceSettings, sha: str) -> bool:
    """Whether the image built for `sha` is in the registry."""
    try:
        find_image(client, service, sha)
    except ImageNotFoundError:
        return False
    return True
