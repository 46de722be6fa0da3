"""Every example in the user guide runs: the fenced Python and shell blocks of README.md and docs/.

Why a small extractor instead of a plugin (pytest-markdown-docs, sybil): the rules are few and
ours (one temporary folder per page, blocks run in page order so that a block may use the
files and names of the blocks above it, shell commands found on the virtual environment's
``bin``), and it adds no dependency.

Markers, on the line just before a fence (HTML comments: invisible on the site and on GitHub):

* ``<!-- skip: why -->``: the block is not run (an install, a cluster, files that do not
  exist here). Keep them few.
* ``<!-- exit: N -->``: a shell block that must exit with code N (an error message shown on
  purpose).

A fence whose info string carries ``title="not run"`` is not run either. ``text`` and other
languages are never run. Examples use the bundled samples and small crops; the real weights
come through the ``vit_t_path`` fixture (cached on the machine, fetched by CI).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "docs" / "tutorials").glob("*.md"))]
RUN_LANGS = {"python": "python", "py": "python", "bash": "bash", "sh": "bash", "shell": "bash"}
FENCE = re.compile(r"^(?P<indent>\s*)(?P<ticks>`{3,})(?P<info>.*)$")
MARKER = re.compile(r"^\s*<!--\s*(?P<kind>skip|exit)\s*:?\s*(?P<arg>.*?)\s*-->\s*$")


@dataclass
class Block:
    """One fenced code block of a page."""

    page: Path
    line: int  # 1-based line of the opening fence
    lang: str  # "python", "bash" or "" (not run)
    code: str
    skip: str | None = None  # why it is not run
    exit_code: int = 0

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def extract_blocks(page: Path) -> list[Block]:
    """The fenced blocks of ``page`` in order, with their language and markers (indented fences too)."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, ticks, info = m["indent"], m["ticks"], m["info"].strip()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not (lines[i].strip() == ticks and lines[i].startswith(indent)):
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i].lstrip())
            i += 1
        i += 1  # the closing fence
        word = info.split()[0] if info else ""
        block = Block(page, start + 1, RUN_LANGS.get(word.lower(), ""), "\n".join(body) + "\n")
        if 'title="not run"' in info:
            block.skip = "not run"
        before = next((s for s in reversed(lines[:start]) if s.strip()), "")
        mk = MARKER.match(before)
        if mk and mk["kind"] == "skip":
            block.skip = mk["arg"] or "skip"
        elif mk and mk["kind"] == "exit":
            block.exit_code = int(mk["arg"])
        blocks.append(block)
    return blocks


def runnable_pages() -> list[Path]:
    return [p for p in PAGES if any(b.lang and not b.skip for b in extract_blocks(p))]


def shell_env() -> dict[str, str]:
    """The shell of the examples: this interpreter's ``bin`` first, torch on one thread."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", NAPARI_FOCSAM_THREADS="1")
    return env


def run_block(block: Block, namespace: dict) -> None:
    if block.lang == "python":
        exec(compile(block.code, block.where, "exec"), namespace)  # noqa: S102 - our own docs
        return
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", block.code], env=shell_env(),
                          capture_output=True, text=True, timeout=300)
    out = (proc.stdout + proc.stderr)[-3000:]
    assert proc.returncode == block.exit_code, (
        f"{block.where}: exit code {proc.returncode}, expected {block.exit_code}\n{block.code}\n{out}")


# ----------------------------------------------------------------------------- the extractor
def test_extractor_reads_markers_and_indented_fences(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "text\n\n```python\nx = 1\n```\n\n<!-- skip: installs -->\n```bash\npip install x\n```\n\n"
        "!!! note\n    <!-- exit: 2 -->\n    ```bash\n    false || exit 2\n    ```\n\n"
        '```python title="not run"\nimport nothing\n```\n\n```text\nnapari-focsam: error\n```\n')
    blocks = extract_blocks(page)
    assert [(b.lang, b.skip, b.exit_code) for b in blocks] == [
        ("python", None, 0), ("bash", "installs", 0), ("bash", None, 2), ("python", "not run", 0), ("", None, 0)]
    assert blocks[2].code == "false || exit 2\n"
    assert blocks[0].line == 3


def test_every_page_has_its_examples_run_or_marked():
    """Pages exist, most examples run, and each skipped one says why (they are the ones that can rot)."""
    blocks = [b for p in PAGES for b in extract_blocks(p) if b.lang]
    run = [b for b in blocks if not b.skip]
    skipped = [b for b in blocks if b.skip]
    assert len(PAGES) >= 15 and len(run) >= 25, (len(PAGES), len(run))
    assert len(skipped) <= 20, [b.where for b in skipped]
    assert all(b.skip not in ("", "skip") for b in skipped), [b.where for b in skipped if b.skip in ("", "skip")]


# ----------------------------------------------------------------------------- the pages
@pytest.mark.slow
@pytest.mark.parametrize("page", runnable_pages(), ids=lambda p: str(p.relative_to(REPO)))
def test_page_examples_run(page, vit_t_path, tmp_path, monkeypatch):
    """Each page's examples, in order, in a temporary folder of its own (files written by one
    block are there for the next)."""
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    for block in extract_blocks(page):
        if block.lang and not block.skip:
            run_block(block, namespace)
