// The same client as it was on Prisma Accelerate, before the migration (kept to show the
// difference, and type-checked in CI against the unchanged src/blog.ts).
import { withAccelerate } from "@prisma/extension-accelerate";

import { PrismaClient } from "./generated/prisma/client.js";

export const prisma = new PrismaClient({
  accelerateUrl: process.env.DATABASE_URL!, // prisma://accelerate.prisma-data.net/?api_key=...
}).$extends(withAccelerate());
