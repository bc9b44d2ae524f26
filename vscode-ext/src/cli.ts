/* cli.ts: finding the kbridge binary and running its one-shot commands
 * (list, namespaces, restore) with --output json. Long-running connects are
 * session.ts. No vscode import. */
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

export class CliError extends Error {
  constructor(message: string, readonly reason: string, readonly stderr = '') {
    super(message);
  }
}

function executable(p: string): boolean {
  try {
    fs.accessSync(p, fs.constants.X_OK);
    return fs.statSync(p).isFile();
  } catch {
    return false;
  }
}

/* The binary to run: the setting if given (it must exist), else kbridge on
 * PATH, else build/release/local-proxy/kbridge in an open folder that is a
 * kbridge checkout (or its parent, for vscode-ext/ opened alone). */
export function findKbridge(setting: string | undefined, folders: string[], envPath = process.env['PATH'] ?? ''): string {
  if (setting) {
    if (executable(setting)) return setting;
    throw new CliError(`the setting kbridge.path is "${setting}", which is not an executable file`, 'not_installed');
  }
  for (const dir of envPath.split(path.delimiter)) {
    if (dir && executable(path.join(dir, 'kbridge'))) return path.join(dir, 'kbridge');
  }
  for (const f of folders) {
    for (const root of [f, path.dirname(f)]) {
      const p = path.join(root, 'build', 'release', 'local-proxy', 'kbridge');
      if (executable(p)) return p;
    }
  }
  throw new CliError('kbridge is not installed: it is not on PATH and no open folder has a build of it; set kbridge.path to the binary', 'not_installed');
}

/* Run `kbridge ARGS --output json` and return the parsed JSON it printed. An
 * error event, a non-zero exit or unparseable output rejects with CliError
 * (reason from the event, else "failed"). */
export function runJson(bin: string, args: string[], timeoutMs = 30000): Promise<unknown> {
  return new Promise((resolve, reject) => {
    execFile(bin, [...args, '--output', 'json'], { timeout: timeoutMs, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      const lines = stdout.split('\n').filter((l) => l.trim() !== '');
      let last: unknown;
      try {
        last = lines.length ? JSON.parse(lines[lines.length - 1]) : undefined;
      } catch {
        last = undefined;
      }
      const o = last as Record<string, unknown> | undefined;
      if (o && typeof o === 'object' && o['event'] === 'error') {
        reject(new CliError(String(o['message'] ?? 'failed'), String(o['reason'] ?? 'failed'), stderr));
        return;
      }
      if (err) {
        const msg = stderr.trim().split('\n').pop() || err.message;
        reject(new CliError(`kbridge ${args[0]}: ${msg.replace(/^kbridge: /, '')}`, (err as { killed?: boolean }).killed ? 'timeout' : 'failed', stderr));
        return;
      }
      if (last === undefined) {
        reject(new CliError(`kbridge ${args[0]} printed no JSON`, 'failed', stderr));
        return;
      }
      resolve(last);
    });
  });
}

export interface ServicePort {
  name: string;
  port: number;
  targetPort: number | string;
  protocol: string;
}
export interface RouteInfo {
  key: string;
  by: string;
  since: string;
  connected?: boolean;
}
export interface ServiceInfo {
  service: string;
  taken_over: boolean;
  mode?: string;
  by?: string;
  selector: Record<string, string>;
  ports: ServicePort[];
  routes: RouteInfo[];
}

export interface KubeFlags {
  context?: string;
  kubeconfig?: string;
}
function kubeArgs(f: KubeFlags): string[] {
  const a: string[] = [];
  if (f.context) a.push('--context', f.context);
  if (f.kubeconfig) a.push('--kubeconfig', f.kubeconfig);
  return a;
}

export async function listServices(bin: string, ns: string, f: KubeFlags): Promise<ServiceInfo[]> {
  const v = await runJson(bin, ['list', '--all', '--namespace', ns, ...kubeArgs(f)]);
  if (!Array.isArray(v)) throw new CliError('kbridge list printed something else than a list', 'failed');
  return v.map((o: Record<string, unknown>) => ({
    service: String(o['service']),
    taken_over: o['taken_over'] === true,
    mode: typeof o['mode'] === 'string' ? o['mode'] : undefined,
    by: typeof o['by'] === 'string' ? o['by'] : undefined,
    selector: typeof o['selector'] === 'object' && o['selector'] !== null ? (o['selector'] as Record<string, string>) : {},
    ports: Array.isArray(o['ports']) ? (o['ports'] as ServicePort[]) : [],
    routes: Array.isArray(o['routes']) ? (o['routes'] as RouteInfo[]) : [],
  }));
}

export async function listNamespaces(bin: string, f: KubeFlags): Promise<{ current: string; namespaces: string[] }> {
  const v = (await runJson(bin, ['namespaces', ...kubeArgs(f)])) as { current?: string; namespaces?: string[] };
  return { current: v.current ?? 'default', namespaces: Array.isArray(v.namespaces) ? v.namespaces : [] };
}

export async function restore(bin: string, ns: string, svc: string, f: KubeFlags): Promise<string> {
  const v = (await runJson(bin, ['restore', '--namespace', ns, '--service', svc, ...kubeArgs(f)], 120000)) as Record<string, unknown>;
  return String(v['report'] || `service ${ns}/${svc}: ${Number(v['changed']) ? 'restored' : 'nothing to restore'}`);
}
