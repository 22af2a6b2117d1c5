export * from './job-kinds';
export * from './job-options';
export * from './container-state-machine';
export * from './bull-connection';
