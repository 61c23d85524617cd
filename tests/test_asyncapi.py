"""schemas/v1/asyncapi.yaml is a valid AsyncAPI 3.0 document that covers the whole protocol.

The document is checked by the official ``@asyncapi/parser`` (pinned in
tests/asyncapi/package.json), installed with ``npm ci --prefix tests/asyncapi``.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from unisock import schemas

REPO = Path(__file__).resolve().parent.parent
HELPER = REPO / "tests" / "asyncapi"
DOCUMENT = REPO / "schemas" / "v1" / "asyncapi.yaml"
INSTALL = "npm ci --prefix tests/asyncapi"


def load_document() -> Any:
    with DOCUMENT.open(encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def run_parser(document: Path) -> subprocess.CompletedProcess[str]:
    node = shutil.which("node")
    if node is None:
        pytest.fail(f"node is not installed; install Node.js 20+ and run `{INSTALL}`")
    if not (HELPER / "node_modules" / "@asyncapi" / "parser").is_dir():
        pytest.fail(f"the AsyncAPI parser is not installed; run `{INSTALL}`")
    return subprocess.run(
        [node, str(HELPER / "parse.mjs"), str(document)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_asyncapi_document_parses_without_error_diagnostics() -> None:
    result = run_parser(DOCUMENT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK:" in result.stdout


def test_asyncapi_parser_reports_a_broken_schema_reference(tmp_path: Path) -> None:
    """The check is live: a payload $ref to a missing file is an error diagnostic."""
    broken = tmp_path / "asyncapi.yaml"
    text = DOCUMENT.read_text(encoding="utf-8")
    assert "./messages/hello.json" in text
    broken.write_text(text.replace("./messages/hello.json", "./messages/absent.json"))
    result = run_parser(broken)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "error:" in result.stdout


def test_asyncapi_document_is_version_3_0_0_over_the_unisock_subprotocol() -> None:
    document = load_document()
    assert document["asyncapi"] == "3.0.0"
    assert document["info"]["version"] == "1.0.0"
    servers = document["servers"]
    assert len(servers) == 1
    (server,) = servers.values()
    assert server["protocol"] == "ws"
    assert "unisock.v1" in server["description"]


def test_asyncapi_document_describes_every_message_type_by_its_schema() -> None:
    messages = load_document()["components"]["messages"]
    by_name = {message["name"]: message for message in messages.values()}
    assert set(by_name) == set(schemas.ALL_MESSAGE_TYPES)
    for name, message in by_name.items():
        assert message["payload"]["schema"]["$ref"] == f"./messages/{name}.json"


def test_asyncapi_operations_match_the_message_directions() -> None:
    document = load_document()
    messages = document["components"]["messages"]
    channel_messages = document["channels"]["session"]["messages"]
    received: set[str] = set()
    sent: set[str] = set()
    for operation in document["operations"].values():
        for reference in operation["messages"]:
            key = reference["$ref"].rsplit("/", 1)[-1]
            component = channel_messages[key]["$ref"].rsplit("/", 1)[-1]
            name = messages[component]["name"]
            (received if operation["action"] == "receive" else sent).add(name)
    assert received == set(schemas.CLIENT_MESSAGE_TYPES)
    assert sent == set(schemas.SERVER_MESSAGE_TYPES)


def test_asyncapi_document_lists_every_example_event_type() -> None:
    components = load_document()["components"]["schemas"]
    listed = {entry["schema"]["$ref"] for entry in components.values()}
    events = {f"./events/{path.name}" for path in (schemas.SCHEMA_ROOT / "events").glob("*.json")}
    assert events
    assert listed == events
