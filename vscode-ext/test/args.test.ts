import assert from 'node:assert/strict';
import { test } from 'node:test';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { connectArgs, shellQuote, TASK_PROBLEM_MATCHER, TaskDefinitionError } from '../src/args';

const base = { type: 'kbridge', namespace: 'shop', service: 'api', localPort: 5000 };

test('the minimal task maps to connect with --output json', () => {
  assert.deepEqual(connectArgs(base), ['connect', '--namespace', 'shop', '--service', 'api', '--local-port', '5000', '--output', 'json']);
});

test('every field maps to its flag', () => {
  const a = connectArgs({
    ...base, port: 8080, routeAs: 'alice', context: 'dev cluster', kubeconfig: '/home/a/my kube/config',
    envFile: '/w/.vscode/kbridge/api.env', forwards: ['127.0.0.1:0=store:8080', '[::1]:7000=db.shop.svc:5432'],
    agentImage: 'registry.local:5000/kbridge/agent:1.0', label: 'kbridge: api', isBackground: true, problemMatcher: '$kbridge',
  });
  assert.deepEqual(a, [
    'connect', '--namespace', 'shop', '--service', 'api', '--local-port', '5000', '--route-as', 'alice',
    '--context', 'dev cluster', '--kubeconfig', '/home/a/my kube/config', '--env-file', '/w/.vscode/kbridge/api.env',
    '--agent-image', 'registry.local:5000/kbridge/agent:1.0',
    '--forward', '127.0.0.1:0=store:8080', '--forward', '[::1]:7000=db.shop.svc:5432', '--output', 'json',
  ]);
});

test('replace maps to --replace; settings fill kubeconfig and image', () => {
  const a = connectArgs({ ...base, replace: true }, { kubeconfig: '/k', agentImage: 'img:1' });
  assert.deepEqual(a, ['connect', '--namespace', 'shop', '--service', 'api', '--local-port', '5000', '--replace', '--kubeconfig', '/k', '--agent-image', 'img:1', '--output', 'json']);
  const b = connectArgs({ ...base, kubeconfig: '/task' }, { kubeconfig: '/setting' });
  assert.ok(b.includes('/task') && !b.includes('/setting'), 'the task wins over the setting');
});

test('bad values are refused with the field and the reason', () => {
  const bad: [Record<string, unknown>, RegExp][] = [
    [{ ...base, namespace: undefined }, /namespace is missing/],
    [{ ...base, namespace: 'Shop' }, /upper-case/],
    [{ ...base, service: 'api_v2' }, /service.*may only contain/],
    [{ ...base, service: 42 }, /service must be a string/],
    [{ ...base, localPort: undefined }, /localPort is missing/],
    [{ ...base, localPort: 0 }, /localPort must be a port/],
    [{ ...base, localPort: 70000 }, /localPort must be a port/],
    [{ ...base, localPort: '5000' }, /localPort must be a port/],
    [{ ...base, port: 1.5 }, /port must be a port/],
    [{ ...base, routeAs: '-alice' }, /must not start or end/],
    [{ ...base, routeAs: 'a'.repeat(64) }, /longer than 63/],
    [{ ...base, routeAs: 'alice', replace: true }, /exclude each other/],
    [{ ...base, replace: 'yes' }, /replace must be true or false/],
    [{ ...base, forwards: 'store:8080' }, /forwards must be a list/],
    [{ ...base, forwards: ['store:8080'] }, /not LADDR:LPORT=HOST:PORT/],
    [{ ...base, forwards: ['127.0.0.1:0=store:0'] }, /not LADDR:LPORT=HOST:PORT/],
    [{ ...base, forwards: ['127.0.0.1:99999=store:80'] }, /not LADDR:LPORT=HOST:PORT/],
    [{ ...base, context: 'a\nb' }, /context must be one line/],
    [{ ...base, agentImage: 'my image' }, /not an image reference/],
    [{ ...base, routeAS: 'alice' }, /routeAS is not a kbridge task field/],
  ];
  for (const [def, why] of bad) {
    assert.throws(() => connectArgs(def), (e: unknown) => e instanceof TaskDefinitionError && why.test((e as Error).message), JSON.stringify(def));
  }
});

test('shellQuote renders argv for a POSIX shell', () => {
  assert.equal(shellQuote(['kbridge', 'connect', '--context', 'dev cluster', "it's", '']), `kbridge connect --context 'dev cluster' 'it'\\''s' ''`);
});

test('the inline problem matcher equals the contributed $kbridge one', () => {
  const pkg = JSON.parse(fs.readFileSync(path.join(__dirname, '..', '..', 'package.json'), 'utf8'));
  const contributed = pkg.contributes.problemMatchers.find((m: { name: string }) => m.name === 'kbridge');
  assert.deepEqual(contributed.pattern, TASK_PROBLEM_MATCHER.pattern);
  assert.deepEqual(contributed.background, TASK_PROBLEM_MATCHER.background);
  assert.equal(contributed.owner, TASK_PROBLEM_MATCHER.owner);
  const ready = new RegExp(TASK_PROBLEM_MATCHER.background.endsPattern);
  assert.ok(ready.test('kbridge: ready in 2.11 s: route alice -> 127.0.0.1:5000'), 'the ready line ends the background phase');
  assert.ok(new RegExp(TASK_PROBLEM_MATCHER.background.beginsPattern).test('kbridge: connecting shop/api (task "kbridge: api")'));
  const m = new RegExp(TASK_PROBLEM_MATCHER.pattern.regexp).exec('kbridge: failed: /w/.vscode/tasks.json: kbridge task for "api": localPort is missing');
  assert.equal(m?.[1], '/w/.vscode/tasks.json');
});
