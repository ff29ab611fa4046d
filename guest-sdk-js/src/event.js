// The record a handler receives.

import { local, toBytes } from './codec.js';
import { Fatal } from './errors.js';

const utf8 = new TextDecoder('utf-8', { fatal: true });

function bytes(value, what) {
  return value === undefined || value === null ? undefined : toBytes(value, what);
}

function text(value) {
  if (value === undefined) return undefined;
  try {
    return utf8.decode(value);
  } catch {
    return undefined;
  }
}

// Swap the bindings' arrays of `event` for views of this realm, once.
function localize(event) {
  if (event._local) return;
  event._payload = local(event._payload);
  event._key = local(event._key);
  event._headers = event._headers.map(([name, value]) => [name, local(value)]);
  event._local = true;
}

/**
 * One Kafka record, as the host hands it to a handler.
 *
 * The host has decided the record's identity (`id`) before the handler runs: the record
 * header `event-id` when present, else the top-level JSON field `event_id` of the payload,
 * else `<topic>/<partition>/<offset>`. The id is stable across redeliveries, so it is the
 * idempotency key for anything the handler does.
 *
 * A test builds one with only what it needs: `new Event('e-1', 'orders', '{"n": 1}')`,
 * partition 0, offset 0, no key, no headers, no timestamp, attempt 1 unless given.
 */
export class Event {
  /**
   * @param {string} id
   * @param {string} topic
   * @param {Uint8Array | string} [payload]
   * @param {{partition?: number, offset?: bigint | number, key?: Uint8Array | string,
   *   headers?: Array<[string, Uint8Array | string]>, timestampMs?: bigint | number,
   *   attempt?: number}} [fields]
   */
  constructor(id, topic, payload = new Uint8Array(), fields = {}) {
    /** The event id: stable across redeliveries of the same record, the idempotency key. */
    this.id = id;
    /** The topic the record was consumed from. */
    this.topic = topic;
    /** The partition the record was consumed from. */
    this.partition = fields.partition ?? 0;
    /** The record's offset within its partition (a BigInt: Kafka offsets are 64-bit). */
    this.offset = BigInt(fields.offset ?? 0);
    this._key = bytes(fields.key, 'the key');
    this._payload = toBytes(payload, 'the payload');
    this._headers = (fields.headers ?? []).map(([name, value]) => [name, toBytes(value, 'a header value')]);
    this._local = true;
    /** The record timestamp in milliseconds since the Unix epoch (a BigInt), if any. */
    this.timestampMs = fields.timestampMs === undefined ? undefined : BigInt(fields.timestampMs);
    /**
     * Which attempt this is: 1 on first delivery, 2 on the first retry, ... Use it to degrade
     * gracefully, never to decide whether an effect was already applied.
     */
    this.attempt = fields.attempt ?? 1;
  }

  /**
   * The host's record, taken over without copying. The bindings' byte arrays belong to a
   * realm of their own: `payload`, `key` and `headers` give views of this realm over the same
   * bytes, made on first use, while `text()` and `json()` read the bindings' arrays directly
   * (a view costs about 10 µs per call, a third of a trivial handler's call).
   */
  static fromWit(raw) {
    const event = Object.create(Event.prototype);
    event.id = raw.id;
    event.topic = raw.topic;
    event.partition = raw.partition;
    event.offset = raw.offset;
    event._key = raw.key ?? undefined;
    event._payload = raw.payload;
    event._headers = raw.headers;
    event._local = false;
    event.timestampMs = raw.timestampMs ?? undefined;
    event.attempt = raw.attempt;
    return event;
  }

  /** The record value, byte for byte as produced (a Uint8Array). Empty for a tombstone. */
  get payload() {
    localize(this);
    return this._payload;
  }

  /** The record key (a Uint8Array), if the producer set one. */
  get key() {
    localize(this);
    return this._key;
  }

  /** The record headers, `[name, Uint8Array]` in producer order. A name may repeat. */
  get headers() {
    localize(this);
    return this._headers;
  }

  /** The record key as text; `undefined` if there is no key or it is not UTF-8. */
  get keyText() {
    return text(this.key);
  }

  /**
   * The value of header `name` (compared exactly, case-sensitive). Kafka allows a name to
   * repeat; like Kafka's `lastHeader`, this returns the last one. `headers` has all of them.
   * @returns {Uint8Array | undefined}
   */
  header(name) {
    const headers = this.headers;
    for (let i = headers.length - 1; i >= 0; i -= 1) {
      if (headers[i][0] === name) return headers[i][1];
    }
    return undefined;
  }

  /** The value of header `name` as text; `undefined` if absent or not UTF-8. */
  headerText(name) {
    return text(this.header(name));
  }

  /** The record timestamp as a `Date`, if the broker has one. */
  get timestamp() {
    return this.timestampMs === undefined ? undefined : new Date(Number(this.timestampMs));
  }

  /** The payload as UTF-8 text; a payload that is not UTF-8 is `Fatal`. */
  text() {
    try {
      return utf8.decode(this._payload);
    } catch (error) {
      throw new Fatal(`undecodable payload: not UTF-8: ${error.message}`);
    }
  }

  /**
   * The payload decoded as JSON. A payload that does not decode will not decode on a retry
   * either, so the error is `Fatal`, with the message `undecodable payload: <reason>`.
   */
  json() {
    const source = this.text();
    try {
      return JSON.parse(source);
    } catch (error) {
      throw new Fatal(`undecodable payload: ${error.message}`);
    }
  }
}
