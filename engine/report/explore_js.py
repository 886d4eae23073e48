"""The one script of report.html (and of `compare --html`): the leaderboard and the item browser.

It reads its data from inert <script type="application/json"> blocks (the items: gzip + base64,
decoded with DecompressionStream), builds every element with createElement and inserts every
value as textContent, so no text from a response or a judge can become markup. The page's
Content-Security-Policy allows this script by its sha256 hash and nothing else (no network).
"""

from __future__ import annotations

import base64
import hashlib

SCRIPT = r"""
(function () {
'use strict';
const $ = (id) => document.getElementById(id);
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}
function num(v) {
  if (v === null || v === undefined) return '–';
  if (typeof v === 'number') return Number.isInteger(v) ? String(v) : v.toFixed(3);
  return String(v);
}
function json(id) { const n = $(id); return n ? JSON.parse(n.textContent) : null; }

/* ------------------------------------------------------------------ leaderboard */
function boardCell(c, sub, model, key) {
  const tied = !!(c.tied && c.tied.length);
  const td = el('td', 'bcell');
  td.dataset.model = model; td.dataset.key = key;
  td.dataset.rank = c.rank == null ? 'null' : String(c.rank);
  if (c.absent) { td.classList.add('absent'); td.textContent = 'not scored'; return td; }
  td.appendChild(el('b', null, (c.rank == null ? '–' : c.rank) + (tied ? ' ≈' : '')));
  td.appendChild(el('small', null, num(c.value)));
  const tip = [(sub ? 'value ' : 'mean subtask rank ') + num(c.value)];
  if (c.ci) tip.push('interval [' + num(c.ci[0]) + ', ' + num(c.ci[1]) + ']');
  if (tied) tip.push('statistically tied with ' + c.tied.join(', ') + ' (95% intervals overlap)');
  if (sub) {
    const cov = el('span', 'cov', c.scored + '/' + c.planned);
    td.dataset.scored = c.scored; td.dataset.planned = c.planned;
    td.dataset.unparseable = c.unparseable; td.dataset.failed = c.failed;
    td.dataset.refused = c.refused == null ? 'null' : c.refused;
    const extra = [];
    if (c.unparseable) extra.push('u' + c.unparseable);
    if (c.refused) extra.push('r' + c.refused);
    if (c.failed) extra.push('f' + c.failed);
    if (extra.length) cov.textContent += ' ' + extra.join(' ');
    td.appendChild(cov);
    tip.push('scored ' + c.scored + ' of ' + c.planned + ' planned; unparseable ' + c.unparseable +
             (c.refused == null ? '' : '; refused ' + c.refused) + '; failed ' + c.failed);
  }
  if (c.reason) tip.push(c.reason);
  if (sub) {  // a subtask cell opens that model's answers in the item browser
    td.classList.add('link');
    tip.push('click: this model\'s items');
    td.addEventListener('click', () => window.dispatchEvent(new CustomEvent('explore', {detail: {subtask: key, model}})));
  }
  if (tied) td.dataset.tied = c.tied.join(' ');
  td.title = tip.join(' · ');
  return td;
}
function board() {
  const b = json('board-data'), host = $('board');
  if (!b || !host) return;
  let cols = b.models.map((_, i) => i), rows = b.pillars.map((_, i) => i);
  const open = new Set();
  const byRank = (cells) => (i, j) => (cells[i].rank ?? 1e9) - (cells[j].rank ?? 1e9) || i - j;
  function row(r, sub, cls) {
    const tr = el('tr', cls); tr.dataset.key = r.key;
    const th = el('th', 'rowlabel');
    if (!sub) {
      const btn = el('button', 'toggle', (open.has(r.key) ? '▾ ' : '▸ ') + r.key);
      btn.dataset.pillar = r.key;
      btn.addEventListener('click', () => { open.has(r.key) ? open.delete(r.key) : open.add(r.key); draw(); });
      th.appendChild(btn);
    } else {
      th.appendChild(el('span', null, r.key.split('/')[1] + ' '));
      th.appendChild(el('span', 'hl', (r.headline || '') + (r.direction === 'lower' ? ' ↓' : ' ↑')));
    }
    const s = el('button', 'sortcols', '⇅'); s.title = 'order the model columns by this row';
    s.addEventListener('click', () => { cols = cols.slice().sort(byRank(r.cells)); draw(); });
    th.appendChild(s); tr.appendChild(th);
    for (const i of cols) tr.appendChild(boardCell(r.cells[i], sub, b.models[i], r.key));
    return tr;
  }
  function draw() {
    const t = el('table', 'board'), head = el('tr');
    head.appendChild(el('th', null, 'pillar / subtask'));
    for (const i of cols) {
      const th = el('th', 'mhead', b.models[i]); th.dataset.model = b.models[i];
      th.title = 'order the pillars by this model\'s rank';
      th.addEventListener('click', () => {
        rows = rows.slice().sort((x, y) => (b.pillars[x].cells[i].rank ?? 1e9) - (b.pillars[y].cells[i].rank ?? 1e9) || x - y);
        draw();
      });
      head.appendChild(th);
    }
    const thead = el('thead'); thead.appendChild(head); t.appendChild(thead);
    const body = el('tbody');
    for (const p of rows.map((i) => b.pillars[i])) {
      body.appendChild(row(p, false, 'prow'));
      if (open.has(p.key)) for (const s of p.subtasks) body.appendChild(row(s, true, 'srow'));
    }
    t.appendChild(body); host.replaceChildren(t);
  }
  draw();
}

/* ------------------------------------------------------------------ item browser */
const PAGE = 50;
const BADGE = {correct: '✓', incorrect: '✗', scored: '●', refused: 'R', unparseable: '?', error: '!',
               missing: '·', answered: '○'};
async function inflate(b64) {
  const bin = atob(b64), bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream('gzip'));
  return JSON.parse(await new Response(stream).text());
}
function Browser(root) {
  this.root = root;
  this.meta = JSON.parse(root.querySelector('script.items-meta').textContent);
  this.items = []; this.hits = []; this.page = 0;
  this.st = {model: '', pillar: '', subtask: '', outcome: '', smin: null, smax: null, q: ''};
}
// Search: every prompt (and every answer) lowercased into one string, so a query is one fast
// indexOf scan over all of them, each hit mapped back to its item by a binary search of the offsets.
function TextIndex(texts) {
  const off = new Int32Array(texts.length + 1);
  let n = 0;
  texts.forEach((t, i) => { off[i] = n; n += t.length + 1; });
  off[texts.length] = n;
  this.off = off; this.text = texts.join('\u0001');
}
TextIndex.prototype.find = function (q) {
  const off = this.off, hit = new Uint8Array(off.length - 1), s = this.text;
  let pos = s.indexOf(q);
  while (pos >= 0) {
    let lo = 0, hi = off.length - 2;
    while (lo < hi) { const mid = (lo + hi + 1) >> 1; if (off[mid] <= pos) lo = mid; else hi = mid - 1; }
    hit[lo] = 1;
    pos = s.indexOf(q, off[lo + 1]);
  }
  return hit;
};
Browser.prototype.load = async function () {
  const items = await inflate(this.root.querySelector('script.items-data').textContent.trim());
  const prompts = [], answers = [];
  for (const it of items) {
    it.pillar = it.subtask.split('/')[0];
    it.first = answers.length;
    prompts.push((it.prompt || []).map((m) => m.content).join('\n').toLowerCase());
    for (const a of it.answers) answers.push((a.text || '').toLowerCase());
  }
  this.prompts = new TextIndex(prompts); this.answers = new TextIndex(answers);
  this.items = items;
  this.controls();
  this.apply();
  this.root.dataset.ready = 'true';
};
Browser.prototype.q = function (name) { return this.root.querySelector('[data-f="' + name + '"]'); };
Browser.prototype.controls = function () {
  const fill = (name, values) => {
    const s = this.q(name);
    for (const v of values) { const o = el('option', null, v); o.value = v; s.appendChild(o); }
    s.addEventListener('change', () => { this.st[name] = s.value; this.page = 0; this.apply(); });
  };
  fill('model', this.meta.models); fill('pillar', this.meta.pillars);
  fill('subtask', this.meta.subtasks); fill('outcome', this.meta.outcomes);
  for (const name of ['smin', 'smax']) {
    const inp = this.q(name);
    inp.addEventListener('input', () => {
      this.st[name] = inp.value === '' ? null : Number(inp.value); this.page = 0; this.apply();
    });
  }
  window.addEventListener('explore', (e) => {
    for (const name of ['subtask', 'model']) {
      const v = this.meta[name + 's'].includes(e.detail[name]) ? e.detail[name] : '';
      this.st[name] = v; this.q(name).value = v;
    }
    this.page = 0; this.apply(); this.root.scrollIntoView();
  });
  const search = this.q('q');
  search.addEventListener('input', () => { this.st.q = search.value.toLowerCase(); this.page = 0; this.apply(); });
  this.q('prev').addEventListener('click', () => { if (this.page > 0) { this.page--; this.draw(); } });
  this.q('next').addEventListener('click', () => {
    if ((this.page + 1) * PAGE < this.hits.length) { this.page++; this.draw(); }
  });
};
Browser.prototype.match = function (a) {
  const st = this.st;
  if (st.model && a.model !== st.model) return false;
  if (st.outcome && a.outcome !== st.outcome) return false;
  if (st.smin !== null || st.smax !== null) {
    const s = a.judge_score;
    if (s === undefined || s === null) return false;
    if (st.smin !== null && s < st.smin) return false;
    if (st.smax !== null && s > st.smax) return false;
  }
  return true;
};
Browser.prototype.apply = function () {
  const t0 = performance.now(), st = this.st, hits = [], items = this.items;
  if (st.q !== this.lastQ) {  // the scans run once per query, not per filter change
    this.lastQ = st.q;
    this.qp = st.q ? this.prompts.find(st.q) : null;
    this.qa = st.q ? this.answers.find(st.q) : null;
  }
  const qp = this.qp, qa = this.qa;
  let answers = 0;
  for (let i = 0; i < items.length; i++) {
    const it = items[i];
    if ((st.subtask && it.subtask !== st.subtask) || (st.pillar && it.pillar !== st.pillar)) continue;
    const promptHit = !qp || qp[i] === 1;
    let m = 0;
    for (let j = 0; j < it.answers.length; j++) {
      if ((promptHit || qa[it.first + j] === 1) && this.match(it.answers[j])) m++;
    }
    if (m) { hits.push(it); answers += m; }
  }
  this.hits = hits;
  this.draw();
  const ms = performance.now() - t0;
  Object.assign(this.root.dataset, {items: hits.length, answers: answers, ms: ms.toFixed(1)});
  this.q('count').textContent = hits.length + ' items, ' + answers + ' answers match (' + ms.toFixed(0) + ' ms)';
};
Browser.prototype.draw = function () {
  const body = el('tbody'), start = this.page * PAGE;
  for (const it of this.hits.slice(start, start + PAGE)) {
    const tr = el('tr', 'irow'); tr.dataset.item = it.id; tr.dataset.subtask = it.subtask;
    tr.appendChild(el('td', null, it.subtask));
    tr.appendChild(el('td', 'iid', it.id + (it.sample ? ' #' + it.sample : '')));
    const p = it.prompt && it.prompt.length ? it.prompt[it.prompt.length - 1].content : '';
    tr.appendChild(el('td', 'iprompt', p.length > 140 ? p.slice(0, 140) + '…' : p));
    for (const a of it.answers) {
      const mark = a.outcome === 'scored' && typeof a.score === 'number'
        ? (Number.isInteger(a.score) ? String(a.score) : a.score.toFixed(1)) : (BADGE[a.outcome] || a.outcome);
      const td = el('td', 'badge o-' + a.outcome, mark);
      td.title = a.model + ': ' + a.outcome + (a.score == null ? '' : ' ' + num(a.score));
      td.dataset.model = a.model; td.dataset.outcome = a.outcome;
      tr.appendChild(td);
    }
    tr.addEventListener('click', () => this.show(it));
    body.appendChild(tr);
  }
  const table = this.q('list');
  table.replaceChild(body, table.tBodies[0]);
  const pages = Math.max(1, Math.ceil(this.hits.length / PAGE));
  this.q('page').textContent = 'page ' + (this.page + 1) + ' of ' + pages;
};
function field(parent, label, value, pre) {
  if (value === undefined || value === null || value === '') return;
  const d = el('div', 'fld');
  d.appendChild(el('b', null, label + ': '));
  d.appendChild(el(pre ? 'pre' : 'span', null, typeof value === 'object' ? JSON.stringify(value) : num(value)));
  parent.appendChild(d);
}
Browser.prototype.show = function (it) {
  const box = this.q('detail');
  box.replaceChildren();
  box.dataset.item = it.id; box.dataset.subtask = it.subtask;
  const close = el('button', 'close', '× close'); close.dataset.f = 'close';
  close.addEventListener('click', () => { box.hidden = true; });
  box.appendChild(close);
  box.appendChild(el('h3', null, it.subtask + ' · ' + it.id + (it.sample ? ' · sample ' + it.sample : '')));
  for (const m of it.prompt || []) {
    const d = el('div', 'msg'); d.appendChild(el('b', null, m.role)); d.appendChild(el('pre', null, m.content));
    box.appendChild(d);
  }
  if (!it.prompt) box.appendChild(el('p', 'hl', 'prompt not available (items could not be rebuilt)'));
  field(box, 'reference', it.reference, true);
  const grid = el('div', 'sbs');
  for (const a of it.answers) {
    const col = el('div', 'col o-' + a.outcome); col.dataset.model = a.model; col.dataset.outcome = a.outcome;
    col.appendChild(el('h4', null, a.model + ' — ' + a.outcome));
    field(col, 'parsed', a.parsed); field(col, 'score', a.score); field(col, 'finish', a.finish);
    field(col, 'error', a.error);
    const t = el('pre', 'resp', a.text == null ? '(no response)' : a.text); col.appendChild(t);
    field(col, 'judge', a.judge); field(col, 'verdict', a.verdict); field(col, 'judge score', a.judge_score);
    field(col, 'rationale', a.rationale, true);
    grid.appendChild(col);
  }
  box.appendChild(grid);
  box.hidden = false;
  box.scrollIntoView({block: 'nearest'});
};

function start() {
  board();
  for (const root of document.querySelectorAll('.browser')) {
    const b = new Browser(root);
    root.browser = b;
    b.load().catch((e) => { root.querySelector('[data-f="count"]').textContent = 'items could not be read: ' + e; });
  }
}
// After the first paint: the rank tables show at once, the items follow.
requestAnimationFrame(() => setTimeout(start, 0));
})();
"""

CSS = """
table.board td.bcell { text-align: center; min-width: 64px; }
table.board td.bcell b { display: block; font-size: 15px; } table.board td.bcell small { display: block; color: #333; }
table.board td.absent { color: #999; font-style: italic; } .cov { font-size: 10px; color: #555; }
table.board tr.srow th { font-weight: normal; padding-left: 18px; } td.link { cursor: pointer; } table.board th.mhead { cursor: pointer; }
button.toggle, button.sortcols { border: 0; background: none; cursor: pointer; font: inherit; padding: 0 2px; }
.browser .filters { display: flex; flex-wrap: wrap; gap: 8px; align-items: center; margin: 6px 0; }
.browser table.list td.badge { text-align: center; width: 22px; font-weight: 600; }
.browser tr.irow { cursor: pointer; } .browser tr.irow:hover { background: #f0f6ff; }
.browser td.iprompt { max-width: 520px; color: #333; font-size: 12px; }
.o-correct { color: #1a7f37; } .o-incorrect, .o-error { color: #c62828; } .o-unparseable { color: #b26a00; }
.o-refused { color: #5e35b1; } .o-missing { color: #999; }
.sbs { display: grid; grid-template-columns: repeat(auto-fill, minmax(300px, 1fr)); gap: 10px; }
.sbs .col { border: 1px solid #ddd; padding: 6px 8px; color: #1b1b1b; } .sbs .col h4 { margin: 0 0 4px; }
.detail { border: 2px solid #999; margin: 8px 0; padding: 6px 10px; background: #fcfcfc; } .fld { font-size: 12px; }
.detail button.close { float: right; } .sbs pre.resp { max-height: 260px; }
"""


def script_hash() -> str:
    """The CSP source that allows SCRIPT (and no other script)."""
    return "'sha256-" + base64.b64encode(hashlib.sha256(SCRIPT.encode("utf-8")).digest()).decode("ascii") + "'"


def script_tag() -> str:
    return f"<script>{SCRIPT}</script>"
