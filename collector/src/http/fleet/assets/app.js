// The fleet page: loads /api/fleet, then stays live on the server-sent
// events of /api/fleet/events (devices, agents, the charted series'
// points, resync), and draws one chosen series over a window. The
// exports table reads /api/fleet/exports again every EXPORTS_EVERY ms
// (cursors move with the exports, not with commits).

import { renderAgents, renderDevices, renderExports } from "./tables.js";
import { drawChart } from "./chart.js";
import { el, seriesName, number, nsToMs, dateTime } from "./format.js";

const WINDOWS = { "5m": 300e3, "1h": 3600e3, "6h": 21600e3, "24h": 86400e3 };
const COLOR = "#2563eb";
const MAX_KEPT_POINTS = 20000;
const EXPORTS_EVERY = 5000;

const $ = (id) => document.getElementById(id);

const state = {
  agents: [],
  devices: new Map(), // "agent\0device" -> device
  truncated: false,
  skewMs: 0, // collector clock minus this browser's
  chosen: null, // { agent, device }
  seriesList: [],
  series: null, // the charted series (SeriesJson)
  window: "5m",
  points: [], // of the charted series, in time order
  sinceNs: null,
  pending: null, // points that arrived before the range did; null when loaded
  thinned: false,
  total: 0,
  source: null,
  rangeToken: 0,
};

const key = (agent, device) => `${agent}\u0000${device}`;
const now = () => Date.now() + state.skewMs;

async function getJson(url) {
  const response = await fetch(url, { headers: { accept: "application/json" } });
  if (!response.ok) throw new Error(`${url}: ${response.status} ${(await response.text()).trim()}`);
  return response.json();
}

function setLive(text, cls) {
  const live = $("live");
  live.textContent = text;
  live.className = `live ${cls}`;
}

// ----------------------------------------------------------------- fleet

async function loadFleet() {
  const fleet = await getJson("/api/fleet");
  state.skewMs = Number(fleet.now_ns) / 1e6 - Date.now();
  state.agents = fleet.agents;
  state.devices = new Map(fleet.devices.map((d) => [key(d.agent, d.device), d]));
  state.truncated = fleet.truncated;
  $("collector").textContent = `collector ${fleet.version} at ${location.host}`;
  renderTables();
  document.body.dataset.ready = "1";
}

async function loadExports() {
  const answer = await getJson("/api/fleet/exports");
  const tbody = $("exports").tBodies[0];
  renderExports(tbody, answer.exports);
  const behind = answer.exports.filter((x) => x.lag_readings > 0).length;
  $("exports-count").textContent = `(${answer.exports.length}, ${behind} behind)`;
  const note = $("exports-note");
  note.hidden = answer.exports.length > 0;
  note.textContent = answer.exports.length ? "" : "No exports: see [[exports]] in the collector's config.";
  document.body.dataset.exportsReady = "1";
}

// One exports read at a time: the next is asked for EXPORTS_EVERY ms
// after the last answer (however slow the store), and not while the page
// is hidden. A failed read is shown under the table, not as the page's
// live state, and cleared by the next answer.
async function pollExports() {
  if (!document.hidden) {
    try {
      await loadExports();
    } catch (e) {
      const note = $("exports-note");
      note.hidden = false;
      note.textContent = `Exports could not be read: ${String(e.message || e)}`;
    }
  }
  setTimeout(pollExports, EXPORTS_EVERY);
}

let renderQueued = false;
function scheduleTables() {
  if (renderQueued) return;
  renderQueued = true;
  setTimeout(() => {
    renderQueued = false;
    renderTables();
  }, 250);
}

function renderTables() {
  renderAgents($("agents").tBodies[0], state.agents, now());
  $("agents-count").textContent = `(${state.agents.length})`;
  // Keep the keyboard focus on the same device's button across a redraw.
  const focused = document.activeElement;
  const focusRow = focused && focused.closest && focused.closest("#devices tr");
  const focusKey = focusRow ? key(focusRow.dataset.agent, focusRow.dataset.device) : null;
  const devices = [...state.devices.values()].sort((a, b) =>
    a.agent < b.agent ? -1 : a.agent > b.agent ? 1 : a.device < b.device ? -1 : a.device > b.device ? 1 : 0);
  const tbody = $("devices").tBodies[0];
  renderDevices(tbody, devices, now(), state.chosen, (d) => chooseDevice(d).catch(showError));
  const down = devices.filter((d) => d.up === false).length;
  $("devices-count").textContent = `(${devices.length}, ${down} down)`;
  const note = $("devices-note");
  note.hidden = !state.truncated;
  note.textContent = state.truncated ? "Only the first 100,000 series were read: some devices are missing." : "";
  if (focusKey) {
    for (const row of tbody.rows) {
      if (key(row.dataset.agent, row.dataset.device) === focusKey) row.querySelector("button")?.focus();
    }
  }
}

// A live health update: newer polls win; one without `up` only fills in
// the outcome of the poll it belongs to.
function applyDevice(u) {
  const k = key(u.agent, u.device);
  const d = state.devices.get(k);
  if (!d) {
    state.devices.set(k, { ...u, series: null });
    return;
  }
  const seen = d.last_poll_ns ? BigInt(d.last_poll_ns) : -1n;
  const t = u.last_poll_ns ? BigInt(u.last_poll_ns) : -1n;
  if (u.up === null) {
    if (t >= seen && d.up !== true) Object.assign(d, { outcome: u.outcome, cause: u.cause, last_poll_ns: u.last_poll_ns });
  } else if (t >= seen) {
    Object.assign(d, { up: u.up, outcome: u.outcome, cause: u.cause, last_poll_ns: u.last_poll_ns });
  }
}

// ----------------------------------------------------------------- events

function connect() {
  if (state.source) state.source.close();
  const url = state.series ? `/api/fleet/events?series=${state.series.id}` : "/api/fleet/events";
  const source = new EventSource(url);
  state.source = source;
  source.addEventListener("open", () => setLive("live", "ok"));
  source.addEventListener("error", () => {
    setLive("reconnecting…", "bad");
    // A refused stream (503: the collector's cap on live streams) is not
    // retried by the browser: try again later.
    if (source.readyState === EventSource.CLOSED) {
      setTimeout(() => { if (state.source === source) connect(); }, 10000);
    }
  });
  let greeted = false;
  source.addEventListener("hello", () => {
    // Subscribed: a read from now on misses no commit. After a reconnect,
    // what happened meanwhile is read again.
    if (greeted) loadFleet().catch(showError);
    greeted = true;
    if (state.series) loadRange();
  });
  source.addEventListener("devices", (e) => {
    for (const u of JSON.parse(e.data)) applyDevice(u);
    scheduleTables();
  });
  source.addEventListener("agents", (e) => {
    state.agents = JSON.parse(e.data);
    scheduleTables();
  });
  source.addEventListener("points", (e) => {
    const msg = JSON.parse(e.data);
    if (!state.series || msg.series !== state.series.id) return;
    if (state.pending) state.pending.push(...msg.points);
    else addPoints(msg.points);
  });
  source.addEventListener("problem", (e) => setLive(e.data, "bad"));
  source.addEventListener("resync", () => {
    loadFleet().catch(showError);
    if (state.series) loadRange();
  });
}

// ----------------------------------------------------------------- chart

async function chooseDevice(d) {
  state.chosen = { agent: d.agent, device: d.device };
  renderTables();
  const q = new URLSearchParams({ agent: d.agent, device: d.device });
  const list = await getJson(`/api/fleet/series?${q}`);
  state.seriesList = list;
  const pick = $("series-pick");
  pick.replaceChildren(...list.map((s) => el("option", { value: s.id }, seriesName(s))));
  pick.disabled = list.length === 0;
  const preferred = list.find((s) => s.metric !== "up") || list[0];
  if (preferred) {
    pick.value = String(preferred.id);
    chooseSeries(preferred);
  }
  $("chart-section").focus({ preventScroll: true });
  $("chart-section").scrollIntoView({ block: "nearest" });
}

function chooseSeries(s) {
  state.series = s;
  state.points = [];
  state.pending = [];
  document.body.dataset.chartLoaded = "";
  drawNow();
  // The range is read once the new event stream says hello.
  connect();
}

async function loadRange() {
  const token = ++state.rangeToken;
  const series = state.series;
  state.pending = state.pending || [];
  const q = new URLSearchParams({ series: series.id, window: state.window });
  try {
    const range = await getJson(`/api/fleet/range?${q}`);
    if (token !== state.rangeToken) return;
    state.sinceNs = range.since_ns;
    state.points = range.points;
    state.thinned = range.thinned;
    state.total = range.total;
    const pending = state.pending;
    state.pending = null;
    addPoints(pending);
    document.body.dataset.chartLoaded = "1";
  } catch (e) {
    showError(e);
  }
}

// Appends live points newer than the last one held.
function addPoints(points) {
  let last = state.points.length ? BigInt(state.points[state.points.length - 1].t) : -1n;
  for (const p of points) {
    const t = BigInt(p.t);
    if (t > last) {
      state.points.push(p);
      last = t;
    }
  }
  if (state.points.length > MAX_KEPT_POINTS) state.points.splice(0, state.points.length - MAX_KEPT_POINTS);
  drawSoon();
}

let drawQueued = false;
function drawSoon() {
  if (drawQueued) return;
  drawQueued = true;
  requestAnimationFrame(() => {
    drawQueued = false;
    drawNow();
  });
}

function drawNow() {
  const box = $("chart");
  const s = state.series;
  const untilMs = now();
  const sinceMs = untilMs - WINDOWS[state.window];
  const result = drawChart(box, { series: s, sinceMs, untilMs, sinceNs: state.sinceNs,
    points: state.points, color: COLOR });
  renderLegend(s, result);
}

function renderLegend(s, result) {
  const legend = $("legend");
  const note = $("chart-note");
  if (!s) {
    legend.replaceChildren();
    note.textContent = "No series chosen.";
    return;
  }
  const last = [...state.points].reverse().find((p) => !p.fail && p.v !== null);
  let lastText = "no value";
  if (last && last.s !== undefined) lastText = `"${last.s}"`;
  else if (last) lastText = `${number(Number(last.v))}${s.unit ? ` ${s.unit}` : ""}`;
  legend.replaceChildren(el("span", { class: "swatch", "aria-hidden": "true" }),
    el("span", { class: "legend-name" }, `${s.agent} / ${s.device} / ${seriesName(s)}`),
    el("span", { class: "legend-last" }, `last ${lastText}`));
  const parts = [`${result.drawn} points in the last ${state.window}`];
  if (result.failures) parts.push(`${result.failures} failed polls (red marks)`);
  if (state.thinned) parts.push(`thinned from ${state.total} to each bucket's low and high`);
  if (last && last.s !== undefined) parts.push("text values are not drawn");
  const lastPoint = state.points[state.points.length - 1];
  if (lastPoint) parts.push(`newest at ${dateTime(nsToMs(lastPoint.t))}`);
  note.textContent = `${parts.join("; ")}.`;
}

function showError(e) {
  setLive(String(e.message || e), "bad");
}

// ----------------------------------------------------------------- start

function start() {
  for (const button of document.querySelectorAll(".ranges button")) {
    button.addEventListener("click", () => {
      state.window = button.dataset.window;
      for (const b of document.querySelectorAll(".ranges button")) {
        b.setAttribute("aria-pressed", b === button ? "true" : "false");
      }
      if (state.series) {
        state.pending = [];
        loadRange();
      } else drawNow();
    });
  }
  $("series-pick").addEventListener("change", (e) => {
    const s = state.seriesList.find((x) => String(x.id) === e.target.value);
    if (s) chooseSeries(s);
  });
  new ResizeObserver(() => drawSoon()).observe($("chart"));
  // The window slides and "last seen" ages even when nothing arrives.
  setInterval(drawSoon, 1000);
  setInterval(scheduleTables, 5000);
  pollExports();
  drawNow();
  loadFleet().then(connect).catch(showError);
}

start();
