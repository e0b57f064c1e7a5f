// One connection to `GET /stream` for the whole page: pages listen to its events, the
// shell shows whether it is connected. When the host goes away the browser's EventSource
// retries; when the host refused the stream (too many clients, signed out) it is reopened
// here after a pause.

const listeners = new Map();
let source = null;
let connected = null; // unknown until the first open or error
let retry = null;

/** Calls `fn(data)` for every `name` event ("metrics", "failure", "plugin", "dlq",
 * "lagged", and "open"/"closed" for the connection); returns the unsubscribe function. */
export function on(name, fn) {
  if (!listeners.has(name)) listeners.set(name, new Set());
  listeners.get(name).add(fn);
  return () => listeners.get(name).delete(fn);
}

function emit(name, data) {
  for (const fn of listeners.get(name) || []) {
    try {
      fn(data);
    } catch (error) {
      console.warn(`a ${name} listener failed`, error);
    }
  }
}

/** Whether the stream is open now. */
export function isConnected() {
  return connected === true;
}

function setConnected(now) {
  if (now === connected) return;
  connected = now;
  document.documentElement.dataset.stream = now ? "open" : "closed";
  emit(now ? "open" : "closed", null);
}

/** Opens the stream (again). */
export function connect() {
  if (source) source.close();
  clearTimeout(retry);
  source = new EventSource("/stream");
  source.addEventListener("open", () => setConnected(true));
  source.addEventListener("error", () => {
    setConnected(false);
    // CLOSED: the host answered, but not with a stream (signed out, too many pages).
    if (source.readyState === EventSource.CLOSED) {
      emit("refused", null);
      retry = setTimeout(connect, 5000);
    }
  });
  for (const name of ["metrics", "failure", "plugin", "dlq", "lagged"]) {
    source.addEventListener(name, (message) => {
      let data = null;
      try {
        data = JSON.parse(message.data);
      } catch {
        return;
      }
      emit(name, data);
    });
  }
}

/** Closes the stream (signing out). */
export function disconnect() {
  clearTimeout(retry);
  if (source) source.close();
  source = null;
  connected = null;
  delete document.documentElement.dataset.stream;
}
