/** Bad input to an engine call, caught before any work is done. */
export class EngineInputError extends RangeError {
  override name = 'EngineInputError';
}

/** A worker died and could not be replaced, or kept dying on the same task. */
export class EngineWorkerError extends Error {
  override name = 'EngineWorkerError';
}

/** The engine was used after close(). */
export class EngineClosedError extends Error {
  override name = 'EngineClosedError';
  constructor() {
    super('the engine is closed');
  }
}
