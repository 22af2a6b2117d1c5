import { HttpStatus } from '@nestjs/common';
import type { ErrorCode } from './error-codes';

/** An error the API answers with as problem+json; `code` is stable for clients (one of ERROR_CODES). */
export class ApiError extends Error {
  constructor(
    readonly status: HttpStatus,
    readonly code: ErrorCode,
    message: string,
    readonly extra: Record<string, unknown> = {},
  ) {
    super(message);
  }
}

export const notFound = (what: 'container' | 'job' | 'host', id: string) =>
  new ApiError(
    HttpStatus.NOT_FOUND,
    `${what.toUpperCase() as Uppercase<typeof what>}_NOT_FOUND`,
    `${what} ${id} does not exist`,
    { id },
  );
