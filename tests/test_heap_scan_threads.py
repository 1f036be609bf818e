"""The heap scan of a nested target leaves other threads' objects alone.

CPython builds ``tuple(generator)`` in a tuple it resizes once the generator is
done, which it may do only while it holds the one reference. A scan that held
every object of the heap (``gc.get_objects()``) while running Python code gave
another thread's half-built tuple a second reference: that thread's resize
failed with ``SystemError: bad argument to internal function``.
"""

from __future__ import annotations

import sys

from pychild import run_python_json

SCENARIO = """
import json, sys, tempfile, textwrap, threading
from pathlib import Path
sys.path[:0] = {paths!r}
import hotpatch

folder = Path(tempfile.mkdtemp())
(folder / "scanned.py").write_text(textwrap.dedent('''
    def make(k):
        def inner(x):
            return x + k
        return inner


    made = make(0)
'''))
(folder / "fix.py").write_text(textwrap.dedent('''
    from hotpatch import Patch
    patch = Patch(version="1.0.1", baseline="1.0")


    @patch.replace("scanned:make.<locals>.inner")
    def inner(x):
        return x + k + 1
'''))
sys.path.insert(0, str(folder))
import scanned

patch = hotpatch.load_patch(folder / "fix.py")
registry = hotpatch.Registry("1.0")
sys.setswitchinterval(1e-6)
stop = threading.Event()
built = [0]
errors = []


def build():
    while not stop.is_set():
        try:
            tuple(i for i in range(20))
            built[0] += 1
        except BaseException as exc:
            errors.append(repr(exc))


thread = threading.Thread(target=build)
thread.start()
try:
    for _ in range({cycles}):
        registry.check(patch)
        registry.apply(patch)
        registry.rollback()
finally:
    stop.set()
    thread.join()
print(json.dumps({{"errors": errors[:3], "failed": len(errors), "built": built[0],
                   "after": scanned.made(1)}}))
"""


def test_a_nested_targets_scan_leaves_tuples_being_built_alone() -> None:
    """A thread builds tuples from generators nonstop while a nested target is
    checked, applied and rolled back 150 times (each a heap scan): none fails.
    Before, 44-61 of its tuples failed in 200 cycles (3.11-3.13)."""
    result = run_python_json(SCENARIO.format(paths=sys.path, cycles=150))
    assert result["built"] > 0
    assert result["failed"] == 0, result["errors"]
    assert result["after"] == 1


FROZEN = """
import gc, json, sys, threading
sys.path[:0] = {paths!r}
from hotpatch import _heap

gc.freeze()  # as a pre-fork server does: the scan thaws what is frozen, then freezes again
errors = []


def half_built(ready, go):
    # tuple() sizes its tuple at 10 for a generator and shrinks it once the generator
    # is done: only while it holds the one reference. The full collection moves the
    # half-built tuple into the oldest generation, the one the scan thaws into.
    def items():
        yield 1
        gc.collect()
        ready.set()
        go.wait()

    try:
        tuple(items())
    except BaseException as exc:
        errors.append(repr(exc))


positions = 0
k = 0
while True:
    ready, go = threading.Event(), threading.Event()
    builder = threading.Thread(target=half_built, args=(ready, go))
    builder.start()
    ready.wait()
    seen = [0]

    def trace(frame, event, arg):
        if frame.f_code is not _heap._visible.__wrapped__.__code__:
            return None
        frame.f_trace_opcodes = True
        if event == "opcode":
            if seen[0] == k:  # the tuple finishes at this point of the scan's code
                go.set()
                builder.join()
            seen[0] += 1
        return trace

    scan = _heap._visible()
    scan.gen.gi_frame.f_trace_opcodes = True  # 3.12: set inside the trace, it comes too late
    sys.settrace(trace)
    with scan:
        pass
    sys.settrace(None)
    go.set()
    builder.join()
    positions = seen[0]
    k += 1
    if k >= positions:
        break
print(json.dumps({{"positions": positions, "errors": errors, "frozen": gc.get_freeze_count()}}))
"""


def test_thawing_frozen_objects_holds_no_list_of_the_heap_while_python_runs() -> None:
    """The scan thaws what ``gc.freeze()`` froze and finds it at the end of the oldest
    generation: a list of that whole generation, held while Python code ran, gave each
    object in it a reference more. Another thread's half-built tuple finishes at each
    point of that code in turn (an opcode trace), and is never refused its resize."""
    result = run_python_json(FROZEN.format(paths=sys.path))
    assert result["positions"] > 10  # the scan's code, opcode by opcode
    assert result["frozen"] > 0  # frozen again afterwards
    assert result["errors"] == []
