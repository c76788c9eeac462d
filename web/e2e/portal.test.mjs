// End-to-end tests of the portal in real headless Chromium against a real maosic-server and a
// real maosic-agent on the virtual lab. Run with `./web/run-e2e` (or `npm run e2e` in web/).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, readdirSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import {
  ROOT, WEB, cleanup, gql, launchBrowser, parseCsv, shotsDir, startAgent, startServer, stopAll, tempDir, verificationToken, waitFor,
} from "./harness.mjs";

const RECIPE = readFileSync(join(ROOT, "examples", "chirality.recipe"), "utf8");
const OBJECTIVE = "maximize abs(cd_at_exciton)";
const XSS = "<img src=x onerror=alert(1)>";
const LOOPS = Number(process.env.MAOSIC_E2E_LOOPS ?? 20);
const PASSWORD = "correct horse battery staple";

let dir, server, browser, shots;
const figures = {};
const ctx = {}; // state shared by the tests, in order

before(async () => {
  dir = tempDir();
  shots = shotsDir();
  server = await startServer(dir);
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await stopAll();
  writeFileSync(join(WEB, "e2e", "figures.json"), JSON.stringify(figures, null, 2) + "\n");
  console.log(`figures: ${JSON.stringify(figures)}`);
  if (dir) cleanup(dir);
});

/** A page that fails the test on any dialog (alert/confirm/prompt) or uncaught page error. */
async function newPage(width = 1280, height = 800) {
  const context = await browser.newContext({ viewport: { width, height }, acceptDownloads: true });
  const page = await context.newPage();
  page.dialogs = [];
  page.errors = [];
  page.on("dialog", async (d) => {
    page.dialogs.push(`${d.type()}: ${d.message()}`);
    await d.dismiss();
  });
  page.on("pageerror", (e) => page.errors.push(String(e)));
  return page;
}

async function shot(page, name) {
  await page.screenshot({ path: join(shots, `${name}.png`), fullPage: false });
}

async function signUp(page, { name, email, org }) {
  await page.goto(`${server.url}/signup`);
  await page.getByLabel("Name", { exact: true }).fill(name);
  await page.getByLabel("E-mail").fill(email);
  await page.getByLabel("Password").fill(PASSWORD);
  if (org) await page.getByLabel(/Organisation name/).fill(org);
  await page.getByRole("button", { name: "Create account" }).click();
  // the account exists once the mailed token is entered
  await page.getByRole("heading", { name: "Check your e-mail" }).waitFor();
  await page.getByLabel("Verification code").fill(await verificationToken(server, email));
  await page.getByRole("button", { name: "Verify and sign in" }).click();
  await page.getByRole("heading", { name: "Campaigns" }).waitFor();
  // the page keeps no token a script could read: the refresh token is an httpOnly cookie
  assert.equal(await page.evaluate(() => JSON.stringify(localStorage).includes("mrt_") || document.cookie.includes("mrt_")), false);
  const cookies = await page.context().cookies();
  const refresh = cookies.find((c) => c.name === "maosic_refresh");
  assert.ok(refresh?.httpOnly && refresh.sameSite === "Strict" && refresh.path === "/auth", JSON.stringify(cookies));
  // an access token of its own for the API calls the tests make
  const r = await gql(server.url, null, "mutation($e: String!, $p: String!) { logIn(email: $e, password: $p) { accessToken } }", { e: email, p: PASSWORD });
  return r.data.logIn.accessToken;
}

/** Signs in through the sign-in page (a new browser context has no session cookie). */
async function signIn(page, email) {
  await page.goto(`${server.url}/signin`);
  await page.getByLabel("E-mail").fill(email);
  await page.getByLabel("Password").fill(PASSWORD);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("heading", { name: "Campaigns" }).waitFor();
}

test("the server serves the portal with an SPA fallback that never shadows the API", async () => {
  const index = await fetch(`${server.url}/`);
  assert.equal(index.status, 200);
  assert.match(await index.text(), /<div id="root">/);
  const deep = await fetch(`${server.url}/campaigns/some-id`);
  assert.equal(deep.status, 200);
  assert.match(await deep.text(), /<div id="root">/);
  assert.equal(await (await fetch(`${server.url}/healthz`)).text(), "ok\n");
  assert.equal((await fetch(`${server.url}/api/v1/nope`)).status, 404);
  assert.equal((await fetch(`${server.url}/assets/nope.js`)).status, 404);
  const api = await gql(server.url, null, "{ serverInfo { name } }");
  assert.equal(api.data.serverInfo.name, "maosic");
});

test("first load: bundle size and navigation timing", async () => {
  // the production bundle, gzip level 9 like a static server would send it
  const assets = join(WEB, "dist", "assets");
  let raw = 0;
  let gz = 0;
  for (const f of readdirSync(assets)) {
    const b = readFileSync(join(assets, f));
    raw += statSync(join(assets, f)).size;
    gz += gzipSync(b, { level: 9 }).length;
  }
  const html = readFileSync(join(WEB, "dist", "index.html"));
  figures.bundle_raw_kb = +((raw + html.length) / 1024).toFixed(1);
  figures.bundle_gzip_kb = +((gz + gzipSync(html, { level: 9 }).length) / 1024).toFixed(1);
  // cold load in a fresh context (empty cache) of the sign-in page; median of 5
  const runs = [];
  for (let i = 0; i < 5; i++) {
    const page = await newPage();
    await page.goto(`${server.url}/`);
    await page.getByRole("heading", { name: "Sign in to MAOSIC" }).waitFor();
    const t = await page.evaluate(() => {
      const n = performance.getEntriesByType("navigation")[0];
      const fcp = performance.getEntriesByName("first-contentful-paint")[0];
      return { dcl: n.domContentLoadedEventEnd, load: n.loadEventEnd, fcp: fcp ? fcp.startTime : null, ready: performance.now(), transfer: n.transferSize };
    });
    runs.push(t);
    await page.context().close();
  }
  const med = (k) => {
    const v = runs.map((r) => r[k]).filter((x) => typeof x === "number").sort((a, b) => a - b);
    return v.length ? +v[Math.floor(v.length / 2)].toFixed(1) : null;
  };
  figures.first_load_dcl_ms = med("dcl");
  figures.first_load_load_ms = med("load");
  figures.first_load_fcp_ms = med("fcp");
  figures.first_load_interactive_ms = med("ready");
  assert.ok(figures.bundle_gzip_kb < 400, `bundle ${figures.bundle_gzip_kb} kB gzip`);
  assert.ok(figures.first_load_load_ms > 0);
});

test("sign up, create a lab and enroll its agent from the lab page", async () => {
  const page = await newPage();
  ctx.owner = page;
  // a wrong sign-in shows an error, not a crash
  await page.goto(`${server.url}/signin`);
  await page.getByLabel("E-mail").fill("nobody@example.org");
  await page.getByLabel("Password").fill("wrong password!");
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("alert").filter({ hasText: "Sign-in failed" }).waitFor();

  ctx.ownerToken = await signUp(page, { name: "Ada Owner", email: "ada@lab.example", org: "Ada Lab" });
  await page.getByText("No campaigns in this organisation yet").waitFor();
  await shot(page, "01-campaigns-empty");

  await page.getByRole("link", { name: "Labs" }).click();
  await page.getByText("No labs yet").waitFor();
  await page.getByLabel("New lab name").fill("paper-lab");
  await page.getByRole("button", { name: "Create lab" }).click();
  await page.getByRole("heading", { name: /paper-lab/ }).waitFor();
  assert.equal(await page.getByTestId("lab-online").first().textContent(), "offline");
  ctx.labUrl = page.url();
  ctx.labId = ctx.labUrl.split("/").pop();

  await page.getByRole("button", { name: "Create enrollment token" }).click();
  const token = await page.getByTestId("enrollment-token").inputValue();
  const command = await page.getByTestId("enroll-command").textContent();
  assert.ok(token.length > 10);
  assert.ok(command.includes(`maosic-agent enroll --server ${server.url} --token ${token} --credential-out`), command);

  ctx.agent = await startAgent(dir, server.url, token);
  // the labStatus subscription turns the badge online without a reload
  await page.getByTestId("lab-online").first().filter({ hasText: "online" }).waitFor({ timeout: 30_000 });
  await page.getByTestId("devices").getByRole("cell", { name: "H", exact: true }).waitFor();

  // the console's method list is the lab's capability descriptor, as the API gives it
  const api = await gql(server.url, ctx.ownerToken,
    "query($l: ID!) { lab(id: $l) { devices { name methods { name description params { name unit min max step } } } } }", { l: ctx.labId });
  const declared = api.data.lab.devices.flatMap((d) => d.methods.map((m) => `${d.name}.${m.name}`));
  await waitFor("the console lists the descriptor's methods", async () =>
    (await page.getByTestId("console-method").locator("option").count()) === declared.length, 10_000);
  const listed = await page.getByTestId("console-method").locator("option").evaluateAll((os) => os.map((o) => o.value));
  assert.deepEqual(listed, declared);
  assert.ok(listed.includes("P1.status") && listed.includes("UV.acquire"), listed.join(", "));
  await page.getByTestId("console-method").selectOption("H.set_temperature");
  const setT = api.data.lab.devices.find((d) => d.name === "H").methods.find((m) => m.name === "set_temperature");
  const help = await page.getByTestId("console-method-help").textContent();
  assert.ok(help.includes(setT.description), help);
  const T = setT.params[0];
  assert.ok(help.includes(`T [${T.min}–${T.max} ${T.unit}, step ${T.step}]`), help);

  // live readings: the heater's temperature and each pump's flow, polled while the page is open
  const reading = page.getByTestId("temperature-H");
  await page.locator('[data-testid="telemetry"][data-state="LIVE"]').waitFor({ timeout: 20_000 });
  await reading.waitFor();
  const pv0 = Number(await reading.getAttribute("data-pv"));
  assert.ok(Number.isFinite(pv0) && pv0 < 40, `ambient ${pv0}`);
  assert.equal(await page.getByTestId("pumps").locator("tbody tr").count(), 3);
  assert.equal(await page.getByTestId("pump-P1").getAttribute("data-flow"), "0");
  await shot(page, "02-lab");

  // the instruction console: read the heater through the agent
  await page.getByTestId("console-method").selectOption("H.read");
  await page.getByRole("button", { name: "Send" }).click();
  const entry = page.getByTestId("console-log").locator("li").first();
  await entry.waitFor();
  assert.match(await entry.getAttribute("class"), /ok/, await entry.textContent());

  // set_temperature from the console: the live temperature follows without a reload
  const navs = await page.evaluate(() => performance.getEntriesByType("navigation").length);
  await page.getByTestId("console-method").selectOption("H.set_temperature");
  await page.getByTestId("console-params").fill('{"T": 60}');
  await page.getByRole("button", { name: "Send" }).click();
  await page.getByTestId("console-log").locator("li").nth(1).waitFor({ timeout: 60_000 });
  const setEntry = page.getByTestId("console-log").locator("li").first();
  assert.match(await setEntry.getAttribute("class"), /ok/, await setEntry.textContent());
  const started = Date.now();
  await waitFor("the live temperature at the new setpoint", async () =>
    Number(await reading.getAttribute("data-sp")) === 60 && Math.abs(Number(await reading.getAttribute("data-pv")) - 60) < 2, 20_000);
  figures.live_temperature_update_ms = Date.now() - started;
  const pv1 = Number(await reading.getAttribute("data-pv"));
  assert.ok(pv1 - pv0 > 20, `temperature ${pv0} -> ${pv1}`);
  assert.equal(await page.evaluate(() => performance.getEntriesByType("navigation").length), navs, "no reload");
  await page.getByTestId("temperature-trend").waitFor();
  await page.getByRole("heading", { name: "Live readings" }).scrollIntoViewIfNeeded();
  await page.evaluate(() => window.scrollTo(0, 0));
  await shot(page, "02b-lab-live-temperature");
  // a value outside the descriptor's range is refused with the server's message
  await page.getByTestId("console-method").selectOption("H.set_temperature");
  await page.getByTestId("console-params").fill('{"T": 900}');
  await page.getByRole("button", { name: "Send" }).click();
  await page.getByTestId("console-log").locator("li.bad").first().waitFor();
});

test("campaign builder: live diagnostics at line and column, parameter space, create", async () => {
  const page = ctx.owner;
  await page.getByRole("link", { name: "Campaigns" }).click();
  await page.getByRole("link", { name: "New campaign" }).click();
  await page.getByLabel("Name", { exact: true }).fill("chirality e2e");
  // an unknown device: the compiler's diagnostic is shown at its line and column
  const broken = RECIPE.replace("-> H[T = $T]", "-> HX[T = $T]");
  assert.notEqual(broken, RECIPE);
  await page.getByLabel("Recipe").fill(broken);
  const diag = page.getByTestId("diagnostic").first();
  await diag.waitFor({ timeout: 15_000 });
  const lines = broken.split("\n");
  const line = lines.findIndex((l) => l.includes("HX[")) + 1;
  const col = lines[line - 1].indexOf("HX[") + 1;
  const where = await diag.getByRole("button").textContent();
  assert.equal(where, `${line}:${col}`, `diagnostic at ${where}, HX is at ${line}:${col}: ${await diag.textContent()}`);
  assert.ok(await page.getByRole("button", { name: "Create campaign" }).isDisabled());
  await shot(page, "03-builder-diagnostics");

  await page.getByLabel("Recipe").fill(RECIPE);
  await page.getByTestId("compile-ok").waitFor({ timeout: 15_000 });
  const space = await page.getByTestId("space").locator("tbody tr").allTextContents();
  assert.deepEqual(space.map((r) => r.replace(/\s+/g, "")), ["T°C901800.5", "Cmmol/ml0.21.20.01"]);
  await page.getByLabel("Objective").fill(OBJECTIVE);
  await page.getByLabel("Optimizer").selectOption("snobfit");
  await page.getByLabel("Budget (experiments)").fill("250");
  await page.getByLabel("Batch (in flight at once)").fill("1");
  await shot(page, "04-builder");
  await page.getByRole("button", { name: "Create campaign" }).click();
  await page.getByTestId("campaign-name").filter({ hasText: "chirality e2e" }).waitFor();
  ctx.campaignUrl = page.url();
  ctx.campaignId = ctx.campaignUrl.split("/").pop();
});

test(`live view: at least ${LOOPS} loops arrive on the (T, C) map without a reload`, async () => {
  const page = ctx.owner;
  await page.evaluate(() => {
    window.__noReload = "still the same document";
  });
  const map = page.getByTestId("tc-map");
  await map.waitFor();
  const seen = [];
  const start = Date.now();
  await waitFor(
    `${LOOPS} measured points on the map`,
    async () => {
      const n = Number(await map.getAttribute("data-measured"));
      if (seen[seen.length - 1] !== n) seen.push(n);
      if (n >= LOOPS) return true;
      // fail fast, with the reason, when the campaign ended before enough loops were measured
      const c = await gql(server.url, ctx.ownerToken, "query($c: ID!) { campaign(id: $c) { state stateDetail results experiments(first: 3, state: FAILED) { totalCount nodes { seq error outcome } } } }", { c: ctx.campaignId });
      const st = c.data?.campaign;
      if (st && st.state !== "RUNNING") {
        throw new Error(`campaign ${st.state} (${st.stateDetail}) after ${st.results} results with ${n} measured points; ${st.experiments.totalCount} failed, e.g. ${JSON.stringify(st.experiments.nodes)}\nagent log:\n${ctx.agent.log().slice(-2000)}`);
      }
      return false;
    },
    240_000,
    150,
  );
  figures.loops_seen_live = Number(await map.getAttribute("data-measured"));
  figures.live_seconds = +((Date.now() - start) / 1000).toFixed(1);
  figures.distinct_map_updates = seen.length;
  assert.equal(await page.evaluate(() => window.__noReload), "still the same document");
  assert.equal(await page.evaluate(() => performance.getEntriesByType("navigation").length), 1);
  // points came in steps while we watched, not all at once
  assert.ok(seen[0] < LOOPS && seen.length >= 5, `map counts seen: ${seen.join(",")}`);
  assert.ok(Number(await page.getByTestId("live").getAttribute("data-events")) > LOOPS);
  await page.getByTestId("best-plot").waitFor();
  assert.ok(Number(await page.getByTestId("best-plot").getAttribute("data-points")) >= LOOPS);
  // the map agrees with the API
  const api = await gql(server.url, ctx.ownerToken, "query($c: ID!) { campaign(id: $c) { results } }", { c: ctx.campaignId });
  assert.ok(api.data.campaign.results >= LOOPS);
  await shot(page, "05-campaign-live");
});

test("open one experiment: absorption spectrum with fitted peaks, and its CD spectrum", async () => {
  const page = ctx.owner;
  const row = page.getByTestId("data-table").locator('tr[data-state="COMPLETED"]').first();
  await row.waitFor();
  await row.getByRole("link", { name: "Open" }).click();
  await page.getByTestId("experiment-name").waitFor();
  const plot = page.getByTestId("absorption-plot");
  await plot.locator("canvas").waitFor();
  assert.equal(await plot.getAttribute("data-points"), "2048");
  const peaks = Number(await plot.getAttribute("data-peaks"));
  assert.ok(peaks >= 1, `peaks: ${peaks}`);
  const rows = page.getByTestId("peaks-table").locator("tbody tr");
  assert.equal(await rows.count(), peaks);
  const centre = Number((await rows.first().locator("td").nth(2).textContent()).trim());
  assert.ok(centre > 350 && centre < 600, `first peak at ${centre} nm`);
  await page.getByTestId("cd-plot").locator("canvas").waitFor();
  assert.ok(Number(await page.getByTestId("cd-plot").getAttribute("data-points")) > 10);
  // the page's numbers are the API's
  const id = page.url().split("/").pop();
  const e = await gql(server.url, ctx.ownerToken, "query($e: ID!) { experiment(id: $e) { fittedPeaks { peaks { index centerNm } } objectiveValue } }", { e: id });
  assert.equal(e.data.experiment.fittedPeaks.peaks.length, peaks);
  await shot(page, "06-experiment");
  await page.goBack();
  await page.getByTestId("tc-map").waitFor();
});

test("export CSV and JSON: rows match the campaign", async () => {
  const page = ctx.owner;
  const [csvDl] = await Promise.all([page.waitForEvent("download"), page.getByRole("button", { name: "Export CSV" }).click()]);
  const csv = readFileSync(await csvDl.path(), "utf8");
  const rows = parseCsv(csv).filter((r) => r.length > 1);
  const header = rows[0];
  for (const col of ["seq", "experiment_id", "state", "T", "C", "objective"]) assert.ok(header.includes(col), `CSV header ${header}`);
  const api = await gql(
    server.url,
    ctx.ownerToken,
    "query($c: ID!) { campaign(id: $c) { experiments(first: 500) { totalCount nodes { id seq state parameters { name value } objectiveValue } } } }",
    { c: ctx.campaignId },
  );
  // the typed conditions (`[{name, value}]`) as `{T, C}`
  const nodes = api.data.campaign.experiments.nodes.map((n) => ({ ...n, parameters: Object.fromEntries(n.parameters.map((p) => [p.name, p.value])) }));
  const body = rows.slice(1);
  // the engine keeps going while we export: the file holds at least what was done before
  assert.ok(body.length >= LOOPS, `CSV rows: ${body.length}`);
  assert.ok(body.length <= nodes.length);
  const byId = new Map(nodes.map((n) => [n.id, n]));
  const idx = (k) => header.indexOf(k);
  let completed = 0;
  for (const r of body) {
    const n = byId.get(r[idx("experiment_id")]);
    assert.ok(n, `CSV row ${r[idx("experiment_id")]} is an experiment of the campaign`);
    assert.equal(Number(r[idx("seq")]), n.seq);
    assert.equal(Number(r[idx("T")]), n.parameters.T);
    assert.equal(Number(r[idx("C")]), n.parameters.C);
    if (r[idx("state")] === "completed") {
      completed++;
      assert.ok(Math.abs(Number(r[idx("objective")]) - n.objectiveValue) < 1e-9);
      assert.ok(n.parameters.T >= 90 && n.parameters.T <= 180 && n.parameters.C >= 0.2 && n.parameters.C <= 1.2);
    }
  }
  assert.ok(completed >= LOOPS, `completed rows: ${completed}`);
  figures.csv_rows = body.length;

  const [jsonDl] = await Promise.all([page.waitForEvent("download"), page.getByRole("button", { name: "Export JSON" }).click()]);
  const json = JSON.parse(readFileSync(await jsonDl.path(), "utf8"));
  assert.equal(json.campaign.id, ctx.campaignId);
  assert.ok(json.experiments.length >= body.length);

  // the data table's filters ask the server
  await page.getByTestId("filter-state").selectOption("COMPLETED");
  await waitFor("only completed rows", async () => {
    const states = await page.getByTestId("data-table").locator("tbody tr").evaluateAll((trs) => trs.map((t) => t.dataset.state));
    return states.length >= LOOPS && states.every((s) => s === "COMPLETED");
  }, 15_000);
  await page.getByTestId("filter-source").selectOption("manual");
  await page.getByText("No experiments match these filters.").waitFor();
  await page.getByTestId("filter-state").selectOption("");
  await page.getByTestId("filter-source").selectOption("");
});

test("a minimize campaign: the portal reads the direction from the API and plots the running minimum", async () => {
  const page = ctx.owner;
  // the portal no longer parses the objective's text: the direction is the API's typed field
  const made = await gql(
    server.url,
    ctx.ownerToken,
    "mutation($o: ID!, $l: ID!, $r: String!) { createCampaign(organizationId: $o, labId: $l, name: \"minimise e2e\", recipe: $r, objective: \"minimise abs(cd_at_exciton)\", optimizer: \"sobol\", budget: 4, priority: 50, start: true) { id objective objectiveDirection } }",
    { o: await orgOf(ctx.ownerToken), l: ctx.labId, r: RECIPE },
  );
  assert.ok(made.data, JSON.stringify(made.errors));
  assert.equal(made.data.createCampaign.objectiveDirection, "MINIMIZE");
  const id = made.data.createCampaign.id;
  let values = [];
  await waitFor("the minimize campaign to complete", async () => {
    const c = await gql(server.url, ctx.ownerToken, "query($c: ID!) { campaign(id: $c) { state bestValue experiments(first: 10) { nodes { seq objectiveValue } } } }", { c: id });
    const st = c.data?.campaign;
    if (st && ["FAILED", "CANCELED"].includes(st.state)) throw new Error(`the minimize campaign ended ${st.state}`);
    values = (st?.experiments.nodes ?? []).filter((n) => typeof n.objectiveValue === "number").sort((a, b) => a.seq - b.seq).map((n) => n.objectiveValue);
    return st?.state === "COMPLETED";
  }, 180_000, 250);
  assert.ok(values.length >= 2, `values: ${values}`);
  await page.goto(`${server.url}/campaigns/${id}`);
  const objective = page.getByTestId("objective");
  await objective.waitFor();
  assert.equal(await objective.getAttribute("data-direction"), "MINIMIZE");
  assert.match(await objective.textContent(), /smaller is better/);
  const plot = page.getByTestId("best-plot");
  await waitFor("every result on the best-so-far plot", async () => Number(await plot.getAttribute("data-points")) === values.length, 15_000);
  assert.equal(await plot.getAttribute("data-direction"), "MINIMIZE");
  // the best so far is the smallest value, not the largest
  assert.equal(Number(await plot.getAttribute("data-best")), Math.min(...values));
  if (Math.min(...values) !== Math.max(...values)) assert.notEqual(Number(await plot.getAttribute("data-best")), Math.max(...values));
  await shot(page, "05b-campaign-minimize");
});

test("the owner clones, starts, pauses and resumes a campaign", async () => {
  const page = ctx.owner;
  await page.goto(ctx.campaignUrl);
  await page.getByRole("button", { name: "Clone" }).click();
  await page.getByTestId("campaign-name").filter({ hasText: "chirality e2e (copy)" }).waitFor();
  ctx.cloneUrl = page.url();
  ctx.cloneId = ctx.cloneUrl.split("/").pop();
  assert.notEqual(ctx.cloneId, ctx.campaignId);
  const state = async () => (await gql(server.url, ctx.ownerToken, "query($c: ID!) { campaign(id: $c) { state } }", { c: ctx.cloneId })).data.campaign.state;
  assert.equal(await state(), "DRAFT");
  await page.getByRole("button", { name: "Start", exact: true }).click();
  await page.getByRole("button", { name: "Pause" }).waitFor();
  assert.equal(await state(), "RUNNING");
  await page.getByRole("button", { name: "Pause" }).click();
  await page.getByRole("button", { name: "Resume" }).waitFor();
  assert.equal(await state(), "PAUSED");
  await page.getByRole("button", { name: "Resume" }).click();
  await page.getByRole("button", { name: "Pause" }).waitFor();
  assert.equal(await state(), "RUNNING");
});

test("an experiment named like markup renders as text and runs no script", async () => {
  const page = ctx.owner;
  await page.goto(ctx.cloneUrl);
  const form = page.locator("form").filter({ has: page.getByRole("button", { name: "Queue experiment" }) });
  await form.getByLabel(/^T/).fill("130");
  await form.getByLabel(/^C/).fill("0.8");
  await form.getByLabel(/^Name/).fill(XSS);
  await form.getByRole("button", { name: "Queue experiment" }).click();
  const cell = page.getByTestId("data-table").locator("td.name", { hasText: XSS });
  await cell.first().waitFor({ timeout: 30_000 });
  assert.equal((await cell.first().textContent()).trim(), XSS);
  await page.getByTestId("queue").or(cell.first()).first().waitFor();
  // also as a campaign name (through the API), on the list and on its page
  const made = await gql(
    server.url,
    ctx.ownerToken,
    "mutation($o: ID!, $l: ID!, $r: String!, $n: String!) { createCampaign(organizationId: $o, labId: $l, name: $n, recipe: $r, objective: \"maximize abs(cd_at_exciton)\", optimizer: \"sobol\", budget: 1) { id } }",
    { o: (await orgOf(ctx.ownerToken)), l: ctx.labId, r: RECIPE, n: XSS },
  );
  assert.ok(made.data, JSON.stringify(made.errors));
  const p2 = await newPage();
  await signIn(p2, "ada@lab.example");
  await p2.goto(`${server.url}/campaigns`);
  await p2.getByTestId("campaigns-table").getByRole("link", { name: XSS }).waitFor();
  await p2.goto(`${server.url}/campaigns/${made.data.createCampaign.id}`);
  assert.equal(await p2.getByTestId("campaign-name").textContent(), XSS);
  await p2.waitForTimeout(300);
  for (const pg of [page, p2]) {
    assert.equal(await pg.locator('img[src="x"]').count(), 0, "no <img> element was made from the name");
    assert.deepEqual(pg.dialogs, [], "no dialog fired");
    assert.deepEqual(pg.errors, []);
  }
  await p2.context().close();
});

async function orgOf(token) {
  const me = await gql(server.url, token, "{ me { memberships { organization { id } } } }");
  return me.data.me.memberships[0].organization.id;
}

test("a viewer invited through the UI sees the campaign but cannot start or stop it", async () => {
  const page = ctx.owner;
  await page.getByRole("link", { name: "Organisation" }).click();
  const invite = page.locator("form").filter({ has: page.getByRole("button", { name: "Invite" }) });
  await invite.getByLabel("E-mail").fill("vera@viewer.example");
  await invite.getByLabel("Role").selectOption("VIEWER");
  await invite.getByRole("button", { name: "Invite" }).click();
  const token = await page.getByTestId("invitation-token").inputValue();
  assert.ok(token.length > 10);
  await shot(page, "07-organisation");

  const viewer = await newPage();
  const viewerToken = await signUp(viewer, { name: "Vera Viewer", email: "vera@viewer.example" });
  await viewer.getByRole("link", { name: "Organisation" }).click();
  await viewer.getByLabel("Invitation token").fill(token);
  await viewer.getByLabel("Invitation token").press("Enter"); // keyboard submit
  await viewer.getByRole("status").filter({ hasText: "You joined Ada Lab" }).waitFor();
  await waitFor("the switcher on the new organisation", async () => /Ada Lab \(viewer\)/.test(await viewer.getByTestId("org-switcher").locator("option:checked").textContent()), 10_000);
  await viewer.goto(ctx.cloneUrl);
  await viewer.getByTestId("campaign-name").waitFor();
  // the campaign is running: an owner would see Pause and Cancel here
  const clone = await gql(server.url, ctx.ownerToken, "query($c: ID!) { campaign(id: $c) { state stateDetail } }", { c: ctx.cloneId });
  // when not: the lab's live readings say why its agent refuses (e.g. a latched safety fault)
  const why = clone.data.campaign.state === "RUNNING" ? null
    : await gql(server.url, ctx.ownerToken, "query($l: ID!) { lab(id: $l) { telemetry { state detail } } }", { l: ctx.labId });
  assert.equal(clone.data.campaign.state, "RUNNING", `the clone is not running: ${JSON.stringify(clone.data.campaign)}\nlab: ${JSON.stringify(why?.data?.lab?.telemetry)}\nagent log:\n${ctx.agent.log().slice(-2000)}`);
  await viewer.locator(".titlebar .badge", { hasText: "running" }).waitFor();
  await viewer.getByTestId("read-only").waitFor();
  for (const name of ["Start", "Pause", "Resume", "Cancel campaign", "Queue experiment"]) {
    assert.equal(await viewer.getByRole("button", { name, exact: true }).count(), 0, `viewer sees ${name}`);
  }
  await viewer.getByTestId("tc-map").waitFor();
  await shot(viewer, "08-campaign-viewer");
  // and the API refuses it too (the UI is not the fence)
  const r = await gql(server.url, viewerToken, "mutation($c: ID!) { pauseCampaign(id: $c) { state } }", { c: ctx.cloneId });
  assert.equal(r.errors?.[0]?.extensions?.code, "FORBIDDEN", JSON.stringify(r));
  await viewer.context().close();
});

test("another organisation's campaign and experiment URLs show not-found", async () => {
  const outsider = await newPage();
  await signUp(outsider, { name: "Otto Outsider", email: "otto@else.example", org: "Elsewhere" });
  await outsider.goto(ctx.campaignUrl);
  await outsider.getByTestId("not-found").waitFor();
  assert.equal(await outsider.getByTestId("campaign-name").count(), 0);
  await shot(outsider, "09-not-found");
  const api = await gql(server.url, ctx.ownerToken, "query($c: ID!) { campaign(id: $c) { bestExperimentId } }", { c: ctx.campaignId });
  await outsider.goto(`${server.url}/experiments/${api.data.campaign.bestExperimentId}`);
  await outsider.getByTestId("not-found").waitFor();
  await outsider.goto(ctx.labUrl);
  await outsider.getByTestId("not-found").waitFor();
  await outsider.context().close();
});

test("API tokens: the secret is shown once, works, and stops working when revoked", async () => {
  const page = ctx.owner;
  await page.getByRole("link", { name: "API tokens" }).click();
  await page.getByText("No API tokens yet.").waitFor();
  await page.getByLabel("Name").fill("notebook");
  await page.getByLabel("Scope").selectOption("READ");
  await page.getByRole("button", { name: "Create token" }).click();
  const secret = await page.getByTestId("token-secret").inputValue();
  assert.match(secret, /^mat_/);
  const ok = await gql(server.url, secret, "{ me { email } }");
  assert.equal(ok.data?.me?.email, "ada@lab.example");
  await shot(page, "10-tokens");
  await page.getByRole("button", { name: "I have copied it" }).click();
  assert.equal(await page.getByTestId("token-secret").count(), 0);
  await page.getByRole("button", { name: "Revoke notebook" }).click();
  await page.getByTestId("tokens-table").getByText(/^revoked/).waitFor();
  const bad = await gql(server.url, secret, "{ me { email } }");
  assert.ok(bad.errors?.length, "a revoked token is refused");
});

test("the owner cancels; narrow layout; the lab's software stop", async () => {
  const page = ctx.owner;
  await page.goto(ctx.cloneUrl);
  await page.getByRole("button", { name: "Cancel campaign" }).click();
  await page.locator(".titlebar .badge", { hasText: "canceled" }).waitFor();
  const c = await gql(server.url, ctx.ownerToken, "query($c: ID!) { campaign(id: $c) { state } }", { c: ctx.cloneId });
  assert.equal(c.data.campaign.state, "CANCELED");
  assert.equal(await page.getByRole("button", { name: "Pause" }).count(), 0);

  await page.goto(ctx.campaignUrl);
  await page.getByTestId("tc-map").waitFor();
  // narrow window: the layout stacks without horizontal scrolling of the page
  await page.setViewportSize({ width: 390, height: 844 });
  await page.waitForTimeout(200);
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  const wide = await page.evaluate(() =>
    [...document.querySelectorAll("body *")]
      .filter((e) => {
        if (e.getBoundingClientRect().right <= window.innerWidth + 1) return false;
        for (let p = e.parentElement; p && p !== document.body; p = p.parentElement) if (getComputedStyle(p).overflowX !== "visible") return false;
        return true;
      })
      .slice(0, 5)
      .map((e) => {
        const chain = [];
        for (let p = e; p && p !== document.body; p = p.parentElement) chain.push(`${p.tagName.toLowerCase()}${p.className ? "." + String(p.className).split(" ")[0] : ""}${p.dataset?.testid ? "#" + p.dataset.testid : ""}`);
        return `${chain.reverse().join(" > ")} (${Math.round(e.getBoundingClientRect().right)}px)`;
      }),
  );
  assert.ok(overflow <= 1, `page is ${overflow}px wider than a narrow window: ${wide.join(", ")}`);
  await shot(page, "11-campaign-narrow");
  await page.setViewportSize({ width: 1280, height: 800 });

  await page.goto(ctx.labUrl);
  await page.getByRole("button", { name: "Stop lab…" }).click();
  await page.getByRole("button", { name: "Confirm software stop" }).click();
  await page.getByRole("status").filter({ hasText: "Stopped" }).waitFor({ timeout: 30_000 });
  // The stop latched: the owner resets it, with a reason.
  await page.getByTestId("reset-reason").fill("stopped from the portal test");
  await page.getByRole("button", { name: "Reset faults" }).click();
  const reset = page.getByTestId("reset-result");
  await reset.waitFor({ timeout: 30_000 });
  assert.match(await reset.textContent(), /Cleared 1 fault\(s\) \(e stop\); no fault is latched/);
  await shot(page, "12-lab-fault-reset");
  assert.deepEqual(page.dialogs, []);
  assert.deepEqual(page.errors, []);
});
