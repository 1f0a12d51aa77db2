"""A small Flask todo app: ``forkhorn examples.todo:app`` (needs ``pip install -e '.[examples]'``).

Routes:
    GET    /             the list as an HTML page, with a form to add one
    GET    /todos        the list as JSON
    POST   /todos        create from JSON ``{"title": "..."}`` (201 + JSON) or from a form
                         field ``title`` (303 back to ``/``, the browser flow)
    GET    /todos/<id>   one item as JSON, or 404
    DELETE /todos/<id>   204, or 404

Rules it keeps, so that it works under many worker processes, threads or greenlets:
- The data lives in one sqlite3 file shared by every worker: ``$TODO_DB``, or
  ``forkhorn-todo-<uid>.db`` in the system temp directory. The table is created on first use
  (``CREATE TABLE IF NOT EXISTS``), never at import, so importing has no side effects.
- Each request opens its own connection and closes it: nothing is shared across ``fork()``
  or between threads. WAL mode and a busy timeout let concurrent workers write.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import closing, contextmanager
from html import escape
from typing import Any

from flask import Flask, Response, jsonify, redirect, request

MAX_TITLE_LENGTH = 200
# Seconds a writer waits for another worker's write lock before failing the request.
BUSY_TIMEOUT = 10.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS todo (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    title   TEXT NOT NULL,
    done    INTEGER NOT NULL DEFAULT 0,
    created TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
)
"""

app = Flask(__name__)
_ready: set[str] = set()  # database paths whose schema this process has checked


def database_path() -> str:
    default = os.path.join(tempfile.gettempdir(), f"forkhorn-todo-{os.getuid()}.db")
    return os.environ.get("TODO_DB") or default


@contextmanager
def connect() -> Iterator[sqlite3.Connection]:
    """One connection for one request, committed on success and always closed."""
    path = database_path()
    with closing(sqlite3.connect(path, timeout=BUSY_TIMEOUT)) as con:
        con.row_factory = sqlite3.Row
        if path not in _ready:
            con.execute("PRAGMA journal_mode=WAL")
            con.execute(SCHEMA)
            _ready.add(path)
        with con:  # a transaction: commit, or roll back on an exception
            yield con


def as_dict(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "title": row["title"],
        "done": bool(row["done"]),
        "created": row["created"],
    }


def all_todos() -> list[dict[str, Any]]:
    with connect() as con:
        return [as_dict(row) for row in con.execute("SELECT * FROM todo ORDER BY id")]


def error(status: int, message: str) -> tuple[Response, int]:
    return jsonify(error=message), status


@app.get("/")
def index() -> str:
    items = "\n".join(
        f"<li>{escape(t['title'])} <small>#{t['id']}</small></li>" for t in all_todos()
    )
    return f"""<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>forkhorn todo</title></head>
<body>
<h1>Todo</h1>
<ul>
{items or "<li><em>nothing yet</em></li>"}
</ul>
<form method="post" action="/todos">
  <input name="title" maxlength="{MAX_TITLE_LENGTH}" required autofocus>
  <button>Add</button>
</form>
</body>
</html>
"""


@app.get("/todos")
def list_todos() -> Response:
    return jsonify(all_todos())


@app.post("/todos")
def create_todo() -> Any:
    from_form = not request.is_json
    data: Any = request.form if from_form else request.get_json(silent=True)
    if not isinstance(data, dict):  # a form is a dict too (MultiDict)
        return error(400, "expected a JSON object")
    title = data.get("title")
    if not isinstance(title, str) or not title.strip():
        return error(400, "title is required")
    title = title.strip()
    if len(title) > MAX_TITLE_LENGTH:
        return error(400, f"title is longer than {MAX_TITLE_LENGTH} characters")
    with connect() as con:
        cur = con.execute("INSERT INTO todo (title) VALUES (?)", (title,))
        row = con.execute("SELECT * FROM todo WHERE id = ?", (cur.lastrowid,)).fetchone()
    if from_form:
        return redirect("/", code=303)
    response = jsonify(as_dict(row))
    response.status_code = 201
    response.headers["Location"] = f"/todos/{row['id']}"
    return response


@app.get("/todos/<int:todo_id>")
def get_todo(todo_id: int) -> Any:
    with connect() as con:
        row = con.execute("SELECT * FROM todo WHERE id = ?", (todo_id,)).fetchone()
    if row is None:
        return error(404, f"no todo {todo_id}")
    return jsonify(as_dict(row))


@app.delete("/todos/<int:todo_id>")
def delete_todo(todo_id: int) -> Any:
    with connect() as con:
        deleted = con.execute("DELETE FROM todo WHERE id = ?", (todo_id,)).rowcount
    if not deleted:
        return error(404, f"no todo {todo_id}")
    return "", 204
