// The API client: same origin, the session cookie (when tokens are configured) sent by the
// browser, and the header that proves a state-changing request comes from this page.

/** An error the API answered with: its status and its message. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** Calls `path`; resolves to its JSON (or null for 204), rejects with an ApiError. */
export async function api(path, { method = "GET", body, query } = {}) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") headers["X-Evhost-CSRF"] = "1";
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let url = path;
  if (query) {
    const params = new URLSearchParams();
    for (const [name, value] of Object.entries(query)) {
      if (value !== undefined && value !== null && value !== "") params.set(name, String(value));
    }
    const text = params.toString();
    if (text) url += (url.includes("?") ? "&" : "?") + text;
  }
  let response;
  try {
    response = await fetch(url, {
      method,
      headers,
      credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new ApiError(0, "the host cannot be reached");
  }
  if (response.status === 204) return null;
  const text = await response.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = null;
  }
  if (!response.ok) {
    const message = (json && json.error) || `${response.status} ${response.statusText}`;
    if (response.status === 401) window.dispatchEvent(new CustomEvent("evhost:signed-out"));
    throw new ApiError(response.status, message);
  }
  return json;
}
