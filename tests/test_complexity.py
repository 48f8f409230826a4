"""No function of the product is more complex than radon's cyclomatic complexity 15.

Every function and method (and nested function: radon leaves a closure's branches out of its parent's
figure, so it is checked on its own) of every module under the product's packages is measured with
radon's API, the same figures `radon cc -s runbook tasks flows commands deployments` prints. A function
above the limit is split into smaller, named helpers rather than given an exception here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from radon.complexity import add_inner_blocks, cc_visit
from radon.visitors import Function

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("runbook", "tasks", "flows", "commands", "deployments")
MAX_COMPLEXITY = 15


def _functions(source: str) -> Iterator[Function]:
    """Every function block of `source`: module functions, methods, and nested functions and classes' methods."""
    for block in add_inner_blocks(cc_visit(source)):
        if isinstance(block, Function):
            yield block


def _too_complex(source: str, where: str) -> list[str]:
    """`where:line name (figure)` for each function of `source` above MAX_COMPLEXITY."""
    return [
        f"{where}:{block.lineno} {block.fullname} ({block.complexity})"
        for block in _functions(source)
        if block.complexity > MAX_COMPLEXITY
    ]


def _modules() -> list[Path]:
    return sorted(path for package in PACKAGES for path in (ROOT / package).rglob("*.py"))


def test_the_product_has_modules_to_measure() -> None:
    # An empty walk (packages moved, wrong root) would make the check below pass vacuously.
    modules = _modules()
    assert len(modules) > 20, modules
    assert all(any(path.is_relative_to(ROOT / package) for path in modules) for package in PACKAGES)


def test_no_function_is_more_complex_than_the_limit() -> None:
    offenders = [
        line
        for path in _modules()
        for line in _too_complex(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    ]
    assert not offenders, (
        f"cyclomatic complexity above {MAX_COMPLEXITY} (radon); split these into smaller, named helpers:\n"
        + "\n".join(offenders)
    )


def _branches(count: int, *, indent: str = "    ") -> str:
    return "".join(f"{indent}if x == {n}:\n{indent}    return {n}\n" for n in range(count))


def test_a_function_with_sixteen_branches_is_caught() -> None:
    # 16 `if`s + 1 = 17: above the limit; 14 `if`s + 1 = 15: at the limit, allowed.
    source = "def busy(x):\n" + _branches(16) + "    return -1\n\n\ndef calm(x):\n" + _branches(14) + "    return -1\n"
    assert _too_complex(source, "generated.py") == ["generated.py:1 busy (17)"]


def test_methods_and_nested_functions_are_measured() -> None:
    method = "class Service:\n    def busy(self, x):\n" + _branches(16, indent="        ") + "        return -1\n"
    assert _too_complex(method, "generated.py") == ["generated.py:2 Service.busy (17)"]
    nested = "def outer(x):\n    def inner(x):\n" + _branches(16, indent="        ") + "        return -1\n"
    nested += "    return inner(x)\n"
    assert _too_complex(nested, "generated.py") == ["generated.py:2 outer.inner (17)"]
