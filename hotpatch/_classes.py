"""Class targets (``replace_class``): which members of a patch class say something.

A patch class is a whole class statement, so besides the methods the user
changed it carries what Python and the class's decorators made for it: its own
slot descriptors, an enum's members and bookkeeping, a dataclass's fields.
Those describe the *patch* class; set on the running class they would break it
(a slot descriptor of another class, an enum member reassigned). ``members``
keeps what a patch may set; ``class_reasons`` says why the rest, when
it differs from the running class, is not hot. Building the class again with a
new layout, at a restart, is ``_rebuild``'s.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import functools
import inspect
import types
import typing
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = [
    "BOILERPLATE",
    "ENUM_BOOKKEEPING",
    "HASH_REASON",
    "borrowed",
    "changed_hash",
    "class_reasons",
    "dataclass_fields",
    "decorators",
    "enum_members",
    "hash_reason",
    "inner_pairs",
    "innermost",
    "is_enum",
    "layout_changes",
    "members",
    "members_text",
    "nested_classes",
    "own_slot",
    "running_bases",
    "same_code",
    "set_name",
    "slots",
]

# Members every class body makes; they say nothing about behaviour.
# A class's hash replaced or added hot: the instances already in sets and dict keys stay
# filed under the hash they had, and lookups would miss them.
HASH_REASON = (
    "__hash__ {}: the sets and dict keys the process holds filed each of its instances "
    "under the old hash, which a lookup with the new one would miss (`x in seen` False for "
    "an x that is there); a restart files them again"
)

BOILERPLATE = frozenset(
    {
        "__module__",
        "__qualname__",
        "__dict__",
        "__weakref__",
        "__doc__",
        "__firstlineno__",
        "__static_attributes__",
        "__slots__",
        "__annotations__",
        "__annotate__",
        "__orig_bases__",
        "__parameters__",
        # what ABCMeta and Protocol decide when a class is made (abstract_changes,
        # protocol_additions compare them)
        "__abstractmethods__",
        "_abc_impl",
        "_is_protocol",
        "_is_runtime_protocol",
        "__protocol_attrs__",
        "__non_callable_proto_members__",
        "__callable_proto_members_only__",
    }
)
# What EnumType writes into an enum's namespace; the rest of its _sunder_ names are the user's.
ENUM_BOOKKEEPING = frozenset(
    {
        "_member_map_",
        "_member_names_",
        "_member_type_",
        "_new_member_",
        "_unhashable_values_",
        "_unhashable_values_map_",
        "_use_args_",
        "_value2member_map_",
        "_value_repr_",
        "_all_bits_",
        "_boundary_",
        "_flag_mask_",
        "_inverted_",
        "_singles_mask_",
        "_generate_next_value_",
        "_sort_order_",
    }
)
# What collections.namedtuple writes (typing.NamedTuple refuses most of them in a body).
_NAMEDTUPLE = frozenset(
    {
        "__new__",
        "__getnewargs__",
        "__match_args__",
        "__slots__",
        "__orig_bases__",
        "_asdict",
        "_field_defaults",
        "_fields",
        "_make",
        "_replace",
    }
)
# What @dataclass writes for its fields; compared as fields (``dataclass_fields``).
_DATACLASS = frozenset({"__dataclass_fields__", "__dataclass_params__", "__match_args__"})


def members(
    old: type, new: type, stands_for: Mapping[int, type] | None = None
) -> Iterator[tuple[str, Any]]:
    """The members of patch class ``new`` a patch of ``old`` may set (name, value)."""
    own_slots = set(slots(new) or ())
    enum_names = set(vars(new).get("_member_map_", {})) if is_enum(new) else set()
    same_fields = dataclass_fields(old) == dataclass_fields(new, stands_for)
    tuple_fields = namedtuple_fields(new)
    made: set[str] = set()
    if tuple_fields is not None and namedtuple_fields(old) is not None:
        made = set(_NAMEDTUPLE) | set(tuple_fields[0])
    for name, value in vars(new).items():
        if name in made or (made and _made_by_namedtuple(value)):
            continue  # what namedtuple made; other fields are a layout change (class_reasons)
        if name in BOILERPLATE:
            continue
        if name in own_slots and own_slot(value, new):
            continue  # the running class's own descriptor is the one its instances fit
        if enum_names and (name in enum_names or name in ENUM_BOOKKEEPING):
            continue  # members are data; the rest is the enum's bookkeeping
        if name in _DATACLASS and same_fields:
            continue
        yield name, value


def class_reasons(old: type, new: type, stands_for: Mapping[int, type] | None = None) -> list[str]:
    """Why replacing ``old``'s members with ``new``'s cannot be done hot.

    ``stands_for`` maps the patch's other patch classes (by ``id``: a metaclass may
    define ``__eq__``) to the running classes they patch: a patch class written on
    one of them (``class Child(Base)`` under the patch file's ``Base``) is written
    on the running class it stands for.
    """
    name = f"{old.__module__}:{old.__qualname__}"
    return [
        *_layout_reasons(old, new, name, stands_for or {}),
        *_data_reasons(old, new, name, stands_for),
        *_hash_reasons(old, new, name),
    ] + [
        reason
        for attr, value in members(old, new, stands_for)
        for reason in _member_reasons(old, attr, value)
    ]


def hash_reason(owner: str, verb: str) -> str:
    """Why a new ``__hash__`` for the instances of class ``owner`` cannot go in hot."""
    return f"class {owner}: {HASH_REASON.format(verb)}"


def _hash_reasons(old: type, new: type, name: str) -> Iterator[str]:
    """A patch class that adds a ``__hash__`` to a class hashed another way, or takes its
    hash away (a class body defining ``__eq__`` alone gets ``__hash__ = None``): the
    instances filed in sets and dict keys would be looked for under another hash, or
    could not be. A function replacing the running class's own ``__hash__`` is a
    replaced function, checked as each is (``changed_hash``)."""
    if "__hash__" not in vars(new) or vars(old).get("__hash__", ...) is None:
        return  # not said, or no instance of the running class can be filed
    if vars(new)["__hash__"] is None:
        yield hash_reason(name, "becomes None")
    elif "__hash__" not in vars(old):
        yield hash_reason(name, "is added")


def changed_hash(before: types.CodeType, after: Any) -> bool:
    """Whether ``after`` (the replacement of a ``__hash__`` whose code is ``before``)
    computes something else: its code differs, wherever each was written."""
    code = getattr(after, "__code__", None)
    return not isinstance(code, types.CodeType) or not same_code(before, code)


def same_code(a: types.CodeType, b: types.CodeType) -> bool:
    """Whether two code objects compute the same, wherever each was written."""
    return a is b or _code_key(a) == _code_key(b)


def _code_key(code: types.CodeType) -> tuple[Any, ...]:
    """What a code object computes: its bytecode and what it names, not where it was written."""
    consts = tuple(_code_key(c) if isinstance(c, types.CodeType) else c for c in code.co_consts)
    return (code.co_code, consts, code.co_names, code.co_varnames, code.co_freevars)


def _layout_reasons(
    old: type, new: type, name: str, stands_for: Mapping[int, type]
) -> Iterator[str]:
    """What instances are made of: bases, metaclass, slots."""
    if running_bases(new, stands_for) != old.__bases__:
        yield f"class {name}: bases change from {_names(old.__bases__)} to {_names(new.__bases__)}"
    if stands_for.get(id(type(new)), type(new)) is not type(old):
        yield f"class {name}: metaclass changes from {type(old).__name__} to {type(new).__name__}"
    if slots(old) != slots(new):
        yield (
            f"class {name}: __slots__ change from {_slot_text(old)} to {_slot_text(new)} "
            "(the layout of existing instances cannot change hot); declare the running "
            "class's __slots__ in the patch class to patch its methods"
        )


def _data_reasons(
    old: type, new: type, name: str, stands_for: Mapping[int, type] | None
) -> Iterator[str]:
    """What a class's machinery decided when it was made: members, fields, abstract methods."""
    old_members, new_members = enum_members(old), enum_members(new)
    if old_members is not None and new_members is not None and old_members != new_members:
        yield (
            f"class {name}: enum members change from {members_text(old_members)} to "
            f"{members_text(new_members)} (members are data: code holding one would keep the "
            f"old); declare the same members in the patch class to patch its methods, or "
            f"patch one method with @patch.replace('{name}.METHOD')"
        )
    old_fields, new_fields = dataclass_fields(old), dataclass_fields(new, stands_for)
    if old_fields != new_fields and old_fields is not None and new_fields is not None:
        yield (
            f"class {name}: dataclass fields change: {_fields_change(old_fields, new_fields)} "
            "(instances made before keep the old fields)"
        )
    old_tuple, new_tuple = namedtuple_fields(old), namedtuple_fields(new)
    if old_tuple != new_tuple and old_tuple is not None and new_tuple is not None:
        yield (
            f"class {name}: namedtuple fields change from {old_tuple[0]} to {new_tuple[0]} "
            "(a tuple's fields are its layout)"
        )
    if abstract := abstract_changes(old, new):
        yield (
            f"class {name}: abstract methods change: {', '.join(abstract)} (decided when a "
            "class is made: classes and instances made before would not follow)"
        )
    if added := protocol_additions(old, new):
        yield (
            f"class {name}: protocol members added: {', '.join(added)} (isinstance() checks "
            "are decided when a protocol is made)"
        )


def _member_reasons(old: type, attr: str, value: Any) -> Iterator[str]:
    """A member of ``old`` the patch class redefines as another kind of member."""
    if attr not in vars(old):
        return
    name = f"{old.__module__}:{old.__qualname__}"
    before = vars(old)[attr]
    old_types, new_types = _dispatch_types(before), _dispatch_types(value)
    if old_types != new_types:
        yield (
            f"class {name}: the types registered with {attr} change from {old_types} to {new_types}"
        )
    if _member_kind(before) != _member_kind(value):
        yield (
            f"class {name}: {attr} changes from a {_member_kind(before)} to a {_member_kind(value)}"
        )
    elif decorators(value) and decorators(before) != decorators(value):
        yield (
            f"class {name}: the decorators of {attr} change from {list(decorators(before))} to "
            f"{list(decorators(value))} (functions already wrapped would keep the old ones)"
        )


def nested_classes(old: type, new: type) -> Iterator[tuple[str, type, type]]:
    """(name, running class, patch class) for each class ``new``'s body makes that
    restates one ``old``'s body made (``class Client: class Error``).

    Such a member is patched into the running nested class as its outer class is
    (a class target of its own): set whole, it would be another class, and the
    instances, the names taken of it (``ClientError = Client.Error``) and its class
    data would be left with the old one.
    """
    for name, value in vars(new).items():
        running = vars(old).get(name)
        if (
            isinstance(value, type)
            and isinstance(running, type)
            and value.__qualname__ == f"{new.__qualname__}.{name}"
            and running.__qualname__ == f"{old.__qualname__}.{name}"
            and running.__module__ == old.__module__
        ):
            yield name, running, value


def running_bases(new: type, stands_for: Mapping[int, type]) -> tuple[type, ...]:
    """Patch class ``new``'s bases, each patch class among them as the running class it patches."""
    return tuple(stands_for.get(id(base), base) for base in new.__bases__)


def layout_changes(old: type, new: type, stands_for: Mapping[int, type] | None = None) -> bool:
    """Does ``new`` make instances other than ``old`` makes (bases, metaclass, slots, members)?

    Then no patch of ``old`` in place can do it: a restart builds the class again
    (``rebuild``) and puts it where the running one was (``references``).
    """
    stands_for = stands_for or {}
    return (
        running_bases(new, stands_for) != old.__bases__
        or stands_for.get(id(type(new)), type(new)) is not type(old)
        or slots(old) != slots(new)
        or enum_members(old) != enum_members(new)
        or namedtuple_fields(old) != namedtuple_fields(new)
        or bool(abstract_changes(old, new))
        or bool(protocol_additions(old, new))
    )


def namedtuple_fields(cls: type) -> tuple[tuple[str, ...], tuple[tuple[str, Any], ...]] | None:
    """A namedtuple class's own fields and their defaults; ``None`` for other classes."""
    fields = vars(cls).get("_fields")
    if not (issubclass(cls, tuple) and isinstance(fields, tuple)):
        return None
    defaults = vars(cls).get("_field_defaults", {})
    return fields, tuple((k, _comparable(v)) for k, v in defaults.items())


def abstract_changes(old: type, new: type) -> list[str]:
    """The members the patch class names whose abstractness differs from the running class's.

    Members it does not name stay as they are, abstract or not.
    """
    changes: list[str] = []
    for name, value in vars(new).items():
        if name in BOILERPLATE:
            continue
        before = getattr(
            vars(old).get(name, getattr(old, name, None)), "__isabstractmethod__", False
        )
        after = getattr(value, "__isabstractmethod__", False)
        if bool(before) != bool(after):
            changes.append(f"{name} {'becomes' if after else 'is no longer'} abstract")
    return changes


def protocol_additions(old: type, new: type) -> list[str]:
    """Members the patch protocol checks that the running one does not."""
    before, after = protocol_members(old), protocol_members(new)
    if before is None or after is None:
        return []
    return sorted(set(after) - set(before))


def protocol_members(cls: type) -> list[str] | None:
    """The attributes a ``typing.Protocol`` checks; ``None`` for other classes."""
    if not vars(cls).get("_is_protocol", False):
        return None
    attrs = getattr(cls, "__protocol_attrs__", None)  # 3.12+: decided when it is made
    if attrs is None:
        attrs = getattr(typing, "_get_protocol_attrs")(cls)  # noqa: B009 - private in 3.11
    return sorted(attrs)


def borrowed(cls: type, func: Any) -> bool:
    """Is ``func`` a function made elsewhere that ``cls`` only holds?

    ``functools.total_ordering``'s helpers, a mixin's function assigned in the
    class body: patching such a function in place would patch every class sharing
    it. What the class's body or a decorator of it made is not borrowed (its
    qualname is the class's, or a decorator's ``<locals>``).
    """
    qualname = getattr(func, "__qualname__", None)
    if not isinstance(qualname, str):
        return False
    return not qualname.startswith(cls.__qualname__ + ".") and "<locals>" not in qualname


def inner_pairs(old: Any, new: Any) -> list[tuple[types.FunctionType, types.FunctionType]] | None:
    """(old, new) functions of members made of functions: partialmethod, singledispatchmethod,
    cached_property.

    ``None`` when they differ in more than their functions (arguments bound, types registered).
    """
    pairs: list[tuple[Any, Any]] | None = None
    if isinstance(old, functools.cached_property) and isinstance(new, functools.cached_property):
        pairs = [(old.func, new.func)]
    elif isinstance(old, functools.partialmethod) and isinstance(new, functools.partialmethod):
        if (old.args, old.keywords) == (new.args, new.keywords):
            pairs = [(old.func, new.func)]
    else:
        old_types, new_types = _dispatch_types(old), _dispatch_types(new)
        if old_types is not None and old_types == new_types:
            old_registry, new_registry = old.dispatcher.registry, new.dispatcher.registry
            pairs = [(old_registry[t], new_registry[t]) for t in old_registry]
    if pairs is None or not all(isinstance(f, types.FunctionType) for p in pairs for f in p):
        return None
    return [(innermost(a), innermost(b)) for a, b in pairs]


def set_name(value: Any, owner: type, name: str) -> None:
    """``__set_name__`` a member set on ``owner`` (Python called it with the patch class)."""
    hook = getattr(type(value), "__set_name__", None)
    if hook is not None and not isinstance(value, types.FunctionType):
        hook(value, owner, name)


def slots(cls: type) -> tuple[str, ...] | None:
    """The names ``cls``'s own ``__slots__`` declares, or ``None`` without ``__slots__``."""
    declared = vars(cls).get("__slots__")
    if declared is None:
        return None
    if isinstance(declared, str):
        return (declared,)
    return tuple(declared)


def is_enum(cls: type) -> bool:
    return isinstance(cls, enum.EnumMeta)


def enum_members(cls: type) -> dict[str, Any] | None:
    """An enum's members (aliases too) by name, each as its value; ``None`` if not an enum."""
    if not is_enum(cls):
        return None
    return {name: member._value_ for name, member in vars(cls)["_member_map_"].items()}


def dataclass_fields(
    cls: type, stands_for: Mapping[int, type] | None = None
) -> tuple[tuple[Any, ...], ...] | None:
    """A dataclass's own fields as comparable rows; ``None`` if ``cls`` declares none.

    A field typed with (or defaulting to) one of the patch's patch classes, also inside
    ``Optional[...]`` or ``list[...]``, is typed with the running class it stands for.
    """
    fields = vars(cls).get("__dataclass_fields__")
    if fields is None:
        return None
    params = vars(cls).get("__dataclass_params__")
    rows: list[tuple[Any, ...]] = [("params", repr(params))]
    for f in fields.values():
        factory = f.default_factory
        if factory is not dataclasses.MISSING:
            factory = getattr(factory, "__qualname__", factory)
        rows.append(
            (
                f.name,
                _standing(f.type, stands_for or {}),
                _standing(f.default, stands_for or {}),
                factory,
                f.init,
                f.compare,
                f.kw_only,
                str(getattr(f, "_field_type", "")),  # field, ClassVar or InitVar
            )
        )
    return tuple(rows)


def decorators(value: Any) -> tuple[str, ...]:
    """Where each wrapper over a member's function was written, outermost first.

    The code's qualname: ``functools.wraps`` copies the wrapped function's names.
    """
    chain: list[str] = []
    func = value.__func__ if isinstance(value, classmethod | staticmethod) else value
    while isinstance(func, types.FunctionType) and hasattr(func, "__wrapped__"):
        chain.append(func.__code__.co_qualname)
        func = func.__wrapped__
    return tuple(chain)


def innermost(value: Any) -> Any:
    """``inspect.unwrap`` that stops at a wrapper loop instead of raising."""
    try:
        return inspect.unwrap(value)
    except ValueError:
        return value


def _names(classes: tuple[type, ...]) -> str:
    return "(" + ", ".join(c.__qualname__ for c in classes) + ")"


def _slot_text(cls: type) -> str:
    declared = slots(cls)
    return "none" if declared is None else repr(declared)


def members_text(values: dict[str, Any]) -> str:
    return "(" + ", ".join(f"{k}={v!r}" for k, v in values.items()) + ")"


_FIELD_PARTS = ("type", "default", "default_factory", "init", "compare", "kw_only", "kind")


def _fields_change(old: tuple[tuple[Any, ...], ...], new: tuple[tuple[Any, ...], ...]) -> str:
    """What differs between two dataclasses' field rows, field by field."""
    changes: list[str] = []
    if old[0] != new[0]:
        changes.append(f"parameters {old[0][1]} -> {new[0][1]}")
    before, after = {r[0]: r for r in old[1:]}, {r[0]: r for r in new[1:]}
    if list(before) != list(after):
        changes.append(f"fields ({', '.join(before)}) -> ({', '.join(after)})")
    for field_name in (n for n in before if n in after):
        changes.extend(
            f"{field_name}: {part} {_shown(a)} -> {_shown(b)}"
            for part, a, b in zip(
                _FIELD_PARTS, before[field_name][1:], after[field_name][1:], strict=True
            )
            if a != b
        )
    return "; ".join(changes)


def _shown(value: Any) -> str:
    """A field's part as a person reads it: a class by its qualname."""
    if isinstance(value, type):
        return value.__qualname__
    if isinstance(value, tuple) and value[:1] == (_GENERIC,):
        origin, args = value[1], value[2]
        return f"{_shown(origin)}[{', '.join(_shown(a) for a in args)}]"
    return value if isinstance(value, str) else repr(value)


_GENERIC = object()


def _standing(value: Any, stands_for: Mapping[int, type]) -> Any:
    """``_comparable(value)``, with each patch class in it the running class it stands for
    (a ``typing`` construct compared part by part)."""
    if id(value) in stands_for:
        return stands_for[id(value)]
    origin = typing.get_origin(value)
    if origin is not None:
        args = tuple(_standing(a, stands_for) for a in typing.get_args(value))
        return (_GENERIC, _standing(origin, stands_for), args)
    return _comparable(value)


def _member_kind(value: Any) -> str:
    if isinstance(value, classmethod | staticmethod | property):
        return type(value).__name__
    if isinstance(innermost(value), types.FunctionType):
        return "function"  # a function, or one under wrappers (lru_cache)
    return "value"


def _dispatch_types(value: Any) -> list[str] | None:
    """The types a singledispatchmethod dispatches on, by name; ``None`` for other members."""
    if not isinstance(value, functools.singledispatchmethod):
        return None
    return sorted(f"{t.__module__}.{t.__qualname__}" for t in value.dispatcher.registry)


def _made_by_namedtuple(value: Any) -> bool:
    code = getattr(value, "__code__", None)
    return code is not None and code.co_filename in (collections.__file__, "<string>")


def own_slot(value: Any, cls: type) -> bool:
    return isinstance(value, types.MemberDescriptorType) and value.__objclass__ is cls


def _comparable(value: Any) -> Any:
    """``value`` if it compares by value, else its repr (a type, a sentinel)."""
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value
