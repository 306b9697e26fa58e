// $accelerate.invalidate / invalidateAll: the node's purge endpoint, POST /v1/invalidate.
import { checkTags, MAX_PURGE_TAGS, CacheStrategyError } from "./strategy.js";

/** The node's answer to a purge (README, "Purging: global invalidation"). */
export interface InvalidateResult {
  /** The purge's id (`GET /v1/invalidations/{id}` reports on it later). */
  invalidationId: string;
  /** Its position in the tenant's purge log. */
  seq: number;
  /** Live regions that applied it before the answer. */
  appliedRegions: string[];
  /** Live regions that had not yet, when `wait` ran out. */
  pendingRegions: string[];
  /** The node's request id (`X-Request-Id`), as Accelerate's answer had one. */
  requestId: string;
  [key: string]: unknown;
}

/** A failed call to the node's HTTP API: `code` is the node's stable error code. */
export class CacheEdgeError extends Error {
  readonly status: number;
  readonly code: string;
  readonly requestId: string | null;
  constructor(message: string, status: number, code: string, requestId: string | null) {
    super(message);
    this.name = "CacheEdgeError";
    this.status = status;
    this.code = code;
    this.requestId = requestId;
  }
}

export interface PurgeOptions {
  /** The node's HTTP API, e.g. `https://node.eu.example.com:7411`. */
  url?: string;
  /** A tenant API key (the password of the PostgreSQL door's URL). */
  apiKey?: string;
  /** Seconds to wait for the regions to apply a purge (0-30, default 5; 0: once recorded). */
  wait?: number;
  fetch?: typeof fetch;
}

type Body = { tags: string[] } | { all: true };

function env(name: string): string | undefined {
  const proc = (globalThis as { process?: { env?: Record<string, string | undefined> } }).process;
  return proc?.env?.[name] || undefined;
}

export class Purger {
  readonly #options: PurgeOptions;
  constructor(options: PurgeOptions) {
    const wait = options.wait;
    if (wait !== undefined && (typeof wait !== "number" || !(wait >= 0 && wait <= 30))) {
      throw new CacheStrategyError(`wait must be a number of seconds from 0 to 30, got ${wait}`, "wait");
    }
    this.#options = options;
  }

  async invalidate(input: { tags: ReadonlyArray<string> }): Promise<InvalidateResult> {
    const tags = checkTags(input?.tags, "tags", MAX_PURGE_TAGS);
    if (tags.length === 0) {
      throw new CacheStrategyError("invalidate: give at least one tag", "tags");
    }
    return this.#post({ tags });
  }

  async invalidateAll(): Promise<InvalidateResult> {
    return this.#post({ all: true });
  }

  async #post(body: Body): Promise<InvalidateResult> {
    const url = this.#options.url ?? env("CACHE_EDGE_URL");
    const apiKey = this.#options.apiKey ?? env("CACHE_EDGE_API_KEY");
    if (!url || !apiKey) {
      throw new CacheEdgeError(
        "invalidate needs the node's HTTP URL and an API key: withCacheEdge({ url, apiKey }) " +
          "or CACHE_EDGE_URL and CACHE_EDGE_API_KEY",
        0,
        "not_configured",
        null,
      );
    }
    const doFetch = this.#options.fetch ?? globalThis.fetch;
    const response = await doFetch(new URL("/v1/invalidate", url), {
      method: "POST",
      headers: {
        authorization: `Bearer ${apiKey}`,
        "content-type": "application/json",
        accept: "application/json",
      },
      body: JSON.stringify({ ...body, wait: this.#options.wait ?? 5 }),
    });
    const requestId = response.headers.get("x-request-id");
    const text = await response.text();
    let answer: Record<string, unknown> = {};
    try {
      answer = JSON.parse(text) as Record<string, unknown>;
    } catch {
      // not JSON: a proxy's page; reported below with the status
    }
    if (!response.ok) {
      const error = (answer.error ?? {}) as { code?: string; message?: string };
      throw new CacheEdgeError(
        `invalidate failed: ${response.status} ${error.message ?? text.slice(0, 200)}`,
        response.status,
        error.code ?? "http_error",
        requestId,
      );
    }
    return { ...answer, requestId: requestId ?? "unspecified" } as InvalidateResult;
  }
}
