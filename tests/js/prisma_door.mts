// Prisma 7 with @prisma/adapter-pg through the PostgreSQL door, for
// tests/integration/test_pg_js_clients.py.
//
//   npx tsx prisma_door.mts <generated-client-dir> <postgresql-url> <schema>
//
// <generated-client-dir> holds the client `prisma generate` made from prisma/schema.prisma;
// <schema> is the database schema holding the "User" and "Post" tables (created by the
// test with SQL). Statements are named (statementNameGenerator), so each pooled pg client
// parses a statement once and then only binds it, wherever the door's pooling lands it.
// Prints one JSON object: what each check saw. A check that throws records {error, code}.
import { createHash } from "node:crypto";
import path from "node:path";
import { pathToFileURL } from "node:url";

import { PrismaPg } from "@prisma/adapter-pg";

const [clientDir, url, schema] = process.argv.slice(2);
if (!clientDir || !url || !schema) {
  console.error("usage: tsx prisma_door.mts <generated-client-dir> <postgresql-url> <schema>");
  process.exit(2);
}

const { PrismaClient, Prisma } = await import(pathToFileURL(path.join(clientDir, "client.ts")).href);

const adapter = new PrismaPg(
  { connectionString: url, max: 4 },
  {
    schema,
    statementNameGenerator: (query: { sql: string }) =>
      "prisma_" + createHash("sha256").update(query.sql).digest("hex").slice(0, 20),
  },
);
const prisma = new PrismaClient({ adapter });

const out: Record<string, unknown> = {};

async function check(name: string, fn: () => Promise<unknown>): Promise<void> {
  try {
    out[name] = await fn();
  } catch (err: any) {
    out[name] = { error: String(err?.message ?? err), code: err?.code ?? null };
  }
}

// JSON for what Prisma returns: BigInt, Decimal and Date made visible as such
function plain(value: unknown): unknown {
  return JSON.parse(
    JSON.stringify(value, function (this: any, key: string, v: unknown) {
      const original = this[key]; // before toJSON (Decimal and Date have one)
      if (typeof original === "bigint") return { bigint: original.toString() };
      if (Prisma.Decimal.isDecimal(original)) return { decimal: original.toString() };
      return v;
    }),
  );
}

class Boom extends Error {}

await check("create", async () => {
  const alice = await prisma.user.create({ data: { email: "alice@example.com", name: "Alice" } });
  return plain(alice);
});

await check("nestedCreate", async () => {
  const bob = await prisma.user.create({
    data: {
      email: "bob@example.com",
      name: "Bob",
      posts: {
        create: [
          { title: "first", score: "12.50" },
          { title: "second", published: true, views: 9007199254740993n },
        ],
      },
    },
    include: { posts: { orderBy: { id: "asc" } } },
  });
  return plain({
    ...bob,
    posts: bob.posts.map((p: any) => ({ ...p, createdAt: p.createdAt instanceof Date })),
  });
});

await check("read", async () => {
  const bob = await prisma.user.findUnique({
    where: { email: "bob@example.com" },
    include: { posts: { orderBy: { title: "asc" }, select: { title: true, published: true } } },
  });
  const withPublished = await prisma.user.findMany({
    where: { posts: { some: { published: true } } },
    select: { email: true },
  });
  const counts = await prisma.post.groupBy({
    by: ["published"],
    _count: { _all: true },
    orderBy: { published: "asc" },
  });
  const missing = await prisma.user.findUnique({ where: { email: "nobody@example.com" } });
  // the same query many times, concurrently: named statements on a pool of pg clients
  const many = await Promise.all(
    Array.from({ length: 20 }, (_, i) =>
      prisma.user.findMany({
        where: { email: { contains: i % 2 ? "bob" : "alice" } },
        select: { name: true },
      }),
    ),
  );
  const raw = await prisma.$queryRaw`SELECT ${41}::int + 1 AS n, current_schema() AS s`;
  return plain({
    bob,
    withPublished,
    counts,
    missing,
    many: many.map((rows: any[]) => rows.map((r) => r.name)),
    raw,
  });
});

await check("update", async () => {
  const renamed = await prisma.user.update({
    where: { email: "bob@example.com" },
    data: { name: "Robert" },
  });
  const published = await prisma.post.updateMany({
    where: { author: { email: "bob@example.com" } },
    data: { published: true, views: { increment: 1 } },
  });
  const upserted = await prisma.user.upsert({
    where: { email: "alice@example.com" },
    update: { name: "Alice A." },
    create: { email: "alice@example.com" },
  });
  const duplicate = await prisma.user
    .create({ data: { email: "bob@example.com" } })
    .then(() => null, (err: any) => err.code);
  return plain({ renamed: renamed.name, published: published.count, upserted: upserted.name, duplicate });
});

await check("delete", async () => {
  const first = await prisma.post.findFirst({ where: { title: "first" } });
  const deleted = await prisma.post.delete({ where: { id: first.id } });
  const temp = await prisma.user.create({
    data: { email: "temp@example.com", posts: { create: [{ title: "goes with its author" }] } },
  });
  await prisma.user.delete({ where: { id: temp.id } });
  const orphans = await prisma.post.count({ where: { title: "goes with its author" } });
  return plain({ deleted: deleted.title, orphans });
});

await check("transaction", async () => {
  const result = await prisma.$transaction(async (tx: any) => {
    const carol = await tx.user.create({
      data: { email: "carol@example.com", name: "Carol", posts: { create: { title: "tx post" } } },
    });
    const seen = await tx.user.count({ where: { email: "carol@example.com" } });
    await tx.post.updateMany({ where: { authorId: carol.id }, data: { published: true } });
    return { id: carol.id, seen };
  });
  const batch = await prisma.$transaction([
    prisma.user.count(),
    prisma.post.count({ where: { published: true } }),
  ]);
  return plain({ ...result, batch });
});

await check("rollback", async () => {
  const thrown = await prisma
    .$transaction(async (tx: any) => {
      await tx.user.create({ data: { email: "dave@example.com", name: "Dave" } });
      const inside = await tx.user.count({ where: { email: "dave@example.com" } });
      throw new Boom(`thrown after insert (seen inside: ${inside})`);
    })
    .then(
      () => "committed?!",
      (err: any) => (err instanceof Boom ? err.message : `other error: ${err}`),
    );
  const failed = await prisma
    .$transaction(async (tx: any) => {
      await tx.user.create({ data: { email: "erin@example.com" } });
      await tx.user.create({ data: { email: "alice@example.com" } }); // unique violation
    })
    .then(
      () => "committed?!",
      (err: any) => err.code ?? String(err),
    );
  const visible = await prisma.user.count({
    where: { email: { in: ["dave@example.com", "erin@example.com"] } },
  });
  return { thrown, failed, visible };
});

await prisma.$disconnect();
console.log(JSON.stringify(out));
