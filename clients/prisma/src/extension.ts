// withCacheEdge(): Accelerate's client extension API (cacheStrategy, withAccelerateInfo(),
// $accelerate.invalidate) over a Prisma 7 driver adapter pointed at a cache-edge node.
import { Prisma, type PrismaClientExtends } from "@prisma/client/extension";
import type * as runtime from "@prisma/client/runtime/client";

import { isCacheEdgePlugin } from "./comments.js";
import { newCall, plainCall, runInCall, type Call } from "./context.js";
import { infoOf, type CacheEdgeInfo } from "./info.js";
import { Purger, type InvalidateResult, type PurgeOptions } from "./invalidate.js";
import { validateStrategy, type CacheStrategy } from "./strategy.js";

/** The model operations that take a `cacheStrategy`, as with Accelerate. */
export const CACHED_OPERATIONS = [
  "findUnique",
  "findUniqueOrThrow",
  "findFirst",
  "findFirstOrThrow",
  "findMany",
  "count",
  "aggregate",
  "groupBy",
] as const;
const CACHED: ReadonlySet<string> = new Set(CACHED_OPERATIONS);
const INFO = "__cacheEdgeInfo"; // set by withAccelerateInfo(), never reaches Prisma

export interface WithCacheEdgeOptions extends PurgeOptions {
  /**
   * Throw at `$extends` time when the client has no `cacheEdgeComments()` plugin (default
   * true): without it, every cacheStrategy would silently be ignored.
   */
  requireComments?: boolean;
}

// ------------------------------------------------------------------ types (as Accelerate's)

export interface PrismaCacheStrategy {
  /** How the node may cache this read: `{ ttl, swr, tags }` (and `staleIfError`). */
  readonly cacheStrategy?: CacheStrategy;
}

export interface CacheEdgePromise<T> extends Prisma.PrismaPromise<T> {
  /** The result and how the node served it (`info` is null when that cannot be seen). */
  withAccelerateInfo(): Prisma.PrismaPromise<{ data: T; info: CacheEdgeInfo | null }>;
}

type ArgsWithCache<M, O extends runtime.Operation> = runtime.Args<M, O> & PrismaCacheStrategy;
// Prisma's own Exact: infers the literal types of the arguments (orderBy: "desc", by: [...])
type Exact<T, U> = runtime.Exact<T, U>;
type SelectExact<T, U> = Exact<T, U> &
  (T extends { select: unknown; include: unknown }
    ? "Please either choose `select` or `include`."
    : T extends { select: unknown; omit: unknown }
      ? "Please either choose `select` or `omit`."
      : unknown);

export interface CacheEdgeModelMethods {
  aggregate<This, A>(
    this: This,
    args: Exact<A, ArgsWithCache<This, "aggregate">>,
  ): CacheEdgePromise<runtime.Result<This, A, "aggregate">>;
  count<This, A>(
    this: This,
    args?: Exact<A, ArgsWithCache<This, "count">>,
  ): CacheEdgePromise<runtime.Result<This, A, "count">>;
  findFirst<This, A>(
    this: This,
    args?: SelectExact<A, ArgsWithCache<This, "findFirst">>,
  ): CacheEdgePromise<runtime.Result<This, A, "findFirst"> | null>;
  findFirstOrThrow<This, A>(
    this: This,
    args?: SelectExact<A, ArgsWithCache<This, "findFirstOrThrow">>,
  ): CacheEdgePromise<runtime.Result<This, A, "findFirstOrThrow">>;
  findMany<This, A>(
    this: This,
    args?: SelectExact<A, ArgsWithCache<This, "findMany">>,
  ): CacheEdgePromise<runtime.Result<This, A, "findMany">>;
  findUnique<This, A>(
    this: This,
    args: SelectExact<A, ArgsWithCache<This, "findUnique">>,
  ): CacheEdgePromise<runtime.Result<This, A, "findUnique"> | null>;
  findUniqueOrThrow<This, A>(
    this: This,
    args: SelectExact<A, ArgsWithCache<This, "findUniqueOrThrow">>,
  ): CacheEdgePromise<runtime.Result<This, A, "findUniqueOrThrow">>;
  groupBy<This, A>(
    this: This,
    args: Exact<A, ArgsWithCache<This, "groupBy">>,
  ): CacheEdgePromise<runtime.Result<This, A, "groupBy">>;
}

export interface CacheEdgeClientMethods {
  $accelerate: {
    /** Purge the entries carrying any of these tags in every region; waits as `wait` says. */
    invalidate(input: { tags: ReadonlyArray<string> }): Promise<InvalidateResult>;
    /** Purge every entry of the tenant in every region. */
    invalidateAll(): Promise<InvalidateResult>;
  };
}

// ------------------------------------------------------------------ the query hooks

/** Whose strategy each request of a batch carries (keyed by the args object Prisma keeps). */
const calls = new WeakMap<object, Call>();

type Loose = Record<string, any>;

/** The query hook of every model operation (exported for the unit tests). */
export async function onOperation(params: {
  operation: string;
  args: unknown;
  query: (args: unknown) => Promise<unknown>;
  __internalParams?: Loose;
}): Promise<unknown> {
  const { operation, query } = params;
  const args = (params.args ?? {}) as Loose;
  if (!("cacheStrategy" in args) && !(INFO in args)) {
    // an uncached call still gets a context of its own: nothing of another call's may
    // reach its statements (e.g. a request Prisma dispatches on a cached call's tick)
    return runInCall(plainCall(), () => query(params.args));
  }
  const { cacheStrategy, [INFO]: wantInfo, ...rest } = args;
  if (!CACHED.has(operation)) {
    // as Accelerate: a strategy on anything but a read is dropped (the node refuses
    // hinted writes, so it is never sent)
    return runInCall(plainCall(), () => query(rest));
  }
  const strategy = validateStrategy(cacheStrategy); // throws CacheStrategyError
  // In a transaction the node never serves from its cache: send no hint.
  const inTransaction = params.__internalParams?.transaction != null;
  const call = newCall(inTransaction ? null : strategy, wantInfo === true);
  calls.set(rest, call);
  const data = await runInCall(call, () => query(rest));
  return wantInfo === true ? { data, info: infoOf(call, inTransaction) } : data;
}

/**
 * Prisma merges findUnique calls made in the same tick into one batch, run as one
 * statement (or a transaction of several): one comment cannot carry several strategies. So
 * the batch is split: each call with a strategy (or asking for info) runs alone, in its own
 * context; the others stay batched, with no hint. (Exported for the unit tests.)
 */
export async function onBatch(params: {
  args: unknown;
  query: (args: unknown, internal?: Loose) => Promise<unknown[]>;
  __internalParams: Loose;
}): Promise<unknown[]> {
  const { query, args } = params;
  const internal = params.__internalParams;
  const requests: Loose[] = internal.requests ?? [];
  const own = requests.map((r) => calls.get(r.args));
  const special = (c: Call | undefined) => c !== undefined && (c.strategy !== null || c.wantInfo);
  // a $transaction([...]) batch, or no call of ours that needs it: one batch, no hint
  if (requests.some((r) => r.transaction != null) || !own.some(special)) {
    return runInCall(plainCall(), () => query(args));
  }
  const groups: number[][] = [];
  const plain = requests.map((_, i) => i).filter((i) => !special(own[i]));
  if (plain.length) groups.push(plain);
  requests.forEach((_, i) => special(own[i]) && groups.push([i]));
  const results: unknown[] = new Array(requests.length);
  await Promise.all(
    groups.map(async (group) => {
      let call = plainCall();
      if (group.length === 1 && special(own[group[0]])) {
        call = own[group[0]] as Call;
        call.alone = true;
      }
      const subset = { ...internal, requests: group.map((i) => requests[i]) };
      try {
        const out = await runInCall(call, () => query(args, subset));
        group.forEach((i, k) => (results[i] = out[k]));
      } catch (err) {
        group.forEach((i) => (results[i] = err instanceof Error ? err : new Error(String(err))));
      }
    }),
  );
  return results;
}

// ------------------------------------------------------------------ the extension

function checkComments(client: unknown): void {
  const config = Reflect.get(client as object, "_engineConfig") as Loose | undefined;
  if (config === undefined || typeof config !== "object") return; // unknown internals: cannot tell
  const plugins: unknown[] = config.sqlCommenters ?? [];
  if (!plugins.some(isCacheEdgePlugin)) {
    throw new Error(
      "withCacheEdge(): this PrismaClient has no cacheEdgeComments() plugin, so no " +
        "cacheStrategy would reach the node. Create it with " +
        "new PrismaClient({ adapter, comments: [cacheEdgeComments()] }).",
    );
  }
}

function withInfo(name: string) {
  return function (this: unknown, args?: Loose) {
    const context = Prisma.getExtensionContext(this) as Loose;
    const parent = context.$parent[context.$name];
    const promise = parent[name](args);
    return Object.assign(promise, {
      withAccelerateInfo: () => parent[name]({ ...(args ?? {}), [INFO]: true }),
    });
  };
}

/**
 * Accelerate's API on a cache-edge node: `cacheStrategy` on reads, `withAccelerateInfo()`,
 * `$accelerate.invalidate({ tags })` and `$accelerate.invalidateAll()`.
 *
 * ```ts
 * const prisma = new PrismaClient({
 *   adapter: new PrismaPg({ connectionString: process.env.DATABASE_URL }), // the node's door
 *   comments: [cacheEdgeComments()],
 * }).$extends(withCacheEdge({ url: process.env.CACHE_EDGE_URL, apiKey: process.env.CACHE_EDGE_API_KEY }))
 * ```
 */
export function withCacheEdge(options: WithCacheEdgeOptions = {}) {
  const purger = new Purger(options);
  return Prisma.defineExtension((client: any) => {
    if (options.requireComments !== false) checkComments(client);
    const hooked = client.$extends({
      name: "@cache-edge/prisma",
      query: {
        $allModels: { $allOperations: onOperation },
        $__internalBatch: onBatch,
      },
    });
    const model = Object.fromEntries(CACHED_OPERATIONS.map((op) => [op, withInfo(op)]));
    return hooked.$extends({
      name: "@cache-edge/prisma",
      client: {
        $accelerate: {
          invalidate: (input: { tags: ReadonlyArray<string> }) => purger.invalidate(input),
          invalidateAll: () => purger.invalidateAll(),
        },
      },
      model: { $allModels: model },
    });
  }) as unknown as (client: any) => PrismaClientExtends<CacheEdgeArgs & runtime.DefaultArgs>;
}

/** What `$extends(withCacheEdge())` adds, in Prisma's extension types. */
export type CacheEdgeArgs = runtime.InternalArgs<
  {},
  { $allModels: CacheEdgeModelMethods },
  {},
  CacheEdgeClientMethods
>;
