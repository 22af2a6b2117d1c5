import { HttpStatus } from '@nestjs/common';
import { isAdmin, type Principal } from '../auth/principal';
import { ApiError } from './api-error';

/**
 * A refusal for lack of room, as a key without the admin scope sees it: that there is no room, not which
 * hosts the fleet has nor what they have free (the reasons name every host; GET /v1/hosts is admin-only).
 */
export async function fleetPrivate<T>(p: Principal, answer: Promise<T>): Promise<T> {
  try {
    return await answer;
  } catch (e) {
    if (e instanceof ApiError && e.code === 'NO_CAPACITY' && !isAdmin(p))
      throw new ApiError(
        HttpStatus.SERVICE_UNAVAILABLE,
        'NO_CAPACITY',
        'no room for these limits now; try again later',
      );
    throw e;
  }
}
