"""The layering is one-directional: read every module's imports (with `ast`) and check them against the layers.

Top to bottom: the entry points `commands/` and the test bed `sandbox/`; then `deployments/` -> `flows/` ->
`tasks/` -> the library `runbook/`. Nothing imports a layer above it; `benchmarks/` and `tests/` import the
product and the sandbox, tests no other test module (only `tests.support`, the helpers they share); and no
module reaches into a private (underscore) name or module of another top-level package of the repository
(third-party packages are not checked: runbook/rollback_slot.py leans on Prefect's `concurrency._sync` knowingly).

Every import counts: module level, inside functions, under `if TYPE_CHECKING:`.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("runbook", "tasks", "flows", "deployments", "commands", "sandbox", "benchmarks", "tests")

#: What each top-level package must not import (any module in it, at any depth).
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "runbook": ("tasks", "flows", "deployments", "commands", "sandbox", "tests", "benchmarks"),
    "tasks": ("flows", "deployments", "commands", "sandbox", "tests", "benchmarks"),
    "flows": ("deployments", "commands", "sandbox", "tests", "benchmarks"),
    "deployments": ("commands", "sandbox", "tests", "benchmarks"),
    "commands": ("sandbox", "tests", "benchmarks"),
    "sandbox": ("tests", "benchmarks"),
    "benchmarks": ("tests",),
    "tests": ("benchmarks",),
}
#: The one part of `tests` a test module may import: the helpers the tests share.
TEST_SUPPORT = "tests.support"


@dataclass(frozen=True)
class Import:
    """One imported module (`module`), and for `from module import name` the name, as written in `path`."""

    path: Path
    line: int
    module: str
    name: str | None = None

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def target(self) -> str:
        """The module this import loads: `module.name` when that is a module of the repository, else `module`."""
        if self.name is not None and _is_module(f"{self.module}.{self.name}"):
            return f"{self.module}.{self.name}"
        return self.module

    def __str__(self) -> str:
        what = self.module if self.name is None else f"{self.module} import {self.name}"
        return f"{self.where} -> {what}"


def _is_module(dotted: str) -> bool:
    path = ROOT.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> list[Path]:
    """Every module of the checked packages (not the sandbox's recorded fixtures: data, not code)."""
    fixtures = ROOT / "sandbox" / "fixtures"
    return sorted(
        path for package in PACKAGES for path in (ROOT / package).rglob("*.py") if not path.is_relative_to(fixtures)
    )


def _imports(path: Path, source: str | None = None) -> Iterator[Import]:
    """Every import in `path` (or in `source`, its text), wherever it is: functions and `if TYPE_CHECKING:` too."""
    text = path.read_text(encoding="utf-8") if source is None else source
    tree = ast.parse(text, filename=str(path))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(path, node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative: resolved against the importing module's package
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, module] if module else base)
            for alias in node.names:
                yield Import(path, node.lineno, module, alias.name)


ALL_IMPORTS = [found for path in _sources() for found in _imports(path)]


def _top(dotted: str) -> str:
    return dotted.partition(".")[0]


def _private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def _importer(found: Import) -> str:
    return _top(_module_name(found.path))


def layer_violations(imports: list[Import], package: str) -> list[Import]:
    """Imports by modules of `package` of a package it must not import."""
    return [i for i in imports if _importer(i) == package and _top(i.target) in FORBIDDEN[package]]


def other_test_module_imports(imports: list[Import]) -> list[Import]:
    """Imports by modules of tests/ of a module of tests/ other than `tests.support` (and its modules)."""
    return [
        i
        for i in imports
        if _importer(i) == "tests"
        and _top(i.target) == "tests"
        and not (i.target == TEST_SUPPORT or i.target.startswith(TEST_SUPPORT + "."))
    ]


def private_violations(imports: list[Import]) -> list[Import]:
    """`from other import _name`, or a module path with a private part (`other._module`), across top-level packages."""
    return [
        i
        for i in imports
        if _top(i.module) in PACKAGES
        and _top(i.module) != _importer(i)
        and (any(_private(part) for part in i.target.split(".")) or (i.name is not None and _private(i.name)))
    ]


def _fail(rule: str, violations: list[Import]) -> None:
    if violations:
        listed = sorted(violations, key=lambda v: (str(v.path), v.line, str(v)))
        pytest.fail(f"{rule}: {len(listed)} violation(s)\n" + "\n".join(f"  {v}" for v in listed), pytrace=False)


def test_every_package_is_read() -> None:
    """The check reads what it claims to: each package has modules and imports (a moved tree would empty it)."""
    read = {_top(_module_name(path)) for path in _sources()}
    assert read == set(PACKAGES)
    assert any(i.module.startswith("sandbox.") and _importer(i) == "tests" for i in ALL_IMPORTS)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_package_imports_a_layer_above_it(package: str) -> None:
    _fail(f"{package}/ must not import {', '.join(FORBIDDEN[package])}", layer_violations(ALL_IMPORTS, package))


def test_tests_import_no_other_test_module() -> None:
    """Shared helpers live in `tests.support`; a test module (or conftest) is never imported by another one."""
    _fail(f"tests import only {TEST_SUPPORT}.* of tests/", other_test_module_imports(ALL_IMPORTS))


def test_no_module_imports_private_parts_of_another_package() -> None:
    """Neither `from other import _name` nor `other._module`, across top-level packages of the repository."""
    _fail("private names and modules stay inside their top-level package", private_violations(ALL_IMPORTS))


# --- the checker itself -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import sandbox.world", ["sandbox.world"]),
        ("from tests.flows import test_rollback", ["tests.flows.test_rollback"]),
        ("from tests.triggers.conftest import Served", ["tests.triggers.conftest"]),
        ("def f() -> None:\n    from commands.serve import LocalServer", ["commands.serve"]),
        ("if TYPE_CHECKING:\n    from flows.rollback import rollback", ["flows.rollback"]),
        ("from .world import Sandbox", ["sandbox.world"]),
        ("from . import world", ["sandbox.world"]),
        ("from ..runbook import config", ["runbook.config"]),
    ],
)
def test_imports_are_found_wherever_they_are(source: str, expected: list[str]) -> None:
    """The reader: function-local, TYPE_CHECKING, `from package import module` and relative imports."""
    found = _imports(ROOT / "sandbox" / "probe.py", source)  # as if a module of the sandbox, its text given here
    assert [i.target for i in found] == expected


def _probe(module: str, source: str) -> list[Import]:
    return list(_imports(ROOT.joinpath(*module.split(".")).with_suffix(".py"), source))


@pytest.mark.parametrize(
    ("module", "source", "caught"),
    [
        ("runbook.probe", "from tasks.deploy import deploy", True),
        ("tasks.probe", "def f() -> None:\n    import flows.rollback", True),
        ("flows.probe", "from deployments import spec", True),
        ("deployments.probe", "from commands.serve import LocalServer", True),
        ("commands.probe", "from sandbox.world import Sandbox", True),
        ("sandbox.probe", "from tests.support.rollback import run_rollback", True),
        ("benchmarks.probe", "from tests.support import rollback", True),
        ("tests.probe", "import benchmarks.alert_storm", True),
        ("flows.probe", "from tasks.deploy import deploy", False),
        ("commands.probe", "from flows.rollback import rollback", False),
        ("sandbox.probe", "from commands.serve import LocalServer", False),
        ("benchmarks.probe", "from sandbox.world import Sandbox", False),
    ],
)
def test_the_layer_rule_catches_an_import_from_above(module: str, source: str, caught: bool) -> None:
    assert bool(layer_violations(_probe(module, source), _top(module))) is caught


@pytest.mark.parametrize(
    ("source", "caught"),
    [
        ("from tests.flows.test_rollback import postmortem_of", True),
        ("from tests.triggers import conftest", True),
        ("import tests.conftest", True),
        ("from tests.support.rollback import postmortem_of", False),
        ("from tests.support import served", False),
        ("from sandbox.world import Sandbox", False),
    ],
)
def test_the_test_rule_lets_tests_import_only_the_support_package(source: str, caught: bool) -> None:
    assert bool(other_test_module_imports(_probe("tests.flows.probe", source))) is caught


@pytest.mark.parametrize(
    ("module", "source", "caught"),
    [
        ("tests.probe", "from flows._hold import hold_alert", True),
        ("commands.probe", "import tasks._policy", True),
        ("tests.probe", "from sandbox.prometheus import _free_port", True),
        ("flows.probe", "from flows._hold import hold_alert", False),  # inside its own package
        ("tests.probe", "from sandbox.process import free_port as _free_port", False),  # the alias is the importer's
        ("tests.probe", "from prefect.concurrency._sync import acquire_concurrency_slots_with_lease", False),
        ("tests.probe", "from __future__ import annotations", False),
    ],
)
def test_the_private_rule_keeps_private_parts_inside_their_package(module: str, source: str, caught: bool) -> None:
    assert bool(private_violations(_probe(module, source))) is caught
