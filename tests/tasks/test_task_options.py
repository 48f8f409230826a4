"""Every task's options say what they do: no timeout that cannot interrupt, no cache that could skip an action."""

from __future__ import annotations

import importlib
import pkgutil

from prefect import Task
from prefect.cache_policies import NO_CACHE, CompoundCachePolicy, Inputs, RunId

import flows
import tasks


def _tasks() -> list[Task[..., object]]:
    found: dict[str, Task[..., object]] = {}
    for package in (tasks, flows):
        for info in pkgutil.iter_modules(package.__path__, f"{package.__name__}."):
            module = importlib.import_module(info.name)
            for value in vars(module).values():
                if isinstance(value, Task):
                    found[value.name] = value
    return list(found.values())


def test_the_tasks_are_found() -> None:
    names = {t.name for t in _tasks()}
    assert {"resolve-sha", "verify-image", "deploy", "health-check", "notify-incident", "write-postmortem"} <= names


def test_no_task_has_a_timeout_that_cannot_interrupt_it() -> None:
    # A sync task runs in a worker thread: Prefect's timeout cannot stop a blocking call there (it only logs a
    # WARNING). Each blocking call is bounded by its client's timeout, each wait by its own deadline instead.
    assert [t.name for t in _tasks() if t.timeout_seconds is not None] == []


def test_every_task_is_uncached_or_cached_for_its_flow_run_only() -> None:
    for t in _tasks():
        policy = t.cache_policy
        if policy is NO_CACHE:
            continue
        assert isinstance(policy, CompoundCachePolicy), t.name
        kinds = {type(p) for p in policy.policies}
        assert kinds == {RunId, Inputs}, t.name  # the same flow run (a Retry), the same meaningful inputs


def test_clients_are_not_part_of_a_cache_key() -> None:
    # The run's clients are how a step reaches the world, not what it decides (and cannot be hashed).
    clients = {"repo", "target", "registry", "slack"}
    for t in _tasks():
        policy = t.cache_policy
        if isinstance(policy, CompoundCachePolicy):
            [inputs] = [p for p in policy.policies if isinstance(p, Inputs)]
            parameters = set(t.fn.__code__.co_varnames[: t.fn.__code__.co_argcount + t.fn.__code__.co_kwonlyargcount])
            assert parameters & clients <= set(inputs.exclude), t.name
