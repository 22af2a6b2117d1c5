export * from './container-exec';
export * from './init-process';
export * from './launcher';
export * from './ownership-shift';
