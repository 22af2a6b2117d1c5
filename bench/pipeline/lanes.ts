/**
 * Calls `submit(i)` for i in 0..n-1, `inflight` calls at a time (concurrent clients, each waiting for its
 * answer before its next request); resolves when every call has answered.
 */
export async function runLanes(
  n: number,
  inflight: number,
  submit: (i: number) => Promise<unknown>,
): Promise<void> {
  let next = 0;
  const lane = async () => {
    while (next < n) await submit(next++);
  };
  await Promise.all(Array.from({ length: inflight }, lane));
}
