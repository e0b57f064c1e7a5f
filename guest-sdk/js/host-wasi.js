// What the SDK calls on the host inside a component: the WIT imports, which componentize-js
// links to the host. `evhost.js` imports them through `#host` (see package.json), so that
// node, which cannot load `wasi:` modules, gets `host-native.js` instead.

export { log } from "wasi:logging/logging@0.1.0-draft";
export { open } from "wasi:keyvalue/store@0.2.0-draft";
export { get as configGet, getAll as configGetAll } from "wasi:config/store@0.2.0-rc.1";
export { publish } from "evhost:plugin/publisher@0.1.0";
