"""Instructions a daemon runs to start, counted by valgrind: the start-up figure load cannot move.

    .venv/bin/python scripts/startup_instructions.py [TREE ...]

For this checkout (or each TREE, another checkout: its code in the child, as
``benchlib.startup`` runs it), the path ``python -m batcher.cli worker`` and ``coordinator``
take up to their loops (``main()`` on ``--help``; the worker also imports the default
handler), beside RQ's ``import rq.worker``. Wall and CPU figures on a shared 2-core machine move
by a third between runs; these move by well under 1 %. Each count takes ~15 s (valgrind runs
~20x slower). The checkout is compiled to bytecode first, as an installed package is
(docs/benchmarks.md, "Start-up").
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from benchlib.common import compile_bytecode  # noqa: E402
from benchlib.startup import RQ_WORKER_IMPORTS, WORKER_IMPORTS  # noqa: E402

COORDINATOR = ("import sys; sys.argv = ['batcher', 'coordinator', '--help']; "
               "import batcher.cli; batcher.cli.main()")


def instructions(code: str, tree: Path | None) -> int:
    env = dict(os.environ, PYTHONHASHSEED="0")
    if tree is not None:
        env.update(PYTHONPATH=os.pathsep.join([str(tree), str(tree / "scripts")]),
                   PYTHONSAFEPATH="1")
    done = subprocess.run(
        ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
         sys.executable, "-c", code],
        env=env, capture_output=True, text=True, check=True, cwd="/")
    found = re.search(r"I\s+refs:\s+([\d,]+)", done.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count in valgrind's output:\n{done.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def main(argv: list[str]) -> int:
    if shutil.which("valgrind") is None:
        print("startup_instructions: needs valgrind (apt-get install valgrind)", file=sys.stderr)
        return 2
    trees: list[Path | None] = [Path(a).resolve() for a in argv] or [None]
    rq = instructions(RQ_WORKER_IMPORTS, None)
    print(f"{'rq.worker import':44} {rq / 1e6:9,.0f} M  1.00x")
    for tree in trees:
        compile_bytecode(tree)
        name = str(tree or ROOT)
        for what, code in (("worker", WORKER_IMPORTS), ("coordinator", COORDINATOR)):
            n = instructions(code, tree)
            print(f"{what + ' ' + name:44} {n / 1e6:9,.0f} M  {n / rq:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
