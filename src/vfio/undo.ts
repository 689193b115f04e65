/**
 * The steps of a multi-step operation, undone in reverse order if a later step fails. An undo
 * step that fails itself does not stop the others; its error is attached to the original one.
 */
export class UndoStack {
  private readonly steps: { what: string; undo: () => void }[] = [];

  push(what: string, undo: () => void): void {
    this.steps.push({ what, undo });
  }

  /** A point to unwind back to (see unwindTo). */
  get mark(): number {
    return this.steps.length;
  }

  /** Undo the steps pushed after `mark`, newest first; returns what failed to undo. */
  unwindTo(mark: number): string[] {
    const failures: string[] = [];
    while (this.steps.length > mark) {
      const step = this.steps.pop()!;
      try {
        step.undo();
      } catch (undoError) {
        failures.push(`${step.what}: ${(undoError as Error).message}`);
      }
    }
    return failures;
  }

  /** Forget the steps: the operation succeeded. */
  commit(): void {
    this.steps.length = 0;
  }

  /** Undo every step, newest first, then rethrow `error` (with failed undos noted on it). */
  unwind(error: unknown): never {
    const failures = this.unwindTo(0);
    if (failures.length && error instanceof Error) {
      Object.defineProperty(error, 'undoFailures', { value: failures, enumerable: true });
      error.message += ` (and undoing failed: ${failures.join('; ')})`;
    }
    throw error;
  }

  /** Runs `body`, unwinding on failure and committing on success. */
  run<T>(body: (undo: UndoStack) => T): T {
    try {
      const result = body(this);
      this.commit();
      return result;
    } catch (error) {
      return this.unwind(error);
    }
  }
}
