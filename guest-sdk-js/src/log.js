// Log into the host's structured log. The host tags every line with the handler's name and
// the record's topic, partition, offset and event id, so a line says only what happened.
// Always granted. (`console.log` and `console.error` write to the guest's output, which the
// host keeps only to explain a trap: its tail goes into the dead letter.)

import { log } from '#kasm-capabilities';

function write(level, message) {
  log.log(level, String(message));
}

export function trace(message) {
  write('trace', message);
}
export function debug(message) {
  write('debug', message);
}
export function info(message) {
  write('info', message);
}
export function warn(message) {
  write('warn', message);
}
export function error(message) {
  write('error', message);
}
