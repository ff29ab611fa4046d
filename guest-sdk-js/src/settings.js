// The handler's settings from the host's configuration (`settings` of the handler in
// `kasm.toml`): plain values such as a webhook URL. Always granted.

import { settings } from '#kasm-capabilities';
import { Fatal } from './errors.js';

/** The value configured for `key`, or `undefined`. */
export function get(key) {
  return settings.get(key) ?? undefined;
}

/**
 * The value of `key`; a missing setting is `Fatal` (the configuration is wrong, and retrying
 * the record will not fix it).
 */
export function require(key) {
  const value = get(key);
  if (value === undefined) {
    throw new Fatal(`setting \`${key}\` is not configured for this handler (settings in kasm.toml)`);
  }
  return value;
}
