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

export function decodeCursor(cursor: string): { at: string; id: string } {
  try {
    const [at, id] = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8')) as [string, string];
    if (Number.isNaN(Date.parse(at)) || !/^[0-9a-f-]{36}$/.test(id)) throw new Error('bad');
    return { at, id };
  } catch {
    throw new ApiError(HttpStatus.BAD_REQUEST, 'INVALID_CURSOR', 'the cursor is not one this API returned');
  }
}
