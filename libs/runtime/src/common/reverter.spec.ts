import { Reverter, withReverter } from './reverter';

describe('Reverter', () => {
  it('runs the undos newest first on failure', async () => {
    const order: string[] = [];
    const revert = new Reverter();
    revert.add('one', () => order.push('undo one'));
    revert.add('two', async () => {
      order.push('undo two');
    });
    revert.add('three', () => order.push('undo three'));
    expect(await revert.fail()).toEqual([]);
    expect(order).toEqual(['undo three', 'undo two', 'undo one']);
  });

  it('keeps undoing after an undo throws, and reports which failed', async () => {
    const order: string[] = [];
    const revert = new Reverter();
    revert.add('first', () => order.push('first'));
    revert.add('broken', () => {
      throw new Error('boom');
    });
    revert.add('last', () => order.push('last'));
    const errors = await revert.fail();
    expect(order).toEqual(['last', 'first']);
    expect(errors).toHaveLength(1);
    expect(errors[0].label).toBe('broken');
    expect((errors[0].error as Error).message).toBe('boom');
  });

  it('forgets the undos after success and after fail', async () => {
    const undo = jest.fn();
    const revert = new Reverter();
    revert.add('x', undo);
    revert.success();
    await revert.fail();
    expect(undo).not.toHaveBeenCalled();

    revert.add('y', undo);
    await revert.fail();
    await revert.fail();
    expect(undo).toHaveBeenCalledTimes(1);
  });
});

describe('withReverter', () => {
  it('returns the result and runs no undo on success', async () => {
    const undo = jest.fn();
    const result = await withReverter(async (revert) => {
      revert.add('step', undo);
      return 42;
    });
    expect(result).toBe(42);
    expect(undo).not.toHaveBeenCalled();
  });

  it('undoes the steps done so far and rethrows the original error', async () => {
    const undone: string[] = [];
    const failure = withReverter(async (revert) => {
      revert.add('a', () => undone.push('a'));
      revert.add('b', () => undone.push('b'));
      throw new Error('step c failed');
    });
    await expect(failure).rejects.toThrow('step c failed');
    expect(undone).toEqual(['b', 'a']);
  });

  it('attaches undo errors to the original error', async () => {
    const failure = withReverter(async (revert) => {
      revert.add('bad undo', () => {
        throw new Error('undo failed');
      });
      throw new Error('original');
    });
    await expect(failure).rejects.toMatchObject({
      message: 'original',
      revertErrors: [expect.objectContaining({ label: 'bad undo' })],
    });
  });
});
