import { parseMountInfo } from './mount-table';

describe('parseMountInfo', () => {
  it('reads mount point, type and source, with octal escapes and optional fields', () => {
    const text = [
      '22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw',
      '101 22 0:50 / /var/lib/berth/storage/overlay/containers/web-1/rootfs rw,relatime - overlay berth-overlay rw,lowerdir=/a,upperdir=/b,workdir=/c',
      '102 22 7:3 / /tmp/with\\040space rw master:2 shared:3 - btrfs /dev/loop3 rw,space_cache=v2',
      'garbage line',
      '',
    ].join('\n');
    expect(parseMountInfo(text)).toEqual([
      { mountPoint: '/', fsType: 'ext4', source: '/dev/vda' },
      {
        mountPoint: '/var/lib/berth/storage/overlay/containers/web-1/rootfs',
        fsType: 'overlay',
        source: 'berth-overlay',
      },
      { mountPoint: '/tmp/with space', fsType: 'btrfs', source: '/dev/loop3' },
    ]);
  });
});
