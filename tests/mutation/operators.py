"""Mutation operators over a module's Python AST, applied as edits of its source text.

Each operator finds *sites* in the original source: a node and the text that replaces it.
Applying a mutant splices that text over the node's span, so the rest of the file (line
numbers, comments) stays as it was and coverage of the original lines still applies. A
mutant's key names its module, enclosing function, operator and the before/after text,
with an occurrence number: it survives edits elsewhere in the file, so verdicts stay
attached to the mutants they explain.

Code that cannot change behaviour is never mutated: docstrings, annotations, decorators,
``__all__``, logging calls, assertion statements, the text of raised exceptions, and lines
marked ``# pragma: no mutate``.
"""

from __future__ import annotations

import ast
import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

__all__ = ["OPERATORS", "Mutant", "apply", "mutants_of"]

OPERATORS = ("cmp", "bool", "negate", "arith", "number", "string", "return", "delete", "call")

_CMP = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
}
_ARITH = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Div,
    ast.Div: ast.Mult,
    ast.FloorDiv: ast.Mult,
    ast.Mod: ast.FloorDiv,
    ast.Pow: ast.Mult,
    ast.LShift: ast.RShift,
    ast.RShift: ast.LShift,
    ast.BitOr: ast.BitAnd,
    ast.BitAnd: ast.BitOr,
}
_CALLS = {"min": "max", "max": "min", "any": "all", "all": "any"}
_LOGGERS = {"log", "logger", "logging", "_log"}
_PRAGMA = "pragma: no mutate"
_BODIES = ("body", "orelse", "finalbody")
_NEGATED = (ast.Eq, ast.NotEq, ast.Is, ast.IsNot, ast.In, ast.NotIn)  # cmp makes their negation


@dataclass(frozen=True)
class Mutant:
    """One change to one module: replace bytes ``[start, end)`` of the source by ``after``."""

    module: str
    """The module's path relative to the repository root."""
    line: int
    function: str
    operator: str
    before: str
    after: str
    start: int
    end: int
    occurrence: int = 0

    @property
    def key(self) -> str:
        return (
            f"{self.module}:{self.function}:{self.operator}:"
            f"{_short(self.before)} => {_short(self.after)}#{self.occurrence}"
        )

    @property
    def ident(self) -> str:
        """A short, stable name: a digest of :attr:`key`."""
        return hashlib.sha1(self.key.encode("utf-8")).hexdigest()[:10]

    @property
    def label(self) -> str:
        return f"{Path(self.module).name}:{self.line} {self.operator}: {self.describe()}"

    def describe(self) -> str:
        return f"{_short(self.before)} => {_short(self.after)}"


def _short(text: str, width: int = 80) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def apply(source: bytes, mutant: Mutant) -> bytes:
    """The module's source with ``mutant`` applied."""
    return source[: mutant.start] + mutant.after.encode("utf-8") + source[mutant.end :]


def mutants_of(path: Path, module: str) -> list[Mutant]:
    """Every mutant of the file at ``path`` (named ``module``) that still compiles."""
    source = path.read_bytes()
    tree = ast.parse(source)
    finder = _Finder(source)
    finder.visit(tree)
    found: list[Mutant] = []
    seen: Counter[tuple[str, str, str, str]] = Counter()
    for site in finder.sites:
        line, function, operator, start, end, after = site
        before = source[start:end].decode("utf-8")
        if before == after:
            continue
        candidate = Mutant(module, line, function, operator, before, after, start, end)
        if _same(before, after):
            continue  # the same program
        if not after.startswith("("):
            # A parenthesized expression fits wherever the one it replaces did; check the rest.
            try:
                compile(apply(source, candidate), module, "exec", dont_inherit=True)
            except SyntaxError:
                continue
        key = (function, operator, _short(before), _short(after))
        occurrence = seen[key]
        seen[key] += 1
        found.append(
            Mutant(module, line, function, operator, before, after, start, end, occurrence)
        )
    return found


class _Finder(ast.NodeVisitor):
    """Walks a module and records every site as (line, function, operator, start, end, text)."""

    def __init__(self, source: bytes) -> None:
        self.source = source
        self.lines = source.splitlines(keepends=True)
        self.starts = [0]
        for text in self.lines:
            self.starts.append(self.starts[-1] + len(text))
        self.sites: list[tuple[int, str, str, int, int, str]] = []
        self.scope: list[str] = []
        self.quiet_strings = 0

    # -- positions ----------------------------------------------------------------------------

    def _span(self, node: ast.AST) -> tuple[int, int] | None:
        end_line = getattr(node, "end_lineno", None)
        end_col = getattr(node, "end_col_offset", None)
        if end_line is None or end_col is None:
            return None
        start = self.starts[node.lineno - 1] + node.col_offset  # type: ignore[attr-defined]
        return start, self.starts[end_line - 1] + end_col

    def _marked(self, node: ast.AST) -> bool:
        first = node.lineno  # type: ignore[attr-defined]
        last = getattr(node, "end_lineno", first) or first
        return any(_PRAGMA in self.lines[i - 1].decode("utf-8", "replace") for i in (first, last))

    def _add(self, node: ast.AST, operator: str, text: str, *, wrap: bool = True) -> None:
        span = self._span(node)
        if span is None or self._marked(node):
            return
        function = ".".join(self.scope) or "<module>"
        after = f"({text})" if wrap else text
        self.sites.append((node.lineno, function, operator, span[0], span[1], after))  # type: ignore[attr-defined]

    # -- scopes and places never mutated ------------------------------------------------------

    def _body(self, body: list[ast.stmt]) -> None:
        for stmt in body:
            self.visit(stmt)  # docstrings are skipped by visit_Expr

    def visit_Module(self, node: ast.Module) -> None:
        self._body(node.body)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.scope.append(node.name)
        for base in node.bases:
            self.visit(base)
        self._body(node.body)
        self.scope.pop()

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.scope.append(node.name)
        for default in [*node.args.defaults, *node.args.kw_defaults]:
            if default is not None:
                self.visit(default)
        self._statements(node.body)
        self.scope.pop()

    visit_FunctionDef = _function
    visit_AsyncFunctionDef = _function

    def _statements(self, body: list[ast.stmt]) -> None:
        """A function's statements: each may be deleted (replaced by ``pass``)."""
        start = 0
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            start = 1
        for stmt in body[start:]:
            if _deletable(stmt):
                self._add(stmt, "delete", "pass", wrap=False)
            self.visit(stmt)

    def generic_visit(self, node: ast.AST) -> None:
        for name, value in ast.iter_fields(node):
            if name in ("annotation", "returns", "decorator_list", "type_comment"):
                continue
            if isinstance(value, list):
                if value and isinstance(value[0], ast.stmt) and name in _BODIES and self.scope:
                    self._statements(value)
                    continue
                for item in value:
                    if isinstance(item, ast.AST):
                        self.visit(item)
            elif isinstance(value, ast.AST):
                self.visit(value)

    def visit_Assert(self, node: ast.Assert) -> None:
        return None

    def visit_Expr(self, node: ast.Expr) -> None:
        if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            return None  # a docstring of an attribute
        self.generic_visit(node)

    def _negate(self, test: ast.expr) -> None:
        """``not (test)``, unless another operator already makes the same program."""
        if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
            return
        if isinstance(test, ast.Compare) and len(test.ops) == 1 and type(test.ops[0]) in _NEGATED:
            return
        self._add(test, "negate", f"not ({self._text(test)})")

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if isinstance(node.annotation, ast.Name) and node.annotation.id == "TypeAlias":
            return None
        if node.value is not None:
            self.visit(node.value)

    def visit_Assign(self, node: ast.Assign) -> None:
        names = [t.id for t in node.targets if isinstance(t, ast.Name)]
        if "__all__" in names:
            return None
        if isinstance(node.value, ast.Call) and _name(node.value.func) in ("TypeVar",):
            return None
        self.generic_visit(node)

    def visit_If(self, node: ast.If) -> None:
        if _name(node.test) == "TYPE_CHECKING":
            return None
        self._negate(node.test)
        self.generic_visit(node)

    def visit_While(self, node: ast.While) -> None:
        if not (isinstance(node.test, ast.Constant) and node.test.value is True):
            self._negate(node.test)
        self.generic_visit(node)

    def visit_IfExp(self, node: ast.IfExp) -> None:
        self._negate(node.test)
        self.generic_visit(node)

    def visit_Raise(self, node: ast.Raise) -> None:
        self.quiet_strings += 1
        self.generic_visit(node)
        self.quiet_strings -= 1

    def visit_JoinedStr(self, node: ast.JoinedStr) -> None:
        for value in node.values:
            if isinstance(value, ast.FormattedValue):
                self.visit(value.value)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Attribute) and _name(func.value) in _LOGGERS:
            return None  # logging changes no behaviour a suite can see
        name = _name(func)
        if name in _CALLS and isinstance(func, ast.Name):
            self._add(func, "call", _CALLS[name], wrap=False)
        if name == "cast" and node.args:
            for arg in node.args[1:]:
                self.visit(arg)
            return None
        self.generic_visit(node)

    # -- the operators ------------------------------------------------------------------------

    def _text(self, node: ast.AST) -> str:
        span = self._span(node)
        assert span is not None
        return self.source[span[0] : span[1]].decode("utf-8")

    def visit_Compare(self, node: ast.Compare) -> None:
        for index, op in enumerate(node.ops):
            swap = _CMP.get(type(op))
            if swap is None:
                continue
            ops = list(node.ops)
            ops[index] = swap()
            mutated = ast.Compare(left=node.left, ops=ops, comparators=node.comparators)
            self._add(node, "cmp", ast.unparse(mutated))
        self.generic_visit(node)

    def visit_BoolOp(self, node: ast.BoolOp) -> None:
        other = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        self._add(node, "bool", ast.unparse(ast.BoolOp(op=other, values=node.values)))
        self.generic_visit(node)

    def visit_UnaryOp(self, node: ast.UnaryOp) -> None:
        if isinstance(node.op, ast.Not | ast.USub):
            self._add(node, "negate", self._text(node.operand))
        self.generic_visit(node)

    def visit_BinOp(self, node: ast.BinOp) -> None:
        swap = _ARITH.get(type(node.op))
        if swap is not None:
            mutated = ast.BinOp(left=node.left, op=swap(), right=node.right)
            self._add(node, "arith", ast.unparse(mutated))
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        swap = _ARITH.get(type(node.op))
        if swap is not None:
            mutated = ast.AugAssign(target=node.target, op=swap(), value=node.value)
            self._add(node, "arith", ast.unparse(mutated), wrap=False)
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        value = node.value
        if isinstance(value, bool):
            self._add(node, "number", str(not value), wrap=False)
        elif isinstance(value, int):
            self._add(node, "number", str(value + 1))
            self._add(node, "number", str(value - 1))
        elif isinstance(value, float):
            self._add(node, "number", repr(value * 2 if value else 1.0))
        elif isinstance(value, str) and not self.quiet_strings:
            self._add(node, "string", repr(value + "_x" if value else "x"), wrap=False)

    def visit_Return(self, node: ast.Return) -> None:
        value = node.value
        if value is not None and not (isinstance(value, ast.Constant) and value.value is None):
            self._add(node, "return", "return None", wrap=False)
        self.generic_visit(node)


def _same(before: str, after: str) -> bool:
    """Whether two fragments parse to the same tree (False when either does not parse)."""
    try:
        return ast.dump(ast.parse(f"({before})")) == ast.dump(ast.parse(f"({after})"))
    except SyntaxError:
        return False


def _name(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def _deletable(stmt: ast.stmt) -> bool:
    """Statements whose removal is a meaningful mutant (not logging, not a lone ``pass``)."""
    if isinstance(stmt, ast.Expr):
        call = stmt.value.value if isinstance(stmt.value, ast.Await) else stmt.value
        if isinstance(call, ast.Call):
            func = call.func
            return not (isinstance(func, ast.Attribute) and _name(func.value) in _LOGGERS)
        return False
    return isinstance(
        stmt,
        ast.Assign | ast.AugAssign | ast.AnnAssign | ast.Raise | ast.Continue | ast.Break,
    ) and not (isinstance(stmt, ast.AnnAssign) and stmt.value is None)
