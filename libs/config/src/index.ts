export * from './config';
export * from './config.module';
export { envSchema, type Env } from './config.schema';
export * from './logger';
