/* wizard.ts: "kbridge: Configure a service for debugging".
 *
 * Asks, one QuickPick or input at a time: folder (multi-root) -> kubeconfig
 * context -> namespace -> Service (with its ports and who holds routes) ->
 * target port -> local port -> route key or the whole Service -> launch
 * configuration (an existing one, or a new Node.js / Python one, or none).
 * Then writes a "kbridge" task to .vscode/tasks.json, links the launch
 * configuration to it (preLaunchTask + envFile), and keeps the env file out of
 * git. Escape at any step changes nothing. */
import * as net from 'node:net';
import * as vscode from 'vscode';
import { TASK_PROBLEM_MATCHER, taskLabel, type KbridgeTaskDefinition } from './args';
import { CliError, listNamespaces, listServices, type ServiceInfo } from './cli';
import { linkLaunchConfig, listLaunchConfigs, upsertLaunchConfig, upsertTask } from './jsonedit';
import { kubeconfigFiles, readContexts } from './kubeconfig';
import type { Manager } from './manager';
import { kbridgeBinary } from './task';
import { defaultRouteKey, dnsLabelProblem } from './validate';

const STEPS = 8;
const title = (n: number, what: string) => `kbridge: configure (${n}/${STEPS}): ${what}`;

export function portFree(port: number, host = '127.0.0.1'): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.once('error', () => resolve(false));
    srv.listen(port, host, () => srv.close(() => resolve(true)));
  });
}

async function readText(uri: vscode.Uri): Promise<string> {
  try {
    return new TextDecoder().decode(await vscode.workspace.fs.readFile(uri));
  } catch {
    return '';
  }
}
async function writeText(uri: vscode.Uri, text: string): Promise<void> {
  await vscode.workspace.fs.writeFile(uri, new TextEncoder().encode(text));
}

interface Pick<T> extends vscode.QuickPickItem {
  value: T;
}

async function pick<T>(items: Pick<T>[], t: string, placeHolder: string): Promise<T | undefined> {
  const r = await vscode.window.showQuickPick(items, { title: t, placeHolder, ignoreFocusOut: true, matchOnDescription: true });
  return r?.value;
}

function portText(s: ServiceInfo): string {
  return s.ports.map((p) => `${p.port}→${p.targetPort}${p.protocol !== 'TCP' ? `/${p.protocol}` : ''}`).join(', ');
}

/* Guess the program of a new Node.js configuration. */
async function nodeProgram(folder: vscode.Uri): Promise<string> {
  try {
    const pkg = JSON.parse(await readText(vscode.Uri.joinPath(folder, 'package.json'))) as { main?: string };
    if (pkg.main) return '${workspaceFolder}/' + pkg.main.replace(/^\.\//, '');
  } catch {
    /* no package.json */
  }
  for (const f of ['server.js', 'index.js', 'app.js', 'main.js', 'src/index.js', 'src/server.js']) {
    try {
      await vscode.workspace.fs.stat(vscode.Uri.joinPath(folder, f));
      return '${workspaceFolder}/' + f;
    } catch {
      /* next */
    }
  }
  return '${workspaceFolder}/index.js';
}

export async function configure(manager: Manager, preset?: { namespace?: string; service?: string }): Promise<boolean> {
  /* 0. folder */
  const folders = vscode.workspace.workspaceFolders ?? [];
  if (folders.length === 0) {
    void vscode.window.showErrorMessage('kbridge: open a folder first (the task and launch configuration are written to its .vscode/).');
    return false;
  }
  const folder = folders.length === 1 ? folders[0] : await vscode.window.showWorkspaceFolderPick({ placeHolder: 'Which folder runs the service locally?', ignoreFocusOut: true });
  if (!folder) return false;
  const cfg = vscode.workspace.getConfiguration('kbridge', folder);
  const kubeconfig = cfg.get<string>('kubeconfig') || undefined;
  let bin: string;
  try {
    bin = kbridgeBinary(folder);
  } catch (e) {
    manager.notifyError(undefined, 'not_installed', (e as Error).message);
    return false;
  }

  /* 1. context */
  let contexts;
  try {
    contexts = readContexts(kubeconfigFiles(kubeconfig));
  } catch (e) {
    manager.notifyError(undefined, 'kubeconfig', (e as Error).message);
    return false;
  }
  if (contexts.contexts.length === 0) {
    manager.notifyError(undefined, 'kubeconfig', `${contexts.files.join(', ')} defines no context`);
    return false;
  }
  const ordered = [...contexts.contexts].sort((a, b) => (a.name === contexts.current ? -1 : b.name === contexts.current ? 1 : 0));
  const ctx = await pick(
    ordered.map((c) => ({ label: c.name, description: c.name === contexts.current ? '(current) ' + c.cluster : c.cluster, detail: `user ${c.user}, namespace ${c.namespace}`, value: c })),
    title(1, 'kubeconfig context'),
    'The cluster and user to connect with',
  );
  if (!ctx) return false;
  const context = ctx.name === contexts.current ? undefined : ctx.name;
  const flags = { context: ctx.name, kubeconfig };

  /* 2. namespace */
  let namespace = preset?.namespace;
  if (!namespace) {
    try {
      const r = await listNamespaces(bin, flags);
      const names = [ctx.namespace, ...r.namespaces.filter((n) => n !== ctx.namespace)];
      namespace = await pick(names.map((n) => ({ label: n, description: n === ctx.namespace ? "the context's namespace" : '', value: n })), title(2, 'namespace'), 'Namespace of the Service');
    } catch (e) {
      /* May not list namespaces (a Role in one namespace): ask for the name. */
      manager.log(`namespaces: ${(e as Error).message}; asking for the name`);
      namespace = await vscode.window.showInputBox({
        title: title(2, 'namespace'),
        prompt: 'You may not list namespaces here; type the namespace of the Service',
        value: ctx.namespace,
        ignoreFocusOut: true,
        validateInput: (v) => dnsLabelProblem(v, 'namespace'),
      });
    }
    if (!namespace) return false;
  }

  /* 3. service */
  let services: ServiceInfo[];
  try {
    services = await listServices(bin, namespace, flags);
  } catch (e) {
    manager.notifyError(undefined, e instanceof CliError ? e.reason : 'failed', (e as Error).message);
    return false;
  }
  /* What kbridge can take over: a TCP port and a selector (or already taken
   * over, whose selector is then the agent's). */
  const candidates = services.filter((s) => s.service !== 'kubernetes' && !s.service.endsWith('-kbridge-origin'));
  const usable = candidates.filter((s) => s.ports.some((p) => p.protocol === 'TCP') && (s.taken_over || Object.keys(s.selector).length > 0));
  const hidden = candidates.length - usable.length;
  if (usable.length === 0) {
    void vscode.window.showErrorMessage(`kbridge: namespace ${namespace} has no Service kbridge can take over (one that selects pods and has a TCP port)`);
    return false;
  }
  let svc = preset?.service ? usable.find((s) => s.service === preset.service) : undefined;
  if (!svc) {
    svc = await pick(
      usable.map((s) => ({
        label: s.service,
        description: portText(s),
        detail: s.taken_over ? `taken over (${s.mode}) — routes: ${s.routes.map((r) => `${r.key} by ${r.by}${r.connected === false ? ' (not connected)' : ''}`).join(', ') || 'none'}` : undefined,
        value: s,
      })),
      title(3, 'Service'),
      `Services of ${namespace}: the one you run locally${hidden ? ` (${hidden} not shown: no selector or no TCP port)` : ''}`,
    );
    if (!svc) return false;
  }

  /* 4. target port */
  const tcp = svc.ports.filter((p) => p.protocol === 'TCP');
  const port =
    tcp.length === 1
      ? tcp[0]
      : await pick(tcp.map((p) => ({ label: String(p.port), description: `${p.name ? p.name + ': ' : ''}→ ${p.targetPort}`, value: p })), title(4, 'port'), 'The port your local process serves');
  if (!port) return false;

  /* 5. local port: the service's port if free */
  let suggested = typeof port.targetPort === 'number' ? port.targetPort : port.port;
  if (!(await portFree(suggested))) {
    for (let p = suggested + 1; p < suggested + 100 && p <= 65535; p++) {
      if (await portFree(p)) {
        suggested = p;
        break;
      }
    }
  }
  const localText = await vscode.window.showInputBox({
    title: title(5, 'local port'),
    prompt: `Your local process listens on this port (localhost). Service port ${port.port} → target ${port.targetPort}.`,
    value: String(suggested),
    ignoreFocusOut: true,
    validateInput: (v) => (/^\d+$/.test(v) && Number(v) >= 1 && Number(v) <= 65535 ? undefined : 'a port number 1-65535'),
  });
  if (!localText) return false;
  const localPort = Number(localText);
  if (!(await portFree(localPort)))
    void vscode.window.showWarningMessage(`kbridge: port ${localPort} is in use right now; your debugged process must be the one listening there when requests arrive.`);

  /* 6. route key or the whole service */
  const keyDefault = defaultRouteKey(cfg.get<string>('defaultRouteKey'));
  const mode = await pick(
    [
      { label: 'Route my requests only', description: `route key (default ${keyDefault})`, detail: 'Requests with your key reach you; everyone else keeps the real pods.', value: 'route' },
      { label: 'Take the whole service', description: '--replace', detail: 'All traffic reaches you; the original pods are scaled to 0 until you disconnect.', value: 'replace' },
    ],
    title(6, 'route'),
    'Which requests reach your machine?',
  );
  if (!mode) return false;
  let routeAs: string | undefined;
  if (mode === 'route') {
    routeAs = await vscode.window.showInputBox({
      title: title(6, 'route key'),
      prompt: 'Your route key (a DNS label): requests with kubernetes-route-as: KEY, baggage kbridge-route=KEY, or a host KEY.… reach you',
      value: keyDefault,
      ignoreFocusOut: true,
      validateInput: (v) => dnsLabelProblem(v, 'route key'),
    });
    if (!routeAs) return false;
  }

  /* 7. launch configuration */
  const vscodeDir = vscode.Uri.joinPath(folder.uri, '.vscode');
  const launchUri = vscode.Uri.joinPath(vscodeDir, 'launch.json');
  const tasksUri = vscode.Uri.joinPath(vscodeDir, 'tasks.json');
  let launchText = await readText(launchUri);
  let existing;
  try {
    existing = listLaunchConfigs(launchText);
  } catch (e) {
    void vscode.window.showErrorMessage(`kbridge: ${(e as Error).message}`);
    return false;
  }
  type LaunchChoice = { kind: 'existing'; name: string } | { kind: 'node' } | { kind: 'python' } | { kind: 'none' };
  const choice = await pick<LaunchChoice>(
    [
      ...existing.filter((c) => c.name).map((c) => ({ label: c.name, description: `${c.type} ${c.request}${c.preLaunchTask ? ` (runs ${c.preLaunchTask} first)` : ''}`, value: { kind: 'existing', name: c.name } as LaunchChoice })),
      { label: 'New: Node.js', description: 'launch a program under the Node.js debugger', value: { kind: 'node' } },
      { label: 'New: Python', description: 'launch a program under debugpy', value: { kind: 'python' } },
      { label: 'Attach later', description: 'no launch configuration: run the task, start your process yourself', value: { kind: 'none' } },
    ],
    title(7, 'launch configuration'),
    'Which debug configuration connects first (F5)?',
  );
  if (!choice) return false;

  const label = taskLabel(svc.service);
  /* The task names the env file relative to its folder, the launch
   * configuration with ${workspaceFolder}: a task definition without variables
   * starts without VS Code's input-resolution step, whose 5 s "cannot be
   * tracked" timer a loaded machine can miss before the task reports active. */
  const envRel = `.vscode/kbridge/${svc.service}.env`;
  const envFile = `\${workspaceFolder}/${envRel}`;
  const def: KbridgeTaskDefinition = { type: 'kbridge', namespace, service: svc.service, port: port.port, localPort, envFile: envRel };
  if (routeAs) def.routeAs = routeAs;
  else def.replace = true;
  if (context) def.context = context;
  const task = { label, ...def, isBackground: true, problemMatcher: TASK_PROBLEM_MATCHER };

  /* 8. write */
  let launchName: string | undefined;
  try {
    let tasksText = await readText(tasksUri);
    tasksText = upsertTask(tasksText, task);
    if (choice.kind === 'existing') {
      launchText = linkLaunchConfig(launchText, choice.name, label, envFile);
      launchName = choice.name;
    } else if (choice.kind === 'node') {
      const program = await vscode.window.showInputBox({ title: title(8, 'program'), prompt: 'The Node.js program to debug', value: await nodeProgram(folder.uri), ignoreFocusOut: true });
      if (!program) return false;
      launchName = `${svc.service} (kbridge)`;
      launchText = upsertLaunchConfig(launchText, {
        name: launchName, type: 'node', request: 'launch', program, preLaunchTask: label, envFile,
        env: { PORT: String(localPort) }, skipFiles: ['<node_internals>/**'],
      });
    } else if (choice.kind === 'python') {
      const program = await vscode.window.showInputBox({ title: title(8, 'program'), prompt: 'The Python program to debug', value: '${workspaceFolder}/app.py', ignoreFocusOut: true });
      if (!program) return false;
      launchName = `${svc.service} (kbridge)`;
      launchText = upsertLaunchConfig(launchText, {
        name: launchName, type: 'debugpy', request: 'launch', program, preLaunchTask: label, envFile,
        env: { PORT: String(localPort) }, console: 'integratedTerminal',
      });
    }
    await vscode.workspace.fs.createDirectory(vscode.Uri.joinPath(vscodeDir, 'kbridge'));
    /* The env file holds the pod's secrets: keep it out of version control. */
    await writeText(vscode.Uri.joinPath(vscodeDir, 'kbridge', '.gitignore'), '# written by kbridge: env files hold secrets\n*\n');
    await writeText(tasksUri, tasksText);
    if (launchName) await writeText(launchUri, launchText);
  } catch (e) {
    void vscode.window.showErrorMessage(`kbridge: ${(e as Error).message}`);
    return false;
  }
  manager.log(`configured task "${label}" for ${namespace}/${svc.service} -> localhost:${localPort}${routeAs ? ` as ${routeAs}` : ' (whole service)'}${launchName ? `; launch configuration "${launchName}"` : ''}`);
  const msg = launchName
    ? `kbridge: "${launchName}" now connects ${namespace}/${svc.service} first. Press F5 to debug.`
    : `kbridge: task "${label}" written. Run it (Tasks: Run Task) and start your process on port ${localPort}.`;
  void vscode.window.showInformationMessage(msg);
  return true;
}
