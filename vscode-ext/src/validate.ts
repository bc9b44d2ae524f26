/* validate.ts: the names Kubernetes and kbridge accept, and the route-key default.
 * No vscode import. */
import * as os from 'node:os';

/* RFC 1123 label: what kbridge accepts for route keys, namespaces, Services. */
export function isDnsLabel(s: string): boolean {
  return s.length >= 1 && s.length <= 63 && /^[a-z0-9]([a-z0-9-]*[a-z0-9])?$/.test(s);
}

/* Why s is not a DNS label, in words, or undefined if it is one. */
export function dnsLabelProblem(s: string, what: string): string | undefined {
  if (s.length === 0) return `${what} is empty`;
  if (s.length > 63) return `${what} "${s}" is longer than 63 characters`;
  if (/[A-Z]/.test(s)) return `${what} "${s}" has upper-case letters (use ${s.toLowerCase()})`;
  if (!/^[a-z0-9-]+$/.test(s)) return `${what} "${s}" may only contain a-z, 0-9 and -`;
  if (s.startsWith('-') || s.endsWith('-')) return `${what} "${s}" must not start or end with -`;
  return undefined;
}

/* A route key from a user name: lower-cased, every run of other characters
 * turned into one '-', trimmed, at most 63 characters; "dev" if nothing is
 * left ("Jean-Luc O'Neil" -> "jean-luc-o-neil", "ALICE" -> "alice"). */
export function routeKeyFrom(user: string): string {
  let k = user
    .normalize('NFKD')
    .replace(/[\u0300-\u036f]/g, '')
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, '-')
    .replace(/^-+|-+$/g, '');
  if (k.length > 63) k = k.slice(0, 63).replace(/-+$/, '');
  return k === '' ? 'dev' : k;
}

/* The wizard's default route key: the setting if it is a valid key, else from
 * the OS user name. */
export function defaultRouteKey(setting?: string, user?: string): string {
  if (setting && isDnsLabel(setting)) return setting;
  let name = user;
  if (name === undefined) {
    try {
      name = os.userInfo().username;
    } catch {
      name = process.env['USER'] ?? '';
    }
  }
  return routeKeyFrom(name);
}

export function isPort(n: unknown): n is number {
  return typeof n === 'number' && Number.isInteger(n) && n >= 1 && n <= 65535;
}
