import { Module } from '@nestjs/common';
import { APP_INTERCEPTOR } from '@nestjs/core';
import { IdempotencyInterceptor } from './idempotency.interceptor';
import { IdempotencyKeyPurge } from './idempotency-purge';

@Module({ providers: [{ provide: APP_INTERCEPTOR, useClass: IdempotencyInterceptor }, IdempotencyKeyPurge] })
export class IdempotencyModule {}
