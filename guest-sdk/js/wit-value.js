// An extension attribute's value as the WIT `extension-value` variant (shared by the SDK
// and `evhost/testing`).

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
