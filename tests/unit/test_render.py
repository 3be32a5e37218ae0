"""Puzzle pictures: grids of each kind read back pixel by pixel, ACT traces, the stepping page, and
`smoltrain solve` / `smoltrain eval --render` on tiny Maze and ARC runs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from smoltrain.apps.render import (
    PuzzleTrace,
    draw_grid,
    draw_trace,
    render_traces,
    write_html,
)
from smoltrain.data.arc import crop_grid
from smoltrain.data.maze import KIND as MAZE
from smoltrain.data.maze import parse_maze
from smoltrain.data.puzzles import detect_kind
from smoltrain.errors import ConfigError, DataError

pytestmark = pytest.mark.usefixtures("single_thread")


# ARC's standard palette, written out from the ARC task viewer's colours (not from smoltrain.apps.render).
ARC_HEX = ["#000000", "#0074D9", "#FF4136", "#2ECC40", "#FFDC00", "#AAAAAA", "#F012BE", "#FF851B", "#7FDBFF",
           "#870C25"]


def rgb(hex_colour: str) -> tuple[int, int, int]:
    return tuple(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


def near(pixel: tuple[int, ...], colour: tuple[int, int, int], tolerance: int = 40) -> bool:
    return sum(abs(int(a) - b) for a, b in zip(pixel, colour, strict=True)) <= tolerance


def cell_pixels(image: Image.Image, r: int, c: int, cell: int) -> np.ndarray:
    return np.asarray(image)[r * cell + 3:(r + 1) * cell - 2, c * cell + 3:(c + 1) * cell - 2].reshape(-1, 3)


def sudoku_tokens(digits: str) -> np.ndarray:
    return np.array([1 if ch == "." else int(ch) + 1 for ch in digits])


def arc_canvas(grid: np.ndarray, n: int = 30) -> np.ndarray:
    """An n x n token canvas: colours + 2 at the top left, an EOS (1) border right and below, PAD elsewhere."""
    canvas = np.zeros((n, n), dtype=np.int64)
    rows, cols = grid.shape
    canvas[:rows, :cols] = grid + 2
    canvas[rows, :cols] = 1
    canvas[:rows, cols] = 1
    return canvas.reshape(-1)


def puzzle_kind(vocab_size: int, seq_len: int, root: Path | None = None) -> str:
    return detect_kind(root, vocab_size=vocab_size, seq_len=seq_len).name


def sudoku_trace(steps: int = 3, target: bool = True) -> PuzzleTrace:
    inputs = sudoku_tokens("1.3..........2.1")
    solved = sudoku_tokens("1234341221434321")
    answers = []
    for k in range(steps):
        answer = solved.copy()
        answer[k] = 1  # one more blank each step, a change every step
        answers.append(answer)
    return PuzzleTrace("sudoku", inputs, solved if target else None, answers, "a 4x4 Sudoku", "valid")


MAZE_N = 7


def test_sudoku_grid_colours() -> None:
    givens = sudoku_tokens("1.3..........2.1")
    answer = sudoku_tokens("1234341221434321")
    target = sudoku_tokens("1234341221434312")  # the last two cells differ from the answer
    previous = answer.copy()
    previous[1] = 1  # row 0, column 1 was blank one step before
    image = draw_grid("sudoku", answer, givens=givens, target=target, previous=previous)
    assert image.size == (4 * 24 + 1, 4 * 24 + 1)
    pixels = image.load()
    white, light_red = (255, 255, 255), (255, 205, 205)
    assert pixels[5, 5] == white  # row 0 col 0: a given, right
    assert near(pixels[3 * 24 + 5, 3 * 24 + 5], light_red, 60) and near(pixels[2 * 24 + 5, 3 * 24 + 5], light_red, 60)
    assert pixels[1 * 24 + 5, 3 * 24 + 5] == white  # row 3 col 1: filled by the model, right
    # The cell that changed since the previous step is outlined, the others are not.
    assert pixels[1 * 24 + 2, 12] == (255, 150, 0) and pixels[3 * 24 + 2, 12] == white

    def darkest(r: int, c: int) -> tuple[int, int, int]:
        cell = cell_pixels(image, r, c, 24)
        return tuple(cell[cell.sum(axis=1).argmin()])

    assert near(darkest(0, 0), (17, 17, 17))  # given digit: black
    blue = darkest(0, 1)  # filled in by the model: blue
    assert blue[2] > blue[0] + 80
    red = darkest(3, 3)  # wrong: red
    assert red[0] > red[2] + 80
    # Box borders are darker than cell lines: the line between columns 1|2 (a box edge) vs 0|1.
    assert sum(pixels[2 * 24, 12]) < sum(pixels[1 * 24, 12])


def test_maze_grid_colours() -> None:
    maze = ("S  #   "
            "## # # "
            "   #   "
            " ##### "
            "       "
            "###### "
            "G      ")
    chars = "# SGo"
    inputs = np.array([chars.index(ch) + 1 for ch in maze])
    answer = inputs.copy()
    answer[1] = answer[2] = 5  # right along row 0: a path cell the target has ...
    answer[8 * 1 + 6] = 5  # ... and a stray one at row 1, column 6 it does not
    target = inputs.copy()
    target[[1, 2, 7 + 2]] = 5  # the target's path also goes down at row 1, column 2
    image = draw_grid("maze", answer, target=target)
    assert image.size == (7 * 24 + 1, 7 * 24 + 1)  # 7x7 mazes get the largest cells
    px = image.load()

    def centre(r: int, c: int) -> tuple[int, int, int]:
        return px[c * 24 + 12, r * 24 + 12]

    walls, free = centre(0, 3), centre(0, 4)
    assert sum(walls) < 200 and sum(free) > 700  # walls dark, free cells light
    assert centre(0, 0)[2] > 150 > centre(0, 0)[0]  # S blue
    assert centre(6, 0)[0] > 200 > centre(6, 0)[2]  # G red
    green = centre(0, 1)
    assert green[1] > 150 > green[0]  # path cells the target has: green
    assert centre(1, 6) != green and centre(1, 6)[0] > 200  # a stray path cell: orange
    missed = centre(1, 2)
    assert missed != free and missed[1] > missed[0]  # target path the model did not draw: pale green

    plain = draw_grid("maze", inputs)  # no target: nothing marked
    assert plain.load()[6 * 24 + 12, 1 * 24 + 12] == free


def test_arc_grid_colours_and_crop() -> None:
    grid = np.arange(12).reshape(3, 4) % 10  # every colour at least once
    canvas = arc_canvas(grid)
    assert np.array_equal(crop_grid(canvas), grid)
    image = draw_grid("arc", canvas, cell=10)
    assert image.size == (4 * 10 + 1, 3 * 10 + 1)
    px = image.load()
    for r in range(3):
        for c in range(4):
            assert px[c * 10 + 5, r * 10 + 5] == rgb(ARC_HEX[grid[r, c]]), (r, c)
    assert px[0, 5] == px[10, 5] != rgb(ARC_HEX[0])  # thin grid lines between cells
    # A full 30x30 grid at the default size: ~10 px cells.
    full = draw_grid("arc", (np.arange(900) % 10) + 2)
    assert full.size == (301, 301)
    # Ragged predictions: the largest top-left rectangle of colour tokens; nothing when the corner is EOS.
    ragged = arc_canvas(np.ones((4, 5), dtype=np.int64))
    ragged[2 * 30 + 3] = 1
    assert crop_grid(ragged).shape == (4, 3)
    assert crop_grid(np.ones(900, dtype=np.int64)).shape == (0, 0)
    assert draw_grid("arc", np.ones(900, dtype=np.int64)).size[0] > 0  # drawn as an "empty" placeholder


def test_arc_grid_on_a_small_canvas() -> None:
    """`smoltrain data arc --canvas-size 10`: 100 tokens per grid; the picture is the same cropped grid."""
    grid = np.arange(12).reshape(3, 4) % 10
    small = draw_grid("arc", arc_canvas(grid, 10), cell=10)
    assert np.array_equal(np.asarray(small), np.asarray(draw_grid("arc", arc_canvas(grid), cell=10)))
    full = draw_grid("arc", (np.arange(100) % 10) + 2, cell=10)  # a 10x10 grid fills its canvas
    assert full.size == (10 * 10 + 1, 10 * 10 + 1)
    trace = draw_trace(PuzzleTrace("arc", arc_canvas(grid, 10), arc_canvas(grid, 10), [arc_canvas(grid, 10)]))
    assert [panel.caption for panel in trace.panels] == ["input (3x4)", "target (3x4)", "step 1: correct"]
    with pytest.raises(ConfigError, match="cannot draw arc puzzles of 99 cells"):
        draw_grid("arc", np.ones(99, dtype=np.int64))


def test_unknown_kind_and_shapes() -> None:
    with pytest.raises(ConfigError, match="unknown puzzle kind 'chess'"):
        draw_grid("chess", np.ones(16))
    with pytest.raises(ConfigError, match="cannot draw maze puzzles of 50 cells"):
        draw_grid("maze", np.ones(50, dtype=np.int64))


def test_puzzle_kind(tmp_path: Path) -> None:
    assert puzzle_kind(12, 900) == "arc"
    # Smaller ARC canvases (`data arc --canvas-size`): any square up to 30x30 over the 12 ARC tokens.
    assert puzzle_kind(12, 100) == "arc" and puzzle_kind(12, 1) == "arc" and puzzle_kind(12, 841) == "arc"
    assert puzzle_kind(12, 99) == "sudoku" and puzzle_kind(12, 961) == "sudoku"  # not an ARC canvas: as before
    assert puzzle_kind(6, 900) == "maze" and puzzle_kind(6, 49) == "maze" and puzzle_kind(6, 36) == "maze"
    assert puzzle_kind(6, 16) == "sudoku" and puzzle_kind(11, 81) == "sudoku"
    (tmp_path / "build_info.json").write_text(json.dumps({"builder": "maze"}))
    assert puzzle_kind(11, 81, tmp_path) == "maze"  # the builder's word wins over the shapes
    (tmp_path / "build_info.json").write_text("{broken")
    assert puzzle_kind(12, 900, tmp_path) == "arc"


def test_trace_has_input_target_and_every_step() -> None:
    trace = sudoku_trace(steps=3)
    drawn = draw_trace(trace)
    assert [p.caption for p in drawn.panels] == ["input", "target", "step 1: 1 wrong", "step 2: 1 wrong",
                                                 "step 3: 1 wrong"]
    boxes = [p.box for p in drawn.panels]
    assert all(a[2] < b[0] for a, b in zip(boxes[:-1], boxes[1:], strict=True))  # side by side, left to right
    assert drawn.image.width >= boxes[-1][2] and drawn.image.height >= boxes[0][3]
    # Each panel holds the grid drawn on its own: the input, and step 2 with step 1 as its previous.
    pasted = np.asarray(drawn.image.crop(boxes[0]))
    assert np.array_equal(pasted, np.asarray(draw_grid("sudoku", trace.inputs, givens=trace.inputs)))
    step2 = draw_grid("sudoku", trace.steps[1], givens=trace.inputs, target=trace.target, previous=trace.steps[0])
    assert np.array_equal(np.asarray(drawn.image.crop(boxes[3])), np.asarray(step2))
    # A typed puzzle has no target: K + 1 panels.
    assert len(draw_trace(sudoku_trace(steps=4, target=False)).panels) == 5


def test_arc_trace_panels_differ_in_size() -> None:
    inputs = arc_canvas(np.zeros((2, 3), dtype=np.int64))
    target = arc_canvas(np.full((4, 4), 3))
    steps = [arc_canvas(np.full((4, 4), 3)), np.ones(900, dtype=np.int64)]  # right, then nothing
    drawn = draw_trace(PuzzleTrace("arc", inputs, target, steps))
    captions = [p.caption for p in drawn.panels]
    assert captions == ["input (2x3)", "target (4x4)", "step 1: correct", "step 2: 0x0, wrong size"]
    widths = [p.box[2] - p.box[0] for p in drawn.panels]
    assert widths[0] * 4 == (widths[1] - 1) * 3 + 4 and widths[1] == widths[2]  # one cell size for all panels


def test_render_traces_writes_pngs_and_a_page(tmp_path: Path) -> None:
    traces = [sudoku_trace(steps=3), sudoku_trace(steps=2, target=False)]
    page = render_traces(traces, tmp_path / "out", ["first", "second"])
    assert page == tmp_path / "out" / "index.html"
    text = page.read_text()
    pngs = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.png"))
    assert pngs == ["first.png", "frames/first-step-01.png", "frames/first-step-02.png", "frames/first-step-03.png",
                    "frames/second-step-01.png", "frames/second-step-02.png", "second.png"]
    assert all(f'"{png}"' in text for png in pngs)  # every picture is on the page
    assert "http" not in text and "<script src" not in text  # nothing fetched from the network
    assert 'id="prevStep"' in text and 'id="nextPuzzle"' in text
    assert Image.open(tmp_path / "out" / "first.png").size == draw_trace(traces[0]).image.size
    # A frame is input | target | that step.
    assert Image.open(tmp_path / "out" / "frames" / "first-step-01.png").width < Image.open(
        tmp_path / "out" / "first.png").width
    assert not list((tmp_path / "out").rglob("*.tmp"))  # atomic writes leave nothing behind


def test_html_escapes_titles(tmp_path: Path) -> None:
    from smoltrain.apps.render import RenderedPuzzle

    write_html(tmp_path, [RenderedPuzzle("</script><b>x", "a & b", "t.png", ["f.png"])])
    text = (tmp_path / "index.html").read_text()
    assert "</script><b>" not in text  # the title cannot close the script early ...
    assert "&lt;/script&gt;&lt;b&gt;x: a &amp; b" in text  # ... nor add markup to the no-script list
    data = json.loads(re.search(r"const puzzles = (.*);\n", text).group(1).replace("<\\/", "</"))
    assert data[0]["title"] == "</script><b>x" and data[0]["frames"] == ["f.png"]


def test_parse_maze_variants_and_errors() -> None:
    lines = "S.#\n  #\n##G\n"
    tokens = parse_maze(lines)
    assert tokens.tolist() == [3, 2, 1, 2, 2, 1, 1, 1, 4]
    assert np.array_equal(parse_maze("S #  ###G"), tokens)  # one n*n line
    # A row of free cells stripped by an editor still counts.
    assert parse_maze("S.#\n\n##G").tolist() == parse_maze("S.#\n   \n##G").tolist() == [3, 2, 1, 2, 2, 2, 1, 1, 4]
    with pytest.raises(DataError, match=r"one line of 8 characters, which is not n\*n"):
        parse_maze("S #  ##G")
    with pytest.raises(DataError, match="maze row 2 has 4 characters, but a maze of 3 rows needs 3"):
        parse_maze("S #\n    \n##G")
    with pytest.raises(DataError, match=r"'x' at row 1, column 2"):
        parse_maze("Sx#\n  #\n##G")
    with pytest.raises(DataError, match=r"2 G \(goal\) cells; it needs exactly one"):
        parse_maze("S #\n G#\n##G")


def test_maze_verdicts() -> None:
    """The checks behind `solve`'s verdict, on the dataset's own labels (valid) and a broken path."""
    root_inputs = np.full((MAZE_N, MAZE_N), 2)
    root_inputs[1, :] = 1
    root_inputs[0, 0], root_inputs[0, -1] = 3, 4
    label = root_inputs.copy()
    label[0, 1:-1] = 5
    inputs, label = root_inputs.reshape(-1), label.reshape(-1)
    verdict = MAZE.verdict(inputs, label, label)
    assert (verdict.correct, verdict.line) == (True, "a valid shortest path (equals the dataset's path)")
    gap = label.copy()
    gap[3] = 2
    verdict = MAZE.verdict(inputs, label, gap)
    assert verdict.correct is False and verdict.line.startswith("not a valid shortest path")
