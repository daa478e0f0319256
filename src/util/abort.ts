/** Cancellation: long work (convert, restore, reads) takes an AbortSignal and stops with ECANCELED. */
import { OcichunkError } from '../errors.js';

/** Throw ECANCELED if `signal` was aborted (its reason, when it is a message, says why). */
export function throwIfAborted(signal: AbortSignal | undefined, what: string): void {
  if (!signal?.aborted) return;
  const why =
    typeof signal.reason === 'string'
      ? signal.reason
      : signal.reason instanceof Error && signal.reason.name !== 'AbortError'
        ? signal.reason.message
        : 'canceled';
  throw new OcichunkError('ECANCELED', `${what}: ${why}`, { cause: signal.reason });
}
