// The one handler of a component, and the call the component's export makes into it.

import { Event } from './event.js';
import { HandlerError } from './errors.js';

let registered;

/**
 * Make `fn` the component's handler: the host calls it once per record.
 *
 * `fn` takes an `Event` and returns nothing when the event is done. It throws `Retryable` or
 * `Fatal` to have the record retried or dead-lettered; anything else it throws traps the
 * component (the record is dead-lettered as `trap`, with the error's stack). A handler is
 * synchronous: the capabilities are synchronous calls, and the host ends the call when the
 * function returns. A component has exactly one handler. `fn` is returned unchanged, so tests
 * call it directly.
 *
 * @template {(event: Event) => void} F
 * @param {F} fn
 * @returns {F}
 */
export function handler(fn) {
  if (typeof fn !== 'function') {
    throw new TypeError(`handler() needs a function, not ${fn === null ? 'null' : typeof fn}`);
  }
  if (registered !== undefined && registered !== fn) {
    throw new Error(
      `a component has one handler: ${registered.name || 'a function'} is already registered, so ${fn.name || 'this one'} cannot be`,
    );
  }
  registered = fn;
  return fn;
}

/** The function registered with `handler`, if any. */
export function registeredHandler() {
  return registered;
}

/**
 * Run the registered handler on the host's record `raw`: the body of the component's `handle`
 * export. A `HandlerError` becomes the WIT `handler-error` case it names; anything else is a
 * bug, and traps with the error and its stack on the guest's stderr.
 */
export function call(raw) {
  const fn = registered;
  if (fn === undefined) trap(new Error('no handler registered (pass the handler function to handler())'));
  let result;
  try {
    result = fn(Event.fromWit(raw));
  } catch (error) {
    if (error instanceof HandlerError) throw { tag: error.kind, val: error.message };
    trap(error);
  }
  if (result !== undefined && typeof result?.then === 'function') {
    trap(new TypeError('the handler returned a Promise: a kasm handler is synchronous (drop `async`)'));
  }
}

// Print `error` and its stack to the guest's stderr (the host keeps its tail with the trap),
// then trap: the bindings trap on a thrown value that is not a `handler-error` case, and say
// what they received, so the value's text says what happened.
function trap(error) {
  const text = error instanceof Error ? `${error}\n${error.stack ?? ''}` : `uncaught ${shown(error)}`;
  console.error(text.trimEnd());
  throw new Trap(error instanceof Error ? String(error) : shown(error));
}

class Trap {
  constructor(what) {
    this.what = what;
  }

  toString() {
    return `kasm: the handler threw ${this.what} (not Retryable or Fatal: a bug; its stack is above)`;
  }
}

// `value` as text for the trap message (a thrown value need not be an Error).
function shown(value) {
  try {
    return String(JSON.stringify(value) ?? value);
  } catch {
    return Object.prototype.toString.call(value);
  }
}
