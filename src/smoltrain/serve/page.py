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
- ``GET /api/examples?count=K``: the first ``K`` test puzzles of a TRM run's dataset, in the text ``/v1/solve``
  reads, with the colours the kind is drawn in (``palette``: cell value -> CSS colour).

Errors come back as the OpenAI-style body the rest of the server uses, with a 4xx status.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import APIRouter, Query
from fastapi.responses import FileResponse, JSONResponse

from smoltrain.data.puzzles import PuzzleDataset, PuzzleKind, detect_kind, load_identifiers
from smoltrain.errors import SmoltrainError
from smoltrain.runs.run_dir import RunDir

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


def _grid(kind: PuzzleKind, tokens: np.ndarray) -> list[list[Any]]:
    """The kind's decoded grid as rows (a Sudoku decodes to its flat n*n digits)."""
    grid = np.asarray(kind.decode(tokens))
    if grid.ndim == 1:
        grid = grid.reshape(kind.side(grid.size), -1)
    return grid.tolist()


def _typed_form(kind: PuzzleKind, tokens: np.ndarray) -> str:
    """A test puzzle as the text a user would type for ``/v1/solve``: the kind's own ``format`` (Sudoku boards and
    mazes read back by its ``parse``), an ARC canvas as its cropped grid in JSON."""
    if kind.name == "arc":
        return json.dumps(kind.decode(tokens).tolist())
    return kind.format(tokens)


def example_puzzles(run_dir: Path, count: int) -> dict[str, Any]:
    """The first ``count`` test puzzles of the dataset a TRM run was trained on (``data_paths_test``, else
    ``data_paths``), with the kind's name and palette; ``note`` says why there are none."""
    cfg = RunDir(run_dir).load_config()
    paths = cfg.data_paths_test or cfg.data_paths
    if not paths or not (Path(paths[0]) / "test").is_dir():
        where = paths[0] if paths else "(no data_paths)"
        return {"kind": None, "examples": [], "palette": {},
                "note": f"the run's dataset {where} is not on this machine: type a puzzle instead"}
    root = Path(paths[0])
    kind = detect_kind(root)
    dataset = PuzzleDataset(root, "test", global_batch_size=1, test_mode=True)  # validates the split
    shown = min(count, dataset.num_examples)
    inputs = np.load(root / "test" / "all__inputs.npy", mmap_mode="r")[:shown].astype(np.int64)
    puzzles = np.searchsorted(dataset.puzzle_indices, np.arange(shown), side="right") - 1
    names = load_identifiers(root) or []
    examples = []
    for index in range(shown):
        identifier = int(dataset.puzzle_identifiers[puzzles[index]])
        name = names[identifier] if 0 <= identifier < len(names) else str(identifier)
        examples.append({"index": index, "title": kind.title(index, name), "puzzle": _typed_form(kind, inputs[index]),
                         "grid": _grid(kind, inputs[index])})
    palette = {str(value): _css(rgb) for value, rgb in kind.drawing.palette.items()}
    return {"kind": kind.name, "examples": examples, "palette": palette,
            "changed": _css(kind.drawing.changed), "total": dataset.num_examples}


def page_router(run: Any) -> APIRouter:
    """The playground's routes for ``run`` (a ``ServedRun``: ``run_dir``, ``family``, ``name``, ``kind``, ``info()``)."""
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
        return read_metrics_after(RunDir(run.run_dir).metrics, after)

    @router.get("/api/examples")
    def examples(count: int = Query(8, ge=1, le=MAX_EXAMPLES)) -> Any:
        if run.family != "trm":
            return _error(400, f"test puzzles come from TRM runs; {run.name} is an {run.family} run", code="wrong_family")
        try:
            return example_puzzles(Path(run.run_dir), count)
        except SmoltrainError as err:  # a damaged dataset: one line, as the CLI would say it
            return _error(422, str(err), code="bad_dataset")

    return router
