/** Tar layers made by Python's tarfile (a real tar writer) from a list of members, for synthetic and hostile images. */
import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { must } from './run.js';

export type Kind = 'file' | 'dir' | 'symlink' | 'hardlink' | 'char' | 'block' | 'fifo';
/** [name, kind, data (file) or target (links)], with options: mode, owner, mtime, `zeros` (a file of that many zero bytes, streamed), `from` (a host file's bytes), device numbers, xattrs (PAX SCHILY.xattr records) */
export type Member =
  | [string, Kind, string?]
  | [
      string,
      Kind,
      string | null,
      {
        mode?: number;
        uid?: number;
        gid?: number;
        mtime?: number;
        zeros?: number;
        from?: string;
        major?: number;
        minor?: number;
        xattrs?: Record<string, string>;
      },
    ];

const PY_TAR = `import tarfile,io,json,sys
class Zeros(io.RawIOBase):
    def __init__(self,n): self.n=n
    def readable(self): return True
    def readinto(self,b):
        k=min(len(b),self.n); b[:k]=bytes(k); self.n-=k; return k
ms=json.load(sys.stdin)
out=tarfile.open(fileobj=sys.stdout.buffer,mode='w|',format=tarfile.PAX_FORMAT) if sys.argv[1]=='-' else tarfile.open(sys.argv[1],'w',format=tarfile.PAX_FORMAT)
with out as t:
    for name,kind,arg,o in ms:
        ti=tarfile.TarInfo(name); ti.mode=o.get('mode',0o755 if kind=='dir' else 0o644)
        ti.uid=o.get('uid',0); ti.gid=o.get('gid',0); ti.mtime=o.get('mtime',1700000000)
        for k,v in o.get('xattrs',{}).items(): ti.pax_headers['SCHILY.xattr.'+k]=v
        if kind=='file':
            if 'zeros' in o:
                ti.size=o['zeros']; t.addfile(ti,io.BufferedReader(Zeros(o['zeros']),1<<20))
            elif 'from' in o:
                data=open(o['from'],'rb').read(); ti.size=len(data); t.addfile(ti,io.BytesIO(data))
            else:
                data=(arg or '').encode(); ti.size=len(data); t.addfile(ti,io.BytesIO(data))
        elif kind=='dir':
            ti.type=tarfile.DIRTYPE; t.addfile(ti)
        elif kind=='symlink':
            ti.type=tarfile.SYMTYPE; ti.linkname=arg; t.addfile(ti)
        elif kind in ('char','block'):
            ti.type=tarfile.CHRTYPE if kind=='char' else tarfile.BLKTYPE; ti.devmajor=o.get('major',1); ti.devminor=o.get('minor',3); t.addfile(ti)
        elif kind=='fifo':
            ti.type=tarfile.FIFOTYPE; t.addfile(ti)
        else:
            ti.type=tarfile.LNKTYPE; ti.linkname=arg; t.addfile(ti)`;

const membersJson = (members: Member[]) => JSON.stringify(members.map((m) => [m[0], m[1], m[2] ?? null, m[3] ?? {}]));

/**
 * Write a small tar to `out` (PAX format) and return its path. Synchronous, for the few members a
 * unit test writes; a big tar goes through pyTarZstdAsync (a worker blocked for 60 s fails the run).
 */
export function pyTarFile(out: string, members: Member[]): string {
  const r = spawnSync('python3', ['-c', PY_TAR, out], { input: membersJson(members), encoding: 'utf8' });
  if (r.error) throw r.error;
  if (r.status !== 0) throw new Error(`python3 tarfile exited ${r.status}\n${r.stderr}`);
  return out;
}

/**
 * Write a tar of any size through `zstd -1` to `out` (a zstd layer): a tar of gigabytes of zeros
 * becomes a small blob, never written or hashed whole on this disk.
 */
export async function pyTarZstdAsync(out: string, members: Member[]): Promise<string> {
  await must('bash', ['-c', 'set -o pipefail; python3 -c "$0" - | zstd -q -1 -T0 > "$1"', PY_TAR, out], { input: membersJson(members) });
  return out;
}

/** The tar as bytes (small layers). */
export function pyTar(work: string, members: Member[]): Buffer {
  const out = pyTarFile(path.join(work, `tar-${Math.random().toString(36).slice(2)}.tar`), members);
  const b = fs.readFileSync(out);
  fs.rmSync(out);
  return b;
}
