"""The demos run end to end, as a new user would run them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

DEMOS = Path(__file__).resolve().parents[1] / "demos"


def run_demo(name: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(DEMOS / name)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=DEMOS.parent,
    )


def test_quickstart_fixes_the_running_service_and_refuses_bad_patches():
    run = run_demo("quickstart.py")
    out = run.stdout
    assert run.returncode == 0, out + run.stderr
    assert "demo OK" in out
    assert "FAILED" not in out

    # The bug, then the fix dropped into the folder and applied live.
    assert "the service answers 0.49: the bug" in out
    assert "outcome: applied 2.3.1 -> applied/quickstart-2.3.1.py.result.json" in out
    assert "the service answers 0.50 now" in out
    # Both bad patches refused, each with its own reason, while the service kept serving.
    assert "outcome: rejected 2.3.2 -> rejected/quickstart-2.3.2-bad-signature.py" in out
    assert "requires 'currency', which callers do not pass" in out
    assert "outcome: rejected 2.3.2 -> rejected/quickstart-2.3.2-bad-import.py" in out
    assert "ImportError" in out
    assert out.count("the service still answers 0.50") == 2

    # The real CLI, asked while the service ran.
    assert "$ hotpatch status --folder $TMP/patches" in out
    assert re.search(r"^\s+version\s+2\.3\.1$", out, re.MULTILINE), out
    assert "$ hotpatch history --folder $TMP/patches" in out
    assert re.search(r"\bapply\s+2\.3\.1\s+2\.3\.1\b", out), out

    # The report: every request answered, none failed, the versions.
    requests = re.search(r"requests\s+(\d+) sent, (\d+) answered, (\d+) failed", out)
    assert requests, out
    sent, answered, failed = map(int, requests.groups())
    assert sent > 0
    assert answered == sent
    assert failed == 0
    answers = re.search(r"answers\s+0\.49 x (\d+) \(baseline 2\.3\), then 0\.50 x (\d+)", out)
    assert answers, out
    assert int(answers[1]) > 0
    assert int(answers[2]) > 0
    assert int(answers[1]) + int(answers[2]) == sent
    assert "versions  2.3 -> 2.3.1; refused: 2.3.2 (signature), 2.3.2 (import)" in out

    # The service stopped cleanly and the temporary folder is gone.
    assert "service | stopped" in out
    tmp = re.search(r"working in TMP=(\S+)", out)
    assert tmp, out
    assert not Path(tmp[1]).exists()


def test_quickstart_exits_1_when_what_it_shows_does_not_hold():
    # Fault injection: the demo's "fix" is the patch with an incompatible signature.
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import quickstart; "
        "quickstart.FIX = quickstart.BAD_PATCHES[0]; sys.exit(quickstart.main())"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, str(DEMOS)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 1, run.stdout + run.stderr
    assert "demo FAILED: the fix was rejected" in run.stdout
    assert "requires 'currency'" in run.stdout
    assert "demo OK" not in run.stdout
    assert "service | stopped" in run.stdout  # the service is stopped all the same
    tmp = re.search(r"working in TMP=(\S+)", run.stdout)
    assert tmp, run.stdout
    assert not Path(tmp[1]).exists()


def test_make_fix_turns_a_commit_into_a_live_fix_and_a_layout_change_into_a_bundle():
    run = run_demo("make_fix.py")
    out = run.stdout
    assert run.returncode == 0, out + run.stderr
    assert "demo OK" in out
    assert "FAILED" not in out
    assert "-> 0.49: the bug" in out
    # The commit became a patch: checked, signed, with its changes named.
    assert re.search(r"tips\.money:tip\s+function\s+inline", out), out
    assert re.search(r"tips\.money:to_cents\s+function\s+added", out), out
    assert "tests/test_money.py  file      ignored" in out
    assert "signed: $TMP/outbox/tips-1.0.1.py.sig" in out
    assert '| @patch.replace("tips.money:tip")' in out
    # Dropped, applied in the running service, the answer fixed, no request lost.
    assert "outcome: applied 1.0.1 -> applied/tips-1.0.1.py.result.json" in out
    assert "-> 0.50: fixed, in the same process" in out
    requests = re.search(r"requests\s+(\d+) sent, (\d+) answered, (\d+) failed", out)
    assert requests, out
    assert int(requests[1]) == int(requests[2]) > 0
    assert int(requests[3]) == 0
    # What cannot go hot: a bundle, exit 3, the data file named.
    assert "not hot: wrote the baseline bundle $TMP/outbox/tips-1.1.zip instead" in out
    assert "tips/presets.json: a non-Python file" in out
    assert "exit status 3" in out
    tmp = re.search(r"working in TMP=(\S+)", out)
    assert tmp, out
    assert not Path(tmp[1]).exists()
