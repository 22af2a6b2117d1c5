import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';

/**
 * Kernel tests state what they need. When a need is not met they skip with a loud reason, except in CI
 * (CI=true), where a skip would hide a missing install step: there the suite fails instead.
 */
export interface KernelNeeds {
  root?: boolean;
  programs?: string[];
  paths?: string[];
}

export function unmetNeeds(needs: KernelNeeds): string[] {
  const unmet: string[] = [];
  if (needs.root && process.getuid?.() !== 0) unmet.push('must run as root');
  for (const p of needs.programs ?? []) {
    try {
      execFileSync('sh', ['-c', 'command -v "$1"', 'sh', p], { stdio: 'ignore' });
    } catch {
      unmet.push(`program ${p} is not installed (scripts/services.sh ensure installs it)`);
    }
  }
  for (const p of needs.paths ?? []) if (!existsSync(p)) unmet.push(`${p} does not exist`);
  return unmet;
}

/** `describe` when the needs are met; otherwise a loud skip (or, in CI, a failing test). */
export function describeKernel(name: string, needs: KernelNeeds, fn: () => void): void {
  const unmet = unmetNeeds(needs);
  if (unmet.length === 0) {
    describe(name, fn);
    return;
  }
  const reason = `${name}: cannot run: ${unmet.join('; ')}`;
  if (process.env.CI === 'true') {
    describe(name, () => {
      it('has what it needs to run in CI', () => {
        throw new Error(reason);
      });
    });
  } else {
    console.warn(`SKIPPED (kernel) ${reason}`);
    describe.skip(name, fn);
  }
}

/**
 * `it` when the needs are met; otherwise a loud skip (or, in CI, a failing test), as describeKernel: for one
 * test of a suite that needs more than the others (e.g. a cgroup v1 hierarchy).
 */
export function itKernel(
  name: string,
  needs: KernelNeeds,
  fn: () => Promise<void>,
  timeoutMs?: number,
): void {
  const unmet = unmetNeeds(needs);
  if (unmet.length === 0) {
    it(name, fn, timeoutMs);
    return;
  }
  const reason = `${name}: cannot run: ${unmet.join('; ')}`;
  if (process.env.CI === 'true') {
    it(name, () => {
      throw new Error(reason);
    });
  } else {
    console.warn(`SKIPPED (kernel) ${reason}`);
    it.skip(name, fn);
  }
}
