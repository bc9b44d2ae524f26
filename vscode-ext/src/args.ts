/* args.ts: a task of type "kbridge" (tasks.json) to the argument vector of
 * `kbridge connect`. Every field is checked here, before anything runs: a bad
 * value is refused with a sentence that names the field and what it expects,
 * and the cluster is never touched. Arguments are passed as a vector (no
 * shell), so quoting is only needed to show the command line to the user
 * (shellQuote). No vscode import. */
import { dnsLabelProblem, isPort } from './validate';

/* What a user writes in tasks.json (see taskDefinitions in package.json). */
export interface KbridgeTaskDefinition {
  type: 'kbridge';
  namespace: string;
  service: string;
  port?: number;
  localPort: number;
  routeAs?: string;
  replace?: boolean;
  context?: string;
  kubeconfig?: string;
  envFile?: string;
  forwards?: string[];
  agentImage?: string;
  [k: string]: unknown;
}

/* Settings that fill in what the task leaves out. */
export interface ArgDefaults {
  kubeconfig?: string;
  agentImage?: string;
}

export class TaskDefinitionError extends Error {}

const FORWARD = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})=(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/;
const KNOWN = new Set(['type', 'namespace', 'service', 'port', 'localPort', 'routeAs', 'replace', 'context',
  'kubeconfig', 'envFile', 'forwards', 'agentImage', 'label', 'problemMatcher', 'isBackground', 'group',
  'presentation', 'detail', 'dependsOn', 'runOptions', 'options', 'icon', 'hide', 'id', '_key']);

function label(def: Partial<KbridgeTaskDefinition>, field: string): string {
  return `kbridge task${def.service ? ` for "${String(def.service)}"` : ''}: ${field}`;
}

function needString(def: Record<string, unknown>, field: string, optional: boolean): string | undefined {
  const v = def[field];
  if (v === undefined || (optional && v === '')) {
    if (optional) return undefined;
    throw new TaskDefinitionError(`${label(def, field)} is missing`);
  }
  if (typeof v !== 'string') throw new TaskDefinitionError(`${label(def, field)} must be a string, got ${JSON.stringify(v)}`);
  if (/[\0\r\n]/.test(v)) throw new TaskDefinitionError(`${label(def, field)} must be one line`);
  return v;
}

/* Check def and return the arguments of `kbridge connect` (without the binary).
 * Throws TaskDefinitionError with the field and the reason. */
export function connectArgs(defIn: Record<string, unknown>, dflt: ArgDefaults = {}): string[] {
  const def = defIn as Partial<KbridgeTaskDefinition> & Record<string, unknown>;
  for (const k of Object.keys(def)) {
    if (!KNOWN.has(k)) throw new TaskDefinitionError(`${label(def, k)} is not a kbridge task field (known: namespace, service, port, localPort, routeAs, replace, context, kubeconfig, envFile, forwards, agentImage)`);
  }
  const ns = needString(def, 'namespace', false) as string;
  const nsWhy = dnsLabelProblem(ns, 'namespace');
  if (nsWhy) throw new TaskDefinitionError(`${label(def, 'namespace')}: ${nsWhy}`);
  const svc = needString(def, 'service', false) as string;
  const svcWhy = dnsLabelProblem(svc, 'service');
  if (svcWhy) throw new TaskDefinitionError(`${label(def, 'service')}: ${svcWhy}`);
  if (def.localPort === undefined) throw new TaskDefinitionError(`${label(def, 'localPort')} is missing (the port your local process listens on)`);
  if (!isPort(def.localPort)) throw new TaskDefinitionError(`${label(def, 'localPort')} must be a port number 1-65535, got ${JSON.stringify(def.localPort)}`);
  if (def.port !== undefined && !isPort(def.port)) throw new TaskDefinitionError(`${label(def, 'port')} must be a port number 1-65535, got ${JSON.stringify(def.port)}`);
  if (def.replace !== undefined && typeof def.replace !== 'boolean') throw new TaskDefinitionError(`${label(def, 'replace')} must be true or false`);
  const key = needString(def, 'routeAs', true);
  if (key !== undefined && def.replace) throw new TaskDefinitionError(`${label(def, 'routeAs')} and replace exclude each other: a route key shares the Service, replace takes all of it`);
  if (key !== undefined) {
    const why = dnsLabelProblem(key, 'route key');
    if (why) throw new TaskDefinitionError(`${label(def, 'routeAs')}: ${why}`);
  }
  const args = ['connect', '--namespace', ns, '--service', svc, '--local-port', String(def.localPort)];
  if (def.replace) args.push('--replace');
  else if (key !== undefined) args.push('--route-as', key);
  const ctx = needString(def, 'context', true);
  if (ctx !== undefined) args.push('--context', ctx);
  const kc = needString(def, 'kubeconfig', true) ?? (dflt.kubeconfig || undefined);
  if (kc !== undefined) args.push('--kubeconfig', kc);
  const env = needString(def, 'envFile', true);
  if (env !== undefined) args.push('--env-file', env);
  const img = needString(def, 'agentImage', true) ?? (dflt.agentImage || undefined);
  if (img !== undefined) {
    if (/\s/.test(img)) throw new TaskDefinitionError(`${label(def, 'agentImage')}: "${img}" is not an image reference (no spaces)`);
    args.push('--agent-image', img);
  }
  if (def.forwards !== undefined) {
    if (!Array.isArray(def.forwards)) throw new TaskDefinitionError(`${label(def, 'forwards')} must be a list of "LADDR:LPORT=HOST:PORT" strings`);
    for (const f of def.forwards) {
      const m = typeof f === 'string' ? FORWARD.exec(f) : null;
      if (!m || Number(m[2]) > 65535 || Number(m[4]) < 1 || Number(m[4]) > 65535)
        throw new TaskDefinitionError(`${label(def, 'forwards')}: ${JSON.stringify(f)} is not LADDR:LPORT=HOST:PORT (e.g. 127.0.0.1:0=store:8080)`);
      args.push('--forward', f);
    }
  }
  args.push('--output', 'json');
  return args;
}

/* A POSIX shell rendering of argv, for showing the command to the user. */
export function shellQuote(argv: string[]): string {
  return argv
    .map((a) => (a !== '' && /^[A-Za-z0-9_@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`))
    .join(' ');
}

/* The problem matcher a configured task carries inline: the same as the
 * "$kbridge" one package.json contributes (a unit test keeps them equal). Inline,
 * because VS Code resolves a named matcher from a registry that a loaded editor
 * may not have filled yet when F5 starts the task; without its background
 * patterns the debugger never learns that the task is ready. */
export const TASK_PROBLEM_MATCHER = {
  owner: 'kbridge',
  source: 'kbridge',
  fileLocation: 'absolute',
  pattern: { regexp: '^kbridge: failed: (/.*/tasks\\.json): (.*)$', file: 1, message: 2, kind: 'file' },
  background: { activeBegins: true, beginsPattern: '^kbridge: connecting ', endsPattern: '^kbridge: (ready|failed|disconnected)' },
};

/* The label a configured task gets, and by which a launch configuration's
 * preLaunchTask finds it. */
export function taskLabel(service: string, namespace?: string): string {
  return namespace ? `kbridge: ${service} (${namespace})` : `kbridge: ${service}`;
}
