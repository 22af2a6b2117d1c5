import { HttpStatus } from '@nestjs/common';

/** An error the API answers with as problem+json; `code` is stable for clients. */
export class ApiError extends Error {
  constructor(
    readonly status: HttpStatus,
    readonly code: string,
    message: string,
    readonly extra: Record<string, unknown> = {},
  ) {
    super(message);
  }
}

export const notFound = (what: string, id: string) =>
  new ApiError(HttpStatus.NOT_FOUND, `${what.toUpperCase()}_NOT_FOUND`, `${what} ${id} does not exist`, {
    id,
  });
