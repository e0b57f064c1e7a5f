// The shell: who is signed in, the navigation, the theme, the connection banner, and the
// router that renders one page at a time (`#/page/argument?filters`).

import { api, ApiError } from "./api.js";
import { h, fill, notice } from "./dom.js";
import * as live from "./live.js";
import * as overview from "./pages/overview.js";
import * as plugins from "./pages/plugins.js";
import * as errors from "./pages/errors.js";
import * as dlq from "./pages/dlq.js";
import * as events from "./pages/events.js";
import * as kv from "./pages/kv.js";
import * as config from "./pages/config.js";

const pages = { overview, plugins, errors, dlq, events, kv, config };
const main = document.getElementById("main");
const banner = document.getElementById("banner");
const who = document.getElementById("who");
const signOut = document.getElementById("sign-out");

/** What the page knows of the caller: `session` as `GET /ui/session` answers it. */
const context = {
  session: null,
  can(scope) {
    return Boolean(this.session && this.session.scopes.includes(scope));
  },
};

let cleanup = null;
let rendering = 0;

/** `#/dlq/12?plugin=p` → { page: "dlq", arg: "12", query: URLSearchParams }. */
function parseRoute() {
  const hash = location.hash.replace(/^#\/?/, "");
  const [path, search = ""] = hash.split("?");
  const [page, ...rest] = path.split("/");
  let arg = null;
  try {
    arg = rest.length ? decodeURIComponent(rest.join("/")) : null;
  } catch {
    arg = rest.join("/"); // not percent-encoded as the page writes it: taken as it is
  }
  return { page: pages[page] ? page : "overview", arg, query: new URLSearchParams(search) };
}

/** Leaves the current page: its listeners and timers stop, its dialogs close. */
function leave() {
  rendering++;
  if (cleanup) {
    try {
      cleanup();
    } catch (error) {
      console.warn("leaving the page failed", error);
    }
    cleanup = null;
  }
  for (const dialog of document.querySelectorAll("dialog")) dialog.remove();
}

async function render() {
  const route = parseRoute();
  leave();
  const mine = rendering;
  for (const a of document.querySelectorAll(".top nav a")) {
    if (a.dataset.page === route.page) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const root = h("div", { class: "page", testid: `page-${route.page}` });
  fill(main, root);
  try {
    const done = await pages[route.page].render(root, route, context);
    if (mine === rendering) cleanup = done || null;
    else if (done) done();
  } catch (error) {
    if (mine !== rendering) return;
    if (error instanceof ApiError && error.status === 401) return; // the sign-in form shows
    root.append(notice("error", error.message || String(error)));
  }
}

function showSignIn(message) {
  leave();
  live.disconnect();
  banner.hidden = true;
  who.textContent = "";
  signOut.hidden = true;
  const input = h("input", {
    type: "password",
    id: "token",
    autocomplete: "current-password",
    testid: "signin-token",
    "aria-label": "Token",
  });
  const status = h("div", { "aria-live": "polite" });
  const form = h(
    "form",
    {
      class: "signin panel",
      testid: "signin",
      onsubmit: async (event) => {
        event.preventDefault();
        try {
          await api("/ui/session", { method: "POST", body: { token: input.value } });
          input.value = "";
          await start();
        } catch (error) {
          fill(status, notice("error", error.message));
        }
      },
    },
    h("h1", {}, "Sign in"),
    h("p", { class: "muted" }, "This host requires a token. It is exchanged once for a session cookie; the page never stores it."),
    h("label", { for: "token" }, "Token"),
    input,
    h("button", { type: "submit", class: "primary", testid: "signin-submit" }, "Sign in"),
    status,
  );
  if (message) status.append(notice("error", message));
  fill(main, form);
  input.focus();
}

async function start() {
  let session;
  try {
    session = await api("/ui/session");
  } catch (error) {
    fill(main, notice("error", `The host did not answer: ${error.message}`));
    banner.hidden = false;
    setTimeout(start, 2000);
    return;
  }
  if (session.mode === "tokens" && !session.token) {
    showSignIn();
    return;
  }
  context.session = session;
  const scopes = session.scopes.join(", ");
  who.textContent = session.token ? `${session.token} (${scopes})` : `${session.mode}: ${scopes}`;
  signOut.hidden = session.mode !== "tokens";
  live.connect();
  await render();
}

function applyTheme(theme) {
  if (theme) document.documentElement.dataset.theme = theme;
  else delete document.documentElement.dataset.theme;
}

function currentTheme() {
  const chosen = document.documentElement.dataset.theme;
  if (chosen) return chosen;
  return matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light";
}

applyTheme(localStorage.getItem("evhost-theme"));
document.getElementById("theme").addEventListener("click", () => {
  const next = currentTheme() === "dark" ? "light" : "dark";
  localStorage.setItem("evhost-theme", next);
  applyTheme(next);
  window.dispatchEvent(new CustomEvent("evhost:theme"));
});

signOut.addEventListener("click", async () => {
  try {
    await api("/ui/session", { method: "DELETE" });
  } catch (error) {
    // The session may still be alive: say so rather than pretend.
    if (!(error instanceof ApiError && error.status === 401)) {
      main.prepend(notice("error", `Signing out failed: ${error.message}. Try again.`));
      return;
    }
  }
  context.session = null;
  showSignIn();
});

live.on("closed", () => {
  banner.hidden = false;
});
// The host refused the stream: a session that ended shows the sign-in form.
live.on("refused", async () => {
  if (!context.session || context.session.mode !== "tokens") return;
  try {
    const session = await api("/ui/session");
    if (!session.token) window.dispatchEvent(new CustomEvent("evhost:signed-out"));
  } catch {
    // The host is away: the banner says so.
  }
});
live.on("open", () => {
  banner.hidden = true;
});
window.addEventListener("evhost:signed-out", () => {
  if (context.session && context.session.mode === "tokens") {
    context.session = null;
    showSignIn("The session ended: sign in again.");
  }
});
window.addEventListener("hashchange", () => {
  if (context.session) render();
});

start();
