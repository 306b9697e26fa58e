// kysely with kysely-neon's NeonDialect (HTTP: it runs each query with neon()'s
// sql.query) through a node's POST /sql, for tests/integration/test_sql_js_clients.py.
//
//   node kysely_http.mjs <endpoint> <connection> <direct-url> <marker>
//
// The table kysely_people (below) is created by the test. Writes go through the node; reads
// run through the node and straight to PostgreSQL (kysely's PostgresDialect on a pg Pool, the
// same query builder), and both results are recorded. <marker> prefixes the ce_mark()
// markers of the cached queries (<marker>-raw, <marker>-builder). Prints one JSON object.
import { neon } from "@neondatabase/serverless";
import { Kysely, PostgresDialect, sql } from "kysely";
import { jsonArrayFrom } from "kysely/helpers/postgres";
import { NeonDialect } from "kysely-neon";
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
  "node kysely_http.mjs <endpoint> <connection> <direct-url> <marker>",
  4,
);
pointAt(endpoint);

const db = new Kysely({ dialect: new NeonDialect({ neon: neon(connection) }) });
const pool = new pg.Pool({ connectionString: directUrl, max: 1 });
const dbDirect = new Kysely({ dialect: new PostgresDialect({ pool }) });

async function both(build) {
  return { door: plain(await build(db)), direct: plain(await build(dbDirect)) };
}

await check("insert", async () => {
  const one = await db
    .insertInto("kysely_people")
    .values({
      first_name: "Zoë",
      last_name: "O'Brien",
      age: 41,
      score: "98.765",
      born_at: new Date("1983-07-01T08:09:10.111Z"),
      meta: JSON.stringify({ likes: ["tea", "✓"], n: null }),
      photo: Buffer.from([137, 80, 78, 71]),
      nicknames: ["z", 'zo"ë'],
    })
    .returning(["id", "first_name", "born_at"])
    .executeTakeFirstOrThrow();
  const many = await db
    .insertInto("kysely_people")
    .values([
      { first_name: "Ann", last_name: null, age: 30 },
      { first_name: "Ben", last_name: "Smith", age: 17 },
    ])
    .executeTakeFirst();
  await db
    .insertInto("kysely_pets")
    .values([
      { owner_id: one.id, name: "Rex", species: "dog" },
      { owner_id: one.id, name: "Tom", species: "cat" },
    ])
    .execute();
  return {
    one: plain(one),
    many: { numInsertedOrUpdatedRows: plain(many.numInsertedOrUpdatedRows) },
  };
});

await check("select", async () => ({
  all: await both((d) => d.selectFrom("kysely_people").selectAll().orderBy("id").execute()),
  where: await both((d) =>
    d
      .selectFrom("kysely_people")
      .select(["first_name", "age"])
      .where("age", ">=", 18)
      .where((eb) => eb.or([eb("last_name", "is", null), eb("last_name", "like", "O%")]))
      .orderBy("age", "desc")
      .execute(),
  ),
  aggregate: await both((d) =>
    d
      .selectFrom("kysely_people")
      .select((eb) => [
        eb.fn.countAll().as("n"),
        eb.fn.avg("age").as("avg"),
        eb.fn.max("born_at").as("last"),
      ])
      .executeTakeFirst(),
  ),
  nested: await both((d) =>
    d
      .selectFrom("kysely_people as p")
      .select((eb) => [
        "p.first_name",
        jsonArrayFrom(
          eb
            .selectFrom("kysely_pets")
            .select(["name", "species"])
            .whereRef("owner_id", "=", "p.id")
            .orderBy("name"),
        ).as("pets"),
      ])
      .orderBy("p.id")
      .execute(),
  ),
  raw: await both(
    async (d) => (await sql`SELECT ${"héllo"}::text AS t, ${[1, 2]}::int[] AS a`.execute(d)).rows,
  ),
}));

await check("update", async () => {
  const updated = await db
    .updateTable("kysely_people")
    .set((eb) => ({ age: eb("age", "+", 1) }))
    .where("age", "<", 40)
    .executeTakeFirst();
  const deleted = await db
    .deleteFrom("kysely_people")
    .where("first_name", "=", "Ben")
    .executeTakeFirst();
  const missing = await db
    .selectFrom("kysely_people")
    .selectAll()
    .where("id", "=", -1)
    .executeTakeFirst();
  return {
    updated: plain(updated.numUpdatedRows),
    deleted: plain(deleted.numDeletedRows),
    missing: missing ?? null,
    after: await both((d) =>
      d.selectFrom("kysely_people").select(["first_name", "age"]).orderBy("id").execute(),
    ),
  };
});

await check("errors", async () => ({
  duplicate: await failure(() =>
    db.insertInto("kysely_pets").values({ owner_id: 1, name: "Rex", species: "dog" }).execute(),
  ),
  transaction: await failure(() =>
    db.transaction().execute(async (trx) => trx.selectFrom("kysely_people").selectAll().execute()),
  ),
}));

await check("cache", async () => {
  // the hint in raw SQL, and sqlcommenter-style at the end of a query builder's statement
  const raw = () =>
    sql`/* cache ttl=60 */ SELECT ce_mark(${`${marker}-raw`}) AS m, count(*)::int AS n FROM kysely_people`.execute(
      db,
    );
  const builder = () =>
    db
      .selectFrom("kysely_people")
      .select([sql`(SELECT ce_mark(${`${marker}-builder`}))`.as("m"), "first_name", "score"])
      .orderBy("id")
      .modifyEnd(sql.raw("/*cache_ttl='60',cache_tags='kysely_people'*/"))
      .execute();
  return {
    raw: [
      await cached(async () => (await raw()).rows),
      await cached(async () => (await raw()).rows),
    ],
    builder: [await cached(builder), await cached(builder)],
    direct: await both((d) =>
      d.selectFrom("kysely_people").select(["first_name", "score"]).orderBy("id").execute(),
    ),
  };
});

await db.destroy();
await dbDirect.destroy();
out.requests = responses.length;
print();
