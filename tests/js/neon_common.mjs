// What the scripts of tests/integration/test_sql_js_clients.py share: pointing the Neon
// serverless driver at a node's POST /sql, recording what each response said about the
// cache, and making client values comparable as JSON.
//
// Every script takes the same first three arguments:
//   <endpoint>     the node's http://host:port/sql (neonConfig.fetchEndpoint)
//   <connection>   postgresql://<tenant>:<API key>@<any host>/<database>
//   <direct-url>   the same database straight to PostgreSQL (node-postgres, for comparison)
import { neonConfig } from "@neondatabase/serverless";

export function args(usage, count) {
  const found = process.argv.slice(2);
  if (found.length < count || found.slice(0, count).some((a) => !a)) {
    console.error(`usage: ${usage}`);
    process.exit(2);
  }
  return found;
}

// Every response the driver got: its status and the cache headers the node sent.
export const responses = [];

export function pointAt(endpoint) {
  neonConfig.fetchEndpoint = () => endpoint;
  neonConfig.fetchFunction = async (url, init) => {
    const response = await fetch(url, init);
    responses.push({
      status: response.status,
      cache: response.headers.get("x-cache-status"),
      age: response.headers.get("age"),
      sent: { ...(init?.headers ?? {}) },
    });
    return response;
  };
}

// The cache status of the last response (null: the node sent none, i.e. not cached).
export function lastCache() {
  const last = responses.at(-1);
  return last ? { status: last.cache, age: last.age === null ? null : Number(last.age) } : null;
}

// Runs `fn` after the previous response count; returns {value, cache: [status of each
// response it caused]}.
export async function cached(fn) {
  const before = responses.length;
  const value = await fn();
  return { value: plain(value), cache: responses.slice(before).map((r) => r.cache) };
}

export const out = {};

export async function check(name, fn) {
  try {
    out[name] = await fn();
  } catch (err) {
    out[name] = { error: String(err?.message ?? err), code: err?.code ?? null, stack: err?.stack };
  }
}

// A value as JSON can carry it, keeping what the client made of it visible.
export function plain(value) {
  if (value === null || value === undefined) return value ?? null;
  if (value instanceof Date)
    return { date: isNaN(value.getTime()) ? "invalid" : value.toISOString() };
  if (Buffer.isBuffer(value)) return { bytes: value.toString("hex") };
  if (value instanceof Uint8Array) return { bytes: Buffer.from(value).toString("hex") };
  if (Array.isArray(value)) return value.map(plain);
  if (typeof value === "bigint") return { bigint: value.toString() };
  if (typeof value === "number" && !Number.isFinite(value)) return { number: String(value) };
  if (typeof value === "object") {
    const name = value.constructor?.name ?? "Object";
    if (name === "Decimal" || name === "Decimal2") return { decimal: value.toString() };
    const entries = Object.entries(value).map(([k, v]) => [k, plain(v)]);
    return name === "Object"
      ? Object.fromEntries(entries)
      : { [name]: Object.fromEntries(entries) };
  }
  return value;
}

// The fields of an error that a PostgreSQL client copies from the ErrorResponse.
export const ERROR_FIELDS = [
  "severity",
  "code",
  "detail",
  "hint",
  "position",
  "internalPosition",
  "internalQuery",
  "where",
  "schema",
  "table",
  "column",
  "dataType",
  "constraint",
  "file",
  "line",
  "routine",
];

export function errorOf(err) {
  const found = { name: err?.constructor?.name ?? null, message: String(err?.message ?? err) };
  for (const f of ERROR_FIELDS) found[f] = err?.[f] ?? null;
  return found;
}

export async function failure(fn) {
  try {
    const value = await fn();
    return { noError: plain(value) };
  } catch (err) {
    return errorOf(err);
  }
}

export function print() {
  console.log(JSON.stringify(out));
}
