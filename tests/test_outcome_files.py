"""The copy of a drop filed beside its result is whole whenever its name can be seen.

A folder that is only read (a state directory) keeps the drop where it is and files
the bytes processed as a copy, as does a drop replaced while it was worked on. A
reader -- an operator, a deployment script, an agent started after a crash -- that
finds the copy's name must find the whole patch, never an empty or cut file. The
filing runs in a new Python whose audit hook (the interpreter's own record of each
``open``) looks at the copy's name at that moment: in a process of its own, as an
audit hook cannot be removed, and one left in the test process would run Python
code in the middle of every later switch of function code (``__code__`` is audited).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from pychild import run_python_json

FILING = """
import json, sys
sys.path[:] = {paths!r}
from pathlib import Path
from hotpatch.agent._outcome import Outcome, file_outcome

data = b"from hotpatch import Patch\\n" + b"# padding\\n" * 10_000
folder = Path({folder!r})
(folder / "applied").mkdir(parents=True)
drop = folder / "fix.py"
drop.write_bytes(b"# another file now holds the name\\n")
outcome = Outcome(name="fix.py", who="test", version="1.0.1", outcome="applied", data=data)
outcome.ino = (0, 0)  # not the file at the name now: the bytes processed are copied
copy = folder / "applied" / "fix.py"
seen = []
watching = []

def hook(event, args):
    if event != "open" or not watching:
        return
    try:
        size = copy.stat().st_size
    except FileNotFoundError:
        size = None
    seen.append((str(args[0]), size))

sys.addaudithook(hook)
watching.append(True)
try:
    file_outcome(drop, outcome, move={move!r})
finally:
    watching.clear()
print(json.dumps({{"seen": seen, "whole": copy.read_bytes() == data, "size": len(data)}}))
"""


@pytest.mark.parametrize("move", [False, True], ids=["kept", "replaced-while-worked-on"])
def test_the_copy_filed_is_never_seen_cut(tmp_path: Path, move: bool) -> None:
    code = FILING.format(paths=sys.path, folder=str(tmp_path / "patches"), move=move)
    result = run_python_json(code)
    assert result["whole"]
    assert result["seen"], "the filing opened no file"
    cut = [(opened, size) for opened, size in result["seen"] if size not in (None, result["size"])]
    assert not cut, f"the copy's name showed a cut file while filing: {cut}"
