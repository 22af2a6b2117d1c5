/**
 * A rollback stack for multi-step operations (incus's `revert.Reverter`): after each step succeeds, push the
 * undo of that step; if a later step fails, `fail()` runs every undo, newest first, so the operation leaves
 * nothing behind. `success()` forgets the undos once the whole operation is done.
 */
export type UndoStep = () => unknown;

export class Reverter {
  private steps: { label: string; undo: UndoStep }[] = [];

  /** Registers the undo of a step that just succeeded. */
  add(label: string, undo: UndoStep): void {
    this.steps.push({ label, undo });
  }

  /** The operation succeeded: drop every undo. */
  success(): void {
    this.steps = [];
  }

  /**
   * Runs all undos newest first. An undo that throws does not stop the others (a partial cleanup beats
   * none); their errors are returned, labelled, for logging. The stack is empty afterwards.
   */
  async fail(): Promise<{ label: string; error: unknown }[]> {
    const steps = this.steps.reverse();
    this.steps = [];
    const errors: { label: string; error: unknown }[] = [];
    for (const step of steps) {
      try {
        await step.undo();
      } catch (error) {
        errors.push({ label: step.label, error });
      }
    }
    return errors;
  }
}

/**
 * Runs `operation` with a fresh reverter: on success the undos are dropped, on failure they all run and the
 * operation's own error is rethrown (undo errors are attached as `revertErrors` when the error allows it).
 */
export async function withReverter<T>(operation: (revert: Reverter) => Promise<T>): Promise<T> {
  const revert = new Reverter();
  try {
    const result = await operation(revert);
    revert.success();
    return result;
  } catch (error) {
    const revertErrors = await revert.fail();
    if (revertErrors.length > 0 && error instanceof Error) {
      Object.assign(error, { revertErrors });
    }
    throw error;
  }
}
