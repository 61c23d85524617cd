"""MkDocs hook: the pages that must never drift from their sources are rendered at build time.

Sources: ``spec/*.md`` (the specification), ``schemas/v1`` (one page per message type, the
registries, the AsyncAPI document), :func:`unisock.cli.build_parser` (command line), the
package's public names and docstrings (Python API), :class:`unisock.config.ServerConfig`
(configuration), ``docs/_data/conformance-report.json`` (requirement coverage) and
``bench/results`` (benchmarks). Nothing rendered here is written to ``docs/``.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import html
import importlib
import inspect
import itertools
import json
import logging
import os
import pkgutil
import re
import textwrap
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

log = logging.getLogger("mkdocs.hooks.generate")

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "spec"
SCHEMAS = ROOT / "schemas" / "v1"
DATA = ROOT / "docs" / "_data"
BENCH = ROOT / "bench" / "results"
PERFORMANCE_PAGE = "topics/performance.md"
BENCH_MARKER = "<!-- bench-summary -->"
BENCH_SUMMARY = ("summary.md", "suite.json")
"""The peer benchmarks' results: shown on the performance page, not on the benchmarks page."""
MERMAID_JS = ROOT / "docs" / "node_modules" / "mermaid" / "dist" / "mermaid.min.js"
MERMAID_URI = "assets/javascripts/mermaid.min.js"

CLIENT_TYPES = ("hello", "refresh", "subscribe", "unsubscribe", "publish", "ping", "pong")
PLACEHOLDER = "generated:"

# --------------------------------------------------------------------------------------------
# MkDocs events


def on_config(config: MkDocsConfig) -> MkDocsConfig:
    """Expand the ``generated:`` entries of the nav and load the vendored mermaid runtime."""
    config["nav"] = _expand_nav(config["nav"])
    if MERMAID_JS.is_file():
        # Loaded before the theme's bundle, so the theme uses it instead of a CDN copy.
        config["extra_javascript"].insert(0, MERMAID_URI)
    else:
        log.info("mermaid is not vendored (npm ci --prefix docs): diagrams load from a CDN")
    return config


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Add every generated page and the downloadable schema files."""
    for uri, content in _pages():
        files.append(File.generated(config, uri, content=content))
    for path in sorted(SCHEMAS.rglob("*")):
        if path.is_file() and path.suffix in {".json", ".yaml"}:
            uri = "schemas/v1/" + path.relative_to(SCHEMAS).as_posix()
            files.append(File.generated(config, uri, abs_src_path=str(path)))
    if MERMAID_JS.is_file():
        files.append(File.generated(config, MERMAID_URI, abs_src_path=str(MERMAID_JS)))
    for path in sorted(BENCH.glob("*")):
        if path.suffix in {".svg", ".png"}:
            files.append(File.generated(config, f"bench/{path.name}", abs_src_path=str(path)))
    return files


def on_page_markdown(markdown: str, page: Any, config: MkDocsConfig, files: Files) -> str:
    """The performance page shows the latest peer benchmark summary where it says so."""
    if page.file.src_uri == PERFORMANCE_PAGE and BENCH_MARKER in markdown:
        return markdown.replace(BENCH_MARKER, bench_summary(BENCH, "../bench/"))
    return markdown


def _expand_nav(nav: Any) -> Any:
    if isinstance(nav, list):
        return [_expand_nav(item) for item in nav]
    if isinstance(nav, dict):
        out: dict[str, Any] = {}
        for title, value in nav.items():
            if isinstance(value, str) and value.startswith(PLACEHOLDER):
                out[title] = NAV_SECTIONS[value[len(PLACEHOLDER) :]]()
            else:
                out[title] = _expand_nav(value)
        return out
    return nav


def _spec_nav() -> list[Any]:
    entries: list[Any] = []
    for path in _spec_files():
        entries.append({_first_heading(path.read_text(encoding="utf-8")): f"spec/{path.name}"})
    return entries


def _schema_nav() -> list[Any]:
    entries: list[Any] = ["reference/schemas/index.md"]
    entries.extend({name: f"reference/schemas/{name}.md"} for name in _message_types())
    entries.append({"Token claims": "reference/schemas/token-claims.md"})
    entries.append({"Shared definitions": "reference/schemas/defs.md"})
    return entries


NAV_SECTIONS: dict[str, Callable[[], list[Any]]] = {"spec": _spec_nav, "schemas": _schema_nav}


def _pages() -> Iterator[tuple[str, str]]:
    for path in _spec_files():
        yield f"spec/{path.name}", path.read_text(encoding="utf-8")
    yield "reference/schemas/index.md", schemas_index()
    for name in _message_types():
        yield f"reference/schemas/{name}.md", message_page(name)
    yield "reference/schemas/token-claims.md", token_claims_page()
    yield "reference/schemas/defs.md", defs_page()
    yield "reference/event-types.md", event_types_page()
    yield "reference/error-codes.md", error_codes_page()
    yield "reference/close-codes.md", close_codes_page()
    yield "reference/asyncapi.md", asyncapi_page()
    yield "reference/cli.md", cli_page()
    yield "reference/python-api.md", python_api_page()
    yield "reference/configuration.md", configuration_page()
    yield "reference/coverage.md", coverage_page(DATA / "conformance-report.json")
    yield "reference/benchmarks.md", benchmarks_page(BENCH)


# --------------------------------------------------------------------------------------------
# Helpers


def _load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _spec_files() -> list[Path]:
    return [SPEC / "index.md", *sorted(SPEC.glob("[0-9][0-9]-*.md"))]


def _first_heading(text: str) -> str:
    for line in text.splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    raise ValueError("spec page without a title")


def _message_types() -> list[str]:
    return sorted(path.stem for path in (SCHEMAS / "messages").glob("*.json"))


def _cell(text: object) -> str:
    """Make text safe for one Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _json_block(value: object, schema: str | None = None) -> str:
    comment = f"<!-- schema: {schema} -->\n" if schema else ""
    return f"{comment}```json\n{json.dumps(value, indent=2, ensure_ascii=False)}\n```\n"


def _direction(name: str) -> str:
    client = name in CLIENT_TYPES
    server = name in _server_types()
    return "both" if client and server else "client → server" if client else "server → client"


def _server_types() -> set[str]:
    schema = _load(SCHEMAS / "server-message.json")
    refs = re.findall(r"messages/([a-z_]+)\.json", json.dumps(schema))
    return set(refs)


# --------------------------------------------------------------------------------------------
# Schemas


def _type_of(prop: Mapping[str, Any], link_prefix: str) -> str:
    """A short human description of a property's schema, linking shared definitions."""
    if "$ref" in prop:
        ref = str(prop["$ref"])
        name = ref.rsplit("/", 1)[-1]
        if "defs.json#" in ref:
            return f"[{name}]({link_prefix}defs.md#{name})"
        return f"`{ref}`"
    if "const" in prop:
        return f"`{json.dumps(prop['const'])}`"
    if "enum" in prop:
        return " \\| ".join(f"`{json.dumps(v)}`" for v in prop["enum"])
    kind = prop.get("type")
    if isinstance(kind, list):
        text = " or ".join(kind)
    elif kind == "array" and isinstance(prop.get("items"), Mapping):
        text = f"array of {_type_of(prop['items'], link_prefix)}"
    elif isinstance(kind, str):
        text = kind
    elif "oneOf" in prop or "anyOf" in prop:
        options = prop.get("oneOf") or prop.get("anyOf") or []
        text = " or ".join(_type_of(o, link_prefix) for o in options)
    else:
        text = "any JSON value"
    bounds = [
        f"{key} {prop[key]}"
        for key in ("minLength", "maxLength", "minimum", "maximum", "minItems", "maxItems")
        if key in prop
    ]
    return text + (f" ({', '.join(bounds)})" if bounds else "")


def fields_table(schema: Mapping[str, Any], link_prefix: str = "") -> str:
    """Markdown table of the top-level properties of an object schema."""
    required = set(schema.get("required", []))
    rows = ["| Field | Required | Type | Description |", "|---|---|---|---|"]
    for name, prop in schema.get("properties", {}).items():
        nested = ""
        if isinstance(prop.get("properties"), Mapping):
            inner = ", ".join(f"`{key}`" for key in prop["properties"])
            nested = f" Members: {inner}."
        rows.append(
            f"| `{name}` | {'yes' if name in required else 'no'} | "
            f"{_cell(_type_of(prop, link_prefix))} | {_cell(prop.get('description', ''))}"
            f"{_cell(nested)} |"
        )
    return "\n".join(rows) + "\n"


def _extra_rules(schema: Mapping[str, Any]) -> str:
    keys = [k for k in ("allOf", "oneOf", "anyOf", "if", "not", "dependentRequired") if k in schema]
    if not keys:
        return ""
    return (
        "Further constraints (" + ", ".join(f"`{k}`" for k in keys) + ") are in the "
        "[schema document](#schema).\n"
    )


def message_page(name: str) -> str:
    schema = _load(SCHEMAS / "messages" / f"{name}.json")
    examples_path = SCHEMAS / "examples" / f"{name}.json"
    examples = _load(examples_path) if examples_path.is_file() else {"valid": [], "invalid": []}
    out = [
        f"# `{name}`\n",
        f"**Direction:** {_direction(name)} · **Schema:** "
        f"[`{schema['$id']}`](../../schemas/v1/messages/{name}.json)\n",
        f"{schema.get('description', '')}\n",
        "## Fields\n",
        fields_table(schema, ""),
        _extra_rules(schema),
        "Unknown fields are ignored by the receiver (minor versions only add optional fields).\n"
        if schema.get("additionalProperties", True) is not False
        else "",
        "## Valid examples\n",
    ]
    for message in examples.get("valid", []):
        out.append(_json_block(message))
    out.append("## Invalid examples\n")
    invalid = examples.get("invalid", [])
    if not invalid:
        out.append("None recorded.\n")
    for case in invalid:
        out.append(f"**{case['description']}**\n")
        out.append(_json_block(case["message"]))
    out.append("## Schema\n")
    out.append(_json_block(schema))
    return "\n".join(out)


def schemas_index() -> str:
    rows = ["| Message | Direction | Description |", "|---|---|---|"]
    for name in _message_types():
        schema = _load(SCHEMAS / "messages" / f"{name}.json")
        rows.append(
            f"| [`{name}`]({name}.md) | {_direction(name)} | "
            f"{_cell(schema.get('description', ''))} |"
        )
    return (
        "# Messages\n\n"
        "Every Unisock v1 message is one JSON object in one WebSocket text frame, described by a "
        "JSON Schema (draft 2020-12) under `https://unisock.dev/schemas/v1/`. Each page below "
        "shows the fields of one message type, examples that validate and examples that must "
        "be rejected. The envelope schemas "
        "[`client-message.json`](../../schemas/v1/client-message.json) and "
        "[`server-message.json`](../../schemas/v1/server-message.json) select a type by its "
        "`type` field; [token claims](token-claims.md) and [shared definitions](defs.md) "
        "have their own pages.\n\n" + "\n".join(rows) + "\n"
    )


def token_claims_page() -> str:
    schema = _load(SCHEMAS / "token-claims.json")
    examples_path = SCHEMAS / "examples" / "token-claims.json"
    out = [
        "# Token claims\n",
        f"**Schema:** [`{schema['$id']}`](../../schemas/v1/token-claims.json)\n",
        f"{schema.get('description', '')}\n",
        "## Claims\n",
        fields_table(schema, ""),
    ]
    if examples_path.is_file():
        examples = _load(examples_path)
        out.append("## Valid examples\n")
        out.extend(_json_block(v, "token-claims") for v in examples.get("valid", []))
        out.append("## Invalid examples\n")
        for case in examples.get("invalid", []):
            out.append(f"**{case['description']}**\n")
            out.append(_json_block(case["message"]))
    return "\n".join(out)


def defs_page() -> str:
    defs = _load(SCHEMAS / "defs.json")["$defs"]
    out = [
        "# Shared definitions\n",
        "Definitions referenced by the message schemas "
        "([`defs.json`](../../schemas/v1/defs.json)).\n",
    ]
    for name, schema in defs.items():
        out.append(f"## `{name}` {{#{name}}}\n")
        if schema.get("description"):
            out.append(f"{schema['description']}\n")
        out.append(f"**Type:** {_type_of(schema, '')}\n")
        if "pattern" in schema:
            out.append(f"**Pattern:** `{schema['pattern']}`\n")
        if isinstance(schema.get("properties"), Mapping):
            out.append(fields_table(schema, ""))
    return "\n".join(out)


def event_types_page() -> str:
    out = [
        "# Event types\n",
        "Applications register a JSON Schema per event type; a server refuses a `publish` whose "
        "`data` does not match (`invalid_event_data`). These are the example types shipped "
        "with the reference server (`schemas/v1/events/`), which `unisock serve` loads by "
        "default.\n",
    ]
    for path in sorted((SCHEMAS / "events").glob("*.json")):
        schema = _load(path)
        out.append(f"## `{path.stem}`\n")
        out.append(f"{schema.get('description', '')}\n")
        out.append(fields_table(schema, "schemas/"))
        for example in schema.get("examples", []):
            out.append(_json_block(example))
    return "\n".join(out)


def error_codes_page() -> str:
    from unisock import specgen

    registry = _load(SCHEMAS / "registries" / "error-codes.json")
    return (
        "# Error codes\n\n"
        "An `error` reply names one of these codes; the connection stays open for every one of "
        f"them. Registry version {registry['version']}, machine-readable in "
        "[`registries/error-codes.json`](../schemas/v1/registries/error-codes.json). "
        "See also the [`error` message](schemas/error.md) and "
        "[section 12 of the specification](../spec/12-errors.md).\n\n"
        + specgen.error_code_table()
        + "\n"
    )


def close_codes_page() -> str:
    from unisock import specgen

    registry = _load(SCHEMAS / "registries" / "close-codes.json")
    return (
        "# Close codes\n\n"
        "Every close code belongs to a class that tells the client what to do next: `never` "
        "(do not reconnect), `new_token` (reconnect only with a new token), `backoff` "
        "(reconnect after the backoff delay) or `now` (reconnect at a random time within a "
        f"window). Registry version {registry['version']}, machine-readable in "
        "[`registries/close-codes.json`](../schemas/v1/registries/close-codes.json). See "
        "[reconnection and backoff](../topics/reconnection.md) for the reasoning and "
        "[section 9 of the specification](../spec/09-reconnection.md) for the rules.\n\n"
        + specgen.close_code_table()
        + "\n"
    )


def asyncapi_page() -> str:
    text = (SCHEMAS / "asyncapi.yaml").read_text(encoding="utf-8")
    return (
        "# AsyncAPI document\n\n"
        "The protocol as an AsyncAPI 3.0 document, for tools that generate clients or "
        "documentation: [download `asyncapi.yaml`](../schemas/v1/asyncapi.yaml). Message "
        "payloads refer to the JSON Schemas by relative path.\n\n"
        f"```yaml\n{text.rstrip()}\n```\n"
    )


# --------------------------------------------------------------------------------------------
# Command line


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            return [(name, helps.get(name, ""), sub) for name, sub in action.choices.items()]
    return []


def _argument_rows(parser: argparse.ArgumentParser) -> list[str]:
    rows = ["| Argument | Value | Default | Description |", "|---|---|---|---|"]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        if isinstance(action, argparse._VersionAction):
            rows.append(f"| `{', '.join(action.option_strings)}` | | | {_cell(action.help)} |")
            continue
        name = ", ".join(action.option_strings) or (action.metavar or action.dest)
        takes_value = action.nargs != 0
        metavar = action.metavar or action.dest.upper()
        value = f"`{metavar}`" if takes_value and action.option_strings else ""
        if isinstance(action, argparse._AppendAction):
            value += " (repeatable)"
        if action.nargs == "+":
            value = "one or more"
        default = action.default
        shown = "" if default in (None, [], False, argparse.SUPPRESS) else f"`{default}`"
        required = " (required)" if action.required and action.option_strings else ""
        rows.append(f"| `{name}` | {value} | {shown} | {_cell(action.help or '')}{required} |")
    return rows


def cli_page() -> str:
    from unisock.cli import build_parser

    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # argparse wraps usage lines to the terminal width
    try:
        parser = build_parser()
        out = [
            "# Command line\n",
            f"{parser.description}\n",
            f"```text\n{parser.format_usage().strip()}\n```\n",
            "\n".join(_argument_rows(parser)) + "\n",
        ]
        for name, help_text, sub in _subcommands(parser):
            out.append(f"## `unisock {name}`\n")
            out.append(f"{help_text[:1].upper()}{help_text[1:]}.\n")
            out.append(f"```text\n{sub.format_usage().strip()}\n```\n")
            out.append("\n".join(_argument_rows(sub)) + "\n")
    finally:
        if previous is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = previous
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# Python API

_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")
_LITERAL = re.compile(r"``([^`]+)``")


def _role(match: re.Match[str]) -> str:
    target = match.group(1)
    short = "~" in match.group(0)  # ``:class:`~a.b.C``` shows only ``C``
    return f"`{target.rsplit('.', 1)[-1] if short else target}`"


def rst_to_markdown(text: str) -> str:
    """Enough reStructuredText for the package's docstrings: roles, literals, ``::`` blocks."""
    text = _ROLE.sub(_role, text)
    text = _LITERAL.sub(r"`\1`", text)
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.rstrip().endswith("::"):
            out.append(line.rstrip()[:-1])
            block: list[str] = []
            i += 1
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith((" ", "\t"))):
                block.append(lines[i])
                i += 1
            code = textwrap.dedent("\n".join(block)).strip("\n")
            out.extend(["", "```python", code, "```", ""])
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


def attribute_docs(source: str, owner: str | None = None) -> dict[str, str]:
    """Attribute docstrings: a string literal right after an assignment (module or class)."""
    tree = ast.parse(source)
    body: list[ast.stmt] = tree.body
    if owner is not None:
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and node.name == owner:
                body = node.body
                break
        else:
            return {}
    docs: dict[str, str] = {}
    for node, following in itertools.pairwise(body):
        target: ast.expr | None = None
        if isinstance(node, ast.AnnAssign):
            target = node.target
        elif isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
        if (
            isinstance(target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[target.id] = inspect.cleandoc(following.value.value)
    return docs


def _signature(obj: Any) -> str:
    try:
        return str(inspect.signature(obj))
    except (TypeError, ValueError):
        return "(...)"


def _public_names(module: Any) -> list[str]:
    names = getattr(module, "__all__", None)
    if names is not None:
        return list(names)
    return sorted(
        name
        for name, obj in vars(module).items()
        if not name.startswith("_") and getattr(obj, "__module__", None) == module.__name__
    )


def _members(cls: type) -> Iterator[tuple[str, Any]]:
    for name, member in vars(cls).items():
        if name.startswith("_") and name != "__init__":
            continue
        if inspect.isfunction(member) or isinstance(member, classmethod | staticmethod | property):
            yield name, member


def _describe_member(cls: type, name: str, member: Any) -> str:
    if isinstance(member, property):
        doc = inspect.getdoc(member) or ""
        return f"- **`{name}`** (property) — {_first_paragraph(doc)}"
    func = member.__func__ if isinstance(member, classmethod | staticmethod) else member
    prefix = "async " if inspect.iscoroutinefunction(func) else ""
    doc = inspect.getdoc(func) or ""
    if name == "__init__":
        return ""
    return f"- **`{prefix}{name}{_signature(func)}`** — {_first_paragraph(doc)}"


def _first_paragraph(doc: str) -> str:
    return rst_to_markdown(doc.split("\n\n", 1)[0]).replace("\n", " ").strip()


def api_module_section(module: Any) -> str:
    source = inspect.getsource(module)
    attr_docs = attribute_docs(source)
    out = [f"## `{module.__name__}` {{#{module.__name__}}}\n"]
    if module.__doc__:
        out.append(rst_to_markdown(inspect.cleandoc(module.__doc__)) + "\n")
    for name in _public_names(module):
        obj = getattr(module, name)
        anchor = f"{module.__name__}.{name}"
        if inspect.isclass(obj):
            kind = "exception" if issubclass(obj, BaseException) else "class"
            bases = ", ".join(b.__name__ for b in obj.__bases__ if b is not object)
            out.append(f"### `{name}` {{#{anchor}}}\n")
            out.append(f"*{kind}*" + (f", based on `{bases}`" if bases else "") + "\n")
            has_init = not issubclass(obj, BaseException) and "__init__" in vars(obj)
            if has_init or dataclasses.is_dataclass(obj):
                out.append(f"```python\n{name}{_signature(obj)}\n```\n")
            doc = inspect.getdoc(obj)
            if doc and doc != inspect.getdoc(obj.__bases__[0]):
                out.append(rst_to_markdown(doc) + "\n")
            members = [_describe_member(obj, n, m) for n, m in _members(obj)]
            members = [m for m in members if m]
            if members:
                out.append("\n".join(members) + "\n")
        elif inspect.isfunction(obj):
            prefix = "async " if inspect.iscoroutinefunction(obj) else ""
            out.append(f"### `{name}()` {{#{anchor}}}\n")
            out.append(f"```python\n{prefix}def {name}{_signature(obj)}\n```\n")
            out.append(rst_to_markdown(inspect.getdoc(obj) or "") + "\n")
        else:
            out.append(f"### `{name}` {{#{anchor}}}\n")
            shown = repr(obj)
            if len(shown) > 200:
                shown = shown[:200] + "…"
            out.append(f"```python\n{name} = {shown}\n```\n")
            if name in attr_docs:
                out.append(rst_to_markdown(attr_docs[name]) + "\n")
    return "\n".join(out)


def python_api_page() -> str:
    import unisock

    skip = {"cli", "specgen", "resources", "wsframe", "metrics"}
    modules = [unisock]
    for info in sorted(pkgutil.iter_modules(unisock.__path__), key=lambda i: i.name):
        if info.name.startswith("_") or info.name in skip:
            continue
        modules.append(importlib.import_module(f"unisock.{info.name}"))
    listing = "\n".join(f"- [`{m.__name__}`](#{m.__name__})" for m in modules)
    return (
        "# Python API\n\n"
        "The public names of the `unisock` package, module by module, with their docstrings. "
        "Names listed in a module's `__all__` are public; everything else may change without "
        "notice. The [command line](cli.md) and the [configuration](configuration.md) have "
        "their own pages.\n\n"
        + listing
        + "\n\n"
        + "\n".join(api_module_section(m) for m in modules)
    )


# --------------------------------------------------------------------------------------------
# Configuration


def _flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, Mapping):
        for key, inner in value.items():
            yield from _flatten(inner, f"{prefix}.{key}" if prefix else key)
    else:
        yield prefix, value


def welcome_paths() -> dict[str, str]:
    """Which ``welcome`` member announces each integer setting, found by probing."""
    from unisock.config import ServerConfig

    probes: dict[str, int] = {}
    for number, field in enumerate(dataclasses.fields(ServerConfig)):
        if field.type in ("int", int) and isinstance(field.default, int):
            probes[field.name] = 7_000_001 + number
    payload = ServerConfig(**probes).welcome_payload()  # type: ignore[arg-type]
    by_value = {v: path for path, v in _flatten(payload) if isinstance(v, int)}
    return {name: by_value[value] for name, value in probes.items() if value in by_value}


def _default(field: dataclasses.Field[Any]) -> str:
    if field.default is not dataclasses.MISSING:
        value = field.default
        if isinstance(value, tuple):
            value = list(value)
        return f"`{json.dumps(value)}`"
    if field.default_factory is not dataclasses.MISSING:
        return f"`{json.dumps(field.default_factory())}`"
    return "required"


def configuration_page() -> str:
    from unisock import auth, config, settings

    server_docs = attribute_docs(inspect.getsource(config), "ServerConfig")
    auth_docs = attribute_docs(inspect.getsource(auth), "AuthConfig")
    announced = welcome_paths()
    rows = ["| Key | Type | Default | Meaning |", "|---|---|---|---|"]
    for field in dataclasses.fields(config.ServerConfig):
        meaning = server_docs.get(field.name, "")
        if field.name in announced:
            meaning = (meaning + " " if meaning else "") + (
                f"Announced in `welcome` as `{announced[field.name]}`."
            )
        rows.append(
            f"| `{field.name}` | `{_cell(field.type)}` | {_cell(_default(field))} | "
            f"{_cell(meaning)} |"
        )
    auth_rows = ["| Key | Type | Default | Meaning |", "|---|---|---|---|"]
    for field in dataclasses.fields(auth.AuthConfig):
        auth_rows.append(
            f"| `{field.name}` | `{_cell(field.type)}` | {_cell(_default(field))} | "
            f"{_cell(auth_docs.get(field.name, ''))} |"
        )
    settings_doc = rst_to_markdown(inspect.cleandoc(settings.__doc__ or ""))
    return (
        "# Configuration\n\n"
        "`unisock serve --config FILE` reads a TOML file with two tables, `[server]` and "
        "`[auth]`. Every key of `[server]` is a field of `ServerConfig`; every key of `[auth]` "
        "configures token verification. Unknown keys are refused at start-up.\n\n"
        "## The settings file\n\n"
        f"{settings_doc}\n\n"
        "## `[server]`\n\n"
        "Besides the keys below, `event_types_dir` names a folder of `<event type>.json` "
        "JSON Schemas relative to the settings file (default: the example "
        "[event types](event-types.md)).\n\n" + "\n".join(rows) + "\n\n"
        "## `[auth]`\n\n"
        'In the file, `public_keys` is a list of tables `{alg = "EdDSA", file = "key.pem"}` '
        "(PEM public keys, paths relative to the settings file). When `hs256_secret` is absent, "
        "the secret from `--secret` or `UNISOCK_SECRET` is used.\n\n" + "\n".join(auth_rows) + "\n"
    )


# --------------------------------------------------------------------------------------------
# Requirement coverage


def _report_results(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Test results of a conformance report: ``{"tests"|"results": [...]}`` entries."""
    raw = report.get("tests") or report.get("results") or []
    results = []
    for entry in raw:
        ids = entry.get("requirements") or entry.get("requirement_ids") or []
        if isinstance(ids, str):
            ids = [ids]
        results.append(
            {
                "test": entry.get("nodeid") or entry.get("name") or entry.get("test") or "?",
                "requirements": list(ids),
                "outcome": entry.get("outcome") or entry.get("status") or "?",
            }
        )
    return results


def matrix_section(matrix: Mapping[str, Any]) -> str:
    """The configuration matrix: the reference server graded under each valid configuration
    of ``tests/matrix/`` (MUST outcomes of a quick run each)."""
    rows = [
        "| Configuration | Options | Verdict | MUST pass | not run | unimplemented | failed |",
        "|---|---|---|---|---|---|---|",
    ]
    for entry in matrix["configurations"]:
        must = entry["must"]
        options = " ".join(f"`{option}`" for option in entry["options"])
        rows.append(
            f"| `{_cell(entry['configuration'])}` | {options} | {_cell(entry['verdict'])} | "
            f"{must['pass']} | {must['not-run']} | {must['unimplemented']} | {must['fail']} |"
        )
    return (
        "## Configuration matrix\n\n"
        "The reference server under each configuration of `tests/matrix/`, graded by the "
        f"{matrix['profile']} profile with every operator hook except a second node and a broker "
        "outage (CI runs the same matrix). A MUST not run names the option that runs it in "
        "the suite's summary.\n\n" + "\n".join(rows) + "\n\n## Requirements\n\n"
    )


def coverage_page(report_path: Path) -> str:
    registry = _load(SPEC / "requirements.json")["requirements"]
    live = [entry for entry in registry if not entry.get("removed_in")]
    head = (
        "# Requirement coverage\n\n"
        "Each requirement of the [specification](../spec/index.md), the conformance tests "
        "that check it, and their outcome in the last recorded run against the reference "
        "server.\n\n"
    )
    if not report_path.is_file():
        rows = ["| Requirement | Level | Role | Section | Summary |", "|---|---|---|---|---|"]
        for entry in live:
            rows.append(
                f"| `{entry['id']}` | {entry['level']} | {entry['role']} | "
                f"[{entry['section']}](../spec/{entry['section']}.md) | {_cell(entry['summary'])} |"
            )
        counts = {lvl: sum(e["level"] == lvl for e in live) for lvl in ("MUST", "SHOULD", "MAY")}
        return head + (
            '!!! note "No conformance run is recorded"\n'
            "    This build found no `docs/_data/conformance-report.json`. The "
            "requirements are listed without tests or outcomes.\n\n"
            f"{len(live)} requirements: {counts['MUST']} MUST, {counts['SHOULD']} SHOULD, "
            f"{counts['MAY']} MAY.\n\n" + "\n".join(rows) + "\n"
        )
    report = _load(report_path)
    if isinstance(report.get("requirements"), list):
        client_path = report_path.with_name("client-conformance-report.json")
        client = _load(client_path) if client_path.is_file() else None
        matrix_path = report_path.with_name("conformance-matrix.json")
        matrix = matrix_section(_load(matrix_path)) if matrix_path.is_file() else ""
        return head + matrix + _graded_coverage(live, report, client)
    results = _report_results(report)
    by_id: dict[str, list[dict[str, Any]]] = {}
    for result in results:
        for ident in result["requirements"]:
            by_id.setdefault(ident, []).append(result)
    meta = [
        f"- **{_cell(key)}:** {_cell(report[key])}"
        for key in ("target", "server", "suite_version", "spec_version", "generated_at", "seed")
        if key in report
    ]
    rows = ["| Requirement | Level | Tests | Outcome |", "|---|---|---|---|"]
    untested_must = 0
    for entry in live:
        tests = by_id.get(entry["id"], [])
        if not tests and entry["level"] == "MUST":
            untested_must += 1
        outcomes = sorted({str(t["outcome"]) for t in tests}) or ["no test"]
        names = "<br> ".join(f"`{_cell(t['test'])}`" for t in tests) or "—"
        rows.append(
            f"| [`{entry['id']}`](../spec/{entry['section']}.md) | {entry['level']} | {names} | "
            f"{', '.join(outcomes)} |"
        )
    return head + (
        ("\n".join(meta) + "\n\n" if meta else "")
        + f"{len(results)} tests; {untested_must} MUST requirements without a test.\n\n"
        + "\n".join(rows)
        + "\n"
    )


def _graded_coverage(
    live: list[Mapping[str, Any]],
    server: Mapping[str, Any],
    client: Mapping[str, Any] | None,
) -> str:
    """Per-requirement outcomes from the suites' own reports (server, and client if present).

    A server run grades client-role requirements ``not-applicable``; the client suite's report,
    when recorded, supplies those.
    """
    graded = {entry["id"]: entry for entry in server["requirements"]}
    if client is not None:
        for entry in client.get("requirements", []):
            if entry.get("role") == "client" or graded.get(entry["id"], {}).get("outcome") in (
                None,
                "not-applicable",
                "untested",
            ):
                graded[entry["id"]] = entry
    rows = ["| Requirement | Level | Role | Checks | Outcome |", "|---|---|---|---|---|"]
    tally: dict[str, int] = {}
    for entry in live:
        found = graded.get(entry["id"], {})
        outcome = str(found.get("outcome", "untested"))
        if entry["level"] == "MUST":
            tally[outcome] = tally.get(outcome, 0) + 1
        tests = [
            str(t) if not isinstance(t, Mapping) else str(t.get("nodeid") or t.get("name"))
            for t in found.get("tests", [])
        ]
        names = "<br> ".join(f"`{_cell(name)}`" for name in tests[:6]) or "—"
        if len(tests) > 6:
            names += f"<br>and {len(tests) - 6} more"
        rows.append(
            f"| [`{entry['id']}`](../spec/{entry['section']}.md) | {entry['level']} | "
            f"{entry['role']} | {names} | {outcome} |"
        )
    target = server.get("target", {})
    url = target.get("url", "?") if isinstance(target, Mapping) else target
    run = server.get("run", {})
    runs = [
        f"- **server suite:** `{_cell(str(url))}`, seed {run.get('seed', '?')}, "
        f"profile {run.get('profile', '?')}"
    ]
    if client is not None:
        runs.append("- **client suite:** the reference client through `unisock client-adapter`")
    summary = ", ".join(f"{count} {outcome}" for outcome, count in sorted(tally.items()))
    return (
        "\n".join(runs)
        + f"\n\nMUST requirements by outcome: {summary}.\n\n"
        + "\n".join(rows)
        + "\n"
    )


# --------------------------------------------------------------------------------------------
# Benchmarks


def svg_line_plot(series: list[Mapping[str, Any]], x_label: str, y_label: str) -> str:
    """A dependency-free SVG line plot of ``[{"name", "points": [[x, y], ...]}]``."""
    width, height, pad = 640, 320, 48
    points = [(float(x), float(y)) for s in series for x, y in s["points"]]
    if not points:
        return ""
    x_min, x_max = min(p[0] for p in points), max(p[0] for p in points)
    y_min, y_max = 0.0, max(p[1] for p in points) or 1.0
    x_span = (x_max - x_min) or 1.0

    def sx(x: float) -> float:
        return pad + (x - x_min) / x_span * (width - 2 * pad)

    def sy(y: float) -> float:
        return height - pad - (y - y_min) / (y_max - y_min) * (height - 2 * pad)

    colours = ["#3f51b5", "#e91e63", "#009688", "#ff9800", "#795548"]
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{html.escape(y_label)} by {html.escape(x_label)}">',
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" '
        'stroke="currentColor"/>',
        f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="currentColor"/>',
        f'<text x="{width / 2}" y="{height - 8}" text-anchor="middle" font-size="12" '
        f'fill="currentColor">{html.escape(x_label)}</text>',
        f'<text x="12" y="{height / 2}" font-size="12" fill="currentColor" '
        f'transform="rotate(-90 12 {height / 2})" text-anchor="middle">'
        f"{html.escape(y_label)}</text>",
        f'<text x="{pad - 4}" y="{pad}" text-anchor="end" font-size="10" fill="currentColor">'
        f"{y_max:g}</text>",
    ]
    for index, entry in enumerate(series):
        colour = colours[index % len(colours)]
        path = " ".join(f"{sx(float(x)):.1f},{sy(float(y)):.1f}" for x, y in entry["points"])
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{path}"/>')
        parts.append(
            f'<text x="{width - pad}" y="{pad + 14 * index}" text-anchor="end" font-size="12" '
            f'fill="{colour}">{html.escape(str(entry.get("name", "")))}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def bench_summary(results_dir: Path, images: str) -> str:
    """``summary.md`` below a second-level heading, its plots served from ``images``."""
    path = results_dir / "summary.md"
    if not path.is_file():
        return "No peer benchmark results yet: run `python -m bench run`.\n"
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"^(#+) ", r"#\1 ", text, flags=re.MULTILINE)
    return re.sub(r"\]\(([\w.-]+\.(?:svg|png))\)", lambda m: f"]({images}{m.group(1)})", text)


def benchmarks_page(results_dir: Path) -> str:
    head = (
        "# Benchmarks\n\n"
        "Results of the benchmarks in `bench/`, included as they were when this site was "
        "built.\n\n"
    )
    files = [
        path
        for path in sorted(results_dir.glob("*.md")) + sorted(results_dir.glob("*.json"))
        if path.name not in BENCH_SUMMARY
    ]
    if (results_dir / "summary.md").is_file():
        head += (
            "The peer benchmarks (Unisock against socket.io, ws, python-socketio and bare "
            "`websockets`) are on the [performance](../topics/performance.md) page.\n\n"
        )
    if not files:
        return head + "No benchmark results yet: `bench/results/` holds none.\n"
    out = [head]
    for path in files:
        out.append(f"## `{path.name}`\n")
        if path.suffix == ".md":
            text = path.read_text(encoding="utf-8")
            # Demote headings so they sit below this page's title.
            out.append(re.sub(r"^(#+) ", r"#\1 ", text, flags=re.MULTILINE))
            continue
        data = _load(path)
        if isinstance(data, Mapping) and isinstance(data.get("series"), list):
            svg = svg_line_plot(
                data["series"], str(data.get("x_label", "x")), str(data.get("y_label", "y"))
            )
            if data.get("title"):
                out.append(f"{data['title']}\n")
            out.append(f'<div class="unisock-plot" markdown="0">{svg}</div>\n')
        out.append(f"```json\n{json.dumps(data, indent=2)}\n```\n")
    return "\n".join(out)
