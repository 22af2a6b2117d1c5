export * from './bridge';
export * from './ipam';
export * from './ipv4';
export { assertIfname, assertNetnsName } from './ip-command';
export * from './veth';
export * from './port-guard';
