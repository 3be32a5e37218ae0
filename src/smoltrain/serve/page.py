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
from pathlib import Path
from typing import TYPE_CHECKING, Any

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


def read_metrics_after(path: Path, after: int) -> dict[str, Any]:
    """Complete rows of a metrics.jsonl after its first ``after`` lines: ``{"rows", "next", "reset"}``.

    A line without its newline is being written (the trainer writes one row a line): it is left for the next
    call. A line that does not parse (cut short by a kill) counts as a line but gives no row."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        text = ""
    lines = text.split("\n")[:-1]  # the last piece has no newline: empty, or a row still being written
    reset = after > len(lines)
    rows = []
    for line in lines[0 if reset else after:]:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return {"rows": rows, "next": len(lines), "reset": reset}


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

    @router.get("/api/metrics")
    def metrics(after: int = Query(0, ge=0, description="lines already read")) -> dict[str, Any]:
        return read_metrics_after(run.metrics_path, after)

    @router.get("/api/examples")
    def examples(count: int = Query(8, ge=1, le=MAX_EXAMPLES)) -> Any:
        if run.family != "trm":
            return _error(400, f"test puzzles come from TRM runs; {run.name} is an {run.family} run",
                          code="wrong_family")
        return example_puzzles(run, count)  # a damaged dataset raises a SmoltrainError: the server's 400

    return router
