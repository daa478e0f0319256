#!/usr/bin/env python3
"""What a lazy reader learns from a Nydus (RAFS v6) bootstrap, for benchmarks/peers.sh.

    nydus.py index NYDUS_IMAGE BOOTSTRAP        JSON on stdout: the blobs, and per regular file of
                                                the (merged) tree its chunks: offset and size in
                                                the file, blob index and compressed range
    nydus.py extract INDEX BLOB_DIR PATH        a file's bytes, decompressed from the compressed
                                                ranges the index gives its chunks (zstd frames, or
                                                stored as is when compression did not help)

Both read `nydus-image check --verbose` (every inode and its chunks, as nydus-image itself
decodes the bootstrap) and `nydus-image inspect -R blobs` (the blob table).
"""
import json
import os
import re
import subprocess
import sys

INODE = re.compile(r'^inode: (\w*) "(.*)": index \d+ ino (\d+) real_ino (\d+) .* i_size (\d+) ')
CHUNK = re.compile(r'^\s+chunk: id \w+, index \d+, blob_index (\d+), file_offset (\d+), compressed (\d+)/(\d+), uncompressed (\d+)/(\d+)')


def index(nydus_image, boot):
    out = subprocess.run([nydus_image, 'check', '--verbose', '-l', 'error', boot], check=True, capture_output=True, text=True).stdout
    blobs = json.loads(subprocess.run([nydus_image, 'inspect', '-l', 'error', '-R', 'blobs', boot], check=True, capture_output=True, text=True).stdout)
    files, by_ino, cur = [], {}, None
    for line in out.splitlines():
        m = INODE.match(line)
        if m:
            kind, path, _, real_ino, size = m.groups()
            cur = None
            if kind in ('file', 'hardlink'):
                cur = {'path': path, 'size': int(size), 'chunks': [], 'ino': real_ino}
                files.append(cur)
            continue
        m = CHUNK.match(line)
        if m and cur is not None:
            blob, foff, coff, csize, _, usize = map(int, m.groups())
            cur['chunks'].append({'offset': foff, 'size': usize, 'blob': blob, 'compOffset': coff, 'compEnd': coff + csize})
    # a hard link's other names may be listed without chunks: they share the inode's
    for f in files:
        if f['chunks']:
            by_ino.setdefault(f['ino'], f['chunks'])
    for f in files:
        if not f['chunks'] and f['size']:
            f['chunks'] = by_ino.get(f['ino'], [])
        del f['ino']
    return {'blobs': [b['blob_id'] for b in blobs], 'blobBytes': [b['compressed_size'] for b in blobs], 'files': files}


def extract(index_file, blob_dir, path):
    idx = json.load(open(index_file))
    f = next(f for f in idx['files'] if f['path'].strip('/') == path.strip('/'))
    out = sys.stdout.buffer
    for c in sorted(f['chunks'], key=lambda c: c['offset']):
        with open(os.path.join(blob_dir, idx['blobs'][c['blob']]), 'rb') as b:
            b.seek(c['compOffset'])
            raw = b.read(c['compEnd'] - c['compOffset'])
        if len(raw) == c['size']:
            data = raw  # stored uncompressed
        else:
            data = subprocess.run(['zstd', '-dcq'], input=raw, check=True, capture_output=True).stdout
        out.write(data[: c['size']])


def main():
    a = sys.argv[1:]
    if len(a) == 3 and a[0] == 'index':
        json.dump(index(a[1], a[2]), sys.stdout)
    elif len(a) == 4 and a[0] == 'extract':
        extract(a[1], a[2], a[3])
    else:
        sys.exit('usage: nydus.py index NYDUS_IMAGE BOOTSTRAP | extract INDEX BLOB_DIR PATH')


if __name__ == '__main__':
    main()
