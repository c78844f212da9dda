// The operator dashboard: polls this server's /metrics (with the API key the chat page keeps,
// when one is set) and draws the last minutes of each model's load as hand-drawn SVG charts.
// ?every=<ms> sets the poll interval (default 3000), ?window=<s> the span shown (default 300).
// Rates and quantiles are taken over the last RATE_MS of scrapes, as Prometheus's rate()[12s]
// would: token counters grow when a request finishes, so poll-to-poll rates would only flicker.

import { derive, indexByModel, parsePrometheus } from "./metrics.js";
import { $, el, load, store } from "./util.js";

const API_KEY = "llamaserve.apiKey.v1"; // shared with app.js
const MODEL_KEY = "llamaserve.dashboard.model.v1";
const params = new URLSearchParams(location.search);
const EVERY_MS = Math.max(250, Number(params.get("every")) || 3000);
const WINDOW_MS = 1000 * Math.max(10, Number(params.get("window")) || 300);
const RATE_MS = Math.max(4 * EVERY_MS, 12000);
const SVG = "http://www.w3.org/2000/svg";
const W = 300;
const H = 100;
const NO_DATA = "no data";

const seconds = (v) => (v < 1 ? `${Math.round(v * 1000)} ms` : `${v.toFixed(2)} s`);
const percent = (v) => `${v.toFixed(v < 10 ? 1 : 0)} %`;
const count = (v) => String(Math.round(v));

// Each chart: its series (keys of derive()'s result), how values read, and a fixed top if any.
const CHARTS = [
  { id: "tokens-per-second", title: "Generated tokens/s", series: ["tps"], format: (v) => `${v.toFixed(1)} tok/s` },
  { id: "ttft", title: "Time to first token", series: ["ttft_p50", "ttft_p95"], legend: ["p50", "p95"], format: seconds },
  {
    id: "inter-token-latency",
    title: "Inter-token latency",
    series: ["itl_p50", "itl_p95"],
    legend: ["p50", "p95"],
    format: seconds,
  },
  { id: "queue", title: "Queue length", series: ["waiting"], format: count },
  { id: "busy-slots", title: "Busy slots", series: ["busy"], top: "slots", format: count },
  { id: "kv-cache", title: "KV cache use", series: ["kv"], top: 100, format: percent },
  { id: "cache-hit", title: "Prompt-cache hit rate", series: ["hit"], top: 100, format: percent },
];

const state = {
  apiKey: load(API_KEY, ""),
  model: load(MODEL_KEY, null),
  models: [],
  history: new Map(), // model -> [{t, values}]
  scrapes: [], // [{t, index}] of the last RATE_MS
  cards: new Map(),
  timer: 0,
  polls: 0,
};

function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

function buildCards() {
  const grid = $("dash-grid");
  for (const chart of CHARTS) {
    const card = el("article", { class: "chart", testid: `chart-${chart.id}` });
    const head = el("div", { class: "chart-head" });
    head.append(el("span", { class: "chart-title" }, chart.title));
    const value = el("span", { class: "chart-value", testid: "chart-value" }, NO_DATA);
    head.append(value);
    const plot = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img" });
    plot.setAttribute("aria-label", chart.title);
    for (const y of [0, H / 2, H]) plot.append(svg("line", { class: "grid-line", x1: 0, x2: W, y1: y, y2: y }));
    const lines = chart.series.map((_, i) =>
      plot.appendChild(svg("path", { class: `series series-${i}`, "vector-effect": "non-scaling-stroke", "data-testid": "chart-line" })),
    );
    const foot = el("div", { class: "chart-foot" });
    const scale = el("span", { testid: "chart-scale" });
    foot.append(el("span", {}, WINDOW_MS >= 60000 ? `${Math.round(WINDOW_MS / 60000)} min ago` : `${WINDOW_MS / 1000} s ago`));
    if (chart.legend) {
      const legend = el("span", { class: "legend" });
      chart.legend.forEach((name, i) => legend.append(el("span", { class: `l${i}` }, name)));
      foot.append(legend);
    }
    foot.append(scale);
    card.append(head, plot, foot);
    grid.append(card);
    state.cards.set(chart.id, { card, value, lines, scale });
  }
}

function latest(points, key) {
  for (let i = points.length - 1; i >= 0; i -= 1) {
    const v = points[i].values[key];
    if (v !== null && v !== undefined) return v;
  }
  return null;
}

function niceTop(max) {
  if (!(max > 0)) return 1;
  const step = 10 ** Math.floor(Math.log10(max));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * step >= max) return m * step;
  return 10 * step;
}

function render() {
  const points = state.history.get(state.model) || [];
  const now = performance.now();
  const from = now - WINDOW_MS;
  const last = points.at(-1)?.values;
  for (const chart of CHARTS) {
    const { card, value, lines, scale } = state.cards.get(chart.id);
    let top = typeof chart.top === "number" ? chart.top : chart.top ? last?.[chart.top] : null;
    if (!(top > 0)) {
      let max = 0;
      for (const p of points) for (const key of chart.series) if (p.values[key] > max) max = p.values[key];
      top = niceTop(max);
    }
    let drawn = 0;
    chart.series.forEach((key, i) => {
      let d = "";
      let pen = "M";
      for (const p of points) {
        const v = p.values[key];
        if (v === null || v === undefined) {
          pen = "M"; // a gap: nothing was observed in that interval
          continue;
        }
        const x = (W * (p.t - from)) / WINDOW_MS;
        const y = H - (H * Math.min(v, top)) / top;
        d += `${pen}${x.toFixed(1)} ${y.toFixed(1)} `;
        pen = "L";
        if (i === 0) drawn += 1;
      }
      lines[i].setAttribute("d", d.trim());
    });
    card.dataset.points = String(drawn);
    // The latest value of each series; a latency seen earlier in the window stays until a new one.
    const shown = chart.series.map((key) => latest(points, key)).filter((v) => v !== null);
    value.textContent = shown.length ? shown.map(chart.format).join(" / ") : NO_DATA;
    if (chart.id === "busy-slots" && last?.slots) value.textContent = `${count(last.busy ?? 0)} / ${count(last.slots)}`;
    scale.textContent = `top ${chart.format(top)}`;
  }
}

function setModels(models) {
  const select = $("dash-model");
  if (models.join("\n") === state.models.join("\n")) return;
  state.models = models;
  select.replaceChildren(...models.map((m) => el("option", { value: m }, m)));
  if (!models.includes(state.model)) state.model = models[0] ?? null;
  select.value = state.model ?? "";
  select.disabled = models.length < 2;
}

async function poll() {
  const status = $("dash-status");
  const headers = state.apiKey ? { Authorization: `Bearer ${state.apiKey}` } : {};
  let text;
  try {
    const response = await fetch("/metrics", { headers, cache: "no-store" });
    if (response.status === 401) {
      status.textContent = "API key needed";
      status.dataset.state = "wait";
      $("dash-apikey").hidden = false;
      return;
    }
    if (!response.ok) throw new Error(`${response.status}`);
    text = await response.text();
  } catch (err) {
    status.textContent = `metrics unreachable (${err.message})`;
    status.dataset.state = "down";
    return;
  }
  $("dash-apikey").hidden = true;
  const t = performance.now();
  const index = indexByModel(parsePrometheus(text));
  const models = [...index.keys()].sort();
  setModels(models);
  while (state.scrapes.length > 1 && state.scrapes[1].t <= t - RATE_MS) state.scrapes.shift();
  const base = state.scrapes[0] ?? null; // the oldest scrape within RATE_MS (or just before it)
  const dt = base ? (t - base.t) / 1000 : 0;
  for (const model of models) {
    const values = derive(base?.index.get(model) ?? null, index.get(model), dt);
    const points = state.history.get(model) ?? [];
    points.push({ t, values });
    while (points.length && points[0].t < t - WINDOW_MS) points.shift();
    state.history.set(model, points);
  }
  state.scrapes.push({ t, index });
  state.polls += 1;
  document.body.dataset.polls = String(state.polls);
  status.textContent = `live · every ${EVERY_MS / 1000} s · ${models.length} model${models.length === 1 ? "" : "s"}`;
  status.dataset.state = "ok";
  render();
}

function schedule() {
  clearTimeout(state.timer);
  state.timer = setTimeout(async () => {
    if (!document.hidden) await poll();
    schedule();
  }, EVERY_MS);
}

function init() {
  buildCards();
  const span = WINDOW_MS >= 60000 ? `${Math.round(WINDOW_MS / 60000)} min` : `${WINDOW_MS / 1000} s`;
  $("dash-note").textContent =
    `Read from this server's /metrics every ${EVERY_MS / 1000} s; the charts show the last ${span}, ` +
    `rates and percentiles over the last ${Math.round(RATE_MS / 1000)} s.`;
  $("dash-model").addEventListener("change", (e) => {
    state.model = e.target.value;
    store(MODEL_KEY, state.model);
    render();
  });
  $("dash-apikey").addEventListener("submit", (e) => {
    e.preventDefault();
    const key = $("dash-apikey-input").value.trim();
    if (!key) return;
    state.apiKey = key;
    store(API_KEY, key);
    poll();
  });
  poll().then(schedule);
}

init();
