/**
 * Lifecycles: the bounded-concurrency helper every pool uses, and registry clients that are closed
 * once the last source or sink holding them is.
 */
import { describe, expect, it } from 'vitest';
import { openClients } from '../src/registry/client.js';
import { parseDockerRef, RegistrySink, RegistrySource } from '../src/transports/registry.js';
import { Limiter, mapLimit } from '../src/util/limit.js';

const tick = () => new Promise((r) => setTimeout(r, 2));

describe('Limiter and mapLimit', () => {
  it('run at most n tasks at once, every task once, results in order', async () => {
    let now = 0;
    let most = 0;
    const seen: number[] = [];
    const out = await mapLimit([...Array(50).keys()], 4, async (x) => {
      most = Math.max(most, ++now);
      await tick();
      seen.push(x);
      now--;
      return x * 2;
    });
    expect(out).toEqual([...Array(50).keys()].map((x) => x * 2));
    expect(seen.sort((a, b) => a - b)).toEqual([...Array(50).keys()]);
    expect(most).toBe(4);

    const l = new Limiter(3);
    let peak = 0;
    const runs = [...Array(20).keys()].map((i) =>
      l.run(async () => {
        peak = Math.max(peak, l.active);
        await tick();
        if (i === 7) throw new Error('seven');
        return i;
      }),
    );
    const settled = await Promise.allSettled(runs);
    expect(settled.filter((s) => s.status === 'rejected')).toHaveLength(1);
    expect(peak).toBe(3);
    expect(l.active).toBe(0); // a failing task gives its slot back
    expect(() => new Limiter(0)).toThrow(RangeError);
  });

  it('mapLimit rejects with the first failure and starts nothing after it', async () => {
    const started: number[] = [];
    await expect(
      mapLimit([...Array(30).keys()], 2, async (x) => {
        started.push(x);
        await tick();
        if (x === 3) throw new Error('three');
      }),
    ).rejects.toThrow('three');
    await new Promise((r) => setTimeout(r, 20));
    expect(Math.max(...started)).toBeLessThan(6);
  });
});

describe('registry clients', () => {
  it('are shared by a source and a sink on one registry and closed when the last one closes', async () => {
    const before = openClients();
    const src = new RegistrySource(parseDockerRef('127.0.0.1:1/a:1'));
    const sink = new RegistrySink(parseDockerRef('127.0.0.1:1/b:2'));
    const other = new RegistrySource(parseDockerRef('127.0.0.1:2/a:1'));
    expect(sink.client).toBe(src.client);
    expect(other.client).not.toBe(src.client);
    expect(openClients()).toBe(before + 2);
    const view = sink.asSource(); // reads through the sink's client, holds nothing itself
    await view.close();
    expect(openClients()).toBe(before + 2);
    await src.close();
    await src.close(); // twice: released once
    expect(openClients()).toBe(before + 2);
    await sink.abort();
    expect(openClients()).toBe(before + 1);
    await other.close();
    expect(openClients()).toBe(before);
  });
});
