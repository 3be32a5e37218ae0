"""Pictures of puzzles: one grid, an ACT trace (input | target | answer after each step), and a page to step
through them. Users look at these; they do not read token arrays.

Everything here draws the model's tokens, one flat ``seq_len`` array per grid, of a puzzle kind
(`smoltrain.data.puzzles.PuzzleKind`): the kind says which cells a grid has (ARC: the cropped grid of its
canvas) and how to draw them (its `DrawingHints`): a board of digits with box lines (Sudoku), or coloured
tiles (maze, ARC). This module draws what it is given and runs no model: `smoltrain.apps.solve` makes the
traces.

:func:`render_traces` writes one trace PNG per puzzle, one small frame per ACT step under ``frames/`` and
``index.html``.
"""

from __future__ import annotations

import html
import io
import json
import string
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from smoltrain.data.puzzles import DrawingHints, PuzzleKind, get_kind
from smoltrain.errors import DataError
from smoltrain.fileio import atomic_write_bytes

__all__ = [
    "Panel",
    "PuzzleTrace",
    "RenderedPuzzle",
    "TraceImage",
    "draw_grid",
    "draw_trace",
    "render_traces",
    "save_png",
    "write_html",
]

BACKGROUND = (255, 255, 255)
TEXT = (34, 34, 34)
UNKNOWN = (200, 200, 200)  # PAD or a token outside the kind's vocabulary
# Boards of digits
GIVEN = (17, 17, 17)
FILLED = (31, 95, 191)  # digits the model wrote
WRONG_BG = (255, 205, 205)  # a cell that disagrees with the target
WRONG = (192, 32, 32)
THIN_LINE, BOX_LINE = (180, 180, 180), (40, 40, 40)

MIN_CELL, MAX_CELL, TARGET_SIDE = 10, 24, 300  # tiles: cells shrink towards 10 px as grids grow to 30
GAP, MARGIN, CAPTION = 10, 6, 18


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # scalable with FreeType (Pillow >= 10.1)
    except (TypeError, OSError):
        return ImageFont.load_default()


# ------------------------------------------------------------------------------------------------
# Grids


def _cell_size(hints: DrawingHints, sides: list[int]) -> int:
    if hints.cell is not None:
        return hints.cell
    return int(np.clip(TARGET_SIDE // max([1, *sides]), MIN_CELL, MAX_CELL))


def _outline(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], colour: tuple[int, int, int],
             cell: int) -> None:
    x0, y0, x1, y1 = box
    width = max(1, cell // 10)
    draw.rectangle((x0 + 2, y0 + 2, x1 - 3, y1 - 3), outline=colour, width=width)  # clear of the cell's lines


def _changed(cells: np.ndarray, previous: np.ndarray | None) -> np.ndarray | None:
    if previous is None or previous.shape != cells.shape:
        return None
    return cells != previous


def _draw_digits(kind: PuzzleKind, grid: np.ndarray, cell: int, givens: np.ndarray | None,
                 target: np.ndarray | None, previous: np.ndarray | None) -> Image.Image:
    """A board of digits: the puzzle's in black, the model's in blue, disagreements with the target in red."""
    hints = kind.drawing
    assert hints.digits is not None and hints.boxes is not None
    n = grid.shape[0]
    digits = hints.digits(grid)
    given = np.zeros((n, n), dtype=bool) if givens is None else hints.digits(kind.cells(givens)) >= 1
    wrong = np.zeros((n, n), dtype=bool)
    if target is not None:
        want = hints.digits(kind.cells(target))
        wrong = (want >= 1) & (digits != want)
    changed = _changed(grid, previous)
    box_rows, box_cols = hints.boxes(n)
    side = n * cell + 1
    image = Image.new("RGB", (side, side), BACKGROUND)
    draw = ImageDraw.Draw(image)
    font = _font(int(cell * 0.7))
    for r in range(n):
        for c in range(n):
            box = (c * cell, r * cell, (c + 1) * cell, (r + 1) * cell)
            if wrong[r, c]:
                draw.rectangle(box, fill=WRONG_BG)
            if changed is not None and changed[r, c]:
                _outline(draw, box, hints.changed, cell)
            centre = (box[0] + cell / 2, box[1] + cell / 2)
            if digits[r, c] >= 1:
                colour = WRONG if wrong[r, c] else GIVEN if given[r, c] else FILLED
                draw.text(centre, str(int(digits[r, c])), fill=colour, font=font, anchor="mm")
            elif digits[r, c] < 0:  # PAD or a stray token where a digit belongs
                draw.text(centre, "?", fill=UNKNOWN, font=font, anchor="mm")
    for i in range(n + 1):  # thin cell lines, then box borders on top, two pixels wide inside the board
        edge = min(i * cell, side - 1)
        draw.line((0, edge, side, edge), fill=THIN_LINE)
        draw.line((edge, 0, edge, side), fill=THIN_LINE)
    for r in range(0, n + 1, box_rows):
        edge = min(r * cell, side - 1)
        draw.line((0, edge, side, edge), fill=BOX_LINE)
        if 0 < r < n:
            draw.line((0, edge + 1, side, edge + 1), fill=BOX_LINE)
    for c in range(0, n + 1, box_cols):
        edge = min(c * cell, side - 1)
        draw.line((edge, 0, edge, side), fill=BOX_LINE)
        if 0 < c < n:
            draw.line((edge + 1, 0, edge + 1, side), fill=BOX_LINE)
    return image


def _draw_tiles(kind: PuzzleKind, grid: np.ndarray, cell: int, target: np.ndarray | None,
                previous: np.ndarray | None) -> Image.Image:
    """Coloured tiles with lines between them; with the kind's path marks, the path against the target's."""
    hints = kind.drawing
    rows, cols = grid.shape
    if rows == 0:  # the model wrote no grid (ARC: EOS or PAD at the top-left corner)
        image = Image.new("RGB", (3 * cell + 1, 3 * cell + 1), UNKNOWN)
        ImageDraw.Draw(image).text((3 * cell / 2, 3 * cell / 2), "empty", fill=TEXT, font=_font(11), anchor="mm")
        return image
    marks = hints.path
    want = None if target is None or marks is None else kind.cells(target)
    changed = _changed(grid, previous)
    image = Image.new("RGB", (cols * cell + 1, rows * cell + 1), hints.grid_line)
    draw = ImageDraw.Draw(image)
    for r in range(rows):
        for c in range(cols):
            value = int(grid[r, c])
            colour = hints.palette.get(value, UNKNOWN)
            if marks is not None and want is not None:
                if value == marks.path and want[r, c] != marks.path:
                    colour = marks.extra
                elif value == marks.free and want[r, c] == marks.path:
                    colour = marks.missed
            draw.rectangle((c * cell + 1, r * cell + 1, (c + 1) * cell - 1, (r + 1) * cell - 1), fill=colour)
            if changed is not None and changed[r, c]:
                _outline(draw, (c * cell, r * cell, (c + 1) * cell + 1, (r + 1) * cell + 1), hints.changed, cell)
    return image


def draw_grid(kind: str, tokens: np.ndarray, *, givens: np.ndarray | None = None, target: np.ndarray | None = None,
              previous: np.ndarray | None = None, cell: int | None = None) -> Image.Image:
    """One grid of ``kind`` as an RGB image; cell ``(r, c)`` covers pixels ``[c*cell, (c+1)*cell)`` x
    ``[r*cell, (r+1)*cell)`` (ARC: of the cropped grid).

    ``givens`` (Sudoku: the puzzle's tokens) draws the model's digits in blue and the puzzle's in black;
    ``target`` marks cells that disagree with it (Sudoku: red, maze: extra path orange, missed path pale green);
    ``previous`` (the same kind of grid from the step before) outlines the cells that changed.
    """
    puzzle_kind = get_kind(kind)
    grid = puzzle_kind.cells(tokens)
    before = None if previous is None else puzzle_kind.cells(previous)
    cell = cell or _cell_size(puzzle_kind.drawing, [max(grid.shape)])
    if puzzle_kind.drawing.digits is not None:
        return _draw_digits(puzzle_kind, grid, cell, givens, target, before)
    return _draw_tiles(puzzle_kind, grid, cell, target, before)


# ------------------------------------------------------------------------------------------------
# Traces


@dataclass
class PuzzleTrace:
    """One puzzle through the model, as tokens: what :func:`draw_trace` draws."""

    kind: str  # the puzzle kind's name, a key of smoltrain.data.puzzles.PUZZLE_KINDS
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


def _against_target(kind: PuzzleKind, tokens: np.ndarray, target: np.ndarray) -> str:
    """A short verdict of one answer against the target, for a caption."""
    wrong = kind.count_wrong(tokens, target)
    if wrong is None:
        rows, cols = kind.cells(tokens).shape
        return f"{rows}x{cols}, wrong size"
    return "correct" if wrong == 0 else f"{wrong} wrong"


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
    kind = get_kind(trace.kind)
    grids = [trace.inputs, *([] if trace.target is None else [trace.target]), *trace.steps]
    cell = _cell_size(kind.drawing, [max(kind.cells(g).shape) for g in grids])
    givens = trace.inputs

    def label(name: str, tokens: np.ndarray) -> str:
        if not kind.drawing.show_size:
            return name
        rows, cols = kind.cells(tokens).shape
        return f"{name} ({rows}x{cols})"

    panels = [(label("input", trace.inputs), draw_grid(trace.kind, trace.inputs, givens=givens, cell=cell))]
    if trace.target is not None:
        panels.append((label("target", trace.target), draw_grid(trace.kind, trace.target, givens=givens, cell=cell)))
    previous = None
    for k, tokens in enumerate(trace.steps, start=1):
        caption = label(f"step {k}", tokens) if trace.target is None else \
            f"step {k}: {_against_target(kind, tokens, trace.target)}"
        image = draw_grid(trace.kind, tokens, givens=givens, target=trace.target, previous=previous, cell=cell)
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


# The page: string.Template fills in $title, $noscript and $data (the script and style braces stay as they are).
_PAGE = string.Template("""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>smoltrain: $title</title>
<style>
body { font-family: sans-serif; margin: 1.5em; color: #222; }
button { font-size: 1em; margin-right: .3em; }
#where { margin: .6em 0; font-weight: bold; }
#summary { margin-bottom: .6em; }
img { image-rendering: pixelated; border: 1px solid #ddd; }
.trace { margin-top: 1.2em; overflow-x: auto; }
</style>
</head>
<body>
<h1>$title</h1>
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
$noscript
</noscript>
<script>
const puzzles = $data;
let puzzle = 0, step = 0;
function show() {
  const p = puzzles[puzzle];
  step = Math.max(0, Math.min(step, p.frames.length - 1));
  document.getElementById("where").textContent =
    "puzzle " + (puzzle + 1) + " of " + puzzles.length + ": " + p.title +
    " \\u2014 ACT step " + (step + 1) + " of " + p.frames.length;
  document.getElementById("summary").textContent = p.summary;
  document.getElementById("frame").src = p.frames[step];
  document.getElementById("trace").src = p.trace;
}
function move(dPuzzle, dStep) {
  if (dPuzzle) { puzzle = (puzzle + dPuzzle + puzzles.length) % puzzles.length; step = 0; }
  step += dStep;
  show();
}
document.getElementById("prevPuzzle").onclick = () => move(-1, 0);
document.getElementById("nextPuzzle").onclick = () => move(1, 0);
document.getElementById("prevStep").onclick = () => move(0, -1);
document.getElementById("nextStep").onclick = () => move(0, 1);
document.addEventListener("keydown", (e) => {
  const keys = {ArrowLeft: [0, -1], ArrowRight: [0, 1], ArrowUp: [-1, 0], ArrowDown: [1, 0]};
  if (keys[e.key]) { e.preventDefault(); move(...keys[e.key]); }
});
if (puzzles.length) show();
</script>
</body>
</html>
""")


def write_html(out_dir: str | Path, items: list[RenderedPuzzle], title: str = "ACT traces") -> Path:
    """``out_dir/index.html``: step through ``items`` and their ACT steps (plain inline JS, relative image
    paths, nothing fetched from the network); without JS it lists every trace."""
    data = json.dumps([{"title": i.title, "summary": i.summary, "trace": i.trace, "frames": i.frames}
                       for i in items])
    noscript = "\n".join(f'<p>{html.escape(i.title)}: {html.escape(i.summary)}<br><img src="{html.escape(i.trace)}" '
                         f'alt="{html.escape(i.title)}"></p>' for i in items)
    page = _PAGE.substitute(title=html.escape(title), noscript=noscript, data=data.replace("</", "<\\/"))
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
