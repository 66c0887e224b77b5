"""The chaos run's child processes: start, SIGKILL (with descendants), restart, stop."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STOP_TIMEOUT_SECONDS = 15.0
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Linux: the child gets SIGKILL when the run dies, so even a SIGKILLed run leaves no
    # workers behind reconnecting forever
    try:
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, read from /proc (RQ's work horse runs in its own process
    group, so a group kill would miss it)."""
    children: dict[int, list[int]] = defaultdict(list)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # the command name in parentheses may hold spaces: the fields follow the last ')'
        ppid = int(stat.rpartition(")")[2].split()[1])
        children[ppid].append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class Managed:
    """One command, restartable; its output is appended to ``log_path``."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str]):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.exited_at = 0.0

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            log.write(f"--- {self.name} start {self.starts + 1}\n".encode())
            log.flush()
            # a session of its own: a terminal's Ctrl-C reaches the run, which stops children
            self.proc = subprocess.Popen(self.argv, env=self.env, cwd=ROOT, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         preexec_fn=_die_with_parent)
        self.starts += 1
        self.exited_at = 0.0

    def exit_code(self) -> int | None:
        """None while running (or never started); the code once it exited on its own."""
        if self.proc is None:
            return None
        code = self.proc.poll()
        if code is not None and not self.exited_at:
            self.exited_at = time.monotonic()
        return code

    def exit_kind(self) -> str:
        """Why it exited on its own, from its last ``batcher:`` line: 'refused-start' (Redis
        unreachable at start-up, exit 4 by design) or 'crashed' (anything else)."""
        with open(self.log_path, "rb") as log:
            log.seek(max(0, self.log_path.stat().st_size - 4000))
            tail = log.read().decode(errors="replace")
        last = [line for line in tail.splitlines() if line.startswith("batcher:")][-1:]
        return "refused-start" if last and "Redis unreachable at " in last[0] else "crashed"

    def kill(self) -> None:
        """SIGKILL the process and every descendant, at once (a host dying)."""
        if self.proc is None:
            return
        for pid in [self.proc.pid, *descendants(self.proc.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()
        self.proc = None

    def terminate(self) -> int | None:
        """SIGTERM, then SIGKILL after a while; the exit code (None if it had to be killed)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self.kill()
                return None
        return self.proc.returncode
