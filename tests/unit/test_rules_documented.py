"""Every rule the code can refuse with is in a rule table of the docs.

A refusal names its rule so that people can look it up; a rule missing from
the docs is a dead end (`tls.credentials` was one). There is no registry of
rules: they are string literals at the raise sites, passed as ``rule=`` or
positionally to small helpers (``_refuse(detail, "task.clock", fix)``), some
of which prefix them (``secagg.refuse`` makes ``secagg.<rule>``). So the
rules are read from the source's syntax trees, following each helper that
takes a ``rule`` parameter to what it does with it.
"""

from __future__ import annotations

import ast
import fnmatch
import re
from dataclasses import dataclass, field

from tests.layout import ROOT, package_dirs

RULE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_*]+)+$")
DOCS = ROOT / "docs"
SKIP = re.compile(r"(_pb2(_grpc)?\.py|/migrations/)")


@dataclass
class Module:
    name: str
    tree: ast.Module
    constants: dict[str, str] = field(default_factory=dict)
    helpers: dict[str, ast.FunctionDef] = field(default_factory=dict)
    imports: dict[str, tuple[str, str]] = field(default_factory=dict)


def _modules() -> dict[str, Module]:
    modules: dict[str, Module] = {}
    for package, folder in package_dirs().items():
        for path in folder.rglob("*.py"):
            if SKIP.search(str(path)) or "__pycache__" in path.parts:
                continue
            parts = list(path.relative_to(folder).with_suffix("").parts)
            name = ".".join([package, *(p for p in parts if p != "__init__")])
            modules[name] = Module(name, ast.parse(path.read_text(), str(path)))
    for module in modules.values():
        for node in module.tree.body:
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
                for target in node.targets:
                    if isinstance(target, ast.Name) and isinstance(node.value.value, str):
                        module.constants[target.id] = node.value.value
            if isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:
                    module.imports[alias.asname or alias.name] = (node.module, alias.name)
        for node in ast.walk(module.tree):
            if isinstance(node, ast.FunctionDef) and "rule" in _params(node):
                module.helpers[node.name] = node
    return modules


def _params(function: ast.FunctionDef) -> list[str]:
    arguments = function.args
    names = [a.arg for a in (*arguments.posonlyargs, *arguments.args)]
    return [n for n in names if n not in ("self", "cls")] + [a.arg for a in arguments.kwonlyargs]


class Rules:
    """Rules (and ``*`` patterns where a rule is built from a variable) the code raises."""

    def __init__(self) -> None:
        self.modules = _modules()
        self.found: dict[str, str] = {}  # rule -> where

    def helper(self, module: Module, call: ast.Call) -> tuple[Module, ast.FunctionDef] | None:
        """The helper with a ``rule`` parameter this call reaches, if any."""
        func = call.func
        name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
        if name is None:
            return None
        if name in module.helpers:
            return module, module.helpers[name]
        origin = module.imports.get(name)
        if origin and origin[0] in self.modules:
            owner = self.modules[origin[0]]
            if origin[1] in owner.helpers:
                return owner, owner.helpers[origin[1]]
        return None

    def template(self, module: Module, function: ast.FunctionDef, depth: int = 0) -> str:
        """What the helper makes of its ``rule`` argument: ``{}``, ``secagg.{}``, ..."""
        assert depth < 10, f"helpers calling each other in a loop at {function.name}"
        for call in ast.walk(function):
            if not isinstance(call, ast.Call):
                continue
            for keyword in call.keywords:
                if keyword.arg != "rule":
                    continue
                shape = self.shape(keyword.value, "{}")
                if shape is not None and "{}" in shape:
                    return self.outer(module, call, shape, depth)
            reached = self.helper(module, call)
            if reached is not None:
                owner, callee = reached
                index = _params(callee).index("rule")
                if index < len(call.args) and _is_rule_param(call.args[index]):
                    return self.template(owner, callee, depth + 1)
        return "{}"

    def outer(self, module: Module, call: ast.Call, shape: str, depth: int) -> str:
        reached = self.helper(module, call)
        if reached is None:
            return shape
        owner, callee = reached
        return self.template(owner, callee, depth + 1).replace("{}", shape)

    def shape(self, value: ast.expr, param: str = "*") -> str | None:
        """A rule expression as text: constants as they are, the ``rule`` parameter as
        ``param``, any other variable part as ``*``."""
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            return value.value
        if _is_rule_param(value):
            return param
        if isinstance(value, ast.JoinedStr):
            parts = []
            for part in value.values:
                if isinstance(part, ast.Constant):
                    parts.append(str(part.value))
                elif isinstance(part, ast.FormattedValue) and _is_rule_param(part.value):
                    parts.append(param)
                else:
                    parts.append("*")
            return "".join(parts)
        return None

    def constant(self, module: Module, name: str) -> str | None:
        if name in module.constants:
            return module.constants[name]
        origin = module.imports.get(name)
        if origin and origin[0] in self.modules:
            return self.modules[origin[0]].constants.get(origin[1])
        return None

    def add(self, rule: str, module: Module, node: ast.AST) -> None:
        for one in rule.split(","):
            if one and "{}" not in one:
                self.found.setdefault(one, f"{module.name}:{getattr(node, 'lineno', 0)}")

    def collect(self) -> dict[str, str]:
        for module in self.modules.values():
            for node in ast.walk(module.tree):
                if isinstance(node, ast.FunctionDef) and node.name in module.helpers:
                    self._default(module, node)
                if not isinstance(node, ast.Call):
                    continue
                reached = self.helper(module, node)
                template = self.template(*reached) if reached else "{}"
                values: list[ast.expr] = [k.value for k in node.keywords if k.arg == "rule"]
                if reached is not None:
                    index = _params(reached[1]).index("rule")
                    values += node.args[index : index + 1]
                for value in values:
                    text = self.shape(value, "{}")
                    if text is None and isinstance(value, ast.Name):
                        text = self.constant(module, value.id)
                    if text is not None and "{}" not in text:
                        self.add(template.replace("{}", text), module, node)
        return self.found

    def _default(self, module: Module, function: ast.FunctionDef) -> None:
        """A helper's default rule (``def bad(problem, rule="bad_key")``)."""
        arguments = function.args
        positional = [*arguments.posonlyargs, *arguments.args]
        first = len(positional) - len(arguments.defaults)
        pairs = list(zip(positional[first:], arguments.defaults, strict=True))
        pairs += [
            (argument, default)
            for argument, default in zip(arguments.kwonlyargs, arguments.kw_defaults, strict=True)
            if default is not None
        ]
        for argument, default in pairs:
            if argument.arg == "rule" and isinstance(default, ast.Constant) and default.value:
                rule = self.template(module, function).replace("{}", str(default.value))
                self.add(rule, module, function)


def _is_rule_param(value: ast.expr) -> bool:
    return isinstance(value, ast.Name) and value.id == "rule"


def documented_rules() -> set[str]:
    """Every backquoted rule name (or ``prefix.*``) in a table row of the docs."""
    names: set[str] = set()
    for path in DOCS.rglob("*.md"):
        if "decisions" in path.parts:
            continue
        for line in path.read_text().splitlines():
            if line.lstrip().startswith("|"):
                names.update(n for n in re.findall(r"`([^`\s]+)`", line) if RULE.match(n))
    return names


def _covered(rule: str, documented: set[str]) -> bool:
    return any(fnmatch.fnmatchcase(rule, d) or fnmatch.fnmatchcase(d, rule) for d in documented)


def test_the_collector_finds_rules_however_they_are_passed() -> None:
    rules = Rules().collect()
    assert "tls.credentials" in rules  # rule="..." on an error class
    assert "task.clock" in rules  # positionally, to a helper
    assert "secagg.bad_key" in rules  # a helper's default, prefixed by the helper it calls
    assert "privacy.weight_concentration" in rules  # a module constant
    assert "training.*_disagree" in rules  # built from a variable


def test_every_rule_the_code_raises_is_in_a_docs_rule_table() -> None:
    documented = documented_rules()
    rules = Rules().collect()
    missing = {
        rule: where for rule, where in sorted(rules.items()) if not _covered(rule, documented)
    }
    assert not missing, (
        "rules raised in the code (rule: module:line) but in no table of docs/: add a row to "
        "the right guide's rule table (privacy.* and secagg.* in docs/privacy.md; a task's own "
        "rules on its page in docs/analyses/ or in docs/training.md; general ones in "
        f"docs/researchers.md's 'Every rule in this version'): {missing}"
    )
