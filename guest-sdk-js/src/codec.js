// Bytes and JSON the way the capabilities take them.

const encoder = new TextEncoder();

/**
 * `view` (bytes the bindings made) as a Uint8Array of this realm, without copying. The
 * bindings create typed arrays in a realm of their own, so `instanceof Uint8Array` would be
 * false for them; a view of this realm over the same buffer answers as a reader expects.
 */
export function local(view) {
  if (view === undefined || view === null || view instanceof Uint8Array) return view;
  return new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
}

/** Whether `value` is a Uint8Array of any realm. */
export function isBytes(value) {
  return value instanceof Uint8Array || Object.prototype.toString.call(value) === '[object Uint8Array]';
}

/** `value` as bytes: text is encoded as UTF-8. */
export function toBytes(value, what) {
  if (typeof value === 'string') return encoder.encode(value);
  if (value instanceof Uint8Array) return value;
  if (ArrayBuffer.isView(value)) return new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
  if (value instanceof ArrayBuffer) return new Uint8Array(value);
  throw new TypeError(`${what} must be a Uint8Array or a string, not ${describe(value)}`);
}

/**
 * `value` as compact JSON, the form the Rust SDK writes (no spaces, non-ASCII kept, keys in
 * insertion order). NaN and the infinities are refused rather than written as `null`, and so
 * is a BigInt: none of them is JSON.
 */
export function compactJson(value) {
  const text = JSON.stringify(value, (key, v) => {
    if (typeof v === 'number' && !Number.isFinite(v)) {
      throw new TypeError(`${v} at ${key === '' ? 'the top level' : `\`${key}\``} is not JSON`);
    }
    return v;
  });
  if (text === undefined) throw new TypeError(`${describe(value)} is not JSON`);
  return text;
}

export function describe(value) {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  if (typeof value === 'object') return value.constructor?.name ?? 'an object';
  return typeof value;
}
