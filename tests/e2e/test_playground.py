"""The playground in a real browser: headless Chromium (Debian's ``chromium`` and ``chromium-driver``, which
``.ci/run`` installs) driven by selenium against ``smoltrain serve``'s app, started here with uvicorn on a free port.

The page loads without console errors, a chat message streams a reply, a Sudoku is solved and stepped through, the
curves render and grow while the run writes rows. Screenshots land in the test's tmp dir, and in
``$SMOLTRAIN_SCREENSHOTS`` when set. The runs are tiny ones trained here; ``SMOLTRAIN_PLAYGROUND_RUNS=LM_RUN:TRM_RUN``
(a Sudoku run) puts copies of trained runs in their place, which is how docs/img/*.png were made."""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from smoltrain.data.sudoku import build_sudoku_dataset
from smoltrain.families import load_config
from smoltrain.runs.run_dir import RunDir
from smoltrain.train.trainer import Trainer
from tests.unit.test_lm_training import TINY, text_data  # noqa: F401

webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs selenium (the dev extra)")
uvicorn = pytest.importorskip("uvicorn", reason="the browser test needs the serve extra (fastapi, uvicorn)")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.select import Select  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from smoltrain.serve.app import create_app  # noqa: E402

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None)
CHROMEDRIVER = shutil.which("chromedriver") or next(
    (p for p in ("/usr/lib/chromium/chromedriver", "/usr/bin/chromedriver") if Path(p).is_file()), None)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="no headless browser: install Debian's chromium and chromium-driver (apt-get install -y chromium "
           "chromium-driver; .ci/run does this as root)")

TINY_TRM = ["arch=trm", "arch.L_layers=1", "arch.hidden_size=32", "arch.num_heads=2", "arch.H_cycles=2",
            "arch.L_cycles=1", "arch.halt_max_steps=4", "global_batch_size=16", "lr=1e-3", "lr_warmup_steps=2",
            "log_every=1", "device=cpu", "num_threads=1", "evaluators=[]"]
WAIT_S = 20  # generous for a shared 2-core machine; every wait ends as soon as its condition holds


def _given_run(which: int, tmp_path_factory) -> Path | None:
    """A copy of the run named in SMOLTRAIN_PLAYGROUND_RUNS (the curves test appends to its metrics)."""
    given = os.environ.get("SMOLTRAIN_PLAYGROUND_RUNS")
    if not given:
        return None
    source = Path(given.split(":")[which])
    copy = tmp_path_factory.mktemp("given") / source.name
    shutil.copytree(source, copy)
    return copy


@pytest.fixture(scope="module")
def trm_run(tmp_path_factory) -> Path:
    given = _given_run(1, tmp_path_factory)
    if given is not None:
        return given
    root = tmp_path_factory.mktemp("playground")
    build_sudoku_dataset(root / "sudoku4", "generate", size=4, num_train=200, num_test=16, seed=0)
    cfg = load_config(None, [*TINY_TRM, f"data_paths=[{root / 'sudoku4'}]", f"run_dir={root / 'trm'}",
                             "max_steps=20", "eval_interval=10"])
    Trainer(cfg).fit()
    return root / "trm"


@pytest.fixture(scope="module")
def lm_run(text_data, tmp_path_factory) -> Path:  # noqa: F811
    given = _given_run(0, tmp_path_factory)
    if given is not None:
        return given
    run = tmp_path_factory.mktemp("playground-lm") / "lm"
    # A context of 128 tokens: the chat template and a system prompt take about 30 of them.
    cfg = load_config("lm-pretrain-cpu", [*TINY, "arch.seq_len=128", f"data_paths=[{text_data}]", f"run_dir={run}",
                                          "max_steps=30",
                                          "lr=3e-3", "lr_warmup_steps=5", "num_threads=1"])
    Trainer(cfg).fit()
    return run


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve(run_dir: Path, adapters: tuple[Path, ...] = ()) -> Iterator[str]:
    port = _free_port()
    app = create_app(run_dir, device="cpu", adapters=adapters)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT_S
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def trm_server(trm_run) -> Iterator[str]:
    yield from _serve(trm_run)


@pytest.fixture(scope="module")
def lm_server(lm_run) -> Iterator[str]:
    yield from _serve(lm_run)


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,860", "--force-device-scale-factor=1"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def _console_errors(driver: webdriver.Chrome) -> list[str]:
    """The page's console errors (and failed loads) since the last call: the log is read once."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def _open(driver: webdriver.Chrome, url: str) -> None:
    driver.get(url)
    WebDriverWait(driver, WAIT_S).until(lambda d: d.find_element(By.ID, "run-facts").text)


def _wait(driver: webdriver.Chrome, condition, message: str):
    return WebDriverWait(driver, WAIT_S).until(condition, message)


def _screenshot(driver: webdriver.Chrome, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    assert driver.save_screenshot(str(path))
    extra = os.environ.get("SMOLTRAIN_SCREENSHOTS")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(extra) / path.name)
    return path


def test_chat_streams_a_reply(browser, lm_server, tmp_path) -> None:
    _open(browser, lm_server + "/")
    assert browser.find_element(By.ID, "view-chat").is_displayed()  # an LM run opens on the chat
    assert not browser.find_element(By.CSS_SELECTOR, '#tabs button[data-view="solver"]').is_displayed()
    browser.find_element(By.ID, "system-prompt").send_keys("Be brief.")
    browser.execute_script("const t = document.getElementById('temperature'); t.value = '0.2';"
                           "t.dispatchEvent(new Event('input'));")
    assert browser.find_element(By.ID, "temperature-value").text == "0.2"
    browser.find_element(By.ID, "chat-input").send_keys("the cat")
    browser.find_element(By.ID, "chat-send").click()
    reply = _wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, ".message.assistant[data-finish]"),
                  "no reply finished")
    assert reply.get_attribute("data-finish") in ("stop", "length"), reply.text
    assert int(reply.get_attribute("data-chunks")) > 1  # it came in pieces, not as one answer
    assert reply.find_element(By.CSS_SELECTOR, ".text").text.strip()
    assert not browser.find_element(By.ID, "chat-send").get_attribute("disabled")  # ready for the next message
    assert not browser.find_element(By.ID, "chat-model").is_displayed()  # one model served: nothing to pick
    _screenshot(browser, tmp_path, "chat")
    assert _console_errors(browser) == []


def test_adapter_picker_sends_to_the_chosen_adapter(browser, lm_run, tmp_path) -> None:
    from tests.e2e.test_serve_adapters import write_peft_adapter

    adapter = write_peft_adapter(tmp_path / "terse-adapter", lm_run, ["q_proj", "v_proj"], seed=1)
    for url in _serve(lm_run, adapters=(adapter,)):
        _open(browser, url + "/#chat")
        picker = _wait(browser, lambda d: d.find_element(By.ID, "chat-model") if d.find_element(
            By.ID, "chat-model").is_displayed() else None, "no model picker with an adapter served")
        options = [o.get_attribute("value") for o in picker.find_elements(By.TAG_NAME, "option")]
        assert options == [lm_run.name, "terse-adapter"]
        Select(picker).select_by_value("terse-adapter")
        browser.find_element(By.ID, "chat-input").send_keys("the cat")
        browser.find_element(By.ID, "chat-send").click()
        reply = _wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, ".message.assistant[data-finish]"),
                      "no reply finished")
        # The server's own chunks name the model that answered.
        assert "terse-adapter" in reply.find_element(By.CSS_SELECTOR, ".meta").text, reply.text
        _screenshot(browser, tmp_path, "chat-adapter")
        assert _console_errors(browser) == []


def test_stop_ends_a_reply(browser, lm_server) -> None:
    _open(browser, lm_server + "/#chat")
    browser.find_element(By.ID, "chat-input").send_keys("a dog")
    # The stop button is pressed as soon as sending has started; the tiny model may also finish first.
    browser.execute_script("document.getElementById('chat-send').click(); document.getElementById('chat-stop').click()")
    reply = _wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, ".message.assistant[data-finish]"),
                  "the reply did not end")
    assert reply.get_attribute("data-finish") in ("stopped", "stop", "length")
    assert not browser.find_element(By.ID, "chat-send").get_attribute("disabled")
    assert _console_errors(browser) == []


def test_sudoku_is_solved_and_stepped(browser, trm_server, trm_run, tmp_path) -> None:
    _open(browser, trm_server + "/")
    assert browser.find_element(By.ID, "view-solver").is_displayed()  # a TRM run opens on the solver
    assert not browser.find_element(By.CSS_SELECTOR, '#tabs button[data-view="chat"]').is_displayed()
    _wait(browser, lambda d: d.find_element(By.ID, "puzzle-input").get_attribute("value"), "no test puzzle picked")
    browser.find_element(By.ID, "solve-button").click()
    _wait(browser, lambda d: d.find_element(By.ID, "step-label").text.startswith("step 1 /"), "no trace shown")
    arch = RunDir(trm_run).load_config().arch
    total = int(browser.find_element(By.ID, "step-label").text.split("/")[1].split()[0])
    assert total == arch.halt_max_steps
    cells = browser.find_elements(By.CSS_SELECTOR, "#answer-grid .cell")
    assert len(cells) == arch.seq_len and all(c.text.strip() in "123456789" for c in cells)  # a board of digits
    assert len(browser.find_elements(By.CSS_SELECTOR, "#puzzle-grid .cell.given")) > 0
    browser.find_element(By.ID, "step-next").click()
    assert browser.find_element(By.ID, "step-label").text.startswith(f"step 2 / {total}")
    changed = browser.find_elements(By.CSS_SELECTOR, "#answer-grid .cell.changed")
    assert len(changed) == int(browser.find_element(By.ID, "answer-grid").get_attribute("data-changed"))
    assert "%" in browser.find_element(By.ID, "halt-value").text  # the halting confidence of this step
    assert browser.find_element(By.ID, "verdict").text  # valid or not, the verdict is shown
    browser.find_element(By.ID, "step-last").click()
    assert browser.find_element(By.ID, "step-label").text.startswith(f"step {total} / {total}")
    browser.find_element(By.ID, "step-first").click()
    assert browser.find_element(By.ID, "step-label").text.startswith(f"step 1 / {total}")
    _screenshot(browser, tmp_path, "solver")
    assert _console_errors(browser) == []


def _painted_pixels(driver: webdriver.Chrome, canvas_id: str) -> int:
    """Pixels of the canvas that are neither white nor grey: the coloured curves and legend swatches."""
    return driver.execute_script("""
        const c = document.getElementById(arguments[0]);
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        for (let i = 0; i < d.length; i += 4) {
          const [r, g, b] = [d[i], d[i + 1], d[i + 2]];
          if (Math.max(r, g, b) - Math.min(r, g, b) > 40) n++;
        }
        return n;""", canvas_id)


def test_curves_render_and_follow_the_run(browser, trm_server, trm_run, tmp_path) -> None:
    _open(browser, trm_server + "/#curves")
    assert browser.find_element(By.ID, "view-curves").is_displayed()
    train_rows = sum(json.loads(line)["split"] == "train" for line in (trm_run / "metrics.jsonl").open())
    _wait(browser, lambda d: int(d.find_element(By.ID, "chart-loss").get_attribute("data-points") or 0) > 0,
          "the loss curve was not drawn")
    loss = browser.find_element(By.ID, "chart-loss")
    assert int(loss.get_attribute("data-series")) >= 2  # train/loss, train/lm_loss, eval/... on one axis
    assert _painted_pixels(browser, "chart-loss") > 200
    assert int(browser.find_element(By.ID, "chart-accuracy").get_attribute("data-points")) >= train_rows
    _screenshot(browser, tmp_path, "curves")
    # A run still training appends rows: the page polls and draws them without a reload.
    before = int(loss.get_attribute("data-points"))
    last = [json.loads(line) for line in (trm_run / "metrics.jsonl").open()][-1]
    with (trm_run / "metrics.jsonl").open("a") as file:
        file.write(json.dumps({"split": "train", "step": last["step"] + 1, "loss": 0.5,
                               "elapsed_s": last.get("elapsed_s", 0) + 1}) + "\n")
    _wait(browser, lambda d: int(d.find_element(By.ID, "chart-loss").get_attribute("data-points")) == before + 1,
          "the new row was not drawn")
    Select(browser.find_element(By.ID, "x-axis")).select_by_value("time")
    assert int(browser.find_element(By.ID, "chart-loss").get_attribute("data-points")) == before + 1
    assert _console_errors(browser) == []
