"""The Prefect UI, in a real browser: a person starts a rollback with Run > Custom run and sees it complete, then
its artifacts (the slow deploy's progress, the post-mortem) and the post-mortem itself.

Headless Debian Chromium driven by Playwright (no browser download) against the UI of the `prefect_api` server,
with `runbook serve` (the `served` fixture) running the run. Screenshots go to test-output/.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httpx
import pytest

from sandbox.world import ENVIRONMENT, REPOSITORY
from tests.support.prefect_api import wait_terminal
from tests.support.served import Served

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Locator, Page, Route

CHROMIUM = "/usr/bin/chromium"
# We run as root (--no-sandbox); without the background-networking flags Chromium keeps calling Google.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic",
]  # fmt: skip
TIMEOUT_MS = 60_000


def require_playwright_and_chromium() -> None:
    """Fail, saying what to install, when Playwright or Chromium is missing (this test is not optional)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        pytest.fail(
            f"Playwright is not installed ({exc}): `.venv/bin/pip install playwright` (or `pip install -e '.[test]'`);"
            " do not run `playwright install`: the test drives Debian's Chromium"
        )
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"Chromium is missing ({CHROMIUM}): apt-get install chromium")


@contextmanager
def browser_context(api: str, blocked: list[str]) -> Iterator[BrowserContext]:
    """A Chromium context that reaches 127.0.0.1 only (the UI's own analytics client would call out)."""
    from playwright.sync_api import Error, sync_playwright

    def only_loopback(route: Route) -> None:
        if urlsplit(route.request.url).hostname in ("127.0.0.1", "localhost"):
            route.fallback()
        else:  # the UI's Amplitude client, for one, fetches its configuration on every load
            blocked.append(route.request.url)
            route.abort()

    with sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=TIMEOUT_MS)
        except Error as exc:
            pytest.fail(f"Chromium ({CHROMIUM}) did not start under Playwright: {exc}")
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            context.set_default_timeout(TIMEOUT_MS)
            context.route("**/*", only_loopback)
            yield context
            context.close()
        finally:
            browser.close()


def parameter_field(page: Page, name: str) -> Locator:
    """The block of the run form for one parameter: its label ("sha (Optional)"), description and input."""
    label = page.locator("label", has_text=re.compile(rf"^{re.escape(name)}\b"))
    return page.locator("div").filter(has=label).filter(has=page.locator("fieldset")).last


def choose(page: Page, parameter: str, value: str, expected_choices: list[str]) -> None:
    """Pick a value in an enum parameter's drop-down, after checking it offers exactly the configured choices."""
    from playwright.sync_api import expect

    page.get_by_role("button", name=f"Select {parameter}").click()
    expect(page.get_by_role("option")).to_have_text(expected_choices)
    page.get_by_role("option", name=value, exact=True).click()
    expect(page.get_by_role("button", name=f"Select {parameter}")).to_have_text(value)


def full_page_screenshot(page: Page, path: Path) -> None:
    """The whole page, the window stretched to it first so that the fixed sidebar spans it too."""
    height = 0
    for _ in range(5):  # a taller window can grow the page (the log list renders more lines): until it settles
        page.evaluate("new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))")
        new_height = int(page.evaluate("document.documentElement.scrollHeight"))
        if new_height == height:
            break
        height = new_height
        page.set_viewport_size({"width": 1400, "height": max(height, 1000)})
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size({"width": 1400, "height": 1000})


def log_in(page: Page, auth_string: str) -> None:
    """Log in as a person does: the UI of a server with an auth string opens on its login form."""
    from playwright.sync_api import expect

    page.wait_for_url(re.compile(r"/login"))
    page.get_by_role("textbox", name="admin:pass").fill(auth_string)
    page.get_by_role("button", name="Login").click()
    expect(page.get_by_role("link", name="Deployments", exact=True)).to_be_visible()


def wait_for_log(served: Served, run_id: str, text: str, timeout: float = 60) -> None:
    """Wait until the API holds a log line of the run containing `text`."""
    deadline = time.monotonic() + timeout
    body = {"logs": {"flow_run_id": {"any_": [run_id]}}, "sort": "TIMESTAMP_DESC", "limit": 200}
    while time.monotonic() < deadline:
        logs = httpx.post(f"{served.api}/logs/filter", json=body, headers=served.headers, timeout=10)
        if logs.status_code == 200 and any(text in log["message"] for log in logs.json()):
            return
        time.sleep(0.25)
    raise AssertionError(f"no log line of run {run_id} contains {text!r} after {timeout:.0f} s")


def test_a_custom_run_from_the_ui_rolls_back_to_the_chosen_sha(
    served: Served, output_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_playwright_and_chromium()
    from playwright.sync_api import expect

    sandbox = served.sandbox
    target = sandbox.commits.all[0]
    # The incident, whatever earlier tests left running: the broken version is live, and GitHub says so (the
    # github-actions target reads the running version from GitHub Deployments).
    sandbox.app.broken.add(sandbox.commits.broken)
    sandbox.app.deploy(sandbox.commits.broken)
    sandbox.github.add_deployment(REPOSITORY, sandbox.commits.broken, ENVIRONMENT, description="CI deploy")
    deployment = httpx.get(
        f"{served.api}/deployments/name/rollback/rollback", headers=served.headers, timeout=10
    ).json()
    deployment_id = deployment["id"]
    # The choices the form must offer: the enums of the deployment's schema, built from the configuration.
    schema = deployment["parameter_openapi_schema"]["properties"]
    ui = served.api.removesuffix("/api")
    blocked: list[str] = []
    # A deploy of 2.5 s: long enough for a progress artifact (over 2 s); as it was for the tests after this one.
    monkeypatch.setattr(sandbox.github, "run_step_seconds", 1.25)

    with browser_context(served.api, blocked) as context:
        page = context.new_page()
        page.goto(ui)
        log_in(page, served.server.auth_string)  # the API wants the auth string: the UI asks for it
        page.get_by_role("link", name="Deployments", exact=True).click()
        # The link to this deployment itself: "rollback" also names the flow, and the list may still be loading.
        page.locator(f'a[href*="/deployments/deployment/{deployment_id}"]').first.click()
        page.wait_for_url(re.compile(rf"/deployments/deployment/{deployment_id}"))

        page.get_by_role("button", name="Run", exact=True).click()
        page.get_by_role("menuitem", name="Custom run").click()
        page.wait_for_url(re.compile(rf"/deployments/deployment/{deployment_id}/run"))

        choose(page, "service", "shop", schema["service"]["enum"])
        choose(page, "environment", "production", schema["environment"]["enum"])
        sha = parameter_field(page, "sha")
        sha.get_by_role("tab", name="str", exact=True).click()  # Optional[str]: "None" is selected at first
        sha.get_by_role("textbox").fill(target)
        parameter_field(page, "reason").get_by_role("textbox").fill("UI test: custom run to the first commit")
        full_page_screenshot(page, output_dir / "ui-custom-run-form.png")

        with page.expect_response(lambda r: r.url.endswith("/create_flow_run")) as created:
            page.get_by_role("button", name="Submit", exact=True).click()
        assert created.value.status == 201, created.value.text()
        run_id = str(created.value.json()["id"])
        page.get_by_role("button", name="View run").click()  # in the "scheduled to start now" notification
        page.wait_for_url(re.compile(rf"/runs/flow-run/{run_id}"))

        run = wait_terminal(served, run_id)
        assert run["state"]["type"] == "COMPLETED", (run["state"], served.log.read_text()[-3000:])
        recovered = f"recovered: shop/production runs {target[:7]}"
        wait_for_log(served, run_id, recovered)  # logs reach the API in batches, after the state
        # A window tall enough for the whole page: resizing later would make the run graph (a canvas) redraw.
        page.set_viewport_size({"width": 1400, "height": 2400})
        page.reload()  # the page shows what the API holds when it loads
        main = page.get_by_role("main")
        expect(main.get_by_text("rollback-shop-production").first).to_be_visible(timeout=TIMEOUT_MS)
        expect(main.get_by_text("Completed", exact=True).first).to_be_visible(timeout=TIMEOUT_MS)
        # The log list shows the oldest lines first: the step that chose the SHA is among them.
        chosen = (
            f"rolling back acme/shop/production from {sandbox.commits.broken[:7]} (per GitHub Deployments) "
            f"to {target[:7]} (given)"
        )
        expect(main.get_by_text(chosen)).to_be_visible(timeout=TIMEOUT_MS)
        page.wait_for_load_state("networkidle")  # the graph's data is in
        page.screenshot(path=str(output_dir / "ui-custom-run.png"), full_page=True)

        # The run's artifacts: the deploy's progress (how far, what now) and the post-mortem, where people look.
        page.get_by_role("tab", name="Artifacts").click()
        progress = main.get_by_role(
            "link", name=re.compile(r"^PROGRESS .*deploying: workflow run \d+ ended \(success\)")
        )
        postmortem = main.get_by_role(
            "link", name=re.compile(r"^MARKDOWN rollback-shop-production .*Post-mortem: recovered")
        )
        expect(progress).to_be_visible()
        expect(postmortem).to_be_visible()
        page.set_viewport_size({"width": 1400, "height": 1000})
        page.screenshot(path=str(output_dir / "ui-run-artifacts.png"))
        postmortem.click()
        expect(page.get_by_role("heading", name="Rollback of shop in production: recovered")).to_be_visible()
        expect(page.get_by_text(re.compile(r"Time to recovery:")).first).to_be_visible()
        full_page_screenshot(page, output_dir / "ui-postmortem.png")

    assert run["parameters"]["sha"] == target, run["parameters"]
    assert run["parameters"]["reason"] == "UI test: custom run to the first commit", run["parameters"]
    assert sandbox.app.version == target
    assert httpx.get(f"{sandbox.app.url}/health", timeout=5).status_code == 200
    hosts = sorted({urlsplit(url).hostname or url for url in blocked})
    print(f"UI custom run {run_id} completed; requests kept from leaving 127.0.0.1: {len(blocked)} ({hosts})")
