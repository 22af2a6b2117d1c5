import { HttpStatus } from '@nestjs/common';
import { createHash } from 'node:crypto';
import { ApiError } from './api-error';

/**
 * Opaque keyset cursors: (created_at, id) of the last row of a page and the page's scope (cursorScope),
 * base64url-encoded. `at` must keep Postgres' microseconds (select it with CURSOR_AT): a JS Date truncates
 * to milliseconds, and rows that differ from the last one only below the millisecond (e.g. written in one
 * transaction) would be skipped.
 */
export function encodeCursor(at: string, id: string, scope: string): string {
  return Buffer.from(JSON.stringify([at, id, scope])).toString('base64url');
}

/**
 * Which list and filters a page is of: the list's name and its conditions with their values (not the page
 * size). A cursor carries it, so that one used on another list or with other filters is refused instead of
 * answering a page cut at a place of another list (rows skipped without a word).
 */
export function cursorScope(list: string, where: readonly string[], args: readonly unknown[]): string {
  return createHash('sha256')
    .update(JSON.stringify([list, where, args]))
    .digest('base64url')
    .slice(0, SCOPE_LENGTH);
}

const SCOPE_LENGTH = 16;
const SCOPE = /^[A-Za-z0-9_-]{16}$/;

/** SQL for a row's created_at as an exact UTC timestamp string (`cursor_at`), for encodeCursor. */
export const cursorAt = (column: string) =>
  `to_char(${column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS cursor_at`;

/** The cursor's time exactly as cursorAt writes it (PostgreSQL has no year 0000), and a row id. */
const CURSOR_AT = /^(?!0000)\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/;
const ROW_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/**
 * Only what encodeCursor writes passes: a cursor that reached PostgreSQL with a date it refuses (a 30th of
 * February) or an id that is not a uuid would answer 500 instead of 400; one of another `scope` (list or
 * filters) is refused too. A cursor without a scope (written before cursors had one) is taken as it is.
 */
export function decodeCursor(cursor: string, scope: string): { at: string; id: string } {
  let decoded: { at: string; id: string; of?: string };
  try {
    const [at, id, of, ...rest] = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8')) as unknown[];
    if (typeof at !== 'string' || typeof id !== 'string' || !CURSOR_AT.test(at) || !ROW_ID.test(id))
      throw new Error('bad');
    if (rest.length > 0 || (of !== undefined && (typeof of !== 'string' || !SCOPE.test(of))))
      throw new Error('bad');
    // A real calendar time: Date rolls an impossible day over into the next month.
    if (new Date(at).toISOString().slice(0, 19) !== at.slice(0, 19)) throw new Error('bad');
    decoded = { at, id, of: of as string | undefined };
  } catch {
    throw new ApiError(HttpStatus.BAD_REQUEST, 'INVALID_CURSOR', 'the cursor is not one this API returned');
  }
  if (decoded.of !== undefined && decoded.of !== scope)
    throw new ApiError(
      HttpStatus.BAD_REQUEST,
      'INVALID_CURSOR',
      'the cursor is of another list or of other filters: ask for the first page again',
    );
  return { at: decoded.at, id: decoded.id };
}
