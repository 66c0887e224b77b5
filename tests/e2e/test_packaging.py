"""The built wheel carries what the library loads at run time."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_contains_the_lua_scripts_and_type_markers(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
         "-w", str(tmp_path), str(ROOT)],
        check=True, timeout=300, capture_output=True,
    )
    (wheel,) = tmp_path.glob("redis_batcher-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    lua = {p.name for p in (ROOT / "batcher" / "lua").glob("*.lua")}
    assert {f"batcher/lua/{name}" for name in lua} <= names
    assert {"batcher/py.typed", "workers/py.typed"} <= names
    assert "batcher/demo/sample_feeds/feeds.toml" in names
    # the dashboard's page script and its vendored chart library (no CDN at run time)
    assert {"batcher/dashboard/static/dashboard.js", "batcher/dashboard/static/uPlot.iife.min.js",
            "batcher/dashboard/static/uPlot.min.css",
            "batcher/dashboard/static/dashboard.css"} <= names
    # the core installs without the applications' libraries: each is behind its extra
    [metadata] = [n for n in names if n.endswith(".dist-info/METADATA")]
    requires = [line.split(":", 1)[1].strip() for line in
                zipfile.ZipFile(wheel).read(metadata).decode().splitlines()
                if line.startswith("Requires-Dist:")]
    core = {Requirement(r).name for r in requires if Requirement(r).marker is None}
    assert core == {"redis", "rq", "pydantic", "structlog", "click", "orjson", "rich"}, core
