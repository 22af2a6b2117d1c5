import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openHostRuntime, type HostRuntime, type HostRuntimeOptions, wipeHostRuntime } from '@berth/runtime';
import type { ContainerSpec } from '@berth/runtime';
import { removeTestCgroupParent } from '../src/cgroups/testing/kernel-processes';

/** A throwaway host runtime: its own data root and cgroup parent, removed again by `close()`. */
export interface TestHost extends HostRuntime {
  dataRoot: string;
  cgroupParent: string;
  close(): Promise<void>;
}

export function buildHelper(): void {
  execFileSync('bash', [join(__dirname, '../../../scripts/build-native.sh')], { stdio: 'ignore' });
}

export async function openTestHost(
  tag: string,
  options: Partial<HostRuntimeOptions> = {},
): Promise<TestHost> {
  buildHelper();
  const dataRoot = mkdtempSync(join(tmpdir(), `berth-${tag}-`));
  // Unprivileged containers must be able to traverse the directories above their rootfs.
  chmodSync(dataRoot, 0o711);
  const cgroupParent = `berth-test-${tag}-${process.pid}`;
  const rt = await openHostRuntime({ dataRoot, cgroupParent, stopGraceMs: 3_000, ...options });
  return {
    ...rt,
    dataRoot,
    cgroupParent,
    async close() {
      await wipeHostRuntime(rt);
      removeTestCgroupParent(cgroupParent);
      rmSync(dataRoot, { recursive: true, force: true });
    },
  };
}

export function spec(id: string, overrides: Partial<ContainerSpec> = {}): ContainerSpec {
  return {
    id,
    hostname: id,
    template: 'busybox',
    resources: { cpus: 1, memoryBytes: 128 * 1024 * 1024, pidsMax: 128 },
    network: { mode: 'none' },
    privileged: false,
    ...overrides,
  };
}

/**
 * Runs `script` (CommonJS, with `@berth/runtime` resolvable) in a separate node process through ts-node,
 * as the worker would run the runtime, with `args` as its `process.argv.slice(1)`. Its own process group
 * (detached), so a test can kill the child and everything in its group at once; stdout and stderr piped.
 */
export function spawnRuntimeScript(script: string, args: string[]): ChildProcess {
  return spawn(
    process.execPath,
    ['-r', 'ts-node/register/transpile-only', '-r', 'tsconfig-paths/register', '-e', script, ...args],
    { cwd: join(__dirname, '../../..'), detached: true, stdio: ['ignore', 'pipe', 'pipe'] },
  );
}
