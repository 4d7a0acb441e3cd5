// The chart: one series over a time window as an SVG line, drawn by hand
// (no library). The time axis has ticks at round local times, the value
// axis round numbers and the series' unit; failed polls are red marks on
// the time axis. The points drawn are kept on the <svg> as `data-points`
// (JSON [[t_ns, value], ...]), so a test can compare them with Range.

import { svg, clock, number } from "./format.js";

const HEIGHT = 280;
const PAD = { left: 56, right: 16, top: 12, bottom: 40 };

const TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200,
  10800, 21600, 43200, 86400].map((s) => s * 1000);

// Round times (local) between lo and hi, at most about `max` of them.
export function timeTicks(lo, hi, max) {
  const span = Math.max(hi - lo, 1);
  const step = TIME_STEPS.find((s) => span / s <= max) ?? TIME_STEPS[TIME_STEPS.length - 1];
  const offset = -new Date(lo).getTimezoneOffset() * 60000;
  const ticks = [];
  for (let t = Math.ceil((lo + offset) / step) * step - offset; t <= hi; t += step) ticks.push(t);
  return { ticks, step };
}

// Round numbers covering [lo, hi], about five of them.
export function valueTicks(lo, hi) {
  if (lo === hi) {
    const d = Math.abs(lo) > 0 ? Math.abs(lo) * 0.1 : 1;
    lo -= d;
    hi += d;
  }
  const rough = (hi - lo) / 5;
  const mag = 10 ** Math.floor(Math.log10(rough));
  const norm = rough / mag;
  const step = (norm <= 1 ? 1 : norm <= 2 ? 2 : norm <= 5 ? 5 : 10) * mag;
  const first = Math.floor(lo / step) * step;
  const last = Math.ceil(hi / step) * step;
  const ticks = [];
  for (let v = first; v <= last + step / 2; v += step) ticks.push(Number(v.toPrecision(12)));
  return ticks;
}

// A point's value as a number to draw, or null (a string, a failure).
export function plotted(p) {
  if (p.v === undefined || p.v === null) return null;
  if (typeof p.v === "boolean") return p.v ? 1 : 0;
  return typeof p.v === "number" ? p.v : null;
}

// Draws `points` of `series` over [sinceMs, untilMs] into `box`.
export function drawChart(box, { series, sinceMs, untilMs, sinceNs, points, color }) {
  const width = Math.max(box.clientWidth || 600, 280);
  const plotW = width - PAD.left - PAD.right;
  const plotH = HEIGHT - PAD.top - PAD.bottom;
  const drawn = [];
  const failures = [];
  for (const p of points) {
    const ms = Number(p.t) / 1e6;
    if (ms < sinceMs || ms > untilMs) continue;
    const v = plotted(p);
    if (v !== null) drawn.push([p.t, v, ms]);
    else if (p.fail) failures.push(ms);
  }
  let lo = Infinity;
  let hi = -Infinity;
  for (const [, v] of drawn) {
    lo = Math.min(lo, v);
    hi = Math.max(hi, v);
  }
  if (!drawn.length) {
    lo = 0;
    hi = 1;
  }
  const yTicks = valueTicks(lo, hi);
  const yLo = yTicks[0];
  const yHi = yTicks[yTicks.length - 1];
  const x = (ms) => PAD.left + ((ms - sinceMs) / Math.max(untilMs - sinceMs, 1)) * plotW;
  const y = (v) => PAD.top + plotH - ((v - yLo) / Math.max(yHi - yLo, 1e-300)) * plotH;

  const root = svg("svg", {
    viewBox: `0 0 ${width} ${HEIGHT}`,
    width,
    height: HEIGHT,
    role: "img",
    "aria-label": series
      ? `${series.metric} of ${series.device}, ${drawn.length} points`
      : "no series chosen",
    "data-series": series ? series.id : "",
    "data-since-ns": sinceNs ?? "",
  });
  root.dataset.points = JSON.stringify(drawn.map(([t, v]) => [t, v]));

  for (const v of yTicks) {
    root.append(svg("line", { x1: PAD.left, x2: width - PAD.right, y1: y(v), y2: y(v), class: "grid" }));
    root.append(svg("text", { x: PAD.left - 6, y: y(v) + 4, class: "tick", "text-anchor": "end" }, number(v)));
  }
  const { ticks, step } = timeTicks(sinceMs, untilMs, Math.max(2, Math.floor(plotW / 90)));
  for (const t of ticks) {
    root.append(svg("line", { x1: x(t), x2: x(t), y1: PAD.top, y2: PAD.top + plotH, class: "grid" }));
    const label = step < 60000 ? clock(t) : clock(t).slice(0, 5);
    root.append(svg("text", { x: x(t), y: PAD.top + plotH + 16, class: "tick", "text-anchor": "middle" }, label));
  }
  root.append(svg("rect", { x: PAD.left, y: PAD.top, width: plotW, height: plotH, class: "frame" }));
  root.append(svg("text", { x: PAD.left + plotW / 2, y: HEIGHT - 4, class: "axis", "text-anchor": "middle" },
    "time (local)"));
  const unit = series && series.unit ? series.unit : "value";
  root.append(svg("text", { x: 12, y: PAD.top + plotH / 2, class: "axis", "text-anchor": "middle",
    transform: `rotate(-90 12 ${PAD.top + plotH / 2})` }, unit));

  if (drawn.length) {
    const d = drawn.map(([, v, ms], i) => `${i ? "L" : "M"}${x(ms).toFixed(1)},${y(v).toFixed(1)}`).join("");
    root.append(svg("path", { d, class: "line", stroke: color }));
    if (drawn.length <= 120) {
      for (const [, v, ms] of drawn) {
        root.append(svg("circle", { cx: x(ms), cy: y(v), r: 2.5, class: "dot", fill: color }));
      }
    }
  }
  for (const ms of failures) {
    root.append(svg("rect", { x: x(ms) - 1, y: PAD.top + plotH - 6, width: 2, height: 6, class: "fail" }));
  }
  box.replaceChildren(root);
  return { drawn: drawn.length, failures: failures.length };
}
