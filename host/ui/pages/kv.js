// Read models: a plugin's keys, by prefix, a page at a time, with JSON values indented.

import { api } from "../api.js";
import { h, fill, link, seg, notice, pretty, table } from "../dom.js";

const PAGE = 50;

export async function render(root, route) {
  if (!route.arg) {
    const plugins = await api("/plugins");
    root.append(
      h("h1", {}, "Read models"),
      plugins.length
        ? h("ul", {}, plugins.map((p) => h("li", {}, link(`/kv/${seg(p.name)}`, p.name))))
        : notice("info", "No plugin is loaded."),
    );
    return;
  }
  const name = route.arg;
  const prefix = h("input", { type: "search", placeholder: "key prefix", value: route.query.get("prefix") || "", testid: "kv-prefix", "aria-label": "Key prefix" });
  const body = h("div");
  root.append(
    h("p", {}, link("/kv", "← Read models")),
    h("h1", {}, "Read model of ", name),
    h(
      "form",
      {
        class: "toolbar",
        onsubmit: (event) => {
          event.preventDefault();
          location.hash = `#/kv/${seg(name)}${prefix.value ? `?prefix=${seg(prefix.value)}` : ""}`;
        },
      },
      prefix,
      h("button", { type: "submit" }, "Filter"),
    ),
    body,
  );
  const starts = [];
  let after = null;
  async function load() {
    const page = await api(`/plugins/${encodeURIComponent(name)}/kv`, { query: { prefix: route.query.get("prefix"), after, limit: PAGE } });
    fill(
      body,
      page.entries.length
        ? h(
            "div",
            { class: "scroll" },
            table(
              ["Key", "Revision", "Value"],
              page.entries.map((entry) =>
                h(
                  "tr",
                  { testid: "kv-row", dataset: { key: entry.key } },
                  h("td", {}, h("code", {}, entry.key)),
                  h("td", {}, String(entry.revision)),
                  h("td", {}, "json" in entry ? h("pre", { testid: "kv-value" }, pretty(entry.json)) : h("pre", { testid: "kv-value" }, `base64: ${entry.base64}`)),
                ),
              ),
              { testid: "kv-table" },
            ),
          )
        : h("p", { class: "muted", testid: "kv-empty" }, "No keys."),
      h(
        "div",
        { class: "toolbar" },
        starts.length ? h("button", { type: "button", onclick: () => { after = starts.pop(); load(); } }, "Previous page") : null,
        page.next_after ? h("button", { type: "button", testid: "kv-next", onclick: () => { starts.push(after); after = page.next_after; load(); } }, "Next page") : null,
      ),
    );
  }
  await load();
}
