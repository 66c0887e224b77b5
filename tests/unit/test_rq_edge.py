"""The RQ edge: one package imports rq, over the RQ range pyproject pins."""

from __future__ import annotations

import ast
import importlib
import tomllib
from importlib.metadata import version
from pathlib import Path

from packaging.requirements import Requirement

import batcher.rq
from batcher.rq.task import process_batch

ROOT = Path(__file__).resolve().parents[2]


def _imports_rq(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import) and any(
                a.name == "rq" or a.name.startswith("rq.") for a in node.names):
            return True
        if (isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                and (node.module == "rq" or node.module.startswith("rq."))):
            return True
    return False


def test_only_the_rq_package_imports_rq() -> None:
    importers = sorted(str(p.relative_to(ROOT)) for top in ("batcher", "workers")
                       for p in (ROOT / top).rglob("*.py") if _imports_rq(p))
    assert importers and all(p.startswith("batcher/rq/") for p in importers), importers


def test_the_installed_rq_is_in_the_pinned_range() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    [pin] = [Requirement(d) for d in pyproject["project"]["dependencies"]
             if Requirement(d).name == "rq"]
    # the lean worker mirrors RQ internals of this range; CI runs its tests on each version
    assert pin.specifier.contains(version("rq")), (str(pin), version("rq"))


def test_the_task_name_jobs_carry_imports_process_batch() -> None:
    module, _, name = batcher.rq.TASK.rpartition(".")
    assert getattr(importlib.import_module(module), name) is process_batch


def test_the_pre_issue_16_names_are_the_same_objects() -> None:
    # users' BATCH_HANDLER values, handlers calling the budget, and jobs an older coordinator
    # queued: deprecated aliases, re-exports of what moved
    import batcher.budget_guard
    import batcher.llm.handler
    import workers.budget_guard
    import workers.handlers.llm
    import workers.tasks

    assert workers.tasks.process_batch is process_batch
    assert workers.handlers.llm.summarize is batcher.llm.handler.summarize
    assert workers.budget_guard.report_usage is batcher.budget_guard.report_usage
    assert workers.budget_guard.reserve_call is batcher.budget_guard.reserve_call


class _Job:
    def __init__(self, func_name: str, args: tuple[object, ...]) -> None:
        self.func_name, self.args, self.kwargs = func_name, args, {}


def test_a_job_under_the_old_task_name_is_a_batch_job_and_others_are_refused() -> None:
    from batcher.rq.guard import refusal
    from batcher.rq.job import batch_args

    old = _Job(batcher.rq.LEGACY_TASK, ("q", "b1", 2))
    assert refusal(old) is None
    assert batch_args(old) == ("q", "b1", 2)
    assert refusal(_Job(batcher.rq.LEGACY_TASK, ("q", "b1"))) == (
        "refused: a batcher job's arguments must be (queue, batch_id, attempt)")
    assert refusal(_Job("workers.tasks.other", ("q", "b1", 2))) == (
        "refused: not a batcher job: workers.tasks.other")
