import { ValidateIf } from 'class-validator';

/**
 * A body field that may be left out, but not sent as `null`: class-validator's IsOptional skips the
 * field's other rules for `null` too, and a `null` that reached the job's payload schema was refused
 * there, as a 500 after the request had passed validation. Query parameters (never `null`) keep IsOptional.
 */
export const OmittedOrValid = (): PropertyDecorator => ValidateIf((_o, value) => value !== undefined);
