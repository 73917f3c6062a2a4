import { fork, type ChildProcess } from 'node:child_process';
import { setPriority } from 'node:os';
import type { FromEngine, StatusJson, ToEngine } from '../cli/ipc';
import type { LogLevel, SyncOptions } from '../engine/types';

export interface EngineProcessEvents {
  log(level: LogLevel, message: string): void;
  status(status: StatusJson): void;
  /** The run ended; error is the one-line reason, null after a clean stop. */
  exit(error: string | null): void;
}

const STOP_GRACE_MS = 15_000;
/**
 * The engine's CPU priority below the window's (nice 10). On a busy machine (measured: 2 cores with
 * the workbench loading) the extension host sat idle while its timers fired 50-60 ms late, because
 * the engine starting up or copying took the CPU; background work should yield to the editor.
 */
const ENGINE_NICENESS = 10;

/**
 * One sync run in a child process: the CLI's `serve-ipc`, the same engine a server runs, so a
 * full-speed copy or apply never competes with the extension host's event loop.
 */
export class EngineProcess {
  private readonly child: ChildProcess;
  private exited = false;
  private exitError: string | null | undefined;
  readonly done: Promise<void>;

  constructor(cliPath: string, options: SyncOptions, events: EngineProcessEvents) {
    this.child = fork(cliPath, ['serve-ipc'], {
      stdio: ['ignore', 'ignore', 'pipe', 'ipc'],
      // The extension host's own flags (inspector ports and the like) are not for the engine.
      execArgv: [],
      env: { ...process.env, ELECTRON_RUN_AS_NODE: '1' },
    });
    if (this.child.pid !== undefined) {
      try {
        setPriority(this.child.pid, ENGINE_NICENESS);
      } catch {
        // Not permitted here (some containers): the engine runs at the window's priority.
      }
    }
    let stderrTail = '';
    this.child.stderr?.setEncoding('utf8');
    this.child.stderr?.on('data', (chunk: string) => {
      // The engine's own log arrives over IPC; stderr matters only when the process dies hard.
      stderrTail = (stderrTail + chunk).slice(-4_000);
    });
    this.child.on('message', (m: FromEngine) => {
      if (m.type === 'log') events.log(m.level, m.message);
      else if (m.type === 'status') events.status(m.status);
      else if (m.type === 'exit') this.exitError = m.error;
    });
    this.done = new Promise((resolve) => {
      const finish = (code: number | null, signal: NodeJS.Signals | null) => {
        if (this.exited) return;
        this.exited = true;
        let error = this.exitError;
        if (error === undefined) {
          const lastLine = stderrTail.trim().split('\n').filter((l) => !/^\d{4}-\d\d-\d\dT/.test(l)).pop();
          error = code === 0 ? null : `the engine process ended (${signal ?? `exit ${code}`})${lastLine ? `: ${lastLine}` : ''}; run the sync again to resume`;
        }
        events.exit(error);
        resolve();
      };
      this.child.on('exit', finish);
      this.child.on('error', (err) => {
        this.exitError ??= `cannot start the engine process: ${err.message}`;
        finish(null, null);
      });
    });
    this.send({ type: 'start', options });
  }

  get running(): boolean {
    return !this.exited;
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  /** Commits what is applied and ends the run; killed only if it does not end in time. */
  async stop(graceMs = STOP_GRACE_MS): Promise<void> {
    if (this.exited) return;
    this.send({ type: 'stop' });
    const timer = setTimeout(() => this.child.kill('SIGKILL'), graceMs);
    await this.done;
    clearTimeout(timer);
  }

  private send(m: ToEngine): void {
    if (this.child.connected) this.child.send(m);
  }
}
