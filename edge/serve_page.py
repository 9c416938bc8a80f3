"""The live page that :mod:`edge.serve` hands to a browser: one self-contained HTML document.

Everything is inline (CSS, JavaScript, the charts drawn on ``<canvas>`` by hand) so the page works on
a Pi with no internet and the server's Content-Security-Policy can forbid every other origin. The
page reads ``/state.json`` once (the rolling history so far), then follows ``/events`` (server-sent
events: ``decision``, ``stats``, ``end``) and reloads ``/readout.png`` when a new window arrives.
Labels are set with ``textContent``, never as HTML. Each chart canvas records how many points it
drew in ``data-points`` (tests wait on it).
"""
from __future__ import annotations

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>PixelRNN edge: live</title>
<style>
  :root { --bg: #11151c; --card: #1b212c; --fg: #e6e9ef; --dim: #8b94a7; --accent: #5ec4ff; }
  * { box-sizing: border-box; }
  body { margin: 0; padding: 16px; background: var(--bg); color: var(--fg);
         font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
  header { display: flex; align-items: baseline; gap: 12px; margin-bottom: 12px; }
  header h1 { font-size: 18px; margin: 0; font-weight: 600; }
  #status { color: var(--dim); }
  #status.live { color: #7ee787; }
  #status.down { color: #ff7b72; }
  .grid { display: grid; grid-template-columns: 300px 1fr; gap: 12px; }
  .card { background: var(--card); border-radius: 8px; padding: 12px; }
  .card h2 { font-size: 12px; text-transform: uppercase; letter-spacing: .08em; color: var(--dim);
             margin: 0 0 8px; font-weight: 600; }
  #label { font-size: 30px; font-weight: 700; word-break: break-word; min-height: 40px; }
  #label.waiting { color: var(--dim); font-size: 18px; font-weight: 400; }
  .bar { height: 8px; background: #2a3240; border-radius: 4px; overflow: hidden; margin: 6px 0; }
  #scorebar { height: 100%; width: 0; background: var(--accent); transition: width .2s; }
  .meta { color: var(--dim); font-variant-numeric: tabular-nums; }
  #readout { width: auto; height: auto; max-width: 100%; max-height: 320px; image-rendering: pixelated;
             background: #000; display: block; border-radius: 4px; }
  #readout-what { margin-top: 6px; }
  .charts { display: grid; grid-template-rows: repeat(3, 1fr); gap: 12px; }
  canvas { width: 100%; height: 140px; display: block; }
  dl { display: grid; grid-template-columns: auto 1fr; gap: 2px 10px; margin: 8px 0 0; }
  dt { color: var(--dim); } dd { margin: 0; font-variant-numeric: tabular-nums; }
</style>
</head>
<body>
<header>
  <h1>PixelRNN edge &middot; <span id="task">camera loop</span></h1><span id="status">connecting&hellip;</span>
</header>
<div class="grid">
  <div>
    <div class="card">
      <h2>Decision</h2>
      <div id="label" class="waiting">waiting for a window</div>
      <div class="bar"><div id="scorebar"></div></div>
      <div class="meta">score <span id="score">&ndash;</span> &middot; window <span id="window">&ndash;</span></div>
      <dl>
        <dt>latency</dt><dd id="latency">&ndash;</dd>
        <dt>frames</dt><dd id="frames">0</dd>
        <dt>fps</dt><dd id="fps">&ndash;</dd>
        <dt>link</dt><dd id="link">&ndash;</dd>
        <dt>packet</dt><dd id="bytes">&ndash;</dd>
        <dt>dropped</dt><dd id="dropped">0</dd>
      </dl>
    </div>
    <div class="card" style="margin-top: 12px">
      <h2>Last readout (in-pixel)</h2>
      <img id="readout" alt="the last readout">
      <div class="meta" id="readout-what"></div>
    </div>
  </div>
  <div class="charts">
    <div class="card"><h2>End-to-end latency (ms per window)</h2><canvas id="chart-latency"></canvas></div>
    <div class="card"><h2>Frames per second</h2><canvas id="chart-fps"></canvas></div>
    <div class="card"><h2>Link (kB/s of readout packets)</h2><canvas id="chart-link"></canvas></div>
  </div>
</div>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const series = { latency: [], fps: [], link: [] };
const colors = { latency: "#f2cc60", fps: "#7ee787", link: "#5ec4ff" };
let maxPoints = 240;

function fmt(v, digits) { return (v === null || v === undefined) ? "\\u2013" : Number(v).toFixed(digits); }

function push(name, value) {
  if (value === null || value === undefined || !isFinite(value)) return;
  const s = series[name];
  s.push(Number(value));
  if (s.length > maxPoints) s.splice(0, s.length - maxPoints);
}

function drawChart(name) {
  const canvas = $("chart-" + name), points = series[name];
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  if (canvas.width !== Math.round(w * ratio)) {
    canvas.width = Math.round(w * ratio); canvas.height = Math.round(h * ratio);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, w, h);
  const left = 44, right = 8, top = 22, bottom = 16;
  const pw = w - left - right, ph = h - top - bottom;
  let lo = Math.min(0, ...points), hi = Math.max(1e-9, ...points);
  if (hi === lo) hi = lo + 1;
  hi += (hi - lo) * 0.1;
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = "#8b94a7"; ctx.strokeStyle = "#2a3240"; ctx.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const y = top + ph - (ph * i) / 4, v = lo + ((hi - lo) * i) / 4;
    ctx.beginPath(); ctx.moveTo(left, y + 0.5); ctx.lineTo(w - right, y + 0.5); ctx.stroke();
    ctx.fillText(v >= 100 ? v.toFixed(0) : v.toFixed(1), 4, y + 4);
  }
  ctx.fillText(points.length + " points (last " + maxPoints + " kept)", left, h - 3);
  canvas.dataset.points = String(points.length);
  if (!points.length) return;
  const span = Math.min(maxPoints, Math.max(points.length, 60));   // fill the width as points arrive
  const step = pw / Math.max(1, span - 1), x0 = left + pw - step * (points.length - 1);
  const yOf = (v) => top + ph - ((v - lo) / (hi - lo)) * ph;
  ctx.strokeStyle = colors[name]; ctx.lineWidth = 2; ctx.beginPath();
  points.forEach((v, i) => { const x = x0 + step * i; if (i) ctx.lineTo(x, yOf(v)); else ctx.moveTo(x, yOf(v)); });
  ctx.stroke();
  ctx.fillStyle = colors[name];
  points.forEach((v, i) => { ctx.beginPath(); ctx.arc(x0 + step * i, yOf(v), 2, 0, 2 * Math.PI); ctx.fill(); });
  const last = points[points.length - 1];
  ctx.font = "bold 13px system-ui, sans-serif"; ctx.textAlign = "right";
  ctx.fillText("now " + (last >= 100 ? last.toFixed(0) : last.toFixed(2)), w - right, 13);
  ctx.textAlign = "left";
}

function drawAll() { for (const name of Object.keys(series)) drawChart(name); }

function showDecision(d) {
  const label = $("label");
  label.textContent = d.label;
  label.className = "";
  $("score").textContent = fmt(d.score, 3);
  $("scorebar").style.width = (Math.max(0, Math.min(1, d.score)) * 100).toFixed(1) + "%";
  $("window").textContent = String(d.window);
  $("latency").textContent = d.latency_ms === null ? "\\u2013" : fmt(d.latency_ms, 1) + " ms";
  $("bytes").textContent = d.bytes + " bytes / window";
  $("readout").src = "readout.png?window=" + encodeURIComponent(d.window);
}

function showStats(s) {
  $("frames").textContent = String(s.frames);
  $("fps").textContent = fmt(s.fps, 1);
  $("link").textContent = fmt(s.link_kBps, 2) + " kB/s";
  $("dropped").textContent = String(s.dropped_events);
}

function setStatus(text, cls) { const el = $("status"); el.textContent = text; el.className = cls; }

async function start() {
  try {
    const state = await (await fetch("state.json", { cache: "no-store" })).json();
    maxPoints = state.history_points || maxPoints;
    $("task").textContent = state.task + " (" + state.classes.length + " classes)";
    $("readout-what").textContent = state.readout || "";
    for (const v of state.history.latency_ms) push("latency", v);
    for (const v of state.history.fps) push("fps", v);
    for (const v of state.history.link_kBps) push("link", v);
    if (state.decision) showDecision(state.decision);
    if (state.stats) showStats(state.stats);
  } catch (err) { setStatus("no state: " + err, "down"); }
  drawAll();
  const events = new EventSource("events");
  events.onopen = () => setStatus("live", "live");
  events.onerror = () => setStatus("disconnected (retrying)", "down");
  events.addEventListener("decision", (e) => {
    const d = JSON.parse(e.data);
    showDecision(d); push("latency", d.latency_ms); drawChart("latency");
  });
  events.addEventListener("stats", (e) => {
    const s = JSON.parse(e.data);
    showStats(s); push("fps", s.fps); push("link", s.link_kBps); drawChart("fps"); drawChart("link");
  });
  events.addEventListener("end", (e) => {
    const x = JSON.parse(e.data);
    setStatus("run ended: " + x.end, "");
    events.close();
  });
  window.addEventListener("resize", drawAll);
}
start();
</script>
</body>
</html>
"""
