"""``replace_class`` of a class holding classes: classes of its own (``class Client:
class Error``), and classes it only names (``environment_class = Environment``).

A nested class is one of the running class's members, and what the service made
of it is out there: instances (``client.options``), its exceptions caught by a
name taken at import (``ClientError = Client.Error``), its class data. A patch
class restating it is patched into the running nested class, as the outer one
is, so all of that keeps working; set whole, the nested class would be another
class, with its instances no longer its instances and its class data reset.
"""

from __future__ import annotations

import pytest
from refusals import PatchWriter, load, refused

import hotpatch

CLIENT = """
class Client:
    class Error(Exception):
        pass

    class Options:
        made = 0

        def __init__(self, n):
            type(self).made += 1
            self.n = n

        def double(self):
            return self.n * 2

    def __init__(self):
        self.options = self.Options(2)

    def fail(self):
        raise self.Error("boom")

ClientError = Client.Error
"""

PATCH = """
import {mod} as running
from {mod} import *

@patch.replace_class("{mod}:Client")
class Client:
    class Error(Exception):
        pass

    class Options:
        made = running.Client.Options.made

        def __init__(self, n):
            type(self).made += 1
            self.n = n

        def double(self):
            return self.n * {factor}

    def __init__(self):
        self.options = self.Options(2)

    def fail(self):
        raise self.Error("boom")
"""


def test_a_nested_class_is_patched_in_place_and_what_it_made_keeps_working(
    make_module, write_patch: PatchWriter, registry: hotpatch.Registry
) -> None:
    mod = make_module(CLIENT)
    client = mod.Client()
    options, error, client_error = mod.Client.Options, mod.Client.Error, mod.ClientError
    double = vars(options)["double"]
    report = registry.check(load(write_patch, PATCH.format(mod=mod.__name__, factor=3)))
    assert report.hot, report.reasons
    registry.apply(load(write_patch, PATCH.format(mod=mod.__name__, factor=3)))
    assert mod.Client.Options is options
    assert mod.Client.Error is error
    assert isinstance(client.options, mod.Client.Options)
    assert client.options.double() == 6  # the nested class's method, patched in place
    assert mod.Client().options.double() == 6
    assert mod.Client.Options.made == 2  # its class data kept, and counting on
    with pytest.raises(client_error):  # the name taken at import still catches it
        client.fail()
    registry.rollback()
    assert mod.Client.Options is options
    assert vars(options)["double"] is double
    assert client.options.double() == 4


def test_nested_class_data_restated_otherwise_is_refused_as_the_outer_class_data_is(
    make_module, write_patch: PatchWriter, registry: hotpatch.Registry
) -> None:
    mod = make_module(CLIENT)
    mod.Client()
    patch = load(
        write_patch,
        PATCH.format(mod=mod.__name__, factor=2).replace(
            "made = running.Client.Options.made", "made = 0"
        ),
    )
    message = refused(registry, patch, hotpatch.NameConflict)
    assert f"{mod.__name__}:Client.Options.made" in message
    assert mod.Client.Options.made == 1


PAIR = """
class Environment:
    def make(self, source):
        return self.template_class(source)


class Template:
    environment_class = Environment

    def __init__(self, source):
        self.source = source

    def render(self):
        return self.source.upper()


Environment.template_class = Template
"""


def test_classes_naming_each_other_as_members_patch_hot(
    make_module, write_patch: PatchWriter, registry: hotpatch.Registry
) -> None:
    """A member that is another class (``environment_class = Environment``, which holds
    ``template_class = Template`` in turn) is that class, not one the patched class is
    made of: before, looking for the functions it is made of went round the two
    classes until Python's recursion limit (a raw ``RecursionError`` from ``check()``)."""
    mod = make_module(PAIR)
    made = mod.Environment().make("a")
    patch = load(
        write_patch,
        f"""
        from {mod.__name__} import Environment

        @patch.replace_class("{mod.__name__}:Template")
        class Template:
            environment_class = Environment

            def __init__(self, source):
                self.source = source

            def render(self):
                return self.source.upper() + "!"
        """,
    )
    assert registry.check(patch).hot
    registry.apply(patch)
    assert made.render() == "A!"
    assert mod.Template.environment_class is mod.Environment
    registry.rollback()
    assert made.render() == "A"


def test_a_nested_class_restated_and_a_target_of_its_own_is_refused_naming_both(
    make_module, write_patch: PatchWriter, registry: hotpatch.Registry
) -> None:
    mod = make_module(CLIENT)
    name = mod.__name__
    body = PATCH.format(mod=name, factor=3) + (
        f"""
@patch.replace_class("{name}:Client.Options")
class Options:
    made = running.Client.Options.made

    def __init__(self, n):
        type(self).made += 1
        self.n = n

    def double(self):
        return self.n * 5
"""
    )
    message = refused(registry, load(write_patch, body))
    assert f"class {name}:Client.Options is a target of its own" in message, message
    assert f"patch class of {name}:Client" in message
