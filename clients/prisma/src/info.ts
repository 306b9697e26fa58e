// withAccelerateInfo(): what the node said about each statement of a call, from where it can
// be read: the `X-Cache-Status`/`Age` headers of the Neon-compatible `POST /sql` (no extra
// round trip), or `SHOW cache_edge.last_status` on the PostgreSQL door's connection that ran
// the statement (one extra round trip to the node, which answers it itself; only for calls
// that asked for info). See docs/migrate-from-accelerate.md.
import { currentCall, type CacheStatus, type Call, type StatementInfo } from "./context.js";

/** Accelerate's `info`, with what cache-edge cannot know as null. */
export interface CacheEdgeInfo {
  /** `ttl`, `swr`: from the cache; `miss`: fetched and stored; `none`: not cached; `stale`: the
   * database was unreachable and an old answer was served (staleIfError). */
  cacheStatus: CacheStatus;
  /** When the database produced the rows (`POST /sql` only: its `X-Cache-Last-Modified`
   * header, to the millisecond). */
  lastModified: Date | null;
  /** The node's region (`POST /sql` only: its `X-Cache-Region` header). */
  region: string | null;
  /** The node's request id (`POST /sql` only). */
  requestId: string | null;
  /** The entry's cache key (`POST /sql` only: its `X-Cache-Signature` header). */
  signature: string | null;
}

const STATUSES: ReadonlySet<string> = new Set(["ttl", "swr", "miss", "none", "stale"]);
// A call made of several statements reports its least cached one.
const ORDER: readonly CacheStatus[] = ["none", "miss", "stale", "swr", "ttl"];

export function asStatus(value: unknown): CacheStatus | null {
  return typeof value === "string" && STATUSES.has(value) ? (value as CacheStatus) : null;
}

/**
 * The call's info: null when no statement's status could be seen (a pool that is not
 * instrumented with cacheEdgePool(), a fetch that is not cacheEdgeFetch(), or no statement
 * ran); inside a transaction every statement runs uncached, so `none` without asking.
 */
export function infoOf(call: Call, inTransaction: boolean): CacheEdgeInfo | null {
  const seen = call.statements;
  if (seen.length === 0) {
    if (!inTransaction) return null;
    return { cacheStatus: "none", lastModified: null, region: null, requestId: null, signature: null };
  }
  const status = ORDER.find((s) => seen.some((st) => st.status === s)) ?? "none";
  const first = seen.find((st) => st.status === status) ?? seen[0];
  // The oldest rows of the call: the node's own instant (to the ms) when it sent one, else
  // now minus the whole seconds of Age.
  const produced = seen.map((st) =>
    typeof st.producedAt === "number"
      ? st.producedAt
      : typeof st.age === "number"
        ? Date.now() - st.age * 1000
        : null,
  );
  const known = produced.filter((p): p is number => p !== null);
  const oldest = known.length ? Math.min(...known) : null;
  return {
    cacheStatus: status,
    lastModified: oldest === null ? null : new Date(oldest),
    region: first.region ?? null,
    requestId: first.requestId ?? null,
    signature: first.signature ?? null,
  };
}

// ---------------------------------------------------------------- the PostgreSQL door

/** The part of a `pg.Pool` the adapter uses, and that cacheEdgePool() wraps. */
export interface PoolLike {
  query: (...args: any[]) => any;
  connect: () => Promise<PoolClientLike>;
}
interface PoolClientLike {
  query: (...args: any[]) => Promise<any>;
  release: (err?: Error | boolean) => void;
}

const PATCHED = Symbol.for("@cache-edge/prisma.pool");

/**
 * Lets withAccelerateInfo() report the PostgreSQL door's cache status: for the statements of
 * a call that asked for info (and only those), the pool runs the statement and then
 * `SHOW cache_edge.last_status` on the same connection. The node answers that SHOW itself
 * (no database, no origin), but it is one more round trip to the node. Every other statement
 * goes through the pool untouched.
 *
 * ```ts
 * new PrismaPg(cacheEdgePool(new pg.Pool({ connectionString })))
 * ```
 */
export function cacheEdgePool<P extends PoolLike>(pool: P): P {
  const marked = pool as P & { [PATCHED]?: true };
  if (marked[PATCHED]) return pool;
  const original = pool.query;
  const patched = function (this: P, ...args: unknown[]): unknown {
    const call = currentCall();
    const [config, values] = args;
    // callbacks and anything but (config[, values]) go through untouched
    if (!call?.wantInfo || args.length > 2 || args.some((a) => typeof a === "function")) {
      return original.apply(this, args);
    }
    return queryWithStatus(this, call, config, values);
  };
  Object.defineProperty(pool, "query", { value: patched, writable: true, configurable: true });
  Object.defineProperty(pool, PATCHED, { value: true });
  return pool;
}

async function queryWithStatus(pool: PoolLike, call: Call, config: unknown, values: unknown): Promise<unknown> {
  const client = await pool.connect();
  let failed: Error | undefined;
  try {
    const result = await (values === undefined ? client.query(config) : client.query(config, values));
    try {
      const shown = await client.query("SHOW cache_edge.last_status");
      const status = asStatus(shown.rows?.[0]?.["cache_edge.last_status"]);
      if (status) call.statements.push({ status });
    } catch {
      // not a cache-edge door (plain PostgreSQL): no status, the result stands
    }
    return result;
  } catch (err) {
    failed = err instanceof Error ? err : new Error(String(err));
    throw err;
  } finally {
    client.release(failed); // as pg.Pool.query does: a connection that failed is not reused
  }
}

// ---------------------------------------------------------------- POST /sql (PrismaNeonHttp)

/**
 * A `fetch` for the Neon serverless driver (`neonConfig.fetchFunction = cacheEdgeFetch()`)
 * that reads the node's `X-Cache-Status`, `X-Cache-Last-Modified`, `X-Cache-Region`,
 * `X-Cache-Signature`, `Age` and `X-Request-Id` headers of each `/sql`
 * answer into the call that sent it: no extra round trip. An answer without `X-Cache-Status`
 * ran uncached (`none`).
 */
export function cacheEdgeFetch(base?: typeof fetch): typeof fetch {
  return async (input: Parameters<typeof fetch>[0], init?: Parameters<typeof fetch>[1]) => {
    const response = await (base ?? globalThis.fetch)(input, init);
    const call = currentCall();
    if (call?.wantInfo && response.ok) {
      const seen: StatementInfo = {
        status: asStatus(response.headers.get("x-cache-status")?.toLowerCase()) ?? "none",
      };
      const age = Number.parseFloat(response.headers.get("age") ?? "");
      if (Number.isFinite(age)) seen.age = age;
      const requestId = response.headers.get("x-request-id");
      if (requestId) seen.requestId = requestId;
      const region = response.headers.get("x-cache-region");
      if (region) seen.region = region;
      const signature = response.headers.get("x-cache-signature");
      if (signature) seen.signature = signature;
      const produced = Date.parse(response.headers.get("x-cache-last-modified") ?? "");
      if (Number.isFinite(produced)) seen.producedAt = produced;
      call.statements.push(seen);
    }
    return response;
  };
}
