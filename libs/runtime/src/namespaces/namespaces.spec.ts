import { RuntimeError } from '../common/errors';
import { buildNsenterArgs } from './container-exec';
import { parseProcStat } from './init-process';
import { buildLaunchArgs, LaunchError, parseHelperOutput } from './launcher';
import { shiftId } from './ownership-shift';

describe('parseProcStat', () => {
  it('reads state, ppid and start time past a command name with spaces and parentheses', () => {
    const fields = Array.from({ length: 50 }, (_, i) => String(i + 3));
    fields[0] = 'S';
    fields[1] = '4242';
    fields[19] = '987654';
    const stat = parseProcStat(`123 (we)ird) name) ${fields.join(' ')}\n`);
    expect(stat).toEqual({ state: 'S', ppid: 4242, startTime: 987654 });
  });
  it('returns null for a truncated or foreign line', () => {
    expect(parseProcStat('garbage')).toBeNull();
    expect(parseProcStat('1 (x) S 0')).toBeNull();
  });
});

describe('buildLaunchArgs', () => {
  const base = { rootfs: '/var/lib/berth/c/rootfs', stateDir: '/var/lib/berth/c/state' };
  it('maps every option to the helper flags, init after --', () => {
    expect(
      buildLaunchArgs({
        ...base,
        hostname: 'web-1.example',
        cgroupProcs: ['/sys/fs/cgroup/memory/berth/c/cgroup.procs'],
        logFile: '/var/log/c.log',
        userns: { hostUid: 100000, count: 65536 },
        overlay: { lower: '/l', upper: '/u', work: '/w' },
        net: 'new',
        syncFifo: '/run/f',
        init: ['/sbin/init', '--verbose'],
      }),
    ).toEqual([
      '--rootfs',
      base.rootfs,
      '--state-dir',
      base.stateDir,
      '--hostname',
      'web-1.example',
      '--cgroup-procs',
      '/sys/fs/cgroup/memory/berth/c/cgroup.procs',
      '--log',
      '/var/log/c.log',
      '--userns-map',
      '100000:65536',
      '--overlay',
      '/l:/u:/w',
      '--net',
      'new',
      '--sync-fifo',
      '/run/f',
      '--',
      '/sbin/init',
      '--verbose',
    ]);
  });
  it('defaults to an own empty netns and /sbin/init', () => {
    expect(buildLaunchArgs(base).slice(-4)).toEqual(['--net', 'none', '--', '/sbin/init']);
  });
  it.each([
    [{ ...base, rootfs: 'relative/rootfs' }, 'INVALID_PATH'],
    [{ ...base, hostname: 'bad host' }, 'INVALID_NAME'],
    [{ ...base, hostname: '-lead' }, 'INVALID_NAME'],
    [{ ...base, overlay: { lower: '/a,upperdir=/etc', upper: '/u', work: '/w' } }, 'INVALID_PATH'],
    [{ ...base, overlay: { lower: '/a:/b', upper: '/u', work: '/w' } }, 'INVALID_PATH'],
    [{ ...base, userns: { hostUid: 0, count: 65536 } }, 'INVALID_ARGUMENT'],
    [{ ...base, init: ['sbin/init'] }, 'INVALID_ARGUMENT'],
  ])('rejects bad input %#', (opts, code) => {
    expect(() => buildLaunchArgs(opts)).toThrow(expect.objectContaining({ code }));
  });
});

describe('parseHelperOutput', () => {
  it('returns the ref and warnings of a successful start', () => {
    expect(
      parseHelperOutput('{"pid":10,"startTime":20,"supervisorPid":9,"warnings":["mount-sys: x"]}\n', 0),
    ).toEqual({
      pid: 10,
      startTime: 20,
      supervisorPid: 9,
      warnings: ['mount-sys: x'],
    });
  });
  it('maps EPERM to KERNEL_EPERM and keeps the step and errno', () => {
    const e = (() => {
      try {
        parseHelperOutput(
          '{"error":"pivot_root","errno":1,"message":"pivot_root: Operation not permitted"}',
          1,
        );
      } catch (err) {
        return err;
      }
    })();
    expect(e).toBeInstanceOf(LaunchError);
    expect(e).toMatchObject({ code: 'KERNEL_EPERM', step: 'pivot_root', errno: 1 });
  });
  it('maps other errnos to KERNEL_ERROR, args to INVALID_ARGUMENT, junk to a helper error', () => {
    expect(() => parseHelperOutput('{"error":"unshare","errno":22,"message":"x"}', 1)).toThrow(
      expect.objectContaining({ code: 'KERNEL_ERROR', step: 'unshare' }),
    );
    expect(() => parseHelperOutput('{"error":"args","errno":22,"message":"x"}', 2)).toThrow(
      expect.objectContaining({ code: 'INVALID_ARGUMENT' }),
    );
    expect(() => parseHelperOutput('Segmentation fault', 139)).toThrow(
      expect.objectContaining({ step: 'helper' }),
    );
    expect(() => parseHelperOutput('{"pid":1}', 0)).toThrow(RuntimeError);
  });
});

describe('buildNsenterArgs', () => {
  it('enters the user namespace first when asked, then the others, root and cwd', () => {
    expect(buildNsenterArgs(77, ['id', '-u'], true)).toEqual([
      '--target',
      '77',
      '--user',
      '--mount',
      '--uts',
      '--ipc',
      '--net',
      '--pid',
      '--root',
      '--wd',
      '--',
      'id',
      '-u',
    ]);
    expect(buildNsenterArgs(77, ['true'], false)).not.toContain('--user');
  });
  it('refuses pid 1 and empty argv', () => {
    expect(() => buildNsenterArgs(1, ['true'], false)).toThrow(
      expect.objectContaining({ code: 'INVALID_ARGUMENT' }),
    );
    expect(() => buildNsenterArgs(5, [], false)).toThrow(
      expect.objectContaining({ code: 'INVALID_ARGUMENT' }),
    );
  });
});

describe('shiftId', () => {
  it('moves ids of the source range and leaves ids already shifted or out of range alone', () => {
    expect(shiftId(0, 0, 100000, 65536)).toBe(100000);
    expect(shiftId(65535, 0, 100000, 65536)).toBe(165535);
    expect(shiftId(100005, 0, 100000, 65536)).toBe(100005);
    expect(shiftId(100005, 100000, 0, 65536)).toBe(5);
    expect(shiftId(70000, 0, 100000, 65536)).toBe(70000);
  });
});
