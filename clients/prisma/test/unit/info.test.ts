import assert from "node:assert/strict";
import { test } from "node:test";

import { newCall, runInCall, type Call } from "../../src/context.js";
import { cacheEdgeFetch, cacheEdgePool, infoOf } from "../../src/info.js";

test("infoOf: null when nothing was seen, none inside a transaction", () => {
  assert.equal(infoOf(newCall(null, true), false), null);
  assert.equal(infoOf(newCall(null, true), true)?.cacheStatus, "none");
});

test("infoOf: a call of several statements reports its least cached one", () => {
  const call = newCall(null, true);
  call.statements.push({ status: "ttl" }, { status: "miss", age: 0 }, { status: "swr", age: 12 });
  const info = infoOf(call, false);
  assert.equal(info?.cacheStatus, "miss");
  const age = (Date.now() - (info?.lastModified?.getTime() ?? 0)) / 1000;
  assert.ok(age >= 12 && age < 13, String(age));
});

function fakeFetch(headers: Record<string, string>, status = 200): typeof fetch {
  return async () => new Response("{}", { status, headers });
}

test("cacheEdgeFetch reads the node's headers into the call that asked", async () => {
  const f = cacheEdgeFetch(fakeFetch({ "X-Cache-Status": "ttl", Age: "7", "X-Request-Id": "r1" }));
  const call = newCall(null, true);
  await runInCall(call, () => f("http://node/sql"));
  assert.deepEqual(call.statements, [{ status: "ttl", age: 7, requestId: "r1" }]);
  const quiet = newCall(null, false);
  await runInCall(quiet, () => f("http://node/sql"));
  assert.deepEqual(quiet.statements, []);
  const uncached = newCall(null, true);
  await runInCall(uncached, () => cacheEdgeFetch(fakeFetch({}))("http://node/sql"));
  assert.deepEqual(uncached.statements, [{ status: "none" }]);
  const failed = newCall(null, true);
  await runInCall(failed, () => cacheEdgeFetch(fakeFetch({}, 400))("http://node/sql"));
  assert.deepEqual(failed.statements, []);
});

class FakeClient {
  log: unknown[] = [];
  released: unknown[] = [];
  constructor(private readonly show: () => unknown, private readonly fail = false) {}
  async query(config: unknown, values?: unknown) {
    this.log.push(values === undefined ? [config] : [config, values]);
    if (config === "SHOW cache_edge.last_status") return this.show();
    if (this.fail) throw new Error("boom");
    return { rows: [[1]] };
  }
  release(err?: unknown) {
    this.released.push(err);
  }
}

function fakePool(client: FakeClient) {
  const direct: unknown[] = [];
  return {
    direct,
    query(...args: unknown[]) {
      direct.push(args);
      return Promise.resolve({ rows: [] });
    },
    connect: async () => client,
  };
}

test("cacheEdgePool: SHOW on the same connection, only for calls that want info", async () => {
  const client = new FakeClient(() => ({ rows: [{ "cache_edge.last_status": "miss" }] }));
  const pool = cacheEdgePool(fakePool(client));
  assert.equal(cacheEdgePool(pool), pool); // once
  await pool.query({ text: "SELECT 1" }, []);
  assert.equal(pool.direct.length, 1);
  const call: Call = newCall(null, true);
  const result = await runInCall(call, () => pool.query({ text: "SELECT 1" }, []));
  assert.deepEqual(result, { rows: [[1]] });
  assert.deepEqual(client.log, [[{ text: "SELECT 1" }, []], ["SHOW cache_edge.last_status"]]);
  assert.deepEqual(call.statements, [{ status: "miss" }]);
  assert.deepEqual(client.released, [undefined]);
});

test("cacheEdgePool: not a door (SHOW fails) leaves the result alone; a failed query discards the connection", async () => {
  const plain = new FakeClient(() => Promise.reject(new Error("unrecognized configuration parameter")));
  const call = newCall(null, true);
  const pool = cacheEdgePool(fakePool(plain));
  assert.deepEqual(await runInCall(call, () => pool.query("SELECT 1")), { rows: [[1]] });
  assert.deepEqual(call.statements, []);
  const broken = new FakeClient(() => ({ rows: [] }), true);
  const pool2 = cacheEdgePool(fakePool(broken));
  await assert.rejects(runInCall(newCall(null, true), () => pool2.query("SELECT 1")), /boom/);
  assert.ok(broken.released[0] instanceof Error);
});
