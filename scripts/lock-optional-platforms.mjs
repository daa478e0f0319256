#!/usr/bin/env node
// The package registry reachable here serves only the Linux builds of platform-specific optional
// packages (rollup, esbuild, @napi-rs/*), so `npm install` leaves the others out of
// package-lock.json and `npm ci` then refuses the lock as out of sync. This adds a lock entry for
// every optional dependency that is missing, with the os/cpu/libc its name declares, so `npm ci`
// sees a complete lock and skips those packages on this platform. Run after `npm install`.
import fs from 'node:fs';

const file = new URL('../package-lock.json', import.meta.url);
const lock = JSON.parse(fs.readFileSync(file, 'utf8'));
const pkgs = lock.packages;
const OS = ['android', 'darwin', 'freebsd', 'linux', 'win32', 'openbsd', 'netbsd', 'sunos', 'aix', 'openharmony', 'cygwin'];
/** @type {Record<string, string>} */
const CPU = {
  arm64: 'arm64',
  aarch64: 'arm64',
  x64: 'x64',
  ia32: 'ia32',
  arm: 'arm',
  riscv64: 'riscv64',
  ppc64: 'ppc64',
  ppc64le: 'ppc64',
  s390x: 's390x',
  loong64: 'loong64',
  mips64el: 'mips64el',
  wasm32: 'wasm32',
};
let added = 0;
for (const [where, meta] of Object.entries(pkgs)) {
  for (const [name, range] of Object.entries(meta.optionalDependencies ?? {})) {
    const base = where ? `${where}/node_modules/${name}` : `node_modules/${name}`;
    const top = `node_modules/${name}`;
    if (pkgs[base] || pkgs[top]) continue;
    const parts = (name.split('/').pop() ?? name).split('-');
    /** @type {{ version: string, dev?: boolean, optional: boolean, os?: string[], cpu?: string[], libc?: string[] }} */
    const entry = { version: String(range).replace(/^[~^=]/, ''), dev: meta.dev, optional: true };
    const os = parts.find((p) => OS.includes(p));
    const cpu = parts.map((p) => CPU[p]).find(Boolean);
    if (name.includes('wasm32') || name.includes('wasi')) entry.cpu = ['wasm32'];
    else {
      if (os) entry.os = [os];
      if (cpu) entry.cpu = [cpu];
      if (parts.includes('musl')) entry.libc = ['musl'];
      if (parts.includes('gnu') || parts.includes('gnueabihf')) entry.libc = ['glibc'];
    }
    if (!entry.dev) delete entry.dev;
    pkgs[top] = entry;
    added++;
  }
}
fs.writeFileSync(file, JSON.stringify(lock, null, 2) + '\n');
console.log(`lock-optional-platforms: added ${added} lock entries`);
