import { Inject, Injectable, OnModuleDestroy } from '@nestjs/common';
import { HealthIndicatorService } from '@nestjs/terminus';
import Redis from 'ioredis';
import { BERTH_CONFIG, type BerthConfig } from '@berth/config';
import { unreachable } from './unreachable';

/** Redis is ready when it answers PING within a second. */
@Injectable()
export class RedisHealthIndicator implements OnModuleDestroy {
  private readonly client: Redis;

  constructor(
    @Inject(BERTH_CONFIG) config: BerthConfig,
    private readonly health: HealthIndicatorService,
  ) {
    // No offline queue: while Redis is away a PING must fail now, not wait for the reconnection.
    this.client = new Redis(config.redis.url, {
      lazyConnect: true,
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      connectTimeout: 1_000,
      retryStrategy: () => 500,
    });
    this.client.on('error', () => undefined);
    this.client.connect().catch(() => undefined);
  }

  async check(key = 'redis') {
    const session = this.health.check(key);
    try {
      const pong = await Promise.race([
        this.client.ping(),
        new Promise<never>((_, reject) => setTimeout(() => reject(new Error('PING timed out')), 1_000)),
      ]);
      return pong === 'PONG' ? session.up() : session.down({ message: `unexpected answer ${pong}` });
    } catch (e) {
      // The endpoint is public: the error's code, not its text (addresses, role names, server messages).
      return session.down({ message: unreachable('Redis', e) });
    }
  }

  onModuleDestroy(): void {
    this.client.disconnect();
  }
}
