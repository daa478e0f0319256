/**
 * `analyze --html`: one self-contained page (no network: data, styles and the drawing code are
 * inline) with three SVG charts drawn at load time — bytes stored per strategy, marginal bytes per
 * image, and the sharing heat map — plus the tables. Each chart marks itself `data-rendered` once
 * drawn, so a headless browser can check it.
 */
import { bytes } from '../format.js';
import type { AnalyzeResult } from './analyze.js';

const esc = (s: string) => s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

const SCRIPT = `
(function () {
  var data = JSON.parse(document.getElementById('data').textContent);
  var NS = 'http://www.w3.org/2000/svg';
  function el(name, attrs, parent) {
    var e = document.createElementNS(NS, name);
    for (var k in attrs) e.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(e);
    return e;
  }
  function fmt(n) {
    var u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'], i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(n >= 100 ? 0 : 1) : n) + ' ' + u[i];
  }
  function text(parent, x, y, s, anchor, size) {
    var t = el('text', { x: x, y: y, 'text-anchor': anchor || 'start', 'font-size': size || 12 }, parent);
    t.textContent = s;
    return t;
  }
  var palette = ['#4e79a7', '#f28e2b', '#59a14f', '#e15759', '#76b7b2', '#edc948', '#b07aa1', '#ff9da7', '#9c755f', '#bab0ac'];

  // 1. bytes stored per strategy (logical shown as a line)
  (function () {
    var box = document.getElementById('chart-stored');
    var s = data.strategies, W = 720, rowH = 28, left = 170, H = s.length * rowH + 40;
    var svg = el('svg', { width: W, height: H, viewBox: '0 0 ' + W + ' ' + H, role: 'img' }, box);
    var max = Math.max.apply(null, s.map(function (x) { return Math.max(x.storedBytes, x.logicalBytes); })) || 1;
    var scale = (W - left - 110) / max;
    s.forEach(function (x, i) {
      var y = 10 + i * rowH;
      text(svg, left - 8, y + 17, x.strategy, 'end');
      el('rect', { x: left, y: y + 4, width: Math.max(1, x.storedBytes * scale), height: rowH - 10, fill: palette[i % palette.length], 'class': 'bar' }, svg);
      text(svg, left + x.storedBytes * scale + 6, y + 17, fmt(x.storedBytes) + '  (' + x.ratioVsLogical.toFixed(2) + 'x)');
    });
    var lx = left + (s.length ? s[0].logicalBytes : 0) * scale;
    el('line', { x1: lx, x2: lx, y1: 4, y2: H - 24, stroke: '#333', 'stroke-dasharray': '4 3' }, svg);
    text(svg, lx, H - 8, 'logical ' + fmt(s.length ? s[0].logicalBytes : 0), 'middle');
    box.setAttribute('data-rendered', 'true');
  })();

  // 2. marginal bytes stored per image, one series per strategy
  (function () {
    var box = document.getElementById('chart-marginal');
    var s = data.strategies, n = data.images.length, W = 720, H = 260, left = 70, bottom = 40;
    var svg = el('svg', { width: W, height: H, viewBox: '0 0 ' + W + ' ' + H, role: 'img' }, box);
    var max = 1;
    s.forEach(function (x) { x.perImage.forEach(function (p) { max = Math.max(max, p.marginalStoredBytes); }); });
    var groupW = (W - left - 10) / Math.max(1, n), barW = Math.max(2, (groupW - 8) / Math.max(1, s.length));
    var scale = (H - bottom - 10) / max;
    for (var i = 0; i < n; i++) {
      s.forEach(function (x, k) {
        var v = x.perImage[i].marginalStoredBytes, h = Math.max(1, v * scale);
        var r = el('rect', { x: left + i * groupW + 4 + k * barW, y: H - bottom - h, width: barW - 1, height: h, fill: palette[k % palette.length], 'class': 'bar' }, svg);
        el('title', {}, r).textContent = data.images[i] + ' / ' + x.strategy + ': ' + fmt(v);
      });
      text(svg, left + i * groupW + groupW / 2, H - bottom + 16, '#' + (i + 1), 'middle');
    }
    text(svg, left - 6, 14, fmt(max), 'end', 11);
    text(svg, left - 6, H - bottom, '0', 'end', 11);
    s.forEach(function (x, k) {
      el('rect', { x: left + k * 130, y: H - 14, width: 10, height: 10, fill: palette[k % palette.length] }, svg);
      text(svg, left + k * 130 + 14, H - 5, x.strategy, 'start', 11);
    });
    box.setAttribute('data-rendered', 'true');
  })();

  // 3. sharing heat map: bytes image (row) shares with image (column)
  (function () {
    var box = document.getElementById('chart-sharing');
    var m = data.sharing.bytes, n = m.length, cell = Math.max(18, Math.min(60, 480 / Math.max(1, n))), left = 60, top = 30;
    var W = left + n * cell + 20, H = top + n * cell + 20;
    var svg = el('svg', { width: W, height: H, viewBox: '0 0 ' + W + ' ' + H, role: 'img' }, box);
    for (var i = 0; i < n; i++) {
      var own = m[i][i] || 1;
      text(svg, left - 6, top + i * cell + cell / 2 + 4, '#' + (i + 1), 'end', 11);
      text(svg, left + i * cell + cell / 2, top - 8, '#' + (i + 1), 'middle', 11);
      for (var j = 0; j < n; j++) {
        var f = i === j ? 1 : m[i][j] / own;
        var c = 'rgb(' + Math.round(255 - 177 * f) + ',' + Math.round(255 - 134 * f) + ',' + Math.round(255 - 88 * f) + ')';
        var r = el('rect', { x: left + j * cell, y: top + i * cell, width: cell - 1, height: cell - 1, fill: c, 'class': 'cell' }, svg);
        el('title', {}, r).textContent = '#' + (i + 1) + ' shares ' + fmt(m[i][j]) + ' with #' + (j + 1) + ' (' + (100 * f).toFixed(1) + '%)';
      }
    }
    box.setAttribute('data-rendered', 'true');
  })();
})();
`;

export function renderHtml(r: AnalyzeResult): string {
  const fmt = bytes;
  const rows = r.strategies
    .map(
      (s) =>
        `<tr><td>${esc(s.strategy)}</td><td>${fmt(s.logicalBytes)}</td><td>${fmt(s.uniqueBytes)}</td><td>${fmt(s.storedBytes)}</td><td>${fmt(s.tocBytes)}</td><td>${s.units}</td><td>${s.ratioVsLogical.toFixed(2)}x</td><td>${s.ratioVsLayer.toFixed(2)}x</td></tr>`,
    )
    .join('\n');
  const images = r.images.map((img, i) => `<li>#${i + 1} ${esc(img)}</li>`).join('\n');
  const dups = r.topDuplicates
    .map((d) => `<tr><td>${esc(d.path)}</td><td>${fmt(d.size)}</td><td>${d.copies}</td><td>${d.images}</td><td>${fmt(d.savedBytes)}</td></tr>`)
    .join('\n');
  // JSON inside <script>: "<" escaped so that no "</script>" can end it early
  const json = JSON.stringify(r).replace(/</g, '\\u003c');
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ocichunk analyze</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1000px}
table{border-collapse:collapse;margin:8px 0 24px}td,th{padding:3px 10px;border-bottom:1px solid #ddd;text-align:right}
td:first-child,th:first-child{text-align:left}h2{margin-top:32px}svg text{fill:#222;font-family:system-ui,sans-serif}
</style></head><body>
<h1>What chunking would save</h1>
<p>${r.images.length} image(s), zstd level ${r.zstdLevel}, measured in ${r.seconds.toFixed(1)} s by <code>ocichunk analyze</code>.</p>
<ol style="list-style:none;padding:0">${images}</ol>
<h2>Bytes stored per strategy</h2>
<div id="chart-stored" class="chart"></div>
<table><tr><th>strategy</th><th>logical</th><th>unique</th><th>stored</th><th>TOC</th><th>units</th><th>vs logical</th><th>vs layer</th></tr>
${rows}</table>
<h2>Marginal bytes stored per image</h2>
<div id="chart-marginal" class="chart"></div>
<h2>Sharing (${esc(r.sharing.strategy)})</h2>
<div id="chart-sharing" class="chart"></div>
<h2>Duplicated files saving most</h2>
<table><tr><th>path</th><th>size</th><th>copies</th><th>images</th><th>saved</th></tr>
${dups}</table>
<script type="application/json" id="data">${json}</script>
<script>${SCRIPT}</script>
</body></html>
`;
}
