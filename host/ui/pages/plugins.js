// Plugins: what is serving, with its limits and counters; one plugin with its reload
// history and links to its errors, dead letters and read model.

import { api } from "../api.js";
import { h, table, time, count, hash, link, seg, notice, fill } from "../dom.js";
import * as live from "../live.js";

function failed(plugin) {
  return Object.values(plugin.counters.failed || {}).reduce((a, b) => a + b, 0);
}

function meanMs(plugin) {
  const { latency_count: n, latency_sum_seconds: sum } = plugin.counters;
  return n ? ((sum / n) * 1000).toFixed(2) : "—";
}

const MIB = 1024 * 1024;

/** The plugin's budgets in words: fuel, memory and time, and with `all` every other one. */
function limits(plugin, all = false) {
  const { fuel, memory_bytes: memory, timeout_ms: timeout, ...rest } = plugin.limits || {};
  const parts = [];
  if (fuel !== undefined) parts.push(`fuel ${count(fuel)}`);
  if (memory !== undefined) parts.push(memory % MIB === 0 ? `${count(memory / MIB)} MiB` : `${count(memory)} B`);
  if (timeout !== undefined) parts.push(`${count(timeout)} ms`);
  if (all) for (const [name, value] of Object.entries(rest)) parts.push(`${name} ${count(value)}`);
  return parts.join(", ");
}

export async function render(root, route) {
  if (route.arg) return renderOne(root, route.arg);
  const body = h("div");
  root.append(h("h1", {}, "Plugins"), body);
  async function load() {
    const plugins = await api("/plugins");
    if (!plugins.length) {
      fill(body, notice("info", "No plugin is loaded: drop a .wasm file into the plugins folder."));
      return;
    }
    fill(
      body,
      h(
        "div",
        { class: "scroll" },
        table(
          ["Name", "Version", "Hash", "Subscribed to", "Limits", "Reuse", "Handled", "Failed", "Mean ms", "Loaded"],
          plugins.map((p) =>
            h(
              "tr",
              { testid: "plugin-row", dataset: { name: p.name, hash: p.hash, version: p.version } },
              h("td", {}, link(`/plugins/${seg(p.name)}`, p.name)),
              h("td", {}, p.version),
              h("td", {}, hash(p.hash)),
              h("td", {}, p.subscriptions.join(", ")),
              h("td", {}, limits(p)),
              h("td", {}, String(p.reuse)),
              h("td", { testid: "plugin-handled" }, count(p.counters.succeeded)),
              h("td", { testid: "plugin-failed" }, count(failed(p))),
              h("td", {}, meanMs(p)),
              h("td", {}, time(p.loaded_at)),
            ),
          ),
          { testid: "plugins-table" },
        ),
      ),
    );
  }
  await load();
  const off = live.on("plugin", () => load().catch(() => {}));
  const timer = setInterval(() => load().catch(() => {}), 5000);
  return () => {
    off();
    clearInterval(timer);
  };
}

function change(entry) {
  switch (entry.change) {
    case "loaded":
      return ["loaded", [`version ${entry.version} `, hash(entry.hash)]];
    case "swapped":
      return ["swapped", [hash(entry.from), " → ", hash(entry.to), ` (version ${entry.version})`]];
    case "refused":
      return ["refused", [h("span", { class: "muted" }, entry.reason)]];
    default:
      return [entry.change, []];
  }
}

export function historyTable(history) {
  return table(
    ["When", "What", "Detail"],
    [...history.changes].reverse().map((entry) => {
      const [what, detail] = change(entry);
      return h(
        "tr",
        { testid: "history-row", dataset: { change: entry.change } },
        h("td", {}, time(entry.time)),
        h("td", {}, h("span", { class: `badge ${what === "refused" ? "bad" : ""}` }, what)),
        h("td", {}, detail),
      );
    }),
    { testid: "history-table" },
  );
}

async function renderOne(root, name) {
  const body = h("div");
  root.append(h("p", {}, link("/plugins", "← Plugins")), h("h1", {}, name), body);
  async function load() {
    const [plugins, history] = await Promise.all([
      api("/plugins"),
      api(`/plugins/${encodeURIComponent(name)}/history`).catch(() => ({ changes: [], serving: null })),
    ]);
    const plugin = plugins.find((p) => p.name === name);
    fill(
      body,
      plugin
        ? h(
            "dl",
            { class: "attrs panel", testid: "plugin-detail" },
            h("dt", {}, "Version"), h("dd", {}, plugin.version),
            h("dt", {}, "Hash"), h("dd", {}, h("code", { testid: "plugin-hash" }, plugin.hash)),
            h("dt", {}, "File"), h("dd", {}, plugin.file),
            h("dt", {}, "Subscribed to"), h("dd", {}, plugin.subscriptions.join(", ")),
            h("dt", {}, "Imports"), h("dd", {}, plugin.imports.join(", ") || "—"),
            h("dt", {}, "Limits"), h("dd", {}, limits(plugin, true)),
            h("dt", {}, "Concurrency"), h("dd", {}, plugin.concurrency ?? "host-wide"),
            h("dt", {}, "Reuse"), h("dd", {}, `${plugin.reuse} event(s) per instance`),
            h("dt", {}, "Handled / failed"), h("dd", {}, `${count(plugin.counters.succeeded)} / ${count(failed(plugin))}`),
            h("dt", {}, "Failures by kind"), h("dd", {}, JSON.stringify(plugin.counters.failed)),
            h("dt", {}, "Fuel burned"), h("dd", {}, count(plugin.fuel_consumed)),
            h("dt", {}, "Loaded"), h("dd", {}, `${time(plugin.loaded_at)} (${plugin.reloads} reload(s))`),
          )
        : notice("info", "This plugin is not serving now."),
      h(
        "p",
        { class: "toolbar" },
        link(`/errors?plugin=${seg(name)}`, "Its errors"),
        link(`/dlq?plugin=${seg(name)}`, "Its dead letters"),
        link(`/kv/${seg(name)}`, "Its read model"),
      ),
      h("h2", {}, "History"),
      history.changes.length ? historyTable(history) : h("p", { class: "muted" }, "Nothing recorded."),
    );
  }
  await load();
  return live.on("plugin", (entry) => {
    if (entry.plugin === name) load().catch(() => {});
  });
}
