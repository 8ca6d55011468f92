// The helpdesk console, end to end in headless Chromium (Debian's `chromium`, driven by
// playwright-core; no browser download) against a running `sessiongate demo`.
// Run by tests/it/console_browser.rs, which starts the demo and passes:
//   SG_URL          the demo's base URL (http://127.0.0.1:PORT)
//   SG_OPERATOR_KEY the demo's operator API key
//   SG_AUDITOR_KEY  the demo's auditor API key
//   SG_TOKEN        the demo user's Entra-style access token (no role: self-service only)
//   SG_USER         a user with one session (the demo user)
//   SG_OTHER_USER   a user with sessions in several pools (for the job step)
//   SG_THIRD_USER   another user with sessions in several pools (for the message step)
//   SG_ARTIFACTS    where screenshots go (one per step)
//   CHROMIUM        the chromium executable
// Exits 0 when every step passed; otherwise prints the failed step and exits 1.

import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const env = (name) => {
  const v = process.env[name];
  if (!v) {
    console.error(`console.spec: ${name} is not set`);
    process.exit(2);
  }
  return v;
};
const URL_ = env("SG_URL").replace(/\/$/, "");
const OPERATOR = env("SG_OPERATOR_KEY");
const AUDITOR = env("SG_AUDITOR_KEY");
const TOKEN = env("SG_TOKEN");
const USER = env("SG_USER");
const OTHER_USER = env("SG_OTHER_USER");
const THIRD_USER = env("SG_THIRD_USER");
const ARTIFACTS = env("SG_ARTIFACTS");
const CHROMIUM = env("CHROMIUM");
const TICKET = `INC-BROWSER-${Date.now()}`;
const WAIT = { timeout: 20_000 };

mkdirSync(ARTIFACTS, { recursive: true });

let stepNo = 0;
let page;
const problems = [];

function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
}

async function shot(name) {
  stepNo += 1;
  const file = join(ARTIFACTS, `${String(stepNo).padStart(2, "0")}-${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  console.log(`  screenshot ${file}`);
}

async function step(name, fn) {
  console.log(`step: ${name}`);
  await fn();
  check(problems.length === 0, `no CSP violation or script error so far: ${problems.join(" | ")}`);
}

async function text(selector) {
  return (await page.locator(selector).first().textContent()) ?? "";
}

async function storage() {
  return page.evaluate(() => ({
    session: sessionStorage.getItem("sessiongate.console.credential"),
    local: localStorage.length,
  }));
}

async function signIn(key) {
  await page.locator("#credential").fill(key);
  await page.locator("#credential").press("Enter");
}

async function signOut() {
  await page.locator("#signout").click();
  await page.locator("#signin-view").waitFor({ state: "visible", ...WAIT });
}

async function search(upn) {
  await page.locator("#upn").fill(upn);
  const before = await text("#search-status");
  await page.locator("#upn").press("Enter");
  await page.waitForFunction(
    ([b, u]) => {
      const s = document.getElementById("search-status").textContent;
      return s !== b && s.includes(`of ${u}`);
    },
    [before, upn],
    WAIT
  );
}

async function sessionRows() {
  return page.locator("#sessions-body tr").evaluateAll((rows) => rows.map((r) => r.dataset.session));
}

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions"],
});
let failed = null;
try {
  const context = await browser.newContext({ viewport: { width: 1366, height: 768 } });
  page = await context.newPage();
  page.on("console", (m) => {
    const t = m.text();
    if (/Content Security Policy|Refused to/i.test(t)) problems.push(`console: ${t}`);
  });
  page.on("pageerror", (e) => problems.push(`script error: ${e.message}`));

  await step("the console loads under its CSP and asks for a credential", async () => {
    const r = await page.goto(`${URL_}/`);
    check(r.status() === 200, `GET / is 200 (got ${r.status()})`);
    const csp = r.headers()["content-security-policy"] || "";
    check(csp.includes("default-src 'none'") && csp.includes("script-src 'self'"), `strict CSP: ${csp}`);
    await page.locator("#signin-view").waitFor({ state: "visible", ...WAIT });
    check(await page.locator("#credential").evaluate((e) => e === document.activeElement), "the credential field has focus");
    await shot("sign-in");
  });

  await step("a wrong key is refused: 401, its problem title shown, nothing kept", async () => {
    const probe = await fetch(`${URL_}/hostpools`, { headers: { Authorization: "Bearer sg_this_key_does_not_exist_000000" } });
    check(probe.status === 401, `the API answers 401 to a wrong key (got ${probe.status})`);
    const title = (await probe.json()).title;
    await signIn("sg_this_key_does_not_exist_000000");
    await page.waitForFunction(() => document.getElementById("signin-error").textContent.trim() !== "", null, WAIT);
    const shown = await text("#signin-error");
    check(shown === title, `the problem's title "${title}" is shown (got "${shown}")`);
    check(await page.locator("#app-view").isHidden(), "still on sign-in");
    const s = await storage();
    check(s.session === null && s.local === 0, `no credential kept: ${JSON.stringify(s)}`);
    await shot("wrong-key-401");
  });

  await step("an Entra ID token signs in; without a role the search is 403 naming the permission", async () => {
    await page.locator('input[name="kind"][value="token"]').check();
    await signIn(TOKEN);
    await page.locator("#app-view").waitFor({ state: "visible", ...WAIT });
    check((await text("#who")).includes("access token"), "signed in with a token");
    await page.locator("#upn").fill(USER);
    await page.locator("#upn").press("Enter");
    await page.waitForFunction(() => document.getElementById("app-error").dataset.status === "403", null, WAIT);
    const shown = await text("#app-error");
    check(shown.includes("missing permission: sessions.read"), `403 shown: ${shown}`);
    await shot("token-403");
    await signOut();
    check((await storage()).session === null, "signing out forgets the token");
    await page.locator('input[name="kind"][value="apikey"]').check();
  });

  await step("the operator key signs in (kept in session storage only)", async () => {
    await signIn(OPERATOR);
    await page.locator("#app-view").waitFor({ state: "visible", ...WAIT });
    check((await text("#who")).includes("avd-demo"), "the pools the key may see are named");
    const s = await storage();
    check(s.session !== null && s.session.includes(OPERATOR), "the key is in session storage");
    check(s.local === 0, "nothing in local storage");
    await shot("signed-in");
  });

  let target;
  await step(`search ${USER}: their sessions are listed`, async () => {
    await search(USER);
    const rows = await sessionRows();
    check(rows.length >= 1, `sessions listed: ${rows}`);
    target = rows[0];
    const cells = await page.locator("#sessions-body tr").first().locator("td").allTextContents();
    check(cells[4] === USER, `the row names the user: ${cells}`);
    check(["active", "disconnected"].includes(cells[3]), `the row has a state: ${cells}`);
    await shot("sessions");
  });

  await step("dry-run logoff of one session shows would_do and changes nothing", async () => {
    // By keyboard: the row's Select button with Enter picks the session and moves focus on to
    // the action, with a visible focus ring.
    await page.locator(`#sessions-body tr[data-session="${target}"] button`).focus();
    await page.keyboard.press("Enter");
    check((await page.locator("#target").inputValue()) === target, "the row's Select picks it as target");
    const focus = await page.evaluate(() => {
      const a = document.activeElement;
      return { id: a.id, outline: getComputedStyle(a).outlineStyle };
    });
    check(focus.id === "action" && focus.outline !== "none", `focus moved to the action, visibly: ${JSON.stringify(focus)}`);
    await page.locator("#action").selectOption("logoff");
    await page.locator("#reason").fill("browser test: hung profile");
    await page.locator("#ticket").fill(TICKET);
    await page.locator("#preview-button").click();
    await page.locator("#preview").waitFor({ state: "visible", ...WAIT });
    const outcomes = await page.locator("#preview-body .outcome").allTextContents();
    check(outcomes.length === 1 && outcomes[0] === "would_do", `preview says would_do: ${outcomes}`);
    await shot("dry-run-would-do");
  });

  await step("confirming logs the session off: done", async () => {
    await page.locator("#confirm-button").click();
    await page.locator("#results").waitFor({ state: "visible", ...WAIT });
    const outcomes = await page.locator("#results-body .outcome").allTextContents();
    check(outcomes.length === 1 && outcomes[0] === "done", `result is done: ${outcomes}`);
    await shot("logoff-done");
  });

  await step("searching again: the session is gone", async () => {
    await page.locator("#search-button").click();
    await page.waitForFunction(
      (t) => !document.querySelector(`#sessions-body tr[data-session="${t}"]`),
      target,
      WAIT
    );
    check(!(await sessionRows()).includes(target), "the logged-off session is not listed");
    await shot("session-gone");
  });

  await step("the operator may not read the audit log: 403 names the missing permission", async () => {
    await page.locator("#tab-audit").click();
    await page.locator("#audit-ticket").fill(TICKET);
    await page.locator("#audit-ticket").press("Enter");
    await page.waitForFunction(() => document.getElementById("app-error").dataset.status === "403", null, WAIT);
    const shown = await text("#app-error");
    check(shown.includes("missing permission: audit.read"), `403 shown: ${shown}`);
    await shot("audit-403");
  });

  await step(`every session of ${OTHER_USER}, disconnected as a job, followed to the end`, async () => {
    await page.locator("#tab-sessions").click();
    await search(OTHER_USER);
    const n = (await sessionRows()).length;
    check(n >= 2, `${OTHER_USER} has sessions in several pools: ${n}`);
    await page.locator("#target").selectOption("*");
    await page.locator("#action").selectOption("disconnect");
    await page.locator("#ticket").fill(TICKET);
    await page.locator("#async").check();
    await page.locator("#preview-button").click();
    await page.locator("#preview").waitFor({ state: "visible", ...WAIT });
    const outcomes = await page.locator("#preview-body .outcome").allTextContents();
    check(outcomes.length === n && outcomes.every((o) => o === "would_do"), `dry run of all: ${outcomes}`);
    await page.locator("#confirm-button").click();
    await page.locator("#job").waitFor({ state: "visible", ...WAIT });
    await page.waitForFunction(
      () => !["queued", "running", undefined].includes(document.getElementById("job-state").dataset.state),
      null,
      { timeout: 60_000 }
    );
    const state = await page.locator("#job-state").getAttribute("data-state");
    check(state === "succeeded", `the job succeeded: ${await text("#job-state")}`);
    const done = await page.locator("#job-items .outcome").allTextContents();
    check(done.length === n && done.every((o) => o === "done"), `each item done: ${done}`);
    await page.waitForFunction(() => document.querySelectorAll("#jobs-body tr").length > 0, null, WAIT);
    await shot("job-succeeded");
  });

  await step(`a message to every session of ${THIRD_USER}, previewed then sent`, async () => {
    await page.locator("#tab-sessions").click();
    await search(THIRD_USER);
    const n = (await sessionRows()).length;
    check(n >= 2, `${THIRD_USER} has sessions in several pools: ${n}`);
    await page.locator("#target").selectOption("*");
    await page.locator("#action").selectOption("message");
    await page.locator("#async").uncheck();
    check(await page.locator("#msg-title").isVisible(), "the message fields appear");
    check(await page.locator("#force").isHidden(), "force is for logoff only");
    await page.locator("#msg-title").fill("Maintenance <b>tonight</b>");
    await page.locator("#msg-body").fill("Please save your work & log off by 18:00.");
    await page.locator("#preview-button").click();
    await page.locator("#preview").waitFor({ state: "visible", ...WAIT });
    const preview = await page.locator("#preview-body .outcome").allTextContents();
    check(preview.length === n && preview.every((o) => o === "would_do"), `dry run: ${preview}`);
    await page.locator("#confirm-button").click();
    await page.locator("#results").waitFor({ state: "visible", ...WAIT });
    const sent = await page.locator("#results-body .outcome").allTextContents();
    check(sent.length === n && sent.every((o) => o === "done"), `sent: ${sent}`);
    check((await page.locator("#results-body .summary").textContent()).includes(`done ${n}`), "the summary counts them");
    await shot("message-sent");
  });

  await step("an auditor sees the ticket's audit trail", async () => {
    await signOut();
    check((await storage()).session === null, "signing out forgets the credential");
    await signIn(AUDITOR);
    await page.locator("#app-view").waitFor({ state: "visible", ...WAIT });
    await page.locator("#tab-audit").click();
    await page.locator("#audit-ticket").fill(TICKET);
    await page.locator("#audit-button").click();
    await page.waitForFunction(() => document.querySelectorAll("#audit-body tr").length > 0, null, WAIT);
    const rows = await page
      .locator("#audit-body tr")
      .evaluateAll((trs) => trs.map((tr) => [...tr.children].map((td) => td.textContent)));
    check(rows.every((r) => r[6] === TICKET), "every event carries the ticket");
    check(rows.some((r) => r[2] === "logoff" && r[3] === "done"), `the logoff's outcome is there: ${JSON.stringify(rows)}`);
    check(rows.some((r) => r[2] === "disconnect" && r[3] === "done"), "the job's disconnects are there");
    await shot("audit-trail");
  });

  await step("signing out returns to sign-in", async () => {
    await signOut();
    const s = await storage();
    check(s.session === null && s.local === 0, "nothing kept");
    await shot("signed-out");
  });
} catch (e) {
  failed = e;
  try {
    if (page) await shot("FAILED");
  } catch (_) {
    // the page may be gone
  }
} finally {
  await browser.close();
}
if (failed) {
  console.error(`console.spec FAILED: ${failed.stack || failed}`);
  process.exit(1);
}
console.log("console.spec: all steps passed");
