// The per-call context that carries one query's strategy from the client extension to the
// comments plugin (and its cache status back), through Node's AsyncLocalStorage: Prisma runs
// the plugin inside the call's own async chain, so concurrent calls never see each other's.
import { AsyncLocalStorage } from "node:async_hooks";

import type { ValidStrategy } from "./strategy.js";

/** How the node served a statement (`SHOW cache_edge.last_status`, `X-Cache-Status`). */
export type CacheStatus = "ttl" | "swr" | "miss" | "none" | "stale";

/** What one statement's answer said about the cache. */
export interface StatementInfo {
  status: CacheStatus;
  age?: number; // seconds since the database produced the rows (HTTP `Age`)
  producedAt?: number; // when, in ms since the epoch (`X-Cache-Last-Modified`)
  region?: string;
  requestId?: string;
  signature?: string;
}

/** One Prisma call (findMany, count, ...) as the kit tracks it. */
export interface Call {
  /** The strategy to hint; null: no hint (none given, or inside a transaction). */
  readonly strategy: ValidStrategy | null;
  /** The caller asked for withAccelerateInfo(): statements report what the node said. */
  readonly wantInfo: boolean;
  /**
   * True when the call may be hinted even as a compacted statement: the kit's batch hook ran
   * it alone. A compacted statement in any other context merges several calls' queries, and
   * is never hinted (whose strategy would it be?).
   */
  alone: boolean;
  /** Statements the comments plugin hinted for this call. */
  hinted: number;
  /** What each statement's answer said, when the pool/fetch hooks could see it. */
  readonly statements: StatementInfo[];
}

// One store per process even if two copies of this package are loaded (the plugin of one and
// the extension of the other must still meet).
const KEY = Symbol.for("@cache-edge/prisma.calls");
const holder = globalThis as unknown as Record<symbol, AsyncLocalStorage<Call> | undefined>;
const calls: AsyncLocalStorage<Call> = (holder[KEY] ??= new AsyncLocalStorage<Call>());

export function newCall(strategy: ValidStrategy | null, wantInfo: boolean): Call {
  return { strategy, wantInfo, alone: false, hinted: 0, statements: [] };
}

/** A context that hints nothing: for batches and for dispatches made on others' behalf. */
export function plainCall(): Call {
  return newCall(null, false);
}

export function currentCall(): Call | undefined {
  return calls.getStore();
}

/**
 * Run `fn` in `call`'s context and wait for what it returns. Prisma's promises are lazy:
 * the query starts when `then` is called, so `then` is called here, inside the context (an
 * `await` outside would start it in the awaiting context instead).
 */
export function runInCall<T>(call: Call, fn: () => PromiseLike<T>): Promise<T> {
  return calls.run(call, () => new Promise<T>((resolve, reject) => fn().then(resolve, reject)));
}
