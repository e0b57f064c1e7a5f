// TypeScript declarations of the `evhost` package, the JavaScript plugin SDK: what a plugin sees.
// (The WIT imports behind it are `evhost.js`'s business; `jco types` 1.x, which would
// generate theirs, fails to read a WIT directory with "failed to read path for WIT".)

/** The value of a CloudEvents extension attribute. */
export type ExtensionValue = string | boolean | number;

/** A transient failure: the host delivers the event again later. */
export class Retry extends Error {
  constructor(message: string);
}

/** A permanent failure: the event goes to the dead-letter queue. */
export class Reject extends Error {
  constructor(message: string);
}

/** The host's key-value storage failed; a handler that lets it propagate is retried. */
export class KvError extends Error {
  constructor(message: string);
}

/** The host has no such store or refuses it: a handler that lets it propagate is rejected. */
export class KvRefused extends Reject {
  constructor(message: string);
}

/** The host refused an event to emit: a handler that lets it propagate is rejected. */
export class PublishError extends Reject {
  constructor(message: string);
}

/** A value of an event's data that is not what its validator expects; `path` names it. */
export class DecodeError extends Error {
  constructor(path: string, message: string);
  readonly path: string;
}

/** Returns `value` when it has the expected shape; throws a `DecodeError` naming `path` when not. */
export type Validator<T> = (value: unknown, path: string) => T;

/** A validator of a field that may be absent (`optional`, `nullable`). */
export type OptionalValidator<T> = Validator<T> & { readonly optional: true };

/** What a validator returns. */
export type Infer<V> = V extends Validator<infer T> ? T : never;

type Simplify<T> = { [K in keyof T]: T[K] } & {};

/** The object `fields(shape)` returns: a key whose validator is optional may be left out. */
export type FieldsOf<S extends Record<string, Validator<unknown>>> = Simplify<
  { [K in keyof S as S[K] extends OptionalValidator<unknown> ? never : K]: Infer<S[K]> } & {
    [K in keyof S as S[K] extends OptionalValidator<unknown> ? K : never]?: Infer<S[K]>;
  }
>;

export const string: Validator<string>;
export const number: Validator<number>;
export const integer: Validator<number>;
export const boolean: Validator<boolean>;
export const any: Validator<unknown>;
export function optional<T>(validator: Validator<T>): OptionalValidator<T | undefined>;
export function nullable<T>(validator: Validator<T>): OptionalValidator<T | null>;
export function arrayOf<T>(validator: Validator<T>): Validator<T[]>;
export function oneOf<const T extends readonly (string | number | boolean)[]>(...values: T): Validator<T[number]>;
export function fields<S extends Record<string, Validator<unknown>>>(shape: S): Validator<FieldsOf<S>>;

/** A CloudEvents 1.0 event as the host delivered it. */
export class Event {
  readonly id: string;
  readonly source: string;
  readonly type: string;
  readonly subject: string | undefined;
  readonly time: string | undefined;
  readonly datacontenttype: string | undefined;
  readonly dataschema: string | undefined;
  readonly data: Uint8Array | undefined;
  readonly extensions: Record<string, ExtensionValue>;
  readonly correlationId: string | undefined;
  readonly causationId: string | undefined;
  extension(name: string): ExtensionValue | undefined;
  /** The payload as UTF-8 text; throws `Reject` if there is none or it is not UTF-8. */
  text(): string;
  /** The payload decoded as JSON; throws `Reject` if absent, not JSON or invalid. */
  json<T = unknown>(): T;
  /** The payload decoded as JSON and checked by `validator`; throws `Reject` naming what is wrong. */
  json<T>(validator: Validator<T>): T;
}

export interface PluginDefinition {
  /** The plugin's name: its file name without `.wasm`. */
  name: string;
  version?: string;
  /** Event-type patterns: an exact type (`UserCreated`), a prefix (`User*`) or `*`. */
  subscriptions: readonly string[];
  /**
   * Handles one event; throw `Retry` or `Reject` to fail it. An `async` handler's promise
   * is awaited: rejecting it fails the event as throwing does.
   */
  handle(event: Event): void | Promise<void>;
}

/** What the host calls: export it as `eventHandler`. */
export interface EventHandlerExport {
  metadata(): { name: string; version: string; subscriptions: string[] };
  handle(event: unknown): void | Promise<void>;
}

export function definePlugin(definition: PluginDefinition): EventHandlerExport;

export const kv: {
  get(key: string): Uint8Array | undefined;
  set(key: string, value: Uint8Array | string): void;
  delete(key: string): void;
  exists(key: string): boolean;
  keys(): string[];
  getJson<T = unknown>(key: string): T | undefined;
  setJson(key: string, value: unknown): void;
};

export interface PublishOptions {
  subject?: string;
  datacontenttype?: string;
  dataschema?: string;
  extensions?: Record<string, ExtensionValue>;
}

/**
 * Emits a follow-up event (published only if the handler succeeds); returns its id. `data`:
 * a Uint8Array as is, a string as `text/plain`, `undefined` or `null` as no data, anything
 * else as JSON (`Reject` if JSON cannot encode it).
 */
export function publish(type: string, data?: unknown, options?: PublishOptions): string;

export const log: {
  trace(message: string): void;
  debug(message: string): void;
  info(message: string): void;
  warn(message: string): void;
  error(message: string): void;
};

export const config: {
  get(key: string): string | undefined;
  all(): Record<string, string>;
};
