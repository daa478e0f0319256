/** The remote layer provider's label parsing and layer lookup (src/snapshotter/remote.ts). */
import { describe, expect, it } from 'vitest';
import { layerIndex, layerLabels, LABELS } from '../../src/snapshotter/remote.js';

const d = (c: string) => `sha256:${c.repeat(64)}`;

describe('layer labels', () => {
  it("reads CRI's labels, then ctr-remote's (stargz), and nothing else", () => {
    expect(layerLabels({ [LABELS.cri.ref]: 'h:5000/py:1', [LABELS.cri.digest]: d('a'), [LABELS.cri.layers]: `${d('a')},${d('b')}` })).toEqual({
      ref: 'h:5000/py:1',
      digest: d('a'),
      layers: [d('a'), d('b')],
    });
    expect(layerLabels({ [LABELS.stargz.ref]: 'h/py:1', [LABELS.stargz.digest]: d('b') })).toEqual({ ref: 'h/py:1', digest: d('b') });
    expect(layerLabels({ 'containerd.io/snapshot.ref': 'x' })).toBeUndefined();
    expect(layerLabels({ [LABELS.cri.ref]: 'h/py:1' })).toBeUndefined();
    expect(layerLabels({ [LABELS.cri.ref]: 'h/py:1', [LABELS.cri.digest]: 'sha256:nothex' })).toBeUndefined();
  });

  it("finds the layer's TOC position, a repeated layer by the layers that follow it", () => {
    expect(layerIndex([d('a'), d('b'), d('c')], d('b'))).toBe(1);
    expect(layerIndex([d('a'), d('b')], d('f'))).toBe(-1);
    // the same (empty) layer twice: the label lists the layers from this one to the last
    const repeated = [d('a'), d('e'), d('b'), d('e'), d('c')];
    expect(layerIndex(repeated, d('e'), [d('e'), d('c')])).toBe(3);
    expect(layerIndex(repeated, d('e'), [d('e'), d('b'), d('e'), d('c')])).toBe(1);
    expect(layerIndex(repeated, d('e'))).toBe(1);
  });
});
