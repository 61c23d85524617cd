"""The task board's source of truth: tasks, form submissions and tutorial progress in SQLite.

Events reach the store from the broker (every sequenced event, whoever published it), so
the store survives a server restart while the broker's history does not. A page that sees
a gap or an epoch change reloads its view from here.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

__all__ = ["TUTORIAL_STEPS", "Store"]

TUTORIAL_STEPS = ("create_task", "start_task", "finish_task", "send_feedback")

_SCHEMA = """
create table if not exists tasks (
  tenant text not null, task_id text not null, title text not null, status text not null,
  priority integer not null, assignee text, progress integer not null, version integer not null,
  updated_at integer not null,
  created_by text not null, primary key (tenant, task_id));
create table if not exists forms (
  tenant text not null, message_id text not null, submitted_by text not null,
  fields text not null, primary key (tenant, message_id));
create table if not exists tutorial (
  tenant text not null, sub text not null, step text not null, primary key (tenant, sub, step));
"""


def _task(row: sqlite3.Row) -> dict[str, Any]:
    return {key: value for key, value in dict(row).items() if key != "tenant"}


class Store:
    """A small synchronous store; every call is one short transaction."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    def tasks(self, tenant: str) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "select * from tasks where tenant = ? order by updated_at", (tenant,)
        ).fetchall()
        return [_task(row) for row in rows]

    def task(self, tenant: str, task_id: str) -> dict[str, Any] | None:
        row = self.db.execute(
            "select * from tasks where tenant = ? and task_id = ?", (tenant, task_id)
        ).fetchone()
        return None if row is None else _task(row)

    def create(self, tenant: str, data: dict[str, Any]) -> bool:
        cursor = self.db.execute(
            "insert or ignore into tasks values (?, ?, ?, ?, ?, ?, 0, 1, ?, ?)",
            (
                tenant,
                data["task_id"],
                data["title"],
                data["status"],
                data.get("priority", 0),
                data.get("assignee"),
                data["created_at"],
                data["created_by"],
            ),
        )
        return cursor.rowcount == 1

    def update(self, tenant: str, data: dict[str, Any]) -> bool:
        """Apply an update unless a newer version is already stored."""
        changes = {
            k: v
            for k, v in data["changes"].items()
            if k in ("title", "status", "priority", "assignee", "progress")
        }
        if not changes:
            return False
        sets = ", ".join(f"{name} = ?" for name in changes)
        cursor = self.db.execute(
            f"update tasks set {sets}, version = ?, updated_at = ? "  # fixed column names
            "where tenant = ? and task_id = ? and version < ?",
            (
                *changes.values(),
                data["version"],
                data["updated_at"],
                tenant,
                data["task_id"],
                data["version"],
            ),
        )
        return cursor.rowcount == 1

    def add_form(self, tenant: str, message_id: str, submitted_by: str, fields: str) -> bool:
        cursor = self.db.execute(
            "insert or ignore into forms values (?, ?, ?, ?)",
            (tenant, message_id, submitted_by, fields),
        )
        return cursor.rowcount == 1

    def form_count(self, tenant: str) -> int:
        row = self.db.execute("select count(*) from forms where tenant = ?", (tenant,)).fetchone()
        return int(row[0])

    def complete(self, tenant: str, sub: str, step: str) -> bool:
        cursor = self.db.execute(
            "insert or ignore into tutorial values (?, ?, ?)", (tenant, sub, step)
        )
        return cursor.rowcount == 1

    def progress(self, tenant: str, sub: str) -> list[str]:
        rows = self.db.execute(
            "select step from tutorial where tenant = ? and sub = ?", (tenant, sub)
        ).fetchall()
        done = {row[0] for row in rows}
        return [step for step in TUTORIAL_STEPS if step in done]
