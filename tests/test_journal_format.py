"""The journal's records as read: whole records checked field by field, whatever their shape.

A replay reads a thousand entries and history rows at a time, so the usual ones
are recognised at once; these tests hold every other one to the field-by-field
check: refused, naming the record and the field, never taken in part.
"""

from __future__ import annotations

import hashlib
import json
import tracemalloc
import zlib
from collections.abc import Callable
from typing import Any

import pytest

from hotpatch._journal_format import (
    JournalEntry,
    JournalState,
    Written,
    decode,
    encode,
    encode_change,
)
from hotpatch._results import HistoryEntry


def _entry(n: int) -> JournalEntry:
    text = f"from hotpatch import Patch\npatch = Patch(version='1.0.{n}', baseline='1.0')\n"
    sha = hashlib.sha256(text.encode()).hexdigest()
    return JournalEntry(f"1.0.{n}", sha, f"/p/p{n}.py", text, f"level {n}")


def _row(n: int) -> dict[str, Any]:
    return {"time": 1.5 + n, "action": "apply", "version": f"1.0.{n}", "elapsed_s": 0.25}


def _journal() -> bytes:
    """A compacted journal at 1.0.2, and one appended record putting 1.0.3 on."""
    state = JournalState(
        "1.0",
        [_entry(1), _entry(2)],
        [{**_row(1), "level": ["1.0.1"]}, {**_row(2), "level": ["1.0.1", "1.0.2"], "who": "x"}],
    )
    return encode(state) + encode_change(0, [_entry(3)], [_row(3)])


def _line(value: Any) -> bytes:
    payload = json.dumps(value, separators=(",", ":")).encode()
    return b"%s\t%08x\n" % (payload, zlib.crc32(payload))


def _damaged(record: int, damage: Callable[[dict[str, Any]], None]) -> bytes:
    """The journal with its record ``record`` (1: the compacted one) changed, CRC made good."""
    lines = _journal().splitlines(keepends=True)
    value = json.loads(lines[record].rpartition(b"\t")[0])
    damage(value)
    lines[record] = _line(value)
    return b"".join(lines)


def test_the_usual_records_are_read_whole():
    state, number, end = decode(_journal())
    assert number == 2
    assert end == len(_journal())
    assert state.level == [_entry(1), _entry(2), _entry(3)]
    assert [row["level"] for row in state.history] == [
        ["1.0.1"],
        ["1.0.1", "1.0.2"],
        ["1.0.1", "1.0.2", "1.0.3"],
    ]
    assert state.history[1] == {**_row(2), "who": "x", "level": ["1.0.1", "1.0.2"]}
    assert state.history[2] == {**_row(3), "level": ["1.0.1", "1.0.2", "1.0.3"]}


def _set(path: tuple[Any, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def damage(record: dict[str, Any]) -> None:
        *inner, last = path
        at: Any = record
        for key in inner:
            at = at[key]
        at[last] = value

    return damage


def _drop(path: tuple[Any, ...]) -> Callable[[dict[str, Any]], None]:
    def damage(record: dict[str, Any]) -> None:
        *inner, last = path
        at: Any = record
        for key in inner:
            at = at[key]
        del at[last]

    return damage


@pytest.mark.parametrize(
    ("record", "damage", "expected"),
    [
        (1, _set(("push", 1, "text"), 5), "record 1.push[1].text is a int"),
        (1, _set(("push", 0, "summary"), None), "record 1.push[0].summary is a NoneType"),
        (1, _set(("push", 1, "extra"), "x"), "record 1.push[1] has unknown fields extra"),
        (1, _drop(("push", 0, "sha256")), "record 1.push[0] lacks sha256"),
        (2, _set(("push", 0, "version"), "one"), "record 2.push[0].version 'one' is not a PEP"),
        (2, _set(("push", 0), ["1.0.3"]), "record 2.push[0] is a list, not an object"),
        (1, _set(("history", 0, "time"), True), "record 1.history[0].time is a bool"),
        (1, _set(("history", 1, "elapsed_s"), "0.25"), "record 1.history[1].elapsed_s is a str"),
        (1, _set(("history", 1, "who"), 7), "record 1.history[1].who is a int"),
        (2, _set(("history", 0, "action"), None), "record 2.history[0].action is a NoneType"),
        (2, _set(("history", 0, "version"), 3), "record 2.history[0].version is a int"),
        (2, _set(("history", 0, "note"), "x"), "record 2.history[0] has unknown fields note"),
        (2, _drop(("history", 0, "time")), "record 2.history[0] lacks time"),
        (1, _set(("history", 0, "level"), ["1.0.1"]), "record 1.history[0] has both level and"),
        (2, _set(("history", 0, "level"), [1]), "record 2.history[0].level holds something"),
        (2, _set(("history", 0, "level"), "1.0.1"), "record 2.history[0].level is a str"),
        (1, _set(("history", 1, "delta"), [5, []]), "record 1.history[1].delta is [5, []]"),
        (2, _set(("history", 0), 3), "record 2.history[0] is a int, not an object"),
    ],
)
def test_a_record_not_as_written_is_refused_naming_the_field(record, damage, expected):
    with pytest.raises((ValueError, TypeError)) as info:
        decode(_damaged(record, damage))
    assert expected in str(info.value)


def test_a_history_row_that_gives_its_level_is_read_with_it():
    # Rows a replay adds are recorded with the next change, each with its level.
    state, _, _ = decode(_damaged(2, _set(("history", 0, "level"), ["1.0.1", "1.0.3"])))
    assert state.history[-1]["level"] == ["1.0.1", "1.0.3"]


def test_history_entries_from_the_rows_read_are_those_of_each_row_alone():
    # Consecutive levels share their common part; each entry is still its own row's.
    state, _, _ = decode(_journal())
    rows = [
        *state.history,
        {**_row(4), "level": ("1.0.1", "1.0.4")},  # a tuple, a level off to the side
        {**_row(5), "level": ["1.0.1"], "who": "y"},  # shorter: a rollback
        {**_row(6), "level": []},
        {**_row(7), "level": ["1.0.1", "1.0.2", "1.0.3", "1.0.7"]},
    ]
    entries = HistoryEntry.from_records(rows)
    assert entries == [HistoryEntry.from_record(row) for row in rows]
    assert [e.who for e in entries] == ["api", "x", "api", "api", "y", "api", "api"]
    assert entries[3].level == ("1.0.1", "1.0.4")
    assert state.history[0]["level"] == ["1.0.1"]  # the rows are not changed


def _bytes_a_change_makes(level: int) -> int:
    """The most memory one change of a journal's state in memory (``Written``, what a
    compaction writes) holds at once, at ``level``: the least of five changes in a row
    (a list that grows reallocates at one of them at most)."""
    written = Written(JournalState("1.0"))
    for n in range(1, level + 1):
        written.change(0, [_entry(n)], [_row(n)])
    made = []
    for n in range(level + 1, level + 6):
        entry, row = _entry(n), _row(n)
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        written.change(0, [entry], [row])
        made.append(tracemalloc.get_traced_memory()[1] - before)
    return min(made)


def test_following_an_apply_costs_what_it_changed_not_the_level() -> None:
    """An apply's row is kept as its change from the row before (one version added),
    and that change is worked out from the record's own (what it took off and put on),
    not by copying the whole level and comparing it with the last row's: at level
    1,000 that was two lists of 1,000 names made and compared for every drop of a
    burst (16 KB held at once, against 0.2 KB at level 10)."""
    tracing = tracemalloc.is_tracing()
    if not tracing:
        tracemalloc.start()
    try:
        low, high = _bytes_a_change_makes(10), _bytes_a_change_makes(1000)
    finally:
        if not tracing:
            tracemalloc.stop()
    assert high < low + 1024, (low, high)
