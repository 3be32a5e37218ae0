// The smoltrain playground: chat (LM runs), the puzzle solver (TRM runs) and the training curves (every run).
// Plain JavaScript, no libraries; everything it calls is documented in smoltrain/serve/page.py and the README.
"use strict";

const $ = (selector) => document.querySelector(selector);
const POLL_MS = 2000;  // how often the curves ask for new metrics rows
const MAZE_CHARS = "?# SGo";  // maze tokens 0..5 (PAD, wall, free, start, goal, path), as smoltrain.data.maze
const MAZE_WORDS = {"#": "wall", " ": "free", "S": "start", "G": "goal", "o": "path"};  // what the characters mean
const ARC_COLOURS = ["#000000", "#0074D9", "#FF4136", "#2ECC40", "#FFDC00", "#AAAAAA", "#F012BE", "#FF851B",
                     "#7FDBFF", "#870C25"];  // ARC's standard ten, used when the server sends no palette
const SKIPPED_KEYS = new Set(["step", "split", "elapsed_s", "count", "skipped"]);

const state = {
  run: null, model: null, history: [], abort: null,
  examples: [], palette: {}, changedColour: null, trace: null, step: 0, player: null,
  rows: [], next: 0, lastNewRows: 0,
};

// ---------------------------------------------------------------------------------------------------------------
// requests

function headers() {
  const out = {"Content-Type": "application/json"};
  const key = $("#api-key").value.trim();
  if (key) out.Authorization = "Bearer " + key;
  return out;
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    return (body.error && body.error.message) || JSON.stringify(body.detail || body);
  } catch (_) {
    return response.status + " " + response.statusText;
  }
}

async function getJSON(url, options = {}) {
  const response = await fetch(url, {headers: headers(), ...options});
  if (!response.ok) throw new Error(await errorMessage(response));
  return response.json();
}

function showPageError(message) {
  const el = $("#page-error");
  el.textContent = message;
  el.hidden = !message;
}

// ---------------------------------------------------------------------------------------------------------------
// tabs

function showView(name) {
  for (const button of document.querySelectorAll("#tabs button")) {
    button.classList.toggle("active", button.dataset.view === name);
  }
  for (const view of document.querySelectorAll(".view")) view.hidden = view.id !== "view-" + name;
  if (name === "curves") drawCurves();
  history.replaceState(null, "", "#" + name);
}

// ---------------------------------------------------------------------------------------------------------------
// chat

function addMessage(role, text) {
  const el = document.createElement("div");
  el.className = "message " + role;
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  el.appendChild(body);
  $("#chat-log").appendChild(el);
  $("#chat-log").scrollTop = $("#chat-log").scrollHeight;
  return el;
}

function setStreaming(on) {
  $("#chat-send").disabled = on;
  $("#chat-stop").disabled = !on;
}

// Reads an OpenAI server-sent event stream; calls onChunk(parsed JSON) per event; resolves at [DONE] or the end.
async function readEvents(response, onChunk) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, {stream: true}).replace(/\r\n/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") { reader.cancel().catch(() => {}); return; }
        onChunk(JSON.parse(data));
      }
    }
  }
}

function showModels(ids) {
  // The base first, then each adapter `serve --adapter` loaded; a picker only when there is a choice.
  const select = $("#chat-model");
  select.replaceChildren(...ids.map((id) => new Option(id, id)));
  select.hidden = $("#chat-model-label").hidden = ids.length < 2;
  select.onchange = () => { state.model = select.value; };
}

async function sendChat(event) {
  event.preventDefault();
  const text = $("#chat-input").value.trim();
  if (!text || state.abort) return;
  $("#chat-input").value = "";
  state.history.push({role: "user", content: text});
  addMessage("user", text);
  const bubble = addMessage("assistant streaming", "");
  const messages = [];
  const system = $("#system-prompt").value.trim();
  if (system) messages.push({role: "system", content: system});
  messages.push(...state.history);
  const request = {model: state.model, messages, stream: true,
                   temperature: Number($("#temperature").value), max_tokens: Number($("#max-tokens").value) || 200};
  const controller = new AbortController();
  state.abort = controller;
  setStreaming(true);
  let reply = "", pieces = 0, finish = null, answeredBy = null;
  const started = performance.now();
  let firstAt = null;
  $("#chat-status").textContent = "generating…";
  try {
    const response = await fetch("/v1/chat/completions", {method: "POST", headers: headers(),
                                                          body: JSON.stringify(request), signal: controller.signal});
    if (!response.ok) throw new Error(await errorMessage(response));
    await readEvents(response, (chunk) => {
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.model) answeredBy = chunk.model;
      const choice = (chunk.choices || [])[0];
      if (!choice) return;
      const delta = (choice.delta && choice.delta.content) || "";
      if (delta) {
        if (firstAt === null) firstAt = performance.now();
        reply += delta;
        pieces += 1;
        bubble.querySelector(".text").textContent = reply;
        $("#chat-log").scrollTop = $("#chat-log").scrollHeight;
      }
      if (choice.finish_reason) finish = choice.finish_reason;
    });
  } catch (err) {
    if (err.name === "AbortError") {
      finish = "stopped";
    } else {
      bubble.classList.add("error");
      bubble.querySelector(".text").textContent = reply + (reply ? "\n" : "") + "error: " + err.message;
      finish = "error";
    }
  } finally {
    state.abort = null;
    setStreaming(false);
    bubble.classList.remove("streaming");
  }
  if (finish !== "error") state.history.push({role: "assistant", content: reply});
  const seconds = (performance.now() - started) / 1000;
  const rate = firstAt !== null && pieces > 1 ? ` · ${(pieces / seconds).toFixed(1)} chunks/s` : "";
  const firstToken = firstAt !== null ? ` · first token after ${((firstAt - started) / 1000).toFixed(2)} s` : "";
  const meta = document.createElement("span");
  meta.className = "meta";
  // With adapters served, say which model answered (the server's word, not the picker's).
  const by = answeredBy && $("#chat-model").options.length > 1 ? ` · ${answeredBy}` : "";
  meta.textContent = `${pieces} chunks${rate}${firstToken}${by} · ${finish || "done"}`;
  bubble.appendChild(meta);
  bubble.dataset.finish = finish || "done";
  bubble.dataset.chunks = String(pieces);
  $("#chat-status").textContent = "";
}

function stopChat() {
  if (state.abort) state.abort.abort();
}

function clearChat() {
  stopChat();
  state.history = [];
  $("#chat-log").textContent = "";
}

// ---------------------------------------------------------------------------------------------------------------
// puzzle solver

function kindOf() {
  return (state.trace && state.trace.kind) || state.examplesKind || state.run.kind || "sudoku";
}

// A cell's value as a number: maze steps may come as tokens or as the maze's characters.
function cellValue(kind, value) {
  if (typeof value === "string") return kind === "maze" ? Math.max(0, MAZE_CHARS.indexOf(value)) : Number(value) || 0;
  return value;
}

function cellColour(kind, value) {
  if (state.palette[value] !== undefined) return state.palette[value];
  if (kind === "arc") return ARC_COLOURS[value] || "#ffffff";
  return null;
}

// The givens of a typed Sudoku (digits row by row; . or 0 blank; separators ignored), or null.
function sudokuGivens(text) {
  const cells = [];
  for (const ch of text) {
    if (ch === "." ) cells.push(0);
    else if (ch >= "0" && ch <= "9") cells.push(Number(ch));
  }
  const side = Math.round(Math.sqrt(cells.length));
  if (side * side !== cells.length || side < 2) return null;
  return Array.from({length: side}, (_, r) => cells.slice(r * side, (r + 1) * side));
}

function boxShape(n) {  // rows x columns of a box, as smoltrain.data.sudoku.box_shape
  if (n === 6) return [2, 3];
  const root = Math.round(Math.sqrt(n));
  return root * root === n ? [root, root] : [1, n];
}

function drawGrid(container, grid, {changed = [], givens = null} = {}) {
  const kind = kindOf();
  const rows = grid.length, cols = rows ? grid[0].length : 0;
  const size = Math.max(12, Math.min(44, Math.floor(400 / Math.max(rows, cols, 1))));
  container.className = "grid " + kind;
  container.style.gridTemplateColumns = `repeat(${cols}, ${size}px)`;
  container.style.gridAutoRows = size + "px";
  container.dataset.rows = rows;
  container.dataset.changed = String(changed.length);
  if (state.changedColour) container.style.setProperty("--changed-colour", state.changedColour);
  const marked = new Set(changed.map(([r, c]) => r + "," + c));
  const [boxRows, boxCols] = kind === "sudoku" ? boxShape(rows) : [0, 0];
  const cells = [];
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const value = cellValue(kind, grid[r][c]);
      const cell = document.createElement("div");
      cell.className = "cell";
      if (kind === "sudoku") {
        cell.textContent = value ? String(value) : "";
        if (givens && givens[r] && givens[r][c]) cell.classList.add("given");
        if (boxCols && (c + 1) % boxCols === 0 && c + 1 < cols) cell.classList.add("box-right");
        if (boxRows && (r + 1) % boxRows === 0 && r + 1 < rows) cell.classList.add("box-bottom");
        cell.style.fontSize = Math.round(size * 0.45) + "px";
      } else {
        const colour = cellColour(kind, value);
        if (colour) cell.style.background = colour;
        cell.title = kind === "maze" ? (MAZE_WORDS[MAZE_CHARS[value]] || "?") : "colour " + value;
      }
      if (marked.has(r + "," + c)) cell.classList.add("changed");
      cells.push(cell);
    }
  }
  container.replaceChildren(...cells);
}

function drawLegend() {
  const kind = kindOf();
  const items = [];
  if (kind === "maze") {
    // the server's legend says which character each token is (/v1/solve "legend"); else smoltrain's own tokens
    const legend = (state.trace && state.trace.legend && Object.keys(state.trace.legend).length)
      ? state.trace.legend : Object.fromEntries([...MAZE_CHARS].map((ch, token) => [token, ch]));
    for (const [token, ch] of Object.entries(legend)) {
      if (MAZE_WORDS[ch]) items.push([cellColour(kind, Number(token)), `${MAZE_WORDS[ch]} (${ch === " " ? "space" : ch})`]);
    }
  } else if (kind === "arc") {
    for (let v = 0; v < 10; v++) items.push([cellColour(kind, v), String(v)]);
  } else {
    items.push(["#eef1f5", "given"]);
  }
  const legend = $("#legend");
  legend.replaceChildren(...items.map(([colour, name]) => {
    const span = document.createElement("span");
    const swatch = document.createElement("i");
    swatch.style.background = colour || "#fff";
    span.append(swatch, name);
    return span;
  }));
  const changed = document.createElement("span");
  const swatch = document.createElement("i");
  swatch.style.boxShadow = `inset 0 0 0 3px ${state.changedColour || "#f59e0b"}`;
  changed.append(swatch, "changed in this step");
  legend.appendChild(changed);
}

async function loadExamples() {
  try {
    const body = await getJSON("/api/examples?count=16");
    state.examples = body.examples;
    state.palette = body.palette || {};
    state.changedColour = body.changed || null;
    state.examplesKind = body.kind;
    const select = $("#example-select");
    for (const example of body.examples) {
      const option = document.createElement("option");
      option.value = String(example.index);
      option.textContent = example.title;
      select.appendChild(option);
    }
    if (body.note) $("#solve-status").textContent = body.note;
    if (body.examples.length) {
      select.value = String(body.examples[0].index);
      pickExample();
    }
    drawLegend();
  } catch (err) {
    $("#solve-status").textContent = "no test puzzles: " + err.message;
  }
}

function pickExample() {
  const index = $("#example-select").value;
  const example = state.examples.find((e) => String(e.index) === index);
  if (!example) return;
  $("#puzzle-input").value = example.puzzle;
  const kind = state.examplesKind;
  if (kind === "sudoku") drawGrid($("#puzzle-grid"), example.grid, {givens: example.grid});
  else drawGrid($("#puzzle-grid"), example.grid);
}

// A picked test example goes by its index (the server then knows its target and, for ARC, its puzzle
// identifier); an edited or typed puzzle goes as text, an ARC grid as JSON rows.
function puzzleBody() {
  const text = $("#puzzle-input").value;
  const picked = state.examples.find((e) => String(e.index) === $("#example-select").value);
  let body;
  if (picked && picked.puzzle === text) {
    body = {example: picked.index};
  } else {
    body = {puzzle: text};
    if (kindOf() === "arc") {
      try { body.puzzle = JSON.parse(text); } catch (_) { /* the server says what is wrong with it */ }
    }
  }
  const steps = Number($("#max-steps").value);
  if (steps > 0) body.max_steps = steps;
  return body;
}

async function solve() {
  const button = $("#solve-button");
  button.disabled = true;
  stopPlaying();
  $("#solve-status").textContent = "solving…";
  $("#verdict").textContent = "";
  try {
    const started = performance.now();
    const trace = await getJSON("/v1/solve", {method: "POST", body: JSON.stringify(puzzleBody())});
    state.trace = trace;
    const slider = $("#step-slider");
    slider.max = String(trace.steps.length - 1);
    const seconds = ((performance.now() - started) / 1000).toFixed(2);
    $("#solve-status").textContent = `${trace.steps.length} ACT steps in ${seconds} s; halted at step ${trace.halted_at}`;
    const verdict = $("#verdict");
    verdict.className = trace.valid === true ? "good" : trace.valid === false ? "bad" : "";
    const mark = trace.valid === true ? "✓ " : trace.valid === false ? "✗ " : "";
    verdict.textContent = mark + (trace.verdict || (trace.valid === true ? "the answer is valid"
      : trace.valid === false ? "the answer is not valid" : "no check for this puzzle"));
    const kind = kindOf();
    const input = trace.input || (kind === "sudoku" ? sudokuGivens($("#puzzle-input").value) : null);
    state.givens = kind === "sudoku" ? input : null;
    if (input) drawGrid($("#puzzle-grid"), input, {givens: state.givens});
    drawLegend();
    showStep(0);
  } catch (err) {
    $("#solve-status").textContent = "error: " + err.message;
  } finally {
    button.disabled = false;
  }
}

function showStep(index) {
  const trace = state.trace;
  if (!trace || !trace.steps.length) return;
  index = Math.max(0, Math.min(trace.steps.length - 1, index));
  state.step = index;
  const step = trace.steps[index];
  $("#step-slider").value = String(index);
  const halted = index + 1 === trace.halted_at ? " (halts here)" : "";
  $("#step-label").textContent = `step ${index + 1} / ${trace.steps.length}${halted}`;
  $("#answer-caption").textContent = `after ACT step ${index + 1}, ${step.changed.length} cells changed`;
  drawGrid($("#answer-grid"), step.grid, {changed: step.changed, givens: state.givens});
  // q_halt: the model's probability that the answer is done (sigmoid of its halting logit); ACT halts above 0.5
  const confidence = Math.max(0, Math.min(1, step.q_halt));
  $("#halt-bar").style.width = (100 * confidence).toFixed(1) + "%";
  $("#halt-value").textContent = `${(100 * confidence).toFixed(1)}%` + (confidence > 0.5 ? " (would halt)" : "");
}

function stopPlaying() {
  if (state.player) clearInterval(state.player);
  state.player = null;
  $("#step-play").textContent = "Play";
}

function togglePlay() {
  if (state.player) return stopPlaying();
  if (!state.trace) return;
  if (state.step >= state.trace.steps.length - 1) showStep(0);
  $("#step-play").textContent = "Pause";
  state.player = setInterval(() => {
    if (state.step >= state.trace.steps.length - 1) return stopPlaying();
    showStep(state.step + 1);
  }, 400);
}

// ---------------------------------------------------------------------------------------------------------------
// curves

function numericKeys(rows) {
  const keys = new Set();
  for (const row of rows) {
    for (const [key, value] of Object.entries(row)) {
      if (!SKIPPED_KEYS.has(key) && typeof value === "number") keys.add(key);
    }
  }
  return [...keys].sort();
}

// The wall time of every row: its own elapsed_s, else (evaluation rows of older runs) that of the last train row
// at or before its step.
function withTimes(rows) {
  let last = 0;
  const byStep = [];
  for (const row of rows) {
    if (row.split === "train" && typeof row.elapsed_s === "number") byStep.push([row.step, row.elapsed_s]);
  }
  return rows.map((row) => {
    if (typeof row.elapsed_s === "number") return [row, row.elapsed_s];
    for (const [step, t] of byStep) { if (step <= row.step) last = t; else break; }
    return [row, last];
  });
}

function seriesFor(rows, test) {
  const timed = withTimes(rows);
  const useTime = $("#x-axis").value === "time";
  const groups = new Map();
  for (const [row, t] of timed) {
    const split = row.split || "train";
    if (split === "nonfinite") continue;
    for (const [key, value] of Object.entries(row)) {
      if (SKIPPED_KEYS.has(key) || typeof value !== "number" || !test(key)) continue;
      const name = `${split}/${key}`;
      if (!groups.has(name)) groups.set(name, {name, points: [], dashed: split !== "train", dots: split !== "train"});
      groups.get(name).points.push([useTime ? t : row.step, value]);
    }
  }
  return [...groups.values()];
}

const isLoss = (key) => /loss/.test(key);
const isAccuracy = (key) => /acc/.test(key);

function drawCurves() {
  if ($("#view-curves").hidden) return;
  const options = {xLabel: $("#x-axis").value === "time" ? "wall time" : "step",
                   xIsTime: $("#x-axis").value === "time", logY: $("#log-y").checked};
  SmolPlot.drawChart($("#chart-loss"), seriesFor(state.rows, isLoss), {...options, title: "loss"});
  // LM runs log no accuracy: their second chart is the validation bits per byte
  const keys = numericKeys(state.rows);
  const second = keys.some(isAccuracy) ? ["accuracy", isAccuracy]
    : keys.includes("bits_per_byte") ? ["validation bits per byte", (key) => key === "bits_per_byte"]
      : ["accuracy", isAccuracy];
  SmolPlot.drawChart($("#chart-accuracy"), seriesFor(state.rows, second[1]),
                     {...options, title: second[0], logY: false, empty: "no accuracy in this run's metrics"});
  const extra = $("#extra-metric").value;
  SmolPlot.drawChart($("#chart-extra"), extra ? seriesFor(state.rows, (key) => key === extra) : [],
                     {...options, title: extra || "other metric", logY: false});
}

function updateMetricMenu() {
  const select = $("#extra-metric");
  const chosen = select.value;
  const keys = numericKeys(state.rows).filter((k) => !isLoss(k) && !isAccuracy(k) && k !== "bits_per_byte");
  if (keys.join() === [...select.options].map((o) => o.value).join()) return;
  select.replaceChildren(...keys.map((key) => new Option(key, key)));
  select.value = keys.includes(chosen) ? chosen : (keys.includes("lr") ? "lr" : keys[0] || "");
}

async function pollMetrics() {
  try {
    const body = await getJSON(`/api/metrics?after=${state.next}`);
    if (body.reset) state.rows = [];
    if (body.rows.length || body.reset) {
      state.rows.push(...body.rows);
      state.lastNewRows = Date.now();
      updateMetricMenu();
      drawCurves();
    }
    state.next = body.next;
    const last = state.rows.length ? state.rows[state.rows.length - 1].step : "–";
    const live = Date.now() - state.lastNewRows < 30000 && state.rows.length ? " · live" : "";
    $("#curve-status").textContent = `${state.rows.length} rows · last step ${last}${live}`;
  } catch (err) {
    $("#curve-status").textContent = "metrics: " + err.message;
  }
  setTimeout(pollMetrics, POLL_MS);
}

// ---------------------------------------------------------------------------------------------------------------
// start

function describe(run) {
  const facts = [run.family === "lm" ? "language model" : `TRM, ${run.kind || "puzzles"}`];
  for (const key of ["arch", "parameters", "seq_len", "vocab_size", "step", "dataset"]) {
    const value = run[key];
    if (value === undefined || value === null || typeof value === "object") continue;
    facts.push(`${key} ${typeof value === "number" ? value.toLocaleString("en") : value}`);
  }
  return facts.join(" · ");
}

async function start() {
  $("#api-key").value = sessionStorage.getItem("smoltrain.apiKey") || "";
  $("#api-key").addEventListener("change", () => {
    sessionStorage.setItem("smoltrain.apiKey", $("#api-key").value.trim());
    loadRun();
  });
  for (const button of document.querySelectorAll("#tabs button")) {
    button.addEventListener("click", () => showView(button.dataset.view));
  }
  $("#chat-form").addEventListener("submit", sendChat);
  $("#chat-input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("#chat-form").requestSubmit(); }
  });
  $("#chat-stop").addEventListener("click", stopChat);
  $("#chat-clear").addEventListener("click", clearChat);
  $("#temperature").addEventListener("input", () => { $("#temperature-value").textContent = $("#temperature").value; });
  $("#example-select").addEventListener("change", pickExample);
  $("#solve-button").addEventListener("click", solve);
  $("#step-slider").addEventListener("input", () => { stopPlaying(); showStep(Number($("#step-slider").value)); });
  $("#step-first").addEventListener("click", () => { stopPlaying(); showStep(0); });
  $("#step-prev").addEventListener("click", () => { stopPlaying(); showStep(state.step - 1); });
  $("#step-next").addEventListener("click", () => { stopPlaying(); showStep(state.step + 1); });
  $("#step-last").addEventListener("click", () => { stopPlaying(); showStep(Infinity); });
  $("#step-play").addEventListener("click", togglePlay);
  for (const id of ["#x-axis", "#log-y", "#extra-metric"]) $(id).addEventListener("change", drawCurves);
  window.addEventListener("resize", drawCurves);
  window.addEventListener("hashchange", () => { if (state.run) showView(viewFromHash()); });
  pollMetrics();
  await loadRun();
}

// The view a link names (#chat, #solver, #curves) when this run has it, else the run's first view.
function viewFromHash() {
  const family = state.run.family;
  const first = family === "lm" ? "chat" : family === "trm" ? "solver" : "curves";
  const wanted = location.hash.slice(1);
  return ["curves", first].includes(wanted) ? wanted : first;
}

async function loadRun() {
  try {
    state.run = await getJSON("/api/run");
  } catch (err) {
    showPageError("cannot read the run: " + err.message);
    return;
  }
  showPageError("");
  document.title = `${state.run.name} · smoltrain`;
  $("#run-name").textContent = state.run.name;
  $("#run-facts").textContent = describe(state.run);
  const family = state.run.family;
  $('#tabs button[data-view="chat"]').hidden = family !== "lm";
  $('#tabs button[data-view="solver"]').hidden = family !== "trm";
  showView(viewFromHash());
  if (family === "lm") {
    if (state.run.context) {  // prompt + reply must fit the context the run trained on
      const box = $("#max-tokens");
      box.max = String(state.run.context - 1);
      box.value = String(Math.min(Number(box.value), Math.floor(state.run.context / 2)));
    }
    try {
      const models = await getJSON("/v1/models");
      const ids = (models.data || []).map((m) => m.id);
      state.model = ids.length ? ids[0] : state.run.name;
      showModels(ids);
    } catch (err) {
      state.model = state.run.name;
      $("#chat-status").textContent = "models: " + err.message;
    }
  } else if (family === "trm" && !state.examples.length) {
    await loadExamples();
  }
}

document.addEventListener("DOMContentLoaded", start);
