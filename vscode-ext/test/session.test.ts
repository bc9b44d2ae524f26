/* Session against a stand-in CLI (a small node script), so process handling
 * (events, garbage, stderr, SIGTERM -> exit) is tested without a cluster. */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { test } from 'node:test';
import { runJson, CliError, findKbridge } from '../src/cli';
import type { KbridgeEvent } from '../src/events';
import { Session } from '../src/session';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kbridge-ext-test-'));
function script(name: string, body: string): string {
  const p = path.join(dir, name);
  fs.writeFileSync(p, `#!${process.execPath}\n${body}\n`, { mode: 0o755 });
  return p;
}

const fake = script('kbridge', `
const out = (o) => process.stdout.write(JSON.stringify(o) + '\\n');
if (process.argv.includes('--fail')) { out({event:'error',reason:'not_found',message:'services "nope" not found'}); process.exit(1); }
out({event:'progress',step:'inspect',message:'reading service shop/api',elapsed:0.01});
process.stdout.write('not json at all\\n');
process.stderr.write('a log line\\n');
out({event:'ready',route:'alice',mode:'routing',urls:[],header:'kubernetes-route-as: alice',local_port:5000,forwards:[],env:{A:'1'},seconds:0.2});
process.on('SIGTERM', () => { out({event:'disconnected',restored:true}); process.exit(0); });
setInterval(() => {}, 1000);
`);

function spec(args: string[]) {
  return { id: 'x', label: 'kbridge: api', bin: fake, args, namespace: 'shop', service: 'api', replace: false, localPort: 5000 };
}

test('a session goes connecting -> connected -> disconnected, with every event', async () => {
  const events: KbridgeEvent[] = [];
  const garbage: string[] = [];
  const stderr: string[] = [];
  const states: string[] = [];
  const s = new Session(spec([]), {
    event: (_s, e) => events.push(e),
    garbage: (_s, l) => garbage.push(l),
    stderr: (_s, l) => stderr.push(l),
    state: (x) => states.push(x.state),
  });
  s.start();
  const t0 = Date.now();
  while (s.state !== 'connected' && Date.now() - t0 < 10000) await new Promise((r) => setTimeout(r, 20));
  assert.equal(s.state, 'connected');
  assert.equal(s.ready?.env['A'], '1');
  await s.stop();
  assert.equal(s.state, 'disconnected');
  assert.equal(s.restored, true);
  assert.deepEqual(events.map((e) => e.event), ['progress', 'ready', 'disconnected']);
  assert.deepEqual(garbage, ['not json at all']);
  assert.deepEqual(stderr, ['a log line']);
  assert.deepEqual(states, ['connected', 'disconnecting', 'disconnected']);
});

test('an error event fails the session with its reason', async () => {
  const s = new Session(spec(['--fail']), {});
  s.start();
  await s.whenExited();
  assert.equal(s.state, 'failed');
  assert.equal(s.error?.reason, 'not_found');
  assert.equal(s.exitCode, 1);
});

test('a binary that cannot run fails the session, it does not throw', async () => {
  const s = new Session({ ...spec([]), bin: path.join(dir, 'missing') }, {});
  s.start();
  await s.whenExited();
  assert.equal(s.state, 'failed');
  assert.equal(s.error?.reason, 'not_installed');
});

test('runJson returns the JSON and turns error events into CliError', async () => {
  const list = script('list', `process.stdout.write(JSON.stringify(process.argv.includes('bad') ? {event:'error',reason:'forbidden',message:'no right'} : [{service:'api'}]) + '\\n'); process.exit(process.argv.includes('bad') ? 1 : 0);`);
  assert.deepEqual(await runJson(list, ['list']), [{ service: 'api' }]);
  await assert.rejects(runJson(list, ['list', 'bad']), (e: unknown) => e instanceof CliError && e.reason === 'forbidden' && e.message === 'no right');
});

test('findKbridge: setting, PATH, then a checkout build', () => {
  assert.equal(findKbridge(fake, [], ''), fake);
  assert.throws(() => findKbridge('/nonexistent/kbridge', [], ''), /kbridge.path/);
  assert.equal(findKbridge(undefined, [], dir), path.join(dir, 'kbridge'));
  const repo = fs.mkdtempSync(path.join(os.tmpdir(), 'kbridge-repo-'));
  fs.mkdirSync(path.join(repo, 'build/release/local-proxy'), { recursive: true });
  fs.copyFileSync(fake, path.join(repo, 'build/release/local-proxy/kbridge'));
  fs.chmodSync(path.join(repo, 'build/release/local-proxy/kbridge'), 0o755);
  assert.equal(findKbridge(undefined, [path.join(repo, 'vscode-ext')], '/nonexistent'), path.join(repo, 'build/release/local-proxy/kbridge'));
  assert.throws(() => findKbridge(undefined, ['/tmp/none'], '/nonexistent'), /not installed/);
});
