import { HttpStatus } from '@nestjs/common';
import { ApiError } from './api-error';

/** Opaque keyset cursors: (created_at, id) of the last row of a page, base64url-encoded. */
export function encodeCursor(at: Date, id: string): string {
  return Buffer.from(JSON.stringify([at.toISOString(), id])).toString('base64url');
}

export function decodeCursor(cursor: string): { at: string; id: string } {
  try {
    const [at, id] = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8')) as [string, string];
    if (Number.isNaN(Date.parse(at)) || !/^[0-9a-f-]{36}$/.test(id)) throw new Error('bad');
    return { at, id };
  } catch {
    throw new ApiError(HttpStatus.BAD_REQUEST, 'INVALID_CURSOR', 'the cursor is not one this API returned');
  }
}
