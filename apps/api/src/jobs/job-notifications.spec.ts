import { parseJobNotification } from './job-notifications';

describe('parseJobNotification', () => {
  const id = '6c1f6c57-5a0e-4f43-9a43-3b8c8f3c1a10';

  it('reads a bare job id (an older writer) and `<id> <action>`', () => {
    expect(parseJobNotification(id)).toEqual({ jobId: id });
    expect(parseJobNotification(`${id} job.step.done`)).toEqual({ jobId: id, action: 'job.step.done' });
    expect(parseJobNotification('')).toBeNull();
  });

  it("reads the ended job's row, with timestamps as node-pg gives them", () => {
    const row = {
      id,
      kind: 'system.noop',
      state: 'completed',
      result: { n: 1, text: 'a b c' },
      created_at: '2026-11-25T13:40:01.123789+00:00',
      started_at: '2026-11-25T19:10:01.5+05:30',
      finished_at: null,
    };
    const n = parseJobNotification(`${id} job.completed ${JSON.stringify(row)}`);
    expect(n?.action).toBe('job.completed');
    expect(n?.row).toMatchObject({ id, state: 'completed', result: { n: 1, text: 'a b c' } });
    expect(n?.row?.created_at).toEqual(new Date('2026-11-25T13:40:01.123Z'));
    expect(n?.row?.started_at).toEqual(new Date('2026-11-25T13:40:01.500Z'));
    expect(n?.row?.finished_at).toBeNull();
  });

  it('drops a row it cannot read (the waiter reads the job instead)', () => {
    expect(parseJobNotification(`${id} job.failed {not json`)).toEqual({ jobId: id, action: 'job.failed' });
    expect(parseJobNotification(`${id} job.failed {"state":"failed","created_at":"yesterday"}`)).toEqual({
      jobId: id,
      action: 'job.failed',
    });
  });
});
