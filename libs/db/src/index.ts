export * from './entities';
export * from './data-source';
export * from './audit';
export * from './db.module';
export { migrations } from './migrations';
export * from './container-target';
export * from './prepared';
export * from './pipelined-tx';
export * from './batcher';
