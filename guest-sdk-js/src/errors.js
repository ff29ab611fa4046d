// Why a handler did not finish an event, and how it reaches the host.
//
// Throw `Retryable` or `Fatal` from a handler (or let one propagate from a capability call):
// the SDK turns it into the WIT `handler-error` the host decides on. Pick the class by asking
// "would trying again, unchanged, possibly succeed?".
//
// Anything else thrown out of the handler is a bug, not an outcome: the SDK prints it with its
// stack to stderr and traps the component, and the host dead-letters the record as `trap` with
// that text in the message.

/** A failure the handler reports to the host. Throw `Retryable` or `Fatal`. */
export class HandlerError extends Error {
  /** The case of the WIT `handler-error`: `"retryable"` or `"fatal"`. */
  get kind() {
    return '';
  }
}

/**
 * A transient failure (a dependency timed out, a rate limit, a store that is down). The host
 * retries the same record with exponential backoff and jitter, up to the handler's retry
 * policy, then dead-letters it as `retries-exhausted`. The partition waits meanwhile.
 */
export class Retryable extends HandlerError {
  get kind() {
    return 'retryable';
  }
}
Retryable.prototype.name = 'Retryable';

/**
 * A deterministic failure (the event is invalid, a business rule refuses it). The host
 * dead-letters the record at once with error kind `fatal` and this message.
 */
export class Fatal extends HandlerError {
  get kind() {
    return 'fatal';
  }
}
Fatal.prototype.name = 'Fatal';

/**
 * A capability was called that this code cannot reach: it runs outside a component (a native
 * unit test), or the component was built without the capability (it is missing from
 * `"kasm": { "capabilities" }`). Not a `HandlerError`: inside a component it traps, because
 * the build, not the record, is wrong.
 */
export class CapabilityError extends Error {}
CapabilityError.prototype.name = 'CapabilityError';

/** The `payload` of a failed WIT call (jco throws it wrapped in an Error), else the value. */
export function payloadOf(thrown) {
  return thrown !== null && typeof thrown === 'object' && 'payload' in thrown
    ? thrown.payload
    : thrown;
}
