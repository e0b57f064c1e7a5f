// Errors: the latest failures, then each one live as the error monitor reports it, with
// plugin and kind filters and a pause button.

import { api } from "../api.js";
import { h, fill, time, hash, link, seg, notice, table } from "../dom.js";
import * as live from "../live.js";

const KEEP = 500;
const KINDS = ["retry", "reject", "panic", "trap", "out-of-fuel", "timeout", "memory-limit", "resource-limit", "host-error", "plugin-load"];

export async function render(root, route) {
  let records = [];
  let held = [];
  let paused = false;
  const plugin = h("input", { type: "search", placeholder: "plugin", value: route.query.get("plugin") || "", testid: "errors-plugin", "aria-label": "Filter by plugin" });
  const kind = h(
    "select",
    { testid: "errors-kind", "aria-label": "Filter by kind" },
    h("option", { value: "" }, "every kind"),
    KINDS.map((k) => h("option", { value: k }, k)),
  );
  const pause = h("button", { type: "button", testid: "errors-pause", "aria-pressed": "false" }, "Pause");
  const state = h("span", { class: "muted", testid: "errors-state", "aria-live": "polite" });
  const dropped = h("div", { testid: "errors-dropped" });
  const list = h("div", { class: "scroll" });
  root.append(h("h1", {}, "Errors"), h("div", { class: "toolbar" }, plugin, kind, pause, state), dropped, list);

  function shown() {
    const p = plugin.value.trim();
    const k = kind.value;
    return records.filter((r) => (!p || r.subscription === p) && (!k || r.kind === k));
  }
  function draw() {
    const rows = shown();
    fill(state, paused ? `paused: ${held.length} new held back` : "live");
    fill(
      list,
      rows.length
        ? table(
            ["When", "Plugin", "Kind", "Attempt", "Event", "Version", "Message"],
            rows.map((r) =>
              h(
                "tr",
                { testid: "error-row", dataset: { plugin: r.subscription, kind: r.kind } },
                h("td", {}, time(r.time)),
                h("td", {}, link(`/plugins/${seg(r.subscription)}`, r.subscription)),
                h("td", {}, h("span", { class: "badge bad" }, r.kind)),
                h("td", {}, String(r.attempt)),
                h("td", {}, link(`/events/${seg(r.event_id)}`, r.event_type, " ", h("code", {}, r.event_id))),
                h("td", {}, hash(r.handler_version)),
                h("td", { testid: "error-message" }, r.message),
              ),
            ),
            { testid: "errors-table" },
          )
        : h("p", { class: "muted" }, "No failures to show."),
    );
  }
  const key = (r) => `${r.subscription}\u0000${r.event_id}\u0000${r.attempt}\u0000${r.time}`;
  // A reload (after a reconnection or a lag) adds to what is shown, never replaces it:
  // what streamed in while it was under way stays. Paused, what it brings is held too.
  async function load() {
    const fetched = await api("/errors", { query: { limit: KEEP } });
    if (paused) {
      const shown = new Set(records.map(key));
      held = merge(held, fetched.filter((r) => !shown.has(key(r))));
    } else {
      records = merge(fetched, records);
    }
    draw();
  }
  /** Newest first, each record once. */
  function merge(...lists) {
    const seen = new Set();
    return lists
      .flat()
      .filter((r) => !seen.has(key(r)) && seen.add(key(r)))
      .sort((a, b) => Date.parse(b.time) - Date.parse(a.time))
      .slice(0, KEEP);
  }
  plugin.addEventListener("input", draw);
  kind.addEventListener("change", draw);
  pause.addEventListener("click", () => {
    paused = !paused;
    pause.textContent = paused ? "Resume" : "Pause";
    pause.setAttribute("aria-pressed", String(paused));
    if (!paused) {
      records = merge(held, records);
      held = [];
    }
    draw();
  });
  await load();
  const offs = [
    live.on("failure", (record) => {
      if (paused) held = merge([record], held);
      else records = merge([record], records);
      draw();
    }),
    live.on("lagged", (lag) => {
      if (lag.feed !== "failure") return;
      fill(dropped, notice("error", `${lag.missed} failure record(s) were dropped from this page's stream (it fell behind); the list was reloaded.`));
      load().catch(() => {});
    }),
    live.on("open", () => load().catch(() => {})),
  ];
  return () => offs.forEach((off) => off());
}
