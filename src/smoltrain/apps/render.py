"""Pictures of puzzles: one grid, an ACT trace (input | target | answer after each step), and a page to step
through them. Users look at these; they do not read token arrays.

Everything here works on the model's tokens, one flat ``seq_len`` array per grid, in the reference
datasets' vocabularies:

* Sudoku ``n x n``: 0 PAD, 1 blank, ``d + 1`` for digit ``d`` (vocabulary ``n + 2``).
* Maze ``n x n``: 0 PAD, then ``"# SGo"`` as 1..5 (wall, free, start, goal, path; vocabulary 6).
* ARC: an n x n canvas (30x30 in the reference, smaller with ``smoltrain data arc --canvas-size``; n is the
  square root of ``seq_len``), 0 PAD, 1 EOS (the border after the grid), colour ``c`` as ``c + 2``; the grid
  is the top-left rectangle of colour tokens, and only that part is drawn.

:func:`render_traces` writes one trace PNG per puzzle, one small frame per ACT step under ``frames/`` and
``index.html``; :func:`render_examples` does it for a run's first test examples (``smoltrain eval --render``).
"""

from __future__ import annotations

import html
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from smoltrain.data.arc import crop_grid
from smoltrain.data.puzzles import PUZZLE_KINDS
from smoltrain.errors import ConfigError, DataError
from smoltrain.fileio import atomic_write_bytes

if TYPE_CHECKING:
    from smoltrain.runs.loading import LoadedRun

__all__ = [
    "ARC_COLOURS",
    "KINDS",
    "Panel",
    "PuzzleTrace",
    "RenderedPuzzle",
    "TraceImage",
    "draw_grid",
    "draw_trace",
    "render_examples",
    "render_traces",
    "save_png",
    "side_of",
    "write_html",
]

KINDS = PUZZLE_KINDS

ARC_COLOURS = ("#000000", "#0074D9", "#FF4136", "#2ECC40", "#FFDC00",
               "#AAAAAA", "#F012BE", "#FF851B", "#7FDBFF", "#870C25")  # ARC's standard ten, colour 0..9
MAZE_CHARS = "# SGo"  # token 1..5; 0 (PAD) prints as '?'
MAZE_WALL, MAZE_FREE, MAZE_START, MAZE_GOAL, MAZE_PATH = 1, 2, 3, 4, 5

BACKGROUND = (255, 255, 255)
TEXT = (34, 34, 34)
UNKNOWN = (200, 200, 200)  # PAD or a token outside the kind's vocabulary
# Sudoku
SUDOKU_GIVEN = (17, 17, 17)
SUDOKU_FILLED = (31, 95, 191)  # digits the model wrote
SUDOKU_WRONG_BG = (255, 205, 205)  # a cell that disagrees with the target
SUDOKU_WRONG = (192, 32, 32)
SUDOKU_THIN, SUDOKU_THICK = (180, 180, 180), (40, 40, 40)
# Maze
MAZE_COLOURS = {0: UNKNOWN, MAZE_WALL: (43, 43, 43), MAZE_FREE: (244, 244, 244), MAZE_START: (0, 116, 217),
                MAZE_GOAL: (255, 65, 54), MAZE_PATH: (46, 204, 64)}
MAZE_EXTRA_PATH = (255, 133, 27)  # path where the target has none
MAZE_MISSED_PATH = (190, 238, 196)  # the target's path the model did not draw
MAZE_GRID_LINE = (215, 215, 215)
# ARC
ARC_GRID_LINE = (85, 85, 85)
# Cells that changed since the previous ACT step get an outline in a colour the kind does not use.
CHANGED = {"sudoku": (255, 150, 0), "maze": (240, 18, 190), "arc": (255, 255, 255)}

SUDOKU_CELL = 24
MIN_CELL, MAX_CELL, TARGET_SIDE = 10, 24, 300  # maze / ARC: cells shrink towards 10 px as grids grow to 30
GAP, MARGIN, CAPTION = 10, 6, 18


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # scalable with FreeType (Pillow >= 10.1)
    except (TypeError, OSError):
        return ImageFont.load_default()


def _rgb(colour: str) -> tuple[int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


ARC_RGB = tuple(_rgb(c) for c in ARC_COLOURS)


# ------------------------------------------------------------------------------------------------
# What kind of puzzle


def side_of(kind: str, seq_len: int) -> int:
    """The board side of a square kind; a ConfigError when ``seq_len`` is not a square."""
    side = math.isqrt(seq_len)
    if side * side != seq_len:
        raise ConfigError(f"cannot draw {kind} puzzles of {seq_len} cells: the grid is not square; rendering "
                          "knows Sudoku, Maze and ARC datasets (all n x n)")
    return side


# ------------------------------------------------------------------------------------------------
# Grids


def _cells(kind: str, tokens: np.ndarray) -> np.ndarray:
    """The 2-D grid of tokens to draw (ARC: colours of the cropped grid)."""
    tokens = np.asarray(tokens).reshape(-1)
    side = side_of(kind, tokens.size)  # ARC too: its canvas is square, and crop_grid reads the side off it
    if kind == "arc":
        return crop_grid(tokens)
    return tokens.reshape(side, side)


def _cell_size(kind: str, sides: list[int]) -> int:
    if kind == "sudoku":
        return SUDOKU_CELL
    return int(np.clip(TARGET_SIDE // max([1, *sides]), MIN_CELL, MAX_CELL))


def _outline(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], colour: tuple[int, int, int],
             cell: int) -> None:
    x0, y0, x1, y1 = box
    width = max(1, cell // 10)
    draw.rectangle((x0 + 2, y0 + 2, x1 - 3, y1 - 3), outline=colour, width=width)  # clear of the cell's lines


def _changed(tokens: np.ndarray, previous: np.ndarray | None) -> np.ndarray | None:
    if previous is None or np.asarray(previous).shape != np.asarray(tokens).shape:
        return None
    return np.asarray(tokens) != np.asarray(previous)


def _draw_sudoku(tokens: np.ndarray, cell: int, givens: np.ndarray | None, target: np.ndarray | None,
                 previous: np.ndarray | None) -> Image.Image:
    from smoltrain.data.sudoku import box_shape

    n = side_of("sudoku", tokens.size)
    grid = tokens.reshape(n, n)
    given = np.zeros((n, n), dtype=bool) if givens is None else (np.asarray(givens).reshape(n, n) >= 2)
    digit_tokens = (grid >= 2) & (grid <= n + 1)
    wrong = np.zeros((n, n), dtype=bool)
    if target is not None:
        want = np.asarray(target).reshape(n, n)
        wrong = (want >= 2) & (grid != want)
    changed = _changed(grid, None if previous is None else np.asarray(previous).reshape(n, n))
    try:
        box_rows, box_cols = box_shape(n)
    except DataError:  # a size without boxes we know: thin lines only
        box_rows = box_cols = n
    side = n * cell + 1
    image = Image.new("RGB", (side, side), BACKGROUND)
    draw = ImageDraw.Draw(image)
    font = _font(int(cell * 0.7))
    for r in range(n):
        for c in range(n):
            box = (c * cell, r * cell, (c + 1) * cell, (r + 1) * cell)
            if wrong[r, c]:
                draw.rectangle(box, fill=SUDOKU_WRONG_BG)
            if changed is not None and changed[r, c]:
                _outline(draw, box, CHANGED["sudoku"], cell)
            if digit_tokens[r, c]:
                colour = SUDOKU_WRONG if wrong[r, c] else SUDOKU_GIVEN if given[r, c] else SUDOKU_FILLED
                draw.text((box[0] + cell / 2, box[1] + cell / 2), str(int(grid[r, c]) - 1), fill=colour, font=font,
                          anchor="mm")
            elif grid[r, c] != 1:  # PAD or a stray token where a digit belongs
                draw.text((box[0] + cell / 2, box[1] + cell / 2), "?", fill=UNKNOWN, font=font, anchor="mm")
    for i in range(n + 1):  # thin cell lines, then box borders on top, two pixels wide inside the board
        edge = min(i * cell, side - 1)
        draw.line((0, edge, side, edge), fill=SUDOKU_THIN)
        draw.line((edge, 0, edge, side), fill=SUDOKU_THIN)
    for r in range(0, n + 1, box_rows):
        edge = min(r * cell, side - 1)
        draw.line((0, edge, side, edge), fill=SUDOKU_THICK)
        if 0 < r < n:
            draw.line((0, edge + 1, side, edge + 1), fill=SUDOKU_THICK)
    for c in range(0, n + 1, box_cols):
        edge = min(c * cell, side - 1)
        draw.line((edge, 0, edge, side), fill=SUDOKU_THICK)
        if 0 < c < n:
            draw.line((edge + 1, 0, edge + 1, side), fill=SUDOKU_THICK)
    return image


def _draw_maze(tokens: np.ndarray, cell: int, target: np.ndarray | None, previous: np.ndarray | None) -> Image.Image:
    grid = _cells("maze", tokens)
    n = grid.shape[0]
    want = None if target is None else np.asarray(target).reshape(n, n)
    changed = _changed(grid, None if previous is None else np.asarray(previous).reshape(n, n))
    side = n * cell + 1
    image = Image.new("RGB", (side, side), MAZE_GRID_LINE)
    draw = ImageDraw.Draw(image)
    for r in range(n):
        for c in range(n):
            token = int(grid[r, c])
            colour = MAZE_COLOURS.get(token, UNKNOWN)
            if want is not None:
                if token == MAZE_PATH and want[r, c] != MAZE_PATH:
                    colour = MAZE_EXTRA_PATH
                elif token == MAZE_FREE and want[r, c] == MAZE_PATH:
                    colour = MAZE_MISSED_PATH
            box = (c * cell + 1, r * cell + 1, (c + 1) * cell, (r + 1) * cell)
            draw.rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=colour)
            if changed is not None and changed[r, c]:
                _outline(draw, (box[0] - 1, box[1] - 1, box[2] + 1, box[3] + 1), CHANGED["maze"], cell)
    return image


def _draw_arc(colours: np.ndarray, cell: int, previous: np.ndarray | None) -> Image.Image:
    rows, cols = colours.shape
    if rows == 0:  # the model wrote no grid (EOS or PAD at the top-left corner)
        image = Image.new("RGB", (3 * cell + 1, 3 * cell + 1), UNKNOWN)
        ImageDraw.Draw(image).text((3 * cell / 2, 3 * cell / 2), "empty", fill=TEXT, font=_font(11), anchor="mm")
        return image
    changed = _changed(colours, previous)
    image = Image.new("RGB", (cols * cell + 1, rows * cell + 1), ARC_GRID_LINE)
    draw = ImageDraw.Draw(image)
    for r in range(rows):
        for c in range(cols):
            colour = ARC_RGB[int(colours[r, c])] if 0 <= colours[r, c] <= 9 else UNKNOWN
            draw.rectangle((c * cell + 1, r * cell + 1, (c + 1) * cell - 1, (r + 1) * cell - 1), fill=colour)
            if changed is not None and changed[r, c]:
                _outline(draw, (c * cell, r * cell, (c + 1) * cell + 1, (r + 1) * cell + 1), CHANGED["arc"], cell)
    return image


def draw_grid(kind: str, tokens: np.ndarray, *, givens: np.ndarray | None = None, target: np.ndarray | None = None,
              previous: np.ndarray | None = None, cell: int | None = None) -> Image.Image:
    """One grid of ``kind`` as an RGB image; cell ``(r, c)`` covers pixels ``[c*cell, (c+1)*cell)`` x
    ``[r*cell, (r+1)*cell)`` (ARC: of the cropped grid).

    ``givens`` (Sudoku: the puzzle's tokens) draws the model's digits in blue and the puzzle's in black;
    ``target`` marks cells that disagree with it (Sudoku: red, maze: extra path orange, missed path pale green);
    ``previous`` (the same kind of grid from the step before) outlines the cells that changed.
    """
    if kind not in KINDS:
        raise ConfigError(f"unknown puzzle kind {kind!r}: choose from {', '.join(KINDS)}")
    tokens = np.asarray(tokens).reshape(-1)
    if kind == "sudoku":
        return _draw_sudoku(tokens, cell or SUDOKU_CELL, givens, target, previous)
    if kind == "maze":
        return _draw_maze(tokens, cell or _cell_size(kind, [side_of(kind, tokens.size)]), target, previous)
    side_of(kind, tokens.size)  # a ConfigError, not crop_grid's ValueError, for a canvas that is not square
    colours = crop_grid(tokens)
    before = None if previous is None else crop_grid(np.asarray(previous).reshape(-1))
    return _draw_arc(colours, cell or _cell_size(kind, list(colours.shape)), before)


# ------------------------------------------------------------------------------------------------
# Traces


@dataclass
class PuzzleTrace:
    """One puzzle through the model, as tokens: what :func:`draw_trace` draws."""

    kind: str
    inputs: np.ndarray  # [seq_len]
    target: np.ndarray | None  # [seq_len]; None for a puzzle typed by the user (no known answer)
    steps: list[np.ndarray]  # the predicted tokens after each ACT step
    title: str = ""
    summary: str = ""  # a one-line verdict for the page, e.g. "valid solution"


@dataclass
class Panel:
    caption: str
    box: tuple[int, int, int, int]  # where the grid lies in the trace image: (left, top, right, bottom)


@dataclass
class TraceImage:
    image: Image.Image
    panels: list[Panel] = field(default_factory=list)


def _wrong_count(kind: str, tokens: np.ndarray, target: np.ndarray) -> str:
    """A short verdict of one answer against the target, for a caption."""
    if kind == "arc":
        got, want = crop_grid(tokens), crop_grid(target)
        if got.shape != want.shape:
            return f"{got.shape[0]}x{got.shape[1]}, wrong size"
        wrong = int((got != want).sum())
    else:
        known = np.asarray(target) > 0  # PAD (and ignored labels) say nothing
        wrong = int((known & (np.asarray(tokens) != np.asarray(target))).sum())
    return "correct" if wrong == 0 else f"{wrong} wrong"


def _grid_caption(kind: str, tokens: np.ndarray) -> str:
    if kind == "arc":
        rows, cols = crop_grid(tokens).shape
        return f"{rows}x{cols}"
    return ""


def _compose(panels: list[tuple[str, Image.Image]], title: str) -> TraceImage:
    """Panels side by side with a caption above each and an optional title line."""
    font = _font(12)
    title_height = CAPTION if title else 0
    caption_widths = [int(font.getlength(caption)) for caption, _ in panels]
    columns = [max(w, image.width) for w, (_, image) in zip(caption_widths, panels, strict=True)]
    width = MARGIN * 2 + sum(columns) + GAP * (len(panels) - 1)
    if title:
        width = max(width, MARGIN * 2 + int(font.getlength(title)))
    height = MARGIN * 2 + title_height + CAPTION + max(image.height for _, image in panels)
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((MARGIN, MARGIN), title, fill=TEXT, font=font)
    x = MARGIN
    top = MARGIN + title_height + CAPTION
    placed = []
    for column, (caption, image) in zip(columns, panels, strict=True):
        draw.text((x, top - CAPTION + 2), caption, fill=TEXT, font=font)
        canvas.paste(image, (x, top))
        placed.append(Panel(caption, (x, top, x + image.width, top + image.height)))
        x += column + GAP
    return TraceImage(canvas, placed)


def _trace_panels(trace: PuzzleTrace) -> list[tuple[str, Image.Image]]:
    """(caption, image) of the input, the target (when known) and every ACT step, at one cell size."""
    kind = trace.kind
    grids = [trace.inputs, *([] if trace.target is None else [trace.target]), *trace.steps]
    if kind == "arc":
        sides = [max(crop_grid(g).shape) for g in grids]
    else:
        sides = [side_of(kind, np.asarray(trace.inputs).size)]
    cell = _cell_size(kind, sides)
    givens = trace.inputs if kind == "sudoku" else None

    def label(name: str, tokens: np.ndarray) -> str:
        size = _grid_caption(kind, tokens)
        return f"{name} ({size})" if size else name

    panels = [(label("input", trace.inputs), draw_grid(kind, trace.inputs, givens=givens, cell=cell))]
    if trace.target is not None:
        panels.append((label("target", trace.target), draw_grid(kind, trace.target, givens=givens, cell=cell)))
    previous = None
    for k, tokens in enumerate(trace.steps, start=1):
        verdict = "" if trace.target is None else ": " + _wrong_count(kind, tokens, trace.target)
        caption = f"step {k}{verdict}" if kind != "arc" or verdict else label(f"step {k}", tokens)
        image = draw_grid(kind, tokens, givens=givens, target=trace.target, previous=previous, cell=cell)
        panels.append((caption, image))
        previous = tokens
    return panels


def draw_trace(trace: PuzzleTrace) -> TraceImage:
    """input | target | answer after step 1 | ... | step K, captioned, with the cells each step changed outlined.
    A typed puzzle has no target panel (K + 1 panels instead of K + 2)."""
    return _compose(_trace_panels(trace), trace.title)


def _frames(trace: PuzzleTrace, panels: list[tuple[str, Image.Image]]) -> list[Image.Image]:
    """One picture per ACT step for the page: input | target | that step (``panels`` from :func:`_trace_panels`)."""
    fixed = 1 if trace.target is None else 2
    return [_compose(panels[:fixed] + [step], trace.title).image for step in panels[fixed:]]


def save_png(image: Image.Image, path: str | Path) -> Path:
    """Write ``image`` as a PNG atomically."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


# ------------------------------------------------------------------------------------------------
# The page


@dataclass
class RenderedPuzzle:
    """One puzzle on the page; paths are relative to the page's folder."""

    title: str
    summary: str
    trace: str  # the full trace PNG
    frames: list[str]  # one PNG per ACT step


_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>smoltrain: __TITLE__</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; color: #222; }}
button {{ font-size: 1em; margin-right: .3em; }}
#where {{ margin: .6em 0; font-weight: bold; }}
#summary {{ margin-bottom: .6em; }}
img {{ image-rendering: pixelated; border: 1px solid #ddd; }}
.trace {{ margin-top: 1.2em; overflow-x: auto; }}
</style>
</head>
<body>
<h1>__TITLE__</h1>
<div>
<button id="prevPuzzle">&laquo; puzzle</button><button id="nextPuzzle">puzzle &raquo;</button>
<button id="prevStep">&lsaquo; step</button><button id="nextStep">step &rsaquo;</button>
<span>(keys: left/right = step, up/down = puzzle)</span>
</div>
<div id="where"></div>
<div id="summary"></div>
<img id="frame" alt="the selected ACT step">
<div class="trace"><div>all steps:</div><img id="trace" alt="the whole ACT trace"></div>
<noscript>
__NOSCRIPT__
</noscript>
<script>
const puzzles = __DATA__;
let puzzle = 0, step = 0;
function show() {{
  const p = puzzles[puzzle];
  step = Math.max(0, Math.min(step, p.frames.length - 1));
  document.getElementById("where").textContent =
    "puzzle " + (puzzle + 1) + " of " + puzzles.length + ": " + p.title +
    " \\u2014 ACT step " + (step + 1) + " of " + p.frames.length;
  document.getElementById("summary").textContent = p.summary;
  document.getElementById("frame").src = p.frames[step];
  document.getElementById("trace").src = p.trace;
}}
function move(dPuzzle, dStep) {{
  if (dPuzzle) {{ puzzle = (puzzle + dPuzzle + puzzles.length) % puzzles.length; step = 0; }}
  step += dStep;
  show();
}}
document.getElementById("prevPuzzle").onclick = () => move(-1, 0);
document.getElementById("nextPuzzle").onclick = () => move(1, 0);
document.getElementById("prevStep").onclick = () => move(0, -1);
document.getElementById("nextStep").onclick = () => move(0, 1);
document.addEventListener("keydown", (e) => {{
  const keys = {{ArrowLeft: [0, -1], ArrowRight: [0, 1], ArrowUp: [-1, 0], ArrowDown: [1, 0]}};
  if (keys[e.key]) {{ e.preventDefault(); move(...keys[e.key]); }}
}});
if (puzzles.length) show();
</script>
</body>
</html>
"""


def write_html(out_dir: str | Path, items: list[RenderedPuzzle], title: str = "ACT traces") -> Path:
    """``out_dir/index.html``: step through ``items`` and their ACT steps (plain inline JS, relative image
    paths, nothing fetched from the network); without JS it lists every trace."""
    data = json.dumps([{"title": i.title, "summary": i.summary, "trace": i.trace, "frames": i.frames}
                       for i in items])
    noscript = "\n".join(f'<p>{html.escape(i.title)}: {html.escape(i.summary)}<br><img src="{html.escape(i.trace)}" '
                         f'alt="{html.escape(i.title)}"></p>' for i in items)
    page = (_PAGE.replace("{{", "{").replace("}}", "}")
            .replace("__TITLE__", html.escape(title))
            .replace("__NOSCRIPT__", noscript)
            .replace("__DATA__", data.replace("</", "<\\/")))
    path = Path(out_dir) / "index.html"
    atomic_write_bytes(path, page.encode())
    return path


def render_traces(traces: list[PuzzleTrace], out_dir: str | Path, names: list[str] | None = None,
                  title: str = "ACT traces") -> Path:
    """Write ``NAME.png`` (the trace) and ``frames/NAME-step-K.png`` for every trace, and ``index.html``;
    returns the page's path. ``names`` default to ``puzzle-000``, ``puzzle-001``, ..."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} exists and is not a directory: choose another --render folder")
    names = names or [f"puzzle-{i:03d}" for i in range(len(traces))]
    items = []
    for name, trace in zip(names, traces, strict=True):
        panels = _trace_panels(trace)
        save_png(_compose(panels, trace.title).image, out / f"{name}.png")
        frames = []
        for k, frame in enumerate(_frames(trace, panels), start=1):
            relative = f"frames/{name}-step-{k:02d}.png"
            save_png(frame, out / relative)
            frames.append(relative)
        items.append(RenderedPuzzle(trace.title or name, trace.summary, f"{name}.png", frames))
    return write_html(out, items, title)


def render_examples(run: LoadedRun | str | Path, out_dir: str | Path, count: int = 8, device: str = "auto",
                    checkpoint: str | Path | None = None, overrides: list[str] | None = None) -> Path:
    """Run the first ``count`` test examples of a TRM-family run's dataset through every ACT step and render
    them into ``out_dir`` (``example-NNNN.png``, ``frames/``, ``index.html``); returns the page's path."""
    from smoltrain.apps.solve import trace_test_examples
    from smoltrain.runs.loading import LoadedRun, load

    if count < 1:
        raise ConfigError(f"--render-count must be at least 1, got {count}")
    loaded = run if isinstance(run, LoadedRun) else load(run, checkpoint=checkpoint, device=device, overrides=overrides)
    traces, indices = trace_test_examples(loaded, range(count), clip=True)
    return render_traces(traces, out_dir, [f"example-{i:04d}" for i in indices], title=f"{loaded.checkpoint}")
