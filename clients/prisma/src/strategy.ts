// cacheStrategy: the same fields and rules as Prisma Accelerate's, checked before a query
// leaves the process, and how a strategy is written into the SQL as a sqlcommenter hint.

/** The most seconds a `ttl`, `swr` or `staleIfError` may be (the node's limit: one year). */
export const MAX_SECONDS = 31_536_000;
/** The most tags one query may carry (Accelerate's limit, and the node's). */
export const MAX_TAGS = 5;
/** The most tags one purge may name (the node's `/v1/invalidate` limit). */
export const MAX_PURGE_TAGS = 100;
const TAG = /^[A-Za-z0-9_]{1,64}$/;
const FIELDS = new Set(["ttl", "swr", "tags", "staleIfError"]);

/** A query's cache strategy, as Accelerate's `cacheStrategy` (plus `staleIfError`). */
export interface CacheStrategy {
  /** Seconds the answer is fresh: served from the region's cache without a database call. */
  readonly ttl?: number;
  /** Seconds after `ttl` during which the stale answer is served while one refresh runs. */
  readonly swr?: number;
  /** Up to 5 tags (`[A-Za-z0-9_]`, 1-64 characters) to purge the entry by. */
  readonly tags?: ReadonlyArray<string>;
  /**
   * cache-edge only: seconds after `ttl + swr` during which the old answer is served when
   * the database or the origin fails (Accelerate has no equivalent).
   */
  readonly staleIfError?: number;
}

/** A strategy that passed validation, in canonical form. */
export interface ValidStrategy {
  readonly ttl: number;
  readonly swr: number;
  readonly tags: readonly string[];
  readonly staleIfError: number;
}

/** A `cacheStrategy` (or purge) that breaks the rules; `field` names the culprit. */
export class CacheStrategyError extends Error {
  readonly field: string;
  constructor(message: string, field: string) {
    super(message);
    this.name = "CacheStrategyError";
    this.field = field;
  }
}

function seconds(value: unknown, field: string): number {
  if (value === undefined) return 0;
  if (typeof value !== "number" || !Number.isInteger(value)) {
    throw new CacheStrategyError(
      `${field} must be a whole number of seconds, got ${describe(value)}`,
      field,
    );
  }
  if (value < 0 || value > MAX_SECONDS) {
    throw new CacheStrategyError(`${field} must be between 0 and ${MAX_SECONDS} seconds, got ${value}`, field);
  }
  return value;
}

function describe(value: unknown): string {
  if (typeof value === "string") return JSON.stringify(value).slice(0, 80);
  if (typeof value === "bigint") return `${value}n`;
  if (Array.isArray(value)) return "an array";
  if (value === null) return "null";
  return typeof value === "object" ? "an object" : String(value);
}

/** Check a list of tags: at most `limit`, each `[A-Za-z0-9_]{1,64}`; sorted, without duplicates. */
export function checkTags(tags: unknown, field: string, limit: number): string[] {
  if (!Array.isArray(tags)) {
    throw new CacheStrategyError(`${field} must be an array of strings`, field);
  }
  if (tags.length > limit) {
    throw new CacheStrategyError(`${field}: at most ${limit} tags, got ${tags.length}`, field);
  }
  for (const tag of tags) {
    if (typeof tag !== "string" || !TAG.test(tag)) {
      throw new CacheStrategyError(
        `${field}: invalid tag ${describe(tag)}: use 1-64 of A-Z a-z 0-9 _`,
        field,
      );
    }
  }
  return [...new Set(tags as string[])].sort();
}

/**
 * Validate a `cacheStrategy` as Accelerate does (ttl/swr whole seconds, at most 5 tags of
 * `[A-Za-z0-9_]{1,64}`). Unknown fields are refused: a typo must not silently mean "not cached".
 * Returns null when the strategy caches nothing (absent, or ttl = swr = 0).
 */
export function validateStrategy(raw: unknown): ValidStrategy | null {
  if (raw === undefined || raw === null) return null;
  if (typeof raw !== "object" || Array.isArray(raw)) {
    throw new CacheStrategyError(
      `cacheStrategy must be an object like { ttl: 60 }, got ${describe(raw)}`,
      "cacheStrategy",
    );
  }
  for (const key of Object.keys(raw)) {
    if (!FIELDS.has(key)) {
      throw new CacheStrategyError(
        `unknown field cacheStrategy.${key}: allowed are ttl, swr, tags, staleIfError`,
        `cacheStrategy.${key}`,
      );
    }
  }
  const s = raw as Record<string, unknown>;
  const strategy: ValidStrategy = {
    ttl: seconds(s.ttl, "cacheStrategy.ttl"),
    swr: seconds(s.swr, "cacheStrategy.swr"),
    tags: s.tags === undefined ? [] : checkTags(s.tags, "cacheStrategy.tags", MAX_TAGS),
    staleIfError: seconds(s.staleIfError, "cacheStrategy.staleIfError"),
  };
  return strategy.ttl > 0 || strategy.swr > 0 ? strategy : null;
}

/**
 * The strategy as sqlcommenter pairs, for Prisma's `comments:` plugins. Prisma sorts the
 * keys, URL-encodes and single-quotes the values:
 * `/*cache_swr='30',cache_tags='a%2Cb',cache_ttl='60'*\/` (docs/postgres-protocol.md).
 */
export function hintPairs(strategy: ValidStrategy): Record<string, string> {
  const pairs: Record<string, string> = { cache_ttl: String(strategy.ttl) };
  if (strategy.swr) pairs.cache_swr = String(strategy.swr);
  if (strategy.tags.length) pairs.cache_tags = strategy.tags.join(",");
  if (strategy.staleIfError) pairs.cache_stale_if_error = String(strategy.staleIfError);
  return pairs;
}

/** The same hint as a SQL comment, for raw queries (`$queryRawUnsafe(sql + cacheHint(...))`). */
export function cacheHint(strategy: CacheStrategy): string {
  const valid = validateStrategy(strategy);
  if (valid === null) return "";
  const pairs = hintPairs(valid);
  const body = Object.keys(pairs)
    .sort()
    .map((key) => `${key}='${encodeURIComponent(pairs[key])}'`)
    .join(",");
  return ` /*${body}*/`;
}
