/**
 * The devices a container may use, as cgroup v1 `devices.allow` rules (LXC's default list): everything
 * else is refused by the devices controller, whatever node the container reaches. Its own /dev (a tmpfs
 * with the host's null, zero, full, random, urandom and tty bound in, and a devpts of its own) needs no
 * more; tun and fuse for the VPN and FUSE filesystems a VPS runs; mknod of any node (an installer that
 * makes its nodes goes on), which without its own rule cannot be opened. Unprivileged containers cannot
 * mknod at all (no CAP_MKNOD over the host's devices), and the root filesystem is mounted `nodev`:
 * this is what holds a privileged container's root, which can mknod in its /dev, off the host's disks.
 */
export const CONTAINER_DEVICE_RULES: readonly string[] = [
  'c *:* m',
  'b *:* m',
  'c 1:3 rwm', // null
  'c 1:5 rwm', // zero
  'c 1:7 rwm', // full
  'c 1:8 rwm', // random
  'c 1:9 rwm', // urandom
  'c 5:0 rwm', // tty
  'c 5:1 rwm', // console
  'c 5:2 rwm', // ptmx
  'c 136:* rwm', // pts
  'c 10:200 rwm', // net/tun
  'c 10:229 rwm', // fuse
];

/** What `devices.list` shows of a group that restricts nothing (the root's, and a new group's below it). */
export const ALL_DEVICES = 'a *:* rwm';
