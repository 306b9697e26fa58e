import assert from "node:assert/strict";
import { test } from "node:test";

import { cacheEdgeComments, isCacheEdgePlugin } from "../../src/comments.js";
import { currentCall, newCall, plainCall, runInCall } from "../../src/context.js";
import { validateStrategy } from "../../src/strategy.js";

const plugin = cacheEdgeComments();
const single = (action: string, modelName = "User") =>
  ({ query: { type: "single", modelName, action, query: {} }, sql: "SELECT 1" }) as const;
const compacted = { query: { type: "compacted", modelName: "User", action: "findUnique", queries: [] } } as const;

function cached() {
  return newCall(validateStrategy({ ttl: 60, tags: ["users"] }), false);
}

test("outside a call, or in a plain one: no hint", async () => {
  assert.deepEqual(plugin(single("findMany") as any), {});
  await runInCall(plainCall(), async () => assert.deepEqual(plugin(single("findMany") as any), {}));
});

test("reads of a cached call get its strategy; writes and raw SQL do not", async () => {
  const call = cached();
  await runInCall(call, async () => {
    for (const action of ["findUnique", "findUniqueOrThrow", "findFirst", "findFirstOrThrow", "findMany", "aggregate", "groupBy"]) {
      assert.deepEqual(plugin(single(action) as any), { cache_ttl: "60", cache_tags: "users" }, action);
    }
    for (const action of ["createOne", "updateOne", "deleteMany", "upsertOne", "queryRaw", "executeRaw"]) {
      assert.deepEqual(plugin(single(action) as any), {}, action);
    }
  });
  assert.equal(call.hinted, 7);
});

test("a merged (compacted) statement is hinted only when the kit ran the call alone", async () => {
  const call = cached();
  await runInCall(call, async () => assert.deepEqual(plugin(compacted as any), {}));
  call.alone = true;
  await runInCall(call, async () => assert.deepEqual(plugin(compacted as any), { cache_ttl: "60", cache_tags: "users" }));
});

test("concurrent calls keep their own context across awaits", async () => {
  const seen = await Promise.all(
    [1, 2, 3].map((ttl) =>
      runInCall(newCall(validateStrategy({ ttl }), false), async () => {
        await new Promise((resolve) => setTimeout(resolve, 10 - ttl));
        return plugin(single("findMany") as any).cache_ttl;
      }),
    ),
  );
  assert.deepEqual(seen, ["1", "2", "3"]);
  assert.equal(currentCall(), undefined);
});

test("runInCall starts a lazy thenable inside the context", async () => {
  const call = cached();
  const lazy = { then: (ok: any) => ok(currentCall()) } as PromiseLike<unknown>;
  assert.equal(await runInCall(call, () => lazy), call);
});

test("the plugin is recognisable", () => {
  assert.equal(isCacheEdgePlugin(plugin), true);
  assert.equal(isCacheEdgePlugin(() => ({})), false);
});
