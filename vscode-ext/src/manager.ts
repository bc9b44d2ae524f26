/* manager.ts: every kbridge session of this window, the log (an output
 * channel), the status bar item, and error notifications.
 *
 * Sessions are keyed by context/namespace/service: one session per Service (a
 * second would be refused by the agent anyway); two Services at once is two
 * sessions. Everything created here is disposed with the extension. */
import * as vscode from 'vscode';
import { curlCommands, type KbridgeEvent } from './events';
import { Session, type SessionSpec } from './session';

/* What to do about an error event's reason, said to the user. */
export function advice(reason: string): string {
  switch (reason) {
    case 'kubeconfig':
      return 'Check your kubeconfig: set kbridge.kubeconfig, $KUBECONFIG or ~/.kube/config, and the task\'s "context".';
    case 'unreachable':
      return 'The API server did not answer: check the cluster is up and your network or VPN.';
    case 'unauthorized':
      return 'The API server refused your credentials: log in again (refresh your token).';
    case 'forbidden':
      return 'Your Kubernetes user lacks a right kbridge needs: ask your admin for the kbridge developer Role (docs/rbac.md) in this namespace.';
    case 'not_found':
      return 'Check the namespace and Service of the task (kbridge: Configure a service for debugging).';
    case 'port_in_use':
      return 'A local port is in use: choose another in the task.';
    case 'route_held':
      return 'Someone else holds this route key: choose another routeAs in the task.';
    case 'agent_refused':
      return 'The cluster refused the agent pod (quota, LimitRange or policy): adapt it with the agent pod keys of kbridge.yaml (agent-requests, agent-limits, agent-label, ...; see the user guide).';
    case 'bad_flag':
    case 'task':
      return 'Fix the kbridge task in .vscode/tasks.json.';
    case 'not_installed':
      return 'Install kbridge or set kbridge.path.';
    default:
      return '';
  }
}

function fmtBytes(n = 0): string {
  return n < 1024 ? `${n} B` : n < 1 << 20 ? `${(n / 1024).toFixed(1)} KiB` : `${(n / (1 << 20)).toFixed(1)} MiB`;
}

export class Manager implements vscode.Disposable {
  readonly sessions = new Map<string, Session>();
  readonly out: vscode.OutputChannel;
  private readonly status: vscode.StatusBarItem;
  private readonly changed = new vscode.EventEmitter<Session | undefined>();
  readonly onDidChange = this.changed.event;
  private lastFailed?: Session;

  constructor() {
    this.out = vscode.window.createOutputChannel('kbridge');
    this.status = vscode.window.createStatusBarItem('kbridge.status', vscode.StatusBarAlignment.Left, 10);
    this.status.name = 'kbridge';
    this.status.command = 'kbridge.menu';
    this.render();
    this.status.show();
  }

  log(line: string): void {
    const t = new Date().toISOString().slice(11, 23);
    this.out.appendLine(`${t} ${line}`);
  }

  get(id: string): Session | undefined {
    return this.sessions.get(id);
  }

  running(): Session[] {
    return [...this.sessions.values()].filter((s) => s.running);
  }

  /* Start `kbridge connect`. A running session on the same Service is an
   * error (stop it first). extra receives the session's events too (the task
   * terminal). */
  start(spec: SessionSpec, extra: Parameters<typeof this.listen>[0] = {}): Session {
    const old = this.sessions.get(spec.id);
    if (old?.running) throw new Error(`a kbridge session for ${spec.namespace}/${spec.service} is already running (${old.spec.label}); disconnect it first`);
    const s = new Session(spec, this.listen(extra));
    this.sessions.set(spec.id, s);
    this.log(`[${spec.service}] ${spec.bin} ${spec.args.join(' ')}`);
    s.start();
    this.render();
    this.changed.fire(s);
    return s;
  }

  private listen(extra: {
    event?: (s: Session, ev: KbridgeEvent) => void;
    exit?: (s: Session, code: number | null) => void;
    garbage?: (s: Session, line: string, why: string) => void;
  }) {
    return {
      event: (s: Session, ev: KbridgeEvent) => {
        this.logEvent(s, ev);
        if (ev.event === 'error') this.notifyError(s, ev.reason, ev.message);
        extra.event?.(s, ev);
      },
      garbage: (s: Session, line: string, why: string) => {
        this.log(`[${s.spec.service}] unreadable output from kbridge (${why}): ${line}`);
        extra.garbage?.(s, line, why);
      },
      stderr: (s: Session, line: string) => this.log(`[${s.spec.service}] ${line}`),
      state: (s: Session) => {
        if (s.state === 'failed') this.lastFailed = s;
        this.render();
        this.changed.fire(s);
      },
      exit: (s: Session, code: number | null, signal: string | null) => {
        this.log(`[${s.spec.service}] kbridge exited (${signal ? `signal ${signal}` : `status ${code}`})${s.restored ? '; the cluster is restored' : ''}`);
        this.render();
        this.changed.fire(s);
        extra.exit?.(s, code);
      },
    };
  }

  private logEvent(s: Session, ev: KbridgeEvent): void {
    const p = `[${s.spec.service}]`;
    switch (ev.event) {
      case 'progress':
        this.log(`${p} ${ev.message}`);
        break;
      case 'ready':
        this.log(`${p} ready in ${ev.seconds.toFixed(2)} s: route ${ev.route} -> 127.0.0.1:${ev.local_port} (${ev.mode})`);
        for (const c of curlCommands(ev)) this.log(`${p}   from a pod: ${c}`);
        for (const u of ev.ingress_urls ?? []) this.log(`${p}   ingress: ${u}`);
        if (ev.header) this.log(`${p}   header: ${ev.header}`);
        for (const f of ev.forwards) this.log(`${p}   forward: ${f.listen} -> ${f.target}`);
        break;
      case 'connection':
        if (ev.state === 'open') this.log(`${p} connection from ${ev.peer} (service port ${ev.port})`);
        else if (ev.state === 'failed') this.log(`${p} connection from ${ev.peer} NOT delivered: ${ev.error ?? ''}`);
        else
          this.log(`${p} connection from ${ev.peer} closed after ${(ev.seconds ?? 0).toFixed(2)} s: ${fmtBytes(ev.bytes_in)} in, ${fmtBytes(ev.bytes_out)} out${ev.error ? ` (${ev.error})` : ''}`);
        break;
      case 'error':
        this.log(`${p} ERROR (${ev.reason}): ${ev.message}`);
        break;
      case 'disconnected':
        this.log(`${p} disconnected${ev.restored ? '; the cluster is restored' : ''}`);
        break;
      case 'unknown':
        this.log(`${p} event ${ev.name}: ${JSON.stringify(ev.raw)}`);
        break;
    }
  }

  notifyError(s: Session | undefined, reason: string, message: string): void {
    const what = s ? `kbridge (${s.spec.namespace}/${s.spec.service})` : 'kbridge';
    const tip = advice(reason);
    const actions = ['Show log'];
    if (reason === 'not_found' || reason === 'task' || reason === 'bad_flag') actions.push('Configure');
    if (reason === 'kubeconfig' || reason === 'not_installed') actions.push('Open settings');
    void vscode.window.showErrorMessage(`${what}: ${message}${tip ? ` ${tip}` : ''}`, ...actions).then((a) => {
      if (a === 'Show log') this.out.show(true);
      else if (a === 'Configure') void vscode.commands.executeCommand('kbridge.configure');
      else if (a === 'Open settings') void vscode.commands.executeCommand('workbench.action.openSettings', 'kbridge');
    });
  }

  /* The status bar: disconnected / connecting / connected as KEY to SVC. */
  render(): void {
    const all = [...this.sessions.values()];
    const connecting = all.filter((s) => s.state === 'connecting');
    const connected = all.filter((s) => s.state === 'connected');
    const stopping = all.filter((s) => s.state === 'disconnecting');
    let text: string;
    let tip: string;
    if (connecting.length > 0) {
      text = `$(sync~spin) kbridge: connecting to ${connecting.map((s) => s.spec.service).join(', ')}`;
      tip = 'kbridge is taking over the Service and opening the tunnels';
    } else if (stopping.length > 0) {
      /* Before "connected": a restore in progress is news, even with other sessions up. */
      text = `$(sync~spin) kbridge: disconnecting from ${stopping.map((s) => s.spec.service).join(', ')}`;
      tip = 'kbridge is restoring the Service';
    } else if (connected.length === 1) {
      const s = connected[0];
      text = s.ready?.mode === 'exclusive' ? `$(plug) kbridge: connected to ${s.spec.service} (all traffic)` : `$(plug) kbridge: connected as ${s.ready?.route} to ${s.spec.service}`;
      tip = `${s.spec.namespace}/${s.spec.service} -> 127.0.0.1:${s.spec.localPort}${s.ready?.header ? `\n${s.ready.header}` : ''}\nClick for the session menu`;
    } else if (connected.length > 1) {
      text = `$(plug) kbridge: ${connected.length} sessions (${connected.map((s) => `${s.ready?.route}→${s.spec.service}`).join(', ')})`;
      tip = 'Click for the session menu';
    } else if (this.lastFailed && this.lastFailed.state === 'failed' && this.lastFailed === all.find((s) => s === this.lastFailed)) {
      text = `$(error) kbridge: ${this.lastFailed.spec.service} failed`;
      tip = this.lastFailed.error?.message ?? 'failed';
    } else {
      text = '$(debug-disconnect) kbridge: disconnected';
      tip = 'No kbridge session. Click to configure or connect.';
    }
    this.status.text = text;
    this.status.tooltip = tip;
    this.status.accessibilityInformation = { label: text.replace(/\$\([^)]*\)\s*/g, '') };
  }

  /* Stop every session (window closing). */
  async stopAll(): Promise<void> {
    await Promise.all([...this.sessions.values()].map((s) => s.stop()));
  }

  dispose(): void {
    for (const s of this.sessions.values()) void s.stop();
    this.status.dispose();
    this.out.dispose();
    this.changed.dispose();
  }
}
