// Smoke test of the `pg` client: node smoke_pg.mjs postgresql://user@host:port/db
// Connects, runs SELECT 1 AS x and prints {"rows": [...], "command": ..., "rowCount": ...}.
import pg from "pg";

const url = process.argv[2];
if (!url) {
  console.error("usage: node smoke_pg.mjs <postgresql-url>");
  process.exit(2);
}
const client = new pg.Client({ connectionString: url });
try {
  await client.connect();
  const result = await client.query("SELECT 1 AS x");
  console.log(
    JSON.stringify({ rows: result.rows, command: result.command, rowCount: result.rowCount }),
  );
} catch (err) {
  console.error(JSON.stringify({ error: String(err?.message ?? err), code: err?.code ?? null }));
  process.exitCode = 1;
} finally {
  await client.end().catch(() => {});
}
