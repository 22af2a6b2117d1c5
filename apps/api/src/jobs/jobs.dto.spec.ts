import { sinceInstant } from './jobs.dto';

describe('sinceInstant', () => {
  it('reads a date or a date-time without an offset as UTC', () => {
    expect(sinceInstant('2026-12-01')).toBe('2026-12-01T00:00:00Z');
    expect(sinceInstant('2026-12-01T10:00')).toBe('2026-12-01T10:00Z');
    expect(sinceInstant('2026-12-01T10:00:05.123')).toBe('2026-12-01T10:00:05.123Z');
  });

  it('keeps an offset that is given', () => {
    for (const s of ['2026-12-01T10:00:00Z', '2026-12-01T10:00+01:00', '2026-12-01T10:00:00-0530'])
      expect(sinceInstant(s)).toBe(s);
  });

  it('names the same instant as the UTC form', () => {
    expect(Date.parse(sinceInstant('2026-12-01T10:00'))).toBe(Date.parse('2026-12-01T10:00:00Z'));
    expect(Date.parse(sinceInstant('2026-12-01'))).toBe(Date.parse('2026-12-01T00:00:00Z'));
  });
});
