"""The playground's routes (page.py) without a browser: the shipped files, the run's facts and the metrics tail."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from smoltrain.fileio import atomic_write_text

pytest.importorskip("fastapi", reason="the playground needs the serve extra")
from fastapi import FastAPI  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from smoltrain.serve.page import STATIC_DIR, MetricsTail, page_router  # noqa: E402


def _row(step: int) -> str:
    return json.dumps({"split": "train", "step": step, "loss": 1.0 / step}) + "\n"


def test_tail_reads_complete_lines_and_follows_appends(tmp_path) -> None:
    path = tmp_path / "metrics.jsonl"
    tail = MetricsTail(path)
    assert tail.read(0) == {"rows": [], "next": 0, "reset": False}  # no file yet: nothing, not an error
    path.write_text(_row(1) + _row(2) + _row(3)[:10])  # the third row is being written
    first = tail.read(0)
    assert [r["step"] for r in first["rows"]] == [1, 2] and first["next"] == 2
    with path.open("a") as file:
        file.write(_row(3)[10:] + "{not json\n" + _row(5))
    more = tail.read(2)
    assert [r["step"] for r in more["rows"]] == [3, 5] and more["next"] == 5  # the bad line counts, gives no row
    assert [r["step"] for r in tail.read(0)["rows"]] == [1, 2, 3, 5]


def test_tail_starts_over_when_the_run_truncates_its_metrics(tmp_path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(_row(s) for s in range(1, 6)))
    tail = MetricsTail(path)
    assert tail.read(0)["next"] == 5
    atomic_write_text(path, _row(1) + _row(2))  # a resumed run drops rows past its checkpoint (a new file)
    again = tail.read(5)
    assert again["reset"] and [r["step"] for r in again["rows"]] == [1, 2] and again["next"] == 2


def _client(tmp_path: Path, family: str = "lm") -> TestClient:
    run = SimpleNamespace(run_dir=tmp_path, family=family, name="tiny", kind=None, metrics_path=tmp_path / "m.jsonl",
                          info=lambda: {"arch": "lm", "parameters": 1234})
    app = FastAPI()
    app.include_router(page_router(run))
    return TestClient(app)


def test_the_page_and_everything_it_loads_ship_in_the_package(tmp_path) -> None:
    client = _client(tmp_path)
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    loaded = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert "/static/app.js" in loaded and "/static/plot.js" in loaded
    for url in loaded:
        if url.startswith("data:"):
            continue
        assert url.startswith("/static/") and client.get(url).status_code == 200, url
    for path in STATIC_DIR.iterdir():  # no CDN, no font or script from elsewhere
        assert not re.search(r"https?://", path.read_text()), path.name
    assert client.get("/static/app.js").headers["content-type"].startswith("text/javascript")
    missing = client.get("/static/secret.py")
    assert missing.status_code == 404 and "app.js" in missing.json()["error"]["message"]


def test_run_facts_and_examples(tmp_path) -> None:
    client = _client(tmp_path)
    assert client.get("/api/run").json() == {"arch": "lm", "parameters": 1234, "family": "lm", "name": "tiny",
                                              "kind": None}
    refused = client.get("/api/examples")
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "wrong_family"
    (tmp_path / "m.jsonl").write_text(_row(1))
    assert client.get("/api/metrics", params={"after": 0}).json()["next"] == 1
    assert client.get("/api/metrics", params={"after": -1}).status_code == 422  # a bare app: FastAPI's own 4xx
