"""The child processes of an end-to-end run: ``python <args>``, each one's stderr in a file of
its own (shown when the run fails), every one stopped at the end (SIGTERM, then SIGKILL)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class Children:
    def __init__(self, log_dir: Path, env: dict[str, str], *, tail_chars: int = 3000) -> None:
        self.log_dir, self.env, self.tail_chars = log_dir, env, tail_chars
        self.procs: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, *args: str, name: str, capture: bool = False) -> subprocess.Popen[bytes]:
        """``python *args`` from the checkout; stderr to ``<name>-<n>.log``; stdout piped only
        with ``capture`` (read it with communicate())."""
        log_path = self.log_dir / f"{name}-{len(self.procs)}.log"
        with log_path.open("wb") as log_file:
            proc = subprocess.Popen([sys.executable, *args], env=self.env, cwd=ROOT,
                                    stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                                    stderr=log_file)
        self.procs.append((proc, log_path))
        return proc

    def logs(self) -> str:
        """The tail of every child's log, for an assertion message."""
        return "\n".join(f"--- {path.name}\n{path.read_text()[-self.tail_chars:]}"
                         for _, path in self.procs)

    def stop_all(self) -> None:
        stop_processes([proc for proc, _ in self.procs])


def stop_processes(procs: list[subprocess.Popen[bytes]], timeout: float = 30) -> None:
    """SIGTERM every one still running, then wait; SIGKILL one that outlives ``timeout``."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
