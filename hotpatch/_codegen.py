"""Code objects installed into patched functions, built with ``bytecode``.

Two ways, best first:

* **inline** -- the replacement's own code, adapted to the original's argument
  layout, flags and free variables, is installed into the original function:
  no extra frame, so a patched call costs what the replacement costs.
* **forward** -- where the layouts differ (a widened signature, a replacement
  with its own closure) a trampoline with the original's exact layout calls the
  replacement; one extra frame. Built once per shape, then specialised per
  replacement by swapping one constant.

Either way the installed code keeps the original's argument layout and flags:
specialised call sites assume the layout they saw (CPython gh-122712).
"""

from __future__ import annotations

import dis
import functools
import inspect
import itertools
import linecache
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from bytecode import Bytecode, Instr
from bytecode.instr import FreeVar

from hotpatch._validate import function_kind, kind_of_flags

__all__ = [
    "ABSENT",
    "FUNC_ATTRS",
    "Built",
    "build",
    "capture",
    "chooser",
    "rebind",
    "trampoline",
]

_ARG_FLAGS = inspect.CO_VARARGS | inspect.CO_VARKEYWORDS
_KIND_FLAGS = (
    inspect.CO_GENERATOR
    | inspect.CO_COROUTINE
    | inspect.CO_ASYNC_GENERATOR
    | inspect.CO_ITERABLE_COROUTINE
)
_IMPL = "__hotpatch_impl__"
_ANY_CALL = "*__hp_args, **__hp_kwargs"  # a trampoline that passes every call on
# The name a trampoline's source is written with: the code's own name (``<lambda>``,
# ``<module>``) need not be one a ``def`` can take; the code gets it back once built.
_TRAMPOLINE = "__hp_trampoline"
_CELLS = "__hp_cells"  # stands for the tuple of the function's cells (trampoline(cells=True))
_PY313 = sys.version_info >= (3, 13)


class _Absent:
    __slots__ = ()

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Any = _Absent()
"""Stands for 'attribute not set' in a recorded state (deleting restores it)."""

# What a version of a function is: these attributes, swapped together.
FUNC_ATTRS = (
    "__code__",
    "__defaults__",
    "__kwdefaults__",
    "__doc__",
    "__annotations__",
    "__signature__",
)


def capture(func: types.FunctionType) -> dict[str, Any]:
    """The current version of ``func``, as the attributes a switch sets."""
    state = {a: getattr(func, a) for a in FUNC_ATTRS[:-1]}
    state["__signature__"] = func.__dict__.get("__signature__", ABSENT)
    return state


@dataclass(frozen=True, slots=True)
class Built:
    """A prepared version of one function: the attributes to set, and how it runs."""

    state: dict[str, Any]
    mode: Literal["inline", "forward"]
    why: str  # why forward (empty for inline)


def _nargs(code: types.CodeType) -> int:
    flags = code.co_flags
    return (
        code.co_argcount
        + code.co_kwonlyargcount
        + bool(flags & inspect.CO_VARARGS)
        + bool(flags & inspect.CO_VARKEYWORDS)
    )


def _layout(code: types.CodeType) -> tuple[object, ...]:
    return (
        code.co_argcount,
        code.co_posonlyargcount,
        code.co_kwonlyargcount,
        code.co_flags & (_ARG_FLAGS | _KIND_FLAGS),
        code.co_varnames[: _nargs(code)],
    )


def _why_not_inline(new: types.CodeType, old: types.CodeType, owner: type | None) -> str:
    if _layout(new) != _layout(old):
        return "the argument layout differs from the original's"
    extra = set(new.co_freevars) - set(old.co_freevars)
    if extra:
        return f"the replacement has its own closure ({', '.join(sorted(extra))})"
    clash = set(old.co_freevars) & (set(new.co_varnames) | set(new.co_cellvars))
    if clash:
        return f"the replacement uses {', '.join(sorted(clash))} as a local"
    if owner is not None and "__class__" not in old.co_freevars and _calls_super(new):
        return "the replacement calls super(), and the original has no __class__ cell"
    return ""


def _calls_super(code: types.CodeType) -> bool:
    return "super" in code.co_names and "super" in _global_ops(code)


def build(
    function: types.FunctionType,
    original: dict[str, Any],
    replacement: types.FunctionType,
    *,
    globals_: dict[str, Any],
    owner: type | None,
    any_call: bool = False,
) -> Built:
    """Prepare the version of ``function`` that runs ``replacement``.

    Where the parameters differ (a widened signature, or ``signature_change=True``
    -- ``any_call``), the trampoline takes ``(*args, **kwargs)`` and the
    replacement's own signature decides, so new parameters are reachable. That
    is a layout change, but a safe one: its ``co_argcount`` is 0, and CPython's
    weakest guard on a specialised call (``CALL_ALLOC_AND_ENTER_INIT``, the
    gh-122712 crash: same argcount, other flags) requires ``argcount == nargs + 1``,
    so every specialised site deoptimises. Otherwise the trampoline keeps the
    original's exact layout.
    """
    old: types.CodeType = original["__code__"]
    any_call = any_call or _layout(replacement.__code__) != _layout(old)
    why = _why_not_inline(replacement.__code__, old, owner)
    if not why:
        new = replacement.__code__
        code = _inline(new, old, old.co_qualname)
        state = {
            "__code__": code,
            "__defaults__": replacement.__defaults__,
            "__kwdefaults__": _copy(replacement.__kwdefaults__),
            "__doc__": replacement.__doc__
            if replacement.__doc__ is not None
            else original["__doc__"],
            "__annotations__": dict(replacement.__annotations__),
            "__signature__": ABSENT,
        }
        return Built(state, "inline", "")
    impl = _borrow_cells(rebind(replacement, globals_, owner), old, function.__closure__, owner)
    code = trampoline(old, impl, any_call=any_call)
    signature = inspect.signature(impl)
    state = {
        "__code__": code,
        "__defaults__": None if any_call else _forward_defaults(old, original, signature),
        "__kwdefaults__": None if any_call else _forward_kwdefaults(original, signature),
        "__doc__": impl.__doc__ if impl.__doc__ is not None else original["__doc__"],
        "__annotations__": dict(impl.__annotations__),
        # Only an any-call trampoline takes what the replacement takes; otherwise the
        # code and defaults already tell inspect.signature the truth.
        "__signature__": signature if any_call else ABSENT,
    }
    return Built(state, "forward", why)


def trampoline(
    old: types.CodeType,
    target: Callable[..., Any],
    *,
    any_call: bool = False,
    cells: bool = False,
) -> types.CodeType:
    """Code with ``old``'s layout (``any_call``: any arguments) that calls ``target``.

    ``cells``: ``target`` is called with the function's closure first, a tuple of its
    cells (what a function made from ``old`` by its enclosing code holds), then the
    arguments. Built once per shape; each target only swaps one constant. One extra
    frame.
    """
    template = _forward_template(old, old.co_qualname, any_call=any_call, cells=cells)
    return template.replace(
        co_consts=tuple(target if c is _PLACEHOLDER else c for c in template.co_consts)
    )


def _copy(value: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if value is None else dict(value)


def rebind(
    func: types.FunctionType, globals_: dict[str, Any], owner: type | None
) -> types.FunctionType:
    """``func`` as if written in the target module: its globals, ``__class__`` = ``owner``."""
    cells = list(func.__closure__ or ())
    if owner is not None and "__class__" in func.__code__.co_freevars:
        cells[func.__code__.co_freevars.index("__class__")] = types.CellType(owner)
    new = types.FunctionType(
        func.__code__, globals_, func.__name__, func.__defaults__, tuple(cells) or None
    )
    new.__kwdefaults__ = _copy(func.__kwdefaults__)
    new.__doc__ = func.__doc__
    new.__annotations__ = dict(func.__annotations__)
    new.__dict__.update(func.__dict__)
    new.__qualname__ = func.__qualname__
    new.__module__ = globals_.get("__name__", func.__module__)
    return new


def _borrow_cells(
    impl: types.FunctionType,
    old: types.CodeType,
    closure: tuple[types.CellType, ...] | None,
    owner: type | None,
) -> types.FunctionType:
    """``impl`` sharing the original's cells it names as globals, like an inline replacement.

    A forward replacement of a closure reads and writes the closure's variables
    by name, and a zero-argument ``super()`` in a replaced method finds the
    class (the original's ``__class__`` cell, or a new one holding ``owner``).
    """
    code = impl.__code__
    cells = dict(zip(old.co_freevars, closure or (), strict=True))
    named = set(cells) & set(code.co_names) - set(code.co_freevars)
    borrowed = [n for n in cells if n in named and n in _global_ops(code)] if named else []
    if owner is not None and "__class__" not in code.co_freevars and _calls_super(code):
        cells.setdefault("__class__", types.CellType(owner))
        borrowed.append("__class__")
    if not borrowed:
        return impl
    freevars = (*code.co_freevars, *borrowed)
    new = types.FunctionType(
        _to_cells(code, freevars),
        impl.__globals__,
        impl.__name__,
        impl.__defaults__,
        (*(impl.__closure__ or ()), *(cells[n] for n in borrowed)),
    )
    new.__kwdefaults__ = impl.__kwdefaults__
    new.__doc__ = impl.__doc__
    new.__annotations__ = impl.__annotations__
    new.__dict__.update(impl.__dict__)
    new.__qualname__ = impl.__qualname__
    new.__module__ = impl.__module__
    return new


# -- inline ---------------------------------------------------------------------


def _inline(new: types.CodeType, old: types.CodeType, qualname: str) -> types.CodeType:
    """``new`` adapted to run inside a function whose closure is ``old``'s.

    The original's free variables are appended to the replacement's (so its
    cells line up), and global lookups of those names become cell lookups: a
    replacement of a closure reads and writes the closure's variables by name,
    and a zero-argument ``super()`` finds the original's ``__class__`` cell.

    Made anew for each apply, not cached: a patch's code is its own (a cache kept
    every patch's code, and the code made from it, after the patch was gone).
    """
    freevars = old.co_freevars
    # co_names is a cheap superset of the global names: disassemble only if it hits.
    rebinds = set(freevars) & set(new.co_names) and set(freevars) & _global_ops(new)
    if new.co_freevars == freevars and not rebinds:
        return new.replace(co_name=old.co_name, co_qualname=qualname)
    return _to_cells(new, freevars).replace(co_name=old.co_name, co_qualname=qualname)


def _to_cells(code: types.CodeType, freevars: tuple[str, ...]) -> types.CodeType:
    """``code`` with ``freevars`` as its cells; global uses of those names become cell uses."""

    def to_cell(ins: Instr, arg: Any) -> list[Any] | None:
        if ins.name == "COPY_FREE_VARS":
            return []  # put back below, with the new count
        if ins.name == "LOAD_GLOBAL" and arg[1] in freevars:
            load = Instr("LOAD_DEREF", FreeVar(arg[1]), location=ins.location)
            return _with_null(load, push_null=arg[0])
        if ins.name in ("STORE_GLOBAL", "DELETE_GLOBAL") and arg in freevars:
            op = ins.name.replace("GLOBAL", "DEREF")
            return [Instr(op, FreeVar(arg), location=ins.location)]
        return None

    return _rewrite(code, to_cell, freevars)


def _with_null(load: Instr, *, push_null: bool) -> list[Instr]:
    """``load`` as a call target: LOAD_GLOBAL's NULL goes first before 3.13, after since."""
    if not push_null:
        return [load]
    null = Instr("PUSH_NULL", location=load.location)
    return [load, null] if _PY313 else [null, load]


def _rewrite(
    code: types.CodeType,
    replace: Callable[[Instr, Any], list[Any] | None],
    freevars: tuple[str, ...],
) -> types.CodeType:
    """``code`` with instructions replaced (``None`` keeps one) and ``freevars`` as its cells."""
    bc = Bytecode.from_code(code)
    body: list[Any] = []
    for ins in bc:
        new = replace(ins, ins.arg) if isinstance(ins, Instr) else None
        body.extend([ins] if new is None else new)
    bc.freevars = list(freevars)
    bc[:] = [Instr("COPY_FREE_VARS", len(freevars)), *body] if freevars else body
    return bc.to_code()


def _global_ops(code: types.CodeType) -> set[str]:
    names: set[str] = set()
    for ins in Bytecode.from_code(code):
        arg: Any = getattr(ins, "arg", None)
        if isinstance(ins, Instr) and ins.name == "LOAD_GLOBAL":
            names.add(arg[1])
        elif isinstance(ins, Instr) and ins.name in ("STORE_GLOBAL", "DELETE_GLOBAL"):
            names.add(arg)
    return names


# -- forward --------------------------------------------------------------------


class _Placeholder:
    __slots__ = ()


_PLACEHOLDER = _Placeholder()
_counter = itertools.count()


def _params(code: types.CodeType) -> tuple[str, str]:
    """(parameter list, call arguments) reproducing ``code``'s layout exactly."""
    names = code.co_varnames
    pos = names[: code.co_argcount]
    kwonly = names[code.co_argcount : code.co_argcount + code.co_kwonlyargcount]
    rest = code.co_argcount + code.co_kwonlyargcount
    star = names[rest] if code.co_flags & inspect.CO_VARARGS else None
    rest += bool(star)
    dstar = names[rest] if code.co_flags & inspect.CO_VARKEYWORDS else None
    params: list[str] = list(pos)
    if code.co_posonlyargcount:
        params.insert(code.co_posonlyargcount, "/")
    args: list[str] = list(pos)
    if star:
        params.append("*" + star)
        args.append("*" + star)
    elif kwonly:
        params.append("*")
    params.extend(kwonly)
    args.extend(f"{n}={n}" for n in kwonly)
    if dstar:
        params.append("**" + dstar)
        args.append("**" + dstar)
    return ", ".join(params), ", ".join(args)


_ASYNC_GEN_BODY = """\
    __hp_it = {impl}({args})
    try:
        __hp_value = await __hp_it.__anext__()
    except StopAsyncIteration:
        return
    while True:
        try:
            __hp_sent = yield __hp_value
        except GeneratorExit:
            await __hp_it.aclose()
            raise
        except BaseException as __hp_exc:
            try:
                __hp_value = await __hp_it.athrow(__hp_exc)
            except StopAsyncIteration:
                return
        else:
            try:
                __hp_value = await __hp_it.asend(__hp_sent)
            except StopAsyncIteration:
                return
"""


def _source(kind: str, impl: str, params: str, args: str) -> str:
    """A ``def`` with ``params`` whose body calls ``impl`` with ``args`` and returns what
    it returns, as a function of ``kind`` (``function_kind``) does."""
    if kind == "async generator":
        head, body = "async def", _ASYNC_GEN_BODY.format(impl=impl, args=args)
    elif kind == "coroutine function":
        head, body = "async def", f"    return await {impl}({args})\n"
    elif kind == "generator function":
        head, body = "def", f"    return (yield from {impl}({args}))\n"
    else:
        head, body = "def", f"    return {impl}({args})\n"
    return f"{head} {_TRAMPOLINE}({params}):\n{body}"


def _compiled(source: str, filename: str) -> types.CodeType:
    """The code of the one ``def`` in ``source``, its source kept for tracebacks."""
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    module_code = compile(source, filename, "exec", dont_inherit=True)
    return next(c for c in module_code.co_consts if isinstance(c, types.CodeType))


@functools.lru_cache(maxsize=1024)
def _forward_template(
    old: types.CodeType, qualname: str, *, any_call: bool = False, cells: bool = False
) -> types.CodeType:
    """A trampoline with ``old``'s layout (or any arguments) that calls a placeholder constant
    (``cells``: with a tuple of the function's cells first)."""
    params, args = (_ANY_CALL, _ANY_CALL) if any_call else _params(old)
    if cells:
        args = f"{_CELLS}, {args}" if args else _CELLS
    source = _source(function_kind(old), _IMPL, params, args)
    code = _compiled(source, f"<hotpatch trampoline {qualname} #{next(_counter)}>")

    def to_const(ins: Instr, arg: Any) -> list[Any] | None:
        if ins.name == "LOAD_GLOBAL" and arg[1] == _IMPL:
            load = Instr("LOAD_CONST", _PLACEHOLDER, location=ins.location)
            return _with_null(load, push_null=arg[0])
        if ins.name == "LOAD_GLOBAL" and arg[1] == _CELLS:
            # Each free variable read, then turned into a read of the cell itself (below).
            loads = [Instr("LOAD_DEREF", FreeVar(n), location=ins.location) for n in free]
            return [*loads, Instr("BUILD_TUPLE", len(free), location=ins.location)]
        if any_call and ins.name in ("BUILD_MAP", "DICT_MERGE"):
            # impl(*a, **k) first copies k into a new dict. This k is the trampoline's
            # own fresh, exact dict, and the call only reads it: pass it as it is.
            return []
        return None

    free = old.co_freevars
    built = _rewrite(code, to_const, free)
    if cells and free:
        built = _cells_loaded(built)
    flags = (built.co_flags & ~_KIND_FLAGS) | (old.co_flags & _KIND_FLAGS)
    return built.replace(co_flags=flags, co_name=old.co_name, co_qualname=qualname)


_PICK = "__hp_pick"  # stand for the two functions a chooser picks from, and the flag
_FLIP = "__hp_flip"
_PICK_PLACEHOLDER = _Placeholder()
_FLIP_PLACEHOLDER = _Placeholder()


def chooser(
    code: types.CodeType, flip: list[int], pick: tuple[types.FunctionType, types.FunctionType]
) -> types.CodeType:
    """Code with ``code``'s free variables and kind that takes any call and hands it, as it
    is, to ``pick[flip[0]]`` (what the switch installs for a moment: ``flip[0]`` is 0,
    then 1). One extra frame.

    A plain function picks when called. A generator, coroutine or async generator
    function stays one (CPython 3.13 deprecates assigning code of another kind): the
    object a call returns picks when it first runs.
    """
    kind = code.co_flags & _KIND_FLAGS
    template, at_pick, at_flip = _chooser_template(kind, code.co_freevars)
    consts = list(template.co_consts)
    consts[at_pick], consts[at_flip] = pick, flip
    return template.replace(
        co_consts=tuple(consts), co_name=code.co_name, co_qualname=code.co_qualname
    )


@functools.lru_cache(maxsize=256)
def _chooser_template(kind: int, freevars: tuple[str, ...]) -> tuple[types.CodeType, int, int]:
    """A chooser with these kind flags and ``freevars``, built once per shape for every
    function, and where its two placeholders are among its constants."""
    source = _source(kind_of_flags(kind), f"{_PICK}[{_FLIP}[0]]", _ANY_CALL, _ANY_CALL)
    code = _compiled(source, f"<hotpatch switch ({kind_of_flags(kind)})>")
    placeholders = {_PICK: _PICK_PLACEHOLDER, _FLIP: _FLIP_PLACEHOLDER}

    def to_const(ins: Instr, arg: Any) -> list[Any] | None:
        if ins.name == "LOAD_GLOBAL" and arg[1] in placeholders:
            load = Instr("LOAD_CONST", placeholders[arg[1]], location=ins.location)
            return _with_null(load, push_null=arg[0])
        if ins.name in ("BUILD_MAP", "DICT_MERGE"):
            return []  # the chooser's own fresh dict of keywords, passed as it is
        return None

    built = _rewrite(code, to_const, freevars)
    built = built.replace(co_flags=(built.co_flags & ~_KIND_FLAGS) | kind)
    consts = [id(c) for c in built.co_consts]
    return built, consts.index(id(_PICK_PLACEHOLDER)), consts.index(id(_FLIP_PLACEHOLDER))


# What pushes a cell itself: since 3.11 it takes the slot LOAD_DEREF takes (the
# fast-locals index); 3.12 made it a pseudo-instruction the compiler writes as LOAD_FAST.
_LOAD_CELL = dis.opmap["LOAD_CLOSURE" if sys.version_info < (3, 12) else "LOAD_FAST"]


def _cells_loaded(code: types.CodeType) -> types.CodeType:
    """``code`` with every ``LOAD_DEREF`` pushing the cell instead of its content.

    ``bytecode`` cannot write the cell load on every version (a pseudo-instruction
    since 3.12), so the built code's own bytes are changed: same slot, other opcode.
    """
    raw = bytearray(code.co_code)
    for ins in dis.get_instructions(code):
        if ins.opname == "LOAD_DEREF":
            raw[ins.offset] = _LOAD_CELL
    return code.replace(co_code=bytes(raw))


def _forward_defaults(
    old: types.CodeType, original: dict[str, Any], signature: inspect.Signature
) -> tuple[Any, ...] | None:
    """Defaults for the trampoline's optional positionals: the replacement's, by name."""
    defaults: tuple[Any, ...] | None = original["__defaults__"]
    if not defaults:
        return defaults
    names = old.co_varnames[old.co_argcount - len(defaults) : old.co_argcount]
    return tuple(_default_for(signature, n, d) for n, d in zip(names, defaults, strict=True))


def _forward_kwdefaults(
    original: dict[str, Any], signature: inspect.Signature
) -> dict[str, Any] | None:
    kwdefaults: dict[str, Any] | None = original["__kwdefaults__"]
    if not kwdefaults:
        return _copy(kwdefaults)
    return {n: _default_for(signature, n, d) for n, d in kwdefaults.items()}


def _default_for(signature: inspect.Signature, name: str, fallback: Any) -> Any:
    param = signature.parameters.get(name)
    if param is None or param.default is inspect.Parameter.empty:
        return fallback
    return param.default
