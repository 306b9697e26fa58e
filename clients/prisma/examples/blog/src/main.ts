// A short run of the blog against a cache-edge node, printing what it saw as one JSON object
// (tests/integration/test_prisma_kit.py runs it in CI).
import { author, cacheReport, feed, postsPerAuthor, publish, rename, stats } from "./blog.js";
import { prisma } from "./db.js";

const out: Record<string, unknown> = {};

out.feed = [await cacheReport(), await cacheReport()];
const first = await feed();
out.titles = first.map((p) => `${p.title} (${p.author.name})`);
out.stats = await stats();
out.postsPerAuthor = (await postsPerAuthor()).map((g) => [g.authorId, g._count._all]);

const id = await publish("ada@example.com", "Caching at the edge");
const after = await feed().withAccelerateInfo();
out.afterPublish = { newest: after.data[0]?.id === id, cacheStatus: after.info?.cacheStatus };
out.statsAfter = await stats();

const ada = await author(1).withAccelerateInfo();
const again = await author(1).withAccelerateInfo();
out.author = [ada.data?.name, ada.info?.cacheStatus, again.info?.cacheStatus];
await rename(1, "Ada Lovelace");
const renamed = await author(1).withAccelerateInfo();
out.renamed = [renamed.data?.name, renamed.info?.cacheStatus];

await prisma.$disconnect();
console.log(JSON.stringify(out));
