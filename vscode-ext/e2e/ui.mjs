// ui.mjs: the editor half of the VS Code end-to-end test (tests/vscode/
// test_vscode.py is the cluster half and starts this). It drives code-server
// in Debian's chromium with playwright-core, the way a person would: keys and
// typed answers, no extension API calls.
//
// The workspace has two folders (shop-api, shop-store): multi-root.
//  1. The extension is active: the status bar says "kbridge: disconnected".
//  2. Configure wizard through its QuickPicks: folder shop-api, context,
//     namespace (the restricted user may not list namespaces: typed), Service
//     api, local port, "Route my requests only", route key alice, "New:
//     Node.js", program.
//  3. api.js opened, a breakpoint set on its request handler (F9), F5: the
//     status bar reaches "connected as alice to api" (time measured).
//  4. A request with alice's header, from the frontend pod, stops the debugger
//     on that line (time measured); while it is paused, a request without the
//     key is answered by the real pods; Continue: alice's request gets the
//     local answer, with the pod's config map and secret values in its env.
//  5. Shift+F5: the debug session ends, kbridge disconnects, the status bar
//     says disconnected, and the cluster equals its state before.
//  6. Two sessions at once: the wizard again for folder shop-store, Service
//     store, "Attach later"; its task run by hand connects store; F5 again
//     (warm: measured) connects api: the status bar shows both; the status bar
//     menu disconnects store; Shift+F5 api; the cluster is as before.
//  7. Error path: a task for a Service that does not exist, run by hand, shows
//     the error notification with "Show log"; the cluster is unchanged.
// Screenshots: wizard.png, paused.png, statusbar-connected.png,
// statusbar-two.png, error-notification.png (and failure.png when a step
// fails) in $KB_OUT.
// Protocol with the harness: one JSON line each way (see test_vscode.py).
import { createInterface } from 'node:readline';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { chromium } from 'playwright-core';
import { applyEdits, modify } from 'jsonc-parser';

const URL_ = process.env.KB_URL;
const WS = path.join(process.env.KB_WS, 'shop-api');
const STORE_WS = path.join(process.env.KB_WS, 'shop-store');
const OUT = process.env.KB_OUT;
const LOCAL_PORT = Number(process.env.KB_LOCAL_PORT);
const LOCAL_PORT2 = Number(process.env.KB_LOCAL_PORT2);
const T0 = Date.now();
const log = (m) => console.error(`[ui ${((Date.now() - T0) / 1000).toFixed(1).padStart(6)}s] ${m}`);

const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function ask(cmd) {
  process.stdout.write(JSON.stringify(cmd) + '\n');
  const r = await lines.next();
  if (r.done) throw new Error(`harness went away during ${cmd.cmd}`);
  const a = JSON.parse(r.value);
  if (!a.ok) throw new Error(`harness: ${cmd.cmd}: ${a.error}`);
  return a;
}

function expect(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
  log(`ok: ${what}`);
}

let page;
async function shot(name) {
  const f = path.join(OUT, name);
  await page.screenshot({ path: f });
  log(`screenshot ${f}`);
}

async function until(what, fn, timeoutMs) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn().catch(() => undefined);
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs / 1000} s waiting for ${what}`);
    await page.waitForTimeout(150);
  }
}

const statusText = () => page.locator('.statusbar-item', { hasText: 'kbridge:' }).first().innerText();
async function statusIs(re, timeoutMs) {
  return until(`the status bar to match ${re}`, async () => re.test(await statusText()), timeoutMs);
}

async function quickTitle(part, timeoutMs = 30000) {
  await until(`the quick input "${part}"`, async () => {
    const w = page.locator('.quick-input-widget');
    if (!(await w.isVisible())) return false;
    return (await w.locator('.quick-input-title').innerText()).includes(part);
  }, timeoutMs);
}

// Type into the quick input (replacing what is there) and accept. For a pick,
// wait until the focused row shows the text.
async function answer(text, { pick = false, row = text } = {}) {
  const input = page.locator('.quick-input-widget .quick-input-box input');
  await input.fill(text);
  if (pick) {
    await until(`a row "${row}"`, async () => (await page.locator('.quick-input-list .monaco-list-row.focused').first().innerText()).includes(row), 10000);
  }
  await page.keyboard.press('Enter');
}

const escapeRe = (s) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

// Type text, then click the row whose label is exactly label (fuzzy matching
// may put another row first).
async function choose(text, label = text) {
  await page.locator('.quick-input-widget .quick-input-box input').fill(text);
  const row = page.locator('.quick-input-list .monaco-list-row').filter({ has: page.locator('.label-name', { hasText: new RegExp(`^${escapeRe(label)}$`) }) }).first();
  await until(`a row "${label}"`, () => row.isVisible(), 10000);
  await row.click();
}

async function command(title) {
  await page.keyboard.press('F1');
  await until('the command palette', () => page.locator('.quick-input-widget .quick-input-box input').isVisible(), 10000);
  await choose('>' + title, title);
}

// The wizard's first question in a multi-root workspace.
async function folderPick(name) {
  await until('the folder pick', async () => ((await page.locator('.quick-input-box input').getAttribute('placeholder')) ?? '').includes('Which folder'), 20000);
  await choose(name);
}

async function notification(re, timeoutMs) {
  return until(`a notification matching ${re}`, async () => {
    const toasts = await page.locator('.notification-toast').allInnerTexts();
    return toasts.find((t) => re.test(t));
  }, timeoutMs);
}

async function main() {
  fs.mkdirSync(OUT, { recursive: true });
  const timings = {};
  const browser = await chromium.launch({
    executablePath: process.env.KB_CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  });
  try {
    const ctx = await browser.newContext({ viewport: { width: 1440, height: 900 } });
    page = await ctx.newPage();
    // The workbench's own console (warnings and errors), for diagnosing a failed run.
    const consoleLog = fs.createWriteStream(path.join(OUT, 'browser-console.log'));
    page.on('console', (m) => { if (m.type() === 'error' || m.type() === 'warning') consoleLog.write(`[${m.type()}] ${m.text()}\n`); });
    try {
      await run(timings);
    } catch (e) {
      await shot('failure.png').catch(() => undefined);
      throw e;
    }
  } finally {
    await browser.close();
  }
  process.stdout.write(JSON.stringify({ cmd: 'done', timings }) + '\n');
}

async function run(timings) {
  // 1. the editor, the extension active
  await page.goto(`${URL_}/?workspace=${encodeURIComponent(path.join(process.env.KB_WS, 'shop.code-workspace'))}`);
  await page.waitForSelector('.monaco-workbench', { timeout: 90000 });
  await statusIs(/kbridge: disconnected/, 90000);
  expect(true, 'the extension is active: status bar "kbridge: disconnected"');

  // 2. the Configure wizard
  await command('kbridge: Configure a service for debugging');
  await folderPick('shop-api');
  await quickTitle('(1/8)');
  await page.keyboard.press('Enter'); // the current context, listed first
  await quickTitle('(2/8)');
  await answer('shop'); // typed: the restricted user may not list namespaces
  await quickTitle('(3/8)');
  await until('the Service list with api and its ports', async () => (await page.locator('.quick-input-list').innerText()).includes('8080→8080'), 20000);
  const listed = await page.locator('.quick-input-list').innerText();
  expect(!/\bmanual\b/.test(listed) && (await page.locator('.quick-input-box input').getAttribute('placeholder')).includes('1 not shown'),
    'a Service without a selector (manual) is not offered, and the wizard says one is hidden');
  await shot('wizard.png');
  await answer('api', { pick: true });
  await quickTitle('(5/8)');
  expect((await page.locator('.quick-input-box input').inputValue()) === '8080', 'the local port defaults to the service port (8080, free here)');
  await answer(String(LOCAL_PORT));
  await quickTitle('(6/8): route');
  await answer('Route my requests only', { pick: true });
  await quickTitle('(6/8): route key');
  await answer('Alice'); // refused: not a DNS label
  await until('the route key validation message', async () => (await page.locator('.quick-input-widget').innerText()).includes('upper-case'), 5000);
  expect(true, 'an invalid route key is refused with the reason');
  await answer('alice');
  await quickTitle('(7/8)');
  await answer('New: Node.js', { pick: true });
  await quickTitle('(8/8)');
  expect((await page.locator('.quick-input-box input').inputValue()) === '${workspaceFolder}/api.js', 'the program is guessed from package.json');
  await page.keyboard.press('Enter');
  await notification(/Press F5 to debug/, 20000);
  const tasks = fs.readFileSync(path.join(WS, '.vscode', 'tasks.json'), 'utf8');
  const launch = fs.readFileSync(path.join(WS, '.vscode', 'launch.json'), 'utf8');
  expect(/"type": "kbridge"/.test(tasks) && /"routeAs": "alice"/.test(tasks) && new RegExp(`"localPort": ${LOCAL_PORT}`).test(tasks), 'tasks.json has the kbridge task');
  expect(/"preLaunchTask": "kbridge: api"/.test(launch) && /"envFile"/.test(launch), 'launch.json runs it first and reads its env file');

  // 3. breakpoint, F5
  await page.keyboard.press('Escape');
  await page.keyboard.press('Control+P');
  await answer('api.js', { pick: true });
  const line = fs.readFileSync(path.join(WS, 'api.js'), 'utf8').split('\n').findIndex((l) => l.includes('// BREAKPOINT')) + 1;
  await until('api.js in the editor', () => page.locator('.tab.active', { hasText: 'api.js' }).isVisible(), 10000);
  await page.keyboard.press('Control+G');
  await answer(':' + line); // Go to Line's quick input starts with ':'
  await page.keyboard.press('F9');
  await until('the breakpoint glyph', () => page.locator('.codicon-debug-breakpoint').first().isVisible(), 10000);
  expect(true, `breakpoint set on api.js:${line}`);
  const tF5 = Date.now();
  await page.keyboard.press('F5');
  await statusIs(/connecting/, 30000).catch(() => log('(connecting state not seen: it may have been quick)'));
  await statusIs(/kbridge: connected as alice to api/, 180000);
  timings.f5_to_connected_s = (Date.now() - tF5) / 1000;
  log(`F5 -> connected: ${timings.f5_to_connected_s.toFixed(2)} s`);
  await ask({ cmd: 'wait_port', port: LOCAL_PORT, timeout: 60 });
  timings.f5_to_process_listening_s = (Date.now() - tF5) / 1000;
  const taken = await ask({ cmd: 'taken' });
  expect(taken.taken, `the api Service selects the agent (${JSON.stringify(taken.selector)})`);
  await page.locator('#workbench\\.parts\\.statusbar').screenshot({ path: path.join(OUT, 'statusbar-connected.png') });

  // 4. a routed request stops at the breakpoint; others reach the real pods
  const tSend = Date.now();
  await ask({ cmd: 'send', id: 'alice', headers: { 'kubernetes-route-as': 'alice' }, timeout: 120 });
  await until('the debugger to pause on the breakpoint', async () =>
    (await page.locator('.debug-toolbar .codicon-debug-continue').first().isVisible()) &&
    (await page.locator('.debug-top-stack-frame-line, .codicon-debug-stackframe').first().isVisible()), 60000);
  timings.request_to_breakpoint_s = (Date.now() - tSend) / 1000;
  log(`request -> breakpoint: ${timings.request_to_breakpoint_s.toFixed(2)} s`);
  await page.waitForTimeout(300);
  await shot('paused.png');
  await ask({ cmd: 'send', id: 'plain', headers: {}, timeout: 30 });
  const plain = await ask({ cmd: 'result', id: 'plain', timeout: 30 });
  expect(plain.served_by === 'api' && plain.answer.pod !== 'developer-laptop', `while paused, a request without the key is answered by a real api pod (${plain.answer.pod})`);
  await page.locator('.debug-toolbar .codicon-debug-continue').first().click();
  const alice = await ask({ cmd: 'result', id: 'alice', timeout: 60 });
  expect(alice.served_by === 'local-api', `alice's request is answered by the debugged process (${JSON.stringify(alice.answer)})`);
  expect(alice.answer.route === 'alice', 'with her route header');
  expect(alice.answer.greeting === 'hello from the shop config' && alice.answer.has_api_key === true, "the debugged process has the pod's config map and secret values (envFile)");

  // 5. stop debugging: disconnect, restore
  const tStop = Date.now();
  await page.keyboard.press('Shift+F5');
  await statusIs(/kbridge: disconnected/, 120000);
  timings.stop_to_disconnected_s = (Date.now() - tStop) / 1000;
  await ask({ cmd: 'unchanged', what: 'stopping the debug session' });
  expect(true, 'stopping the debug session disconnected kbridge and the cluster is as before');

  // 6. two sessions at once, one per folder
  await command('kbridge: Configure a service for debugging');
  await folderPick('shop-store');
  await quickTitle('(1/8)');
  await page.keyboard.press('Enter');
  await quickTitle('(2/8)');
  await answer('shop');
  await quickTitle('(3/8)');
  await answer('store', { pick: true });
  await quickTitle('(5/8)');
  await answer(String(LOCAL_PORT2));
  await quickTitle('(6/8): route');
  await answer('Route my requests only', { pick: true });
  await quickTitle('(6/8): route key');
  await answer('alice');
  await quickTitle('(7/8)');
  await answer('Attach later', { pick: true });
  await notification(/task "kbridge: store" written/, 20000);
  expect(fs.existsSync(path.join(STORE_WS, '.vscode', 'tasks.json')) && !fs.existsSync(path.join(STORE_WS, '.vscode', 'launch.json')),
    'the second folder got its own tasks.json and no launch configuration ("Attach later")');
  await command('Tasks: Run Task');
  await choose('kbridge: store');
  await statusIs(/kbridge: connected as alice to store/, 120000);
  expect((await ask({ cmd: 'taken', service: 'store' })).taken, 'store is taken over by its task');
  const tWarm = Date.now();
  await page.keyboard.press('F5');
  await statusIs(/kbridge: 2 sessions/, 120000);
  timings.f5_warm_to_connected_s = (Date.now() - tWarm) / 1000;
  log(`F5 (second time) -> connected: ${timings.f5_warm_to_connected_s.toFixed(2)} s`);
  expect((await ask({ cmd: 'taken', service: 'api' })).taken, 'api and store are taken over at once');
  expect(/alice→store/.test(await statusText()) && /alice→api/.test(await statusText()), `the status bar shows both sessions ("${await statusText()}")`);
  await page.locator('#workbench\\.parts\\.statusbar').screenshot({ path: path.join(OUT, 'statusbar-two.png') });
  // The kbridge side bar: the namespace's Services, who holds routes, ours marked.
  await page.locator('.activitybar .action-item a[aria-label^="kbridge"], .activitybar .action-item[aria-label^="kbridge"]').first().click();
  const rows = page.locator('.pane-body .monaco-list-row');
  await until('the Services view with api and store held by alice', async () => {
    const t = (await rows.allInnerTexts()).join('\n');
    return /api[\s\S]*routing: alice/.test(t) && /store[\s\S]*routing: alice/.test(t) && /frontend/.test(t);
  }, 30000);
  expect(true, 'the Services view lists the namespace with the routes held on api and store');
  await shot('sidebar.png');
  await page.locator('.statusbar-item', { hasText: 'kbridge:' }).first().click();
  const disconnectStore = page.locator('.quick-input-list .monaco-list-row').filter({ hasText: 'Disconnect' }).filter({ hasText: 'shop/store' }).first();
  await until('the status bar menu with "Disconnect shop/store"', () => disconnectStore.isVisible(), 10000);
  await disconnectStore.click();
  await statusIs(/kbridge: connected as alice to api/, 60000);
  expect(!(await ask({ cmd: 'taken', service: 'store' })).taken, 'the menu disconnected store (its selector is back) while api stays connected');
  await page.keyboard.press('Shift+F5');
  await statusIs(/kbridge: disconnected/, 120000);
  await ask({ cmd: 'unchanged', what: 'two sessions' });
  expect(true, 'after two sessions the cluster is as before');

  // 7. error path: a Service that does not exist
  const tf = path.join(WS, '.vscode', 'tasks.json');
  let text = fs.readFileSync(tf, 'utf8');
  text = applyEdits(text, modify(text, ['tasks', -1], { label: 'kbridge: nope', type: 'kbridge', namespace: 'shop', service: 'nope', localPort: LOCAL_PORT, routeAs: 'alice', problemMatcher: '$kbridge', isBackground: true }, { isArrayInsertion: true, formattingOptions: { insertSpaces: true, tabSize: 2 } }));
  fs.writeFileSync(tf, text);
  await page.waitForTimeout(1000); // the editor notices the file
  await command('Tasks: Run Task');
  await until('the task list', async () => (await page.locator('.quick-input-list').innerText()).includes('kbridge: nope'), 20000);
  await choose('kbridge: nope');
  const toast = await notification(/not found/, 60000);
  expect(/nope/.test(toast) && /Check the namespace and Service/.test(toast), `the error notification says what and what to do: "${toast.replace(/\s+/g, ' ').slice(0, 200)}"`);
  await shot('error-notification.png');
  await page.locator('.notification-toast').filter({ hasText: 'not found' }).getByRole('button', { name: 'Show log' }).click();
  // Monaco renders spaces as no-break spaces.
  await until('the log with the error', async () => (await page.locator('.part.panel').innerText()).replace(/\u00a0/g, ' ').includes('ERROR (not_found)'), 15000);
  expect(true, '"Show log" opens the kbridge log with the error');
  await statusIs(/kbridge: nope failed/, 10000);
  await ask({ cmd: 'unchanged', what: 'the failed connect to a missing Service' });
  expect(true, 'the failed connect left the cluster unchanged');

  // The extension's log, as VS Code keeps it on disk: kbridge's own time to
  // ready, next to the F5 figure measured above.
  const logs = path.join(path.dirname(process.env.KB_USER_DIR), 'logs');
  const found = [];
  const walk = (d) => { for (const e of fs.readdirSync(d, { withFileTypes: true })) { const f = path.join(d, e.name); if (e.isDirectory()) walk(f); else if (/kbridge\.log$/.test(e.name)) found.push(f); } };
  walk(logs);
  expect(found.length === 1, `the "kbridge" output channel is on disk (${found.join(', ')})`);
  const logText = fs.readFileSync(found[0], 'utf8');
  fs.writeFileSync(path.join(OUT, 'kbridge-output.log'), logText);
  const m = /\[api\] ready in ([0-9.]+) s/.exec(logText);
  expect(m !== null, 'the log has the session\'s ready line');
  timings.kbridge_connect_ready_s = Number(m[1]);
  expect(/\[api\] connection from \S+ closed after/.test(logText), 'the log has the connection log of the routed request');
}

main().then(
  () => process.exit(0),
  (e) => {
    log(`FAIL: ${e.stack || e}`);
    process.exit(1);
  },
);
