import assert from 'node:assert/strict';
import { test } from 'node:test';
import { kubeconfigFiles, KubeconfigError, readContexts } from '../src/kubeconfig';

const A = `apiVersion: v1
kind: Config
current-context: dev
contexts:
- name: dev
  context: {cluster: c1, user: alice, namespace: shop}
- name: prod
  context: {cluster: c2, user: alice}
`;
const B = `current-context: other
contexts:
- name: prod
  context: {cluster: SHADOWED, user: x}
- name: stage
  context: {cluster: c3, user: bob, namespace: qa}
`;

test('files are merged like kubectl: first name wins, first current-context wins', () => {
  const files: Record<string, string> = { '/a': A, '/b': B };
  const r = readContexts(['/a', '/missing', '/b'], (f) => files[f]);
  assert.equal(r.current, 'dev');
  assert.deepEqual(r.files, ['/a', '/b']);
  assert.deepEqual(r.contexts.map((c) => [c.name, c.cluster, c.namespace]), [['dev', 'c1', 'shop'], ['prod', 'c2', 'default'], ['stage', 'c3', 'qa']]);
});

test('no file at all and broken YAML are errors that name the file', () => {
  assert.throws(() => readContexts(['/none'], () => undefined), (e: unknown) => e instanceof KubeconfigError && /no kubeconfig: \/none does not exist/.test((e as Error).message));
  assert.throws(() => readContexts(['/bad'], () => 'contexts: [\n  - {name: a'), (e: unknown) => e instanceof KubeconfigError && /\/bad: not valid YAML/.test((e as Error).message));
});

test('which files: explicit, else $KUBECONFIG, else ~/.kube/config', () => {
  assert.deepEqual(kubeconfigFiles('/x', { KUBECONFIG: '/a:/b' }, '/home/u'), ['/x']);
  assert.deepEqual(kubeconfigFiles(undefined, { KUBECONFIG: '/a::/b' }, '/home/u'), ['/a', '/b']);
  assert.deepEqual(kubeconfigFiles(undefined, {}, '/home/u'), ['/home/u/.kube/config']);
});
