// drizzle-orm's neon-http driver through a node's POST /sql, for
// tests/integration/test_sql_js_clients.py.
//
//   node drizzle_http.mjs <endpoint> <connection> <direct-url> <marker>
//
// The tables drizzle_users and drizzle_posts (below) are created by the test. Writes go
// through the node; every read runs twice, through the node (neon-http) and straight to
// PostgreSQL (drizzle's node-postgres driver, the same query builder), and both results are
// recorded. <marker> names the ce_mark() of the cached query, whose executions the test
// counts. Prints one JSON object.
import { neon } from "@neondatabase/serverless";
import { and, asc, count, desc, eq, gt, relations, sql } from "drizzle-orm";
import { drizzle } from "drizzle-orm/neon-http";
import { drizzle as drizzlePg } from "drizzle-orm/node-postgres";
import {
  bigint,
  boolean,
  customType,
  date,
  integer,
  jsonb,
  numeric,
  pgTable,
  serial,
  text,
  timestamp,
  uuid,
} from "drizzle-orm/pg-core";
import pg from "pg";

import {
  args,
  cached,
  check,
  failure,
  out,
  plain,
  pointAt,
  print,
  responses,
} from "./neon_common.mjs";

const [endpoint, connection, directUrl, marker] = args(
  "node drizzle_http.mjs <endpoint> <connection> <direct-url> <marker>",
  4,
);
pointAt(endpoint);

const bytea = customType({ dataType: () => "bytea" });

const users = pgTable("drizzle_users", {
  id: serial("id").primaryKey(),
  name: text("name").notNull(),
  email: text("email").notNull().unique(),
  age: integer("age"),
  balance: numeric("balance", { precision: 12, scale: 2 }),
  visits: bigint("visits", { mode: "bigint" }).notNull().default(0n),
  active: boolean("active").notNull().default(true),
  tags: text("tags").array(),
  profile: jsonb("profile"),
  born: date("born"),
  createdAt: timestamp("created_at", { withTimezone: true }).notNull().defaultNow(),
  uid: uuid("uid"),
});
const posts = pgTable("drizzle_posts", {
  id: serial("id").primaryKey(),
  authorId: integer("author_id")
    .notNull()
    .references(() => users.id),
  title: text("title").notNull(),
  body: bytea("body"),
  at: timestamp("at", { withTimezone: true, mode: "date" }),
});
const usersRelations = relations(users, ({ many }) => ({ posts: many(posts) }));
const postsRelations = relations(posts, ({ one }) => ({
  author: one(users, { fields: [posts.authorId], references: [users.id] }),
}));
const schema = { users, posts, usersRelations, postsRelations };

const db = drizzle({ client: neon(connection), schema });
const direct = new pg.Client({ connectionString: directUrl });
await direct.connect();
const dbDirect = drizzlePg({ client: direct, schema });

// The same read through the node and straight to PostgreSQL.
async function both(build) {
  return { door: plain(await build(db)), direct: plain(await build(dbDirect)) };
}

await check("insert", async () => {
  const alice = await db
    .insert(users)
    .values({
      name: "Alice ✓",
      email: "alice@example.com",
      age: 31,
      balance: "1234.50",
      visits: 9007199254740993n,
      tags: ["a", "b c", '"q"'],
      profile: { theme: "dark", langs: ["fr", "é"], n: 1.5 },
      born: "1993-04-05",
      uid: "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
    })
    .returning();
  const many = await db
    .insert(users)
    .values([
      { name: "Bob", email: "bob@example.com", age: 25, active: false },
      { name: "Carol", email: "carol@example.com", profile: null, tags: [] },
    ])
    .returning({ id: users.id, name: users.name, active: users.active });
  const post = await db
    .insert(posts)
    .values({
      authorId: alice[0].id,
      title: "hello",
      body: Buffer.from([0, 1, 254, 255]),
      at: new Date("2024-02-29T13:14:15.123Z"),
    })
    .returning({ id: posts.id, title: posts.title });
  const plainInsert = await db.insert(posts).values({ authorId: many[0].id, title: "bob's" });
  return {
    alice: plain(alice),
    many: plain(many),
    post: plain(post),
    plainInsert: { rowCount: plainInsert.rowCount, command: plainInsert.command },
  };
});

await check("select", async () => ({
  all: await both((d) => d.select().from(users).orderBy(asc(users.id))),
  partial: await both((d) =>
    d
      .select({ id: users.id, upper: sql`upper(${users.name})`, visits: users.visits })
      .from(users)
      .where(and(gt(users.age, 20), eq(users.active, true))),
  ),
  join: await both((d) =>
    d
      .select({ name: users.name, title: posts.title, body: posts.body, at: posts.at })
      .from(posts)
      .innerJoin(users, eq(users.id, posts.authorId))
      .orderBy(desc(posts.id)),
  ),
  counted: await both((d) => d.select({ n: count() }).from(users)),
  relational: await both((d) =>
    d.query.users.findMany({
      with: { posts: { columns: { title: true, body: true } } },
      orderBy: [asc(users.id)],
    }),
  ),
  first: await both((d) => d.query.users.findFirst({ where: eq(users.email, "bob@example.com") })),
  prepared: await both((d) =>
    d
      .select({ id: users.id })
      .from(users)
      .where(eq(users.name, sql.placeholder("name")))
      .prepare("by_name")
      .execute({ name: "Carol" }),
  ),
}));

await check("update", async () => {
  const updated = await db
    .update(users)
    .set({ age: sql`${users.age} + 1`, profile: { updated: true } })
    .where(eq(users.email, "alice@example.com"))
    .returning({ age: users.age, profile: users.profile });
  const deleted = await db.delete(posts).where(eq(posts.title, "bob's"));
  return { updated: plain(updated), deleted: deleted.rowCount };
});

// db.batch: one HTTP request, one transaction
await check("batch", async () => {
  const before = responses.length;
  const [inserted, updated, selected, counted] = await db.batch([
    db
      .insert(users)
      .values({ name: "Dan", email: "dan@example.com", age: 40 })
      .returning({ id: users.id }),
    db
      .update(users)
      .set({ active: false })
      .where(eq(users.name, "Dan"))
      .returning({ active: users.active }),
    db.select({ name: users.name, active: users.active }).from(users).where(eq(users.name, "Dan")),
    db.select({ n: count() }).from(users),
  ]);
  const requests = responses.length - before;
  // a failing statement rolls the whole batch back (the test checks "eve" is absent)
  const failed = await failure(() =>
    db.batch([
      db.insert(users).values({ name: "Eve", email: "eve@example.com" }),
      db.insert(users).values({ name: "Dup", email: "dan@example.com" }),
    ]),
  );
  const refused = await failure(() => db.transaction(async () => 1));
  return {
    requests,
    inserted: plain(inserted),
    updated: plain(updated),
    selected: plain(selected),
    counted: plain(counted),
    failed: { code: failed.code, constraint: failed.constraint, message: failed.message },
    refused: refused.message,
    afterBatch: await both((d) =>
      d.select({ name: users.name }).from(users).orderBy(asc(users.id)),
    ),
  };
});

// a hinted read (db.execute with the hint in its SQL) is a miss, then a hit
await check("cache", async () => {
  const q = () =>
    db.execute(
      sql`/* cache ttl=60 */ SELECT ce_mark(${marker}) AS m, name, visits FROM drizzle_users WHERE id = ${1}`,
    );
  const first = await cached(async () => (await q()).rows);
  const second = await cached(async () => (await q()).rows);
  const directRows = await dbDirect.execute(
    sql`SELECT name, visits FROM drizzle_users WHERE id = ${1}`,
  );
  return { first, second, direct: plain(directRows.rows) };
});

await direct.end();
out.requests = responses.length;
print();
