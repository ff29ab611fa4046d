// Types of kasm-guest, the JavaScript/TypeScript SDK for kasm handlers.

/** Bytes as the capabilities take them: a Uint8Array, or text sent as UTF-8. */
export type Bytes = Uint8Array | string;

/** One Kafka record, as the host hands it to a handler. */
export class Event {
  constructor(
    id: string,
    topic: string,
    payload?: Bytes,
    fields?: {
      partition?: number;
      offset?: bigint | number;
      key?: Bytes;
      headers?: Array<[string, Bytes]>;
      timestampMs?: bigint | number;
      attempt?: number;
    },
  );
  /** The event id: stable across redeliveries of the same record, the idempotency key. */
  readonly id: string;
  /** The topic the record was consumed from. */
  readonly topic: string;
  /** The partition the record was consumed from. */
  readonly partition: number;
  /** The record's offset within its partition. */
  readonly offset: bigint;
  /** The record key, if the producer set one. */
  readonly key: Uint8Array | undefined;
  /** The record value, byte for byte as produced. Empty for a tombstone. */
  readonly payload: Uint8Array;
  /** The record headers, in producer order. A name may repeat. */
  readonly headers: Array<[string, Uint8Array]>;
  /** The record timestamp in milliseconds since the Unix epoch, if the broker has one. */
  readonly timestampMs: bigint | undefined;
  /** Which attempt this is: 1 on first delivery, 2 on the first retry, ... */
  readonly attempt: number;
  /** The record key as text; undefined if there is no key or it is not UTF-8. */
  readonly keyText: string | undefined;
  /** The record timestamp as a Date, if the broker has one. */
  readonly timestamp: Date | undefined;
  /** The last value of header `name`, if any. */
  header(name: string): Uint8Array | undefined;
  /** The last value of header `name` as text; undefined if absent or not UTF-8. */
  headerText(name: string): string | undefined;
  /** The payload as UTF-8 text; Fatal if it is not UTF-8. */
  text(): string;
  /** The payload decoded as JSON; Fatal ("undecodable payload: ...") if it does not decode. */
  json(): any;
}

/** A failure the handler reports to the host. Throw Retryable or Fatal. */
export class HandlerError extends Error {
  readonly kind: 'retryable' | 'fatal' | '';
}
/** A transient failure: the host retries the record with backoff, then dead-letters it. */
export class Retryable extends HandlerError {
  readonly kind: 'retryable';
}
/** A deterministic failure: the host dead-letters the record at once. */
export class Fatal extends HandlerError {
  readonly kind: 'fatal';
}
/** A capability was called that this code cannot reach (natively, or not declared). */
export class CapabilityError extends Error {}

/** Make `fn` the component's handler: the host calls it once per record. */
export function handler<F extends (event: Event) => void>(fn: F): F;

/** Queue a record for `topic`; returns the event-id the host gives it. */
export function publish(
  topic: string,
  payload: Bytes,
  options?: { key?: Bytes; headers?: Array<[string, Bytes]> },
): string;
/** Serialize `value` as compact JSON and publish it to `topic`. */
export function publishJson(topic: string, value: unknown, options?: { key?: Bytes }): string;
/** The event-id the next publish of this call will carry. */
export function nextEventId(): string;

/** The handler's key-value store. */
export namespace kv {
  function get(key: string): Uint8Array | undefined;
  function getText(key: string): string | undefined;
  function set(key: string, value: Bytes, options?: { ttlMs?: number | bigint }): void;
  function _delete(key: string): boolean;
  export { _delete as delete };
}

/** The handler's SQL database. */
export namespace sql {
  type Value = null | number | bigint | string | Uint8Array;
  type Param = Value | boolean | undefined | { readonly [key: symbol]: number };
  class Rows {
    readonly columns: string[];
    readonly rows: Value[][];
    readonly length: number;
    [Symbol.iterator](): Iterator<Value[]>;
    objects(): Array<Record<string, Value>>;
    scalar(): Value | undefined;
  }
  /** `value` sent as REAL even when it is integral. */
  function real(value: number): { readonly [key: symbol]: number };
  function execute(statement: string, params?: Param[]): number;
  function query(statement: string, params?: Param[]): Rows;
}

/** Push messages to the WebSocket clients of a channel. */
export namespace websocket {
  function broadcast(channel: string, message: string): void;
  function broadcastJson(channel: string, value: unknown): void;
}

/** The handler's settings from kasm.toml. */
export namespace settings {
  function get(key: string): string | undefined;
  function require(key: string): string;
}

/** The host's structured log. */
export namespace log {
  function trace(message: string): void;
  function debug(message: string): void;
  function info(message: string): void;
  function warn(message: string): void;
  function error(message: string): void;
}

/** This SDK's version. */
export const VERSION: string;
