// Measures the dashboard's server time at a backlog: starts `baton dev`
// (BATON_BIN, a release build for figures worth reporting) on a fresh data
// directory, submits TASKS tasks across five stages through the API, walks
// one task through a claim, a handoff and a spawn so its page has a history
// and children, then times GET /ui (the overview) and GET /ui/tasks/{id}
// sequentially over loopback: ROUNDS each, after a warm-up. Prints the
// median, p90 and max in milliseconds. Not a test: nothing is asserted.
//
//   BATON_BIN=target/release/baton TASKS=10000 node measure.mjs
//
// A backlog too large to submit over HTTP (a million tasks) is seeded through
// the store first, into a data directory this script then serves and keeps:
//
//   target/release/baton-harness seed-backlog --data-dir /tmp/ui-1m --tasks 1000000
//   BATON_BIN=target/release/baton DATA_DIR=/tmp/ui-1m TASKS=0 node measure.mjs

import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const BATON = process.env.BATON_BIN || 'target/release/baton';
const TASKS = Number(process.env.TASKS || 10000);
const ROUNDS = Number(process.env.ROUNDS || 30);
const CONCURRENCY = 32;

const dir = process.env.DATA_DIR || mkdtempSync(join(tmpdir(), 'baton-ui-measure-'));
const child = spawn(BATON, ['dev', '--listen', '127.0.0.1:0', '--data-dir', dir], { stdio: ['ignore', 'pipe', 'ignore'] });
const base = await new Promise((ok, fail) => {
  let out = '';
  const timer = setTimeout(() => fail(new Error('baton dev did not start')), 20000);
  child.stdout.on('data', (c) => {
    out += c;
    const m = out.match(/dashboard: (http:\/\/127\.0\.0\.1:\d+)\/ui/);
    if (m) { clearTimeout(timer); ok(m[1]); }
  });
});

async function api(method, path, body) {
  const res = await fetch(base + path, { method, headers: { 'content-type': 'application/json' }, body: body && JSON.stringify(body) });
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${await res.text()}`);
  return res.json();
}

let next = 0;
async function worker() {
  while (next < TASKS) {
    const i = next++;
    await api('POST', '/v1/tasks', { stage: `stage-${i % 5}`, payload: { i, text: 'x'.repeat(200) } });
  }
}
const t0 = performance.now();
await Promise.all(Array.from({ length: CONCURRENCY }, worker));
console.log(`submitted ${TASKS} tasks in ${((performance.now() - t0) / 1000).toFixed(1)} s`);

const task = await api('POST', '/v1/tasks', { stage: 'walk-a', payload: { walk: true } });
const [lease] = (await api('POST', '/v1/claims', { agent: 'bot', stages: ['walk-a'], max: 1 })).leases;
await api('POST', `/v1/tasks/${task.id}/handoff`, { agent: 'bot', epoch: lease.epoch, to_stage: 'walk-b', note: 'on', findings: { k: 1 }, confidence: 0.8 });
const [lease2] = (await api('POST', '/v1/claims', { agent: 'bot2', stages: ['walk-b'], max: 1 })).leases;
await api('POST', `/v1/tasks/${task.id}/spawn`, {
  agent: 'bot2', epoch: lease2.epoch, join: { mode: 'all', within_ms: 600000 },
  children: [{ stage: 'kids', payload: {} }, { stage: 'kids', payload: {} }],
});

async function time(path) {
  for (let i = 0; i < 3; i++) await (await fetch(base + path)).text();
  const ms = [];
  for (let i = 0; i < ROUNDS; i++) {
    const s = performance.now();
    const res = await fetch(base + path);
    await res.text();
    ms.push(performance.now() - s);
    if (res.status !== 200) throw new Error(`${path}: ${res.status}`);
  }
  ms.sort((a, b) => a - b);
  const q = (p) => ms[Math.min(ms.length - 1, Math.floor(p * ms.length))].toFixed(1);
  console.log(`${path.padEnd(48)} median ${q(0.5)} ms  p90 ${q(0.9)} ms  max ${q(1)} ms  (${ROUNDS} rounds)`);
}
await time('/ui');
await time(`/ui/tasks/${task.id}`);
await time('/v1/stats?window=15m');
child.kill('SIGTERM');
if (!process.env.DATA_DIR) rmSync(dir, { recursive: true, force: true });
