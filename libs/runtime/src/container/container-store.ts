import { access, mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { RuntimeError } from '../common/errors';
import type { InitRef } from '../namespaces/init-process';
import type { ContainerConfig } from './container.types';

const ID_RE = /^[a-z0-9][a-z0-9_.-]{0,127}$/;

/** Validates a container id (UUIDs and DNS labels both fit); nothing is touched for a bad one. */
export function assertContainerId(id: unknown): asserts id is string {
  if (typeof id !== 'string' || !ID_RE.test(id) || id.includes('..')) {
    throw new RuntimeError('INVALID_NAME', `invalid container id ${JSON.stringify(id)}`, { id });
  }
}

/**
 * Per-container state on disk under `<dataRoot>/containers/<id>/`: `config.json` (what the container is),
 * `state/` (written by the launcher's supervisor: `init.pid` with pid + start time, `exit.status`; and
 * `starting` while a bridge container's init waits for its network) and
 * `console.log` (init's output). Writes are atomic (temp file + rename) so a crash never leaves half a file.
 */
export class ContainerStore {
  readonly dir: string;

  constructor(dataRoot: string) {
    this.dir = join(dataRoot, 'containers');
  }

  containerDir(id: string): string {
    assertContainerId(id);
    return join(this.dir, id);
  }
  stateDir(id: string): string {
    return join(this.containerDir(id), 'state');
  }
  logFile(id: string): string {
    return join(this.containerDir(id), 'console.log');
  }
  fifoPath(id: string): string {
    return join(this.containerDir(id), 'start.fifo');
  }
  private startingPath(id: string): string {
    return join(this.stateDir(id), 'starting');
  }

  /**
   * Marks a start whose init waits for the host (the sync FIFO) before it execs: until `clearInit`, an init
   * alive under this mark is a launch the host never released (its caller was killed in between), not a
   * running container.
   */
  async markStarting(id: string): Promise<void> {
    await mkdir(this.stateDir(id), { recursive: true, mode: 0o700 });
    await writeFile(this.startingPath(id), '', { mode: 0o600 });
  }

  async isStarting(id: string): Promise<boolean> {
    try {
      await access(this.startingPath(id));
      return true;
    } catch {
      return false;
    }
  }

  /** Ends the start's mark (init released, or the start undone). */
  async clearStarting(id: string): Promise<void> {
    await rm(this.startingPath(id), { force: true });
  }

  async readConfig(id: string): Promise<ContainerConfig | null> {
    try {
      return JSON.parse(
        await readFile(join(this.containerDir(id), 'config.json'), 'utf8'),
      ) as ContainerConfig;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw e;
    }
  }

  async writeConfig(id: string, config: ContainerConfig): Promise<void> {
    const dir = this.containerDir(id);
    await mkdir(join(dir, 'state'), { recursive: true, mode: 0o700 });
    const tmp = join(dir, `.config.json.${process.pid}.tmp`);
    await writeFile(tmp, JSON.stringify(config, null, 2), { mode: 0o600 });
    await rename(tmp, join(dir, 'config.json'));
  }

  /** Init's pid and start time as the supervisor recorded them, or null when it never started. */
  async readInit(id: string): Promise<InitRef | null> {
    try {
      const { pid, startTime } = JSON.parse(
        await readFile(join(this.stateDir(id), 'init.pid'), 'utf8'),
      ) as InitRef;
      return Number.isSafeInteger(pid) && Number.isSafeInteger(startTime) ? { pid, startTime } : null;
    } catch {
      return null;
    }
  }

  async writeInit(id: string, ref: InitRef): Promise<void> {
    const tmp = join(this.stateDir(id), `.init.pid.${process.pid}.tmp`);
    await mkdir(this.stateDir(id), { recursive: true, mode: 0o700 });
    await writeFile(tmp, JSON.stringify({ pid: ref.pid, startTime: ref.startTime }));
    await rename(tmp, join(this.stateDir(id), 'init.pid'));
  }

  async clearInit(id: string): Promise<void> {
    await rm(join(this.stateDir(id), 'init.pid'), { force: true });
    await rm(join(this.stateDir(id), 'exit.status'), { force: true });
    await this.clearStarting(id);
  }

  /** Ids with a directory (complete or not). */
  async ids(): Promise<string[]> {
    try {
      return (await readdir(this.dir, { withFileTypes: true }))
        .filter((d) => d.isDirectory() && ID_RE.test(d.name))
        .map((d) => d.name)
        .sort();
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw e;
    }
  }

  async remove(id: string): Promise<void> {
    await rm(this.containerDir(id), { recursive: true, force: true });
  }
}
