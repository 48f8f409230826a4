"""Step 2 (seed, prerequisites): the image tagged with the SHA exists in the registry; keep its digest."""

from __future__ import annotations

from dataclasses import dataclass

from prefect import get_run_logger, task

from runbook.config import ServiceSettings
from runbook.registry import RegistryClient
from runbook.service_images import find_image
from tasks.policy import run_once


@dataclass(frozen=True)
class ImageCheck:
    """The image found for the commit: everything after this deploys by digest."""

    image: str
    digest: str
    media_type: str

    @property
    def pinned(self) -> str:
        """`registry/name@sha256:...`: the exact bytes, whatever happens to the tag."""
        return f"{self.image.rsplit(':', 1)[0]}@{self.digest}"


@task(name="verify-image", cache_policy=run_once(exclude="registry"), persist_result=True)
def verify_image(registry: RegistryClient, service: ServiceSettings, sha: str) -> ImageCheck:
    """Verify the image built for the commit is in the registry and record its digest."""
    manifest = find_image(registry, service, sha)
    get_run_logger().info("image %s found: %s (%s)", manifest.image, manifest.digest, manifest.media_type)
    return ImageCheck(manifest.image, manifest.digest, manifest.media_type)
