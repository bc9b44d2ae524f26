/* session.ts: one running `kbridge connect --output json`, as a child process.
 *
 * A Session owns the process from start to exit: it parses the event stream
 * (events.ts), keeps the state the status bar and menus show, and stops the
 * process with SIGTERM (kbridge then restores the cluster if it was the last
 * developer, and exits). A session never outlives the extension host: dispose()
 * stops it. No vscode import; listeners are plain callbacks. */
import { spawn, type ChildProcess } from 'node:child_process';
import { EventParser, type ErrorEvent, type KbridgeEvent, type ReadyEvent } from './events';

export type SessionState = 'connecting' | 'connected' | 'disconnecting' | 'disconnected' | 'failed';

export interface SessionSpec {
  id: string;          /* context/namespace/service: one session per Service */
  label: string;       /* the task label */
  bin: string;
  args: string[];      /* connectArgs() */
  namespace: string;
  service: string;
  context?: string;
  kubeconfig?: string;
  routeAs?: string;
  replace: boolean;
  localPort: number;
  cwd?: string;
  env?: Record<string, string>;
}

export interface SessionListener {
  event?(s: Session, ev: KbridgeEvent): void;
  garbage?(s: Session, line: string, why: string): void;
  stderr?(s: Session, line: string): void;
  state?(s: Session): void;
  exit?(s: Session, code: number | null, signal: string | null): void;
}

/* How long stop() waits for kbridge to restore and exit before SIGKILL (the
 * agent's lease then restores the cluster on its own). */
export const STOP_GRACE_MS = 90_000;

export class Session {
  state: SessionState = 'connecting';
  ready?: ReadyEvent;
  error?: ErrorEvent;
  restored?: boolean;
  readonly startedAt = Date.now();
  readyAt?: number;
  exitCode?: number | null;
  private child?: ChildProcess;
  private parser = new EventParser();
  private stderrBuf = '';
  private exited: Promise<void>;
  private resolveExit!: () => void;
  private killTimer?: NodeJS.Timeout;

  constructor(readonly spec: SessionSpec, private readonly listener: SessionListener) {
    this.exited = new Promise((r) => (this.resolveExit = r));
  }

  start(): void {
    const child = spawn(this.spec.bin, this.spec.args, {
      cwd: this.spec.cwd,
      env: { ...process.env, ...this.spec.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.child = child;
    child.stdout!.on('data', (b: Buffer) => this.onParsed(this.parser.push(b)));
    child.stderr!.on('data', (b: Buffer) => this.onStderr(b.toString('utf8')));
    child.on('error', (e) => {
      /* spawn failed (binary gone, not executable): the same path as an error event */
      this.handle({ event: 'error', reason: 'not_installed', message: `cannot run ${this.spec.bin}: ${e.message}` });
      this.finish(null, null);
    });
    child.on('close', (code, signal) => {
      this.onParsed(this.parser.end());
      if (this.stderrBuf) this.listener.stderr?.(this, this.stderrBuf);
      this.stderrBuf = '';
      this.finish(code, signal);
    });
  }

  private finish(code: number | null, signal: string | null): void {
    if (this.exitCode !== undefined) return;
    this.exitCode = code;
    if (this.killTimer) clearTimeout(this.killTimer);
    if (this.state !== 'failed') this.setState(code === 0 || this.state === 'disconnecting' ? 'disconnected' : 'failed');
    if (this.state === 'failed' && !this.error)
      this.error = { event: 'error', reason: 'exited', message: `kbridge connect exited with ${signal ? `signal ${signal}` : `status ${code}`}` };
    this.listener.exit?.(this, code, signal);
    this.resolveExit();
  }

  private onStderr(text: string): void {
    this.stderrBuf += text;
    let nl: number;
    while ((nl = this.stderrBuf.indexOf('\n')) >= 0) {
      this.listener.stderr?.(this, this.stderrBuf.slice(0, nl));
      this.stderrBuf = this.stderrBuf.slice(nl + 1);
    }
    if (this.stderrBuf.length > 65536) {
      this.listener.stderr?.(this, this.stderrBuf);
      this.stderrBuf = '';
    }
  }

  private onParsed(items: ReturnType<EventParser['push']>): void {
    for (const p of items) {
      if (p.kind === 'garbage') this.listener.garbage?.(this, p.line, p.why);
      else this.handle(p.event);
    }
  }

  private handle(ev: KbridgeEvent): void {
    if (ev.event === 'ready') {
      this.ready = ev;
      this.readyAt = Date.now();
      if (this.state === 'connecting') this.setState('connected');
    } else if (ev.event === 'error') {
      /* The first error is the cause; later ones are consequences. */
      if (!this.error) this.error = ev;
      if (this.state !== 'disconnecting') this.setState('failed');
    } else if (ev.event === 'disconnected') {
      this.restored = ev.restored;
    }
    this.listener.event?.(this, ev);
  }

  private setState(s: SessionState): void {
    if (this.state === s) return;
    this.state = s;
    this.listener.state?.(this);
  }

  get running(): boolean {
    return this.child !== undefined && this.exitCode === undefined;
  }

  /* Ask kbridge to end (SIGTERM: it closes the tunnels and restores the
   * cluster if it was the last developer) and wait until it has exited. */
  stop(): Promise<void> {
    if (!this.running) return this.exited;
    if (this.state !== 'failed') this.setState('disconnecting');
    this.child!.kill('SIGTERM');
    if (!this.killTimer) this.killTimer = setTimeout(() => this.child?.kill('SIGKILL'), STOP_GRACE_MS);
    return this.exited;
  }

  whenExited(): Promise<void> {
    return this.exited;
  }
}
