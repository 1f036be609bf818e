"""Decorators whose wrapper is an object holding the function it calls around the
decorated one (the shape of ``wrapt``'s ``FunctionWrapper``: ``@retry(3)`` made of a
generic ``wrapper(wrapped, args, kwargs)`` that closes over ``times``).

A replacement written under such decorators stands for the function under them,
and the running wrapper object keeps what it holds: written under them made
otherwise (``@retry(5)`` over the running ``@retry(3)``, or another decorator
of the same wrapper type), it would not do what it says, so it is refused, as
for decorators whose wrapper is a function.
"""

from __future__ import annotations

from refusals import PatchWriter, load, refused

import hotpatch

DECORATORS = """
calls = []


class Wrapper:
    '''A decorator's wrapper object: it calls ``around`` with the function it wraps.'''

    def __init__(self, wrapped, around):
        self.__wrapped__ = wrapped
        self._around = around

    def __call__(self, *args, **kwargs):
        return self._around(self.__wrapped__, args, kwargs)


class Proxy:
    '''The same, seen through as a transparent proxy is: its class, __dict__ and other
    attributes are the wrapped function's (isinstance() takes it for a function), what
    it holds is in slots.'''

    __slots__ = ("__wrapped__", "_around")

    def __init__(self, wrapped, around):
        self.__wrapped__ = wrapped
        self._around = around

    @property
    def __class__(self):
        return self.__wrapped__.__class__

    @property
    def __dict__(self):
        return self.__wrapped__.__dict__

    def __getattr__(self, name):
        return getattr(self.__wrapped__, name)

    def __call__(self, *args, **kwargs):
        return self._around(self.__wrapped__, args, kwargs)


def decorator(kind):
    def make(around):
        return lambda wrapped: kind(wrapped, around)
    return make


def retry(times, kind=Wrapper):
    @decorator(kind)
    def around(wrapped, args, kwargs):
        for attempt in range(times):
            try:
                return wrapped(*args, **kwargs)
            except ValueError:
                calls.append(attempt)
        raise RuntimeError(f"gave up after {times}")
    return around


@decorator(Proxy)
def logged(wrapped, args, kwargs):
    calls.append("logged")
    return wrapped(*args, **kwargs)


@decorator(Proxy)
def timed(wrapped, args, kwargs):
    calls.append("timed")
    return wrapped(*args, **kwargs)


@retry(3)
def fetch(x):
    if x < 0:
        raise ValueError(x)
    return x


@retry(3, kind=Proxy)
def lookup(x):
    if x < 0:
        raise ValueError(x)
    return x


@logged
def report(x):
    return x
"""


def _patch(mod: str, target: str, decorator: str) -> str:
    return f"""
    from {mod} import Proxy, logged, retry, timed

    @patch.replace("{mod}:{target}")
    @{decorator}
    def {target}(x):
        if x < 0:
            raise ValueError(x)
        return x + 1
    """


def test_a_wrapper_objects_decorator_arguments_written_otherwise_are_refused(
    make_module, write_patch: PatchWriter, registry: hotpatch.Registry
) -> None:
    mod = make_module(DECORATORS)
    name = mod.__name__
    for target, written in (("fetch", "retry(5)"), ("lookup", "retry(5, kind=Proxy)")):
        message = refused(registry, load(write_patch, _patch(name, target, written)))
        assert f"{name}:{target}" in message
        assert "argument 'times' of retry.<locals>.around is 3 running, 5 in the patch" in message
    assert mod.fetch(1) == 1
    assert mod.lookup(1) == 1


def test_another_decorator_of_the_same_wrapper_type_is_refused_naming_both(
    make_module, write_patch: PatchWriter, registry: hotpatch.Registry
) -> None:
    mod = make_module(DECORATORS)
    message = refused(registry, load(write_patch, _patch(mod.__name__, "report", "timed")))
    assert "the function it calls (_around) is logged running, timed in the patch" in message
    mod.report(1)
    assert mod.calls == ["logged"]


def test_written_under_the_same_wrapper_objects_it_goes_in_and_they_apply_once(
    make_module, write_patch: PatchWriter, registry: hotpatch.Registry
) -> None:
    mod = make_module(DECORATORS)
    name = mod.__name__
    registry.apply(load(write_patch, _patch(name, "fetch", "retry(3)")))
    registry.rollback()
    registry.apply(load(write_patch, _patch(name, "report", "logged")))
    assert mod.report(1) == 2
    assert mod.calls == ["logged"]
