/**
 * Bounded concurrency, the one helper every pool uses: registry uploads, range reads of packs,
 * tag listings. At most `n` tasks run at once; the others wait in arrival order.
 */
export class Limiter {
  private running = 0;
  private readonly waiting: Array<() => void> = [];

  constructor(readonly n: number) {
    if (!(n >= 1)) throw new RangeError(`concurrency must be at least 1, not ${n}`);
  }

  /** Run `task` once a slot is free; the slot is given back however it ends. */
  async run<T>(task: () => Promise<T>): Promise<T> {
    if (this.running < this.n) this.running++;
    else await new Promise<void>((resolve) => this.waiting.push(resolve));
    try {
      return await task();
    } finally {
      const next = this.waiting.shift();
      if (next)
        next(); // the slot passes on: `running` stays
      else this.running--;
    }
  }

  /** Tasks running now. */
  get active(): number {
    return this.running;
  }
}

/**
 * `f` over `items` with at most `n` calls in flight; results in the items' order. The first
 * failure rejects the whole (calls already started finish, none start after it).
 */
export async function mapLimit<T, R>(items: readonly T[], n: number, f: (item: T, index: number) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  let failed = false;
  const worker = async () => {
    while (!failed && next < items.length) {
      const i = next++;
      try {
        out[i] = await f(items[i], i);
      } catch (e) {
        failed = true;
        throw e;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(Math.max(1, n), items.length) }, worker));
  return out;
}
