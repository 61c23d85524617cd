"""The documentation's commands and messages work, and the site builds with its generated pages.

Every fenced block in ``docs/**/*.md`` that is a message or a ``unisock`` command is checked:
```json blocks validate against the message schemas (or the schema named by a preceding
``<!-- schema: NAME -->`` comment); ``unisock`` commands in ```console / ```bash blocks are run
when they need no server, and parsed by :func:`unisock.cli.build_parser` otherwise. A block
preceded by ``<!-- test: skip (reason) -->`` is exempt; ``<!-- test: parse (reason) -->``
only parses its commands.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import io
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import jwt
import pytest

from unisock import schemas
from unisock.cli import build_parser, main
from unisock.config import ServerConfig

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
RUNNABLE = {"token", "validate"}
"""Subcommands that need no server: the tests run them instead of only parsing them."""

FENCE = re.compile(r"^(\s*)(`{3,})\s*([\w+-]*)")
COMMENT = re.compile(r"^<!--\s*(schema|test):\s*(.*?)\s*-->$")


@dataclass(frozen=True)
class Block:
    """One fenced block: where it is, its language, text and the directive before it."""

    path: Path
    line: int
    lang: str
    text: str
    directive: tuple[str, str] | None

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    def said(self, kind: str) -> str | None:
        """The text of a ``<!-- kind: ... -->`` directive before the block, if any."""
        if self.directive is not None and self.directive[0] == kind:
            return self.directive[1]
        return None


def doc_pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if "node_modules" not in p.parts)


def fenced_blocks(path: Path) -> list[Block]:
    """Top-level fenced blocks of a Markdown file with the HTML comment right before them."""
    blocks: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    previous = ""
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if match is None:
            if lines[i].strip():
                previous = lines[i].strip()
            i += 1
            continue
        indent, ticks, lang = match.groups()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(ticks):
            body.append(lines[i][len(indent) :])
            i += 1
        directive_match = COMMENT.match(previous)
        directive = (directive_match[1], directive_match[2]) if directive_match else None
        blocks.append(Block(path, start + 1, lang, "\n".join(body), directive))
        previous = ""
        i += 1
    return blocks


ALL_BLOCKS = [block for page in doc_pages() for block in fenced_blocks(page)]
JSON_BLOCKS = [b for b in ALL_BLOCKS if b.lang == "json"]
SHELL_BLOCKS = [b for b in ALL_BLOCKS if b.lang in ("console", "bash", "shell", "sh")]


def shell_commands(block: Block) -> list[list[str]]:
    """The ``unisock`` commands of a block: ``$ `` lines in console blocks, every line in bash."""
    text = block.text.replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        stripped = line.strip()
        if block.lang == "console":
            if not stripped.startswith("$ "):
                continue
            stripped = stripped[2:]
        if not stripped or stripped.startswith("#"):
            continue
        argv = shlex.split(stripped)
        if argv and argv[0] == "unisock":
            commands.append(argv[1:])
    return commands


def _skipped(block: Block) -> bool:
    return (block.said("test") or "").startswith("skip")


PARSE_BLOCKS = [b for b in SHELL_BLOCKS if shell_commands(b) and not _skipped(b)]
RUN_BLOCKS = [
    b
    for b in SHELL_BLOCKS
    if b.said("test") is None and any(argv[0] in RUNNABLE for argv in shell_commands(b) if argv)
]


def console_output(block: Block) -> list[str]:
    return [ln for ln in block.text.splitlines() if ln.strip() and not ln.startswith("$ ")]


def message_errors(value: Any) -> list[str]:
    """Schema errors of a wire message (client or server); ``ping``/``pong`` may be either."""
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        return ["not a message: name its schema with <!-- schema: NAME -->"]
    kind = value["type"]
    if kind in schemas.CLIENT_MESSAGE_TYPES:
        errors = schemas.validate_client_message(value)
        if not errors or kind not in schemas.SERVER_MESSAGE_TYPES:
            return errors
    return schemas.validate_server_message(value)


def json_values(text: str) -> list[Any]:
    """A block holds one JSON document, or one per line (JSON Lines)."""
    try:
        return [json.loads(text)]
    except json.JSONDecodeError:
        return [json.loads(line) for line in text.splitlines() if line.strip()]


def run_cli(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            code = main(argv)
        except SystemExit as exit_:
            code = int(exit_.code or 0)
    return code, out.getvalue()


# --------------------------------------------------------------------------------------------
# Blocks in the hand-written pages


def test_docs_have_blocks_to_check() -> None:
    assert len(JSON_BLOCKS) >= 2
    assert sum(len(shell_commands(b)) for b in SHELL_BLOCKS) >= 8
    assert len(RUN_BLOCKS) >= 3


@pytest.mark.parametrize("block", JSON_BLOCKS, ids=[b.where for b in JSON_BLOCKS])
def test_docs_json_block_is_a_valid_message(block: Block) -> None:
    test = block.said("test")
    if test is not None:
        assert test.startswith("skip"), "json blocks may only be skipped"
        pytest.skip(test)
    schema = block.said("schema")
    for value in json_values(block.text):
        if schema is not None:
            errors = [e.message for e in schemas.validator_for(schema).iter_errors(value)]
        else:
            errors = message_errors(value)
        assert errors == [], block.where


@pytest.mark.parametrize("block", PARSE_BLOCKS, ids=[b.where for b in PARSE_BLOCKS])
def test_docs_unisock_commands_parse(block: Block) -> None:
    parser = build_parser()
    for argv in shell_commands(block):
        if argv[:1] in (["--version"], ["--help"]):
            continue
        parser.parse_args(argv)  # argparse exits (a test error) on a bad command


@pytest.mark.parametrize("block", RUN_BLOCKS, ids=[b.where for b in RUN_BLOCKS])
def test_docs_unisock_commands_without_server_run(block: Block) -> None:
    commands = [argv for argv in shell_commands(block) if argv[:1] and argv[0] in RUNNABLE]
    for argv in commands:
        code, output = run_cli(argv)
        assert code == 0, f"{block.where}: unisock {shlex.join(argv)}"
        if argv[0] == "token":
            args = build_parser().parse_args(argv)
            claims = jwt.decode(output.strip(), args.secret, algorithms=["HS256"])
            assert (claims["tenant"], claims["sub"]) == (args.tenant, args.sub)
            assert claims["grants"]["subscribe"] == args.subscribe
            shown = console_output(block)
            assert all(line.startswith("eyJ") for line in shown), block.where


def test_docs_skip_directives_give_a_reason() -> None:
    for block in ALL_BLOCKS:
        test = block.said("test")
        if test is not None:
            verb, _, reason = test.partition(" ")
            assert verb in ("skip", "parse"), block.where
            assert reason.strip("() "), f"{block.where}: say why the block is exempt"


def test_docs_parse_directive_is_only_used_for_commands_that_need_a_server() -> None:
    for block in SHELL_BLOCKS:
        if (block.said("test") or "").startswith("parse"):
            assert all(argv[0] not in RUNNABLE for argv in shell_commands(block)), block.where


def test_fenced_blocks_read_directive_and_language(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        'Text.\n\n<!-- schema: filter -->\n```json\n{"exists": "x"}\n```\n\n'
        "```console\n$ unisock token --secret s --tenant a --sub b\neyJ\n```\n",
        encoding="utf-8",
    )
    blocks = fenced_blocks(page)
    assert [(b.lang, b.directive) for b in blocks] == [
        ("json", ("schema", "filter")),
        ("console", None),
    ]
    assert shell_commands(blocks[1]) == [["token", "--secret", "s", "--tenant", "a", "--sub", "b"]]


def test_message_errors_reject_an_invalid_message() -> None:
    assert message_errors({"type": "subscribe", "channel": "tasks.>"}) != []
    assert message_errors({"type": "ping"}) == []
    assert message_errors([1, 2]) != []


# --------------------------------------------------------------------------------------------
# The build hook


def load_hook() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_generate", DOCS / "hooks" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def hook() -> ModuleType:
    return load_hook()


def test_coverage_page_without_report_lists_every_requirement(
    hook: ModuleType, tmp_path: Path
) -> None:
    page = hook.coverage_page(tmp_path / "missing.json")
    registry = json.loads((ROOT / "spec" / "requirements.json").read_text(encoding="utf-8"))
    assert "No conformance run is recorded" in page
    for entry in registry["requirements"]:
        if not entry.get("removed_in"):
            assert f"`{entry['id']}`" in page


def test_coverage_page_maps_requirements_to_tests_and_outcomes(
    hook: ModuleType, tmp_path: Path
) -> None:
    report = tmp_path / "report.json"
    report.write_text(
        json.dumps(
            {
                "target": "ws://127.0.0.1:8765/",
                "tests": [
                    {
                        "nodeid": "checks/test_a.py::test_one",
                        "requirements": ["UNI-TR-1"],
                        "outcome": "pass",
                    },
                    {
                        "nodeid": "checks/test_b.py::test_two",
                        "requirements": ["UNI-TR-1"],
                        "outcome": "fail",
                    },
                ],
            }
        ),
        encoding="utf-8",
    )
    page = hook.coverage_page(report)
    row = next(line for line in page.splitlines() if "`UNI-TR-1`" in line)
    assert "test_one" in row and "test_two" in row and "fail, pass" in row
    assert "ws://127.0.0.1:8765/" in page
    assert "No conformance run is recorded" not in page


def test_benchmarks_page_says_none_yet_without_results(hook: ModuleType, tmp_path: Path) -> None:
    assert "No benchmark results yet" in hook.benchmarks_page(tmp_path)


def test_benchmarks_page_includes_markdown_and_plots_series(
    hook: ModuleType, tmp_path: Path
) -> None:
    (tmp_path / "fanout.md").write_text("# Fan-out\n\n| n | ms |\n|---|---|\n", encoding="utf-8")
    (tmp_path / "latency.json").write_text(
        json.dumps(
            {
                "x_label": "clients",
                "y_label": "p99 ms",
                "series": [{"name": "memory", "points": [[1, 2.0], [10, 3.5]]}],
            }
        ),
        encoding="utf-8",
    )
    page = hook.benchmarks_page(tmp_path)
    assert "## Fan-out" in page and "<polyline" in page and "p99 ms" in page


def test_performance_page_shows_peer_benchmark_summary_with_its_plots(
    hook: ModuleType, tmp_path: Path
) -> None:
    assert "No peer benchmark results yet" in hook.bench_summary(tmp_path, "../bench/")
    (tmp_path / "summary.md").write_text("# Peers\n\n![fan-out](s1.svg)\n", encoding="utf-8")
    (tmp_path / "suite.json").write_text("{}", encoding="utf-8")
    text = hook.bench_summary(tmp_path, "../bench/")
    assert "## Peers" in text and "](../bench/s1.svg)" in text
    page = hook.benchmarks_page(tmp_path)
    # The summary lives on the performance page; the benchmarks page links there instead.
    assert "performance.md" in page and "## `suite.json`" not in page


def test_cli_page_documents_every_subcommand_and_option(hook: ModuleType) -> None:
    page = hook.cli_page()
    parser = build_parser()
    for name, _help, sub in hook._subcommands(parser):
        assert f"## `unisock {name}`" in page
        for action in sub._actions:
            if action.dest == "help":
                continue
            for option in action.option_strings:
                assert f"`{option}" in page or f", {option}" in page, option


def test_configuration_page_lists_every_server_setting(hook: ModuleType) -> None:
    page = hook.configuration_page()
    for field in dataclasses.fields(ServerConfig):
        assert f"| `{field.name}` |" in page
    assert "Announced in `welcome` as `heartbeat.interval_ms`" in page


def test_rst_roles_and_literal_blocks_become_markdown(hook: ModuleType) -> None:
    text = "See :class:`~unisock.config.ServerConfig` and ``x``.\n\nUse::\n\n    a = 1\n"
    converted = hook.rst_to_markdown(text)
    assert "`ServerConfig`" in converted and "`x`" in converted
    assert "```python\na = 1\n```" in converted


def test_message_pages_show_fields_and_examples(hook: ModuleType) -> None:
    page = hook.message_page("subscribe")
    assert "| `channel` | yes |" in page
    assert "## Valid examples" in page and "## Invalid examples" in page


def test_site_builds_strictly_with_generated_pages(tmp_path: Path) -> None:
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    for kind in schemas.ALL_MESSAGE_TYPES:
        assert (site / "reference" / "schemas" / kind / "index.html").is_file(), kind
    for page in ("cli", "python-api", "configuration", "coverage", "error-codes", "close-codes"):
        assert (site / "reference" / page / "index.html").is_file(), page
    for spec_page in (ROOT / "spec").glob("[0-9][0-9]-*.md"):
        assert (site / "spec" / spec_page.stem / "index.html").is_file(), spec_page.name
    assert not (site / "hooks").exists()
    assert not list(DOCS.glob("spec")), "generated pages must not be written into docs/"
