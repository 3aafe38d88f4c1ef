// A real Better Auth server for taskledger's interop tests (tests/api/test_better_auth_interop.py).
//
// Environment:
//   PORT                    port to listen on, on 127.0.0.1 (required)
//   BETTER_AUTH_DB          SQLite file; created and migrated when missing (required)
//   BETTER_AUTH_URL         Better Auth's baseURL (default http://127.0.0.1:PORT)
//   BETTER_AUTH_SECRET      encrypts the private keys at rest (default: a fixed test secret)
//   JWT_ALG                 EdDSA | ES256 | ES512 | PS256 | RS256 (unset: the plugin's default)
//   JWKS_ROTATION_SECONDS   the jwt plugin's jwks.rotationInterval (unset: no rotation)
//
// Besides Better Auth under /api/auth/*, two routes exist for the tests only:
//   POST /test/make-admin {"email": …}  sets that user's role to "admin" in the database
//   GET  /test/stats                    {"jwks_requests": n}: how often the JWKS was fetched
//
// Prints one line "READY <url>" on stdout once it listens.

import { createServer } from "node:http";

import Database from "better-sqlite3";
import { betterAuth } from "better-auth";
import { getMigrations } from "better-auth/db/migration";
import { toNodeHandler } from "better-auth/node";
import { admin, jwt } from "better-auth/plugins";

const port = Number.parseInt(process.env.PORT ?? "", 10);
const dbPath = process.env.BETTER_AUTH_DB;
if (!Number.isInteger(port) || port <= 0 || !dbPath) {
  console.error("PORT and BETTER_AUTH_DB are required");
  process.exit(2);
}
const baseURL = process.env.BETTER_AUTH_URL || `http://127.0.0.1:${port}`;
const secret =
  process.env.BETTER_AUTH_SECRET || "interop-test-secret-not-for-production-0123456789";
const alg = process.env.JWT_ALG || undefined;
const rotation = process.env.JWKS_ROTATION_SECONDS
  ? Number(process.env.JWKS_ROTATION_SECONDS)
  : undefined;

const jwks = {};
if (alg) jwks.keyPairConfig = { alg };
if (rotation) jwks.rotationInterval = rotation;

const database = new Database(dbPath);
const options = {
  appName: "taskledger-interop",
  baseURL,
  secret,
  database,
  emailAndPassword: { enabled: true },
  // Many sign-ups from one address in a few seconds are the point of a test run.
  rateLimit: { enabled: false },
  telemetry: { enabled: false },
  plugins: [jwt({ jwks }), admin()],
};

const { runMigrations } = await getMigrations(options);
await runMigrations();

const auth = betterAuth(options);
const authHandler = toNodeHandler(auth);
const makeAdmin = database.prepare(`UPDATE "user" SET "role" = 'admin' WHERE "email" = ?`);
let jwksRequests = 0;

async function readJson(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return JSON.parse(Buffer.concat(chunks).toString("utf8") || "{}");
}

function sendJson(res, status, body) {
  res.writeHead(status, { "content-type": "application/json" });
  res.end(JSON.stringify(body));
}

const server = createServer(async (req, res) => {
  try {
    const path = new URL(req.url ?? "/", baseURL).pathname;
    if (req.method === "POST" && path === "/test/make-admin") {
      const { email } = await readJson(req);
      const { changes } = makeAdmin.run(String(email));
      sendJson(res, changes ? 200 : 404, { updated: changes });
    } else if (req.method === "GET" && path === "/test/stats") {
      sendJson(res, 200, { jwks_requests: jwksRequests });
    } else if (path.startsWith("/api/auth/")) {
      if (path === "/api/auth/jwks") jwksRequests += 1;
      await authHandler(req, res);
    } else {
      sendJson(res, 404, { error: "not found" });
    }
  } catch (error) {
    console.error(error);
    if (!res.headersSent) sendJson(res, 500, { error: String(error) });
    else res.end();
  }
});

for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => {
    server.close();
    database.close();
    process.exit(0);
  });
}

server.listen(port, "127.0.0.1", () => {
  console.log(`READY http://127.0.0.1:${port}`);
});
