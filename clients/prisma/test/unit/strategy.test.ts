import assert from "node:assert/strict";
import { test } from "node:test";

import { cacheHint, CacheStrategyError, hintPairs, validateStrategy } from "../../src/strategy.js";

test("valid strategies, in canonical form", () => {
  assert.deepEqual(validateStrategy({ ttl: 60 }), { ttl: 60, swr: 0, tags: [], staleIfError: 0 });
  assert.deepEqual(validateStrategy({ swr: 5, tags: ["b", "a", "b"] }), {
    ttl: 0,
    swr: 5,
    tags: ["a", "b"],
    staleIfError: 0,
  });
  assert.deepEqual(validateStrategy({ ttl: 1, tags: ["a", "b", "c", "d", "e"] })?.tags.length, 5);
  assert.equal(validateStrategy({ ttl: 1, tags: ["x".repeat(64)] })?.tags[0].length, 64);
  assert.equal(validateStrategy({ ttl: 31_536_000 })?.ttl, 31_536_000);
});

test("nothing to cache: no strategy", () => {
  assert.equal(validateStrategy(undefined), null);
  assert.equal(validateStrategy(null), null);
  assert.equal(validateStrategy({}), null);
  assert.equal(validateStrategy({ ttl: 0, swr: 0, tags: ["a"] }), null);
});

test("invalid strategies name their field", () => {
  const cases: [unknown, string, RegExp][] = [
    [{ ttl: -1 }, "cacheStrategy.ttl", /between 0 and/],
    [{ ttl: 1.5 }, "cacheStrategy.ttl", /whole number/],
    [{ ttl: "60" }, "cacheStrategy.ttl", /whole number.*"60"/],
    [{ ttl: 60n }, "cacheStrategy.ttl", /60n/],
    [{ swr: Number.NaN }, "cacheStrategy.swr", /NaN/],
    [{ swr: Number.POSITIVE_INFINITY }, "cacheStrategy.swr", /whole number/],
    [{ ttl: 31_536_001 }, "cacheStrategy.ttl", /between/],
    [{ ttl: 1, staleIfError: -5 }, "cacheStrategy.staleIfError", /between/],
    [{ ttl: 1, tags: ["a", "b", "c", "d", "e", "f"] }, "cacheStrategy.tags", /at most 5 tags, got 6/],
    [{ ttl: 1, tags: ["a-b"] }, "cacheStrategy.tags", /invalid tag "a-b"/],
    [{ ttl: 1, tags: ["é"] }, "cacheStrategy.tags", /invalid tag/],
    [{ ttl: 1, tags: ["x".repeat(65)] }, "cacheStrategy.tags", /invalid tag/],
    [{ ttl: 1, tags: [""] }, "cacheStrategy.tags", /invalid tag/],
    [{ ttl: 1, tags: [7] }, "cacheStrategy.tags", /invalid tag 7/],
    [{ ttl: 1, tags: "users" }, "cacheStrategy.tags", /array of strings/],
    [{ ttl: 1, maxAge: 5 }, "cacheStrategy.maxAge", /unknown field/],
    [60, "cacheStrategy", /must be an object/],
    [[{ ttl: 1 }], "cacheStrategy", /an array/],
  ];
  for (const [raw, field, message] of cases) {
    assert.throws(
      () => validateStrategy(raw),
      (err: unknown) => err instanceof CacheStrategyError && err.field === field && message.test(err.message),
      JSON.stringify(raw, (_, v) => (typeof v === "bigint" ? `${v}n` : v)),
    );
  }
});

test("hint pairs: only what is set", () => {
  assert.deepEqual(hintPairs({ ttl: 60, swr: 0, tags: [], staleIfError: 0 }), { cache_ttl: "60" });
  assert.deepEqual(hintPairs({ ttl: 0, swr: 30, tags: ["a", "b"], staleIfError: 300 }), {
    cache_ttl: "0",
    cache_swr: "30",
    cache_tags: "a,b",
    cache_stale_if_error: "300",
  });
});

test("cacheHint renders the comment as Prisma's commenter does", () => {
  assert.equal(
    cacheHint({ ttl: 60, swr: 30, tags: ["products", "product_7"] }),
    " /*cache_swr='30',cache_tags='product_7%2Cproducts',cache_ttl='60'*/",
  );
  assert.equal(cacheHint({ ttl: 0 }), "");
  assert.throws(() => cacheHint({ ttl: -1 }), CacheStrategyError);
});
