// Dead letters: the queue with each letter's failed version next to the loaded one;
// replay one, a selection or all of a plugin after a preview; purge a plugin's letters
// only after typing its name.

import { api } from "../api.js";
import { h, fill, time, hash, link, seg, notice, table } from "../dom.js";
import * as live from "../live.js";
import { dataOf, eventAttributes } from "./events.js";

const PAGE = 100;

function versionBadge(entry) {
  if (!entry) return h("span", { class: "muted" }, "—");
  if (!entry.current_version) return h("span", { class: "badge warn", testid: "badge-not-loaded" }, "plugin not loaded");
  if (entry.fixed_version_loaded) return h("span", { class: "badge ok", testid: "badge-fixed" }, "fixed version loaded");
  return h("span", { class: "badge", testid: "badge-same" }, "same version loaded");
}

/** A modal dialog; resolves true when confirmed. `confirm` is the confirming button. */
function modal(title, body, confirm) {
  return new Promise((resolve) => {
    const cancel = h("button", { type: "button", testid: "dialog-cancel" }, "Cancel");
    const dialog = h(
      "dialog",
      { testid: "dialog", "aria-label": title },
      h("h2", {}, title),
      body,
      h("div", { class: "toolbar" }, cancel, confirm),
    );
    const close = (answer) => {
      dialog.close();
      dialog.remove();
      resolve(answer);
    };
    cancel.addEventListener("click", () => close(false));
    confirm.addEventListener("click", () => close(true));
    dialog.addEventListener("cancel", (event) => {
      event.preventDefault();
      close(false);
    });
    document.body.append(dialog);
    dialog.showModal();
    cancel.focus();
  });
}

/** Shows what a replay would run and replays exactly those letters once confirmed;
 * resolves to the number replayed, or null when cancelled. */
export async function replayWithPreview(query) {
  const preview = await api("/dlq/preview", { query });
  if (!preview.length) {
    await modal("Nothing to replay", h("p", {}, "No dead letter matches."), h("button", { type: "button", class: "primary" }, "OK"));
    return null;
  }
  const confirm = h("button", { type: "button", class: "primary", testid: "dlq-confirm-replay" }, `Replay ${preview.length}`);
  const body = h(
    "div",
    { testid: "replay-preview" },
    h("p", {}, "Each letter is delivered again to the version loaded now:"),
    h(
      "div",
      { class: "scroll" },
      table(
        ["Letter", "Plugin", "Event", "Failed on", "Will run on", ""],
        preview.map((entry) =>
          h(
            "tr",
            { testid: "preview-row" },
            h("td", {}, String(entry.id)),
            h("td", {}, entry.plugin),
            h("td", {}, entry.event_type),
            h("td", {}, hash(entry.failed_version)),
            h("td", {}, hash(entry.current_version)),
            h("td", {}, versionBadge(entry)),
          ),
        ),
      ),
    ),
  );
  if (!(await modal(`Replay ${preview.length} dead letter(s)?`, body, confirm))) return null;
  const result = await api("/dlq/replay", { method: "POST", body: { ids: preview.map((entry) => entry.id) } });
  return result.replayed;
}

/** Asks for the plugin's name and purges its letters once it is typed; resolves to the
 * number purged, or null when cancelled. */
export async function purgeAfterTyping(plugin, query) {
  const confirm = h("button", { type: "button", class: "danger", testid: "dlq-confirm-purge", disabled: true }, "Purge");
  const input = h("input", { type: "text", testid: "purge-name", "aria-label": "The plugin's name", autocomplete: "off" });
  input.addEventListener("input", () => {
    confirm.disabled = input.value !== plugin;
  });
  const body = h(
    "div",
    {},
    h("p", {}, "Purged letters are never delivered again. Type ", h("code", {}, plugin), " to confirm."),
    input,
  );
  const shown = modal(`Purge dead letters of ${plugin}?`, body, confirm);
  input.focus();
  if (!(await shown)) return null;
  const result = await api("/dlq", { method: "DELETE", query });
  return result.purged;
}

export async function render(root, route, context) {
  if (route.arg) return renderOne(root, route.arg, context);
  const plugin = route.query.get("plugin") || "";
  const admin = context.can("admin");
  const status = h("div", { "aria-live": "polite" });
  const body = h("div");
  const selected = new Set();
  const pluginInput = h("input", { type: "search", placeholder: "plugin", value: plugin, testid: "dlq-plugin", "aria-label": "Filter by plugin" });
  pluginInput.addEventListener("change", () => {
    location.hash = pluginInput.value ? `#/dlq?plugin=${seg(pluginInput.value)}` : "#/dlq";
  });
  const replaySelected = h("button", { type: "button", testid: "dlq-replay-selected", disabled: true }, "Replay selected");
  const replayAll = h("button", { type: "button", testid: "dlq-replay-all" }, plugin ? `Replay all of ${plugin}` : "Replay all");
  const purge = h("button", { type: "button", class: "danger", testid: "dlq-purge" }, `Purge ${plugin}…`);
  const toolbar = h("div", { class: "toolbar" }, pluginInput);
  if (admin) {
    toolbar.append(replaySelected, replayAll);
    if (plugin) toolbar.append(purge);
  } else {
    toolbar.append(h("span", { class: "muted", testid: "dlq-read-only" }, "Read-only session: replay and purge need the admin scope."));
  }
  root.append(h("h1", {}, plugin ? `Dead letters of ${plugin}` : "Dead letters"), toolbar, status, body);

  // The page is the letters after `after`; `starts` holds the `after` of earlier pages.
  let after = null;
  let starts = [];
  let generation = 0;
  /** Shows the page after `from` (and makes it the current one once it loaded). */
  async function load(from = after, earlier = starts) {
    const mine = ++generation;
    let letters;
    try {
      // One more than a page: whether a next page exists, without offering an empty one.
      letters = await api("/dlq", { query: { plugin, limit: PAGE + 1, after: from } });
    } catch (error) {
      // The letter the page started after was replayed or purged: start from the top.
      if (error.status === 404 && from !== null) return load(null, []);
      throw error;
    }
    const more = letters.length > PAGE;
    letters = letters.slice(0, PAGE);
    const preview = letters.length ? await api("/dlq/preview", { query: { ids: letters.map((l) => l.id).join(",") } }) : [];
    if (mine !== generation) return; // a newer load is under way
    after = from;
    starts = earlier;
    const byId = new Map(preview.map((entry) => [entry.id, entry]));
    for (const id of [...selected]) if (!letters.some((l) => l.id === id)) selected.delete(id);
    const sync = () => {
      replaySelected.disabled = selected.size === 0;
      replaySelected.textContent = `Replay selected (${selected.size})`;
    };
    sync();
    const rows = letters.map((letter) => {
      const last = letter.failures[letter.failures.length - 1];
      const box = h("input", { type: "checkbox", "aria-label": `Select dead letter ${letter.id}`, checked: selected.has(letter.id), testid: "dlq-select" });
      box.addEventListener("change", () => {
        if (box.checked) selected.add(letter.id);
        else selected.delete(letter.id);
        sync();
      });
      return h(
        "tr",
        { testid: "dlq-row", dataset: { id: letter.id, plugin: letter.subscription } },
        admin ? h("td", {}, box) : null,
        h("td", {}, link(`/dlq/${letter.id}`, `#${letter.id}`)),
        h("td", {}, link(`/dlq?plugin=${seg(letter.subscription)}`, letter.subscription)),
        h("td", {}, link(`/events/${seg(letter.event.id)}`, letter.event.type, " ", h("code", {}, letter.event.id))),
        h("td", {}, time(letter.dead_at)),
        h("td", {}, last ? `${last.kind}: ` : "", h("span", { testid: "dlq-message" }, last ? last.message : "")),
        h("td", {}, hash(byId.get(letter.id)?.failed_version)),
        h("td", {}, hash(byId.get(letter.id)?.current_version)),
        h("td", {}, versionBadge(byId.get(letter.id))),
      );
    });
    const headers = ["Letter", "Plugin", "Event", "Dead since", "Last failure", "Failed on", "Loaded", ""];
    fill(
      body,
      letters.length
        ? h(
            "div",
            { class: "scroll" },
            table(admin ? ["", ...headers] : headers, rows, { testid: "dlq-table" }),
          )
        : h("p", { class: "muted", testid: "dlq-empty" }, "The dead-letter queue is empty."),
      h(
        "div",
        { class: "toolbar" },
        starts.length
          ? h("button", { type: "button", onclick: () => page(starts[starts.length - 1], starts.slice(0, -1)) }, "Previous page")
          : null,
        more
          ? h("button", { type: "button", testid: "dlq-next", onclick: () => page(letters[letters.length - 1].id, [...starts, after]) }, "Next page")
          : null,
      ),
    );
  }

  function page(from, earlier) {
    load(from, earlier).catch((error) => fill(status, notice("error", error.message)));
  }
  const reload = () => load().catch((error) => fill(status, notice("error", error.message)));

  async function act(action) {
    try {
      const result = await action();
      if (result !== null) fill(status, notice("ok", result));
    } catch (error) {
      fill(status, notice("error", error.message));
    }
    await reload();
  }
  replaySelected.addEventListener("click", () =>
    act(async () => {
      const n = await replayWithPreview({ ids: [...selected].join(",") });
      return n === null ? null : `Replayed ${n} dead letter(s).`;
    }),
  );
  replayAll.addEventListener("click", () =>
    act(async () => {
      const n = await replayWithPreview({ all: true, plugin });
      return n === null ? null : `Replayed ${n} dead letter(s).`;
    }),
  );
  purge.addEventListener("click", () =>
    act(async () => {
      const n = await purgeAfterTyping(plugin, { plugin });
      return n === null ? "Purge cancelled: nothing was dropped." : `Purged ${n} dead letter(s).`;
    }),
  );

  await load();
  // Changes come in bursts: one reload for each.
  let pending = null;
  const soon = () => {
    clearTimeout(pending);
    pending = setTimeout(reload, 300);
  };
  const offs = [
    live.on("dlq", soon),
    live.on("open", soon),
    // The dead-letter count travels with the metrics: a lag there may hide a change.
    live.on("lagged", (lag) => {
      if (lag.feed === "metrics") soon();
    }),
  ];
  return () => {
    clearTimeout(pending);
    offs.forEach((off) => off());
  };
}

async function renderOne(root, id, context) {
  const status = h("div", { "aria-live": "polite" });
  const body = h("div");
  root.append(h("p", {}, link("/dlq", "← Dead letters")), h("h1", {}, `Dead letter #${id}`), status, body);
  let letter;
  try {
    letter = await api(`/dlq/${encodeURIComponent(id)}`);
  } catch (error) {
    fill(body, notice("error", error.message));
    return;
  }
  const [entry] = await api("/dlq/preview", { query: { ids: id } }).catch(() => []);
  const actions = h("div", { class: "toolbar" });
  if (context.can("admin")) {
    actions.append(
      h("button", {
        type: "button",
        class: "primary",
        testid: "dlq-replay-one",
        onclick: async () => {
          try {
            const n = await replayWithPreview({ ids: id });
            if (n !== null) fill(status, notice("ok", `Replayed ${n} dead letter(s).`));
          } catch (error) {
            fill(status, notice("error", error.message));
          }
        },
      }, "Replay…"),
    );
  }
  fill(
    body,
    h(
      "dl",
      { class: "attrs panel" },
      h("dt", {}, "Plugin"), h("dd", {}, link(`/plugins/${seg(letter.subscription)}`, letter.subscription)),
      h("dt", {}, "Dead since"), h("dd", {}, time(letter.dead_at)),
      h("dt", {}, "Failed on"), h("dd", {}, hash(entry?.failed_version)),
      h("dt", {}, "Loaded now"), h("dd", {}, hash(entry?.current_version), " ", versionBadge(entry)),
      h("dt", {}, "Event"), h("dd", {}, link(`/events/${seg(letter.event.id)}`, "inspect the event")),
    ),
    actions,
    h("h2", {}, "Attempts"),
    h(
      "div",
      { class: "scroll" },
      table(
        ["#", "When", "Kind", "Version", "Message"],
        letter.failures.map((f) =>
          h(
            "tr",
            { testid: "attempt-row" },
            h("td", {}, String(f.attempt)),
            h("td", {}, time(f.time)),
            h("td", {}, h("span", { class: "badge bad" }, f.kind)),
            h("td", {}, hash(f.handler_version)),
            h("td", {}, f.message),
          ),
        ),
      ),
    ),
    h("h2", {}, "The event"),
    eventAttributes(letter.event),
    h("h2", {}, "Data"),
    h("pre", { testid: "event-data" }, dataOf(letter.event)),
  );
}
