import assert from 'node:assert/strict';
import { test } from 'node:test';
import { defaultRouteKey, dnsLabelProblem, isDnsLabel, routeKeyFrom } from '../src/validate';

test('route keys from user names are DNS labels', () => {
  const cases: [string, string][] = [
    ['alice', 'alice'], ['ALICE', 'alice'], ['Jean-Luc O\'Neil', 'jean-luc-o-neil'], ['josé', 'jose'],
    ['__root__', 'root'], ['a.b_c', 'a-b-c'], ['', 'dev'], ['---', 'dev'], ['名前', 'dev'],
  ];
  for (const [user, key] of cases) {
    assert.equal(routeKeyFrom(user), key, user);
    assert.ok(isDnsLabel(routeKeyFrom(user)));
  }
  const long = routeKeyFrom('x'.repeat(62) + '-y' + 'z'.repeat(10));
  assert.ok(long.length <= 63 && isDnsLabel(long), long);
});

test('the setting wins when it is a valid key, else the user name', () => {
  assert.equal(defaultRouteKey('bob', 'alice'), 'bob');
  assert.equal(defaultRouteKey('Not Valid', 'alice'), 'alice');
  assert.equal(defaultRouteKey(undefined, 'Carol'), 'carol');
  assert.ok(isDnsLabel(defaultRouteKey()), 'from the OS user');
});

test('dnsLabelProblem says what is wrong', () => {
  assert.equal(dnsLabelProblem('alice', 'key'), undefined);
  assert.match(dnsLabelProblem('', 'key')!, /empty/);
  assert.match(dnsLabelProblem('Alice', 'key')!, /upper-case.*alice/);
  assert.match(dnsLabelProblem('a b', 'key')!, /may only contain/);
  assert.match(dnsLabelProblem('a-', 'key')!, /start or end/);
});
