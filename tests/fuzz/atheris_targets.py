"""Coverage-guided fuzzing (atheris, libFuzzer) of the message parser and the filter compiler.

``python tests/fuzz/atheris_targets.py parser|filter [libFuzzer options]``, for example
``-max_total_time=300 -rss_limit_mb=2048``. Needs the optional ``fuzz`` extra
(``pip install -e '.[fuzz]'``). A target fails (and libFuzzer saves the input as a crash
file) when anything but the typed error escapes, or when a filter evaluates to a non-bool.
Crashes found are turned into cases of ``tests/fuzz/corpus.json``.
"""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Any

import atheris

from unisock import jsonlimits
from unisock.errors import RequestError
from unisock.filters import FilterError, compile_filter, evaluate
from unisock.messages import parse_client_message


def parser(data: bytes) -> None:
    """Any text: a client message or a ``RequestError``, never anything else."""
    try:
        text = data.decode("utf-8")  # the WebSocket layer closes 1007 on anything else
    except UnicodeDecodeError:
        return
    with contextlib.suppress(RequestError):
        parse_client_message(text, max_filter_nodes=32)


def filter_compiler(data: bytes) -> None:
    """Any JSON value within the limits: a compiled filter that evaluates to a bool, or
    ``FilterError``."""
    fdp = atheris.FuzzedDataProvider(data)
    try:
        value: Any = jsonlimits.loads(fdp.ConsumeUnicodeNoSurrogates(fdp.remaining_bytes() // 2))
        attrs = jsonlimits.loads(fdp.ConsumeUnicodeNoSurrogates(fdp.remaining_bytes()))
    except jsonlimits.JsonLimitError:
        return
    try:
        compiled = compile_filter(value)
    except FilterError:
        return
    result = evaluate(compiled, "t.e", attrs if isinstance(attrs, dict) else {})
    assert isinstance(result, bool), result
    json.dumps(compiled.source)


TARGETS = {"parser": parser, "filter": filter_compiler}

if __name__ == "__main__":
    name, *rest = sys.argv[1:] or ["parser"]
    atheris.instrument_all()  # the editable install's loader defeats instrument_imports
    atheris.Setup([sys.argv[0], *rest], TARGETS[name])
    atheris.Fuzz()
