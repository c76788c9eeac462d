// The e2e harness: a real maosic-server (fresh SQLite database, port 0, the built portal),
// real maosic-agent processes on the virtual lab, and Debian's Chromium through playwright-core.
import { spawn } from "node:child_process";
import { mkdtempSync, mkdirSync, readFileSync, writeFileSync, existsSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

export const WEB = resolve(dirname(fileURLToPath(import.meta.url)), "..");
export const ROOT = resolve(WEB, "..");
const TARGET = process.env.CARGO_TARGET_DIR ?? "/var/tmp/maosic-target";
export const SERVER_BIN = process.env.MAOSIC_SERVER_BIN ?? join(TARGET, "debug", "maosic-server");
export const AGENT_BIN = process.env.MAOSIC_AGENT_BIN ?? join(TARGET, "debug", "maosic-agent");
export const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
export const SHOTS = join(WEB, "e2e", "screenshots");

const children = new Set();

export function tempDir() {
  const base = join(tmpdir(), "maosic-web-e2e-");
  return mkdtempSync(base);
}

function pipeLog(child, file) {
  const chunks = [];
  const keep = (d) => {
    chunks.push(d);
    if (chunks.length > 4000) chunks.shift();
  };
  child.stdout?.on("data", keep);
  child.stderr?.on("data", keep);
  child.on("exit", () => writeFileSync(file, Buffer.concat(chunks)));
  return () => Buffer.concat(chunks).toString("utf8");
}

/** Starts the server; resolves with its URL once it printed its one stdout line. */
export async function startServer(dir) {
  for (const bin of [SERVER_BIN, AGENT_BIN]) {
    if (!existsSync(bin)) throw new Error(`${bin} is missing: build it with cargo build -p maosic-server -p maosic-agent`);
  }
  const dist = join(WEB, "dist");
  if (!existsSync(join(dist, "index.html"))) throw new Error(`${dist}/index.html is missing: run npm run build`);
  const child = spawn(SERVER_BIN, ["serve", "--bind", "127.0.0.1:0", "--database", `sqlite://${join(dir, "db.sqlite")}`], {
    cwd: dir,
    // the development mailer: sign-up verification tokens are read back from this file
    env: { ...process.env, MAOSIC_CAMPAIGNS__TICK_MS: "100", MAOSIC_PORTAL_DIR: dist, MAOSIC_MAIL__OUTBOX_FILE: join(dir, "outbox.jsonl"), RUST_LOG: process.env.RUST_LOG ?? "warn" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  children.add(child);
  const log = pipeLog(child, join(dir, "server.log"));
  const url = await new Promise((res, rej) => {
    const t = setTimeout(() => rej(new Error(`server did not announce its address in 30 s:\n${log()}`)), 30_000);
    child.on("exit", (code) => rej(new Error(`server exited (${code}):\n${log()}`)));
    createInterface({ input: child.stdout }).on("line", (line) => {
      const m = /^maosic-server listening on (http:\/\/\S+)$/.exec(line.trim());
      if (m) {
        clearTimeout(t);
        res(m[1]);
      }
    });
  });
  const probe = await fetch(`${url}/`);
  if (probe.status !== 200 || !(await probe.text()).includes('id="root"')) {
    throw new Error(`${SERVER_BIN} does not serve the portal at / (HTTP ${probe.status}): it was built without server/src/portal.rs wired into app.rs, or MAOSIC_PORTAL_DIR=${dist} is not used`);
  }
  return { url, child, log, outbox: join(dir, "outbox.jsonl") };
}

/** The newest e-mail verification token (`mvt_…`) the server mailed to `email`, waiting up to 10 s. */
export async function verificationToken(server, email) {
  const started = Date.now();
  for (;;) {
    const lines = existsSync(server.outbox) ? readFileSync(server.outbox, "utf8").split("\n").filter(Boolean) : [];
    const tokens = lines
      .map((l) => JSON.parse(l))
      .filter((m) => m.to === email)
      .map((m) => /mvt_\S+/.exec(m.body)?.[0])
      .filter(Boolean);
    if (tokens.length > 0) return tokens[tokens.length - 1];
    if (Date.now() - started > 10_000) throw new Error(`no verification mail to ${email} in ${server.outbox}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Runs a command to completion; rejects with its output on failure. */
export function run(bin, args, opts = {}) {
  return new Promise((res, rej) => {
    const child = spawn(bin, args, { stdio: ["ignore", "pipe", "pipe"], ...opts });
    let out = "";
    child.stdout.on("data", (d) => (out += d));
    child.stderr.on("data", (d) => (out += d));
    child.on("exit", (code) => (code === 0 ? res(out) : rej(new Error(`${bin} ${args.join(" ")} exited ${code}:\n${out}`))));
  });
}

/** The virtual lab's config: its default speed (`max`: the discrete-event clock, whose results
 * do not depend on machine load), or `MAOSIC_E2E_SPEED` (a factor, or `max`). */
export function labToml(dir, speed = process.env.MAOSIC_E2E_SPEED ?? "max") {
  const src = readFileSync(join(ROOT, "examples", "agent-lab-virtual.toml"), "utf8");
  const value = speed === "max" ? `"max"` : Number(speed).toFixed(1);
  const out = src.replace(/^speed\s*=.*$/m, `speed = ${value}`);
  if (!/^speed\s*=/m.test(src)) throw new Error("agent-lab-virtual.toml has no speed line");
  const file = join(dir, "lab.toml");
  writeFileSync(file, out);
  return file;
}

/** Enrolls an agent with the token and starts it on the virtual lab. */
export async function startAgent(dir, url, token) {
  const cred = join(dir, "cred.json");
  await run(AGENT_BIN, ["enroll", "--server", url, "--token", token, "--credential-out", cred]);
  const args = ["run", "--server", url, "--credential", cred, "--lab", labToml(dir), "--spool", join(dir, "spool.db")];
  // No priority boost: the virtual lab's event clock stands still while the agent is starved
  // of CPU (the browser and the debug server share two cores), so load slows it, never faults it.
  const child = spawn(AGENT_BIN, args, {
    cwd: dir,
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "warn" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  children.add(child);
  const log = pipeLog(child, join(dir, "agent.log"));
  return { child, log };
}

export async function stopAll() {
  const waits = [];
  for (const c of children) {
    if (c.exitCode === null && c.signalCode === null) {
      waits.push(new Promise((r) => c.once("exit", r)));
      c.kill("SIGTERM");
      setTimeout(() => c.exitCode === null && c.signalCode === null && c.kill("SIGKILL"), 5000).unref();
    }
  }
  await Promise.all(waits);
  children.clear();
}

export async function launchBrowser() {
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: apt-get install -y chromium`);
  // Playwright gives every launch a fresh, empty --user-data-dir of its own.
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
}

/** A GraphQL call from the test itself (to check what the UI did, and for other actors). */
export async function gql(url, token, query, variables = {}) {
  const res = await fetch(`${url}/graphql`, {
    method: "POST",
    headers: { "content-type": "application/json", ...(token ? { authorization: `Bearer ${token}` } : {}) },
    body: JSON.stringify({ query, variables }),
  });
  const body = await res.json();
  return body;
}

export async function waitFor(what, f, timeoutMs = 60_000, everyMs = 200) {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() > until) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

export function shotsDir() {
  mkdirSync(SHOTS, { recursive: true });
  return SHOTS;
}

export function cleanup(dir) {
  if (!process.env.MAOSIC_E2E_KEEP) rmSync(dir, { recursive: true, force: true });
}

/** Minimal RFC 4180 CSV parser (quoted fields, doubled quotes, CRLF or LF). */
export function parseCsv(text) {
  const rows = [];
  let row = [];
  let field = "";
  let q = false;
  for (let i = 0; i < text.length; i++) {
    const ch = text[i];
    if (q) {
      if (ch === '"' && text[i + 1] === '"') {
        field += '"';
        i++;
      } else if (ch === '"') q = false;
      else field += ch;
    } else if (ch === '"') q = true;
    else if (ch === ",") {
      row.push(field);
      field = "";
    } else if (ch === "\n" || ch === "\r") {
      if (ch === "\r" && text[i + 1] === "\n") i++;
      row.push(field);
      rows.push(row);
      row = [];
      field = "";
    } else field += ch;
  }
  if (field !== "" || row.length) {
    row.push(field);
    rows.push(row);
  }
  return rows;
}
