// Prisma 7 with @prisma/adapter-pg through the PostgreSQL door, asking for caching with a
// `comments:` plugin (Prisma's SQL commenter API), for tests/integration/test_pg_rules.py.
//
//   npx tsx prisma_cache.mts <generated-client-dir> <door-url> <direct-url> <schema> <marker>
//
// <generated-client-dir> holds the client `prisma generate` made from prisma/schema.prisma
// (tests/integration/test_pg_js_clients.py); only its User model is used. <schema> is the
// database schema whose "User" is a view that logs ce_exec_log(<marker>) once per execution,
// so the script can count how many times PostgreSQL really ran Prisma's reads.
//
// The plugin returns {cache_ttl, cache_tags} for reads of a model and nothing for writes or
// raw statements; Prisma renders the pairs sqlcommenter-style (keys sorted, values
// URL-encoded and single-quoted) at the end of each statement it runs. The pg pool holds one
// connection, so `SHOW cache_edge.last_status` reports on the statement just before it, and
// a read after a write comes from the session that wrote (read your writes is per session).
//
// Prints one JSON object: the SQL Prisma sent, and per step its result, the door's
// last_status and the executions counted so far. A step that throws records {error, code}.
import path from "node:path";
import { pathToFileURL } from "node:url";

import { PrismaPg } from "@prisma/adapter-pg";
import pg from "pg";

const [clientDir, url, directUrl, schema, marker] = process.argv.slice(2);
if (!clientDir || !url || !directUrl || !schema || !marker) {
  console.error(
    "usage: tsx prisma_cache.mts <generated-client-dir> <door-url> <direct-url> <schema> <marker>",
  );
  process.exit(2);
}

const { PrismaClient } = await import(pathToFileURL(path.join(clientDir, "client.ts")).href);

// Prisma's read actions (count() is an aggregate); writes must carry no hint (25006).
const READS = new Set([
  "findMany",
  "findFirst",
  "findFirstOrThrow",
  "findUnique",
  "findUniqueOrThrow",
  "aggregate",
  "groupBy",
]);

function cacheKeys(context: any): Record<string, string | undefined> {
  const query = context.query;
  if (query.modelName === undefined || !READS.has(query.action)) return {};
  return { cache_ttl: "60", cache_tags: "prisma_users" };
}

const prisma = new PrismaClient({
  adapter: new PrismaPg({ connectionString: url, max: 1 }, { schema }),
  comments: [cacheKeys],
  log: [{ emit: "event", level: "query" }],
});
const sent: string[] = [];
prisma.$on("query", (event: { query: string }) => sent.push(event.query));

const direct = new pg.Client({ connectionString: directUrl });
await direct.connect();

async function executions(): Promise<number> {
  const found = await direct.query(
    "SELECT count(*)::int AS n FROM ce_exec_log WHERE marker = $1",
    [marker],
  );
  return found.rows[0].n;
}

async function lastStatus(client: any = prisma): Promise<string> {
  const rows = await client.$queryRawUnsafe("SHOW cache_edge.last_status");
  return rows[0]["cache_edge.last_status"];
}

const out: Record<string, unknown> = {};

async function step(name: string, fn: () => Promise<unknown>): Promise<void> {
  try {
    const value = await fn();
    out[name] = { value, status: await lastStatus(), executions: await executions() };
  } catch (err: any) {
    out[name] = { error: String(err?.message ?? err), code: err?.code ?? null };
  }
}

const everyone = () =>
  prisma.user.findMany({ select: { email: true, name: true }, orderBy: { id: "asc" } });

await step("first", everyone);
out.firstSql = sent.filter((q) => q.includes('"User"')).at(-1) ?? null;
await step("second", everyone);
await step("create", async () => {
  const created = await prisma.user.create({
    data: { email: "carol@example.com", name: "Carol" },
    select: { email: true },
  });
  return created.email;
});
out.createSql = sent.filter((q) => q.includes("INSERT")).at(-1) ?? null;
await step("afterWrite", everyone);
await step("again", everyone);
// Reads in an interactive transaction run in it: never from the cache.
await step("interactive", () =>
  prisma.$transaction(async (tx: any) => {
    const rows = await tx.user.findMany({ select: { email: true }, orderBy: { id: "asc" } });
    return { rows: rows.length, status: await lastStatus(tx) };
  }),
);
// A batch transaction is one BEGIN ... COMMIT around its queries: likewise.
await step("batch", async () => {
  const [all, some] = await prisma.$transaction([
    everyone(),
    prisma.user.findMany({ where: { name: "Carol" }, select: { email: true } }),
  ]);
  return [all.length, some.length];
});
out.batchSql = sent.slice(-4);

await prisma.$disconnect();
await direct.end();
console.log(JSON.stringify(out));
