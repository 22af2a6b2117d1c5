import { applyDecorators, HttpStatus, ParseUUIDPipe, type PipeTransform, type Type } from '@nestjs/common';
import {
  ApiExtraModels,
  ApiHeader,
  ApiProperty,
  ApiPropertyOptional,
  ApiResponse,
  ApiSchema,
  getSchemaPath,
} from '@nestjs/swagger';
import { ApiError } from './api-error';

/** An RFC 9457 problem, as every error of the API is answered (application/problem+json). */
@ApiSchema({ name: 'Problem' })
export class ProblemDto {
  @ApiProperty({ example: 'about:blank' })
  type: string;

  @ApiProperty({ example: 'VALIDATION_FAILED', description: 'short summary (the code)' })
  title: string;

  @ApiProperty({ example: 400, description: 'the HTTP status' })
  status: number;

  @ApiProperty({
    example: 'VALIDATION_FAILED',
    description:
      'stable machine-readable code, e.g. UNAUTHORIZED, VALIDATION_FAILED, MALFORMED_JSON, INVALID_ID, ' +
      'PAYLOAD_TOO_LARGE, UNSUPPORTED_MEDIA_TYPE, CONTAINER_NOT_FOUND, TEMPLATE_NOT_FOUND, INVALID_TRANSITION, ' +
      'CONCURRENT_CHANGE, IDEMPOTENCY_KEY_REUSED, IDEMPOTENCY_KEY_IN_FLIGHT, NO_CAPACITY, HOST_NOT_FOUND, ' +
      'JOB_NOT_FOUND, JOB_NOT_RETRYABLE, JOB_NOT_CANCELLABLE, CONTAINER_DESTROYED, FORBIDDEN',
  })
  code: string;

  @ApiProperty({ example: 'name must be a DNS label: a-z, 0-9 and -, 1-63 characters' })
  detail: string;

  @ApiPropertyOptional({ example: '/v1/containers', description: 'the request path' })
  instance?: string;

  @ApiPropertyOptional({ type: [String], description: 'each validation error (VALIDATION_FAILED)' })
  errors?: string[];

  @ApiPropertyOptional({
    type: [String],
    example: ['h1: not enough memory (1073741824 bytes free)'],
    description: 'NO_CAPACITY: why each host cannot take it',
  })
  reasons?: string[];

  @ApiPropertyOptional({ format: 'uuid', description: '…_NOT_FOUND: the id that does not exist' })
  id?: string;

  @ApiPropertyOptional({ example: 'stopped', description: 'INVALID_TRANSITION: the container’s state' })
  state?: string;

  @ApiPropertyOptional({
    example: 'stopped',
    description: 'INVALID_TRANSITION: the state the container will be in once its accepted jobs have run',
  })
  targetState?: string;
}

const PROBLEM_DESCRIPTIONS: Record<number, string> = {
  400: 'invalid request: validation failed, malformed JSON, unknown field, bad id or cursor',
  401: 'no valid API key (missing, malformed, unknown or revoked)',
  403: 'the API key may not do this (admin keys only: the fleet’s writes, privileged containers, metrics)',
  404: 'no such resource',
  409: 'conflict: the state machine refuses the transition (INVALID_TRANSITION), the container kept changing while the request was accepted (CONCURRENT_CHANGE: retry), a snapshot name is taken (SNAPSHOT_EXISTS), or the Idempotency-Key is still in flight',
  413: 'the body is larger than the limit',
  415: 'the body is not application/json',
  422: 'well-formed but refused: unknown template or host, Idempotency-Key reused with another request',
  503: 'no host can take it now (NO_CAPACITY)',
};

/** Documents the problem+json answers an endpoint can give; 401 is implied for every guarded endpoint. */
export function ApiProblems(...statuses: number[]): MethodDecorator & ClassDecorator {
  const all = [...new Set([HttpStatus.UNAUTHORIZED, ...statuses])].sort();
  return applyDecorators(
    ApiExtraModels(ProblemDto),
    ...all.map((status) =>
      ApiResponse({
        status,
        description: PROBLEM_DESCRIPTIONS[status] ?? 'error',
        content: { 'application/problem+json': { schema: { $ref: getSchemaPath(ProblemDto) } } },
      }),
    ),
  );
}

/** The problems every write can give, besides its own: bad body, too large, wrong type, idempotency. */
const WRITE_PROBLEMS = [400, 409, 413, 415, 422];

/**
 * A write that answers 202 with `type` and `Location: /v1/jobs/<id>`; it takes an Idempotency-Key and can
 * give the write problems plus `extra` ones.
 */
export function ApiAcceptedJob(type: Type<unknown>, description: string, ...extra: number[]) {
  return applyDecorators(
    ApiIdempotencyKey(),
    ApiResponse({
      status: HttpStatus.ACCEPTED,
      description,
      type,
      headers: {
        Location: { description: 'the job to follow: /v1/jobs/<id>', schema: { type: 'string' } },
        'Idempotent-Replayed': {
          description: '`true` when this is the stored answer of an earlier request with the same key',
          schema: { type: 'string', enum: ['true'] },
        },
      },
    }),
    ApiProblems(...WRITE_PROBLEMS, ...extra),
  );
}

/** A write that answers 200 (not a job); it takes an Idempotency-Key too. */
export function ApiWrite(type: Type<unknown>, description: string, ...extra: number[]) {
  return applyDecorators(
    ApiIdempotencyKey(),
    ApiResponse({ status: HttpStatus.OK, description, type }),
    ApiProblems(...WRITE_PROBLEMS, ...extra),
  );
}

export function ApiIdempotencyKey() {
  return ApiHeader({
    name: 'Idempotency-Key',
    required: false,
    description:
      '1-255 printable ASCII characters. Same key + same request → the stored answer ' +
      '(Idempotent-Replayed: true); same key + another request → 422 IDEMPOTENCY_KEY_REUSED; ' +
      'still in flight → 409 IDEMPOTENCY_KEY_IN_FLIGHT. Kept at least 24 h; a failed request releases it.',
    schema: { type: 'string', maxLength: 255 },
  });
}

/** `:id` path parameters: a UUID, else 400 INVALID_ID (before any lookup). */
export const UuidPipe = new ParseUUIDPipe({
  exceptionFactory: () => new ApiError(HttpStatus.BAD_REQUEST, 'INVALID_ID', 'the id must be a UUID'),
});

/**
 * The body of a write that takes none (destroy, retry, cancel, drain, undrain): absent or `{}`; a field in
 * it is refused like an unknown field of any other body (400 VALIDATION_FAILED), not silently ignored.
 */
export const NoBodyPipe: PipeTransform = {
  transform(value: unknown) {
    const fields = value && typeof value === 'object' ? Object.keys(value) : [];
    if (fields.length > 0) {
      const errors = fields.map((f) => `property ${f} should not exist`);
      throw new ApiError(HttpStatus.BAD_REQUEST, 'VALIDATION_FAILED', errors.join('; '), { errors });
    }
    return value;
  },
};
