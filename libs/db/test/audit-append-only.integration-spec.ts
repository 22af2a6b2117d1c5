import type { DataSource } from 'typeorm';
import { appendAudit, createDataSource } from '@berth/db';

describe('audit_events is append-only in the database', () => {
  let ds: DataSource;
  const subject = '11111111-2222-3333-4444-555555555555';

  beforeAll(async () => {
    ds = createDataSource(process.env.BERTH_TEST_DATABASE_URL!);
    await ds.initialize();
    await appendAudit(ds.manager, {
      actor: 'test',
      action: 'container.create.requested',
      subjectType: 'container',
      subjectId: subject,
      data: { n: 1 },
    });
  });
  afterAll(() => ds.destroy());

  it('accepts inserts', async () => {
    const rows = await ds.query(`SELECT action, data FROM audit_events WHERE subject_id = $1`, [subject]);
    expect(rows).toEqual([{ action: 'container.create.requested', data: { n: 1 } }]);
  });

  it('rejects UPDATE', async () => {
    await expect(
      ds.query(`UPDATE audit_events SET action = 'forged' WHERE subject_id = $1`, [subject]),
    ).rejects.toThrow(/append-only: UPDATE/);
  });

  it('rejects DELETE', async () => {
    await expect(ds.query(`DELETE FROM audit_events WHERE subject_id = $1`, [subject])).rejects.toThrow(
      /append-only: DELETE/,
    );
  });

  it('rejects TRUNCATE', async () => {
    await expect(ds.query(`TRUNCATE audit_events`)).rejects.toThrow(/append-only: TRUNCATE/);
  });

  it('still holds the original row after the attempts', async () => {
    const rows = await ds.query(`SELECT action FROM audit_events WHERE subject_id = $1`, [subject]);
    expect(rows).toEqual([{ action: 'container.create.requested' }]);
  });
});
