"""The ``requirement`` and ``feature`` markers, and how checks are mapped to requirement IDs.

Every check carries at least one ``@pytest.mark.requirement("UNI-...")``; optional-feature
checks also carry ``@pytest.mark.feature("coalescing")``. The same mapping is read two ways:
from collected pytest items (for grading) and statically from the check sources (for the
coverage test that fails CI when a MUST has no check).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

import pytest

__all__ = [
    "CHECKS_DIR",
    "FEATURE",
    "REQUIREMENT",
    "declare",
    "features_of",
    "requirements_of",
    "scan_checks",
    "scan_tests",
]

REQUIREMENT: Final = "requirement"
FEATURE: Final = "feature"
CHECKS_DIR: Final = Path(__file__).resolve().parent / "checks"
_ID: Final = re.compile(r"UNI-[A-Z]+-\d+")


def declare(config: pytest.Config) -> None:
    """Register the markers so ``--strict-markers`` accepts them."""
    config.addinivalue_line(
        "markers", f"{REQUIREMENT}(*ids): the spec requirement IDs a conformance check verifies"
    )
    config.addinivalue_line(
        "markers",
        f"{FEATURE}(name): the optional feature a check needs (graded unimplemented if absent)",
    )


def requirements_of(item: pytest.Item) -> tuple[str, ...]:
    """The requirement IDs on an item (function, class and module markers), in order."""
    ids: dict[str, None] = {}
    for marker in item.iter_markers(REQUIREMENT):
        for arg in marker.args:
            for ident in _flatten(arg):
                ids[ident] = None
    return tuple(ids)


def features_of(item: pytest.Item) -> tuple[str, ...]:
    """The optional features an item needs."""
    names: dict[str, None] = {}
    for marker in item.iter_markers(FEATURE):
        for arg in marker.args:
            for name in _flatten(arg):
                names[name] = None
    return tuple(names)


def _flatten(arg: Any) -> Iterable[str]:
    if isinstance(arg, str):
        yield arg
    elif isinstance(arg, Iterable):
        for part in arg:
            yield from _flatten(part)


def scan_checks(directory: Path = CHECKS_DIR) -> dict[str, list[str]]:
    """Requirement ID -> ``file::test`` names, read from the check sources without running them."""
    found: dict[str, list[str]] = {}
    for test, ids in scan_tests(directory).items():
        for ident in ids:
            found.setdefault(ident, []).append(test)
    return found


def scan_tests(directory: Path = CHECKS_DIR) -> dict[str, list[str]]:
    """``file::test`` -> the requirement IDs it carries (empty: a check without a marker).

    Understands ``@pytest.mark.requirement(...)`` on test functions and classes and a module
    ``pytestmark`` holding such markers; string constants and module-level tuples of strings
    are resolved. A module marker applies to every test in the module.
    """
    found: dict[str, list[str]] = {}
    for path in sorted(directory.glob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        constants = _module_constants(tree)
        module_ids: list[str] = []
        tests: list[tuple[str, list[str]]] = []
        aliases: dict[str, list[str]] = {}
        for node in tree.body:
            if isinstance(node, ast.Assign | ast.AnnAssign):
                targets: list[ast.expr] = (
                    list(node.targets) if isinstance(node, ast.Assign) else [node.target]
                )
                if node.value is None:
                    continue
                if any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in targets):
                    module_ids += _ids_in_marks(node.value, constants)
                for target in targets:
                    if isinstance(target, ast.Name) and target.id.startswith("Test"):
                        # ``TestModel = Machine.TestCase`` (hypothesis stateful tests)
                        aliases[target.id] = []
                        tests.append((target.id, aliases[target.id]))
                    elif (
                        isinstance(target, ast.Attribute)
                        and target.attr == "pytestmark"
                        and isinstance(target.value, ast.Name)
                        and target.value.id in aliases
                    ):
                        aliases[target.value.id] += _ids_in_marks(node.value, constants)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                if node.name.startswith("test"):
                    tests.append((node.name, _decorator_ids(node, constants)))
            elif isinstance(node, ast.ClassDef):
                class_ids = _decorator_ids(node, constants)
                class_ids += _class_pytestmark(node, constants)
                methods = [
                    item
                    for item in node.body
                    if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)
                    and item.name.startswith("test")
                ]
                if node.name.startswith("Test") and not methods:
                    tests.append((node.name, class_ids))
                for method in methods:
                    tests.append(
                        (
                            f"{node.name}::{method.name}",
                            class_ids + _decorator_ids(method, constants),
                        )
                    )
        for name, ids in tests:
            found[f"{path.name}::{name}"] = list(dict.fromkeys(module_ids + ids))
    return found


def _module_constants(tree: ast.Module) -> dict[str, list[str]]:
    constants: dict[str, list[str]] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            strings = _strings(node.value, constants)
            for target in targets:
                if isinstance(target, ast.Name) and strings:
                    constants[target.id] = strings
    return constants


def _strings(node: ast.expr, constants: dict[str, list[str]]) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return [s for element in node.elts for s in _strings(element, constants)]
    if isinstance(node, ast.Starred):
        return _strings(node.value, constants)
    if isinstance(node, ast.Name):
        return list(constants.get(node.id, []))
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _strings(node.left, constants) + _strings(node.right, constants)
    return []


def _is_requirement_call(node: ast.expr) -> bool:
    func = node.func if isinstance(node, ast.Call) else None
    return isinstance(func, ast.Attribute) and func.attr == REQUIREMENT


def _ids_in_marks(node: ast.expr, constants: dict[str, list[str]]) -> list[str]:
    ids: list[str] = []
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call) and _is_requirement_call(sub):
            for arg in sub.args:
                ids += [s for s in _strings(arg, constants) if _ID.fullmatch(s)]
    return ids


def _decorator_ids(
    node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef, constants: dict[str, list[str]]
) -> list[str]:
    ids: list[str] = []
    for decorator in node.decorator_list:
        ids += _ids_in_marks(decorator, constants)
    return ids


def _class_pytestmark(node: ast.ClassDef, constants: dict[str, list[str]]) -> list[str]:
    ids: list[str] = []
    for item in node.body:
        if isinstance(item, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "pytestmark" for t in item.targets
        ):
            ids += _ids_in_marks(item.value, constants)
    return ids
