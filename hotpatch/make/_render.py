"""A plan -> the text of a patch file a person can review: header, imports, definitions, migrations.

Replacements and new methods run in their target module's namespace (the
registry rebinds them), so they only need the imports the new code added.
New helpers, defaults and migrations run in the patch file's own namespace:
for them the file imports what they read, from where the new code gets it,
or from the target module itself.
"""

from __future__ import annotations

import ast
import json
import re
import textwrap
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from hotpatch._version import __version__
from hotpatch.make._diff import Assignment, Change, ModulePlan, Plan, Replacement
from hotpatch.make._syntax import BUILTINS, Binding, call_names

__all__ = ["Header", "generator", "render"]

_RULE = 88


@dataclass(frozen=True, slots=True)
class Header:
    """What the patch file says about itself."""

    version: str
    baseline: str
    summary: str
    origin: str  # "git v2.3 (1a2b3c4d5e)..fix (9f8e7d6c5b) in /repo", or two trees
    name: str  # the file's name, for the pytest line
    cumulative: bool = False


def generator() -> str:
    """``hotpatch make`` and the version of hotpatch that ran it."""
    return f"hotpatch make (hotpatch {__version__})"


def render(plan: Plan, header: Header, modes: dict[str, str] | None = None) -> str:
    """The patch file; ``modes`` (target -> "inline"/"forward ...") from the registry's check."""
    used = _used_names(plan)
    patch_name = _free("patch", used)
    patch_class = "Patch" if "Patch" not in used else "HotPatch"
    imports: dict[str, Binding] = {}
    own: dict[str, set[str]] = {}  # module -> names imported from the module itself
    defined = {(m.name, h.name) for m in plan.modules for h in m.helpers}
    reexports = {
        (m.name, a.name): m.imports[a.name]
        for m in plan.modules
        for a in m.assignments
        if not a.owner and not a.helper and a.old is None and a.name in m.imports
    }
    for key, binding in sorted(reexports.items()):  # a re-export of a re-export of a new function
        seen = {key}
        where = (binding.module, binding.attr)
        while where in reexports and where not in seen:
            seen.add(where)
            where = (reexports[where].module, reexports[where].attr)
        if where in defined and where[1] == key[1]:
            defined.add(key)

    def sections(reserved: dict[str, str]) -> list[list[str]]:
        imports.clear()
        own.clear()
        return [
            _module(
                m,
                patch_name,
                imports,
                own.setdefault(m.name, set()),
                used=used,
                defined=defined,
                reserved=reserved,
            )
            for m in plan.modules
        ]

    sections({})  # what the file imports: a definition of the file must not hide one of them
    reserved = {name: binding.statement for name, binding in imports.items()}
    reserved |= {
        name: f"from {module} import {name}" for module, names in own.items() for name in names
    }
    done = sections(reserved)
    lines = [_docstring(plan, header, modes or {}), "", "from __future__ import annotations", ""]
    if imports:
        lines += [*_import_lines(imports.values()), ""]
    lines.append("from hotpatch import Patch" + (" as HotPatch" if patch_class != "Patch" else ""))
    for module, names in sorted(own.items()):
        if names:
            lines.append(f"from {module} import {', '.join(sorted(names))}")
    lines += [
        "",
        f"{patch_name} = {patch_class}(",
        f"    version={_q(header.version)},",
        f"    baseline={_q(header.baseline)},",
        f"    summary={_q(header.summary)},",
        *(
            ["    cumulative=True,  # replaces the earlier hot patches of the baseline"]
            if header.cumulative
            else []
        ),
        ")",
    ]
    for section in done:
        lines += ["", "", *section]
    return "\n".join(lines).rstrip() + "\n"


def _docstring(plan: Plan, header: Header, modes: dict[str, str]) -> str:
    title = f"Hot patch {header.version} for baseline {header.baseline}"
    lines = [f"{title}: {header.summary}" if header.summary else f"{title}.", ""]
    lines += textwrap.wrap(f"Made by {generator()} from {header.origin}.", _RULE)
    lines += ["", "Changed definitions:"]
    rows: list[tuple[str, str]] = []
    for change in plan.changes:
        verdict = change.verdict
        if verdict == "replace":
            mode = modes.get(change.name, "")
            verdict = f"replaced ({mode.split(' ', 1)[0]})" if mode else "replaced"
        rows.append((change.name, verdict))
    width = max((len(n) for n, _ in rows), default=0)
    lines += [f"    {name.ljust(width)}  {verdict}" for name, verdict in rows]
    if plan.ignored:
        count = len(plan.ignored)
        files = "file" if count == 1 else "files"
        lines.append(f"    ({count} changed {files} left out: tests, docs, packaging)")
    lines += [
        "",
        "Before dropping it, run the new version's tests against the running version's",
        f"code with this patch applied: pytest --hotpatch-apply={header.name}",
    ]
    return '"""' + "\n".join(_escape(line) for line in lines) + '\n"""'


def _q(text: str) -> str:
    """A double-quoted Python string literal (the house style of most code)."""
    return json.dumps(text, ensure_ascii=False)


def _import_lines(bindings: Iterable[Binding]) -> list[str]:
    """``import`` lines first, then ``from`` lines, one per module, sorted."""
    plain = sorted({b.statement for b in bindings if not b.attr})
    froms: dict[str, set[str]] = {}
    for b in bindings:
        if b.attr:
            froms.setdefault(b.module, set()).add(b.attr + (f" as {b.asname}" if b.asname else ""))
    return plain + [
        f"from {m} import {', '.join(sorted(names))}" for m, names in sorted(froms.items())
    ]


def _escape(line: str) -> str:
    return line.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')


def _used_names(plan: Plan) -> set[str]:
    used: set[str] = set()
    for module in plan.modules:
        used |= {h.name for h in module.helpers}
        used |= {r.def_name for r in module.replacements}
        used |= set(module.imports)
    return used


def _free(name: str, used: set[str]) -> str:
    while name in used:
        name += "_"
    return name


def _module(
    module: ModulePlan,
    patch_name: str,
    imports: dict[str, Binding],
    own: set[str],
    *,
    used: set[str],
    defined: set[tuple[str, str]],
    reserved: dict[str, str],
) -> list[str]:
    """The section of the patch file for one module; ``reserved``: the names the file
    imports (a replacement's def takes another name, a patch class is followed by the
    import again, so that what reads the name later gets the running object)."""
    title = f"# -- {module.name} ({module.path}) "
    out = [title + "-" * max(4, _RULE - len(title))]
    if module.replacements or module.members:
        out.append(
            f"# Replacements run in {module.name}'s namespace: its own names need no import."
        )
    helpers = {h.name for h in module.helpers}
    migrated = {a.name for a in module.assignments if not a.owner and not a.helper}
    replaced = {r.qualname for r in module.replacements if "." not in r.qualname}

    def need(names: set[str], *, in_patch: bool) -> None:
        """Make ``names`` resolvable: in the target module, or (``in_patch``) in this file."""
        for name in names:
            binding = module.imports.get(name)
            if binding is not None and binding.attr == name and (binding.module, name) in defined:
                continue  # a new definition of this patch (the same name): already here
            if binding is not None:  # from where the new code gets it: reads as written
                imports[name] = binding
            elif (
                in_patch
                and name in module.old_names
                and name not in helpers
                and name not in migrated
                and name not in replaced
                and name not in BUILTINS
            ):
                own.add(name)

    for helper in module.helpers:
        need(helper.names, in_patch=True)
        out += ["", "", *helper.source.rstrip().splitlines()]
    taken = set(imports) | helpers | {patch_name}
    holders: dict[str, list[Replacement]] = {}
    for replacement in module.replacements:
        if replacement.mangled:
            holders.setdefault(replacement.mangled, []).append(replacement)
            continue
        need(call_names(replacement.source), in_patch=False)
        need(replacement.defaults, in_patch=True)
        name = replacement.def_name
        if name in taken or name in own or name in reserved:
            name = re.sub(r"\W+", "_", replacement.qualname.replace(".<locals>.", "_")) + "_"
        taken.add(name)
        source = replacement.source
        if name != replacement.def_name:
            source = _rename(source, replacement.def_name, name)
        out += [
            "",
            "",
            *_note(replacement.note),
            f"@{patch_name}.replace({_q(replacement.target)})",
            *source.rstrip().splitlines(),
        ]
    for cls, replacements in holders.items():
        out += _holder(cls, replacements, patch_name, need)
    for members in module.members:
        need(members.names, in_patch=True)
        body: list[str] = []
        for source in members.sources:
            need(call_names(_in_class(source)), in_patch=False)
            body += ["", *source.rstrip().splitlines()]
        out += ["", "", f"@{patch_name}.replace_class({_q(members.target)})", members.header]
        out += body[1:]
        name = members.header.removeprefix("class ").partition("(")[0].partition(":")[0]
        if name in reserved:  # the class statement bound the patch class to the name
            out += ["", "", f"{reserved[name]}  # the running {name} again, for what follows"]
    if module.assignments:
        out += _migrations(module, patch_name, need)
    return out


def _holder(
    cls: str,
    replacements: list[Replacement],
    patch_name: str,
    need: Callable[..., None],
) -> list[str]:
    """The class of the patch file holding replacements of ``cls``'s methods, named as it."""
    holder = cls.lstrip("_") if cls.startswith("_") else "_" + cls
    out = [
        "",
        "",
        f"class {holder}:",
        f'    """Holds replacements of {cls} methods: their private names (self.__x) are',
        f'    mangled as in {cls} itself, which a class of this name does too."""',
    ]
    # What their defaults read from the class body (n=LIMIT): the running class's, bound
    # here as there (a private name mangled alike).
    bound = sorted({(r.owner, n) for r in replacements for n in r.class_names})
    if bound:
        need({owner.partition(".")[0] for owner, _ in bound}, in_patch=True)
        out += ["", f"    # what the defaults below read from the running {cls}'s body"]
        out += [f"    {name} = {owner}.{name}" for owner, name in bound]
    for replacement in replacements:
        need(call_names(_in_class(replacement.source)), in_patch=False)
        need(replacement.defaults, in_patch=True)
        out += [
            "",
            *_note(replacement.note, "    "),
            f"    @{patch_name}.replace({_q(replacement.target)})",
            *replacement.source.rstrip().splitlines(),
        ]
    return out


def _note(text: str, indent: str = "") -> list[str]:
    """``text`` as comment lines."""
    width = _RULE - len(indent) - 2
    return [f"{indent}# {line}" for line in textwrap.wrap(text, width)] if text else []


def _in_class(source: str) -> str:
    """Source indented for a class body, made compilable on its own."""
    return "class _:\n" + source


def _rename(source: str, old: str, new: str) -> str:
    head, sep, rest = source.partition(f"def {old}(")
    return f"{head}def {new}({rest}" if sep else source


def _migrations(module: ModulePlan, patch_name: str, need: object) -> list[str]:
    assert callable(need)
    slug = module.name.replace(".", "_")
    forward: list[str] = []
    backward: list[str] = []
    for assignment in module.assignments:
        place = "module." + (f"{assignment.owner}." if assignment.owner else "") + assignment.name
        new = (
            assignment.name  # the patch file's own definition
            if assignment.helper
            else _expression(
                assignment, assignment.new, assignment.new_text, module, module.new_names
            )
        )
        need(_imported(assignment.new, module), in_patch=True)
        forward.append(f"    {place} = {new}")
        if assignment.helper:  # the registry may have put it there too, for a replacement
            backward.append(f"    vars(module).pop({_q(assignment.name)}, None)")
        elif assignment.old is None:
            backward.append(f"    del {place}")
        else:
            old = _expression(
                assignment, assignment.old, assignment.old_text, module, module.old_names
            )
            need(_imported(assignment.old, module), in_patch=True)
            backward.append(f"    {place} = {old}")
    names = ", ".join(_short(a.change) for a in module.assignments)
    return [
        "",
        "",
        f"@{patch_name}.migrate({_q(module.name)})",
        f"def migrate_{slug}(module):",
        f'    """Set the values that change in {module.name}: {names}."""',
        *forward,
        "",
        "",
        f"@{patch_name}.unmigrate({_q(module.name)})",
        f"def unmigrate_{slug}(module):",
        f'    """Put back what migrate_{slug} changed (on rollback)."""',
        *reversed(backward),
    ]


def _short(change: Change) -> str:
    return change.name.partition(":")[2]


def _imported(node: ast.expr, module: ModulePlan) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and n.id in module.imports}


def _expression(
    assignment: Assignment, node: ast.expr, text: str, module: ModulePlan, names: set[str]
) -> str:
    """The value's source, with the module's own names read through ``module.``."""
    scope = module.class_scopes.get(assignment.owner, set()) if assignment.owner else set()
    own = (scope | names) - set(module.imports)
    if text and not any(isinstance(n, ast.Name) and n.id in own for n in ast.walk(node)):
        return text  # as the author wrote it

    class Qualify(ast.NodeTransformer):
        def visit_Name(self, node: ast.Name) -> ast.AST:
            if node.id in scope:
                path = f"module.{assignment.owner}.{node.id}"
            elif node.id in names and node.id not in module.imports:
                path = f"module.{node.id}"
            else:
                return node
            return ast.copy_location(ast.parse(path, mode="eval").body, node)

    return ast.unparse(Qualify().visit(_copy(node)))


def _copy(node: ast.expr) -> ast.expr:
    return ast.parse(ast.unparse(node), mode="eval").body
