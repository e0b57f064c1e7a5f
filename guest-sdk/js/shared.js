// What the SDK shares with its in-memory host and `evhost/testing`.

/** `value` as a WIT `extension-value`; a `TypeError` for anything else. */
export function toWitValue(name, value) {
  switch (typeof value) {
    case "string":
      return { tag: "string", val: value };
    case "boolean":
      return { tag: "boolean", val: value };
    case "number":
      if (Number.isInteger(value) && value >= -(2 ** 31) && value < 2 ** 31) {
        return { tag: "integer", val: value };
      }
      break;
  }
  throw new TypeError(`extension ${name} must be a string, a boolean or a 32-bit integer`);
}

/**
 * Whether `mediaType` is JSON: `application/json`, `text/json` or a `+json` type, with or
 * without parameters (absent means JSON, as for evhost's events).
 */
export function isJson(mediaType) {
  if (mediaType === undefined) {
    return true;
  }
  const essence = mediaType.split(";", 1)[0].trim().toLowerCase();
  return essence === "application/json" || essence === "text/json" || essence.endsWith("+json");
}
