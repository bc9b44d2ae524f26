/* kubeconfig.ts: the contexts a user can pick, read the way kubectl (and the
 * kbridge CLI) read them: an explicit file, else every file of $KUBECONFIG
 * (':'-separated, missing ones skipped, the first file naming a context wins,
 * current-context from the first file that sets it), else ~/.kube/config.
 * Only names are read here; credentials stay with the CLI. No vscode import. */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parse } from 'yaml';

export interface KubeContext {
  name: string;
  cluster: string;
  user: string;
  namespace: string; /* the context's namespace, "default" when unset */
}
export interface KubeContexts {
  files: string[];   /* the files read */
  current?: string;
  contexts: KubeContext[];
}

export function kubeconfigFiles(explicit?: string, env = process.env, home = os.homedir()): string[] {
  if (explicit) return [explicit];
  const kc = env['KUBECONFIG'];
  if (kc) return kc.split(path.delimiter).filter((f) => f !== '');
  return [path.join(home, '.kube', 'config')];
}

export class KubeconfigError extends Error {}

export function readContexts(files: string[], read: (f: string) => string | undefined = readIfExists): KubeContexts {
  const out: KubeContexts = { files: [], contexts: [] };
  const seen = new Set<string>();
  for (const f of files) {
    const text = read(f);
    if (text === undefined) continue;
    let doc: unknown;
    try {
      doc = parse(text);
    } catch (e) {
      throw new KubeconfigError(`${f}: not valid YAML: ${(e as Error).message.split('\n')[0]}`);
    }
    out.files.push(f);
    if (typeof doc !== 'object' || doc === null) continue;
    const d = doc as Record<string, unknown>;
    if (out.current === undefined && typeof d['current-context'] === 'string' && d['current-context'] !== '')
      out.current = d['current-context'];
    if (!Array.isArray(d['contexts'])) continue;
    for (const c of d['contexts']) {
      if (typeof c !== 'object' || c === null) continue;
      const name = (c as Record<string, unknown>)['name'];
      const ctx = (c as Record<string, unknown>)['context'] as Record<string, unknown> | undefined;
      if (typeof name !== 'string' || seen.has(name)) continue;
      seen.add(name);
      out.contexts.push({
        name,
        cluster: typeof ctx?.['cluster'] === 'string' ? ctx['cluster'] : '',
        user: typeof ctx?.['user'] === 'string' ? ctx['user'] : '',
        namespace: typeof ctx?.['namespace'] === 'string' && ctx['namespace'] !== '' ? ctx['namespace'] : 'default',
      });
    }
  }
  if (out.files.length === 0)
    throw new KubeconfigError(`no kubeconfig: ${files.join(', ')} ${files.length === 1 ? 'does' : 'do'} not exist; set the setting kbridge.kubeconfig or $KUBECONFIG`);
  return out;
}

function readIfExists(f: string): string | undefined {
  try {
    return fs.readFileSync(f, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new KubeconfigError(`${f}: ${(e as Error).message}`);
  }
}
