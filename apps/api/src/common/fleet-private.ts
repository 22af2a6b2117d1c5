import { isAdmin, type Principal } from '../auth/principal';
import { ApiError } from './api-error';
import type { ErrorCode } from './error-codes';

/**
 * What a key without the admin scope is told instead of a refusal whose detail and reasons name hosts
 * (GET /v1/hosts is admin-only): the same status and code, without which hosts the fleet has nor what
 * they have free or how large they are.
 */
const TENANT_DETAIL: Partial<Record<ErrorCode, string>> = {
  NO_CAPACITY: 'no room for these limits now; try again later',
  EXCEEDS_HOST_CAPACITY: 'these limits are larger than a host can ever give (not only now); ask for less',
};

/** A refusal about the fleet's room or size, as a key without the admin scope sees it. */
export async function fleetPrivate<T>(p: Principal, answer: Promise<T>): Promise<T> {
  try {
    return await answer;
  } catch (e) {
    const detail = e instanceof ApiError ? TENANT_DETAIL[e.code] : undefined;
    if (e instanceof ApiError && detail && !isAdmin(p)) throw new ApiError(e.status, e.code, detail);
    throw e;
  }
}
