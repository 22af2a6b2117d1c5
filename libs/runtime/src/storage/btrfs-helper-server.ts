import { spawn, type ChildProcess } from 'node:child_process';
import type { Readable, Writable } from 'node:stream';

/** A btrfs subcommand's outcome, as a one-shot `berth-launch <args>` would end: exit code and its output. */
export interface HelperAnswer {
  code: number;
  output: string;
}

const HELLO = 'berth-btrfs-serve 1';

/**
 * One long-lived `berth-launch btrfs-serve` for a driver: its snapshot and delete requests go over a pipe
 * and the helper forks for each from its own small process, instead of a spawn from this (large) Node
 * process per operation (≈ 2.4 ms from a small Node process on the project's VMs, more from a large one:
 * most of Berth's btrfs clone beyond the kernel's own work). Requests run side by side in the helper and
 * are matched to their answers by id.
 *
 * `run` answers null when the server cannot take the request: a helper built before `btrfs-serve` (it
 * exits without its greeting), a request with a tab or newline in an argument, or a server that could not
 * start; the caller then spawns the subcommand itself. A server that dies with requests in flight fails
 * them (the operation may or may not have happened: not retried blindly); the next request starts a new
 * one. The helper exits at the end of its input, so it never outlives this process; while no request is in
 * flight it does not keep this process alive.
 */
export class BtrfsHelperServer {
  private child?: ChildProcess;
  private greeted = false;
  private unsupported = false;
  private buffered = '';
  private nextId = 1;
  private readonly pending = new Map<number, (answer: HelperAnswer | null | Error) => void>();

  constructor(readonly helper: string) {}

  async run(args: readonly string[]): Promise<HelperAnswer | null> {
    if (this.unsupported || args.some((a) => /[\t\n]/.test(a))) return null;
    const child = this.child ?? this.start();
    if (!child) return null;
    const id = this.nextId++;
    const answer = await new Promise<HelperAnswer | null | Error>((resolve) => {
      this.pending.set(id, resolve);
      this.hold(true);
      (child.stdin as Writable).write(`${id}\t${args.join('\t')}\n`);
    });
    if (answer instanceof Error) throw answer;
    return answer;
  }

  /** Ends the helper (it exits at the end of its input); requests in flight still get their answers. */
  close(): void {
    this.child?.stdin?.end();
    this.child = undefined;
  }

  private start(): ChildProcess | undefined {
    let child: ChildProcess;
    try {
      child = spawn(this.helper, ['btrfs-serve'], { stdio: ['pipe', 'pipe', 'ignore'] });
    } catch {
      return undefined;
    }
    this.child = child;
    this.greeted = false;
    this.buffered = '';
    child.stdin!.on('error', () => undefined);
    child.stdout!.setEncoding('utf8');
    child.stdout!.on('data', (chunk: string) => this.receive(child, chunk));
    // 'close': the helper and the children answering its last requests (they share its stdout) are done.
    child.on('error', () => this.gone(child));
    child.on('close', () => this.gone(child));
    child.unref();
    this.hold(false, child);
    return child;
  }

  private receive(child: ChildProcess, chunk: string): void {
    this.buffered += chunk;
    let nl: number;
    while ((nl = this.buffered.indexOf('\n')) >= 0) {
      const line = this.buffered.slice(0, nl);
      this.buffered = this.buffered.slice(nl + 1);
      if (!this.greeted) {
        if (line !== HELLO) return this.gone(child);
        this.greeted = true;
        continue;
      }
      const [id, code, ...output] = line.split('\t');
      const resolve = this.pending.get(Number(id));
      if (!resolve) continue;
      this.pending.delete(Number(id));
      resolve({ code: Number(code), output: output.join(' ') });
    }
    this.hold(this.pending.size > 0);
  }

  /**
   * The server exited (or failed to start, or did not greet). Before its greeting: a helper without
   * `btrfs-serve`, whose requests never ran (answered null: the caller spawns them). After: the requests
   * in flight fail.
   */
  private gone(child: ChildProcess): void {
    if (this.child === child) this.child = undefined;
    if (!this.greeted) this.unsupported = true;
    const failure = this.greeted ? new Error('the btrfs helper server exited with requests in flight') : null;
    for (const resolve of this.pending.values()) resolve(failure);
    this.pending.clear();
    child.kill();
  }

  /** Keeps this process alive while requests are in flight, and only then. */
  private hold(busy: boolean, child = this.child): void {
    const out = child?.stdout as (Readable & { ref?(): void; unref?(): void }) | undefined;
    const inp = child?.stdin as (Writable & { ref?(): void; unref?(): void }) | undefined;
    if (busy) {
      out?.ref?.();
      inp?.ref?.();
    } else {
      out?.unref?.();
      inp?.unref?.();
    }
  }
}
