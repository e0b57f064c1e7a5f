// Building the page. Everything from the host (event data, error messages, keys, plugin
// names) becomes text nodes: nothing here ever parses a string as HTML.

/** An element: `h("a", {href: "#/x", testid: "link", onclick: f}, "text", child, ...)`. */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") el.className = value;
    else if (name === "testid") el.dataset.testid = value;
    else if (name === "dataset") Object.assign(el.dataset, value);
    else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "value") el.value = value;
    else if (name === "checked") el.checked = Boolean(value);
    else if (name === "disabled") el.disabled = Boolean(value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replaces what `el` holds. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** A JSON value as indented text. */
export function pretty(value) {
  return JSON.stringify(value, null, 2);
}

/** A timestamp as the browser's local date and time; "—" when absent. */
export function time(value) {
  if (!value) return "—";
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? String(value) : date.toLocaleString();
}

/** A number with thousands separators. */
export function count(value) {
  return value === undefined || value === null ? "—" : Number(value).toLocaleString();
}

/** A short hash for tables (the full one in its title). */
export function hash(value) {
  if (!value) return h("span", { class: "muted" }, "—");
  return h("code", { title: value }, value.slice(0, 12));
}

/** A table with a header row; `rows` are arrays of cells or `<tr>` elements. */
export function table(headers, rows, props = {}) {
  return h(
    "table",
    props,
    h("thead", {}, h("tr", {}, headers.map((name) => h("th", { scope: "col" }, name)))),
    h(
      "tbody",
      {},
      rows.map((row) => (row instanceof Node ? row : h("tr", {}, row.map((cell) => h("td", {}, cell))))),
    ),
  );
}

/** A notice in the page: `kind` is "error", "info" or "ok". */
export function notice(kind, ...text) {
  return h("p", { class: `notice ${kind}`, role: kind === "error" ? "alert" : "status" }, ...text);
}

/** A link inside the page. */
export function link(route, ...children) {
  return h("a", { href: `#${route}` }, ...children);
}

/** A route segment: encoded so that ids and names with `/`, `?` or `#` stay one segment. */
export function seg(text) {
  return encodeURIComponent(text);
}
