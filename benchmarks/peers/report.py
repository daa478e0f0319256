#!/usr/bin/env python3
"""Tables and results.json of benchmarks/peers.sh from what it left in OUT.

    report.py OUT PEERS_CACHE IMAGE... -- CORPUS_LAYERS NYDUS_VERSION CORPUS_IMAGES
"""
import glob
import json
import os
import platform
import re
import subprocess
import sys

out, peers = sys.argv[1], sys.argv[2]
sep = sys.argv.index('--')
images = sys.argv[3:sep]
corpus_layers = sys.argv[sep + 1].split('\n')
nydus_version = sys.argv[sep + 2]
corpus_images = int(sys.argv[sep + 3])
here = os.path.dirname(os.path.abspath(__file__))
TOOLS = ['ocichunk', 'estargz', 'zstdchunked', 'soci', 'nydus']
NAMES = {'ocichunk': 'ocichunk', 'estargz': 'eStargz', 'zstdchunked': 'zstd:chunked', 'soci': 'SOCI', 'nydus': 'Nydus (RAFS v6)'}
LAZY_PEERS = ['estargz', 'zstdchunked', 'nydus']  # the targets' "least of eStargz, zstd:chunked and Nydus"
MiB, KiB = 2**20, 2**10


def size(p):
    return os.path.getsize(p)


def timing(name):
    wall, user, sys_, rss = open(os.path.join(out, 'time', name)).read().split()[-4:]
    return {'wall': float(wall), 'cpu': float(user) + float(sys_), 'peakRssKiB': int(rss)}


def stored(tool, img):
    """Bytes the format's blobs take (what serving it needs), and its TOC/index bytes."""
    d = os.path.join(out, tool, img)
    if tool == 'ocichunk':
        rs = [json.loads(l) for l in open(d + '.jsonl')]
        # the digest table (format 2: 32 B a chunk) is stored too; a lazy reader fetches it by
        # sections with the chunks, not before them, so the TOC/index column is the TOC alone
        return sum(r['bytesStored'] + r['tocBytes'] + r.get('digestTableBytes', 0) for r in rs), sum(r['tocBytes'] for r in rs)
    if tool in ('estargz', 'zstdchunked'):
        blobs = sorted(glob.glob(d + '/*.blob'))
        tocs = json.load(open(d + '/toc.json'))['tocBytes'] if os.path.exists(d + '/toc.json') else None
        return sum(map(size, blobs)), tocs
    if tool == 'soci':
        ztocs = sorted(glob.glob(d + '/*.ztoc'))
        layers = src_layers[img]
        return sum(map(size, ztocs)) + sum(map(size, layers)), sum(map(size, ztocs))
    if tool == 'nydus':
        blobs = glob.glob(d + '/blobs/*')
        boots = glob.glob(d + '/merged*.boot')
        gz = sum(len(subprocess.run(['gzip', '-6', '-c', b], check=True, capture_output=True).stdout) for b in boots)
        return sum(map(size, blobs)) + gz, gz


def image_layers(img):
    layout = os.path.join(os.environ.get('OCICHUNK_IMAGE_CACHE', os.path.expanduser('~/.cache/ocichunk/images')), 'layouts', img)
    b = lambda dg: os.path.join(layout, 'blobs', 'sha256', dg.split(':')[1])
    top = json.load(open(b(json.load(open(os.path.join(layout, 'index.json')))['manifests'][0]['digest'])))
    m = json.load(open(b(top['manifests'][0]['digest']))) if 'manifests' in top else top
    return [b(x['digest']) for x in m['layers']]


src_layers = {img: image_layers(img) for img in images}
src_layers['corpus'] = corpus_layers

res = {'machine': {}, 'versions': {}, 'images': {}, 'corpus': {}, 'traces': {}}
cpu = next((l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name')), '?')
mem = next((int(l.split()[1]) for l in open('/proc/meminfo') if l.startswith('MemTotal')), 0)
res['machine'] = {'nproc': os.cpu_count(), 'cpu': cpu, 'memGiB': round(mem / 2**20), 'kernel': platform.release(),
                  'node': subprocess.run(['node', '--version'], capture_output=True, text=True).stdout.strip(),
                  'loadavgAtStart': open(os.path.join(out, 'loadavg-start')).read().strip(), 'loadavgAtEnd': ' '.join(open('/proc/loadavg').read().split()[:3])}
gomod = open(os.path.join(here, 'go.mod')).read()
for mod in ('github.com/containerd/stargz-snapshotter/estargz', 'github.com/awslabs/soci-snapshotter', 'github.com/klauspost/compress'):
    m = re.search(re.escape(mod) + r' (v\S+)', gomod)
    res['versions'][mod] = m.group(1) if m else None
res['versions']['nydus-rs (nydus-image)'] = nydus_version
res['versions']['go'] = subprocess.run(['go', 'version'], capture_output=True, text=True).stdout.strip()

for img in images + ['corpus']:
    row = {}
    for t in TOOLS:
        st, toc = stored(t, img)
        row[t] = {**timing(f'{t}-{img}'), 'stored': st, 'toc': toc}
    row['sourceGzipLayers'] = sum(map(size, src_layers[img]))
    (res['corpus'] if img == 'corpus' else res['images'].setdefault(img, {})).update(row)
res['corpus']['registryGzip6'] = sum(int(x) for x in open(os.path.join(out, 'registry-gzip6')).read().split())

for line in open(os.path.join(out, 'traces.tsv')):
    name, img, cmd = line.rstrip('\n').split('\t')
    d = os.path.join(out, 'sim', name)
    tr = {'image': img, 'command': cmd}
    for t in TOOLS:
        tr[t] = json.load(open(os.path.join(d, t + '.json')))
    replay = json.load(open(os.path.join(d, 'ocichunk-replay.json')))['trace']
    mount = json.load(open(os.path.join(out, f'mount-{name}.json')))
    checks = [l.rstrip('\n').split('\t') for l in open(os.path.join(d, 'checks.tsv'))]
    tr['validation'] = {
        'ocichunkSimulatedData': tr['ocichunk']['dataBytes'],
        'ocichunkReaderReplay': replay['fetched'],
        'ocichunkMountFetched': mount['packBytesFetched'],
        'ocichunkMountFileBytesServed': mount['fileBytesServed'],
        'ocichunkMountTocBytes': mount['tocBytes'],
        'peerFilesChecked': len(checks),
        'peerFilesOk': sum(1 for c in checks if c[2] == 'ok'),
        'peerFileFailures': [c for c in checks if c[2] != 'ok'],
    }
    res['traces'][name] = tr

json.dump(res, open(os.path.join(out, 'results.json'), 'w'), indent=1)

mb = lambda b: f'{b / MiB:.1f} MiB'
kb = lambda b: f'{b / KiB:.0f} KiB'
m = res['machine']
print(f"Machine: {m['nproc']} CPUs ({m['cpu']}), {m['memGiB']} GiB, Linux {m['kernel']}, Node {m['node']}; "
      f"estargz {res['versions']['github.com/containerd/stargz-snapshotter/estargz']}, soci-snapshotter {res['versions']['github.com/awslabs/soci-snapshotter']}, "
      f"nydus-image (nydus-rs) {nydus_version}, {res['versions']['go'].replace('go version ', '')}; load average {m['loadavgAtStart']} at the start, {m['loadavgAtEnd']} at the end\n")

print('### Convert: one image\n')
hdr = '| tool |' + ''.join(f' {i}: stored | {i}: TOC/index |' for i in images) + f' {images[-1]}: convert wall | CPU | peak RSS |'
print(hdr)
print('|' + '---|' * (hdr.count('|') - 1))
for t in TOOLS:
    cells = []
    for i in images:
        r = res['images'][i][t]
        cells += [mb(r['stored']), kb(r['toc'])]
    r = res['images'][images[-1]][t]
    cells += [f"{r['wall']:.1f} s", f"{r['cpu']:.1f} s", f"{r['peakRssKiB'] / KiB:.0f} MiB"]
    print(f'| {NAMES[t]} | ' + ' | '.join(cells) + ' |')
print('| gzip layers as built | ' + ' | '.join(sum(([mb(res['images'][i]['sourceGzipLayers']), ''] for i in images), []) + ['', '', '']) + ' |')
print()
print('Convert wall / CPU / peak RSS per image: ' + '; '.join(
    f"{i}: " + ', '.join(f"{NAMES[t]} {res['images'][i][t]['wall']:.1f}/{res['images'][i][t]['cpu']:.1f} s {res['images'][i][t]['peakRssKiB'] / KiB:.0f} MiB" for t in TOOLS)
    for i in images))
print()

c = res['corpus']
print(f"### Convert: the corpus ({len(corpus_layers)} unique layers of {corpus_images} images; registry: gzip -6 of them {mb(c['registryGzip6'])}, as built {mb(c['sourceGzipLayers'])})\n")
print('| tool | stored | vs registry (gzip -6) | TOC/index | convert wall | CPU | peak RSS |')
print('|---|---|---|---|---|---|---|')
for t in TOOLS:
    r = c[t]
    print(f"| {NAMES[t]} | {mb(r['stored'])} | {r['stored'] / c['registryGzip6']:.3f}x | {'' if r['toc'] is None else kb(r['toc'])} | {r['wall']:.1f} s | {r['cpu']:.1f} s | {r['peakRssKiB'] / KiB:.0f} MiB |")
print()

print('### Cold start: bytes fetched (TOC + data) and range requests, simulated from each index\n')
print('| trace (image) | read | ' + ' | '.join(NAMES[t] for t in TOOLS) + ' | ocichunk vs least of eStargz, zstd:chunked, Nydus |')
print('|---|---|' + '---|' * len(TOOLS) + '---|')
for name, tr in res['traces'].items():
    best = min(tr[t]['fetchedBytes'] for t in LAZY_PEERS)
    cells = [f"{mb(tr[t]['fetchedBytes'])} ({tr[t]['requests']})" for t in TOOLS]
    print(f"| {name} ({tr['image']}) | {mb(tr['ocichunk']['readBytes'])} | " + ' | '.join(cells) + f" | {tr['ocichunk']['fetchedBytes'] / best:.2f}x |")
print('\nTOC/index part of the fetch: ' + '; '.join(
    f"{name}: " + ', '.join(f"{NAMES[t]} {kb(tr[t]['tocBytes'])}" for t in TOOLS) for name, tr in res['traces'].items()))
print('\nCommands: ' + '; '.join(f"{name}: `{tr['command']}`" for name, tr in res['traces'].items()))
print()

print('### Validation\n')
print('| trace | ocichunk simulated (data) | its reader replaying the trace | the mount that recorded it | peer files decompressed from the simulated ranges |')
print('|---|---|---|---|---|')
for name, tr in res['traces'].items():
    v = tr['validation']
    print(f"| {name} | {v['ocichunkSimulatedData']:,} B | {v['ocichunkReaderReplay']:,} B ({v['ocichunkReaderReplay'] / v['ocichunkSimulatedData']:.4f}x) | "
          f"{v['ocichunkMountFetched']:,} B ({v['ocichunkMountFetched'] / v['ocichunkSimulatedData']:.3f}x) | {v['peerFilesOk']}/{v['peerFilesChecked']} equal |")
print(f"\nresults: {os.path.join(out, 'results.json')}")
