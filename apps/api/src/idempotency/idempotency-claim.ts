import { HttpStatus } from '@nestjs/common';
import type { DataSource, EntityManager } from 'typeorm';
import { preparedQuery, type SqlTx } from '@berth/db';
import { ApiError } from '../common/api-error';

/**
 * Stores the answer of the request that holds the key, if it still does: `$3` is the claim's
 * `created_at` (a key taken over as abandoned gets a new one), so a request that outlived its hold writes
 * nothing and its transaction rolls back.
 */
const STORE = `UPDATE idempotency_keys
  SET state = 'done', response_status = $4, response_headers = $5, response_body = $6
  WHERE scope = $1 AND key = $2 AND state = 'in_flight' AND created_at = $3::timestamptz
  RETURNING key`;

/**
 * A request's hold on its `Idempotency-Key` (taken by IdempotencyInterceptor, handed to the service on
 * `Principal.idempotency`). The service stores the request's answer with `store` inside the transaction
 * that writes what the request asked for: the answer commits with the job or not at all. A process killed
 * at any moment leaves either nothing written and the key in flight (a retry takes it over once it is
 * abandoned, and runs the request) or everything written and the answer stored (a retry gets it). Never
 * the job without the answer, which a retry would run a second time.
 */
export class IdempotencyClaim {
  /** True once `store` wrote the answer (in the request's transaction, which may still roll back). */
  stored = false;

  constructor(
    readonly scope: string,
    readonly key: string,
    /** The key row's `created_at` as PostgreSQL wrote it (text: microseconds, which a Date would lose). */
    readonly token: string,
    /** The answer's status: the route's. */
    private readonly status: number,
  ) {}

  /** Writes the answer (`body`, and `Location` when given) on `on`: the request's own transaction. */
  async store(on: DataSource | EntityManager | SqlTx, body: unknown, location?: string): Promise<void> {
    const rows = await preparedQuery(on, STORE, [
      this.scope,
      this.key,
      this.token,
      this.status,
      JSON.stringify(location ? { Location: location } : {}),
      JSON.stringify(body ?? null),
    ]);
    if (rows.length === 0) {
      throw new ApiError(
        HttpStatus.CONFLICT,
        'IDEMPOTENCY_KEY_IN_FLIGHT',
        'this request took so long that a retry with its Idempotency-Key took the key over; it was not applied',
      );
    }
    this.stored = true;
  }
}
