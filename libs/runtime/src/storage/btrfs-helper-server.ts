import { spawn, type ChildProcess } from 'node:child_process';
import type { Writable } from 'node:stream';

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
 * exits without its greeting), a request it cannot read (see `servable`), or a server that could not
 * start; the caller then spawns the subcommand itself. A server that dies with requests in flight fails
 * them (the operation may or may not have happened: not retried blindly); the next request starts a new
 * one. The helper exits at the end of its input, so it never outlives this process; while no request is in
 * flight it does not keep this process alive.
 */
export class BtrfsHelperServer {
  /** The server taking new requests (each server keeps its own stream and requests in flight). */
  private current?: Server;
  private unsupported = false;
  private nextId = 1;

  constructor(readonly helper: string) {}

  async run(args: readonly string[]): Promise<HelperAnswer | null> {
    if (this.unsupported || !servable(args)) return null;
    const server = this.current ?? this.start();
    if (!server) return null;
    const id = this.nextId++;
    const answer = await new Promise<HelperAnswer | null | Error>((resolve) => {
      server.pending.set(id, resolve);
      hold(server, true);
      (server.child.stdin as Writable).write(`${id}\t${args.join('\t')}\n`);
    });
    if (answer instanceof Error) throw answer;
    return answer;
  }

  /** Ends the helper (it exits at the end of its input); requests in flight still get their answers. */
  close(): void {
    this.current?.child.stdin?.end();
    this.current = undefined;
  }

  private start(): Server | undefined {
    let child: ChildProcess;
    try {
      child = spawn(this.helper, ['btrfs-serve'], { stdio: ['pipe', 'pipe', 'ignore'] });
    } catch {
      return undefined;
    }
    const server: Server = { child, greeted: false, buffered: '', pending: new Map() };
    this.current = server;
    child.stdin!.on('error', () => undefined);
    child.stdout!.setEncoding('utf8');
    child.stdout!.on('data', (chunk: string) => this.receive(server, chunk));
    // 'close': the helper and the children answering its last requests (they share its stdout) are done.
    child.on('error', () => this.gone(server));
    child.on('close', () => this.gone(server));
    child.unref();
    hold(server, false);
    return server;
  }

  private receive(server: Server, chunk: string): void {
    server.buffered += chunk;
    let nl: number;
    while ((nl = server.buffered.indexOf('\n')) >= 0) {
      const line = server.buffered.slice(0, nl);
      server.buffered = server.buffered.slice(nl + 1);
      if (!server.greeted) {
        if (line !== HELLO) return this.gone(server);
        server.greeted = true;
        continue;
      }
      const [id, code, ...output] = line.split('\t');
      const resolve = server.pending.get(Number(id));
      if (!resolve) continue;
      server.pending.delete(Number(id));
      resolve({ code: Number(code), output: output.join(' ') });
    }
    hold(server, server.pending.size > 0);
  }

  /**
   * A server exited (or failed to start, or did not greet). Before its greeting: a helper without
   * `btrfs-serve`, whose requests never ran (answered null: the caller spawns them, and so do all later
   * requests). After: its requests in flight fail.
   */
  private gone(server: Server): void {
    if (this.current === server) this.current = undefined;
    if (!server.greeted) this.unsupported = true;
    const failure = server.greeted
      ? new Error('the btrfs helper server exited with requests in flight')
      : null;
    for (const resolve of server.pending.values()) resolve(failure);
    server.pending.clear();
    server.child.kill();
  }
}

/**
 * What `btrfs-serve` reads: up to 62 arguments (a delete of more subvolumes is spawned) and a line under its
 * 64 KiB buffer, without tabs or newlines inside an argument.
 */
function servable(args: readonly string[]): boolean {
  if (args.length > 62) return false;
  let bytes = 32;
  for (const a of args) {
    if (/[\t\n]/.test(a)) return false;
    bytes += Buffer.byteLength(a) + 1;
  }
  return bytes < 60_000;
}

/** One `btrfs-serve` process: its output read so far, whether it greeted, its requests in flight by id. */
interface Server {
  child: ChildProcess;
  greeted: boolean;
  buffered: string;
  pending: Map<number, (answer: HelperAnswer | null | Error) => void>;
}

/** Keeps this process alive while the server has requests in flight, and only then. */
function hold(server: Server, busy: boolean): void {
  type Handle = { ref?(): void; unref?(): void };
  for (const stream of [server.child.stdout, server.child.stdin] as (Handle | null)[]) {
    if (busy) stream?.ref?.();
    else stream?.unref?.();
  }
}
