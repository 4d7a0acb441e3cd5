// Small helpers shared by the page's modules: building elements (text is
// always set with textContent, never parsed as HTML, so every name, label
// and value from the collector shows as text) and formatting times and
// numbers.

const SVG_NS = "http://www.w3.org/2000/svg";

// An element with attributes and children (strings become text nodes).
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

// An SVG element with attributes and an optional text.
export function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttrs(node, attrs);
  if (text !== undefined) node.textContent = text;
  return node;
}

function setAttrs(node, attrs) {
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "text") node.textContent = String(value);
    else if (name === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
}

// ns since the epoch (a decimal string) as ms (a number).
export function nsToMs(ns) {
  if (ns === null || ns === undefined || ns === "" || ns === "0") return null;
  const n = Number(ns);
  return Number.isFinite(n) ? n / 1e6 : null;
}

const pad = (n) => String(n).padStart(2, "0");

// 14:03:27 (local time).
export function clock(ms) {
  const d = new Date(ms);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

// 2026-12-05 14:03:27 (local time).
export function dateTime(ms) {
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${clock(ms)}`;
}

// "3 s ago", "5 min ago", or a date for older times.
export function ago(ms, now = Date.now()) {
  if (ms === null) return "never";
  const s = Math.round((now - ms) / 1000);
  if (s < 2) return "just now";
  if (s < 120) return `${s} s ago`;
  if (s < 7200) return `${Math.round(s / 60)} min ago`;
  if (s < 172800) return `${Math.round(s / 3600)} h ago`;
  return dateTime(ms);
}

// 1 234 567 style grouping, narrow no-break spaces.
export function count(n) {
  if (n === null || n === undefined) return "—";
  return Number(n).toLocaleString("en-US").replaceAll(",", "\u202f");
}

// A value for an axis or a legend: few digits, SI suffix for large ones.
export function number(v) {
  if (!Number.isFinite(v)) return String(v);
  const a = Math.abs(v);
  if (a >= 1e9) return `${trim(v / 1e9)}G`;
  if (a >= 1e6) return `${trim(v / 1e6)}M`;
  if (a >= 1e4) return `${trim(v / 1e3)}k`;
  return trim(v);
}

function trim(v) {
  const a = Math.abs(v);
  const digits = a >= 100 || a === 0 ? 0 : a >= 10 ? 1 : a >= 1 ? 2 : 3;
  return String(Number(v.toFixed(digits)));
}

// A series' name for the picker and the legend: metric{labels} [unit].
export function seriesName(s) {
  const labels = Object.entries(s.labels || {}).map(([k, v]) => `${k}="${v}"`);
  const withLabels = labels.length ? `${s.metric}{${labels.join(", ")}}` : s.metric;
  return s.unit ? `${withLabels} [${s.unit}]` : withLabels;
}
