// Baton's dashboard, end to end, in a real headless Chromium (Debian's
// `chromium`, driven by playwright-core; no browser is downloaded).
//
// Goal: a person can do in the browser what the dashboard promises (take an
// escalated task from the inbox and resolve it by clicking; read a task's
// timeline, lineage and chain; abort a task one holds; see a webhook's
// deliveries; acknowledge an alert), only operators and
// admins sign in, forms without the session's CSRF token are refused, every
// action is recorded under the person's principal, pages pass an automated
// accessibility check, and the browser talks to nothing but the server.
//
// Method: a real `baton dev` (auth off) on a data directory seeded with an
// anomaly (`baton-harness seed-anomaly`) and a workflow whose `pack` stage
// escalates after 1 s, and a real `baton serve` (auth on) for sign-in, roles,
// CSRF and principals. Tasks are driven through the HTTP API as agents would;
// the browser does what a person does. Screenshots of every page at laptop
// and phone widths go to BATON_SCREENSHOTS (default target/ui-screenshots).
//
// Environment: BATON_BIN and BATON_HARNESS_BIN (built binaries), CHROMIUM
// (default /usr/bin/chromium).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execFileSync } from 'node:child_process';
import { createServer } from 'node:http';
import { writeFileSync } from 'node:fs';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, '../../..');
const BATON = process.env.BATON_BIN || join(repo, 'target/debug/baton');
const HARNESS = process.env.BATON_HARNESS_BIN || join(repo, 'target/debug/baton-harness');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const SHOTS = process.env.BATON_SCREENSHOTS || join(repo, 'target/ui-screenshots');
const WORKFLOW = readFileSync(join(here, 'workflow.toml'), 'utf8');
const axeSource = readFileSync(join(here, 'node_modules/axe-core/axe.min.js'), 'utf8');

/// Bounds: every wait in these tests ends by one of these.
const START_MS_MAX = 20_000;
const ESCALATION_MS_MAX = 15_000;
const WIDTHS = [
  { name: 'laptop', width: 1280, height: 800 },
  { name: 'phone', width: 390, height: 844 },
];

const servers = [];
const dirs = [];
let browser;

/// Starts `baton ARGS` and resolves with its base URL (and the admin token
/// `serve` prints on an empty database) once it prints its dashboard line.
function start(args) {
  return new Promise((ok, fail) => {
    const child = spawn(BATON, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, RUST_LOG: 'warn' } });
    servers.push(child);
    let out = '';
    const timer = setTimeout(() => fail(new Error(`baton ${args[0]} did not start in time:\n${out}`)), START_MS_MAX);
    child.stdout.on('data', (chunk) => {
      out += chunk;
      const ui = out.match(/dashboard: (http:\/\/127\.0\.0\.1:\d+)\/ui/);
      const ready = /Press Ctrl-C to stop/.test(out);
      if (ui && ready) {
        clearTimeout(timer);
        const token = out.match(/^\s+(baton_[0-9a-f]+_[0-9a-f]+)\s*$/m);
        ok({ base: ui[1], token: token && token[1], child });
      }
    });
    child.stderr.on('data', () => {});
    child.on('exit', (code) => fail(new Error(`baton ${args[0]} exited (${code}):\n${out}`)));
  });
}

async function api(base, method, path, body, token) {
  const headers = { 'content-type': 'application/json' };
  if (token) headers.authorization = `Bearer ${token}`;
  const res = await fetch(base + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  const json = text ? JSON.parse(text) : null;
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${text}`);
  return json;
}

/// Submits an `orders` task, has `intake-bot` hand it to `pack`, and waits
/// until nobody packing it escalates it to the desk.
async function escalatedTask(base, tokens = {}) {
  const task = await api(base, 'POST', '/v1/tasks', { workflow: 'orders', payload: { order: Math.floor(Math.random() * 1e6) } }, tokens.submit);
  const claim = await api(base, 'POST', '/v1/claims', { stages: ['intake'], max: 1, wait_ms: 0, ...(tokens.agent ? {} : { agent: 'intake-bot' }) }, tokens.agent);
  const lease = claim.leases.find((l) => l.task === task.id);
  assert.ok(lease, 'intake-bot claimed the task');
  await api(base, 'POST', `/v1/tasks/${task.id}/handoff`, {
    epoch: lease.epoch, to_stage: 'pack', note: 'stock checked', findings: { items: 3 }, confidence: 0.9,
    ...(tokens.agent ? {} : { agent: 'intake-bot' }),
  }, tokens.agent);
  const deadline = Date.now() + ESCALATION_MS_MAX;
  while (Date.now() < deadline) {
    const t = await api(base, 'GET', `/v1/tasks/${task.id}`, undefined, tokens.submit);
    if (t.stage === 'desk') return task.id;
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`task ${task.id} did not escalate within ${ESCALATION_MS_MAX} ms`);
}

/// A browser page whose every request is recorded.
async function newPage(context) {
  const page = await context.newPage();
  page.requests = [];
  page.on('request', (r) => page.requests.push(r.url()));
  return page;
}

/// No serious or critical axe-core violation on the page as it is.
async function accessible(page, what) {
  await page.addScriptTag({ content: axeSource });
  const result = await page.evaluate(async () => await window.axe.run(document, { resultTypes: ['violations'] }));
  const bad = result.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  assert.deepEqual(
    bad.map((v) => `${v.id} (${v.impact}): ${v.help} at ${v.nodes.map((n) => n.target.join(' ')).join('; ')}`),
    [],
    `accessibility violations on ${what}`,
  );
}

/// Screenshots at every width; at the phone's, axe runs again (tables and
/// drawings that scroll sideways there must still be reachable by keyboard).
async function shoot(page, name) {
  for (const size of WIDTHS) {
    await page.setViewportSize({ width: size.width, height: size.height });
    await page.screenshot({ path: join(SHOTS, `${name}-${size.name}.png`), fullPage: true });
    if (size.name === 'phone') {
      await accessible(page, `${name} at phone width`);
      // Nothing but the scrolling tables and drawings is wider than a phone.
      const width = await page.evaluate(() => document.documentElement.scrollWidth);
      assert.ok(width <= size.width, `${name} is ${width} px wide on a ${size.width} px phone`);
    }
  }
  await page.setViewportSize({ width: WIDTHS[0].width, height: WIDTHS[0].height });
}

/// Every request the page made went to `base`, and at least `min` were made.
function onlyTo(page, base, min) {
  assert.ok(page.requests.length >= min, `at least ${min} requests recorded, got ${page.requests.length}`);
  const origin = new URL(base).origin;
  const elsewhere = page.requests.filter((u) => new URL(u).origin !== origin);
  assert.deepEqual(elsewhere, [], `requests left ${origin}`);
  assert.equal(new URL(base).hostname, '127.0.0.1');
}

before(async () => {
  mkdirSync(SHOTS, { recursive: true });
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});

after(async () => {
  if (browser) await browser.close();
  for (const s of servers) s.kill('SIGTERM');
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

/// A webhook receiver on loopback that accepts every notice.
async function receiver() {
  const notices = [];
  const server = createServer((req, res) => {
    let body = '';
    req.on('data', (c) => { body += c; });
    req.on('end', () => { notices.push(body); res.writeHead(204); res.end(); });
  });
  await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
  return { server, notices, url: `http://127.0.0.1:${server.address().port}/baton` };
}

test('baton dev: every page, the inbox flow, a task, an alert', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'baton-ui-dev-'));
  dirs.push(dir);
  execFileSync(HARNESS, ['seed-anomaly', '--data-dir', dir]);
  const hook = await receiver();
  t.after(() => hook.server.close());
  const config = join(dir, 'baton.toml');
  writeFileSync(config, `[[webhooks]]\nname = "desk-pager"\nurl = "${hook.url}"\nsecret = "a-test-secret-of-32-bytes-000000"\nkinds = ["handoff", "alert"]\n`);
  const { base } = await start(['dev', '--listen', '127.0.0.1:0', '--data-dir', dir, '--config', config]);
  await api(base, 'POST', '/v1/workflows', { source: WORKFLOW });
  const context = await browser.newContext({ viewport: WIDTHS[0], bypassCSP: true });
  const page = await newPage(context);
  const visited = [];
  const visit = async (path, name) => {
    const res = await page.goto(base + path);
    assert.equal(res.status(), 200, `GET ${path}`);
    visited.push(path);
    await accessible(page, path);
    await shoot(page, name);
  };

  await t.test('/ redirects to the dashboard, which needs no sign-in with auth off', async () => {
    const res = await page.goto(base + '/');
    assert.equal(new URL(page.url()).pathname, '/ui');
    assert.equal(res.status(), 200);
    await page.getByText('authentication off').first().waitFor();
  });

  await t.test('inbox: from escalation to resolution by clicking', async () => {
    const id = await escalatedTask(base);
    await visit('/ui/inbox', 'inbox');
    const row = page.locator('#inbox tbody tr', { has: page.locator(`a[href="/ui/tasks/${id}"]`) });
    await assert.doesNotReject(row.waitFor());
    assert.match(await row.innerText(), /not claimed at pack/, 'why it is here');
    assert.match(await row.innerText(), /\bpack\b/, 'from which stage');
    await row.getByRole('button', { name: /Claim/ }).click();
    await page.waitForURL(`**/ui/tasks/${id}?done=claimed*`);
    await page.getByText('You hold the task now').waitFor();
    // The history is there to read before deciding.
    assert.match(await page.locator('#timeline').innerText(), /escalated/);
    await visit(`/ui/tasks/${id}`, 'task-held');
    await page.getByLabel('Hand back to a stage').check();
    await page.getByLabel('Stage (for a hand-back)').selectOption('ship');
    await page.getByLabel('Note for the history').fill('packed by hand at the desk');
    await page.getByRole('button', { name: 'Resolve' }).click();
    await page.waitForURL(`**/ui/tasks/${id}?done=resolved`);
    const task = await api(base, 'GET', `/v1/tasks/${id}`);
    assert.equal(task.stage, 'ship');
    const history = await api(base, 'GET', `/v1/tasks/${id}/history`);
    const last = history.events.at(-1);
    assert.equal(last.actor, 'agent:operator', 'recorded under the dev operator');
    assert.equal(last.note, 'packed by hand at the desk');
  });

  await t.test("a task's timeline, lineage tree and chain", async () => {
    const parent = await api(base, 'POST', '/v1/tasks', { workflow: 'orders', payload: { order: 'with-children' } });
    const claim = await api(base, 'POST', '/v1/claims', { agent: 'intake-bot', stages: ['intake'], max: 1, wait_ms: 0 });
    const lease = claim.leases.find((l) => l.task === parent.id);
    await api(base, 'POST', `/v1/tasks/${parent.id}/spawn`, {
      agent: 'intake-bot', epoch: lease.epoch, join: { mode: 'all', within_ms: 600000 },
      children: [{ stage: 'notify', payload: { to: 'email' } }, { stage: 'notify', payload: { to: 'sms' } }],
    });
    await visit(`/ui/tasks/${parent.id}`, 'task-lineage');
    const timeline = await page.locator('#timeline').innerText();
    assert.match(timeline, /submitted/);
    assert.match(timeline, /spawned/);
    assert.match(timeline, /intake-bot/);
    assert.match(await page.locator('#steps').innerText(), /intake-bot/);
    const children = page.locator('#tree ul ul a');
    assert.equal(await children.count(), 2, 'both children in the tree');
    assert.match(await page.locator('#chain').innerText(), /Verified: \d+ events/);
    await children.first().click();
    await page.getByText('Parent').first().waitFor();
    assert.ok(await page.locator(`a[href="/ui/tasks/${parent.id}"]`).count() >= 1, 'the child links back');
  });

  await t.test('an operator holding a task aborts it, and its compensation runs', async () => {
    const task = await api(base, 'POST', '/v1/tasks', { workflow: 'orders', payload: { order: 'abort-me' } });
    const claim = await api(base, 'POST', '/v1/claims', { agent: 'intake-bot', stages: ['intake'], max: 1, wait_ms: 0 });
    const lease = claim.leases.find((l) => l.task === task.id);
    await api(base, 'POST', `/v1/tasks/${task.id}/handoff`, { agent: 'intake-bot', epoch: lease.epoch, to_stage: 'ship' });
    const held = await api(base, 'POST', '/v1/claims', { agent: 'operator', stages: ['ship'], max: 10, wait_ms: 0 });
    assert.ok(held.leases.some((l) => l.task === task.id), 'the operator holds the task in ship');
    await page.goto(`${base}/ui/tasks/${task.id}`);
    await page.getByLabel('Reason', { exact: true }).first().waitFor();
    await page.locator('#abort-reason').fill('customer withdrew the order');
    await page.getByRole('button', { name: 'Abort' }).click();
    await page.waitForURL(`**/ui/tasks/${task.id}?done=aborted`);
    const after = await api(base, 'GET', `/v1/tasks/${task.id}`);
    assert.equal(after.state, 'blocked', 'blocked on its compensation');
    const lineage = await api(base, 'GET', `/v1/tasks/${task.id}/lineage`);
    assert.deepEqual(lineage.tree.children.map((c) => c.stage), ['unpack']);
    assert.equal(await page.locator('#tree ul ul a').count(), 1, 'the compensation task in the tree');
  });

  await t.test('webhook deliveries, per webhook', async () => {
    const deadline = Date.now() + ESCALATION_MS_MAX;
    while (Date.now() < deadline && (await api(base, 'GET', '/v1/deliveries')).deliveries.length === 0) {
      await new Promise((r) => setTimeout(r, 200));
    }
    await visit('/ui/webhooks', 'webhooks');
    assert.match(await page.locator('main h2').first().innerText(), /desk-pager/);
    assert.match(await page.locator('main table').first().innerText(), /delivered \(204\)/);
    assert.ok(hook.notices.length >= 1, 'the receiver got the notices');
  });

  await t.test('an anomaly acknowledged', async () => {
    await visit('/ui/alerts', 'alerts');
    const row = page.locator('#alerts tbody tr', { hasText: 'intake -> pack' });
    await row.getByRole('button', { name: /Acknowledge/ }).click();
    await page.waitForURL('**/ui/alerts?done=acked');
    await page.getByLabel('Show').selectOption('all');
    await page.getByRole('button', { name: 'Filter' }).click();
    assert.match(await page.locator('#alerts tbody tr', { hasText: 'intake -> pack' }).innerText(), /by anonymous/);
    const open = await api(base, 'GET', '/v1/alerts');
    assert.equal(open.anomalies.length, 0, 'no alert is open any more');
  });

  await t.test('every other page renders, passes axe, and is screenshot', async () => {
    await visit('/ui', 'overview');
    assert.match(await page.locator('#stages').innerText(), /pack/);
    // The overview refreshes itself.
    await page.waitForRequest((r) => r.url().endsWith('/ui/live'), { timeout: 10_000 });
    await visit('/ui/stuck', 'stuck');
    await visit('/ui/edges?window=1h', 'edges');
    assert.match(await page.locator('#stage-edges').innerText(), /intake → pack/);
    await visit('/ui/series?edge=intake%3Apack&window=1h', 'edge-chart');
    await page.locator('#chart-latency canvas').waitFor();
    await visit('/ui/series?stage=pack&window=1h', 'stage-chart');
    await visit('/ui/workflows', 'workflows');
    await visit('/ui/workflows/orders', 'workflow');
    assert.equal(await page.locator('svg.workflow .node').count(), 6);
    assert.ok(await page.locator('svg.workflow .edge.escalate').count() >= 1, 'the ladder is drawn');
  });

  await t.test('keyboard: the skip link and the navigation are reachable by Tab', async () => {
    await page.goto(base + '/ui');
    await page.keyboard.press('Tab');
    assert.equal(await page.evaluate(() => document.activeElement.textContent), 'Skip to content');
    await page.keyboard.press('Enter');
    assert.equal(await page.evaluate(() => location.hash), '#main');
  });

  await t.test('every request went to the server on loopback', () => {
    onlyTo(page, base, visited.length);
    for (const path of visited) {
      assert.ok(page.requests.some((u) => u.startsWith(base + path)), `a request for ${path}`);
    }
  });
  await context.close();
});

test('baton serve: sign-in, roles, CSRF, actions under the person', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'baton-ui-serve-'));
  dirs.push(dir);
  const { base, token: admin } = await start(['serve', '--listen', '127.0.0.1:0', '--data-dir', dir]);
  assert.ok(admin, 'serve printed the first admin token');
  await api(base, 'POST', '/v1/workflows', { source: WORKFLOW }, admin);
  await api(base, 'POST', '/v1/principals', { name: 'olga', role: 'operator' }, admin);
  await api(base, 'POST', '/v1/principals', {
    name: 'intake-bot', role: 'agent', stages: ['intake'], routes: [{ from: 'intake', to: 'pack' }],
  }, admin);
  const olga = await api(base, 'POST', '/v1/tokens', { principal: 'olga' }, admin);
  const bot = await api(base, 'POST', '/v1/tokens', { principal: 'intake-bot' }, admin);
  const context = await browser.newContext({ viewport: WIDTHS[0], bypassCSP: true });
  const page = await newPage(context);

  const signIn = async (token) => {
    await page.goto(base + '/ui/signin');
    await page.getByLabel('API token').fill(token);
    return Promise.all([page.waitForNavigation(), page.getByRole('button', { name: 'Sign in' }).click()]);
  };

  await t.test('pages need a session', async () => {
    await page.goto(base + '/ui/inbox');
    assert.equal(new URL(page.url()).pathname, '/ui/signin');
    await accessible(page, 'sign-in');
    await shoot(page, 'signin');
  });

  await t.test('a bad token is refused', async () => {
    const [res] = await signIn('baton_0000000000000000_' + '0'.repeat(64));
    assert.equal(res.status(), 401);
    assert.match(await page.locator('#signin-error').innerText(), /not valid/);
    assert.equal((await context.cookies()).length, 0, 'no session cookie');
  });

  await t.test("an agent's token is refused", async () => {
    const [res] = await signIn(bot.token);
    assert.equal(res.status(), 403);
    assert.match(await page.locator('#signin-error').innerText(), /only operators and admins/);
    assert.equal((await context.cookies()).length, 0, 'no session cookie');
  });

  let id;
  await t.test("an operator signs in: an HttpOnly, SameSite=Strict cookie", async () => {
    id = await escalatedTask(base, { submit: admin, agent: bot.token });
    const [res] = await signIn(olga.token);
    assert.equal(res.status(), 200);
    await page.getByText('Signed in as').waitFor();
    assert.match(await page.locator('.who').innerText(), /olga/);
    const [cookie] = await context.cookies();
    assert.equal(cookie.name, 'baton_session');
    assert.equal(cookie.httpOnly, true);
    assert.equal(cookie.sameSite, 'Strict');
    assert.equal(await page.evaluate(() => document.cookie), '', 'scripts cannot read the session');
    await shoot(page, 'overview-signed-in');
  });

  await t.test('a form post without the CSRF token is refused and changes nothing', async () => {
    await page.goto(`${base}/ui/tasks/${id}`);
    const status = await page.evaluate(async (taskId) => {
      const res = await fetch(`/ui/tasks/${taskId}/cancel`, {
        method: 'POST', body: new URLSearchParams({ reason: 'forged' }),
      });
      return res.status;
    }, id);
    assert.equal(status, 403);
    const task = await api(base, 'GET', `/v1/tasks/${id}`, undefined, admin);
    assert.equal(task.state, 'waiting', 'the task is unchanged');
    assert.notEqual(task.cancel_reason, 'forged');
  });

  await t.test("the person's actions are recorded under their principal", async () => {
    await page.goto(`${base}/ui/inbox`);
    const row = page.locator('#inbox tbody tr', { has: page.locator(`a[href="/ui/tasks/${id}"]`) });
    await row.getByRole('button', { name: /Claim/ }).click();
    await page.waitForURL(`**/ui/tasks/${id}?done=claimed*`);
    await page.getByLabel('Complete').check();
    await page.getByRole('button', { name: 'Resolve' }).click();
    await page.waitForURL(`**/ui/tasks/${id}?done=resolved`);
    const history = await api(base, 'GET', `/v1/tasks/${id}/history`, undefined, admin);
    const actors = history.events.slice(-2).map((e) => e.actor);
    assert.deepEqual(actors, ['agent:olga', 'agent:olga'], 'the claim and the resolution');
    // Cancel through the form (with its token) on another task.
    const other = await escalatedTask(base, { submit: admin, agent: bot.token });
    await page.goto(`${base}/ui/tasks/${other}`);
    await page.getByLabel('Reason', { exact: true }).fill('duplicate order');
    await page.getByRole('button', { name: 'Cancel task' }).click();
    await page.waitForURL(`**/ui/tasks/${other}?done=cancelled`);
    const cancelled = await api(base, 'GET', `/v1/tasks/${other}/history`, undefined, admin);
    assert.equal(cancelled.events.at(-1).actor, 'principal:olga');
  });

  await t.test('revoking the token ends the session', async () => {
    await api(base, 'DELETE', `/v1/tokens/${olga.id}`, undefined, admin);
    await page.goto(`${base}/ui/inbox`);
    assert.equal(new URL(page.url()).pathname, '/ui/signin');
    await page.getByText('Your session ended').waitFor();
    onlyTo(page, base, 8);
  });
  await context.close();
});
