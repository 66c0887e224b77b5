"""A worker or coordinator process loads what it runs (issue 16: start-up), and the core never
reaches into the applications built on it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# what `batcher worker` and `batcher coordinator` import before their loops (the CLI loads
# only the module of the command it runs); benchlib.startup.WORKER_IMPORTS times the same
DAEMON_IMPORTS = ("batcher.cli", "batcher.cli.worker", "batcher.cli.coordinator",
                  "batcher.processing", "workers.handlers.echo")
# an application extra's modules, rich (structlog's pretty tracebacks, which our logs never
# use: ~0.08 s of CPU in each daemon) and pydantic-settings (when installed: the config
# reads BATCH_* itself)
NOT_IN_A_DAEMON = ("rich", "httpx", "feedparser", "openai", "starlette", "uvicorn",
                   "prometheus_client", "matplotlib", "batcher.feeds", "batcher.llm",
                   "batcher.demo", "batcher.dashboard", "pydantic_settings")
APPLICATIONS = ("batcher.feeds", "batcher.llm", "batcher.demo", "batcher.dashboard")
# the commands of an application extra: the CLI's only modules that may import one
APP_COMMANDS = ("batcher/cli/fetch.py", "batcher/cli/demo.py", "batcher/cli/dashboard.py")


def test_a_daemon_imports_no_application_and_no_rich() -> None:
    code = (f"import sys, {', '.join(DAEMON_IMPORTS)}\n"
            f"print(sorted(m for m in {NOT_IN_A_DAEMON!r} if m in sys.modules))\n"
            # rich stays importable for the commands that draw tables (`stats`, `top`)
            "import rich.console\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "[]\n"


def _imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            if node.module == "batcher":
                names |= {f"batcher.{a.name}" for a in node.names}
    return names


def test_the_core_imports_no_application_package() -> None:
    core = [p for p in (ROOT / "batcher").rglob("*.py")
            if not str(p.relative_to(ROOT)).startswith(
                tuple(a.replace(".", "/") + "/" for a in APPLICATIONS))
            and str(p.relative_to(ROOT)) not in APP_COMMANDS]
    reaching = sorted(f"{p.relative_to(ROOT)}: {name}" for p in core for name in _imported(p)
                      if any(name == a or name.startswith(f"{a}.") for a in APPLICATIONS))
    assert len(core) > 50
    assert reaching == []


def test_a_command_runs_with_the_garbage_collector_on() -> None:
    # main() pauses the collector only while the command's module loads: a daemon that ran
    # with it off would never free a reference cycle
    code = (
        "import gc, sys, types, click\n"
        "import batcher.cli\n"
        "probe = types.ModuleType('batcher.cli.probe')\n"
        "probe.commands = [click.Command('probe', callback=lambda: print(gc.isenabled()))]\n"
        "sys.modules['batcher.cli.probe'] = probe\n"
        "batcher.cli.COMMANDS['probe'] = 'probe'\n"
        "sys.argv = ['batcher', 'probe']\n"
        "batcher.cli.main()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "True\n"
