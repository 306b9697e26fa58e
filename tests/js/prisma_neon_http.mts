// Prisma 7 with @prisma/adapter-neon's PrismaNeonHttp through a node's POST /sql, for
// tests/integration/test_sql_js_clients.py.
//
//   npx tsx prisma_neon_http.mts <generated-client-dir> <endpoint> <connection> <direct-url> <marker>
//
// <generated-client-dir> holds the client `prisma generate` made from prisma/schema.prisma
// (the test's prisma_client fixture). The test creates its tables with SQL in the public
// schema (PrismaNeonHttp has no schema option). "User" is a view over a table that calls
// ce_mark(<marker>) once per statement reading it, so the script can count how many times
// PostgreSQL really ran Prisma's reads; "Post" is a table.
//
// Writes go through the node. Reads run through the node and through the same generated
// client on @prisma/adapter-pg straight to PostgreSQL, and both results are recorded. A
// `comments:` plugin puts sqlcommenter cache hints on reads while `hinting` is on. Prints
// one JSON object; a step that throws records {error, code}.
import path from "node:path";
import { pathToFileURL } from "node:url";

import { PrismaNeonHttp } from "@prisma/adapter-neon";
import { PrismaPg } from "@prisma/adapter-pg";
import pg from "pg";

import { cached, lastCache, out, plain, pointAt, responses } from "./neon_common.mjs";

const [clientDir, endpoint, connection, directUrl, marker] = process.argv.slice(2);
if (!clientDir || !endpoint || !connection || !directUrl || !marker) {
  console.error(
    "usage: tsx prisma_neon_http.mts <generated-client-dir> <endpoint> <connection> <direct-url> <marker>",
  );
  process.exit(2);
}
pointAt(endpoint);

const { PrismaClient } = await import(pathToFileURL(path.join(clientDir, "client.ts")).href);

const READS = new Set([
  "findMany",
  "findFirst",
  "findFirstOrThrow",
  "findUnique",
  "findUniqueOrThrow",
  "aggregate",
  "groupBy",
]);
let hinting = false;
function cacheHints(context: any): Record<string, string | undefined> {
  const query = context.query;
  if (!hinting || query.modelName === undefined || !READS.has(query.action)) return {};
  return { cache_ttl: "60", cache_tags: "prisma_http" };
}

const sent: string[] = [];
const prisma = new PrismaClient({
  adapter: new PrismaNeonHttp(connection, {}),
  comments: [cacheHints],
  log: [{ emit: "event", level: "query" }],
});
prisma.$on("query", (event: { query: string }) => sent.push(event.query));
const direct = new PrismaClient({ adapter: new PrismaPg({ connectionString: directUrl, max: 1 }) });
const pgDirect = new pg.Client({ connectionString: directUrl });
await pgDirect.connect();

async function executions(): Promise<number> {
  const found = await pgDirect.query(
    "SELECT count(*)::int AS n FROM ce_exec_log WHERE marker = $1",
    [marker],
  );
  return found.rows[0].n;
}

async function step(name: string, fn: () => Promise<unknown>): Promise<void> {
  try {
    out[name] = await fn();
  } catch (err: any) {
    out[name] = { error: String(err?.message ?? err), code: err?.code ?? null };
  }
}

async function refused(fn: () => Promise<unknown>): Promise<unknown> {
  try {
    return { noError: plain(await fn()) };
  } catch (err: any) {
    return {
      name: err?.constructor?.name ?? null,
      message: String(err?.message ?? err)
        .split("\n")
        .filter(Boolean)
        .at(-1),
      code: err?.code ?? null,
      meta: plain(err?.meta ?? null),
    };
  }
}

// The same read through the node and straight to PostgreSQL.
async function both(build: (client: any) => Promise<unknown>) {
  return { door: plain(await build(prisma)), direct: plain(await build(direct)) };
}

await step("create", async () => {
  const alice = await prisma.user.create({ data: { email: "alice@example.com", name: "Alice ✓" } });
  const bob = await prisma.user.create({
    data: { email: "bob@example.com", name: null },
    select: { id: true, email: true, name: true },
  });
  const post = await prisma.post.create({
    data: {
      title: "first ✓",
      score: "12.50",
      views: 9007199254740993n,
      createdAt: new Date("2024-02-29T13:14:15.123Z"),
      authorId: alice.id,
    },
  });
  const many = await prisma.post.createMany({
    data: [
      { title: "second", published: true, authorId: alice.id, score: "0.01" },
      { title: "bob's", authorId: bob.id },
    ],
  });
  return { alice: plain(alice), bob: plain(bob), post: plain(post), many: many.count };
});

await step("nestedCreate", () =>
  refused(() =>
    prisma.user.create({
      data: { email: "carol@example.com", name: "Carol", posts: { create: [{ title: "nested" }] } },
      include: { posts: true },
    }),
  ),
);

await step("read", async () => ({
  findMany: await both((c) =>
    c.user.findMany({ include: { posts: { orderBy: { id: "asc" } } }, orderBy: { id: "asc" } }),
  ),
  findUnique: await both((c) => c.user.findUnique({ where: { email: "bob@example.com" } })),
  findFirst: await both((c) =>
    c.post.findFirst({
      where: { published: true, title: { contains: "sec" } },
      orderBy: { id: "desc" },
      select: { title: true, score: true, views: true, author: { select: { email: true } } },
    }),
  ),
  missing: await both((c) => c.user.findUnique({ where: { email: "nobody@example.com" } })),
  count: await both((c) => c.post.count()),
  countWhere: await both((c) =>
    c.post.count({ where: { author: { email: "alice@example.com" } } }),
  ),
  aggregate: await both((c) =>
    c.post.aggregate({ _sum: { views: true }, _avg: { score: true }, _max: { createdAt: true } }),
  ),
  groupBy: await both((c) =>
    c.post.groupBy({ by: ["published"], _count: { _all: true }, orderBy: { published: "asc" } }),
  ),
  relationCount: await both((c) =>
    c.user.findMany({
      select: { email: true, _count: { select: { posts: true } } },
      orderBy: { id: "asc" },
    }),
  ),
  raw: await both(
    (c) =>
      c.$queryRaw`SELECT ${42}::int AS i, ${9007199254740993n}::int8 AS big, ${"héllo"}::text AS t,
      ${new Date("2024-01-02T03:04:05.678Z")}::timestamptz AS ts, ${true}::bool AS b,
      ${Buffer.from([1, 2, 255])}::bytea AS by, ${JSON.stringify({ a: [1, "é"] })}::jsonb AS j,
      1.50::numeric AS n, NULL::text AS nothing`,
  ),
}));

await step("update", async () => {
  const renamed = await prisma.user.update({
    where: { email: "bob@example.com" },
    data: { name: "Robert" },
    select: { name: true },
  });
  const incremented = await prisma.post.update({
    where: { id: (await prisma.post.findFirstOrThrow({ where: { title: "first ✓" } })).id },
    data: { views: { increment: 1 }, published: true },
    select: { views: true, published: true },
  });
  const many = await prisma.post.updateMany({
    where: { published: false },
    data: { score: "1.00" },
  });
  const deleted = await prisma.post.deleteMany({ where: { title: "bob's" } });
  const upsert = await refused(() =>
    prisma.user.upsert({
      where: { email: "alice@example.com" },
      update: { name: "Alice A." },
      create: { email: "alice@example.com", name: "never" },
      select: { name: true },
    }),
  );
  return {
    renamed: plain(renamed),
    incremented: plain(incremented),
    many: many.count,
    deleted: deleted.count,
    upsert,
    after: await both((c) =>
      c.post.findMany({
        select: { title: true, views: true, score: true, published: true },
        orderBy: { id: "asc" },
      }),
    ),
  };
});

await step("errors", async () => ({
  duplicate: {
    door: await refused(() => prisma.user.create({ data: { email: "alice@example.com" } })),
    direct: await refused(() => direct.user.create({ data: { email: "alice@example.com" } })),
  },
  notFound: await refused(() =>
    prisma.user.update({ where: { email: "nobody@example.com" }, data: { name: "x" } }),
  ),
  foreignKey: {
    door: await refused(() => prisma.post.create({ data: { title: "orphan", authorId: 999999 } })),
    direct: await refused(() =>
      direct.post.create({ data: { title: "orphan", authorId: 999999 } }),
    ),
  },
}));

await step("transactions", async () => ({
  interactive: await refused(() => prisma.$transaction(async (tx: any) => tx.user.count())),
  batch: await refused(() => prisma.$transaction([prisma.user.count(), prisma.post.count()])),
}));

// hinted reads: a miss, then a hit, and PostgreSQL ran the read once
await step("cache", async () => {
  hinting = true;
  const everyone = () =>
    prisma.user.findMany({ select: { email: true, name: true }, orderBy: { id: "asc" } });
  const start = await executions();
  const first = await cached(everyone);
  const afterFirst = await executions();
  const firstSql = sent.at(-1);
  const second = await cached(everyone);
  const afterSecond = await executions();
  const age = lastCache();
  const count = [await cached(() => prisma.user.count()), await cached(() => prisma.user.count())];
  hinting = false;
  const unhinted = await cached(everyone);
  const afterUnhinted = await executions();
  const raw = () => prisma.$queryRaw`/* cache ttl=60 */ SELECT ce_mark(${marker + "-raw"}) AS m`;
  const rawRuns = [await cached(raw), await cached(raw)];
  return {
    first,
    second,
    age,
    firstSql,
    executions: [start, afterFirst, afterSecond, afterUnhinted],
    count,
    unhinted,
    raw: rawRuns,
    direct: plain(
      await direct.user.findMany({ select: { email: true, name: true }, orderBy: { id: "asc" } }),
    ),
  };
});

await prisma.$disconnect();
await direct.$disconnect();
await pgDirect.end();
out.requests = responses.length;
console.log(JSON.stringify(out));
