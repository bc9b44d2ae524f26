/* task.ts: the task type "kbridge". A task runs `kbridge connect --output json`
 * in a pseudo-terminal (CustomExecution) and stays running (isBackground) while
 * the session lives. The terminal shows the progress; the line
 * "kbridge: ready ..." ends the background problem matcher's active phase
 * ($kbridge in package.json), which is what lets a launch configuration's
 * preLaunchTask hand over to the debugger only once the route is ready. Closing
 * the terminal or terminating the task (also: the debug session that started
 * it ends) stops kbridge, which restores the cluster. */
import * as path from 'node:path';
import * as vscode from 'vscode';
import { connectArgs, shellQuote, TaskDefinitionError } from './args';
import { findKbridge } from './cli';
import { curlCommands, type KbridgeEvent } from './events';
import type { Manager } from './manager';
import type { Session } from './session';

export const TASK_TYPE = 'kbridge';

function settings(scope?: vscode.ConfigurationScope) {
  const c = vscode.workspace.getConfiguration('kbridge', scope);
  return {
    path: c.get<string>('path') || undefined,
    agentImage: c.get<string>('agentImage') || undefined,
    kubeconfig: c.get<string>('kubeconfig') || undefined,
  };
}

export function folderPaths(): string[] {
  return (vscode.workspace.workspaceFolders ?? []).map((f) => f.uri.fsPath);
}

export function kbridgeBinary(scope?: vscode.ConfigurationScope): string {
  return findKbridge(settings(scope).path, folderPaths());
}

export function sessionId(def: { context?: unknown; namespace?: unknown; service?: unknown }): string {
  return `${String(def.context ?? '')}/${String(def.namespace)}/${String(def.service)}`;
}

/* A folder's variables, for definitions that reach us unresolved. */
function substitute(v: unknown, folder?: vscode.WorkspaceFolder): unknown {
  if (typeof v === 'string') {
    return v
      .replace(/\$\{workspaceFolder\}/g, folder?.uri.fsPath ?? '')
      .replace(/\$\{workspaceFolderBasename\}/g, folder ? path.basename(folder.uri.fsPath) : '')
      .replace(/\$\{userHome\}/g, process.env['HOME'] ?? '')
      .replace(/\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}/g, (_m, n: string) => process.env[n] ?? '');
  }
  if (Array.isArray(v)) return v.map((x) => substitute(x, folder));
  return v;
}

class KbridgePty implements vscode.Pseudoterminal {
  private readonly writer = new vscode.EventEmitter<string>();
  private readonly closer = new vscode.EventEmitter<number>();
  readonly onDidWrite = this.writer.event;
  readonly onDidClose = this.closer.event;
  private session?: Session;
  private closed = false;

  constructor(
    private readonly manager: Manager,
    private readonly def: Record<string, unknown>,
    private readonly label: string,
    private readonly folder?: vscode.WorkspaceFolder,
  ) {}

  private line(s: string): void {
    this.writer.fire(s.replace(/\r?\n/g, '\r\n') + '\r\n');
  }

  private end(code: number): void {
    if (this.closed) return;
    this.closed = true;
    this.closer.fire(code);
  }

  open(): void {
    this.manager.log(`[task ${this.label}] terminal open`);
    const def: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(this.def)) def[k] = substitute(v, this.folder);
    /* A relative env file belongs to the task's folder. */
    if (typeof def['envFile'] === 'string' && def['envFile'] !== '' && !path.isAbsolute(def['envFile']) && this.folder)
      def['envFile'] = path.join(this.folder.uri.fsPath, def['envFile']);
    const where = this.folder ? path.join(this.folder.uri.fsPath, '.vscode', 'tasks.json') : 'tasks.json';
    this.line(`kbridge: connecting ${String(def['namespace'])}/${String(def['service'])} (task "${this.label}")`);
    let args: string[];
    let bin: string;
    try {
      const s = settings(this.folder);
      args = connectArgs(def, { kubeconfig: s.kubeconfig, agentImage: s.agentImage });
      bin = kbridgeBinary(this.folder);
    } catch (e) {
      const reason = e instanceof TaskDefinitionError ? 'task' : 'not_installed';
      this.line(`kbridge: failed: ${where}: ${(e as Error).message}`);
      this.manager.log(`[task ${this.label}] ${(e as Error).message}`);
      this.manager.notifyError(undefined, reason, (e as Error).message);
      this.end(2);
      return;
    }
    this.line(`$ ${shellQuote([bin, ...args])}`);
    try {
      this.session = this.manager.start(
        {
          id: sessionId(def),
          label: this.label,
          bin,
          args,
          namespace: String(def['namespace']),
          service: String(def['service']),
          context: def['context'] as string | undefined,
          kubeconfig: (def['kubeconfig'] as string | undefined) ?? settings(this.folder).kubeconfig,
          routeAs: def['routeAs'] as string | undefined,
          replace: def['replace'] === true,
          localPort: Number(def['localPort']),
          cwd: this.folder?.uri.fsPath,
        },
        { event: (_s, ev) => this.onEvent(ev), exit: (s, code) => this.onExit(s, code) },
      );
    } catch (e) {
      this.line(`kbridge: failed: ${where}: ${(e as Error).message}`);
      this.manager.notifyError(undefined, 'busy', (e as Error).message);
      this.end(2);
    }
  }

  private onEvent(ev: KbridgeEvent): void {
    switch (ev.event) {
      case 'progress':
        this.line(`[${(ev.elapsed ?? 0).toFixed(1).padStart(5)}s] ${ev.message}`);
        break;
      case 'ready':
        this.line(`kbridge: ready in ${ev.seconds.toFixed(2)} s: route ${ev.route} -> 127.0.0.1:${ev.local_port}${ev.mode === 'exclusive' ? ' (all traffic)' : ''}`);
        for (const c of curlCommands(ev)) this.line(`  from a pod: ${c}`);
        for (const u of ev.ingress_urls ?? []) this.line(`  ingress: ${u}`);
        for (const f of ev.forwards) this.line(`  forward: ${f.listen} -> ${f.target}`);
        this.line('  (terminate this task or stop debugging to disconnect)');
        break;
      case 'connection':
        if (ev.state === 'failed') this.line(`  connection from ${ev.peer} not delivered: ${ev.error ?? ''}`);
        break;
      case 'error':
        this.line(`kbridge: failed: ${ev.message}`);
        break;
      case 'disconnected':
        this.line(`kbridge: disconnected${ev.restored ? '; the cluster is restored' : ''}`);
        break;
      default:
        break;
    }
  }

  private onExit(s: Session, code: number | null): void {
    if (s.state === 'failed' && !s.error) this.line('kbridge: failed: kbridge connect ended');
    this.end(code ?? 1);
  }

  /* The terminal was closed or the task terminated: disconnect, wait for the
   * restore (kbridge exits when done). */
  close(): void {
    this.closed = true;
    void this.session?.stop();
  }
}

export function makeTask(
  manager: Manager,
  def: vscode.TaskDefinition,
  scope: vscode.WorkspaceFolder | vscode.TaskScope,
  name: string,
): vscode.Task {
  const folder = typeof scope === 'object' ? scope : undefined;
  const task = new vscode.Task(
    def,
    scope,
    name,
    'kbridge',
    new vscode.CustomExecution(async (resolved) => {
      manager.log(`[task ${name}] starting`);
      return new KbridgePty(manager, { ...resolved }, name, folder);
    }),
    ['$kbridge'],
  );
  task.isBackground = true;
  task.presentationOptions = { reveal: vscode.TaskRevealKind.Always, panel: vscode.TaskPanelKind.Dedicated, clear: true };
  return task;
}

export class KbridgeTaskProvider implements vscode.TaskProvider {
  constructor(private readonly manager: Manager) {}

  /* kbridge tasks come from tasks.json (the Configure command writes them). */
  provideTasks(): vscode.Task[] {
    return [];
  }

  resolveTask(task: vscode.Task): vscode.Task | undefined {
    if (task.definition.type !== TASK_TYPE) return undefined;
    this.manager.log(`[task ${task.name}] resolved`);
    const scope = task.scope ?? vscode.TaskScope.Workspace;
    return makeTask(this.manager, task.definition, scope as vscode.WorkspaceFolder | vscode.TaskScope, task.name);
  }
}

/* The running task execution of a session, if it was started as a task. */
export function executionFor(label: string): vscode.TaskExecution | undefined {
  return vscode.tasks.taskExecutions.find((e) => e.task.definition.type === TASK_TYPE && e.task.name === label);
}
