import assert from "node:assert/strict";
import { test } from "node:test";

import { currentCall, type Call } from "../../src/context.js";
import { onBatch, onOperation } from "../../src/extension.js";

type Loose = Record<string, any>;

/** Start a call through the query hook; its `query` hands back the args Prisma would get. */
async function started(operation: string, args: Loose, transaction?: Loose) {
  let seen!: Loose;
  let finish!: (v: unknown) => void;
  const result = onOperation({
    operation,
    args,
    __internalParams: { transaction },
    query: (rest) => {
      seen = rest as Loose;
      return new Promise((resolve) => (finish = resolve));
    },
  });
  await new Promise((resolve) => setImmediate(resolve));
  return { rest: seen, finish, result };
}

test("the hook strips cacheStrategy, validates it, and runs the call in its own context", async () => {
  const seen: (Call | undefined)[] = [];
  const value = await onOperation({
    operation: "findMany",
    args: { where: { id: 1 }, cacheStrategy: { ttl: 60, tags: ["b", "a"] } },
    query: async (rest) => {
      assert.deepEqual(rest, { where: { id: 1 } });
      seen.push(currentCall());
      return ["row"];
    },
  });
  assert.deepEqual(value, ["row"]);
  assert.deepEqual(seen[0]?.strategy, { ttl: 60, swr: 0, tags: ["a", "b"], staleIfError: 0 });
  await assert.rejects(
    onOperation({ operation: "findMany", args: { cacheStrategy: { ttl: -1 } }, query: async () => [] }),
    /cacheStrategy.ttl/,
  );
  // a write: the strategy is dropped, never sent
  await onOperation({
    operation: "create",
    args: { data: {}, cacheStrategy: { ttl: 60 } },
    query: async (rest) => {
      assert.deepEqual(rest, { data: {} });
      assert.equal(currentCall()?.strategy, null);
    },
  });
  // in a transaction: no hint, and info says none
  const inTx = await onOperation({
    operation: "findMany",
    args: { cacheStrategy: { ttl: 60 }, __cacheEdgeInfo: true },
    __internalParams: { transaction: { kind: "itx", id: "1" } },
    query: async () => {
      assert.equal(currentCall()?.strategy, null);
      return [];
    },
  });
  assert.deepEqual(inTx, {
    data: [],
    info: { cacheStatus: "none", lastModified: null, region: null, requestId: null, signature: null },
  });
});

test("a batch is split: each cached call alone in its context, the others batched, results in order", async () => {
  const a = await started("findUnique", { where: { id: 1 }, cacheStrategy: { ttl: 60 } });
  const b = await started("findUnique", { where: { id: 2 } });
  const c = await started("findUnique", { where: { id: 3 }, cacheStrategy: { ttl: 5 } });
  const d = await started("findUnique", { where: { id: 4 } });
  const requests = [a, b, c, d].map((x) => ({ args: x.rest }));
  const groups: { ids: number[]; ttl: number | null; alone: boolean | undefined }[] = [];
  const results = await onBatch({
    args: {},
    __internalParams: { requests, customDataProxyFetch: undefined },
    query: async (_args, internal) => {
      const subset: Loose[] = internal!.requests;
      const call = currentCall();
      groups.push({ ids: subset.map((r) => r.args.where.id), ttl: call?.strategy?.ttl ?? null, alone: call?.alone });
      if (subset.some((r) => r.args.where.id === 3)) throw new Error("statement failed");
      return subset.map((r) => `row ${r.args.where.id}`);
    },
  });
  assert.deepEqual(
    groups.sort((x, y) => x.ids[0] - y.ids[0]),
    [
      { ids: [1], ttl: 60, alone: true },
      { ids: [2, 4], ttl: null, alone: false },
      { ids: [3], ttl: 5, alone: true },
    ],
  );
  assert.equal(results[0], "row 1");
  assert.equal(results[1], "row 2");
  assert.ok(results[2] instanceof Error); // only the failed group's calls fail
  assert.equal(results[3], "row 4");
  for (const x of [a, b, c, d]) x.finish(null);
});

test("a batch without cached calls, or in a transaction, is left whole and hinted by nobody", async () => {
  const a = await started("findUnique", { where: { id: 1 }, cacheStrategy: { ttl: 60 } });
  const b = await started("findUnique", { where: { id: 2 } });
  for (const requests of [[{ args: b.rest }], [{ args: a.rest, transaction: { kind: "batch" } }, { args: b.rest }]]) {
    const seen: unknown[] = [];
    await onBatch({
      args: {},
      __internalParams: { requests },
      query: async (_args, internal) => {
        seen.push([(internal ?? { requests }).requests.length, currentCall()?.strategy ?? null]);
        return [];
      },
    });
    assert.deepEqual(seen, [[requests.length, null]]);
  }
  a.finish(null);
  b.finish(null);
});
