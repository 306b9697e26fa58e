// The blog's data access, written for Prisma Accelerate and unchanged by the migration: the
// same cacheStrategy, withAccelerateInfo() and $accelerate.invalidate() calls.
import { prisma } from "./db.js";

/** The ten latest published posts with their authors' names. */
export function feed() {
  return prisma.post.findMany({
    where: { published: true },
    orderBy: { id: "desc" },
    take: 10,
    select: { id: true, title: true, author: { select: { name: true } } },
    cacheStrategy: { ttl: 60, swr: 60, tags: ["feed"] },
  });
}

export function author(id: number) {
  return prisma.user.findUnique({
    where: { id },
    select: { id: true, name: true, email: true },
    cacheStrategy: { ttl: 300, tags: [`user_${id}`] },
  });
}

export function stats() {
  return prisma.post.aggregate({
    where: { published: true },
    _count: { _all: true },
    _sum: { views: true },
    cacheStrategy: { ttl: 30, tags: ["feed"] },
  });
}

export function postsPerAuthor() {
  return prisma.post.groupBy({
    by: ["authorId"],
    where: { published: true },
    _count: { _all: true },
    orderBy: { authorId: "asc" },
    cacheStrategy: { ttl: 30, tags: ["feed"] },
  });
}

/** A new post: the feed is purged in every region before this returns. */
export async function publish(authorEmail: string, title: string) {
  const post = await prisma.post.create({
    data: { title, published: true, author: { connect: { email: authorEmail } } },
    select: { id: true },
  });
  await prisma.$accelerate.invalidate({ tags: ["feed"] });
  return post.id;
}

export async function rename(id: number, name: string) {
  await prisma.user.update({ where: { id }, data: { name } });
  await prisma.$accelerate.invalidate({ tags: [`user_${id}`, "feed"] });
}

/** How many times each cached read was served from where (withAccelerateInfo). */
export async function cacheReport() {
  const { data, info } = await feed().withAccelerateInfo();
  return { posts: data.length, cacheStatus: info?.cacheStatus ?? "unknown" };
}
