// A small line plotter on <canvas>, no libraries: axes with round ticks, one coloured line per series, a legend.
// Used by the playground's curves and by the pages `smoltrain plot --output FILE.html` writes (inlined there).
"use strict";

const SmolPlot = (() => {
  const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                   "#bcbd22", "#17becf"];  // matplotlib's tab10, so the PNGs and the page agree

  // Round tick values covering [lo, hi]: steps of 1, 2 or 5 times a power of ten, about `count` of them.
  function ticks(lo, hi, count = 5) {
    if (!(hi > lo)) return [lo];
    const raw = (hi - lo) / count;
    const power = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw);
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
    return out;
  }

  function label(v) {
    const a = Math.abs(v);
    if (a !== 0 && (a >= 1e5 || a < 1e-3)) return v.toExponential(1);
    return String(+v.toPrecision(4));
  }

  // The unit a time axis spanning `seconds` is labelled in, so its round ticks are round in that unit.
  function timeUnit(seconds) {
    if (seconds < 180) return [1, "s"];
    if (seconds < 3 * 3600) return [60, "min"];
    return [3600, "h"];
  }

  // series: [{name, points: [[x, y], ...], dashed}]; options: {title, xLabel, logY, xIsTime}.
  // Returns the number of points drawn (also left on canvas.dataset for tests and scripts).
  function drawChart(canvas, series, options = {}) {
    const dpr = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || 640, height = canvas.clientHeight || 300;
    canvas.width = Math.round(width * dpr);
    canvas.height = Math.round(height * dpr);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.fillStyle = "#ffffff";
    ctx.fillRect(0, 0, width, height);
    ctx.font = "12px system-ui, sans-serif";
    const logY = !!options.logY;
    const usable = series.map((s) => ({...s, points: s.points.filter(([x, y]) =>
      Number.isFinite(x) && Number.isFinite(y) && (!logY || y > 0))})).filter((s) => s.points.length);
    const points = usable.reduce((n, s) => n + s.points.length, 0);
    canvas.dataset.series = String(usable.length);
    canvas.dataset.points = String(points);
    ctx.fillStyle = "#1d2330";
    ctx.font = "bold 13px system-ui, sans-serif";
    ctx.fillText(options.title || "", 12, 18);
    ctx.font = "12px system-ui, sans-serif";
    if (!points) {
      ctx.fillStyle = "#6b7280";
      ctx.fillText(options.empty || "no data yet", width / 2 - 30, height / 2);
      return 0;
    }
    const xs = usable.flatMap((s) => s.points.map((p) => p[0]));
    const ys = usable.flatMap((s) => s.points.map((p) => (logY ? Math.log10(p[1]) : p[1])));
    let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
    let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
    if (x1 === x0) { x0 -= 1; x1 += 1; }
    if (y1 === y0) { const pad = Math.abs(y0) * 0.1 || 1; y0 -= pad; y1 += pad; }
    const yPad = (y1 - y0) * 0.05; y0 -= yPad; y1 += yPad;
    // the legend below the axes flows in rows as wide as the chart; its height sets the bottom margin
    const left = 58, right = 24, top = 28;  // room on the right for the last x tick's label
    const legend = [];
    let lx = left, row = 0;
    for (const s of usable) {
      const w = ctx.measureText(s.name).width + 34;
      if (lx + w > width - right && lx > left) { lx = left; row += 1; }
      legend.push([lx, row]);
      lx += w;
    }
    const bottom = 44 + 16 * (row + 1);
    const plotW = width - left - right, plotH = height - top - bottom;
    const px = (x) => left + ((x - x0) / (x1 - x0)) * plotW;
    const py = (y) => top + (1 - (y - y0) / (y1 - y0)) * plotH;

    // grid and tick labels
    ctx.strokeStyle = "#e5e7eb"; ctx.lineWidth = 1; ctx.fillStyle = "#6b7280";
    ctx.textAlign = "right"; ctx.textBaseline = "middle";
    for (const t of ticks(y0, y1, 5)) {
      ctx.beginPath(); ctx.moveTo(left, py(t)); ctx.lineTo(left + plotW, py(t)); ctx.stroke();
      ctx.fillText(logY ? label(Math.pow(10, t)) : label(t), left - 6, py(t));
    }
    ctx.textAlign = "center"; ctx.textBaseline = "top";
    const [scale, unit] = options.xIsTime ? timeUnit(x1) : [1, ""];
    for (const u of ticks(x0 / scale, x1 / scale, Math.max(2, Math.floor(plotW / 90)))) {
      const t = u * scale;
      ctx.beginPath(); ctx.moveTo(px(t), top); ctx.lineTo(px(t), top + plotH); ctx.stroke();
      ctx.fillText(label(u) + (unit ? " " + unit : ""), px(t), top + plotH + 5);
    }
    ctx.strokeStyle = "#9ca3af";
    ctx.strokeRect(left, top, plotW, plotH);
    ctx.fillStyle = "#1d2330";
    ctx.fillText(options.xLabel || "", left + plotW / 2, top + plotH + 22);

    // lines; a series of one point (or an evaluation) also gets dots
    usable.forEach((s, i) => {
      const colour = s.colour || PALETTE[i % PALETTE.length];
      ctx.strokeStyle = colour; ctx.fillStyle = colour; ctx.lineWidth = 1.6;
      ctx.setLineDash(s.dashed ? [6, 4] : []);
      ctx.beginPath();
      s.points.forEach(([x, y], k) => {
        const X = px(x), Y = py(logY ? Math.log10(y) : y);
        if (k === 0) ctx.moveTo(X, Y); else ctx.lineTo(X, Y);
      });
      ctx.stroke();
      ctx.setLineDash([]);
      if (s.dots || s.points.length < 2) {
        for (const [x, y] of s.points) {
          ctx.beginPath(); ctx.arc(px(x), py(logY ? Math.log10(y) : y), 2.5, 0, 2 * Math.PI); ctx.fill();
        }
      }
      const [lx, lrow] = legend[i], ly = top + plotH + 48 + 16 * lrow;
      if (s.dashed) { ctx.fillRect(lx, ly - 1, 5, 3); ctx.fillRect(lx + 9, ly - 1, 5, 3); }  // as its line
      else ctx.fillRect(lx, ly - 1, 14, 3);
      ctx.fillStyle = "#1d2330"; ctx.textAlign = "left"; ctx.textBaseline = "middle";
      ctx.fillText(s.name, lx + 18, ly);
    });
    return points;
  }

  return {drawChart, ticks, PALETTE};
})();
