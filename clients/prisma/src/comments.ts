// The SQL commenter plugin: Prisma calls it for every statement it renders; it returns the
// current call's cache strategy as sqlcommenter pairs, which the node reads as a cache hint.
import type { SqlCommenterContext, SqlCommenterPlugin, SqlCommenterTags } from "@prisma/client/runtime/client";

import { currentCall } from "./context.js";
import { hintPairs } from "./strategy.js";

/** Prisma's read actions as the JSON protocol names them (count() is an aggregate). */
export const READ_ACTIONS: ReadonlySet<string> = new Set([
  "findUnique",
  "findUniqueOrThrow",
  "findFirst",
  "findFirstOrThrow",
  "findMany",
  "aggregate",
  "groupBy",
]);

/** Marks the plugins this package made, so withCacheEdge() can check one is installed. */
export const PLUGIN_MARK: unique symbol = Symbol.for("@cache-edge/prisma.comments") as never;

export type CacheEdgeCommentsPlugin = SqlCommenterPlugin & { readonly [PLUGIN_MARK]: true };

/**
 * The `comments:` plugin that turns each query's `cacheStrategy` into a cache hint:
 *
 * ```ts
 * new PrismaClient({ adapter, comments: [cacheEdgeComments()] }).$extends(withCacheEdge())
 * ```
 *
 * Statements of writes and raw queries, and statements outside a cached call, get nothing.
 */
export function cacheEdgeComments(): CacheEdgeCommentsPlugin {
  const plugin = (context: SqlCommenterContext): SqlCommenterTags => {
    const call = currentCall();
    if (call?.strategy == null) return {};
    const query = context.query;
    if (!READ_ACTIONS.has(query.action)) return {};
    // Several findUnique calls merged into one statement by Prisma's batching: only the
    // kit's batch hook may run one alone this way; otherwise it is not this call's alone.
    if (query.type === "compacted" && !call.alone) return {};
    call.hinted += 1;
    return hintPairs(call.strategy);
  };
  return Object.assign(plugin, { [PLUGIN_MARK]: true as const });
}

export function isCacheEdgePlugin(value: unknown): boolean {
  return typeof value === "function" && (value as Partial<CacheEdgeCommentsPlugin>)[PLUGIN_MARK] === true;
}
