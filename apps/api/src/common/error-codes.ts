/**
 * Every `code` a problem+json answer of the API can carry, with its status and what it means: the one list
 * the Problem schema's `code` enum, each route's documented problems and the README's error table come
 * from. `ApiError` takes only these (a new code is added here, or the build fails), and the exception
 * filter's fallbacks are typed by it too.
 */
export const ERROR_CODES = {
  // 400
  BAD_REQUEST: { status: 400, meaning: 'not a request the server can read (not HTTP, a bad header)' },
  VALIDATION_FAILED: {
    status: 400,
    meaning: 'a field or query parameter is missing, unknown or invalid (`errors`)',
  },
  MALFORMED_JSON: { status: 400, meaning: 'the body is not valid JSON' },
  INVALID_ID: { status: 400, meaning: 'an id in the path is not a UUID' },
  INVALID_CURSOR: { status: 400, meaning: 'the cursor is not one this API returned' },
  INVALID_IDEMPOTENCY_KEY: {
    status: 400,
    meaning: 'the Idempotency-Key is not 1-255 printable ASCII characters',
  },
  INVALID_ARGUMENT: { status: 400, meaning: 'the runtime refused an argument' },
  INVALID_NAME: { status: 400, meaning: 'the runtime refused a name' },
  INVALID_SIZE: { status: 400, meaning: 'the runtime refused a size' },
  INVALID_PATH: { status: 400, meaning: 'the runtime refused a path' },
  UNSAFE_ARCHIVE: { status: 400, meaning: 'the runtime refused an archive' },
  // 401, 403
  UNAUTHORIZED: { status: 401, meaning: 'no valid API key (missing, malformed, unknown or revoked)' },
  FORBIDDEN: {
    status: 403,
    meaning:
      'the API key may not do this (admin keys only: the fleet, a choice of host, privileged containers)',
  },
  // 404, 405
  NOT_FOUND: { status: 404, meaning: 'no such path' },
  CONTAINER_NOT_FOUND: { status: 404, meaning: 'no such container (or not the key’s tenant’s)' },
  JOB_NOT_FOUND: { status: 404, meaning: 'no such job (or not one the key may see)' },
  // 404 for the host of the path, 422 for one named in a body (`HOST_NOT_FOUND:422` in ApiProblems).
  HOST_NOT_FOUND: { status: [404, 422], meaning: 'no such host' },
  METHOD_NOT_ALLOWED: {
    status: 405,
    meaning: 'the path does not take this method (`Allow` says which it takes)',
  },
  READ_ONLY: { status: 405, meaning: 'the queue board is read-only' },
  REQUEST_TIMEOUT: { status: 408, meaning: 'the request did not arrive in time' },
  // 409
  CONFLICT: { status: 409, meaning: 'conflict' },
  INVALID_TRANSITION: {
    status: 409,
    meaning: 'the container’s state machine does not allow it from its target state (`state`, `targetState`)',
  },
  CONCURRENT_CHANGE: {
    status: 409,
    meaning: 'the container kept changing while the request was accepted: retry',
  },
  CONTAINER_NAME_TAKEN: { status: 409, meaning: 'a container of the tenant has this name' },
  CONTAINER_DESTROYED: { status: 409, meaning: 'the job’s container is destroyed: nothing to retry it on' },
  SNAPSHOT_EXISTS: { status: 409, meaning: 'the container already has a snapshot of this name' },
  TEMPLATE_EXISTS: {
    status: 409,
    meaning: 'a template of this name, ready or importing on some host, comes from another source',
  },
  TEMPLATE_NOT_READY: {
    status: 409,
    meaning:
      'the template is ready on no host (or not on the chosen one): its import runs, or failed everywhere',
  },
  JOB_NOT_RETRYABLE: {
    status: 409,
    meaning:
      'only a failed or cancelled job can be retried; a template import not once its template took another source',
  },
  JOB_NOT_CANCELLABLE: { status: 409, meaning: 'the job has started or ended: too late to cancel' },
  IDEMPOTENCY_KEY_IN_FLIGHT: { status: 409, meaning: 'a request with this Idempotency-Key is still running' },
  // 413, 415, 422, 429, 431
  PAYLOAD_TOO_LARGE: { status: 413, meaning: 'the body is larger than the limit' },
  UNSUPPORTED_MEDIA_TYPE: { status: 415, meaning: 'the body is not application/json' },
  UNPROCESSABLE: { status: 422, meaning: 'well-formed but refused' },
  TEMPLATE_NOT_FOUND: { status: 422, meaning: 'no template of this name' },
  EXCEEDS_HOST_CAPACITY: {
    status: 422,
    meaning:
      'larger than any online host (or the chosen one, or the container’s own host for a resize) is: its CPUs, ' +
      'memory or disk; no room freed will make it fit, ask for less',
  },
  IDEMPOTENCY_KEY_REUSED: { status: 422, meaning: 'the Idempotency-Key was used with another request' },
  TOO_MANY_REQUESTS: { status: 429, meaning: 'too many requests' },
  HEADERS_TOO_LARGE: { status: 431, meaning: 'the request line and headers are over 16 KiB' },
  // 5xx
  INTERNAL: { status: 500, meaning: 'an unexpected error (logged; no internals in the answer)' },
  NO_CAPACITY: {
    status: 503,
    meaning:
      'no host has room for it now (online, not draining, free CPU, memory, disk): room may free up, retry later',
  },
  UNAVAILABLE: { status: 503, meaning: 'unavailable' },
} as const satisfies Record<string, { status: number | readonly number[]; meaning: string }>;

export type ErrorCode = keyof typeof ERROR_CODES;

/** The statuses a code is answered with. */
export function statusesOf(code: ErrorCode): readonly number[] {
  const s: number | readonly number[] = ERROR_CODES[code].status;
  return typeof s === 'number' ? [s] : s;
}
