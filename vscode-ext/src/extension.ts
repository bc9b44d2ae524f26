/* extension.ts: kbridge for VS Code. Wires the parts together: the session
 * manager (status bar, log, notifications), the "kbridge" task type, the
 * Configure wizard, the Services view, the commands of the status bar menu, and
 * the rule that ends a session when the debug session it was started for ends.
 * Every disposable goes into context.subscriptions. */
import * as vscode from 'vscode';
import { restore as cliRestore, CliError } from './cli';
import { curlCommands, type ReadyEvent } from './events';
import { Manager } from './manager';
import type { Session } from './session';
import { executionFor, KbridgeTaskProvider, kbridgeBinary, makeTask, sessionId, TASK_TYPE } from './task';
import { ServicesTree, workspaceTasks, type Node } from './tree';
import { defaultRouteKey } from './validate';
import { configure } from './wizard';
import { taskLabel } from './args';

let manager: Manager | undefined;

async function pickSession(m: Manager, want: (s: Session) => boolean, placeHolder: string): Promise<Session | undefined> {
  const list = [...m.sessions.values()].filter(want);
  if (list.length === 0) {
    void vscode.window.showInformationMessage('kbridge: no session to act on.');
    return undefined;
  }
  if (list.length === 1) return list[0];
  const r = await vscode.window.showQuickPick(
    list.map((s) => ({ label: s.spec.service, description: `${s.spec.namespace} · ${s.state}${s.ready ? ` as ${s.ready.route}` : ''}`, s })),
    { placeHolder },
  );
  return r?.s;
}

async function stopSession(s: Session): Promise<void> {
  const exec = executionFor(s.spec.label);
  if (exec) exec.terminate(); /* the pty's close() stops the session */
  await s.stop();
}

/* Run the configured task for ns/svc, or an ad-hoc one with defaults. */
async function connectService(m: Manager, ns?: string, svc?: string, context?: string, targetPort?: number): Promise<void> {
  const tasks = await workspaceTasks();
  let chosen = tasks.find((t) => t.def['namespace'] === ns && t.def['service'] === svc);
  if (!ns || !svc) {
    if (tasks.length === 0) {
      const a = await vscode.window.showInformationMessage('kbridge: no kbridge task is configured in this workspace.', 'Configure');
      if (a === 'Configure') await configure(m);
      return;
    }
    const r = await vscode.window.showQuickPick(
      tasks.map((t) => ({ label: String(t.def['label'] ?? taskLabel(String(t.def['service']))), description: `${String(t.def['namespace'])}/${String(t.def['service'])}`, t })),
      { placeHolder: 'Which kbridge task?' },
    );
    if (!r) return;
    chosen = r.t;
  }
  let task: vscode.Task;
  if (chosen) {
    const label = String(chosen.def['label'] ?? taskLabel(String(chosen.def['service'])));
    const all = await vscode.tasks.fetchTasks({ type: TASK_TYPE });
    task = all.find((t) => t.name === label) ?? makeTask(m, chosen.def as vscode.TaskDefinition, chosen.folder, label);
  } else {
    const folder = vscode.workspace.workspaceFolders?.[0];
    const key = defaultRouteKey(vscode.workspace.getConfiguration('kbridge').get<string>('defaultRouteKey'));
    const def: vscode.TaskDefinition = { type: TASK_TYPE, namespace: ns!, service: svc!, localPort: targetPort ?? 8080, routeAs: key };
    if (context) def['context'] = context;
    task = makeTask(m, def, folder ?? vscode.TaskScope.Workspace, taskLabel(svc!));
  }
  await vscode.tasks.executeTask(task);
}

async function restoreService(m: Manager, ns?: string, svc?: string, context?: string): Promise<void> {
  if (!ns || !svc) {
    const s = await pickSession(m, () => true, 'Restore which Service?');
    if (!s) return;
    ns = s.spec.namespace;
    svc = s.spec.service;
    context = s.spec.context;
  }
  const a = await vscode.window.showWarningMessage(
    `Restore ${ns}/${svc}? Its selector and replicas are put back and every kbridge object is removed, ending the routes of everyone connected to it.`,
    { modal: true },
    'Restore',
  );
  if (a !== 'Restore') return;
  try {
    const kc = vscode.workspace.getConfiguration('kbridge').get<string>('kubeconfig') || undefined;
    const report = await cliRestore(kbridgeBinary(), ns, svc, { context, kubeconfig: kc });
    m.log(`restore ${ns}/${svc}: ${report}`);
    void vscode.window.showInformationMessage(`kbridge: ${report}`);
  } catch (e) {
    m.notifyError(undefined, e instanceof CliError ? e.reason : 'failed', (e as Error).message);
  }
}

function openTerminal(s: Session): void {
  const env: Record<string, string> = { ...(s.ready?.env ?? {}), KBRIDGE_ROUTE_KEY: s.ready?.route ?? '' };
  const t = vscode.window.createTerminal({ name: `kbridge env: ${s.spec.service}`, env, cwd: s.spec.cwd });
  t.show();
}

async function copyCurl(curl: string): Promise<void> {
  await vscode.env.clipboard.writeText(curl);
  void vscode.window.showInformationMessage(`kbridge: copied "${curl}" (run it in a pod of the cluster)`);
}

/* Without --ingress there is no URL for a browser on this machine: say so, and
 * offer what does work. */
async function noBrowserUrl(ready: ReadyEvent): Promise<void> {
  const curl = curlCommands(ready)[0];
  const copy = 'Copy the curl command';
  const r = await vscode.window.showInformationMessage(
    `kbridge: no URL a browser here can open: the Service's URL is a cluster name${curl ? ` (from a pod: ${curl})` : ''}. With an Ingress in front of the Service, "ingress: true" in kbridge.yaml (connect --ingress) gives you a URL of your own.`,
    ...(curl ? [copy] : []),
  );
  if (r === copy && curl) await copyCurl(curl);
}

async function menu(m: Manager): Promise<void> {
  type Item = vscode.QuickPickItem & { run: () => unknown };
  const items: Item[] = [];
  for (const s of m.sessions.values()) {
    const name = `${s.spec.namespace}/${s.spec.service}`;
    items.push({ label: `${name}: ${s.state}${s.ready ? ` as ${s.ready.route}` : ''}`, kind: vscode.QuickPickItemKind.Separator, run: () => undefined });
    if (s.state === 'connected' && s.ready) {
      /* Only an Ingress clone's URL opens in a browser here: the Service's URLs
       * are cluster names, reaching you with your header (a curl from a pod). */
      const url = s.ready.ingress_urls?.[0];
      if (url) items.push({ label: '$(link-external) Open the route URL', description: url, run: () => vscode.env.openExternal(vscode.Uri.parse(url)) });
      const curl = curlCommands(s.ready)[0];
      if (curl) items.push({ label: '$(copy) Copy a curl command (to run in a pod)', description: curl, run: () => copyCurl(curl) });
      if (s.ready.header)
        items.push({ label: '$(copy) Copy the route header', description: s.ready.header, run: async () => { await vscode.env.clipboard.writeText(s.ready!.header); void vscode.window.showInformationMessage(`kbridge: copied "${s.ready!.header}"`); } });
      items.push({ label: "$(terminal) Open a terminal with the session's environment", run: () => openTerminal(s) });
    }
    if (s.running) items.push({ label: '$(debug-disconnect) Disconnect', description: name, run: () => stopSession(s) });
    if (s.running || executionFor(s.spec.label) || s.state === 'failed' || s.state === 'disconnected')
      items.push({ label: '$(refresh) Reconnect', description: name, run: () => vscode.commands.executeCommand('kbridge.reconnect', s) });
    if (!s.running) items.push({ label: '$(history) Restore the service', description: `${name} (for a session that died)`, run: () => restoreService(m, s.spec.namespace, s.spec.service, s.spec.context) });
  }
  items.push({ label: 'kbridge', kind: vscode.QuickPickItemKind.Separator, run: () => undefined });
  items.push({ label: '$(output) Show the log', run: () => m.out.show(true) });
  items.push({ label: '$(plug) Connect…', run: () => connectService(m) });
  items.push({ label: '$(gear) Configure a service for debugging…', run: () => configure(m) });
  items.push({ label: '$(history) Restore a service…', run: async () => {
    const ns = await vscode.window.showInputBox({ prompt: 'Namespace' });
    const svc = ns ? await vscode.window.showInputBox({ prompt: 'Service' }) : undefined;
    if (ns && svc) await restoreService(m, ns, svc);
  } });
  const r = await vscode.window.showQuickPick(items, { placeHolder: 'kbridge' });
  if (r) await r.run();
}

export function activate(context: vscode.ExtensionContext): void {
  const m = new Manager();
  manager = m;
  const tree = new ServicesTree(m);
  const sub = context.subscriptions;
  sub.push(m);
  sub.push(vscode.tasks.registerTaskProvider(TASK_TYPE, new KbridgeTaskProvider(m)));
  sub.push(vscode.window.registerTreeDataProvider('kbridge.services', tree));
  sub.push(
    vscode.commands.registerCommand('kbridge.configure', () => configure(m)),
    vscode.commands.registerCommand('kbridge.connect', (n?: Node) =>
      n?.kind === 'svc'
        ? connectService(m, n.namespace, n.info.service, n.context, (() => { const p = n.info.ports.find((x) => x.protocol === 'TCP'); return p ? (typeof p.targetPort === 'number' ? p.targetPort : p.port) : undefined; })())
        : connectService(m)),
    vscode.commands.registerCommand('kbridge.disconnect', async (n?: Node) => {
      const s = n?.kind === 'svc' ? m.get(sessionId({ context: n.context, namespace: n.namespace, service: n.info.service })) : await pickSession(m, (x) => x.running, 'Disconnect which session?');
      if (s) await stopSession(s);
    }),
    vscode.commands.registerCommand('kbridge.reconnect', async (given?: Session) => {
      const s = given ?? (await pickSession(m, () => true, 'Reconnect which session?'));
      if (!s) return;
      await stopSession(s);
      await connectService(m, s.spec.namespace, s.spec.service, s.spec.context, s.spec.localPort);
    }),
    vscode.commands.registerCommand('kbridge.restore', (n?: Node) => (n?.kind === 'svc' ? restoreService(m, n.namespace, n.info.service, n.context) : restoreService(m))),
    vscode.commands.registerCommand('kbridge.menu', () => menu(m)),
    vscode.commands.registerCommand('kbridge.showLog', () => m.out.show(true)),
    vscode.commands.registerCommand('kbridge.openUrl', async () => {
      const s = await pickSession(m, (x) => x.state === 'connected', 'Which session?');
      const url = s?.ready?.ingress_urls?.[0];
      if (url) await vscode.env.openExternal(vscode.Uri.parse(url));
      else if (s?.ready) await noBrowserUrl(s.ready);
    }),
    vscode.commands.registerCommand('kbridge.copyHeader', async () => {
      const s = await pickSession(m, (x) => x.state === 'connected', 'Which session?');
      if (s?.ready?.header) await vscode.env.clipboard.writeText(s.ready.header);
    }),
    vscode.commands.registerCommand('kbridge.openTerminal', async () => {
      const s = await pickSession(m, (x) => x.state === 'connected', 'Which session?');
      if (s) openTerminal(s);
    }),
    vscode.commands.registerCommand('kbridge.refresh', () => tree.refresh()),
  );
  sub.push(vscode.debug.onDidStartDebugSession((ds) => m.log(`debug session "${ds.name}" started`)));
  /* Only logs: when F5 reaches the debug configuration, for the timeline in the log. */
  sub.push(
    vscode.debug.registerDebugConfigurationProvider('*', {
      resolveDebugConfiguration(_folder, config) {
        if (typeof config.preLaunchTask === 'string' && executionFor(config.preLaunchTask) === undefined)
          m.log(`debug configuration "${config.name}" starting; preLaunchTask "${config.preLaunchTask}"`);
        return config;
      },
    }),
  );
  /* F5 ran our task as preLaunchTask: when that debug session ends, disconnect. */
  sub.push(
    vscode.debug.onDidTerminateDebugSession((ds) => {
      if (ds.parentSession) return;
      const label = ds.configuration.preLaunchTask;
      if (typeof label !== 'string') return;
      const exec = executionFor(label);
      if (exec) {
        m.log(`debug session "${ds.name}" ended: disconnecting task "${label}"`);
        exec.terminate();
      }
    }),
    vscode.tasks.onDidEndTask(() => tree.refresh()),
  );
}

export async function deactivate(): Promise<void> {
  await manager?.stopAll();
}
