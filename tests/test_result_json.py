"""A drop's result file: the text an indented ``json.dumps`` writes, and no garbage.

json's encoder writes an indented document in Python, with functions it makes anew
on each call in reference cycles: some 30 objects a result that only the garbage
collector frees, two results a drop (the result file, the vital check's). The
agent lays the document out itself, each value that is neither a list nor a
mapping written by ``json.dumps``: the same bytes, and nothing left for the
collector, whose collections a burst of drops would otherwise bring sooner.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest
from pychild import run_python_json

from hotpatch.agent._outcome import Outcome, result_bytes

RECORDS: list[dict[Any, Any]] = [
    {},
    Outcome(
        name="fix-01.py",
        who="folder",
        version="1.0.1",
        outcome="applied",
        targets=("shop.pricing:total", "shop.cart:Cart.add"),
        level=("1.0.1",),
        timings={"verify_s": 0.0123456789, "total_s": 0.02},
        details={"workers": [{"pid": 1, "ok": True}], "empty": {}, "none": []},
    ).record(),
    {
        "text": 'é ü 中 "quoted" \\ back\nnew line\t\x00',
        "numbers": [0, -1, 10**30, 1.5, -0.0, 1e300, float("inf"), float("nan")],
        "nested": {"a": [[], [{}], [[1, [2, {"b": None}]]]], "t": (1, (2,))},
        "flags": [True, False, None],
        1: "int key",
        2.5: "float key",
        None: "None key",
        False: "bool key",
    },
]


@pytest.mark.parametrize("record", RECORDS, ids=["empty", "outcome", "edges"])
def test_a_result_holds_what_an_indented_json_dumps_writes(record: dict[Any, Any]) -> None:
    assert result_bytes(record) == (json.dumps(record, indent=2) + "\n").encode()


@pytest.mark.parametrize(
    ("record", "error"),
    [
        ({"x": object()}, "Object of type object is not JSON serializable"),
        ({(1, 2): 1}, "keys must be str, int, float, bool or None, not tuple"),
    ],
)
def test_what_json_refuses_a_result_refuses_alike(record: dict[Any, Any], error: str) -> None:
    with pytest.raises(TypeError, match=error):
        json.dumps(record, indent=2)
    with pytest.raises(TypeError, match=error):
        result_bytes(record)


GARBAGE = """
import gc, json, sys
sys.path[:0] = {paths!r}
from hotpatch.agent._outcome import Outcome, result_bytes
record = Outcome(name="fix.py", who="folder", version="1.0.1", outcome="applied",
                 targets=("m:f",), level=("1.0.1",), timings={{"total_s": 0.01}}).record()
result_bytes(record)  # what a first call sets up once
gc.disable()
gc.collect()
for _ in range(100):
    result_bytes(record)
print(json.dumps({{"garbage": gc.collect()}}))
"""


def test_writing_results_leaves_no_garbage_for_the_collector() -> None:
    # In a new Python: the test process's collector is left alone.
    assert run_python_json(GARBAGE.format(paths=sys.path)) == {"garbage": 0}
