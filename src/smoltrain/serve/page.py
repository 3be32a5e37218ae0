"""The playground: one static page (``static/index.html`` with its script, plotter and style sheet, all shipped in
the package: no build step, nothing from a CDN) and the read-only JSON it draws from.

- ``GET /``: the page. It asks ``/api/run`` what the run is and shows chat (LM runs, through
  ``/v1/chat/completions``), the puzzle solver (TRM runs, through ``/v1/solve``) and the training curves.
- ``GET /static/{name}``: the page's files, by name only.
- ``GET /api/run``: the run's facts (``run.info()``) with ``family``, ``name`` and ``kind``.
- ``GET /api/metrics?after=N``: the rows of ``RUN/metrics.jsonl`` after its first ``N`` lines, and ``next``, the
  line count to ask after next time; the page polls it, so curves grow while the run still trains. A line being
  written (no newline yet) waits for the next poll; a file shorter than ``N`` (a resumed run truncated rows
  written after its last checkpoint) comes back whole with ``reset: true``.
- ``GET /api/examples?count=K``: the first ``K`` test puzzles of a TRM run's dataset (``index``, ``title``,
  ``puzzle`` as text, ``grid`` as ``/v1/solve`` returns grids), with the colours the kind is drawn in
  (``palette``: cell value -> CSS colour) and that of changed cells.

Errors come back as the OpenAI-style body the rest of the server uses, with a 4xx status.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse, JSONResponse

if TYPE_CHECKING:
    from smoltrain.serve.run import ServedRun

STATIC_DIR = Path(__file__).with_name("static")
MEDIA_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html", ".png": "image/png"}
MAX_EXAMPLES = 64  # /api/examples: a menu to pick from, not a dataset export


def _error(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    kind = "not_found_error" if status == 404 else "invalid_request_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}},
                        status_code=status)


class MetricsTail:
    """Rows of a growing metrics.jsonl after its first ``after`` lines, reading only what was appended since the
    last call (the page polls every two seconds; a long run's file is megabytes).

    It remembers where each complete line starts. A line without its newline is being written (the trainer
    writes one row a line): it waits for the next call. A file that shrank or was replaced (a resumed run
    truncates rows written after its last checkpoint) is read again from the start. A line that does not parse
    (cut short by a kill) counts as a line but gives no row."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._identity: tuple[int, int] | None = None  # (device, inode) of the file the offsets are of
        self._starts: list[int] = [0]  # byte offset of each complete line, then of the first incomplete one
        self._lock = threading.Lock()  # FastAPI answers plain-def routes from a thread pool

    def _index(self, file: BinaryIO, size: int) -> None:
        """Extend the line starts over the bytes appended since the last call."""
        file.seek(self._starts[-1])
        data = file.read(size - self._starts[-1])
        base = self._starts[-1]
        end = data.find(b"\n")
        while end >= 0:
            self._starts.append(base + end + 1)
            end = data.find(b"\n", end + 1)

    def read(self, after: int) -> dict[str, Any]:
        """``{"rows": the rows of lines after the first ``after``, "next": the complete lines, "reset": whether
        ``after`` was past the end, so the rows are the whole file}``."""
        with self._lock:
            try:
                file = self.path.open("rb")
            except FileNotFoundError:
                self._identity, self._starts = None, [0]
                return {"rows": [], "next": 0, "reset": after > 0}
            with file:
                stat = os.fstat(file.fileno())
                if (stat.st_dev, stat.st_ino) != self._identity or stat.st_size < self._starts[-1]:
                    self._identity, self._starts = (stat.st_dev, stat.st_ino), [0]
                self._index(file, stat.st_size)
                lines = len(self._starts) - 1
                reset = after > lines
                first = 0 if reset else after
                file.seek(self._starts[first])
                data = file.read(self._starts[-1] - self._starts[first])
        rows = []
        for line in data.decode("utf-8", errors="replace").split("\n")[:-1]:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                rows.append(row)
        return {"rows": rows, "next": lines, "reset": reset}


def _css(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def example_puzzles(run: ServedRun, count: int) -> dict[str, Any]:
    """The first ``count`` test puzzles of a TRM run (``ServedRun.test_examples``) with a title each, the kind's
    name and the colours it is drawn in; ``note`` says why there are none."""
    kind = run.puzzle_kind
    assert kind is not None
    examples = [{**example, "title": f"test example {example['index']}"} for example in run.test_examples(count)]
    body: dict[str, Any] = {"kind": kind.name, "examples": examples, "changed": _css(kind.drawing.changed),
                            "palette": {str(value): _css(rgb) for value, rgb in kind.drawing.palette.items()}}
    if not examples:
        body["note"] = "the run's dataset is not on this machine: type a puzzle instead"
    return body


def page_router(run: ServedRun) -> APIRouter:
    """The playground's routes for ``run``."""
    router = APIRouter()
    shipped = {path.name: path for path in STATIC_DIR.iterdir() if path.suffix in MEDIA_TYPES}

    @router.get("/", include_in_schema=False)
    def index() -> FileResponse:
        # no-cache: a new smoltrain version's page is not mixed with an old, cached script
        return FileResponse(shipped["index.html"], media_type="text/html", headers={"Cache-Control": "no-cache"})

    @router.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Any:
        path = shipped.get(name)
        if path is None:
            return _error(404, f"no static file {name!r}: the page ships {', '.join(sorted(shipped))}", "name")
        return FileResponse(path, media_type=MEDIA_TYPES[path.suffix], headers={"Cache-Control": "no-cache"})

    @router.get("/api/run")
    def run_facts() -> dict[str, Any]:
        return {**run.info(), "family": run.family, "name": run.name, "kind": run.kind}

    tail = MetricsTail(run.metrics_path)

    @router.get("/api/metrics")
    def metrics(after: int = Query(0, ge=0, description="lines already read")) -> dict[str, Any]:
        return tail.read(after)

    @router.get("/api/examples")
    def examples(count: int = Query(8, ge=1, le=MAX_EXAMPLES)) -> Any:
        if run.family != "trm":
            return _error(400, f"test puzzles come from TRM runs; {run.name} is an {run.family} run",
                          code="wrong_family")
        return example_puzzles(run, count)  # a damaged dataset raises a SmoltrainError: the server's 400

    return router
