// The handler's key-value store: the `kv` capability.
//
// Keys are the handler's own (two handlers never see each other's data); values are bytes.
// Writes are kept only if the handler returns without throwing; a call reads its own writes.
// A store that cannot be reached is `Retryable`.

import { kv as host } from '#kasm-capabilities';
import { local, toBytes } from './codec.js';
import { Retryable, payloadOf } from './errors.js';

const utf8 = new TextDecoder('utf-8', { fatal: true });

/**
 * The value stored under `key`, or `undefined` if absent or expired.
 * @returns {Uint8Array | undefined}
 */
export function get(key) {
  try {
    return local(host.get(key) ?? undefined);
  } catch (error) {
    throw failed('get', key, error);
  }
}

/**
 * The value under `key` as UTF-8 text; `undefined` if absent. A value that is not UTF-8
 * throws a `TypeError`.
 * @returns {string | undefined}
 */
export function getText(key) {
  const value = get(key);
  return value === undefined ? undefined : utf8.decode(value);
}

/**
 * Store `value` (bytes, or text as UTF-8) under `key`, replacing what was there. With
 * `ttlMs`, the entry expires that many milliseconds from now.
 * @param {string} key
 * @param {Uint8Array | string} value
 * @param {{ttlMs?: number | bigint}} [options]
 */
export function set(key, value, options = {}) {
  const ttl = options.ttlMs === undefined || options.ttlMs === null ? undefined : BigInt(options.ttlMs);
  const bytes = toBytes(value, 'a kv value');
  try {
    host.set(key, bytes, ttl);
  } catch (error) {
    throw failed('set', key, error);
  }
}

/** Remove `key`. Returns whether it was present. */
function remove(key) {
  try {
    return host.delete(key);
  } catch (error) {
    throw failed('delete', key, error);
  }
}
export { remove as delete };

function failed(operation, key, error) {
  const reason = payloadOf(error);
  if (typeof reason !== 'string') return error;
  return new Retryable(`kv ${operation} ${JSON.stringify(key)} failed: ${reason}`);
}
