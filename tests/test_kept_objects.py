"""What an applied patch keeps for the garbage collector: few objects it tracks.

Every object the collector tracks and an applied patch keeps alive counts
toward CPython's next full collection (it runs once what reached the oldest
generation since the last one exceeds a quarter of what that one left), and a
burst of 1,000 drops pays for one where 200 pay for none. The registry keeps,
for each applied patch, what rollback needs; kept as a few flat tuples rather
than a record per attribute of each target, an applied patch keeps few
tracked objects, whatever it patched.

Counted in a new Python (the test process's own collector is left alone):
``2 * N`` stacked patches, each loaded from its file and applied through a
registry with its journal on, as a service runs; the objects tracked after
full collections, before and after the second ``N``, divided by ``N``.
"""

from __future__ import annotations

import sys

import pytest
from pychild import run_python_json

COUNT = """
import collections, gc, importlib, json, logging, sys, tempfile
from pathlib import Path
sys.path[:0] = {paths!r}
import hotpatch
logging.getLogger("hotpatch").setLevel(logging.WARNING)
N, TARGETS = {n}, {targets}
root = Path(tempfile.mkdtemp())
names = [f"f{{i}}" for i in range(TARGETS)]
(root / "kept_target.py").write_text("".join(f"def {{f}}(x):\\n    return x\\n" for f in names))
sys.path.insert(0, str(root))
importlib.import_module("kept_target")
def write(n):
    path = root / f"p{{n}}.py"
    path.write_text(
        "from hotpatch import Patch\\n"
        f"patch = Patch(version='1.0.{{n}}', baseline='1.0')\\n"
        + "".join(
            f"@patch.replace('kept_target:{{f}}')\\ndef {{f}}(x):\\n    return x + {{n}}\\n"
            for f in names
        )
    )
    return path
paths = [write(n) for n in range(1, 2 * N + 1)]
registry = hotpatch.Registry("1.0", journal=root / "journal.json")
def tracked():
    for _ in range(3):  # a tuple holding tuples is untracked once they are
        gc.collect()
    return gc.get_objects()
for path in paths[:N]:  # what the first applies set up once is not counted
    registry.apply(hotpatch.load_patch(path))
start = {{id(o) for o in tracked()}}
for path in paths[N:]:
    registry.apply(hotpatch.load_patch(path))
new = [o for o in tracked() if id(o) not in start]
kinds = collections.Counter(type(o).__qualname__ for o in new)
print(json.dumps({{"per_patch": len(new) / N, "kinds": kinds.most_common(12),
                   "level": len(registry.level)}}))
"""


@pytest.mark.parametrize(
    ("targets", "most"),
    [
        # 33 before 2cc3e0e: 12 tuples and 2 dicts of each function's attributes; 19 before
        # history entries shared the versions' own states (a node object each before);
        # 17.05-17.35 before an entry shared the tuple of its targets with the one below
        (1, 16.5),
        (10, 35.5),  # 168 before 2cc3e0e, 37 before the shared states, 35.8-36.0 before
    ],
)
def test_an_applied_patch_keeps_few_tracked_objects(targets: int, most: int) -> None:
    result = run_python_json(COUNT.format(paths=sys.path, n=40, targets=targets))
    assert result["level"] == 80
    assert result["per_patch"] <= most, result


WAITING = """
import collections, gc, json, sys, tempfile, threading
from pathlib import Path
sys.path[:0] = {paths!r}
from hotpatch.agent._configmap import Taken
from hotpatch.agent._queue import DropQueue
N = {n}
folder = Path(tempfile.mkdtemp())
names = [f"fix-{{i:05d}}.py" for i in range(1, 2 * N + 1)]
for i, name in enumerate(names, 1):
    (folder / name).write_text(
        f"from hotpatch import Patch\\npatch = Patch(version='1.0.{{i}}', baseline='1.0')\\n"
    )
cond = threading.Condition()
queue = DropQueue(folder, cond, max_bytes=1 << 20, keep=False, taken=Taken(folder))
def announce(part):
    with cond:
        for name in part:
            queue.add(name)
def tracked():
    for _ in range(5):  # a tuple holding tuples is untracked once they are: 4 deep
        gc.collect()
    return gc.get_objects()
announce(names[:N])  # what the first burst sets up once is not counted
assert queue.take() == names[0]
start = {{id(o) for o in tracked()}}
announce(names[N:])
assert queue.lower_than("2.0") == names[1]  # every drop announced is read and sorted in
new = [o for o in tracked() if id(o) not in start]
kinds = collections.Counter(type(o).__qualname__ for o in new)
per_drop = len(new) / N
print(json.dumps({{"per_drop": per_drop, "kinds": kinds.most_common(8), "waiting": len(queue)}}))
"""


def test_a_drop_waiting_in_a_burst_keeps_nothing_the_collector_tracks() -> None:
    """The queue sorts a burst by the drops' versions, kept for each drop waiting: as
    ints and strings, which the collector stops tracking, not a ``Version`` (tracked,
    with the tuples holding it: 2 objects a drop before), so that the N drops of a
    burst waiting count nothing toward a full collection."""
    result = run_python_json(WAITING.format(paths=sys.path, n=200))
    assert result["waiting"] == 399
    assert result["per_drop"] < 0.5, result


ALLOCATED = (
    COUNT.split("start = {{id(o)", maxsplit=1)[0]
    + """
loaded = [hotpatch.load_patch(write(n)) for n in range(2 * N + 1, 3 * N + 1)]
gc.collect()
gc.disable()  # the count of objects made less those freed, with no collection resetting it
made = gc.get_count()[0]
for patch in loaded:
    registry.apply(patch)
made = gc.get_count()[0] - made
gc.enable()
print(json.dumps({{"per_apply": made / N, "level": len(registry.level)}}))
"""
)


@pytest.mark.parametrize(
    ("targets", "most"),
    [
        # 27.1 (3.11) / 28.1 (3.12, 3.13) before the journal's shared field names;
        # 24.2 / 25.1 before the caches of each replacement's code were dropped
        (1, 23),
        (10, 70),  # 82.9 / 92.9 before the caches were dropped
    ],
)
def test_an_apply_makes_few_objects_the_collector_counts(targets: int, most: int) -> None:
    """What an apply makes and leaves alive counts toward the collector's next young
    collection, even what it stops tracking then (tuples of strings); in a burst, young
    collections make middle ones, and on 3.11 and 3.12 the 11th middle collection since
    the last full one is the next full one. The journal's state keeps each history row
    as its values beside field names shared by every row, not a tuple per field; the
    names a replacement's code looks up and the code made from it are not cached (a key
    tuple each, for every target of every patch, never looked up again), and whether a
    replacement is wrapped is looked up, not read from its ``__dict__`` (which reading
    makes): 22.1 objects an apply of one target, 53.7 (3.11) / 63.7 of ten."""
    result = run_python_json(ALLOCATED.format(paths=sys.path, n=40, targets=targets))
    assert result["level"] == 80
    assert result["per_apply"] <= most, result


RELEASED = """
import gc, importlib, json, logging, sys, tempfile, weakref
from pathlib import Path
sys.path[:0] = {paths!r}
import hotpatch
logging.getLogger("hotpatch").setLevel(logging.WARNING)
root = Path(tempfile.mkdtemp())
(root / "released_target.py").write_text("def f(x):\\n    return x\\n")
sys.path.insert(0, str(root))
target = importlib.import_module("released_target")
registry = hotpatch.Registry("1.0", journal=root / "journal.json")
made = []
for n in (1, 2):
    path = root / f"p{{n}}.py"
    path.write_text(
        "from hotpatch import Patch\\n"
        f"patch = Patch(version='1.0.{{n}}', baseline='1.0')\\n"
        "@patch.replace('released_target:f')\\n"
        f"def f(x):\\n    return x + {{n}}\\n"
    )
    registry.apply(hotpatch.load_patch(path))
    made.append(weakref.ref(target.f.__code__))  # the code made to run the patch
running = target.f(1)
registry.rollback()
registry.rollback()
gc.collect()
print(json.dumps({{"running": running, "after": target.f(1),
                   "alive": sum(ref() is not None for ref in made)}}))
"""


def test_the_code_made_for_a_patch_goes_with_its_rollback() -> None:
    """The code an apply makes to run a replacement in its target (the replacement's
    code with the original's name and closure) is the applied patch's alone: once it is
    rolled back, nothing keeps it. Before, a cache of 4,096 entries kept it, and the
    replacement's code with it, for every patch of a service's life."""
    result = run_python_json(RELEASED.format(paths=sys.path))
    assert (result["running"], result["after"]) == (3, 1), result
    assert result["alive"] == 0, result


ROWS = """
import gc, json, sys
sys.path[:0] = {paths!r}
from hotpatch._journal_format import JournalEntry, JournalState, Written
N = {n}
written = Written(JournalState("1.0"))
numbers = range(1, 2 * N + 1)
entries = [JournalEntry(f"1.0.{{n}}", "ab" * 32, f"/p/{{n}}.py", "text", "") for n in numbers]
rows = [
    {{"time": 1.0 * n, "action": "apply", "version": f"1.0.{{n}}", "elapsed_s": 0.001,
      "who": "folder:x"}}
    for n in numbers
]
for n in range(N):  # what the first rows set up once is not counted
    written.change(0, [entries[n]], [rows[n]])
gc.collect()
gc.disable()  # the count of objects made less those freed, with no collection resetting it
made = gc.get_count()[0]
for n in range(N, 2 * N):
    written.change(0, [entries[n]], [rows[n]])
made = gc.get_count()[0] - made
gc.enable()
print(json.dumps({{"per_change": made / N, "encoded": len(written.encode())}}))
"""


def test_a_journal_row_kept_in_memory_is_one_tuple() -> None:
    """The journal's in-memory state (what a compaction writes) keeps each apply's history
    row as one tuple: the row's shared field names, its change of level (the version it
    added, as itself) and its values, not a tuple for the values and one for the versions
    added beside the row's own (4.41 objects counted an apply before, the level entry's
    tuple included; 2.4 after)."""
    result = run_python_json(ROWS.format(paths=sys.path, n=200))
    assert result["encoded"] > 0
    assert result["per_change"] <= 3, result
