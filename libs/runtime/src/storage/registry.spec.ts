import { RuntimeError } from '../common/errors';
import {
  StorageHostProbe,
  createStorageDriver,
  detectStorageDrivers,
  parseProcFilesystems,
  preferredStorageDriver,
  storageRoot,
} from './registry';

function probe(overrides: Partial<StorageHostProbe> = {}): StorageHostProbe {
  return {
    isRoot: () => true,
    hasProgram: async () => true,
    filesystems: async () => ['ext4', 'btrfs', 'overlay'],
    loadableModules: async () => [],
    exists: async () => true,
    ...overrides,
  };
}

describe('createStorageDriver', () => {
  it.each(['btrfs', 'overlay', 'dir'] as const)('builds %s and reports its name in info()', (name) => {
    const driver = createStorageDriver(name, { root: `/var/lib/berth/storage/${name}` });
    expect(driver.info().name).toBe(name);
  });

  it('answers capability flags so callers need not know the driver', () => {
    const root = '/var/lib/berth/storage/x';
    expect(createStorageDriver('btrfs', { root }).info()).toMatchObject({
      instantClone: true,
      instantSnapshot: true,
    });
    expect(createStorageDriver('overlay', { root }).info()).toMatchObject({
      instantClone: true,
      needsMount: true,
      templatesPinnedByClones: true,
    });
    expect(createStorageDriver('dir', { root }).info()).toMatchObject({
      instantClone: false,
      needsMount: false,
    });
  });

  it('rejects an unknown driver name with the list of known ones', () => {
    expect(() => createStorageDriver('zfs', { root: '/x/y' })).toThrow(/btrfs, overlay, dir/);
    expect(() => createStorageDriver('zfs', { root: '/x/y' })).toThrow(RuntimeError);
  });

  it('rejects a relative root', () => {
    expect(() => createStorageDriver('dir', { root: 'data' })).toThrow(
      expect.objectContaining({ code: 'INVALID_PATH' }),
    );
  });

  it('rejects a btrfs pool smaller than mkfs.btrfs accepts', () => {
    expect(() => createStorageDriver('btrfs', { root: '/x/y', poolSizeBytes: 1024 })).toThrow(
      expect.objectContaining({ code: 'INVALID_SIZE' }),
    );
  });

  it('puts driver roots under <dataRoot>/storage/<name>', () => {
    expect(storageRoot('/var/lib/berth', 'btrfs')).toBe('/var/lib/berth/storage/btrfs');
  });
});

describe('detectStorageDrivers', () => {
  it('finds all three on a complete host and prefers btrfs', async () => {
    const found = await detectStorageDrivers('/var/lib/berth', probe());
    expect(found.every((d) => d.usable)).toBe(true);
    expect(preferredStorageDriver(found)).toBe('btrfs');
  });

  it('without btrfs-progs, falls back to overlay and says how to fix btrfs', async () => {
    const found = await detectStorageDrivers(
      '/var/lib/berth',
      probe({ hasProgram: async (p) => !p.includes('btrfs') }),
    );
    const btrfs = found.find((d) => d.name === 'btrfs');
    expect(btrfs?.usable).toBe(false);
    expect(btrfs?.reason).toContain('scripts/services.sh ensure or set BERTH_STORAGE_DRIVER=dir');
    expect(preferredStorageDriver(found)).toBe('overlay');
  });

  it('counts a loadable module as available', async () => {
    const found = await detectStorageDrivers(
      '/var/lib/berth',
      probe({ filesystems: async () => ['ext4'], loadableModules: async () => ['btrfs', 'overlay'] }),
    );
    expect(found.filter((d) => d.usable).map((d) => d.name)).toEqual(['btrfs', 'overlay', 'dir']);
  });

  it('without root only dir is usable', async () => {
    const found = await detectStorageDrivers('/var/lib/berth', probe({ isRoot: () => false }));
    expect(found.filter((d) => d.usable).map((d) => d.name)).toEqual(['dir']);
    expect(preferredStorageDriver(found)).toBe('dir');
  });

  it('without loop devices btrfs is unusable', async () => {
    const found = await detectStorageDrivers('/var/lib/berth', probe({ exists: async () => false }));
    expect(found.find((d) => d.name === 'btrfs')?.reason).toMatch(/loop/);
  });
});

describe('parseProcFilesystems', () => {
  it('reads nodev and block filesystems', () => {
    expect(parseProcFilesystems('nodev\tsysfs\nnodev\toverlay\n\text4\n\tbtrfs\n')).toEqual([
      'sysfs',
      'overlay',
      'ext4',
      'btrfs',
    ]);
  });
});
