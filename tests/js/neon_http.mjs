// neon() of @neondatabase/serverless through a node's POST /sql, for
// tests/integration/test_sql_js_clients.py.
//
//   node neon_http.mjs <endpoint> <connection> <direct-url> <table> <marker>
//
// <table> (created by the test) is (id int PRIMARY KEY, name text NOT NULL,
// qty int CHECK (qty >= 0), note text). <marker> prefixes the ce_mark() markers of the cached
// queries (<marker>-hint, -other, -together, -commenter), whose executions the test counts.
// Each check runs the same statement through the node and straight through node-postgres
// and records both (and, where it matters, the text values without any type parser).
// Prints one JSON object.
import { neon, neonConfig, NeonDbError, Pool } from "@neondatabase/serverless";
import pg from "pg";

import {
  args,
  cached,
  check,
  errorOf,
  failure,
  lastCache,
  out,
  plain,
  pointAt,
  print,
  responses,
} from "./neon_common.mjs";

const [endpoint, connection, directUrl, table, marker] = args(
  "node neon_http.mjs <endpoint> <connection> <direct-url> <table> <marker>",
  5,
);
pointAt(endpoint);
const sql = neon(connection);
const direct = new pg.Client({ connectionString: directUrl });
await direct.connect();

// No type parser at all: the text PostgreSQL printed, as each client received it.
const RAW = { getTypeParser: () => (value) => value };

async function both(text, params = []) {
  const door = await sql.query(text, params, { fullResults: true });
  const mine = await direct.query(text, params);
  const rawDoor = await sql.query(text, params, { arrayMode: true, types: RAW });
  const rawDirect = await direct.query({ text, values: params, rowMode: "array", types: RAW });
  return {
    door: plain(door.rows),
    direct: plain(mine.rows),
    fieldsDoor: door.fields.map((f) => [f.name, f.dataTypeID]),
    fieldsDirect: mine.fields.map((f) => [f.name, f.dataTypeID]),
    rawDoor,
    rawDirect: rawDirect.rows,
    command: [door.command, mine.command],
    rowCount: [door.rowCount, mine.rowCount],
  };
}

// 1. parameters of every common type, both ways of writing a query
const PARAMS_SQL = `SELECT $1::int AS i, $2::int8 AS big, $3::numeric AS num, $4::bool AS b,
  $5::text AS t, $6::text AS nul, $7::timestamptz AS ts, $8::json AS j, $9::jsonb AS jb,
  $10::bytea AS by, $11::int[] AS ia, $12::text[] AS ta, $13::uuid AS u, $14::float8 AS f,
  $15::date AS d, $16::bool AS no, $17::int8 AS negative`;
const PARAMS = [
  42,
  9007199254740993n,
  "12345678901234567890.123456789",
  true,
  'héllo ✓ 🐘 "q" \\ tab\there\nnewline',
  null,
  new Date("2024-02-29T13:14:15.123Z"),
  { a: [1, 2.5, null], b: "é", c: { d: true } },
  { "x y": "z", n: -1.5e-7, list: [] },
  Buffer.from([0, 255, 16, 65, 92]),
  [1, 2, null, -3],
  ["a", "b c", null, '"q"', "back\\slash", "", "{}"],
  "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
  0.1,
  "2024-02-29",
  false,
  -9223372036854775808n,
];

await check("params", () => both(PARAMS_SQL, PARAMS));

await check("template", async () => {
  const [i, big, num, b, t, nul, ts, j, jb, by, ia, ta, u, f, d, no, negative] = PARAMS;
  const rows = await sql`SELECT ${i}::int AS i, ${big}::int8 AS big, ${num}::numeric AS num,
    ${b}::bool AS b, ${t}::text AS t, ${nul}::text AS nul, ${ts}::timestamptz AS ts,
    ${j}::json AS j, ${jb}::jsonb AS jb, ${by}::bytea AS by, ${ia}::int[] AS ia,
    ${ta}::text[] AS ta, ${u}::uuid AS u, ${f}::float8 AS f, ${d}::date AS d, ${no}::bool AS no,
    ${negative}::int8 AS negative`;
  const mine = await direct.query(PARAMS_SQL, PARAMS);
  return { door: plain(rows), direct: plain(mine.rows) };
});

// 2. values PostgreSQL makes (no parameters): every parser the driver applies
await check("constants", () =>
  both(`SELECT 32767::int2 AS i2, 9223372036854775807::int8 AS i8, 1.5::float4 AS f4,
    'NaN'::float8 AS nan, '-Infinity'::float8 AS ninf, 0.1::numeric(10,4) AS n,
    '2024-02-29 13:14:15.123456'::timestamp AS ts, '2024-02-29 13:14:15.5+05:30'::timestamptz AS tz,
    'infinity'::timestamptz AS tzinf, '0044-03-15 BC'::date AS bc,
    '1 year 2 mons 3 days 04:05:06.5'::interval AS iv, '13:14:15'::time AS t,
    '13:14:15+02'::timetz AS ttz, '{"a": [1, 2.5, null]}'::json AS j, '{"b": 1, "a": "é"}'::jsonb AS jb,
    '\\x00ff'::bytea AS by, ''::bytea AS empty, ARRAY[[1, 2], [3, 4]]::int[] AS matrix,
    ARRAY['2024-01-01'::date] AS dates, ARRAY[true, NULL] AS bools, ARRAY[1.5]::numeric[] AS nums,
    '{}'::int[] AS none, '192.168.0.1/24'::inet AS ip, 12.34::money AS cash, 'ab'::char(4) AS padded,
    '(1,2)'::point AS pt, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS u, 'x'::name AS nm,
    'pg_class'::regclass AS rc, 1::oid AS o, B'101'::bit(3) AS bits, '[1,5)'::int4range AS r,
    'a=>b'::text AS kv, E'\\u0001 ctrl' AS ctrl, repeat('é', 3) AS accents, NULL AS unknown`),
);

// 3. sql.query with its options, results in full
await check("query", async () => {
  await sql.query(`DELETE FROM ${table}`);
  const inserted = await sql.query(
    `INSERT INTO ${table} (id, name, qty) VALUES ($1, $2, $3), ($4, $5, $6)`,
    [1, "one", 1, 2, "two", 2],
    { fullResults: true },
  );
  const asArrays = await sql.query(`SELECT id, name FROM ${table} ORDER BY id`, [], {
    arrayMode: true,
  });
  const full = await sql.query(`SELECT id, name, qty, note FROM ${table} WHERE id > $1`, [0], {
    fullResults: true,
  });
  const updated = await sql.query(`UPDATE ${table} SET note = $1 WHERE id = $2`, ["n", 2], {
    fullResults: true,
  });
  const empty = await sql.query(`SELECT id FROM ${table} WHERE false`, [], { fullResults: true });
  const ddl = await sql.query(`CREATE TEMP TABLE neon_tmp (x int)`, [], { fullResults: true });
  const multiRow = await sql`SELECT g AS n FROM generate_series(1, ${3}::int) g`;
  return {
    inserted: { command: inserted.command, rowCount: inserted.rowCount, rows: inserted.rows },
    asArrays,
    full: {
      command: full.command,
      rowCount: full.rowCount,
      rowAsArray: full.rowAsArray,
      rows: full.rows,
      fields: full.fields.map((f) => ({ ...f })),
      directFields: (await direct.query(`SELECT id, name, qty, note FROM ${table}`)).fields.map(
        (f) => ({ ...f }),
      ),
    },
    updated: { command: updated.command, rowCount: updated.rowCount },
    empty: { command: empty.command, rowCount: empty.rowCount, rows: empty.rows },
    ddl: { command: ddl.command, rowCount: ddl.rowCount },
    multiRow,
    headers: responses.at(-1).sent,
  };
});

await check("sizes", async () => {
  // a large answer and a large parameter, both ways
  const text = `SELECT g, md5(g::text) AS h, repeat('é', g % 7) AS r FROM generate_series(1, $1::int) g`;
  const door = await sql.query(text, [20000]);
  const mine = await direct.query(text, [20000]);
  const long = "✓é🐘x".repeat(50000);
  const [echo] = await sql`SELECT ${long}::text AS v, length(${long}::text) AS n`;
  return {
    rows: door.length,
    same: JSON.stringify(door) === JSON.stringify(mine.rows),
    echoed: echo.v === long,
    length: echo.n,
    expected: [...long].length,
  };
});

await check("noticesAndUtility", async () => {
  const notice = await sql.query("DO $$ BEGIN RAISE NOTICE 'just saying'; END $$", [], {
    fullResults: true,
  });
  const show = await sql`SHOW server_version_num`;
  const set = await sql.query("SET LOCAL work_mem = '8MB'", [], { fullResults: true });
  return {
    notice: { command: notice.command, rowCount: notice.rowCount, rows: notice.rows },
    show: show.length,
    set: { command: set.command, rows: set.rows },
  };
});

// Pool.query with poolQueryViaFetch: the driver's other HTTP path (no WebSocket opened)
await check("poolViaFetch", async () => {
  neonConfig.poolQueryViaFetch = true;
  const pool = new Pool({ connectionString: connection });
  try {
    const r = await pool.query(
      "SELECT $1::int AS n, $2::jsonb AS j, now() > $3::timestamptz AS later",
      [5, { k: "é" }, new Date(0)],
    );
    const arrays = await pool.query({ text: "SELECT 1 AS a, 'b' AS b", rowMode: "array" });
    return {
      rows: plain(r.rows),
      command: r.command,
      rowCount: r.rowCount,
      fields: r.fields.map((f) => [f.name, f.dataTypeID]),
      arrays: arrays.rows,
    };
  } finally {
    neonConfig.poolQueryViaFetch = false;
    await pool.end();
  }
});

// 4. a hinted read is a miss, then a hit with the same values; other parameters are a miss
await check("cache", async () => {
  const m = `${marker}-hint`;
  const hinted = (mark) => sql`/* cache ttl=60 */ SELECT ce_mark(${mark}) AS m, now() AS at,
    ${{ k: [1, "é"] }}::jsonb AS j, ${Buffer.from("hi")}::bytea AS b, ${1.25}::numeric AS n,
    ${["x", null]}::text[] AS ta, 9007199254740993::int8 AS big`;
  const first = await cached(() => hinted(m));
  const firstAge = lastCache();
  const second = await cached(() => hinted(m));
  const secondAge = lastCache();
  const other = await cached(() => hinted(`${marker}-other`));
  const third = await cached(() => hinted(m));
  return { first, second, other, third, firstAge, secondAge };
});

await check("cacheTypes", async () => {
  // a hit carries PostgreSQL's text as the miss did: the same values through the parsers
  const text = `/* cache ttl=60 */ SELECT $1::int AS i, $2::jsonb AS j, $3::timestamptz AS ts,
    $4::bytea AS b, $5::numeric AS n, $6::text[] AS ta, $7::text AS t, $8::float8 AS f,
    '1 day'::interval AS iv, $9::bool AS nothing`;
  const params = [
    7,
    { a: "é" },
    new Date("2024-01-02T03:04:05.678Z"),
    Buffer.from([1, 2]),
    "0.10",
    ["a", "b"],
    "✓",
    2.5,
    null,
  ];
  const miss = await cached(() => sql.query(text, params));
  const hit = await cached(() => sql.query(text, params));
  const mine = await direct.query(text, params);
  return { miss, hit, direct: plain(mine.rows) };
});

await check("concurrent", async () => {
  // many requests at once, each gets its own answer; identical hinted reads at once
  const own = await Promise.all(
    Array.from({ length: 40 }, (_, i) => sql`SELECT ${i}::int * 2 AS v, pg_sleep(0.005)`),
  );
  const m = `${marker}-together`;
  const before = responses.length;
  const together = await Promise.all(
    Array.from(
      { length: 20 },
      () => sql`/* cache ttl=60 */ SELECT ce_mark(${m}) AS m, pg_sleep(0.2)`,
    ),
  );
  return {
    own: own.map((rows) => rows[0].v),
    together: together.map((rows) => rows[0].m),
    statuses: responses.slice(before).map((r) => r.cache),
  };
});

await check("nul", async () => ({
  door: await failure(() => sql`SELECT ${"a\u0000b"}::text AS t`),
  direct: await failure(() => direct.query("SELECT $1::text AS t", ["a\u0000b"])),
}));

await check("sqlcommenter", async () => {
  const m = `${marker}-commenter`;
  const q = () => sql.query(`SELECT ce_mark($1) AS m /*cache_ttl='60',cache_tags='neon_js'*/`, [m]);
  return { first: await cached(q), second: await cached(q) };
});

await check("uncached", async () => {
  // no hint: never cached, the node sends no cache status
  const q = () => sql`SELECT ${1}::int AS one`;
  return { first: await cached(q), second: await cached(q) };
});

// 5. transactions: sql.transaction([...]) is one HTTP request, one database transaction
await check("transaction", async () => {
  const before = responses.length;
  const [inserted, returned, settings, hinted] = await sql.transaction(
    [
      sql`INSERT INTO ${sql.unsafe(table)} (id, name, qty) VALUES (${10}, ${"ten"}, ${1})`,
      sql.query(`INSERT INTO ${table} (id, name, qty) VALUES ($1, $2, $3) RETURNING id, name`, [
        11,
        "eleven",
        2,
      ]),
      sql`SELECT current_setting('transaction_isolation') AS iso,
        current_setting('transaction_read_only') AS ro, txid_current() = txid_current() AS same`,
      sql`/* cache ttl=60 */ SELECT count(*)::int AS n FROM ${sql.unsafe(table)}`,
    ],
    { isolationLevel: "RepeatableRead" },
  );
  const requests = responses.length - before;
  const sent = responses.at(-1).sent;
  const cache = responses.at(-1).cache;
  const full = await sql.transaction(
    (txn) => [
      txn`UPDATE ${sql.unsafe(table)} SET qty = qty + 1 WHERE id >= ${10}`,
      txn`SELECT id, qty FROM ${sql.unsafe(table)} WHERE id >= ${10} ORDER BY id`,
    ],
    { fullResults: true },
  );
  const readOnly = await sql.transaction(
    [
      sql`SELECT current_setting('transaction_isolation') AS iso,
        current_setting('transaction_read_only') AS ro,
        current_setting('transaction_deferrable') AS d`,
    ],
    { isolationLevel: "Serializable", readOnly: true, deferrable: true },
  );
  const sentReadOnly = responses.at(-1).sent;
  const refused = await failure(() =>
    sql.transaction([sql`INSERT INTO ${sql.unsafe(table)} (id, name) VALUES (${99}, ${"ro"})`], {
      readOnly: true,
    }),
  );
  // one failing statement: nothing of the batch stays (the test checks id 12 is absent)
  const rolledBack = await failure(() =>
    sql.transaction([
      sql`INSERT INTO ${sql.unsafe(table)} (id, name) VALUES (${12}, ${"twelve"})`,
      sql`INSERT INTO ${sql.unsafe(table)} (id, name) VALUES (${10}, ${"again"})`,
    ]),
  );
  const levels = {};
  for (const level of ["ReadUncommitted", "ReadCommitted", "RepeatableRead", "Serializable"]) {
    const [[row]] = await sql.transaction(
      [sql`SELECT current_setting('transaction_isolation') AS iso`],
      { isolationLevel: level },
    );
    levels[level] = row.iso;
  }
  return {
    requests,
    inserted,
    returned,
    settings,
    hinted,
    cache,
    sent,
    full: full.map((r) => ({ command: r.command, rowCount: r.rowCount, rows: r.rows })),
    readOnly,
    sentReadOnly,
    refused,
    rolledBack,
    levels,
  };
});

// 6. errors: the fields neon() copies from the 400 body, against node-postgres's own
const FAILING = {
  unique: [`INSERT INTO ${table} (id, name) VALUES (1, 'dup')`, []],
  check: [`INSERT INTO ${table} (id, name, qty) VALUES ($1, $2, $3)`, [50, "neg", -1]],
  notNull: [`INSERT INTO ${table} (id, name) VALUES ($1, $2)`, [51, null]],
  undefinedColumn: [`SELECT nope FROM ${table}`, []],
  syntax: ["SELEC 1", []],
  divisionByZero: ["SELECT 1 / $1::int", [0]],
  badParam: ["SELECT $1::int AS n", ["not a number"]],
  raise: [
    `DO $$ BEGIN RAISE EXCEPTION 'custom failure' USING DETAIL = 'the detail', HINT = 'a hint',
      ERRCODE = 'P0001', SCHEMA = 'some_schema', TABLE = 'some_table', COLUMN = 'some_column',
      DATATYPE = 'some_type', CONSTRAINT = 'some_constraint'; END $$`,
    [],
  ],
  internalQuery: ["DO $$ BEGIN PERFORM nope; END $$", []],
  undefinedTable: ["SELECT * FROM no_such_table_here", []],
  unicode: ["SELECT 'é✓' || nope", []],
  twoStatements: ["SELECT $1::int; SELECT 2", [1]],
  // through the cache's read path: the same error, positions into the text sent
  hintedUndefinedColumn: [`/* cache ttl=60 */ SELECT 'é', nope FROM ${table}`, []],
  hintedDivision: ["SELECT 1 / $1::int /*cache_ttl='60'*/", [0]],
  hintedBadParam: ["/* cache ttl=60 */ SELECT $1::int AS n", ["x"]],
};

await check("errors", async () => {
  const found = {};
  for (const [name, [text, params]] of Object.entries(FAILING)) {
    let door;
    try {
      await sql.query(text, params);
      door = { noError: true };
    } catch (err) {
      door = {
        ...errorOf(err),
        isNeonDbError: err instanceof NeonDbError,
        status: responses.at(-1).status,
      };
    }
    const mine = await failure(() => direct.query(text, params));
    found[name] = { door, direct: mine };
  }
  // a hint on a write: the node refuses it and nothing is written (the test checks id 60)
  found.hintedWrite = await failure(() =>
    sql.query(`/* cache ttl=60 */ INSERT INTO ${table} (id, name) VALUES (60, 'hinted')`),
  );
  found.emptyBatch = await failure(() => sql.transaction([]));
  // the door still answers after errors
  found.after = await sql`SELECT ${"fine"}::text AS still`;
  return found;
});

await check("auth", async () => {
  const url = new URL(connection);
  url.password = "not-the-key";
  const wrongKey = await failure(() => neon(url.toString())`SELECT 1`);
  const other = new URL(connection);
  other.pathname = "/no_such_database";
  const wrongDatabase = await failure(() => neon(other.toString())`SELECT 1`);
  const bearer = new URL(connection);
  bearer.password = "ignored";
  const token = decodeURIComponent(new URL(connection).password);
  const withToken = await neon(bearer.toString(), { authToken: () => token })`SELECT 2 AS two`;
  return {
    wrongKey,
    wrongDatabase,
    withToken,
    sent: responses.at(-1).sent.Authorization ? "bearer" : null,
  };
});

await direct.end();
print();
