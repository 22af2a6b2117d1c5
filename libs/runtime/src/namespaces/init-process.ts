import { readFile } from 'node:fs/promises';

/**
 * A container's init as Berth records it: the host pid plus the start time of that pid (field 22 of
 * /proc/<pid>/stat, clock ticks since boot). The pair names one process incarnation, so a recycled pid is
 * never mistaken for the container.
 */
export interface InitRef {
  pid: number;
  startTime: number;
}

export interface ProcStat {
  /** One-letter state from /proc/<pid>/stat (R, S, D, Z, X, T, ...). */
  state: string;
  ppid: number;
  startTime: number;
}

/**
 * Parses the text of /proc/<pid>/stat. The command name (field 2) may hold spaces and parentheses, so
 * fields are counted from the last ')'. Returns null for text that is not a stat line.
 */
export function parseProcStat(text: string): ProcStat | null {
  const close = text.lastIndexOf(')');
  if (close < 0) return null;
  const fields = text
    .slice(close + 1)
    .trim()
    .split(/\s+/);
  // fields[0] is field 3 (state), so field N is fields[N - 3]
  if (fields.length < 20) return null;
  const ppid = Number(fields[1]);
  const startTime = Number(fields[19]);
  if (!Number.isSafeInteger(ppid) || !Number.isSafeInteger(startTime)) return null;
  return { state: fields[0], ppid, startTime };
}

/** Reads and parses /proc/<pid>/stat; null when the process does not exist (or vanished meanwhile). */
export async function readProcStat(pid: number): Promise<ProcStat | null> {
  if (!Number.isSafeInteger(pid) || pid <= 0) return null;
  try {
    return parseProcStat(await readFile(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return null;
  }
}

/**
 * True when the recorded init still runs: the pid exists, its start time matches the record (a recycled
 * pid is another process) and it is not a zombie (a zombie has exited; only its reaping is pending).
 */
export async function isAlive(ref: InitRef): Promise<boolean> {
  const stat = await readProcStat(ref.pid);
  return stat !== null && stat.startTime === ref.startTime && stat.state !== 'Z' && stat.state !== 'X';
}

/**
 * Sends a signal to the recorded init if it is still that process. Returns false when it was already gone
 * (nothing was sent). From the host, a pid namespace's init only receives signals it handles, except
 * SIGKILL and SIGSTOP, which always work.
 */
export async function signalInit(ref: InitRef, signal: NodeJS.Signals): Promise<boolean> {
  if (!(await isAlive(ref))) return false;
  try {
    process.kill(ref.pid, signal);
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ESRCH') return false;
    throw e;
  }
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * Waits until the recorded init is dead (gone, zombie, or its pid reused). Polls /proc with a short,
 * growing interval (1 ms up to 10 ms): cheap, and quick enough for a stop budget of 200 ms.
 * Resolves true when it died, false when it still ran after timeoutMs.
 */
export async function waitForExit(ref: InitRef, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  let interval = 1;
  for (;;) {
    if (!(await isAlive(ref))) return true;
    if (Date.now() >= deadline) return false;
    await sleep(Math.min(interval, Math.max(0, deadline - Date.now())));
    interval = Math.min(interval * 2, 10);
  }
}

export interface StopResult {
  /** True when init ignored SIGTERM for graceMs and was killed with SIGKILL. */
  forced: boolean;
  /** Milliseconds from the first signal until init was seen dead. */
  elapsedMs: number;
}

/**
 * Stops init: SIGTERM, then SIGKILL when it has not exited after graceMs (default 5000). When init dies
 * the kernel kills every other process of its pid namespace. Resolves once init is dead; a container that
 * was already dead resolves at once with forced=false.
 */
export async function stopInit(ref: InitRef, graceMs = 5000): Promise<StopResult> {
  const started = Date.now();
  if (await signalInit(ref, 'SIGTERM')) {
    if (await waitForExit(ref, graceMs)) return { forced: false, elapsedMs: Date.now() - started };
    await signalInit(ref, 'SIGKILL');
    await waitForExit(ref, 5000);
    return { forced: true, elapsedMs: Date.now() - started };
  }
  return { forced: false, elapsedMs: Date.now() - started };
}
