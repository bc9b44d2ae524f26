import assert from 'node:assert/strict';
import { test } from 'node:test';
import { EventParser, MAX_LINE, curlCommands, parseLine } from '../src/events';

const READY = '{"event":"ready","route":"alice","mode":"routing","urls":["http://api.shop.svc:8080/"],"header":"kubernetes-route-as: alice","host_header":"Host: alice.api","local_port":5000,"forwards":[{"listen":"127.0.0.1:4100","target":"store:8080"}],"env":{"GREETING":"hi","N":3},"seconds":1.5}';

test('a ready event is parsed field by field', () => {
  const p = parseLine(READY);
  assert.equal(p?.kind, 'event');
  if (p?.kind !== 'event' || p.event.event !== 'ready') throw new Error('not ready');
  assert.equal(p.event.route, 'alice');
  assert.equal(p.event.local_port, 5000);
  assert.deepEqual(p.event.forwards, [{ listen: '127.0.0.1:4100', target: 'store:8080' }]);
  assert.deepEqual(p.event.env, { GREETING: 'hi' }, 'non-string env values are dropped');
  assert.equal(p.event.seconds, 1.5);
  assert.equal(p.event.host_header, 'Host: alice.api');
});

test('curl commands: the Service URL with the route header, then with the Host header', () => {
  const p = parseLine(READY);
  if (p?.kind !== 'event' || p.event.event !== 'ready') throw new Error('not ready');
  assert.deepEqual(curlCommands(p.event), [
    "curl -H 'kubernetes-route-as: alice' http://api.shop.svc:8080/",
    "curl -H 'Host: alice.api' http://api.shop.svc:8080/",
  ]);
  assert.deepEqual(curlCommands({ ...p.event, mode: 'exclusive', host_header: undefined }), ['curl http://api.shop.svc:8080/']);
  assert.deepEqual(curlCommands({ ...p.event, urls: [] }), []);
});

test('partial lines are held until their newline, in any split', () => {
  const stream = `{"event":"progress","step":"inspect","message":"reading service shop/api","elapsed":0.01}\n${READY}\n{"event":"disconnected","restored":true}\n`;
  for (let cut = 1; cut < stream.length; cut += 7) {
    const ps = new EventParser();
    const got = [...ps.push(stream.slice(0, cut)), ...ps.push(stream.slice(cut)), ...ps.end()];
    assert.deepEqual(got.map((g) => (g.kind === 'event' ? g.event.event : 'garbage')), ['progress', 'ready', 'disconnected'], `cut at ${cut}`);
  }
});

test('a UTF-8 character split across chunks is decoded whole', () => {
  const b = Buffer.from('{"event":"progress","step":"x","message":"café ✓"}\n', 'utf8');
  const i = b.indexOf(0xe2); /* first byte of ✓ */
  const ps = new EventParser();
  const got = [...ps.push(b.subarray(0, i + 1)), ...ps.push(b.subarray(i + 1))];
  assert.equal(got.length, 1);
  assert.ok(got[0].kind === 'event' && got[0].event.event === 'progress' && got[0].event.message === 'café ✓');
});

test('a last line without newline is delivered by end()', () => {
  const ps = new EventParser();
  assert.deepEqual(ps.push('{"event":"error","reason":"not_found","message":"no such service"}'), []);
  const got = ps.end();
  assert.equal(got.length, 1);
  assert.ok(got[0].kind === 'event' && got[0].event.event === 'error' && got[0].event.reason === 'not_found');
});

test('unknown events pass through with their name and members', () => {
  const p = parseLine('{"event":"request","method":"GET","path":"/x"}');
  assert.ok(p?.kind === 'event' && p.event.event === 'unknown');
  if (p?.kind === 'event' && p.event.event === 'unknown') {
    assert.equal(p.event.name, 'request');
    assert.equal(p.event.raw['path'], '/x');
  }
});

test('garbage is reported with the reason, never thrown', () => {
  const cases: [string, RegExp][] = [
    ['kbridge: plain text', /not JSON/],
    ['[1,2,3]', /not a JSON object/],
    ['"str"', /not a JSON object/],
    ['{"no":"event"}', /no "event"/],
    ['{"event":42}', /no "event"/],
    ['{"event":"ready","route":"a"}', /ready without/],
    ['{"event":"progress"}', /progress without message/],
    ['{"event":"progress","message":"x"', /not JSON/],
  ];
  for (const [line, why] of cases) {
    const p = parseLine(line);
    assert.equal(p?.kind, 'garbage', line);
    if (p?.kind === 'garbage') assert.match(p.why, why, line);
  }
  assert.equal(parseLine('   '), undefined, 'blank lines are skipped');
});

test('an error event without reason or message gets defaults', () => {
  const p = parseLine('{"event":"error"}');
  assert.ok(p?.kind === 'event' && p.event.event === 'error');
  if (p?.kind === 'event' && p.event.event === 'error') {
    assert.equal(p.event.reason, 'failed');
    assert.equal(p.event.message, '(no message)');
  }
});

test('connection events carry peer, port and byte counts', () => {
  const p = parseLine('{"event":"connection","state":"closed","peer":"10.0.0.5:4321","port":8080,"bytes_in":120,"bytes_out":340,"seconds":0.25}');
  assert.ok(p?.kind === 'event' && p.event.event === 'connection');
  if (p?.kind === 'event' && p.event.event === 'connection') {
    assert.equal(p.event.peer, '10.0.0.5:4321');
    assert.equal(p.event.bytes_out, 340);
  }
});

test('a line longer than MAX_LINE is dropped as garbage and the stream goes on', () => {
  const ps = new EventParser();
  const got = ps.push('x'.repeat(MAX_LINE + 10));
  assert.equal(got.length, 1);
  assert.equal(got[0].kind, 'garbage');
  const next = ps.push('yyy\n{"event":"disconnected"}\n');
  assert.equal(next.length, 1, 'the rest of the long line is skipped, the next line parsed');
  assert.ok(next[0].kind === 'event' && next[0].event.event === 'disconnected');
});
