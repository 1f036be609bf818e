"""The Makefile: what `make demo` and `make test` install (a dry run of the real make)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _installs(target: str, venvs: Path) -> list[str]:
    """The extras each `pip install --editable` of ``make -n TARGET`` asks for."""
    done = subprocess.run(
        ["make", "--no-print-directory", "-n", target, f"VENV_ROOT={venvs}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return re.findall(r"pip install --quiet --editable '\.\[([^\]]*)\]'", done.stdout)


def test_make_demo_installs_the_package_and_the_demo_extra_only(tmp_path: Path) -> None:
    assert _installs("demo", tmp_path) == ["demo"]


@pytest.mark.parametrize("version", ["311", "312", "313"])
def test_make_test_installs_the_development_tools(tmp_path: Path, version: str) -> None:
    expected = "dev,demo" if version == "312" else "dev"
    assert _installs(f"test-{version}", tmp_path) == [expected]
