import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parse } from 'jsonc-parser';
import { JsoncError, kbridgeTasks, linkLaunchConfig, listLaunchConfigs, upsertLaunchConfig, upsertTask } from '../src/jsonedit';

const TASKS = `// my tasks
{
  "version": "2.0.0",
  "tasks": [
    // build first
    { "label": "build", "type": "shell", "command": "make" }, /* keep me */
  ],
}
`;

const task = { label: 'kbridge: api', type: 'kbridge', namespace: 'shop', service: 'api', localPort: 5000 };

test('a task is added and the user\'s comments and entries stay', () => {
  const out = upsertTask(TASKS, task);
  for (const keep of ['// my tasks', '// build first', '/* keep me */', '"command": "make"']) assert.ok(out.includes(keep), keep);
  const v = parse(out) as { tasks: { label: string }[] };
  assert.deepEqual(v.tasks.map((t) => t.label), ['build', 'kbridge: api']);
});

test('a task with the same label is replaced, not duplicated', () => {
  const once = upsertTask(TASKS, task);
  const twice = upsertTask(once, { ...task, localPort: 6000 });
  const v = parse(twice) as { tasks: { label: string; localPort?: number }[] };
  assert.equal(v.tasks.length, 2);
  assert.equal(v.tasks[1].localPort, 6000);
  assert.ok(twice.includes('// build first'));
});

test('an empty or missing tasks.json gets a new file', () => {
  const v = parse(upsertTask('', task)) as { version: string; tasks: unknown[] };
  assert.equal(v.version, '2.0.0');
  assert.equal(v.tasks.length, 1);
});

test('broken JSON is refused, not overwritten', () => {
  assert.throws(() => upsertTask('{ "tasks": [ ', task), JsoncError);
});

const LAUNCH = `{
  // launch configs
  "version": "0.2.0",
  "configurations": [
    { "name": "api", "type": "node", "request": "launch", "program": "\${workspaceFolder}/api.js" },
    { "name": "tests", "type": "node", "request": "launch" } // unrelated
  ]
}`;

test('launch configurations are listed', () => {
  assert.deepEqual(listLaunchConfigs(LAUNCH).map((c) => [c.name, c.type, c.request]), [['api', 'node', 'launch'], ['tests', 'node', 'launch']]);
  assert.deepEqual(listLaunchConfigs(''), []);
});

test('linking sets preLaunchTask and envFile on that configuration only, keeping comments', () => {
  const out = linkLaunchConfig(LAUNCH, 'api', 'kbridge: api', '${workspaceFolder}/.vscode/kbridge/api.env');
  const v = parse(out) as { configurations: Record<string, unknown>[] };
  assert.equal(v.configurations[0]['preLaunchTask'], 'kbridge: api');
  assert.equal(v.configurations[0]['envFile'], '${workspaceFolder}/.vscode/kbridge/api.env');
  assert.equal(v.configurations[1]['preLaunchTask'], undefined);
  assert.ok(out.includes('// launch configs') && out.includes('// unrelated'));
  assert.throws(() => linkLaunchConfig(LAUNCH, 'nope', 'x'), /no configuration named "nope"/);
});

test('a new launch configuration is appended, or replaces one of the same name', () => {
  const out = upsertLaunchConfig(LAUNCH, { name: 'api (kbridge)', type: 'node', request: 'launch' });
  assert.equal((parse(out) as { configurations: unknown[] }).configurations.length, 3);
  const again = upsertLaunchConfig(out, { name: 'api (kbridge)', type: 'node', request: 'attach' });
  const v = parse(again) as { configurations: { request: string }[] };
  assert.equal(v.configurations.length, 3);
  assert.equal(v.configurations[2].request, 'attach');
  assert.ok(again.includes('// unrelated'));
  assert.equal((parse(upsertLaunchConfig('', { name: 'x' })) as { configurations: unknown[] }).configurations.length, 1);
});

test('kbridgeTasks finds only kbridge tasks, and nothing in broken text', () => {
  assert.deepEqual(kbridgeTasks(upsertTask(TASKS, task)).map((t) => t['label']), ['kbridge: api']);
  assert.deepEqual(kbridgeTasks('{ broken'), []);
});
