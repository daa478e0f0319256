/**
 * Errors with a stable `code`. Library code throws these; only the CLI maps codes to exit codes.
 */
export type ErrorCode =
  | 'EUSAGE' // bad arguments or references
  | 'ENOTFOUND' // image, tag, blob or platform not found
  | 'EUNSUPPORTED' // unknown media type, entry type, transport
  | 'ECORRUPT' // corrupt/truncated compressed data or tar, bad JSON
  | 'EDIGEST' // content does not match its digest or size
  | 'EUNSAFE' // paths escaping the root, hostile entries
  | 'EIO' // filesystem errors
  | 'ENETWORK' // a registry could not be reached, or kept failing after retries
  | 'EAUTH' // a registry refused our credentials or denied access
  | 'ELOCKED' // a layout is locked by another process (or busy with writers, for gc) past the timeout
  | 'ECANCELED' // the caller aborted the work (AbortSignal; SIGINT/SIGTERM in the CLI)
  | 'EEXIST' // the object to create exists already (a snapshot key)
  | 'EPRECONDITION' // the object's state forbids the operation (removing a snapshot with children)
  | 'EINTERNAL';

export class OcichunkError extends Error {
  readonly code: ErrorCode;
  /** Further findings, one line each (verify lists every violation of a TOC here); the CLI prints them. */
  readonly details?: string[];
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown; details?: string[] }) {
    super(message, options);
    this.code = code;
    this.name = 'OcichunkError';
    if (options?.details?.length) this.details = options.details;
  }
}

export function isOcichunkError(e: unknown): e is OcichunkError {
  return e instanceof OcichunkError;
}

/**
 * An error thrown by the native core (crates/napi `err`): `code` is the core's stable code
 * (`ocichunk_core::Code`), `message` the bare message; errors of the OS also carry the Rust
 * `std::io::ErrorKind` and the (positive) errno.
 */
export interface NativeError extends Error {
  origin: 'ocichunk-core';
  code: string;
  ioKind?: string;
  errno?: number;
}

export function isNativeError(e: unknown): e is NativeError {
  return e instanceof Error && (e as Partial<NativeError>).origin === 'ocichunk-core' && typeof (e as Partial<NativeError>).code === 'string';
}

/** What each code of the native core becomes (a bad argument to the core is a usage error). */
export const NATIVE_CODES: Readonly<Record<string, ErrorCode>> = {
  EINVAL: 'EUSAGE',
  ECORRUPT: 'ECORRUPT',
  EIO: 'EIO',
  ENOTFOUND: 'ENOTFOUND',
  EUNSAFE: 'EUNSAFE',
  EUNSUPPORTED: 'EUNSUPPORTED',
};

/** Wrap any error with context (blob, entry, path) keeping a stable code. */
export function withContext(e: unknown, context: string, fallback: ErrorCode = 'EIO'): OcichunkError {
  if (e instanceof OcichunkError) {
    if (e.message.includes(context)) return e; // already says where
    return new OcichunkError(e.code, `${context}: ${e.message}`, { cause: e.cause ?? e });
  }
  const err = e as NodeJS.ErrnoException;
  let code: ErrorCode = fallback;
  // a code the core has and this table lacks is a binding out of step with this code: internal
  if (isNativeError(e)) code = Object.hasOwn(NATIVE_CODES, e.code) ? NATIVE_CODES[e.code] : 'EINTERNAL';
  else if (err?.code === 'ENOENT') code = fallback === 'EIO' ? 'ENOTFOUND' : fallback;
  else if (err?.code === 'Z_DATA_ERROR' || err?.code === 'Z_BUF_ERROR') code = 'ECORRUPT';
  return new OcichunkError(code, `${context}: ${err?.message ?? String(e)}`, { cause: e });
}

export const EXIT_CODES: Record<ErrorCode, number> = {
  EUSAGE: 2,
  ENOTFOUND: 3,
  EUNSUPPORTED: 4,
  ECORRUPT: 5,
  EDIGEST: 6,
  EUNSAFE: 7,
  EIO: 8,
  ENETWORK: 9,
  EAUTH: 10,
  ELOCKED: 11,
  ECANCELED: 130,
  EEXIST: 12,
  EPRECONDITION: 13,
  EINTERNAL: 1,
};
