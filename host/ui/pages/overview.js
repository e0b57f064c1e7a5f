// Overview: the health strip and, per plugin, handled/s and p99 latency over the last
// 15 minutes, with plugin loads and swaps drawn as markers on both charts.

import { api } from "../api.js";
import { h, fill, count, notice } from "../dom.js";
import * as live from "../live.js";

/** Seconds the charts show. */
const WINDOW = 15 * 60;
const PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"];

function css(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

function tile(label, testid) {
  const value = h("div", { class: "value", testid }, "—");
  return { el: h("div", { class: "tile" }, h("div", { class: "label" }, label), value), value };
}

export async function render(root, _route, _context) {
  const tiles = {
    ready: tile("Ready", "health-ready"),
    store: tile("Store", "health-store"),
    inFlight: tile("In flight / capacity", "health-in-flight"),
    dlq: tile("Dead letters", "health-dlq"),
    overflow: tile("Monitor overflow", "health-overflow"),
    accepted: tile("Accepted /s", "health-accepted"),
  };
  const handledEl = h("div", { testid: "chart-handled" });
  const p99El = h("div", { testid: "chart-p99" });
  const status = h("div");
  root.append(
    h("h1", {}, "Overview"),
    h("div", { class: "strip" }, Object.values(tiles).map((t) => t.el)),
    status,
    h(
      "div",
      { class: "charts" },
      h("section", { class: "chart" }, h("h2", {}, "Handled per second, by plugin"), handledEl),
      h("section", { class: "chart" }, h("h2", {}, "p99 handler latency (ms), by plugin"), p99El),
    ),
    h("p", { class: "muted" }, "Dashed lines: a plugin loaded or swapped. The last 15 minutes; Prometheus (/metrics) keeps the long term."),
  );

  // What streams in while the history loads is kept, so the charts have no gap.
  const early = { samples: [], changes: [] };
  const offEarly = [
    live.on("metrics", (sample) => early.samples.push(sample)),
    live.on("plugin", (change) => early.changes.push(change)),
  ];
  let history, settings, histories;
  try {
    let plugins;
    [history, settings, plugins] = await Promise.all([
      api("/metrics/history"),
      api("/config").then((c) => Object.fromEntries(c.settings.map((s) => [s.key, s.value])), () => ({})),
      api("/plugins"),
    ]);
    histories = await Promise.all(
      plugins.map((p) => api(`/plugins/${encodeURIComponent(p.name)}/history`).catch(() => null)),
    );
  } finally {
    offEarly.forEach((off) => off());
  }
  const last = history.samples.length ? Date.parse(history.samples[history.samples.length - 1].time) : 0;
  const samples = [...history.samples, ...early.samples.filter((s) => Date.parse(s.time) > last)].slice(-WINDOW);
  const markers = [];
  for (const entry of histories) {
    for (const change of entry ? entry.changes : []) addMarker(markers, change);
  }
  for (const change of early.changes) addMarker(markers, change);

  const capacity = settings["bus.capacity"];
  // `/config` flattens tables: a NATS log shows as `nats.url` and its siblings.
  const nats = Object.keys(settings).some((key) => key.startsWith("nats."));
  const store = nats ? "NATS JetStream" : settings.durable === false ? "in memory" : settings.durable ? "embedded SQLite" : "—";
  fill(tiles.store.value, store);

  async function refreshReady() {
    try {
      const ready = await fetch("/readyz").then((r) => r.json());
      fill(tiles.ready.value, ready.status);
      tiles.ready.el.className = `tile ${ready.status === "ready" ? "good" : "bad"}`;
    } catch {
      fill(tiles.ready.value, "unreachable");
      tiles.ready.el.className = "tile bad";
    }
  }

  function showSample(sample) {
    if (!sample) return;
    fill(tiles.inFlight.value, `${count(sample.in_flight)} / ${capacity ? count(capacity) : "—"}`);
    fill(tiles.dlq.value, count(sample.dead_letters));
    tiles.dlq.el.className = `tile ${sample.dead_letters > 0 ? "bad" : ""}`;
    fill(tiles.overflow.value, count(sample.monitor_overflow));
    tiles.overflow.el.className = `tile ${sample.monitor_overflow > 0 ? "bad" : ""}`;
    fill(tiles.accepted.value, count(sample.accepted));
  }

  let charts = [];
  function draw() {
    for (const chart of charts) chart.destroy();
    charts = [
      chart(handledEl, samples, markers, (p) => p.handled, "events/s"),
      chart(p99El, samples, markers, (p) => p.p99_ms ?? null, "ms"),
    ];
  }
  draw();
  showSample(samples[samples.length - 1]);
  refreshReady();
  if (!samples.length) status.append(notice("info", "No samples yet: the first arrives a second after the host starts."));

  const offs = [
    live.on("metrics", (sample) => {
      samples.push(sample);
      if (samples.length > WINDOW) samples.shift();
      showSample(sample);
      fill(status);
      const seen = [...new Set(samples.flatMap((s) => Object.keys(s.plugins)))].sort().join(",");
      if (charts.some((c) => c.names.join(",") !== seen)) {
        draw();
      } else {
        for (const c of charts) c.update();
      }
    }),
    live.on("plugin", (change) => {
      addMarker(markers, change);
      for (const c of charts) c.update();
    }),
    live.on("open", refreshReady),
    live.on("closed", refreshReady),
  ];
  // The canvas takes its colours when drawn: draw again when the scheme changes.
  const onTheme = () => draw();
  window.addEventListener("evhost:theme", onTheme);
  const scheme = matchMedia("(prefers-color-scheme: dark)");
  scheme.addEventListener("change", onTheme);
  const onResize = () => {
    for (const c of charts) c.resize();
  };
  window.addEventListener("resize", onResize);
  return () => {
    offs.forEach((off) => off());
    window.removeEventListener("evhost:theme", onTheme);
    scheme.removeEventListener("change", onTheme);
    window.removeEventListener("resize", onResize);
    for (const c of charts) c.destroy();
  };
}

function addMarker(markers, change) {
  if (change.change !== "loaded" && change.change !== "swapped") return;
  markers.push({ time: Date.parse(change.time) / 1000, label: `${change.plugin} ${change.change}` });
}

/** One uPlot chart of `value(pluginSample)` per plugin; `update()` redraws it from
 * `samples`, and the container's data attributes tell what it plots. */
function chart(el, samples, markers, value, unit) {
  fill(el);
  const names = [...new Set(samples.flatMap((s) => Object.keys(s.plugins)))].sort();
  const data = () => [
    samples.map((s) => Date.parse(s.time) / 1000),
    ...names.map((name) => samples.map((s) => (s.plugins[name] ? value(s.plugins[name]) : null))),
  ];
  const recent = () => {
    const last = samples.length ? Date.parse(samples[samples.length - 1].time) / 1000 : Date.now() / 1000;
    return markers.filter((m) => m.time >= last - WINDOW && m.time <= last);
  };
  const fg = css("--fg");
  const grid = css("--line");
  const axis = { stroke: fg, grid: { stroke: grid }, ticks: { stroke: grid } };
  const options = {
    width: Math.max(280, el.clientWidth || 560),
    height: 240,
    scales: {
      // From the first sample, or from an earlier load or swap in the window.
      x: {
        time: true,
        // At least a minute wide: one sample alone would stretch to years otherwise.
        range: () => {
          const xs = samples.map((s) => Date.parse(s.time) / 1000);
          const to = xs.length ? xs[xs.length - 1] : Date.now() / 1000;
          const from = Math.min(to - 60, ...xs.slice(0, 1), ...recent().map((m) => m.time));
          return [from, to];
        },
      },
      y: { range: (_u, _min, max) => [0, Math.max(1, max || 0) * 1.1] },
    },
    axes: [axis, { ...axis, label: unit }],
    series: [{}, ...names.map((name, i) => ({ label: name, stroke: PALETTE[i % PALETTE.length], width: 2, spanGaps: false }))],
    legend: { live: false },
    hooks: {
      draw: [
        (u) => {
          const ctx = u.ctx;
          const [from, to] = [u.scales.x.min, u.scales.x.max];
          ctx.save();
          ctx.strokeStyle = css("--warn");
          ctx.fillStyle = css("--warn");
          ctx.setLineDash([5, 4]);
          ctx.lineWidth = 1.5 * devicePixelRatio;
          ctx.font = `${11 * devicePixelRatio}px system-ui`;
          // Labels close together go one under the other.
          const line = 13 * devicePixelRatio;
          let previous = -Infinity;
          let row = 0;
          for (const marker of [...markers].sort((a, b) => a.time - b.time)) {
            if (marker.time < from || marker.time > to) continue;
            const x = u.valToPos(marker.time, "x", true);
            row = x - previous < 160 * devicePixelRatio ? row + 1 : 0;
            previous = x;
            ctx.beginPath();
            ctx.moveTo(x, u.bbox.top);
            ctx.lineTo(x, u.bbox.top + u.bbox.height);
            ctx.stroke();
            const nearEnd = x > u.bbox.left + u.bbox.width * 0.7;
            ctx.textAlign = nearEnd ? "right" : "left";
            ctx.textBaseline = "top";
            ctx.fillText(marker.label, nearEnd ? x - 4 : x + 4, u.bbox.top + 2 * devicePixelRatio + row * line);
          }
          ctx.restore();
        },
      ],
    },
  };
  /** Tells through the container's attributes what `plotted` (the chart's data) holds. */
  const describe = (plotted) => {
    const series = plotted.slice(1);
    const last = series.map((s) => s[s.length - 1] ?? 0);
    const all = series.flat().filter((v) => v !== null);
    el.dataset.samples = String(samples.length);
    el.dataset.last = String(last.reduce((a, b) => a + b, 0));
    el.dataset.max = String(all.length ? Math.max(...all) : 0);
    el.dataset.markers = String(recent().length);
    el.dataset.plugins = names.join(",");
  };
  const initial = data();
  const plot = new window.uPlot(options, initial, el);
  describe(initial);
  return {
    names,
    update() {
      const plotted = data();
      plot.setData(plotted);
      describe(plotted);
    },
    resize() {
      plot.setSize({ width: Math.max(280, el.clientWidth), height: 240 });
    },
    destroy() {
      plot.destroy();
    },
  };
}
