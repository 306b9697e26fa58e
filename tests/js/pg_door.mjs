// node-postgres (`pg`) through the PostgreSQL door, for tests/integration/test_pg_js_clients.py.
//
//   node pg_door.mjs <door-url> <direct-url> <table>
//
// <table> (schema-qualified, created by the test) has columns (id int primary key, note text).
// Prints one JSON object: what each check saw, for the Python test to assert on. A check
// that throws records {error, code} instead of stopping the others.
import pg from "pg";

const [doorUrl, directUrl, table] = process.argv.slice(2);
if (!doorUrl || !directUrl || !table) {
  console.error("usage: node pg_door.mjs <door-url> <direct-url> <table>");
  process.exit(2);
}

const out = {};

async function check(name, fn) {
  try {
    out[name] = await fn();
  } catch (err) {
    out[name] = { error: String(err?.message ?? err), code: err?.code ?? null };
  }
}

async function connect(url, extra = {}) {
  const client = new pg.Client({ connectionString: url, ...extra });
  await client.connect();
  return client;
}

function fields(result) {
  return result.fields.map((f) => [f.name, f.dataTypeID]);
}

// A value as JSON can carry it, keeping what the parser made of it visible.
function plain(value) {
  if (value === null || value === undefined) return value ?? null;
  if (value instanceof Date) return { date: value.toISOString() };
  if (Buffer.isBuffer(value)) return { bytes: value.toString("hex") };
  if (Array.isArray(value)) return value.map(plain);
  if (typeof value === "bigint") return { bigint: value.toString() };
  if (typeof value === "object") {
    const entries = Object.entries(value).map(([k, v]) => [k, plain(v)]);
    return { [`${value.constructor?.name ?? "Object"}`]: Object.fromEntries(entries) };
  }
  return value;
}

const TYPES_SQL = `SELECT
  42::int2 AS i2, 2147483647::int4 AS i4, 9223372036854775807::int8 AS i8,
  123456789012345678901234567890.123::numeric AS num, 1.5::float4 AS f4, 0.1::float8 AS f8,
  'NaN'::float8 AS nan, true AS yes, NULL::bool AS maybe,
  'héllo ✓'::text AS txt, 'ab'::char(4) AS padded,
  '2024-02-29'::date AS d, '2024-02-29 13:14:15.123456'::timestamp AS ts,
  '2024-02-29 13:14:15.5+05:30'::timestamptz AS tstz, '1 year 2 mons 3 days 04:05:06.5'::interval AS iv,
  '{"a": [1, 2.5, null], "b": "x"}'::json AS js, '{"b": 1, "a": true}'::jsonb AS jsb,
  '\\x00ff41'::bytea AS bin, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS u,
  ARRAY[1, NULL, 3]::int4[] AS ints, ARRAY['a', 'b c', NULL, '"q"']::text[] AS texts,
  '192.168.0.1/24'::inet AS ip, 12.34::money AS cash, '13:14:15'::time AS t`;

// 1. plain queries
await check("plain", async () => {
  const client = await connect(doorUrl);
  try {
    const one = await client.query("SELECT 1 AS x, 'two' AS y");
    const many = await client.query("SELECT g FROM generate_series(1, 5) g");
    const multi = await client.query("SELECT 1 AS a; SELECT 2 AS b");
    const empty = await client.query("SELECT 1 WHERE false");
    return {
      rows: one.rows,
      command: one.command,
      rowCount: one.rowCount,
      fields: fields(one),
      many: many.rows.map((r) => r.g),
      multi: multi.map((r) => r.rows),
      empty: { rows: empty.rows, rowCount: empty.rowCount },
      database: (await client.query("SELECT current_database() AS db")).rows[0].db,
    };
  } finally {
    await client.end();
  }
});

// 2. parameterized queries (unnamed statements, extended protocol)
await check("params", async () => {
  const client = await connect(doorUrl);
  try {
    const r = await client.query(
      "SELECT $1::int + $2::int AS sum, $3::text AS t, $4::text IS NULL AS isnull, $5::jsonb AS j",
      [40, 2, "héllo", null, JSON.stringify({ k: [1, 2] })],
    );
    let bad;
    try {
      await client.query("SELECT $1::int AS n", ["not a number"]);
    } catch (err) {
      bad = { code: err.code, message: err.message };
    }
    const after = await client.query("SELECT $1::text AS still", ["fine"]);
    return { row: r.rows[0], bad, after: after.rows[0] };
  } finally {
    await client.end();
  }
});

// 3. named prepared statements, used over and over by several clients at once: each client
// parses its statement once and then only binds it, wherever the door's pooling lands it.
// Two clients give the same name different text (names are per session in PostgreSQL).
await check("prepared", async () => {
  const clients = await Promise.all(
    [0, 1, 2, 3, 4, 5].map((i) => connect(doorUrl, { application_name: `js-prepared-${i}` })),
  );
  try {
    const rounds = 15;
    const seen = clients.map(() => []);
    for (let round = 0; round < rounds; round++) {
      await Promise.all(
        clients.map(async (client, i) => {
          const text =
            i % 2 === 0
              ? "SELECT $1::int * 2 AS v, current_setting('application_name') AS app"
              : "SELECT $1::int * 3 AS v, current_setting('application_name') AS app";
          const r = await client.query({ name: "door_q", text, values: [round] });
          const other = await client.query({
            name: "door_other",
            text: `SELECT count(*)::int AS n FROM ${table} WHERE id > $1`,
            values: [-1000 - i],
          });
          seen[i].push([r.rows[0].v, r.rows[0].app, other.rows[0].n]);
        }),
      );
    }
    // an error inside a prepared statement does not break the statement or the client
    let bad;
    try {
      await clients[0].query({ name: "door_cast", text: "SELECT $1::int AS n", values: ["x"] });
    } catch (err) {
      bad = err.code;
    }
    const good = await clients[0].query({ name: "door_cast", text: "SELECT $1::int AS n", values: [7] });
    return { seen, bad, good: good.rows[0].n };
  } finally {
    await Promise.all(clients.map((c) => c.end()));
  }
});

// 4. transactions: COMMIT, ROLLBACK, and a failed transaction (the test checks the table
// directly afterwards: 1 and 4 committed, 2 and 3 not)
await check("transactions", async () => {
  const client = await connect(doorUrl);
  const steps = {};
  try {
    await client.query("BEGIN");
    await client.query(`INSERT INTO ${table} (id, note) VALUES ($1, $2)`, [1, "committed"]);
    steps.inside = (await client.query(`SELECT note FROM ${table} WHERE id = 1`)).rows;
    await client.query("COMMIT");

    await client.query("BEGIN");
    await client.query(`INSERT INTO ${table} (id, note) VALUES ($1, $2)`, [2, "rolled back"]);
    steps.beforeRollback = (await client.query(`SELECT count(*)::int AS n FROM ${table}`)).rows[0].n;
    await client.query("ROLLBACK");
    steps.afterRollback = (await client.query(`SELECT count(*)::int AS n FROM ${table}`)).rows[0].n;

    await client.query("BEGIN");
    await client.query(`INSERT INTO ${table} (id, note) VALUES (3, 'failed tx')`);
    try {
      await client.query("SELECT 1/0");
    } catch (err) {
      steps.failure = err.code;
    }
    try {
      await client.query("SELECT 1");
    } catch (err) {
      steps.aborted = err.code;
    }
    await client.query("ROLLBACK");

    await client.query("BEGIN ISOLATION LEVEL SERIALIZABLE");
    await client.query({
      name: "tx_insert",
      text: `INSERT INTO ${table} (id, note) VALUES ($1, $2) RETURNING id`,
      values: [4, "prepared in tx"],
    });
    steps.isolation = (await client.query("SHOW transaction_isolation")).rows[0].transaction_isolation;
    await client.query("COMMIT");
    steps.ids = (await client.query(`SELECT id FROM ${table} ORDER BY id`)).rows.map((r) => r.id);
    return steps;
  } finally {
    await client.end();
  }
});

// 5. type parsing: the same query through the door and directly must parse identically
await check("types", async () => {
  const results = {};
  for (const [name, url] of [
    ["door", doorUrl],
    ["direct", directUrl],
  ]) {
    const client = await connect(url);
    try {
      const r = await client.query(TYPES_SQL);
      const typed = await client.query({ text: "SELECT $1::int8 AS big, $2::timestamptz AS at", values: ["9007199254740993", new Date(Date.UTC(2024, 0, 2, 3, 4, 5, 678))] });
      results[name] = {
        fields: fields(r),
        row: Object.fromEntries(Object.entries(r.rows[0]).map(([k, v]) => [k, plain(v)])),
        typed: Object.fromEntries(Object.entries(typed.rows[0]).map(([k, v]) => [k, plain(v)])),
        types: Object.fromEntries(Object.entries(r.rows[0]).map(([k, v]) => [k, typeof v])),
      };
    } finally {
      await client.end();
    }
  }
  return results;
});

console.log(JSON.stringify(out));
