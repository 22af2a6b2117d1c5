export * from './busybox.builder';
export * from './rootfs-import';
export * from './tar-reader';
export * from './template-metadata';
export { treeUsage } from './fs-util';
