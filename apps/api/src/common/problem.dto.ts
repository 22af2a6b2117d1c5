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
import { ERROR_CODES, statusesOf, type ErrorCode } from './error-codes';

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
    enum: Object.keys(ERROR_CODES),
    description:
      'stable machine-readable code; each operation’s error answers say which codes it gives and why. ' +
      'Every code: ' +
      Object.entries(ERROR_CODES)
        .map(([code, { status }]) => `${code} (${[status].flat().join(', ')})`)
        .join(', '),
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

/** A code an operation answers with; `CODE:status` picks one status of a code that has several. */
export type ProblemRef = ErrorCode | `${ErrorCode}:${number}`;

/**
 * Documents the problem+json answers an endpoint can give, by code: one response per status, whose
 * description names each of the endpoint's codes with that status and what it means. 401 UNAUTHORIZED is
 * implied for every guarded endpoint.
 */
export function ApiProblems(...refs: ProblemRef[]): MethodDecorator & ClassDecorator {
  const byStatus = new Map<number, ErrorCode[]>();
  for (const ref of ['UNAUTHORIZED', ...refs] as ProblemRef[]) {
    const [code, status] = ref.split(':') as [ErrorCode, string?];
    for (const s of status ? [Number(status)] : statusesOf(code)) {
      const codes = byStatus.get(s) ?? [];
      if (!codes.includes(code)) codes.push(code);
      byStatus.set(s, codes);
    }
  }
  return applyDecorators(
    ApiExtraModels(ProblemDto),
    ...[...byStatus.entries()]
      .sort(([a], [b]) => a - b)
      .map(([status, codes]) =>
        ApiResponse({
          status,
          description: codes.map((c) => `${c}: ${ERROR_CODES[c].meaning}`).join('; '),
          content: { 'application/problem+json': { schema: { $ref: getSchemaPath(ProblemDto) } } },
        }),
      ),
  );
}

/** The problems every write can give, besides its own: bad body, too large, wrong type, idempotency. */
const WRITE_PROBLEMS: ProblemRef[] = [
  'VALIDATION_FAILED',
  'MALFORMED_JSON',
  'INVALID_IDEMPOTENCY_KEY',
  'IDEMPOTENCY_KEY_IN_FLIGHT',
  'PAYLOAD_TOO_LARGE',
  'UNSUPPORTED_MEDIA_TYPE',
  'IDEMPOTENCY_KEY_REUSED',
];

/**
 * A write that answers 202 with `type` and `Location: /v1/jobs/<id>`; it takes an Idempotency-Key and can
 * give the write problems plus `extra` ones.
 */
export function ApiAcceptedJob(type: Type<unknown>, description: string, ...extra: ProblemRef[]) {
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
export function ApiWrite(type: Type<unknown>, description: string, ...extra: ProblemRef[]) {
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
