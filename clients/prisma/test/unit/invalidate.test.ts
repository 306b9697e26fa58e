import assert from "node:assert/strict";
import { test } from "node:test";

import { CacheEdgeError, Purger } from "../../src/invalidate.js";
import { CacheStrategyError } from "../../src/strategy.js";

type Seen = { url: string; init: RequestInit };

function node(status: number, body: unknown, seen: Seen[]): typeof fetch {
  return async (url, init) => {
    seen.push({ url: String(url), init: init ?? {} });
    return new Response(typeof body === "string" ? body : JSON.stringify(body), {
      status,
      headers: { "Content-Type": "application/json", "X-Request-Id": "req-1" },
    });
  };
}

const ANSWER = { invalidationId: "i-1", seq: 3, appliedRegions: ["eu"], pendingRegions: [] };

test("invalidate posts the tags to /v1/invalidate and returns the node's answer", async () => {
  const seen: Seen[] = [];
  const purger = new Purger({ url: "http://node:7411/", apiKey: "k", wait: 2, fetch: node(200, ANSWER, seen) });
  assert.deepEqual(await purger.invalidate({ tags: ["b", "a", "b"] }), { ...ANSWER, requestId: "req-1" });
  assert.equal(seen[0].url, "http://node:7411/v1/invalidate");
  assert.equal(seen[0].init.method, "POST");
  assert.equal((seen[0].init.headers as Record<string, string>).authorization, "Bearer k");
  assert.deepEqual(JSON.parse(String(seen[0].init.body)), { tags: ["a", "b"], wait: 2 });
  await purger.invalidateAll();
  assert.deepEqual(JSON.parse(String(seen[1].init.body)), { all: true, wait: 2 });
});

test("invalidate checks the tags before calling", async () => {
  const seen: Seen[] = [];
  const purger = new Purger({ url: "http://node", apiKey: "k", fetch: node(200, ANSWER, seen) });
  await assert.rejects(() => purger.invalidate({ tags: ["a b"] }), CacheStrategyError);
  await assert.rejects(() => purger.invalidate({ tags: [] }), CacheStrategyError);
  await assert.rejects(() => purger.invalidate({ tags: Array.from({ length: 101 }, (_, i) => `t${i}`) }), /at most 100/);
  await assert.rejects(() => purger.invalidate(undefined as never), CacheStrategyError);
  assert.equal(seen.length, 0);
  assert.throws(() => new Purger({ wait: 31 }), CacheStrategyError);
  assert.throws(() => new Purger({ wait: -1 }), CacheStrategyError);
});

test("the node's errors become CacheEdgeError with its code", async () => {
  const seen: Seen[] = [];
  const error = { error: { code: "unauthorized", message: "unknown API key", requestId: "req-1" } };
  const purger = new Purger({ url: "http://node", apiKey: "k", fetch: node(401, error, seen) });
  await assert.rejects(
    () => purger.invalidate({ tags: ["a"] }),
    (err: unknown) =>
      err instanceof CacheEdgeError && err.status === 401 && err.code === "unauthorized" && err.requestId === "req-1" &&
      /unknown API key/.test(err.message),
  );
  const proxy = new Purger({ url: "http://node", apiKey: "k", fetch: node(502, "<html>bad gateway</html>", seen) });
  await assert.rejects(
    () => proxy.invalidateAll(),
    (err: unknown) => err instanceof CacheEdgeError && err.code === "http_error" && /bad gateway/.test(err.message),
  );
});

test("url and key come from the environment when not given", async () => {
  const seen: Seen[] = [];
  const purger = new Purger({ fetch: node(200, ANSWER, seen) });
  const saved = { ...process.env };
  try {
    delete process.env.CACHE_EDGE_URL;
    delete process.env.CACHE_EDGE_API_KEY;
    await assert.rejects(
      () => purger.invalidateAll(),
      (err: unknown) => err instanceof CacheEdgeError && err.code === "not_configured",
    );
    process.env.CACHE_EDGE_URL = "http://env-node:1";
    process.env.CACHE_EDGE_API_KEY = "env-key";
    await purger.invalidateAll();
    assert.equal(seen[0].url, "http://env-node:1/v1/invalidate");
  } finally {
    process.env = saved;
  }
});
