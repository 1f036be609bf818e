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

from refusals import PatchWriter, load

import hotpatch

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
