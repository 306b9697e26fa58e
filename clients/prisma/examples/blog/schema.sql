-- What `prisma migrate dev` makes of prisma/schema.prisma (the tests create the tables
-- with this file: Prisma's schema engine cannot be downloaded offline).
CREATE TABLE "User" (
    id serial PRIMARY KEY,
    email text NOT NULL,
    name text
);
CREATE UNIQUE INDEX "User_email_key" ON "User" (email);
CREATE TABLE "Post" (
    id serial PRIMARY KEY,
    title text NOT NULL,
    published boolean NOT NULL DEFAULT false,
    views integer NOT NULL DEFAULT 0,
    "authorId" integer NOT NULL REFERENCES "User" (id) ON DELETE CASCADE ON UPDATE CASCADE
);
