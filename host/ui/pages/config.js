// Config: every setting in effect with where its value came from.

import { api } from "../api.js";
import { h, fill, table } from "../dom.js";

export async function render(root) {
  const filter = h("input", { type: "search", placeholder: "filter keys", testid: "config-filter", "aria-label": "Filter keys" });
  const body = h("div", { class: "scroll" });
  root.append(h("h1", {}, "Configuration"), h("p", { class: "muted" }, "Secrets are never shown; a password in a URL reads ***."), h("div", { class: "toolbar" }, filter), body);
  const { settings } = await api("/config");
  const draw = () => {
    const text = filter.value.trim().toLowerCase();
    fill(
      body,
      table(
        ["Key", "Value", "Source", "From"],
        settings
          .filter((s) => !text || s.key.toLowerCase().includes(text))
          .map((s) =>
            h(
              "tr",
              { testid: "config-row", dataset: { key: s.key, source: s.source } },
              h("td", {}, h("code", {}, s.key)),
              h("td", {}, typeof s.value === "string" ? s.value : JSON.stringify(s.value)),
              h("td", {}, h("span", { class: `badge ${s.source === "default" ? "" : "ok"}` }, s.source)),
              h("td", {}, s.from ?? ""),
            ),
          ),
        { testid: "config-table" },
      ),
    );
  };
  filter.addEventListener("input", draw);
  draw();
}
