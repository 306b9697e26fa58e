// The Prisma client of the blog, after the move from Accelerate to a cache-edge node
// (docs/migrate-from-accelerate.md). This file is the whole migration: src/blog.ts is the
// code that ran on Accelerate, unchanged.
//
//   DATABASE_URL        the node's PostgreSQL door: postgresql://<tenant>:<api key>@<node>:6432/<db>
//   CACHE_EDGE_URL      the same node's HTTP API, for $accelerate.invalidate()
//   CACHE_EDGE_API_KEY  an API key of the tenant (the password in DATABASE_URL will do)
import { cacheEdgeComments, cacheEdgePool, withCacheEdge } from "@cache-edge/prisma";
import { PrismaPg } from "@prisma/adapter-pg";
import pg from "pg";

import { PrismaClient } from "./generated/prisma/client.js";

// cacheEdgePool: lets withAccelerateInfo() ask the door how it served a statement
const pool = cacheEdgePool(new pg.Pool({ connectionString: process.env.DATABASE_URL }));

export const prisma = new PrismaClient({
  adapter: new PrismaPg(pool, { disposeExternalPool: true }), // $disconnect() ends the pool
  comments: [cacheEdgeComments()], // carries each query's cacheStrategy to the node
}).$extends(withCacheEdge({ url: process.env.CACHE_EDGE_URL, apiKey: process.env.CACHE_EDGE_API_KEY }));
