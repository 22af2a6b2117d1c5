import type { ValueTransformer } from 'typeorm';

/** pg returns bigint/numeric as strings; our sizes fit in a double (< 2^53 bytes = 8 PiB). */
export const numberTransformer: ValueTransformer = {
  to: (v: number | null | undefined) => v,
  from: (v: string | null) => (v === null || v === undefined ? v : Number(v)),
};
