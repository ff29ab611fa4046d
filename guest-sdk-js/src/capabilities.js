// The seam between the SDK and the host: the `kasm:handler` interfaces, one object each.
//
// This file is what runs natively (a handler's unit tests under `node --test`): every function
// throws `CapabilityError`. `kasm-js build` never bundles it. It replaces this module with one
// that imports the interfaces the handler declares from the component's world and keeps these
// throwing stand-ins for the ones it does not declare, so a component imports exactly what
// its handler was granted.

import { CapabilityError } from './errors.js';

/** The functions of each interface, as the JavaScript bindings name them. */
export const INTERFACES = {
  producer: ['publish', 'nextEventId'],
  kv: ['get', 'set', 'delete'],
  sql: ['execute', 'query'],
  websocket: ['broadcast'],
  settings: ['get'],
  log: ['log'],
};

/** An interface whose every function throws `CapabilityError` saying why. */
export function unreachable(name, why) {
  const stand = {};
  for (const fn of INTERFACES[name]) {
    stand[fn] = () => {
      throw new CapabilityError(`${name}.${fn}: ${why}`);
    };
  }
  return Object.freeze(stand);
}

const NATIVE = 'kasm capabilities exist only inside a component (this code runs natively)';

export const producer = unreachable('producer', NATIVE);
export const kv = unreachable('kv', NATIVE);
export const sql = unreachable('sql', NATIVE);
export const websocket = unreachable('websocket', NATIVE);
export const settings = unreachable('settings', NATIVE);
export const log = unreachable('log', NATIVE);
