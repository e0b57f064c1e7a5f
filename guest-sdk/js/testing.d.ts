// TypeScript declarations of `evhost/testing`: unit-testing plugins under node.

import type { EventHandlerExport, ExtensionValue } from "./evhost.js";

/** An event as the host delivers it (what `run` takes). */
export interface DeliveredEvent {
  id: string;
  source: string;
  type: string;
  subject: string | undefined;
  time: string | undefined;
  datacontenttype: string | undefined;
  dataschema: string | undefined;
  data: Uint8Array | undefined;
  extensions: [string, { tag: string; val: ExtensionValue }][];
}

export interface EventOptions {
  id?: string;
  source?: string;
  subject?: string;
  time?: string;
  datacontenttype?: string;
  dataschema?: string;
  extensions?: Record<string, ExtensionValue>;
}

/** `data`: a Uint8Array as is, `undefined` as none, anything else as JSON. */
export function event(type: string, data?: unknown, options?: EventOptions): DeliveredEvent;

export interface Published {
  id: string;
  type: string;
  subject: string | undefined;
  datacontenttype: string | undefined;
  dataschema: string | undefined;
  data: Uint8Array | undefined;
  extensions: Record<string, ExtensionValue>;
  json<T = unknown>(): T | undefined;
}

export interface RunResult {
  outcome: "ok" | "retry" | "reject" | "trap";
  reason: string | undefined;
  kv: Record<string, Uint8Array>;
  kvText(key: string): string | undefined;
  kvJson<T = unknown>(key: string): T | undefined;
  published: Published[];
  logs: { level: string; message: string }[];
}

export interface RunOptions {
  kv?: Record<string, unknown>;
  config?: Record<string, string>;
  kvFailure?: { tag: string; val?: string };
}

export function run(plugin: EventHandlerExport, event: DeliveredEvent, options?: RunOptions): Promise<RunResult>;
