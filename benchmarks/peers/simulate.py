#!/usr/bin/env python3
"""Cold lazy start of a read trace, simulated from each format's own index (benchmarks/peers.sh).

    simulate.py FORMAT DIR TRACE        prints JSON

FORMAT and DIR:
  ocichunk     an OCI layout holding one converted image (its chunked manifest and TOC; for a
               version 2 TOC the digest table sections of the chunks of every frame fetched are
               fetched too, adjacent ones in one range, and the dictionary of every frame that
               was compressed with one, once)
  chunks       DIR/N.json for layer N, as `estargz index` (eStargz, zstd:chunked) prints them,
               or one DIR/0.json for the merged tree, as `nydus.py index` prints it for a merged
               Nydus bootstrap: per regular file its chunks with the compressed range
               [compOffset, compEnd) a reader fetches (in the blob of the chunk's `blob` index, or
               of its layer); DIR/toc.json: {"tocBytes", "tocRequests"}
  soci         DIR/N.json for layer N, as `soci index` prints it: files at uncompressed offsets of
               the gzip layer, spans with their compressed ranges

TRACE: `ocichunk mount --record-trace` lines (path, offset, length of the merged tree; the reads
made through the mount, merged per path, paths in the order first read).

Model, the same for every format: a cold reader with an empty cache fetches the index first (the
TOC, bootstrap or zTOCs: `tocBytes`, `tocRequests`), then serves the trace's reads in order; each
read needs the format's fetch units that cover its bytes (ocichunk: zstd frames; eStargz and
zstd:chunked: the compressed stream of each chunk up to the next one's offset; Nydus: compressed
chunks; SOCI: spans), skips units fetched before (kept, as every reader caches them), and fetches
the rest in one batch in which units that touch or overlap in the same blob are one range request.
No read-ahead, no gap filling, no prefetch.
"""
import bisect
import json
import os
import subprocess
import sys


def norm(p):
    return '/'.join(c for c in p.split('/') if c not in ('', '.'))


def read_trace(path):
    reads = []
    for line in open(path):
        if not line.strip() or line.startswith('#'):
            continue
        p, off, length = line.rstrip('\n').split('\t')
        reads.append((norm(p), int(off), int(length)))
    return reads


class Ocichunk:
    """Units: frames (pack, compressed offset, compressed length) of the chunks a read covers."""

    def __init__(self, layout):
        blob = lambda d: os.path.join(layout, 'blobs', 'sha256', d.split(':')[1])
        idx = json.load(open(os.path.join(layout, 'index.json')))
        top = json.load(open(blob(idx['manifests'][0]['digest'])))
        chunked = [m for m in top.get('manifests', []) if m.get('artifactType') == 'application/vnd.ocichunk.image.v1']
        man = json.load(open(blob(chunked[0]['digest'])))
        toc_desc = man['layers'][0]
        self.toc_bytes = toc_desc['size']
        self.toc_requests = 1
        toc = json.loads(subprocess.run(['zstd', '-dcq', blob(toc_desc['digest'])], check=True, capture_output=True).stdout)
        self.frames = toc['frames']
        # a frame compressed with a dictionary needs the dictionary's frame too (once)
        self.dicts = toc.get('dicts', [])
        # rows [frame, offset, length] (version 2) or [hex, frame, offset, length] (version 1)
        self.chunks = [c[-3:] for c in toc['chunks']]
        self.layers = [{norm(e['path']): e for e in l['entries']} for l in toc['layers']]
        # version 2: a chunk is checked against its digest table section, fetched with its frame;
        # the frames' other chunks come along (a reader caches them), so their sections do too
        self.section = toc['digests']['section'] if 'digests' in toc else 0
        self.by_frame = {}
        for i, (frame, _, _) in enumerate(self.chunks):
            self.by_frame.setdefault(frame, []).append(i)

    def sections(self, frame):
        n, s = len(self.chunks), self.section
        out = []
        for sec in sorted(set(c // s for c in self.by_frame[frame])):
            out.append(('digests', sec * s * 32, min(n, (sec + 1) * s) * 32))
        return out

    def entry(self, path, below=None):
        for li in reversed(range(len(self.layers) if below is None else below + 1)):
            e = self.layers[li].get(path)
            if e is None:
                continue
            if e['type'] == 'hardlink':
                return self.entry(norm(e['link']), li)
            if e['type'] in ('whiteout',):
                return None
            return e
        return None

    def units(self, path, off, length):
        e = self.entry(path)
        if not e or e['type'] != 'reg':
            return None
        out, pos = [], 0
        for ci in e['chunks']:
            frame, _, clen = self.chunks[ci]
            if pos < off + length and pos + clen > off:
                pack, coff, csize = self.frames[frame][:3]
                out.append((pack, coff, coff + csize))
                if len(self.frames[frame]) > 4:
                    dpack, doff, dsize, _ = self.dicts[self.frames[frame][4]]
                    out.append((dpack, doff, doff + dsize))
                if self.section:
                    out.extend(self.sections(frame))
            pos += clen
        return out, e['size']


class Chunks:
    """Units: the compressed range of each chunk a read covers, from per-layer indexes."""

    def __init__(self, d):
        n = 0
        self.layers = []
        while os.path.exists(os.path.join(d, f'{n}.json')):
            self.layers.append({norm(f['path']): f for f in json.load(open(os.path.join(d, f'{n}.json')))['files']})
            n += 1
        t = json.load(open(os.path.join(d, 'toc.json')))
        self.toc_bytes, self.toc_requests = t['tocBytes'], t['tocRequests']

    def units(self, path, off, length):
        for li in reversed(range(len(self.layers))):
            f = self.layers[li].get(path)
            if f is None:
                continue
            return [(c.get('blob', li), c['compOffset'], c['compEnd']) for c in f['chunks'] if c['offset'] < off + length and c['offset'] + c['size'] > off], f['size']
        return None


class Soci:
    """Units: the spans of the gzip layer that cover a read (with the checkpoint of each in the zTOC)."""

    def __init__(self, d):
        n = 0
        self.layers = []
        self.toc_bytes = 0
        while os.path.exists(os.path.join(d, f'{n}.json')):
            z = json.load(open(os.path.join(d, f'{n}.json')))
            z['byName'] = {norm(f['path']): f for f in z['files']}
            self.layers.append(z)
            self.toc_bytes += z['ztocBytes']
            n += 1
        self.toc_requests = len(self.layers)

    def file(self, li, path, depth=0):
        f = self.layers[li]['byName'].get(path)
        if f and f['type'] == 'hardlink' and depth < 40:
            return self.file(li, norm(f['link']), depth + 1)
        return f

    def units(self, path, off, length):
        for li in reversed(range(len(self.layers))):
            f = self.file(li, path)
            if f is None:
                continue
            if f['type'] != 'reg':
                return None
            z = self.layers[li]
            end = min(f['size'], off + length)
            if end <= off:
                return [], f['size']
            ustart = z['spanUncompressedStart']
            first = bisect.bisect_right(ustart, f['offset'] + off) - 1
            last = bisect.bisect_right(ustart, f['offset'] + end - 1) - 1
            return [(li, z['spanCompressedStart'][s], z['spanCompressedEnd'][s]) for s in range(first, last + 1)], f['size']
        return None


def simulate(fmt, reads):
    fetched = set()
    data_bytes = requests = units_fetched = read_bytes = missing = 0
    for path, off, length in reads:
        found = fmt.units(path, off, length)
        if found is None:
            missing += 1
            continue
        us, size = found
        read_bytes += max(0, min(size, off + length) - off)
        new = sorted(set(u for u in us if u not in fetched), key=lambda u: (str(u[0]), u[1], u[2]))
        fetched.update(new)
        units_fetched += len(new)
        # one batch: ranges of the same blob that touch or overlap are one request
        cur = None
        for blob, s, e in new:
            if cur and cur[0] == blob and s <= cur[2]:
                cur[2] = max(cur[2], e)
                continue
            if cur:
                data_bytes += cur[2] - cur[1]
                requests += 1
            cur = [blob, s, e]
        if cur:
            data_bytes += cur[2] - cur[1]
            requests += 1
    return {
        'tocBytes': fmt.toc_bytes,
        'tocRequests': fmt.toc_requests,
        'dataBytes': data_bytes,
        'dataRequests': requests,
        'fetchedBytes': fmt.toc_bytes + data_bytes,
        'requests': fmt.toc_requests + requests,
        'unitsFetched': units_fetched,
        'reads': len(reads),
        'readBytes': read_bytes,
        'readsNotFound': missing,
    }


def main():
    if len(sys.argv) != 4:
        sys.exit('usage: simulate.py ocichunk|chunks|soci DIR TRACE')
    kind, d, trace = sys.argv[1:]
    fmt = {'ocichunk': Ocichunk, 'chunks': Chunks, 'soci': Soci}[kind](d)
    print(json.dumps(simulate(fmt, read_trace(trace))))


if __name__ == '__main__':
    main()
