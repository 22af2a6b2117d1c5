import { HttpStatus } from '@nestjs/common';
import { ApiError } from './api-error';

/**
 * Opaque keyset cursors: (created_at, id) of the last row of a page, base64url-encoded. `at` must keep
 * Postgres' microseconds (select it with CURSOR_AT): a JS Date truncates to milliseconds, and rows that
 * differ from the last one only below the millisecond (e.g. written in one transaction) would be skipped.
 */
export function encodeCursor(at: string, id: string): string {
  return Buffer.from(JSON.stringify([at, id])).toString('base64url');
}

/** SQL for a row's created_at as an exact UTC timestamp string (`cursor_at`), for encodeCursor. */
export const cursorAt = (column: string) =>
  `to_char(${column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS cursor_at`;

/** The cursor's time exactly as cursorAt writes it (PostgreSQL has no year 0000), and a row id. */
const CURSOR_AT = /^(?!0000)\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/;
const ROW_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/**
 * Only what encodeCursor writes passes: a cursor that reached PostgreSQL with a date it refuses (a 30th of
 * February) or an id that is not a uuid would answer 500 instead of 400.
 */
export function decodeCursor(cursor: string): { at: string; id: string } {
  try {
    const [at, id] = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8')) as [unknown, unknown];
    if (typeof at !== 'string' || typeof id !== 'string' || !CURSOR_AT.test(at) || !ROW_ID.test(id))
      throw new Error('bad');
    // A real calendar time: Date rolls an impossible day over into the next month.
    if (new Date(at).toISOString().slice(0, 19) !== at.slice(0, 19)) throw new Error('bad');
    return { at, id };
  } catch {
    throw new ApiError(HttpStatus.BAD_REQUEST, 'INVALID_CURSOR', 'the cursor is not one this API returned');
  }
}
