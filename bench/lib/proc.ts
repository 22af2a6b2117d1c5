import { readdir, readFile } from 'node:fs/promises';

/** Resident memory of one process, in bytes. */
export interface ProcessMemory {
  pid: number;
  /** VmRSS from /proc/<pid>/status: every resident page, shared library pages included. */
  rssBytes: number;
  /** Pss from /proc/<pid>/smaps_rollup: shared pages divided among their users (null if unreadable). */
  pssBytes: number | null;
}

/** Reads a `Name:   123 kB` field of a /proc file's text, in bytes; null when absent. */
export function kbField(text: string, name: string): number | null {
  const m = new RegExp(`^${name}:\\s+(\\d+)\\s+kB$`, 'm').exec(text);
  return m ? Number(m[1]) * 1024 : null;
}

/** VmRSS and Pss of a process; null when it does not exist (or exited meanwhile). */
export async function processMemory(pid: number): Promise<ProcessMemory | null> {
  try {
    const status = await readFile(`/proc/${pid}/status`, 'utf8');
    const rss = kbField(status, 'VmRSS');
    if (rss === null) return null; // kernel threads and zombies have no VmRSS
    const rollup = await readFile(`/proc/${pid}/smaps_rollup`, 'utf8').catch(() => '');
    return { pid, rssBytes: rss, pssBytes: kbField(rollup, 'Pss') };
  } catch {
    return null;
  }
}

/** MemAvailable of the host, in bytes (what the kernel says could be given to new work). */
export async function memAvailableBytes(): Promise<number> {
  const v = kbField(await readFile('/proc/meminfo', 'utf8'), 'MemAvailable');
  if (v === null) throw new Error('/proc/meminfo has no MemAvailable');
  return v;
}

/** Every process whose NUL-separated command line, joined with spaces, satisfies `match`. */
export async function findProcesses(match: (cmdline: string) => boolean): Promise<number[]> {
  const out: number[] = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const cmdline = await readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '');
    if (cmdline && match(cmdline.replace(/\0+$/, '').replace(/\0/g, ' '))) out.push(Number(entry));
  }
  return out;
}

/** Parent pid of a process (field 4 of /proc/<pid>/stat); null when it is gone. */
export async function parentPid(pid: number): Promise<number | null> {
  try {
    const text = await readFile(`/proc/${pid}/stat`, 'utf8');
    const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
    const ppid = Number(fields[1]);
    return Number.isSafeInteger(ppid) ? ppid : null;
  } catch {
    return null;
  }
}
