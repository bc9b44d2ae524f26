/* events.ts: the JSON event stream of `kbridge connect --output json`.
 *
 * The CLI writes one JSON object per line on stdout. This module turns chunks of
 * that stream (which may end in the middle of a line, or of a UTF-8 character)
 * into typed events. A line that is not a JSON object with a string "event" is
 * reported as garbage with the reason, never thrown: the caller shows it and goes
 * on. Events this version does not know are passed through as "unknown", so a
 * newer CLI never breaks an older extension. No vscode import: unit-tested in
 * plain node. */

export interface ProgressEvent {
  event: 'progress';
  step: string;
  message: string;
  elapsed?: number;
}
export interface Forward {
  listen: string;
  target: string;
}
export interface ReadyEvent {
  event: 'ready';
  route: string;
  mode: 'routing' | 'exclusive' | string;
  /* The Service's URLs (one per port), for clients in the cluster: in routing
   * mode a request reaches you with `header` or `host_header`. */
  urls: string[];
  header: string;
  host_header?: string;
  local_port: number;
  forwards: Forward[];
  ingress_urls?: string[];
  env: Record<string, string>;
  seconds: number;
  agent?: string;
}
export interface ErrorEvent {
  event: 'error';
  /* kubeconfig, unreachable, unauthorized, forbidden, not_found, conflict,
   * port_in_use, route_held, service_changed, unsupported, agent_refused,
   * proxy, bad_flag, api_error, failed */
  reason: string;
  message: string;
}
export interface DisconnectedEvent {
  event: 'disconnected';
  restored?: boolean;
  [k: string]: unknown;
}
export interface ConnectionEvent {
  event: 'connection';
  state: 'open' | 'failed' | 'closed' | string;
  peer: string;
  port: number;
  local_port?: number;
  error?: string;
  bytes_in?: number;
  bytes_out?: number;
  seconds?: number;
}
export interface UnknownEvent {
  event: 'unknown';
  name: string;
  raw: Record<string, unknown>;
}
export type KbridgeEvent =
  | ProgressEvent
  | ReadyEvent
  | ErrorEvent
  | DisconnectedEvent
  | ConnectionEvent
  | UnknownEvent;

export type Parsed = { kind: 'event'; event: KbridgeEvent } | { kind: 'garbage'; line: string; why: string };

/* The longest line kept while waiting for its end: a runaway producer must not
 * grow the extension host's memory without bound. */
export const MAX_LINE = 4 * 1024 * 1024;

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function str(o: Record<string, unknown>, k: string, dflt = ''): string {
  const v = o[k];
  return typeof v === 'string' ? v : dflt;
}
function num(o: Record<string, unknown>, k: string): number | undefined {
  const v = o[k];
  return typeof v === 'number' && Number.isFinite(v) ? v : undefined;
}
function strings(v: unknown): string[] {
  return Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : [];
}

/* One line to one Parsed. Known events are checked field by field; a known
 * event with a missing required field is garbage (the CLI and the extension
 * disagree, and the user should see it). */
export function parseLine(line: string): Parsed | undefined {
  const text = line.trim();
  if (text === '') return undefined;
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    return { kind: 'garbage', line: text, why: `not JSON (${(e as Error).message})` };
  }
  if (!isObject(v)) return { kind: 'garbage', line: text, why: 'not a JSON object' };
  const name = v['event'];
  if (typeof name !== 'string') return { kind: 'garbage', line: text, why: 'no "event" member' };
  switch (name) {
    case 'progress':
      if (typeof v['message'] !== 'string') return { kind: 'garbage', line: text, why: 'progress without message' };
      return { kind: 'event', event: { event: 'progress', step: str(v, 'step'), message: str(v, 'message'), elapsed: num(v, 'elapsed') } };
    case 'ready': {
      const route = v['route'];
      const port = num(v, 'local_port');
      if (typeof route !== 'string' || port === undefined)
        return { kind: 'garbage', line: text, why: 'ready without route or local_port' };
      const env: Record<string, string> = {};
      if (isObject(v['env'])) for (const [k, x] of Object.entries(v['env'])) if (typeof x === 'string') env[k] = x;
      const forwards: Forward[] = Array.isArray(v['forwards'])
        ? v['forwards'].filter(isObject).map((f) => ({ listen: str(f, 'listen'), target: str(f, 'target') }))
        : [];
      const ev: ReadyEvent = {
        event: 'ready', route, mode: str(v, 'mode', 'routing'), urls: strings(v['urls']), header: str(v, 'header'),
        local_port: port, forwards, env, seconds: num(v, 'seconds') ?? 0,
      };
      if (Array.isArray(v['ingress_urls'])) ev.ingress_urls = strings(v['ingress_urls']);
      if (typeof v['host_header'] === 'string') ev.host_header = v['host_header'];
      if (typeof v['agent'] === 'string') ev.agent = v['agent'];
      return { kind: 'event', event: ev };
    }
    case 'error':
      return { kind: 'event', event: { event: 'error', reason: str(v, 'reason', 'failed'), message: str(v, 'message', '(no message)') } };
    case 'disconnected':
      return { kind: 'event', event: { ...v, event: 'disconnected', restored: v['restored'] === true } };
    case 'connection':
      return {
        kind: 'event',
        event: {
          event: 'connection', state: str(v, 'state'), peer: str(v, 'peer', '?'), port: num(v, 'port') ?? 0,
          local_port: num(v, 'local_port'), error: typeof v['error'] === 'string' ? v['error'] : undefined,
          bytes_in: num(v, 'bytes_in'), bytes_out: num(v, 'bytes_out'), seconds: num(v, 'seconds'),
        },
      };
    default:
      return { kind: 'event', event: { event: 'unknown', name, raw: v } };
  }
}

/* A stream of chunks to events. Feed bytes (Buffer) or text; call end() when
 * the stream closes, to get a last line that had no newline. */
export class EventParser {
  private buf = '';
  private decoder = new TextDecoder('utf-8');
  private dropping = false;

  push(chunk: Uint8Array | string): Parsed[] {
    this.buf += typeof chunk === 'string' ? chunk : this.decoder.decode(chunk, { stream: true });
    const out: Parsed[] = [];
    let nl: number;
    while ((nl = this.buf.indexOf('\n')) >= 0) {
      const line = this.buf.slice(0, nl);
      this.buf = this.buf.slice(nl + 1);
      if (this.dropping) {
        this.dropping = false; /* the end of an over-long line */
        continue;
      }
      const p = parseLine(line);
      if (p) out.push(p);
    }
    if (this.buf.length > MAX_LINE) {
      out.push({ kind: 'garbage', line: this.buf.slice(0, 200) + '...', why: `a line longer than ${MAX_LINE} bytes` });
      this.buf = '';
      this.dropping = true;
    }
    return out;
  }

  end(): Parsed[] {
    const rest = this.buf + this.decoder.decode();
    this.buf = '';
    if (this.dropping) return [];
    const p = parseLine(rest);
    return p ? [p] : [];
  }
}

/* The requests that reach the developer from a pod in the cluster, as curl
 * command lines: the Service's first URL with the route header, then with the
 * Host header (routing mode); the bare URL in exclusive mode. The URLs are
 * cluster names: a browser on this machine needs an Ingress clone
 * (`ingress_urls`, connect --ingress). */
export function curlCommands(ev: ReadyEvent): string[] {
  const url = ev.urls[0];
  if (!url) return [];
  if (ev.mode === 'exclusive') return [`curl ${url}`];
  const out: string[] = [];
  for (const h of [ev.header, ev.host_header]) if (h) out.push(`curl -H '${h}' ${url}`);
  return out;
}
