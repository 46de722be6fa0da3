"""Time an earlier revision of this repository beside the working tree, each in its own process.

A benchmark whose baseline is an older build (not a switch of the current code) unpacks that
revision's ``src`` with ``git archive`` (:func:`revision_src`) and runs the same worker
command on each build (:func:`run_build`), the builds alternating (:func:`alternate_builds`);
the worker prints one JSON object per line, which comes back as a list of dicts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def revision_src(rev: str, into: Path) -> Path:
    """The ``src`` folder of revision ``rev`` of this repository, unpacked under ``into``."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "src"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def run_build(src: Path, script: str, args: list[str]) -> list[dict]:
    """Run ``python script *args`` with ``src`` first on the import path; its JSON lines."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, script, *args], env=env, check=True, capture_output=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def alternate_builds(rev: str, script: str, args: list[str], repeats: int) -> dict[str, list[list[dict]]]:
    """Run ``script`` (the worker command ``args``) on revision ``rev`` ("base") and on the working
    tree ("new"), ``repeats`` times each, alternating, the order flipping at every repeat; each
    build's runs, in order (one list of JSON rows per run)."""
    with tempfile.TemporaryDirectory() as tmp:
        builds = {"base": revision_src(rev, Path(tmp)), "new": REPO / "src"}
        runs: dict[str, list[list[dict]]] = {k: [] for k in builds}
        for rep in range(repeats):
            for key in (list(builds) if rep % 2 == 0 else list(builds)[::-1]):
                runs[key].append(run_build(builds[key], script, args))
    return runs
