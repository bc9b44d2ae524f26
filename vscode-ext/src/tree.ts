/* tree.ts: the "Services" view in the kbridge side bar: for each namespace the
 * workspace's kbridge tasks name (else the current context's namespace), its
 * Services with their ports and who holds a route on each (`kbridge list
 * --all`). Items of a Service this window is connected to say so; inline
 * actions connect and disconnect. */
import * as vscode from 'vscode';
import { listServices, type ServiceInfo } from './cli';
import { kbridgeTasks } from './jsonedit';
import { kubeconfigFiles, readContexts } from './kubeconfig';
import type { Manager } from './manager';
import { kbridgeBinary, sessionId } from './task';

export interface NsNode {
  kind: 'ns';
  namespace: string;
  context?: string;
}
export interface SvcNode {
  kind: 'svc';
  namespace: string;
  context?: string;
  info: ServiceInfo;
}
export interface MsgNode {
  kind: 'msg';
  text: string;
  tip?: string;
}
export type Node = NsNode | SvcNode | MsgNode;

export async function workspaceTasks(): Promise<{ folder: vscode.WorkspaceFolder; def: Record<string, unknown> }[]> {
  const out: { folder: vscode.WorkspaceFolder; def: Record<string, unknown> }[] = [];
  for (const folder of vscode.workspace.workspaceFolders ?? []) {
    try {
      const bytes = await vscode.workspace.fs.readFile(vscode.Uri.joinPath(folder.uri, '.vscode', 'tasks.json'));
      for (const def of kbridgeTasks(new TextDecoder().decode(bytes))) out.push({ folder, def });
    } catch {
      /* no tasks.json */
    }
  }
  return out;
}

export class ServicesTree implements vscode.TreeDataProvider<Node> {
  private readonly changed = new vscode.EventEmitter<Node | undefined>();
  readonly onDidChangeTreeData = this.changed.event;

  constructor(private readonly manager: Manager) {
    manager.onDidChange(() => this.changed.fire(undefined));
  }

  refresh(): void {
    this.changed.fire(undefined);
  }

  getTreeItem(n: Node): vscode.TreeItem {
    if (n.kind === 'msg') {
      const it = new vscode.TreeItem(n.text);
      it.tooltip = n.tip;
      return it;
    }
    if (n.kind === 'ns') {
      const it = new vscode.TreeItem(n.namespace, vscode.TreeItemCollapsibleState.Expanded);
      it.iconPath = new vscode.ThemeIcon('symbol-namespace');
      it.description = n.context ? `context ${n.context}` : undefined;
      return it;
    }
    const s = this.manager.get(sessionId({ context: n.context, namespace: n.namespace, service: n.info.service }));
    const mine = s?.running === true;
    const it = new vscode.TreeItem(n.info.service);
    const routes = n.info.routes.map((r) => `${r.key}${r.connected === false ? ' (gone)' : ''}`);
    it.description = [n.info.ports.map((p) => `${p.port}→${p.targetPort}`).join(', '), n.info.taken_over ? `${n.info.mode}${routes.length ? ': ' + routes.join(', ') : ''}` : '']
      .filter(Boolean)
      .join(' · ');
    it.tooltip = n.info.taken_over
      ? `taken over by ${n.info.by} (${n.info.mode})\n${n.info.routes.map((r) => `${r.key}: ${r.by} since ${r.since}`).join('\n')}`
      : 'not taken over';
    it.iconPath = new vscode.ThemeIcon(mine ? 'plug' : n.info.taken_over ? 'broadcast' : 'server');
    it.contextValue = mine ? 'service-connected' : 'service';
    if (!n.info.taken_over && Object.keys(n.info.selector).length === 0) {
      /* kbridge takes over Services that select pods; say so instead of offering it. */
      it.description = `${it.description} · no selector`;
      it.tooltip = 'no selector (endpoints managed by hand): kbridge cannot take it over';
      it.contextValue = 'service-unusable';
    }
    return it;
  }

  async getChildren(n?: Node): Promise<Node[]> {
    if (!n) {
      const tasks = await workspaceTasks();
      const seen = new Map<string, NsNode>();
      for (const { def } of tasks) {
        const ns = String(def['namespace'] ?? '');
        const ctx = typeof def['context'] === 'string' ? def['context'] : undefined;
        if (ns) seen.set(`${ctx ?? ''}/${ns}`, { kind: 'ns', namespace: ns, context: ctx });
      }
      if (seen.size === 0) {
        try {
          const kc = vscode.workspace.getConfiguration('kbridge').get<string>('kubeconfig') || undefined;
          const c = readContexts(kubeconfigFiles(kc));
          const cur = c.contexts.find((x) => x.name === c.current);
          if (cur) seen.set(`/${cur.namespace}`, { kind: 'ns', namespace: cur.namespace });
        } catch (e) {
          return [{ kind: 'msg', text: 'No kubeconfig', tip: (e as Error).message }];
        }
      }
      return [...seen.values()];
    }
    if (n.kind !== 'ns') return [];
    try {
      const kc = vscode.workspace.getConfiguration('kbridge').get<string>('kubeconfig') || undefined;
      const list = await listServices(kbridgeBinary(), n.namespace, { context: n.context, kubeconfig: kc });
      const nodes: Node[] = list
        .filter((s) => s.service !== 'kubernetes' && !s.service.endsWith('-kbridge-origin'))
        .map((info) => ({ kind: 'svc', namespace: n.namespace, context: n.context, info }));
      return nodes.length ? nodes : [{ kind: 'msg', text: 'no Services' }];
    } catch (e) {
      return [{ kind: 'msg', text: `cannot list: ${(e as Error).message}`, tip: (e as Error).message }];
    }
  }
}
