import DataLoader from 'dataloader';

export interface BatcherOptions {
  /** Most inputs in one batch (a bigger queue is split into batches of this size). */
  maxBatchSize?: number;
  /** Batches running at once; a batch ready while they all run waits for one to end. */
  maxInFlight?: number;
}

/**
 * Group commit for writes to PostgreSQL: `run(input)` calls made while a batch is being written wait for
 * it and are written together in the next one, by `write` (one statement for all of them); a call made
 * when nothing is in flight goes out at once (at the end of the current tick, with the calls made in the
 * same tick), so a lone caller waits no longer than before. Under load the number of statements, commits
 * and round trips per item falls with the batch size: on machines where every round trip costs a process
 * wake-up on both ends, that is most of what a short job costs.
 *
 * `write` answers one result per input, in order. When a batch of several fails as a whole, each input is
 * written alone, so one bad input (or a deadlock) fails only its own caller. `write` must not call the
 * batcher it belongs to (that call would wait for the batch that is waiting for it). Built on DataLoader
 * (no cache: every call is written).
 */
export function createBatcher<I, O>(
  write: (inputs: readonly I[]) => Promise<O[]>,
  opts: BatcherOptions = {},
): (input: I) => Promise<O> {
  const maxInFlight = opts.maxInFlight ?? 1;
  let inFlight = 0;
  const ready: (() => void)[] = [];
  const writeAll = async (inputs: readonly I[]): Promise<(O | Error)[]> => {
    try {
      const out = await write(inputs);
      if (out.length !== inputs.length)
        throw new Error(`batch write answered ${out.length} results for ${inputs.length} inputs`);
      return out;
    } catch (e) {
      if (inputs.length === 1) return [e instanceof Error ? e : new Error(String(e))];
      return Promise.all(
        inputs.map((i) =>
          write([i]).then(
            ([o]) => o,
            (err: unknown) => (err instanceof Error ? err : new Error(String(err))),
          ),
        ),
      );
    }
  };
  const loader = new DataLoader<I, O>(
    async (inputs) => {
      inFlight++;
      try {
        return await writeAll(inputs);
      } finally {
        inFlight--;
        ready.shift()?.();
      }
    },
    {
      cache: false,
      maxBatchSize: opts.maxBatchSize ?? 64,
      batchScheduleFn: (dispatch) => {
        // DataLoader's own default: after the promise jobs of this tick, so same-tick calls join.
        const go = () => void Promise.resolve().then(() => process.nextTick(dispatch));
        if (inFlight < maxInFlight) go();
        else ready.push(go);
      },
    },
  );
  return (input) => loader.load(input);
}
