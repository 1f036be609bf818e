"""The README's and the docs' code blocks work as written, so they cannot rot.

Every ``sh`` and ``python`` block of README.md and docs/*.md is run, unless the
Markdown says otherwise in an HTML comment on the line before it (invisible
where the Markdown is rendered):

* (no comment) -- run: ``sh`` with ``bash -euo pipefail`` from the root of a
  copy of the repository (``demos/``, ``docs/``), with ``.venv/py312`` standing
  for the environment these tests run in, so its ``activate`` works;
  ``python`` with that environment's Python. ``8000`` in a block becomes a
  free port. The block must exit 0, and print what ``EXPECTED`` says it does.
* ``<!-- snippet: file PATH -->`` -- the block shows the file PATH verbatim
  (the file itself is run by a block or a test).
* ``<!-- snippet: patch -->`` -- a patch file: ``hotpatch.load_patch`` loads it.
* ``<!-- snippet: compile: REASON -->`` -- a template (your service's paths and
  objects): it must compile.
* ``<!-- snippet: skip: REASON -->`` -- not run, for the reason given.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import hotpatch

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LANGUAGES = {"sh", "python"}
TIMEOUT_S = 300.0

# What a block that runs must print, found by a string only that block holds.
EXPECTED = {
    "quickstart_app --watch": ['{"price": "0.49"}', '"outcome": "applied"', '{"price": "0.50"}'],
    "demos/minimal_service.py &": ["hello #1 from process", "hello #2 from process"],
    "wsgi_app:app &": ['"vat": 399', '"outcome": "applied"', '"vat": 400', "1.0.1"],
    "python demos/quickstart.py": ["demo OK"],
}

_FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[\w-]*)\s*$")
_MARKER = re.compile(r"^\s*<!-- snippet: (?P<kind>[a-z]+)(?P<rest>.*?)\s*-->\s*$")
_KINDS = {"file", "patch", "compile", "skip"}


@dataclass(frozen=True)
class Block:
    doc: Path
    line: int  # of the opening fence
    lang: str
    text: str
    kind: str  # "run", or a marker's kind
    detail: str  # the marker's reason or path

    @property
    def name(self) -> str:
        return f"{self.doc.relative_to(REPO)}:{self.line}"


def blocks(doc: Path) -> list[Block]:
    """The fenced blocks of ``doc``, each with the marker on the line before it."""
    lines = doc.read_text().splitlines()
    found: list[Block] = []
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        indent, lang = len(opening["indent"]), opening["lang"]
        end = index + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        body = [line[indent:] for line in lines[index + 1 : end]]
        before = next((line for line in reversed(lines[:index]) if line.strip()), "")
        marker = _MARKER.match(before)
        kind, detail = "run", ""
        if marker:
            kind, detail = marker["kind"], marker["rest"].strip().removeprefix(":").strip()
        found.append(Block(doc, index + 1, lang, "\n".join(body) + "\n", kind, detail))
        index = end + 1
    return found


SNIPPETS = [b for doc in DOCS for b in blocks(doc) if b.lang in LANGUAGES]


def test_every_marker_is_known_and_says_why() -> None:
    for doc in DOCS:
        for number, line in enumerate(doc.read_text().splitlines(), 1):
            marker = _MARKER.match(line)
            if "<!-- snippet" in line:
                assert marker, f"{doc.name}:{number}: malformed marker {line.strip()!r}"
        for block in blocks(doc):
            assert block.kind == "run" or block.kind in _KINDS, f"{block.name}: {block.kind}?"
            if block.kind in {"skip", "compile", "file"}:
                assert block.detail, f"{block.name}: `{block.kind}` needs a reason or a path"
    # the strings EXPECTED looks for each pick exactly one block that runs
    for needle in EXPECTED:
        hits = [b.name for b in SNIPPETS if b.kind == "run" and needle in b.text]
        assert len(hits) == 1, f"EXPECTED[{needle!r}] matches {hits}"


@pytest.mark.parametrize(
    "block",
    [b for b in SNIPPETS if b.kind not in {"run", "skip"}],
    ids=lambda b: f"{b.name}-{b.kind}",
)
def test_a_block_that_does_not_run_is_still_right(block: Block, tmp_path: Path) -> None:
    if block.kind == "file":
        shown = REPO / block.detail
        assert shown.is_file(), f"{block.name} shows {block.detail}, which does not exist"
        assert block.text == shown.read_text(), f"{block.name} differs from {block.detail}"
    elif block.kind == "patch":
        path = tmp_path / "patch.py"
        path.write_text(block.text)
        assert isinstance(hotpatch.load_patch(path), hotpatch.Patch)
    elif block.kind == "compile":
        assert block.lang == "python", f"{block.name}: only Python compiles"
        compile(block.text, block.name, "exec", dont_inherit=True)


@pytest.mark.slow
@pytest.mark.parametrize("block", [b for b in SNIPPETS if b.kind == "run"], ids=lambda b: b.name)
def test_a_block_runs_as_written(block: Block, tmp_path: Path) -> None:
    work = tmp_path / "repo"
    for name in ("demos", "docs"):
        shutil.copytree(REPO / name, work / name, ignore=shutil.ignore_patterns("__pycache__"))
    (work / ".venv").mkdir()
    (work / ".venv" / "py312").symlink_to(sys.prefix)  # `. .venv/py312/bin/activate`
    port = _free_port()
    text = block.text.replace("8000", str(port))
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
    if block.lang == "sh":
        command = ["bash", "-euo", "pipefail", "-c", text]
    else:
        command = [sys.executable, "-c", text]
    process = subprocess.Popen(
        command,
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its background jobs too: all stopped below
    )
    try:
        output, _ = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        _stop_group(process.pid)
        output, _ = process.communicate()
        pytest.fail(f"{block.name} did not finish in {TIMEOUT_S:g} s:\n{text}\n---\n{output}")
    finally:
        _stop_group(process.pid)
    assert process.returncode == 0, f"{block.name} exited {process.returncode}:\n{output}"
    for needle, expected in EXPECTED.items():
        if needle in block.text:
            missing = [e for e in expected if e not in output]
            assert not missing, f"{block.name} never printed {missing}:\n{output}"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _stop_group(pgid: int) -> None:
    """SIGTERM, then SIGKILL, whatever the block left running in its session."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        try:
            subprocess.run(
                ["bash", "-c", f"while kill -0 -- -{pgid} 2>/dev/null; do sleep 0.05; done"],
                timeout=10,
                check=False,
            )
        except subprocess.TimeoutExpired:
            continue
        return
