import { mkdirSync, mkdtempSync, readFileSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';

/**
 * A fake cgroupfs in a temp dir for unit tests: plain files holding what the kernel's files hold. It
 * cannot react to writes, so tests write the kernel's side (e.g. `frozen 1` in cgroup.events) themselves.
 */
export class FakeCgroupfs {
  readonly root: string;

  constructor() {
    this.root = realpathSync(mkdtempSync(join(tmpdir(), 'berth-fake-cgroupfs-')));
  }

  /** Writes files relative to the root, creating directories. */
  files(entries: Record<string, string>): this {
    for (const [rel, content] of Object.entries(entries)) {
      const file = join(this.root, rel);
      mkdirSync(dirname(file), { recursive: true });
      writeFileSync(file, content);
    }
    return this;
  }

  read(rel: string): string {
    return readFileSync(join(this.root, rel), 'utf8');
  }

  path(rel: string): string {
    return join(this.root, rel);
  }

  dispose(): void {
    rmSync(this.root, { recursive: true, force: true });
  }

  /** A pure cgroup2 root as a kernel with the given controllers shows it. */
  static v2(controllers = 'cpuset cpu io memory hugetlb pids rdma misc'): FakeCgroupfs {
    return new FakeCgroupfs().files({
      'cgroup.controllers': `${controllers}\n`,
      'cgroup.subtree_control': '\n',
      'cgroup.procs': '1\n',
      'cpu.stat': 'usage_usec 1\nuser_usec 1\nsystem_usec 0\n',
    });
  }

  /** A v1 layout: one hierarchy directory per controller with the root files the driver probes. */
  static v1(options: { memsw?: boolean; blkioWeight?: boolean; controllers?: string[] } = {}): FakeCgroupfs {
    const fake = new FakeCgroupfs();
    const controllers = options.controllers ?? [
      'cpu',
      'cpuacct',
      'cpuset',
      'memory',
      'devices',
      'freezer',
      'blkio',
      'pids',
    ];
    for (const c of controllers) fake.files({ [`${c}/cgroup.procs`]: '1\n', [`${c}/tasks`]: '1\n' });
    const has = (c: string) => controllers.includes(c);
    if (has('cpu'))
      fake.files({
        'cpu/cpu.cfs_quota_us': '-1\n',
        'cpu/cpu.cfs_period_us': '100000\n',
        'cpu/cpu.shares': '1024\n',
      });
    if (has('cpuset')) fake.files({ 'cpuset/cpuset.cpus': '0-1\n', 'cpuset/cpuset.mems': '0\n' });
    if (has('memory')) {
      fake.files({
        'memory/memory.limit_in_bytes': '9223372036854771712\n',
        'memory/memory.swappiness': '60\n',
      });
      if (options.memsw) fake.files({ 'memory/memory.memsw.limit_in_bytes': '9223372036854771712\n' });
    }
    if (has('blkio') && options.blkioWeight) fake.files({ 'blkio/blkio.weight': '500\n' });
    return fake;
  }
}
