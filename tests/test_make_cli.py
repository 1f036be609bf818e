"""The ``hotpatch make`` command: output, exit codes, the bundle it writes, signing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from gitrepo import GitRepo

from hotpatch import VerificationFailed, __version__
from hotpatch.agent._signing import generate_keypair, verify_file
from hotpatch.cli import main
from hotpatch.supervisor._bundle import read_bundle

SOURCE = "def fee(amount):\n    return amount // 10\n\n\nclass Box:\n    __slots__ = ('n',)\n"


@pytest.fixture
def repo(tmp_path: Path) -> GitRepo:
    repo = GitRepo(tmp_path / "repo")
    repo.commit(
        "the baseline",
        {"app/__init__.py": "", "app/fees.py": SOURCE, "app/messages.json": "{}\n"},
    )
    repo.git("tag", "v1")
    return repo


def hotpatch_make(repo: GitRepo, out: Path, *extra: str) -> list[str]:
    return [
        "make",
        "--from",
        "v1",
        "--to",
        "HEAD",
        "--repo",
        str(repo.path),
        "--baseline",
        "1.0",
        "--version",
        "1.0.1",
        "-o",
        str(out),
        *extra,
    ]


def test_explain_lists_each_change_with_its_verdict_and_why(
    repo: GitRepo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo.commit(
        "Fees round up",
        {
            "app/fees.py": SOURCE.replace("amount // 10", "-(-amount // 10)"),
            "tests/test_fees.py": "def test_fee():\n    pass\n",
        },
    )
    out = tmp_path / "1.0.1.py"
    assert main(hotpatch_make(repo, out, "--explain")) == 0
    printed = capsys.readouterr().out
    assert "DEFINITION" in printed
    assert "app.fees:fee" in printed
    assert "inline" in printed
    assert "tests/test_fees.py" in printed
    assert "ignored" in printed
    assert f"wrote {out}: a hot patch" in printed
    text = out.read_text()
    assert text.startswith('"""Hot patch 1.0.1 for baseline 1.0: Fees round up')
    assert "app.fees:fee" in text.split('"""')[1]
    assert f"hotpatch make (hotpatch {__version__})" in text


def test_cumulative_patches_replace_the_earlier_ones(
    repo: GitRepo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo.commit("Fees", {"app/fees.py": SOURCE.replace("// 10", "// 20")})
    out = tmp_path / "1.0.2.py"
    assert main([*hotpatch_make(repo, out), "--cumulative"]) == 0
    assert "    cumulative=True," in out.read_text()


def test_json_says_the_same_for_tools(
    repo: GitRepo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo.commit("Fees", {"app/fees.py": SOURCE.replace("// 10", "// 20")})
    assert main([*hotpatch_make(repo, tmp_path / "p.py"), "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["ok"] is True
    assert answer["outcome"] == "hot"
    assert answer["changes"] == [
        {
            "name": "app.fees:fee",
            "what": "function",
            "verdict": "inline",
            "why": answer["changes"][0]["why"],
        }
    ]
    assert answer["reasons"] == []
    assert set(answer["timings"]) >= {"read_s", "compare_s", "verify_s", "total_s"}


def test_nothing_to_patch_exits_0_and_writes_nothing(
    repo: GitRepo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo.commit("Docs", {"README.md": "# app\n", "app/fees.py": "# fees\n" + SOURCE})
    out = tmp_path / "1.0.1.py"
    assert main(hotpatch_make(repo, out)) == 0
    assert "nothing to patch" in capsys.readouterr().out
    assert not out.exists()


def test_a_bundle_from_the_real_command_exits_3_and_holds_the_new_tree(
    repo: GitRepo, tmp_path: Path
) -> None:
    repo.commit(
        "New messages",
        {
            "app/messages.json": '{"hello": "hi"}\n',
            "app/fees.py": SOURCE.replace("// 10", "// 5"),
        },
    )
    out = tmp_path / "1.0.1.py"
    script = Path(sys.executable).parent / "hotpatch"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "hotpatch"]
    done = subprocess.run(
        [*command, *hotpatch_make(repo, out, "--planned")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 3, done.stderr
    bundle = tmp_path / "1.0.1.zip"
    assert f"not hot: wrote the baseline bundle {bundle}" in done.stdout
    assert "app/messages.json: a non-Python file" in done.stdout
    assert not out.exists()
    meta = read_bundle(bundle)
    assert (meta.version, meta.kind, meta.root) == ("1.0.1", "planned-baseline", ".")
    with zipfile.ZipFile(bundle) as archive:
        names = set(archive.namelist())
        assert {"patch.toml", "app/__init__.py", "app/fees.py", "app/messages.json"} <= names
        assert archive.read("app/messages.json") == b'{"hello": "hi"}\n'
        assert b"// 5" in archive.read("app/fees.py")
        assert b"app/messages.json: a non-Python file" in archive.read("patch.toml")


def test_a_bundle_directory_when_the_output_names_one(repo: GitRepo, tmp_path: Path) -> None:
    repo.commit("Slots", {"app/fees.py": SOURCE.replace("('n',)", "('n', 'm')")})
    out = tmp_path / "bundles" / "1.0.1"
    assert main(hotpatch_make(repo, out)) == 3
    meta = read_bundle(out)
    assert meta.kind == "unplanned-baseline"
    assert "__slots__" in (out / "patch.toml").read_text()
    assert (out / "app" / "fees.py").read_text().count("'m'") == 1


def test_sign_writes_a_signature_the_public_key_verifies(
    repo: GitRepo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    private, public = generate_keypair(tmp_path / "keys", "ops")
    repo.commit("Fees", {"app/fees.py": SOURCE.replace("// 10", "// 3")})
    out = tmp_path / "signed.py"
    assert main([*hotpatch_make(repo, out), "--sign", str(private)]) == 0
    assert f"signed: {out}.sig" in capsys.readouterr().out
    assert verify_file(out, public)
    out.write_text(out.read_text() + "# tampered\n")
    with pytest.raises(VerificationFailed, match="tampered with"):
        verify_file(out, public)


def test_usage_errors_say_what_to_give(
    repo: GitRepo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["make", "--baseline", "1.0", "--version", "1.0.1"]
    assert main([*base, "--from", "v1"]) == 2
    assert "needs both --from REV and --to REV" in capsys.readouterr().err
    assert main(base) == 2
    assert "OLD_TREE NEW_TREE" in capsys.readouterr().err
    assert main([*base, "--from", "v9", "--to", "HEAD", "--repo", str(repo.path)]) == 2
    assert "'v9' is not a commit" in capsys.readouterr().err


def test_the_new_tests_pass_against_the_old_code_with_the_patch_applied(
    repo: GitRepo, tmp_path: Path
) -> None:
    test = "from app.fees import fee\n\n\ndef test_fee_rounds_up():\n    assert fee(25) == 3\n"
    repo.commit(
        "Fees round up",
        {
            "app/fees.py": SOURCE.replace("amount // 10", "-(-amount // 10)"),
            "tests/test_fees.py": test,
        },
    )
    out = tmp_path / "1.0.1.py"
    assert main(hotpatch_make(repo, out)) == 0
    old = tmp_path / "old"
    repo.git("worktree", "add", "-q", "--detach", str(old), "v1")
    (old / "tests").mkdir()
    (old / "tests" / "test_fees.py").write_text(test)  # the new test, the old code

    def pytest(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra, "tests"],
            cwd=old,
            env={**os.environ, "PYTHONPATH": str(old)},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    assert pytest().returncode == 1  # the old code fails the fix's test
    patched = pytest(f"--hotpatch-apply={out}")  # as `hotpatch make` advises
    assert patched.returncode == 0, patched.stdout + patched.stderr
    assert "1 passed" in patched.stdout
