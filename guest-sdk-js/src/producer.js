// Publish records to Kafka: the `producer` capability.
//
// A publish is an effect of the call: the host sends it with `acks=all` after the handler
// returns, and only if it returns without throwing. Every record gets an `event-id` header
// derived from the source event id, the handler's name and the publish's index in the call,
// so a re-run of the same event publishes the same ids.

import { producer } from '#kasm-capabilities';
import { compactJson, toBytes } from './codec.js';
import { Fatal, payloadOf } from './errors.js';

/**
 * Queue a record for `topic`; returns the `event-id` the host gives it. `payload`, `key`
 * and header values are bytes (Uint8Array) or text, sent as UTF-8. A refusal (the topic is
 * not granted, the record is too large, too many publishes in one call) is `Fatal`.
 *
 * @param {string} topic
 * @param {Uint8Array | string} payload
 * @param {{key?: Uint8Array | string, headers?: Array<[string, Uint8Array | string]>}} [options]
 * @returns {string}
 */
export function publish(topic, payload, options = {}) {
  const key = options.key === undefined || options.key === null ? undefined : toBytes(options.key, 'the key');
  const headers = (options.headers ?? []).map(([name, value]) => [String(name), toBytes(value, 'a header value')]);
  const body = toBytes(payload, 'the payload');
  try {
    return producer.publish(topic, key, body, headers);
  } catch (error) {
    throw refused(topic, error);
  }
}

/**
 * Serialize `value` as compact JSON and `publish` it to `topic`, without headers. A value
 * that is not JSON (NaN, a BigInt, a function) is `Fatal`, like a refusal.
 *
 * @param {string} topic
 * @param {unknown} value
 * @param {{key?: Uint8Array | string}} [options]
 * @returns {string}
 */
export function publishJson(topic, value, options = {}) {
  let payload;
  try {
    payload = compactJson(value);
  } catch (error) {
    throw new Fatal(`cannot encode the record for ${topic} as JSON: ${error.message}`);
  }
  return publish(topic, payload, { key: options.key });
}

/**
 * The `event-id` the next `publish` of this call will carry, so a handler can put its
 * output's id inside the payload as well as in the header.
 * @returns {string}
 */
export function nextEventId() {
  return producer.nextEventId();
}

function refused(topic, error) {
  const reason = payloadOf(error);
  if (typeof reason === 'string') return new Fatal(`publish to ${topic} refused: ${reason}`);
  return error;
}
