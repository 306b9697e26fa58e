// @cache-edge/prisma: Prisma Accelerate's caching API for Prisma 7 applications whose driver
// adapter talks to a cache-edge node (README.md, docs/migrate-from-accelerate.md).
export { cacheEdgeComments, type CacheEdgeCommentsPlugin } from "./comments.js";
export type { CacheStatus } from "./context.js";
export {
  CACHED_OPERATIONS,
  withCacheEdge,
  type CacheEdgeArgs,
  type CacheEdgeClientMethods,
  type CacheEdgeModelMethods,
  type CacheEdgePromise,
  type PrismaCacheStrategy,
  type WithCacheEdgeOptions,
} from "./extension.js";
export { cacheEdgeFetch, cacheEdgePool, type CacheEdgeInfo, type PoolLike } from "./info.js";
export { CacheEdgeError, type InvalidateResult, type PurgeOptions } from "./invalidate.js";
export {
  cacheHint,
  CacheStrategyError,
  MAX_PURGE_TAGS,
  MAX_SECONDS,
  MAX_TAGS,
  validateStrategy,
  type CacheStrategy,
  type ValidStrategy,
} from "./strategy.js";
