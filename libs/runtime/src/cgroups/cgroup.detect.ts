import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { RuntimeError } from '../common/errors';
import { CgroupDriver } from './cgroup.driver';
import { CgroupV1Driver, V1_REQUIRED_CONTROLLERS } from './v1/cgroup-v1.driver';
import { CgroupV2Driver, V2_REQUIRED_CONTROLLERS } from './v2/cgroup-v2.driver';

export interface DetectOptions {
  freezeTimeoutMs?: number;
  /** Passed to the v2 driver (tests). */
  kernelRelease?: string;
}

export interface CgroupLayout {
  version: 1 | 2;
  /** Root the chosen driver works under. */
  root: string;
  /** Why this layout was chosen (logged at start-up). */
  reason: string;
}

/**
 * Decides which cgroup layout to use under `root`, without side effects:
 * 1. `root` is a cgroup2 mount (it has cgroup.controllers) offering cpu, memory and pids → v2 there;
 * 2. the v1 controllers Berth needs are mounted as `<root>/<controller>` → v1 (this also covers hybrid
 *    hosts, whose `<root>/unified` v2 mount cannot have controllers the v1 hierarchies hold);
 * 3. a hybrid host whose `<root>/unified` offers cpu, memory and pids → v2 there.
 * @throws RuntimeError UNSUPPORTED naming what is missing.
 */
export function detectCgroupLayout(root = '/sys/fs/cgroup'): CgroupLayout {
  const v2Controllers = (dir: string): string[] | undefined => {
    try {
      return readFileSync(join(dir, 'cgroup.controllers'), 'utf8').trim().split(/\s+/);
    } catch {
      return undefined;
    }
  };
  const lacks = (have: string[], need: readonly string[]) => need.filter((c) => !have.includes(c));

  const pure = v2Controllers(root);
  if (pure && lacks(pure, V2_REQUIRED_CONTROLLERS).length === 0) {
    return { version: 2, root, reason: `${root} is a cgroup2 mount offering ${pure.join(' ')}` };
  }
  const v1Missing = V1_REQUIRED_CONTROLLERS.filter((c) => !existsSync(join(root, c, 'cgroup.procs')));
  if (v1Missing.length === 0) {
    return {
      version: 1,
      root,
      reason: `cgroup v1 controllers ${V1_REQUIRED_CONTROLLERS.join(', ')} are mounted under ${root}`,
    };
  }
  const unifiedRoot = join(root, 'unified');
  const unified = v2Controllers(unifiedRoot);
  if (unified && lacks(unified, V2_REQUIRED_CONTROLLERS).length === 0) {
    return {
      version: 2,
      root: unifiedRoot,
      reason: `hybrid host: ${unifiedRoot} offers ${unified.join(' ')}`,
    };
  }
  const v2Missing = lacks(pure ?? unified ?? [], V2_REQUIRED_CONTROLLERS);
  throw new RuntimeError(
    'UNSUPPORTED',
    `no usable cgroups under ${root}: cgroup v2 lacks ${v2Missing.join(', ')} and cgroup v1 lacks ` +
      `${v1Missing.join(', ')}; mount cgroup2 (or the v1 controllers) at ${root}`,
    { root, v1Missing, v2Missing },
  );
}

/** The driver for this host's cgroups (see detectCgroupLayout for the rules). */
export function detectCgroups(root = '/sys/fs/cgroup', options: DetectOptions = {}): CgroupDriver {
  const layout = detectCgroupLayout(root);
  return layout.version === 2
    ? new CgroupV2Driver({ root: layout.root, ...options })
    : new CgroupV1Driver({ root: layout.root, freezeTimeoutMs: options.freezeTimeoutMs });
}
