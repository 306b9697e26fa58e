// The kit against a running node, through either door, for tests/integration/test_prisma_kit.py:
//
//   tsx test/kit.mts pg   <door-url>          <direct-url> <node-http-url> <api-key> <schema> <marker>
//   tsx test/kit.mts neon <connection-string> <direct-url> <node-http-url> <api-key> public   <marker>
//
// `pg` is @prisma/adapter-pg over the PostgreSQL door (info from SHOW cache_edge.last_status,
// through cacheEdgePool); `neon` is PrismaNeonHttp over POST /sql (info from the answer's
// headers, through cacheEdgeFetch). <schema> holds the blog's tables, with "User" a view over
// <schema>.users that logs ce_mark('<marker>-<id>') for every row PostgreSQL reads, so the
// script counts, per user id, how many times the database really ran a read.
//
// Prints one JSON object: per scenario what the client saw, the SQL Prisma sent, and the
// executions counted. A scenario that throws records {error}. The test asserts on it.
import { setTimeout as sleep } from "node:timers/promises";

import { neonConfig } from "@neondatabase/serverless";
import { PrismaNeonHttp } from "@prisma/adapter-neon";
import { PrismaPg } from "@prisma/adapter-pg";
import pg from "pg";

import {
  CacheEdgeError,
  cacheEdgeComments,
  cacheHint,
  cacheEdgeFetch,
  cacheEdgePool,
  CacheStrategyError,
  withCacheEdge,
} from "../dist/src/index.js";
import { currentCall, newCall, runInCall } from "../dist/src/context.js";
import { hintPairs, validateStrategy } from "../dist/src/strategy.js";
import { PrismaClient } from "../examples/blog/src/generated/prisma/client.js";

const [transport, url, directUrl, nodeUrl, apiKey, schema, marker] = process.argv.slice(2);
if (!["pg", "neon"].includes(transport) || !marker) {
  console.error("usage: tsx test/kit.mts pg|neon <url> <direct-url> <node-http-url> <api-key> <schema> <marker>");
  process.exit(2);
}
const viaDoor = transport === "pg";
// Tags of this run's own, so that the SQL and the hints say which run they belong to.
const tag = (name: string) => `kit_${transport}_${name}`;

// ------------------------------------------------------------------ clients

type Sent = { sql: string; params: string };
const sent: Sent[] = [];
const pools: pg.Pool[] = [];

function adapter(instrumented = true) {
  if (viaDoor) {
    const pool = new pg.Pool({ connectionString: url, max: 8 });
    pools.push(pool);
    return new PrismaPg(instrumented ? cacheEdgePool(pool) : pool, { schema });
  }
  return new PrismaNeonHttp(url, {} as never);
}

if (!viaDoor) {
  neonConfig.fetchEndpoint = () => new URL("/sql", nodeUrl).href;
  neonConfig.fetchFunction = cacheEdgeFetch();
}

function baseClient(options: { instrumented?: boolean; log?: boolean } = {}) {
  const client = new PrismaClient({
    adapter: adapter(options.instrumented ?? true),
    comments: [cacheEdgeComments()],
    log: options.log === false ? [] : [{ emit: "event", level: "query" }],
  });
  if (options.log !== false) {
    (client as any).$on("query", (e: { query: string; params: string }) =>
      sent.push({ sql: e.query, params: e.params }),
    );
  }
  return client;
}

const base = baseClient();
const prisma = base.$extends(withCacheEdge({ url: nodeUrl, apiKey, wait: 5 }));

const direct = new pg.Client({ connectionString: directUrl });
await direct.connect();

/** Executions PostgreSQL counted per user id (rows read through the "User" view). */
async function executions(): Promise<Record<string, number>> {
  const found = await direct.query(
    "SELECT marker, count(*)::int AS n FROM ce_exec_log WHERE marker LIKE $1 GROUP BY marker",
    [`${marker}-%`],
  );
  return Object.fromEntries(found.rows.map((r) => [r.marker.slice(marker.length + 1), r.n]));
}

function hintOf(sql: string): string | null {
  const found = /\/\*(cache_[^*]*)\*\/\s*$/.exec(sql);
  return found ? found[1] : null;
}

const out: Record<string, unknown> = { transport };

async function scenario(name: string, fn: () => Promise<unknown>): Promise<void> {
  const started = Date.now();
  try {
    out[name] = await fn();
  } catch (err: any) {
    out[name] = { error: String(err?.stack ?? err) };
  }
  (out.ms ??= {} as Record<string, number>);
  (out.ms as Record<string, number>)[name] = Date.now() - started;
}

// ------------------------------------------------------------------ 1. every cached read

const S = { ttl: 60, swr: 30, tags: [tag("reads")] };

await scenario("reads", async () => {
  const ops: Record<string, () => any> = {
    findUnique: () => prisma.user.findUnique({ where: { id: 1 }, cacheStrategy: S }),
    findUniqueOrThrow: () =>
      prisma.user.findUniqueOrThrow({ where: { email: "u2@example.com" }, cacheStrategy: S }),
    findFirst: () => prisma.user.findFirst({ where: { name: "User 3" }, cacheStrategy: S }),
    findFirstOrThrow: () =>
      prisma.user.findFirstOrThrow({ where: { id: { gte: 3 } }, orderBy: { id: "asc" }, cacheStrategy: S }),
    findMany: () =>
      prisma.user.findMany({ where: { id: { lte: 3 } }, orderBy: { id: "asc" }, cacheStrategy: S }),
    count: () => prisma.user.count({ where: { id: { lte: 2 } }, cacheStrategy: S }),
    aggregate: () =>
      prisma.post.aggregate({ _count: { _all: true }, _sum: { views: true }, cacheStrategy: S }),
    groupBy: () =>
      prisma.post.groupBy({
        by: ["authorId"],
        _count: { _all: true },
        orderBy: { authorId: "asc" },
        cacheStrategy: S,
      }),
  };
  const seen: Record<string, unknown> = {};
  const before = await executions();
  for (const [name, op] of Object.entries(ops)) {
    const from = sent.length;
    const first = await op().withAccelerateInfo();
    const hints = sent.slice(from).map((s) => hintOf(s.sql));
    const second = await op().withAccelerateInfo();
    const plainData = await op(); // without withAccelerateInfo: the data alone
    seen[name] = {
      status: [first.info?.cacheStatus ?? null, second.info?.cacheStatus ?? null],
      same: JSON.stringify(first.data) === JSON.stringify(second.data) &&
        JSON.stringify(plainData) === JSON.stringify(first.data),
      hints,
      data: first.data,
    };
  }
  const middle = await executions();
  // the same reads again: all from the cache, PostgreSQL runs nothing
  for (const op of Object.values(ops)) await op();
  const after = await executions();
  const from = sent.length;
  const uncached = await prisma.user.findMany({ where: { id: { lte: 3 } } }).withAccelerateInfo();
  return {
    ops: seen,
    executions: { before, middle, after },
    uncached: { status: uncached.info?.cacheStatus ?? null, hint: hintOf(sent[from]?.sql ?? "") },
    info: (await ops.findMany().withAccelerateInfo()).info,
  };
});

// ------------------------------------------------------------------ 2. concurrent calls

// Prisma batches findUnique calls made in the same tick (its dataloader): each call's
// strategy must still reach its own statement. Ids 4-10, each with its own strategy.
const PLAN: { id: number; strategy?: object; info: boolean }[] = [
  { id: 4, strategy: { ttl: 60, tags: [tag("c4")] }, info: true },
  { id: 5, strategy: { ttl: 60, tags: [tag("c5")] }, info: true },
  { id: 6, info: true },
  { id: 7, strategy: { ttl: 2 }, info: true },
  { id: 8, strategy: { ttl: 60, swr: 60, tags: [tag("c8"), tag("c")] }, info: true },
  { id: 9, info: false },
  { id: 10, info: false },
];

async function round(): Promise<Record<string, unknown>> {
  const from = sent.length;
  const started = Date.now();
  const results = await Promise.all([
    ...PLAN.map((p) => {
      const args: any = { where: { id: p.id } };
      if (p.strategy) args.cacheStrategy = p.strategy;
      const call = prisma.user.findUnique(args);
      return p.info ? call.withAccelerateInfo() : call.then((data: unknown) => ({ data, info: null }));
    }),
    // other reads at the same time, not batched by Prisma: contexts must not mix either
    prisma.user.count({ where: { id: { gt: 1000 } }, cacheStrategy: { ttl: 60, tags: [tag("cc")] } }).withAccelerateInfo(),
    prisma.user.count({ where: { id: { gt: 2000 } } }).withAccelerateInfo(),
  ]);
  const statements = sent.slice(from).map((s) => ({ params: s.params, hint: hintOf(s.sql), in: s.sql.includes(" IN (") }));
  return {
    ms: Date.now() - started,
    status: Object.fromEntries(
      results.map((r: any, i) => [i < PLAN.length ? String(PLAN[i].id) : `count${i - PLAN.length}`, r.info?.cacheStatus ?? null]),
    ),
    names: results.slice(0, PLAN.length).map((r: any) => r.data?.name ?? null),
    statements,
  };
}

await scenario("concurrent", async () => {
  const rounds: Record<string, unknown> = {};
  rounds.r1 = await round();
  const t1 = Date.now(); // id 7's entry was made before this
  rounds.r2 = await round();
  const wait = 2500 - (Date.now() - t1); // past id 7's ttl of 2 s
  if (wait > 0) await sleep(wait);
  rounds.r3 = await round();
  rounds.purge4 = await prisma.$accelerate.invalidate({ tags: [tag("c4")] });
  rounds.r4 = await round();
  rounds.purgeC = await prisma.$accelerate.invalidate({ tags: [tag("c")] });
  rounds.r5 = await round();
  return { rounds, executions: await executions() };
});

// Control: the same kind of calls through a naive kit (a context per call, a plugin that
// hints whatever context it runs in, Prisma's batches left alone). Prisma merges them into
// one statement that carries the first call's hint: id 12, asked uncached, would be cached
// under id 11's strategy. The kit above runs each cached call as its own statement instead.
await scenario("naiveControl", async () => {
  const from = sent.length;
  const naivePlugin = () => {
    const call = currentCall();
    return call?.strategy ? hintPairs(call.strategy) : {};
  };
  const naiveBase = new PrismaClient({
    adapter: adapter(),
    comments: [naivePlugin],
    log: [{ emit: "event", level: "query" }],
  });
  (naiveBase as any).$on("query", (e: { query: string; params: string }) =>
    sent.push({ sql: e.query, params: e.params }),
  );
  const naive = naiveBase.$extends({
    query: {
      $allModels: {
        $allOperations({ args, query }: any) {
          const { cacheStrategy, ...rest } = args ?? {};
          return runInCall(newCall(validateStrategy(cacheStrategy), false), () => query(rest));
        },
      },
    },
  });
  await Promise.all([
    naive.user.findUnique({ where: { id: 11 }, cacheStrategy: { ttl: 60, tags: [tag("n11")] } } as any),
    naive.user.findUnique({ where: { id: 12 } }),
  ]);
  await naiveBase.$disconnect();
  return sent.slice(from).map((s) => ({ params: s.params, hint: hintOf(s.sql), in: s.sql.includes(" IN (") }));
});

// ------------------------------------------------------------------ 3. purges

async function user13() {
  const { data, info } = await prisma.user
    .findUnique({ where: { id: 13 }, select: { name: true }, cacheStrategy: { ttl: 60, tags: [tag("inv")] } })
    .withAccelerateInfo();
  return [data?.name ?? null, info?.cacheStatus ?? null, (await executions())["13"] ?? 0];
}

await scenario("invalidate", async () => {
  const steps: Record<string, unknown> = {};
  steps.first = await user13();
  steps.second = await user13();
  await direct.query(`UPDATE "${schema}".users SET name = 'Changed by SQL' WHERE id = 13`);
  steps.afterSqlWrite = await user13(); // still the cached row: nothing told the node
  steps.purge = await prisma.$accelerate.invalidate({ tags: [tag("inv")] });
  steps.afterPurge = await user13();
  steps.again = await user13();
  await prisma.user.update({ where: { id: 13 }, data: { name: "Changed by Prisma" } });
  steps.purgeAll = await prisma.$accelerate.invalidateAll();
  steps.afterPurgeAll = await user13();
  return steps;
});

// ------------------------------------------------------------------ raw SQL

// Accelerate never cached raw queries; with the kit, raw SQL can carry the hint itself.
await scenario("raw", async () => {
  const sql = `SELECT name FROM "${schema}"."User" WHERE id = $1` + cacheHint({ ttl: 60, tags: [tag("raw")] });
  const from = sent.length;
  const rows = [await prisma.$queryRawUnsafe(sql, 16), await prisma.$queryRawUnsafe(sql, 16)];
  return { rows, hint: hintOf(sent[from]?.sql ?? ""), executions: (await executions())["16"] ?? 0 };
});

// ------------------------------------------------------------------ 4. bad input

await scenario("validation", async () => {
  const bad: Record<string, unknown> = {
    negativeTtl: { ttl: -1 },
    fractionalTtl: { ttl: 1.5 },
    stringTtl: { ttl: "60" },
    nanSwr: { ttl: 1, swr: Number.NaN },
    hugeTtl: { ttl: 31_536_001 },
    sixTags: { ttl: 1, tags: ["a", "b", "c", "d", "e", "f"] },
    dashTag: { ttl: 1, tags: ["a-b"] },
    longTag: { ttl: 1, tags: ["x".repeat(65)] },
    emptyTag: { ttl: 1, tags: [""] },
    tagsNotArray: { ttl: 1, tags: "users" },
    unknownField: { ttl: 1, maxAge: 5 },
    notObject: 60,
  };
  const from = sent.length;
  const errors: Record<string, unknown> = {};
  for (const [name, strategy] of Object.entries(bad)) {
    try {
      await prisma.user.findMany({ where: { id: 1 }, cacheStrategy: strategy as any });
      errors[name] = "accepted";
    } catch (err: any) {
      errors[name] = { cls: err instanceof CacheStrategyError ? "CacheStrategyError" : err?.name, field: err?.field, message: err?.message };
    }
  }
  const statementsSent = sent.length - from;
  const ok: Record<string, unknown> = {};
  for (const [name, strategy] of Object.entries({
    fiveTags: { ttl: 1, tags: ["a", "b", "c", "d", "e"] },
    tag64: { ttl: 1, tags: ["x".repeat(64)] },
    zero: { ttl: 0, swr: 0 },
    swrOnly: { swr: 5 },
    staleIfError: { ttl: 1, staleIfError: 30 },
  })) {
    const from = sent.length;
    await prisma.user.findMany({ where: { id: 1 }, cacheStrategy: strategy as any });
    ok[name] = hintOf(sent[from]?.sql ?? "");
  }
  const purge: Record<string, unknown> = {};
  const attempt = async (name: string, fn: () => Promise<unknown>) => {
    try {
      purge[name] = { accepted: await fn() };
    } catch (err: any) {
      purge[name] = { cls: err?.name, field: err?.field ?? null, status: err?.status ?? null, code: err?.code ?? null };
    }
  };
  await attempt("badTag", () => prisma.$accelerate.invalidate({ tags: ["no spaces"] }));
  await attempt("noTags", () => prisma.$accelerate.invalidate({ tags: [] }));
  await attempt("wrongKey", () =>
    base.$extends(withCacheEdge({ url: nodeUrl, apiKey: "ce_wrong_key_0000000000000000000000" })).$accelerate.invalidate({ tags: ["x"] }),
  );
  await attempt("noUrl", () => base.$extends(withCacheEdge({ apiKey })).$accelerate.invalidate({ tags: ["x"] }));
  await attempt("badWait", async () => withCacheEdge({ wait: 99 }));
  await attempt("noComments", async () => {
    const bare = new PrismaClient({ adapter: adapter() });
    try {
      bare.$extends(withCacheEdge());
    } finally {
      await bare.$disconnect();
    }
  });
  return { errors, statementsSent, ok, purge, strategyErrorIsExported: typeof CacheEdgeError === "function" };
});

// ------------------------------------------------------------------ 5. transactions (door only)

if (viaDoor) {
  await scenario("transactions", async () => {
    const read = (tx: any) =>
      tx.user.findMany({ where: { id: 14 }, cacheStrategy: { ttl: 60 } }).withAccelerateInfo();
    const from = sent.length;
    const interactive = await prisma.$transaction(async (tx: any) => [await read(tx), await read(tx)]);
    const interactiveHints = sent.slice(from).map((s) => hintOf(s.sql));
    const afterInteractive = (await executions())["14"] ?? 0;
    const from2 = sent.length;
    await prisma.$transaction([
      prisma.user.findUnique({ where: { id: 14 }, cacheStrategy: { ttl: 60 } }),
      prisma.user.findMany({ where: { id: 14 }, cacheStrategy: { ttl: 60 } }),
    ]);
    await prisma.$transaction([
      prisma.user.findUnique({ where: { id: 14 }, cacheStrategy: { ttl: 60 } }),
      prisma.user.findMany({ where: { id: 14 }, cacheStrategy: { ttl: 60 } }),
    ]);
    return {
      interactive: interactive.map((r: any) => r.info?.cacheStatus ?? null),
      interactiveHints,
      afterInteractive,
      batchHints: sent.slice(from2).map((s) => hintOf(s.sql)),
      afterBatch: (await executions())["14"] ?? 0,
    };
  });

  // withAccelerateInfo() without cacheEdgePool: the status cannot be seen (info null); the
  // hint still goes, so the second read is a hit (counted by PostgreSQL).
  await scenario("uninstrumented", async () => {
    const plainBase = baseClient({ instrumented: false, log: false });
    const plainClient = plainBase.$extends(withCacheEdge({ url: nodeUrl, apiKey }));
    const read = () =>
      plainClient.user.findUnique({ where: { id: 15 }, cacheStrategy: { ttl: 60 } }).withAccelerateInfo();
    const first = await read();
    const second = await read();
    await plainBase.$disconnect();
    return { info: [first.info, second.info], name: second.data?.name, executions: (await executions())["15"] ?? 0 };
  });
}

await base.$disconnect();
await direct.end();
for (const pool of pools) await pool.end().catch(() => undefined);
console.log(JSON.stringify(out));
