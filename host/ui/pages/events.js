// Events: recent events, and the inspector (`#/events/ID`): attributes, data, where each
// delivery stands, and the saga's trace as a tree of causes.

import { api, ApiError } from "../api.js";
import { h, fill, time, hash, link, seg, notice, pretty, table, count } from "../dom.js";

const DATA = new Set(["data", "data_base64"]);

/** The event's attributes (everything but its data) as a definition list. */
export function eventAttributes(event) {
  const names = Object.keys(event).filter((name) => !DATA.has(name));
  return h(
    "dl",
    { class: "attrs panel", testid: "event-attributes" },
    names.map((name) => [h("dt", {}, name), h("dd", {}, typeof event[name] === "string" ? event[name] : JSON.stringify(event[name]))]),
  );
}

/** The event's data as text: JSON indented, bytes as base64. */
export function dataOf(event) {
  if ("data_base64" in event) return `base64: ${event.data_base64}`;
  if (!("data" in event)) return "(no data)";
  return pretty(event.data);
}

/** A delivery's state in words, with its badge class. */
function stateOf(delivery) {
  switch (delivery.state) {
    case "handled":
      return ["ok", delivery.at ? `handled ${time(delivery.at)}` : "handled"];
    case "pending":
      if (delivery.not_before) return ["warn", `retrying after ${time(delivery.not_before)} (attempt ${delivery.attempt + 1})`];
      return ["", delivery.attempt ? `pending (attempt ${delivery.attempt + 1})` : "pending"];
    case "dead-lettered":
      return ["bad", "dead-lettered"];
    case "purged":
      return ["bad", "purged"];
    case "acknowledged":
      return ["ok", "acknowledged"];
    case "in-flight":
      return ["warn", "in flight"];
    case "unknown":
      return ["", `unknown: ${delivery.reason}`];
    default:
      return ["", delivery.state];
  }
}

function stateBadge(delivery) {
  const [kind, text] = stateOf(delivery);
  return h("span", { class: `badge ${kind}`, testid: "delivery-state", dataset: { plugin: delivery.subscription, state: delivery.state } }, `${delivery.subscription}: ${text}`);
}

function deliveries(stored) {
  if (!stored.deliveries.length) return h("p", { class: "muted" }, "No plugin was subscribed to it.");
  const unknown = [...new Set(stored.deliveries.flatMap((d) => d.unknown || []))];
  const scroll = h(
    "div",
    { class: "scroll" },
    table(
      ["Plugin", "State", "Version", "Failures", "Last failure"],
      stored.deliveries.map((d) =>
        h(
          "tr",
          { testid: "delivery-row", dataset: { plugin: d.subscription, state: d.state } },
          h("td", {}, link(`/plugins/${seg(d.subscription)}`, d.subscription)),
          h(
            "td",
            {},
            stateBadge(d),
            d.state === "dead-lettered" ? [" ", link(`/dlq/${d.dead_letter_id}`, `letter #${d.dead_letter_id}`)] : null,
          ),
          h("td", {}, d.unknown?.includes("version") ? h("span", { class: "muted" }, "not recorded") : hash(d.version)),
          h("td", {}, String(d.failures)),
          h("td", {}, d.last_failure ? `${d.last_failure.kind}: ${d.last_failure.message}` : "—"),
        ),
      ),
    ),
  );
  if (!unknown.length) return scroll;
  return h("div", {}, scroll, h("p", { class: "muted", testid: "delivery-unknown" }, `This host's log does not record: ${unknown.join(", ")}.`));
}

export async function render(root, route) {
  if (route.arg) return inspect(root, route.arg, route.query.get("source"));
  const search = h("input", { type: "search", placeholder: "event id", testid: "event-search", "aria-label": "Event id" });
  const type = h("input", { type: "search", placeholder: "type", value: route.query.get("type") || "", "aria-label": "Type" });
  const subject = h("input", { type: "search", placeholder: "subject", value: route.query.get("subject") || "", "aria-label": "Subject" });
  const body = h("div");
  root.append(
    h("h1", {}, "Events"),
    h(
      "form",
      {
        class: "toolbar",
        onsubmit: (event) => {
          event.preventDefault();
          if (search.value.trim()) location.hash = `#/events/${seg(search.value.trim())}`;
        },
      },
      search,
      h("button", { type: "submit" }, "Inspect"),
    ),
    h(
      "form",
      {
        class: "toolbar",
        onsubmit: (event) => {
          event.preventDefault();
          const params = new URLSearchParams();
          if (type.value) params.set("type", type.value);
          if (subject.value) params.set("subject", subject.value);
          location.hash = `#/events?${params}`;
        },
      },
      type,
      subject,
      h("button", { type: "submit" }, "Filter"),
    ),
    body,
  );
  let before = route.query.get("before");
  const list = async () => {
    let page;
    try {
      page = await api("/events", {
        query: { type: route.query.get("type"), subject: route.query.get("subject"), before, limit: 50 },
      });
    } catch (error) {
      fill(body, notice(error.status === 501 ? "info" : "error", error.message));
      return;
    }
    fill(
      body,
      page.events.length
        ? h(
            "div",
            { class: "scroll" },
            table(
              ["Offset", "Type", "Id", "Subject", "Time", "Deliveries"],
              page.events.map((stored) =>
                h(
                  "tr",
                  { testid: "event-row" },
                  h("td", {}, count(stored.offset)),
                  h("td", {}, stored.event.type),
                  h("td", {}, link(`/events/${seg(stored.event.id)}`, h("code", {}, stored.event.id))),
                  h("td", {}, stored.event.subject ?? "—"),
                  h("td", {}, time(stored.event.time)),
                  h("td", {}, stored.deliveries.map((d) => [stateBadge(d), " "])),
                ),
              ),
            ),
          )
        : h("p", { class: "muted" }, "No events."),
      page.next
        ? h("button", { type: "button", onclick: () => { before = new URLSearchParams(page.next).get("before"); list(); } }, "Older")
        : null,
    );
  };
  await list();
}

async function inspect(root, id, source) {
  const body = h("div");
  root.append(h("p", {}, link("/events", "← Events")), h("h1", {}, "Event ", h("code", {}, id)), body);
  let stored;
  try {
    stored = await api(`/events/${encodeURIComponent(id)}`, { query: { source } });
  } catch (error) {
    if (error instanceof ApiError && error.status === 501) {
      fill(body, notice("info", error.message));
      return;
    }
    fill(body, notice("error", error.message));
    return;
  }
  const trace = h("div", { testid: "trace" }, h("p", { class: "muted" }, "Loading the trace…"));
  fill(
    body,
    h(
      "p",
      { class: "muted" },
      `Offset ${count(stored.offset)}; `,
      stored.emitted_by ? ["emitted by ", link(`/plugins/${seg(stored.emitted_by)}`, stored.emitted_by)] : "published (not emitted by a plugin)",
    ),
    eventAttributes(stored.event),
    h("h2", {}, "Data"),
    h("pre", { testid: "event-data" }, dataOf(stored.event)),
    h("h2", {}, "Deliveries"),
    deliveries(stored),
    h("h2", {}, "Saga trace"),
    trace,
  );
  try {
    const answer = await api(`/events/${encodeURIComponent(id)}/trace`, { query: { source } });
    fill(trace, traceTree(answer, stored));
  } catch (error) {
    fill(trace, notice("error", error.message));
  }
}

/** The trace's events as nested lists: each under the event that caused it. */
function traceTree(trace, current) {
  const children = new Map();
  const roots = [];
  const known = new Set(trace.events.map((node) => node.offset));
  for (const node of trace.events) {
    if (node.parent !== null && node.parent !== undefined && known.has(node.parent)) {
      if (!children.has(node.parent)) children.set(node.parent, []);
      children.get(node.parent).push(node);
    } else {
      roots.push(node);
    }
  }
  const item = (node) => {
    const here = node.offset === current.offset;
    const label = h(
      "span",
      { class: `node ${here ? "current" : ""}`, testid: "trace-label" },
      here ? h("strong", {}, node.event.type) : link(`/events/${seg(node.event.id)}${node.event.source ? `?source=${seg(node.event.source)}` : ""}`, node.event.type),
      h("span", { class: "muted" }, node.emitted_by ? `emitted by ${node.emitted_by}` : "published"),
      node.deliveries.map(stateBadge),
    );
    const kids = children.get(node.offset) || [];
    return h(
      "li",
      { testid: "trace-node", dataset: { type: node.event.type, id: node.event.id, offset: node.offset } },
      label,
      kids.length ? h("ul", {}, kids.map(item)) : null,
    );
  };
  return h(
    "div",
    {},
    h("p", { class: "muted" }, `Correlation `, h("code", {}, trace.correlation), `: ${trace.events.length} event(s)`, trace.truncated ? " (truncated)" : ""),
    h("ul", { class: "tree", testid: "trace-tree" }, roots.map(item)),
  );
}
