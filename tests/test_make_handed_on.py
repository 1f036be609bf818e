"""``hotpatch make`` and what a module hands to code not the project's when it is imported: a
callback registered with the standard library (``atexit``, ``signal``, a logger's filter, a
thread's target, ``singledispatch``), a value handed on (a logger's level, a table of
reducers, an argument kept for later).

A function object handed on is the one the patch replaces in place: the library calls the
new code. What was handed on as a value, read, or decided from the function when it was
defined (a value of the module, an object made by the old code, the type an annotation
names) stays as the import made it. Each case is a real old/new project whose fix changes
what the library holds or does (checked by importing both); the patch must then either be
a baseline naming why, or, applied to the running old code, give what a restart on the new
code gives.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from gitrepo import GitRepo, checkout, imported_fresh, make_since_v1

ATEXIT = """\
import atexit

SAID = []


def _bye():
    SAID.append("v1")


atexit.register(_bye)
"""

ATEXIT_ARGUMENT = """\
import atexit

SAID = []
MESSAGE = "v1"


def _say(message):
    SAID.append(message)


atexit.register(_say, MESSAGE)
"""

SIGNAL = """\
import signal


def _on_usr1(signum, frame):
    return "v1"


signal.signal(signal.SIGUSR1, _on_usr1)
"""

LEVEL = """\
import logging

LEVEL = 10

logging.getLogger("shop.m").setLevel(LEVEL)
"""

LEVEL_IN_A_FUNCTION = """\
import logging

LEVEL = 10


def _configure():
    logging.getLogger("shop.m").setLevel(LEVEL)


_configure()
"""

LIMIT_IN_AN_INSTANCE = """\
LIMIT = 10


class Config:
    def __init__(self):
        self.limit = LIMIT


DEFAULT = Config()
"""

LIMIT_UNPACKED = """\
LIMIT = 10
LOW, HIGH = LIMIT, LIMIT * 2
"""

LIMIT_COMPUTED = """\
LIMIT = 10
DOUBLE = LIMIT * 2


def double():
    return DOUBLE
"""

REDUCERS = """\
import copyreg


class Point:
    def __init__(self, x):
        self.x = x


def _reduce_old(point):
    return (Point, ("v1",))


def _reduce_new(point):
    return (Point, ("v2",))


REDUCERS = {Point: _reduce_old}
copyreg.dispatch_table.update(REDUCERS)
"""

DISPATCH = """\
import functools


@functools.singledispatch
def show(x):
    return "any"


@show.register
def _(x: int):
    return "v1"
"""

THREAD = """\
import threading
import time

SEEN = []


def _watch():
    while True:
        SEEN.append("v1")
        time.sleep(0.005)


threading.Thread(target=_watch, daemon=True).start()
"""

THREAD_TARGET_RETURNED = """\
import threading
import time

SEEN = []


def _watch():
    while True:
        SEEN.append("v1")
        time.sleep(0.005)


def _target():
    return _watch


threading.Thread(target=_target(), daemon=True).start()
"""

FILTER_RETURNED = """\
import logging

TAGS = []


class Tagger:
    def filter(self, record):
        TAGS.append("v1")
        return True


def _tagger():
    return Tagger()


logger = logging.getLogger("shop.m")
logger.addFilter(_tagger())
logger.warning("loaded")
"""

FILTER_IN_A_TABLE = """\
import logging

TAGS = []


class Tagger:
    def filter(self, record):
        TAGS.append("v1")
        return True


FILTERS = {"tag": Tagger()}
logger = logging.getLogger("shop.m")
logger.addFilter(FILTERS["tag"])
logger.warning("loaded")
"""

V2 = [('"v1"', '"v2"')]
RUN_EXIT = "(module.atexit._run_exitfuncs(), module.SAID)[1]"
LATEST = "(module.time.sleep(0.1), module.SEEN[-1])[1]"

# name: (the module, the fix's edits, a probe of what the library holds or does,
#        "hot", or the change that needs a baseline and words its reason says)
CASES: dict[str, tuple[str, list[tuple[str, str]], str, str | tuple[str, tuple[str, ...]]]] = {
    "atexit_function": (ATEXIT, V2, RUN_EXIT, "hot"),
    "signal_handler": (
        SIGNAL,
        V2,
        "module.signal.getsignal(module.signal.SIGUSR1)(0, None)",
        "hot",
    ),
    "singledispatch_implementation": (DISPATCH, V2, "module.show(1)", "hot"),
    "computed_constant": (LIMIT_COMPUTED, [("10", "30")], "module.double()", "hot"),
    "atexit_argument": (
        ATEXIT_ARGUMENT,
        V2,
        RUN_EXIT,
        ("shop.m:MESSAGE", ("line 11: `atexit.register(_say, MESSAGE)`",)),
    ),
    "logger_level": (
        LEVEL,
        [("10", "30")],
        "module.logging.getLogger('shop.m').level",
        ("shop.m:LEVEL", ('line 5: `logging.getLogger("shop.m").setLevel(LEVEL)`',)),
    ),
    "logger_level_in_a_function_run_at_import": (
        LEVEL_IN_A_FUNCTION,
        [("10", "30")],
        "module.logging.getLogger('shop.m').level",
        ("shop.m:LEVEL", ("line 10: `_configure()`",)),
    ),
    "constant_read_by_an_instance_made_at_import": (
        LIMIT_IN_AN_INSTANCE,
        [("10", "30")],
        "module.DEFAULT.limit",
        ("shop.m:LIMIT", ("line 9: `DEFAULT = Config()`",)),
    ),
    "constant_unpacked_into_names": (
        LIMIT_UNPACKED,
        [("10", "30")],
        "[module.LOW, module.HIGH]",
        ("shop.m:LIMIT", ("line 2: `LOW, HIGH = LIMIT, LIMIT * 2`",)),
    ),
    "table_of_reducers": (
        REDUCERS,
        [("{Point: _reduce_old}", "{Point: _reduce_new}")],
        "module.copyreg.dispatch_table[module.Point](None)",
        ("shop.m:REDUCERS", ("line 18: `copyreg.dispatch_table.update(REDUCERS)`",)),
    ),
    "singledispatch_annotation": (
        DISPATCH,
        [("x: int", "x: float")],
        "[module.show(1), module.show(1.5)]",
        ("shop.m:_", ("annotations", "@show.register")),
    ),
    "thread_target": (
        THREAD,
        V2,
        LATEST,
        ("shop.m:_watch", ("threading.Thread(target=_watch, daemon=True).start()",)),
    ),
    "thread_target_a_call_returned": (
        THREAD_TARGET_RETURNED,
        V2,
        LATEST,
        ("shop.m:_watch", ("threading.Thread(target=_target(), daemon=True)",)),
    ),
    "filter_a_call_returned": (
        FILTER_RETURNED,
        V2,
        "module.TAGS",
        ("shop.m:Tagger.filter", ("logger.addFilter(_tagger())",)),
    ),
    "filter_in_a_table": (
        FILTER_IN_A_TABLE,
        V2,
        "module.TAGS",
        ("shop.m:Tagger.filter", ('logger.addFilter(FILTERS["tag"])',)),
    ),
}

_PATCHED = r"""
import json, sys
root, module_name, patch, probe = sys.argv[1:]
sys.path.insert(0, root)
import importlib
from hotpatch import Registry, load_patch
module = importlib.import_module(module_name)
Registry("1.0").apply(load_patch(patch))
print(json.dumps(eval(probe), default=str))
"""


def patched(root: Path, module: str, patch: Path, probe: str) -> Any:
    """``probe`` in a new Python that imports ``module`` from ``root`` (the old code), then
    applies ``patch``: what the running service gives after the patch."""
    done = subprocess.run(
        [sys.executable, "-c", _PATCHED, str(root), module, str(patch), probe],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize("case", list(CASES))
def test_what_a_module_hands_to_a_library_at_import_is_hot_only_when_a_restart_agrees(
    tmp_path: Path, case: str
) -> None:
    module, edits, probe, expected = CASES[case]
    fixed = module
    for old, new in edits:
        assert old in fixed, old
        fixed = fixed.replace(old, new)
    repo = GitRepo(tmp_path / "repo")
    repo.commit("the baseline", {"src/shop/__init__.py": "", "src/shop/m.py": module})
    repo.git("tag", "v1")
    repo.commit("the fix", {"src/shop/m.py": fixed})
    old_root, new_root = checkout(repo, "v1", tmp_path), checkout(repo, "HEAD", tmp_path)
    before = imported_fresh(old_root, "shop.m", probe)
    restart = imported_fresh(new_root, "shop.m", probe)
    assert before != restart, "the fix must change what the library holds or does"
    result = make_since_v1(repo, tmp_path / "out")
    if expected == "hot":
        assert result.outcome == "hot", result.record()
        assert result.path is not None
        assert patched(old_root, "shop.m", result.path, probe) == restart
        return
    changed, words = expected
    assert result.outcome == "baseline", result.record()
    why = {c.name: c.why for c in result.reasons}
    assert set(why) == {changed}, why
    for said in words:
        assert said in why[changed], why[changed]
