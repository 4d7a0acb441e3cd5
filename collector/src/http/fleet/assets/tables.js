// The agents, devices and exports tables. Rows are keyed (data-agent, data-device)
// and rebuilt from the page's state; every cell's text is set with
// textContent (through `el`), so names are shown, never interpreted.

import { el, nsToMs, ago, count, dateTime } from "./format.js";

// Rebuilds the agents table from `agents` (as /api/fleet lists them).
export function renderAgents(tbody, agents, now) {
  const rows = agents.map((a) => {
    const seen = nsToMs(a.last_seen_ns);
    return el("tr", { dataset: { agent: a.id, connected: String(a.connected), collector: a.collector || "" } },
      el("th", { scope: "row" }, a.id),
      el("td", {}, el("span", { class: a.connected ? "pill up" : "pill down" },
        a.connected ? "connected" : "not connected")),
      el("td", { "data-col": "collector" }, a.collector || "—"),
      el("td", {}, a.peer || "—"),
      el("td", { title: seen ? dateTime(seen) : "" }, ago(seen, now)),
      el("td", { class: "num" }, count(a.lag)),
      // A row that does not read: "unreadable", the store's message as
      // its title.
      a.error
        ? el("td", { class: "num warn", "data-col": "ranges", title: a.error }, "unreadable")
        : el("td", { class: "num", "data-col": "ranges" }, count(a.committed_ranges ?? 0)),
      el("td", { class: a.dropped > 0 ? "num warn" : "num" }, count(a.dropped)),
      // Skew: filled when the collector reports it (null until then).
      el("td", { class: a.skew > 0 ? "num warn" : "num", "data-col": "skew" },
        a.skew === null || a.skew === undefined ? "—" : count(a.skew)),
      el("td", { class: "num" }, count(a.readings_stored)));
  });
  tbody.replaceChildren(...rows);
}

function stateCell(d) {
  const [cls, text] = d.up === true ? ["pill up", "up"] : d.up === false ? ["pill down", "down"]
    : ["pill unknown", "unknown"];
  return el("td", {}, el("span", { class: cls }, text));
}

// Rebuilds the devices table from `devices` (sorted by agent, device);
// `onChart(device)` is called when a device's Chart button is chosen.
export function renderDevices(tbody, devices, now, chosen, onChart) {
  const rows = devices.map((d) => {
    const polled = nsToMs(d.last_poll_ns);
    const isChosen = chosen && chosen.agent === d.agent && chosen.device === d.device;
    const button = el("button", { type: "button", class: "chart-btn",
      "aria-label": `Chart ${d.device} of ${d.agent}`, "aria-pressed": isChosen ? "true" : "false" },
    "Chart");
    button.addEventListener("click", () => onChart(d));
    const state = d.up === true ? "up" : d.up === false ? "down" : "unknown";
    return el("tr", { dataset: { agent: d.agent, device: d.device, up: state, outcome: d.outcome },
      class: isChosen ? "chosen" : null },
    el("td", {}, d.agent),
    el("th", { scope: "row" }, d.device),
    stateCell(d),
    el("td", { title: polled ? dateTime(polled) : "" }, ago(polled, now)),
    el("td", { class: `outcome ${d.outcome}` }, d.outcome),
    el("td", { class: "cause" }, d.cause || ""),
    el("td", { class: "num" }, d.series === undefined || d.series === null ? "—" : count(d.series)),
    el("td", {}, button));
  });
  tbody.replaceChildren(...rows);
}

// Rebuilds the exports table from `exports` (as /api/fleet/exports lists
// them, by name).
export function renderExports(tbody, exports) {
  const rows = exports.map((x) => {
    const lagging = x.lag_readings > 0;
    return el("tr", { dataset: { export: x.name, kind: x.kind } },
      el("th", { scope: "row" }, x.name),
      el("td", {}, x.kind || "—"),
      el("td", { "data-col": "destination" }, x.destination || "not configured here"),
      el("td", { class: "num", "data-col": "cursor" }, `${x.position} / ${x.end}`),
      el("td", { class: lagging ? "num warn" : "num", "data-col": "lag" }, count(x.lag_readings)),
      el("td", { class: "num", "data-col": "lag-seconds" }, x.lag_seconds.toFixed(1)),
      el("td", { class: "num", "data-col": "sent" }, count(x.sent)),
      el("td", { class: "num", "data-col": "retried" }, count(x.retried)),
      el("td", { class: x.dropped > 0 ? "num warn" : "num", "data-col": "dropped" }, count(x.dropped)),
      el("td", { class: x.skipped > 0 ? "num warn" : "num", "data-col": "skipped" }, count(x.skipped)),
      el("td", { class: "cause", "data-col": "error" }, x.last_error || ""));
  });
  tbody.replaceChildren(...rows);
}
