"""The task board backend: the reference server with a demo login, a snapshot API and pages.

One process serves the page, mints tokens for the demo users of tenants ``acme`` and
``globex``, and runs the Unisock server on the same port. It is also the board's
broadcaster: it listens to every sequenced event (tasks, forms) to keep the store, and
publishes each user's tutorial progress to their private channel ``$me.tutorial``.
"""

from __future__ import annotations

import asyncio
import json
import mimetypes
import time
import uuid
from collections.abc import Mapping
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from taskboard.store import Store
from unisock.auth import AuthConfig, Identity, mint_token
from unisock.broker import ChannelKey, PublishRecord, StoredEvent
from unisock.config import ServerConfig
from unisock.errors import AuthFailed
from unisock.server import UnisockServer
from unisock.settings import DEFAULT_EVENT_TYPES_DIR, Settings, load_event_types

__all__ = ["DEMO_SECRET", "USERS", "Taskboard"]

USERS: Mapping[str, str] = {"alice": "acme", "bob": "acme", "carol": "globex", "dave": "globex"}
"""Demo users and their tenants; a real application takes both from its own login."""
DEMO_SECRET = "taskboard-demo-secret-do-not-use-in-production-0123456789"
TOKEN_TTL_S = 900
WEB = Path(__file__).resolve().parent.parent / "web"
STATIC = {"/": "index.html", "/app.js": "dist/app.js", "/app.css": "app.css"}


def _json(status: HTTPStatus, body: Any) -> Response:
    return _response(status, json.dumps(body).encode(), "application/json")


def _response(status: HTTPStatus, body: bytes, content_type: str) -> Response:
    headers = Headers()
    headers["Content-Type"] = content_type
    headers["Content-Length"] = str(len(body))
    headers["Cache-Control"] = "no-store"
    headers["Connection"] = "close"
    return Response(status.value, status.phrase, headers, body)


class Taskboard:
    """The backend of one deployment: server, store and HTTP routes on one port."""

    def __init__(self, data_dir: Path, port: int, *, secret: str = DEMO_SECRET) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(data_dir / "taskboard.sqlite3")
        self.secret = secret
        self.port = port
        origins = (f"http://127.0.0.1:{port}", f"http://localhost:{port}")
        config = ServerConfig(
            heartbeat_interval_ms=10_000,
            heartbeat_timeout_ms=5_000,
            backoff_base_ms=500,
            backoff_cap_ms=8_000,
            allowed_origins=origins,
            coalescing_channels=("tasks.>",),
            event_types=load_event_types(DEFAULT_EVENT_TYPES_DIR),
        )
        settings = Settings(server=config, auth=AuthConfig(hs256_secret=secret))
        self.server = UnisockServer(settings, http=self.http)
        self.server.broker.add_listener(self.on_event)
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, host: str = "127.0.0.1") -> None:
        await self.server.start(host, self.port)

    async def close(self) -> None:
        await self.server.close()
        self.store.close()

    # -- HTTP -----------------------------------------------------------------------------------

    def http(self, connection: ServerConnection, request: Request) -> Response | None:
        """Pages and the JSON API; WebSocket upgrades go on to the Unisock server."""
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return None
        url = urlsplit(request.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path in STATIC:
            return self._static(WEB / STATIC[url.path])
        if url.path == "/api/token":
            return self._token(query)
        identity = self._identity(request)
        if identity is None:
            return _json(HTTPStatus.UNAUTHORIZED, {"error": "a valid bearer token is required"})
        if url.path == "/api/snapshot":
            return _json(HTTPStatus.OK, self.snapshot(identity))
        if url.path == "/api/simulate":
            self._spawn(self.rapid_updates(identity, query.get("task", "")))
            return _json(HTTPStatus.ACCEPTED, {"started": True})
        return _json(HTTPStatus.NOT_FOUND, {"error": "no such resource"})

    def _static(self, path: Path) -> Response:
        if not path.is_file():
            return _json(HTTPStatus.NOT_FOUND, {"error": "not built: run make demo"})
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return _response(HTTPStatus.OK, path.read_bytes(), f"{kind}; charset=utf-8")

    def _token(self, query: Mapping[str, str]) -> Response:
        """The demo login: a token for a listed user, scoped to the user's tenant."""
        user = query.get("user", "")
        tenant = USERS.get(user)
        if tenant is None:
            return _json(HTTPStatus.FORBIDDEN, {"error": "unknown user"})
        sid = query.get("sid") or uuid.uuid4().hex
        token = mint_token(
            self.secret,
            tenant,
            user,
            subscribe=["tasks.>", "forms.>"],
            publish=["tasks.*", "forms.*"],
            ttl_s=TOKEN_TTL_S,
            sid=sid[:128],
        )
        users = sorted(name for name, t in USERS.items() if t == tenant)
        return _json(
            HTTPStatus.OK, {"token": token, "user": user, "tenant": tenant, "users": users}
        )

    def _identity(self, request: Request) -> Identity | None:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return None
        try:
            return self.server.verifier.verify(header.removeprefix("Bearer "), time.time())
        except AuthFailed:
            return None

    def snapshot(self, identity: Identity) -> dict[str, Any]:
        """What a page loads first, and again after a resync."""
        return {
            "tasks": self.store.tasks(identity.tenant),
            "tutorial": self.store.progress(identity.tenant, identity.sub),
            "forms": self.store.form_count(identity.tenant),
        }

    # -- events ---------------------------------------------------------------------------------

    def on_event(self, event: StoredEvent) -> None:
        """Every sequenced event, in offset order per channel: keep the store current."""
        record = event.record
        tenant, name = record.key.tenant, record.key.name
        if tenant is None or not isinstance(record.data, dict):
            return
        data: dict[str, Any] = record.data
        by = record.publisher_sub
        if name.startswith("tasks.") and record.event_type == "task.created":
            self.store.create(tenant, data)
            self._progress(tenant, by, "create_task")
        elif name.startswith("tasks.") and record.event_type == "task.updated":
            self.store.update(tenant, data)
            status = data.get("changes", {}).get("status")
            if status == "in_progress":
                self._progress(tenant, by, "start_task")
            elif status == "done":
                self._progress(tenant, by, "finish_task")
        elif name.startswith("forms.") and record.event_type == "form.submitted":
            fields = json.dumps(data.get("fields", {}))
            self.store.add_form(tenant, record.message_id, by, fields)
            self._progress(tenant, by, "send_feedback")

    def _progress(self, tenant: str, sub: str, step: str) -> None:
        if sub not in USERS or not self.store.complete(tenant, sub, step):
            return
        done = self.store.progress(tenant, sub)
        data = {"step": step, "completed": done}
        self._spawn(self.publish(tenant, "$me.tutorial", "tutorial.progress", data, owner=sub))

    async def publish(
        self,
        tenant: str,
        channel: str,
        event_type: str,
        data: Any,
        *,
        owner: str | None = None,
        key: str | None = None,
        attrs: Mapping[str, Any] | None = None,
    ) -> None:
        """Publish from the backend through the library: sequenced like any other event."""
        record = PublishRecord(
            key=ChannelKey(tenant, owner, channel),
            event_type=event_type,
            data=data,
            message_id=uuid.uuid4().hex,
            attrs=dict(attrs) if attrs is not None else None,
            to=None,
            exclude=None,
            exclude_self=False,
            coalesce_key=key,
            publisher_sub="taskboard",
            publisher_connection="",
        )
        await self.server.broker.publish(record)

    async def rapid_updates(self, identity: Identity, task_id: str, count: int = 20) -> None:
        """Many progress updates to one task at once: a slow consumer gets them coalesced."""
        task = self.store.task(identity.tenant, task_id)
        if task is None:
            return
        version = int(task["version"])
        for step in range(1, count + 1):
            version += 1
            data = {
                "task_id": task_id,
                "version": version,
                "changes": {"progress": min(100, step * 100 // count)},
                "updated_by": identity.sub,
                "updated_at": int(time.time() * 1000),
            }
            await self.publish(
                identity.tenant, f"tasks.{task_id}", "task.updated", data, key=f"task-{task_id}"
            )

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
