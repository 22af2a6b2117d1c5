import { mkdir, open, readFile, readdir, rm } from 'node:fs/promises';
import { run } from '../common/exec';
import { DependencyMissingError, RuntimeError } from '../common/errors';
import { mountAt } from './mount-table';
import { withReverter } from '../common/reverter';
import { pathExists } from './volume-files';

export const DEFAULT_POOL_SIZE_BYTES = 20 * 1024 ** 3;
/** mkfs.btrfs refuses anything much smaller. */
export const MIN_POOL_SIZE_BYTES = 256 * 1024 ** 2;

export const BTRFS_HINT = 'run scripts/services.sh ensure or set BERTH_STORAGE_DRIVER=dir';

export interface LoopPoolOptions {
  /** The sparse image file, e.g. `<root>/pool.img`. */
  image: string;
  /** Where the filesystem is mounted, e.g. `<root>/pool`. */
  mountPoint: string;
  /** Apparent size of a newly created image (ignored when the image exists). */
  sizeBytes?: number;
}

/**
 * A btrfs filesystem in a sparse image file, attached to a loop device and mounted: the pool the btrfs driver
 * uses when the host has no btrfs filesystem to give it. Every step checks what is already there (a restarted
 * worker finds the pool mounted, or the image attached but unmounted, or only the image) and does only
 * what is missing.
 */
export class LoopPool {
  private readonly sizeBytes: number;

  constructor(private readonly options: LoopPoolOptions) {
    this.sizeBytes = options.sizeBytes ?? DEFAULT_POOL_SIZE_BYTES;
    if (!Number.isSafeInteger(this.sizeBytes) || this.sizeBytes < MIN_POOL_SIZE_BYTES) {
      throw new RuntimeError(
        'INVALID_SIZE',
        `btrfs pool size must be an integer of at least ${MIN_POOL_SIZE_BYTES} bytes`,
        {
          sizeBytes: options.sizeBytes,
        },
      );
    }
  }

  /** Creates, attaches and mounts whatever is missing. Idempotent and safe across process restarts. */
  async prepare(): Promise<void> {
    const { image, mountPoint } = this.options;
    const mounted = await mountAt(mountPoint);
    if (mounted) {
      if (mounted.fsType !== 'btrfs') {
        throw new RuntimeError('WRONG_STATE', `${mountPoint} is mounted with ${mounted.fsType}, not btrfs`, {
          mountPoint,
          fsType: mounted.fsType,
        });
      }
      return;
    }
    await withReverter(async (revert) => {
      await mkdir(mountPoint, { recursive: true });
      const exists = await pathExists(image);
      if (!exists) {
        // Sparse: the apparent size costs no disk until written.
        const handle = await open(image, 'wx', 0o600);
        revert.add('remove the new image', () => rm(image, { force: true }));
        try {
          await handle.truncate(this.sizeBytes);
        } finally {
          await handle.close();
        }
      }
      // An image without a btrfs superblock is ours and empty (a crash between truncate and mkfs): format it.
      if (!exists || !(await hasBtrfsSuperblock(image))) {
        await runBtrfsTool('mkfs.btrfs', [
          '-q',
          '--force',
          '--nodiscard',
          '--label',
          'berth-pool',
          '--',
          image,
        ]);
      }
      let [device] = await loopDevicesOf(image);
      if (!device) {
        device = (await run('losetup', ['--find', '--show', '--', image])).stdout.trim();
        const attached = device;
        revert.add('detach the loop device', () => run('losetup', ['--detach', attached]));
      }
      await run('mount', ['-t', 'btrfs', '--', device, mountPoint]);
    });
  }

  /** Unmounts the pool and detaches its loop device(s). Idempotent. */
  async release(): Promise<void> {
    const { image, mountPoint } = this.options;
    if (await mountAt(mountPoint)) await run('umount', ['--', mountPoint]);
    for (const device of await loopDevicesOf(image)) {
      // A device that vanished between the listing and now is already what we want.
      await run('losetup', ['--detach', device], { okCodes: [0, 1] });
    }
  }

  /** The loop device(s) currently backed by the image. */
  devices(): Promise<string[]> {
    return loopDevicesOf(this.options.image);
  }
}

/** The primary btrfs superblock sits at 64 KiB; its magic `_BHRfS_M` at offset 0x40 within it. */
export async function hasBtrfsSuperblock(image: string): Promise<boolean> {
  const handle = await open(image, 'r');
  try {
    const magic = Buffer.alloc(8);
    const { bytesRead } = await handle.read(magic, 0, 8, 0x10040);
    return bytesRead === 8 && magic.toString('latin1') === '_BHRfS_M';
  } finally {
    await handle.close();
  }
}

/**
 * Loop devices whose backing file is `image`, read from sysfs in-process (no `losetup -j` spawn).
 */
export async function loopDevicesOf(image: string): Promise<string[]> {
  let names: string[];
  try {
    names = (await readdir('/sys/block')).filter((n) => n.startsWith('loop'));
  } catch {
    return [];
  }
  const found: string[] = [];
  for (const name of names) {
    try {
      const backing = (await readFile(`/sys/block/${name}/loop/backing_file`, 'utf8')).trim();
      if (backing === image) found.push(`/dev/${name}`);
    } catch {
      // Not attached (no loop/ directory): skip.
    }
  }
  return found.sort();
}

/** Runs a btrfs-progs program, turning "not installed" into the actionable hint. */
export async function runBtrfsTool(program: string, args: readonly string[]) {
  try {
    return await run(program, args);
  } catch (error) {
    if (error instanceof DependencyMissingError) throw new DependencyMissingError('btrfs-progs', BTRFS_HINT);
    throw error;
  }
}
