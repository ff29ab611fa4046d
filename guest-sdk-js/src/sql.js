// The handler's SQL database: the `sql` capability.
//
// An SQLite file by default, PostgreSQL when the operator's grant says so; the handler's
// code is the same. Parameters are positional (`$1`, `$2`, ...) and always bound, never
// spliced into the statement. What one call does is kept only if the handler returns
// without throwing (the host runs it under a savepoint of the batch's transaction).
//
// An event can still run twice (a crash between the commit and the ledger), so make writes
// idempotent by event id:
//
//     sql.execute(
//       'INSERT INTO seen (event_id, at) VALUES ($1, $2) ON CONFLICT (event_id) DO NOTHING',
//       [event.id, Number(event.timestampMs ?? 0)],
//     );
//     const count = sql.query('SELECT count(*) FROM seen').scalar();
//
// Values, both ways: `null` (NULL), numbers (an integral number is INTEGER, any other REAL;
// `sql.real(5)` sends 5 as REAL), `bigint` (INTEGER), booleans (INTEGER 0/1), strings (TEXT)
// and `Uint8Array` (BLOB). An INTEGER column value comes back as a number when it is a safe
// integer, as a bigint otherwise.
//
// Errors: a database that is unreachable or busy is `Retryable`; a statement the database
// refuses (syntax, constraint, type) is `Fatal`, because it would be refused again.

import { sql as host } from '#kasm-capabilities';
import { describe, isBytes, local } from './codec.js';
import { Fatal, Retryable, payloadOf } from './errors.js';

const I64_MIN = -(2n ** 63n);
const I64_MAX = 2n ** 63n - 1n;
const REAL = Symbol('kasm.sql.real');

/** `value` sent as REAL even when it is integral (`sql.real(5)`). */
export function real(value) {
  return { [REAL]: Number(value) };
}

/** The rows of a query. */
export class Rows {
  constructor(columns, rows) {
    /** Column names, in select order. */
    this.columns = columns;
    /** One array of values per row, one value per column. */
    this.rows = rows;
  }

  get length() {
    return this.rows.length;
  }

  [Symbol.iterator]() {
    return this.rows[Symbol.iterator]();
  }

  /** Each row as an object keyed by column name. */
  objects() {
    return this.rows.map((row) => Object.fromEntries(this.columns.map((c, i) => [c, row[i]])));
  }

  /** The first column of the first row, or `undefined` when there is no row. */
  scalar() {
    return this.rows.length === 0 ? undefined : this.rows[0][0];
  }
}

/**
 * Run a statement (insert, update, delete, DDL). Returns the number of rows changed.
 * @param {string} statement
 * @param {unknown[]} [params]
 * @returns {number}
 */
export function execute(statement, params = []) {
  const lowered = lowerAll(statement, params);
  try {
    return Number(host.execute(statement, lowered));
  } catch (error) {
    throw failed(statement, error);
  }
}

/**
 * Run a query. Returns its rows; a result over the host's row limit is an error.
 * @param {string} statement
 * @param {unknown[]} [params]
 * @returns {Rows}
 */
export function query(statement, params = []) {
  const lowered = lowerAll(statement, params);
  let raw;
  try {
    raw = host.query(statement, lowered);
  } catch (error) {
    throw failed(statement, error);
  }
  return new Rows(raw.columns, raw.rows.map((row) => row.map(lift)));
}

function lowerAll(statement, params) {
  if (!Array.isArray(params)) {
    throw new TypeError(`sql \`${short(statement)}\`: params must be an array, not ${describe(params)}`);
  }
  return params.map((value, i) => lower(statement, i + 1, value));
}

function lower(statement, index, value) {
  if (value === null || value === undefined) return { tag: 'null' };
  switch (typeof value) {
    case 'boolean':
      return { tag: 'integer', val: value ? 1n : 0n };
    case 'bigint':
      if (value < I64_MIN || value > I64_MAX) {
        throw new Fatal(`sql \`${short(statement)}\`: parameter $${index} ${value} is outside 64 bits`);
      }
      return { tag: 'integer', val: value };
    case 'number':
      if (Number.isSafeInteger(value)) return { tag: 'integer', val: BigInt(value) };
      return { tag: 'real', val: value };
    case 'string':
      return { tag: 'text', val: value };
    default:
      break;
  }
  if (isBytes(value)) return { tag: 'blob', val: value };
  if (typeof value === 'object' && REAL in value) return { tag: 'real', val: value[REAL] };
  throw new TypeError(
    `sql parameter $${index} is ${describe(value)}: use null, a number, a bigint, a boolean, a string or a Uint8Array`,
  );
}

function lift(raw) {
  switch (raw.tag) {
    case 'null':
      return null;
    case 'integer': {
      const n = Number(raw.val);
      return Number.isSafeInteger(n) ? n : raw.val;
    }
    case 'blob':
      return local(raw.val);
    default:
      return raw.val;
  }
}

function failed(statement, error) {
  const reason = payloadOf(error);
  if (reason === null || typeof reason !== 'object' || !('tag' in reason)) return error;
  if (reason.tag === 'unavailable') {
    return new Retryable(`sql \`${short(statement)}\`: database unavailable: ${reason.val}`);
  }
  return new Fatal(`sql \`${short(statement)}\`: statement rejected: ${reason.val}`);
}

function short(statement) {
  return statement.slice(0, 80);
}
