/**
 * Safe path handling inside a target root: parents are resolved like a chroot would (symlinks followed
 * within the root, never above it), so no entry can write outside the root.
 */
import fsp from 'node:fs/promises';
import path from 'node:path';
import { OcichunkError } from '../errors.js';

const MAX_LINKS = 40;

export class RootFs {
  private dirCache = new Map<string, string>();
  constructor(readonly root: string) {}

  invalidate(): void {
    this.dirCache.clear();
  }

  /** Host path of `rel`'s parent directory (created if missing), symlinks resolved inside the root. */
  async parent(rel: string, what: string): Promise<string> {
    const slash = rel.lastIndexOf('/');
    const dir = slash === -1 ? '' : rel.slice(0, slash);
    if (dir === '') return this.root;
    const cached = this.dirCache.get(dir);
    if (cached) return cached;
    const host = await this.resolveDir(dir, what);
    this.dirCache.set(dir, host);
    return host;
  }

  async hostPath(rel: string, what: string): Promise<string> {
    if (rel === '.') return this.root;
    const leaf = rel.slice(rel.lastIndexOf('/') + 1);
    return path.join(await this.parent(rel, what), leaf);
  }

  private async resolveDir(dir: string, what: string): Promise<string> {
    const todo = dir.split('/');
    const done: string[] = [];
    let links = 0;
    while (todo.length) {
      const comp = todo.shift()!;
      if (comp === '' || comp === '.') continue;
      if (comp === '..') {
        if (!done.length) throw new OcichunkError('EUNSAFE', `${what}: path leads outside the root`);
        done.pop();
        continue;
      }
      const p = path.join(this.root, ...done, comp);
      let st;
      try {
        st = await fsp.lstat(p);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
        await fsp.mkdir(p, { mode: 0o755 });
        await fsp.chmod(p, 0o755);
        done.push(comp);
        continue;
      }
      if (st.isDirectory()) {
        done.push(comp);
      } else if (st.isSymbolicLink()) {
        if (++links > MAX_LINKS) throw new OcichunkError('EUNSAFE', `${what}: too many levels of symbolic links`);
        const target = await fsp.readlink(p);
        const parts = target.split('/');
        let depth = target.startsWith('/') ? 0 : done.length;
        for (const c of parts) {
          if (c === '..') {
            if (depth === 0) {
              throw new OcichunkError('EUNSAFE', `${what}: symlink ${[...done, comp].join('/')} -> ${target} points outside the root`);
            }
            depth--;
          } else if (c !== '' && c !== '.') depth++;
        }
        if (target.startsWith('/')) done.length = 0;
        todo.unshift(...parts);
      } else {
        throw new OcichunkError('ECORRUPT', `${what}: ${[...done, comp].join('/')} is not a directory`);
      }
    }
    return path.join(this.root, ...done);
  }
}
