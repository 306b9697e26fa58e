// Prisma 7 reads the database URL from here (for `prisma migrate`, `prisma studio`); the
// application itself connects through its driver adapter (src/db.ts). Migrations need the
// database itself, not a cache-edge node: DIRECT_DATABASE_URL.
import { defineConfig } from "prisma/config";

export default defineConfig({
  schema: "prisma/schema.prisma",
  datasource: { url: process.env.DIRECT_DATABASE_URL ?? "" },
});
