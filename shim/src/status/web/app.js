// The status page: one status document, then server-sent events (status, batch, change,
// resync). The simulator runs snp-core's Debouncer compiled to wasm (snp_sim_wasm.js).
import init, { simulate } from '/status/assets/snp_sim_wasm.js';

const $ = (sel, root = document) => root.querySelector(sel);
const el = (tag, attrs = {}, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') e.className = v; else e.setAttribute(k, v);
  }
  for (const k of kids) e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  return e;
};
const SVG = 'http://www.w3.org/2000/svg';
const svg = (tag, attrs = {}) => {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
};

const MAX_BATCHES = 200;
const MAX_CHANGES = 100;
const state = { batches: [], namespaces: new Map(), selected: null };

function showError(message) {
  const box = $('#errors');
  box.hidden = false;
  box.textContent = message;
}

function fmtDuration(s) {
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}
const fmtTime = (ms) => new Date(ms).toLocaleTimeString([], { hour12: false }) + '.' + String(ms % 1000).padStart(3, '0');
const get = (obj, path) => path.split('.').reduce((o, k) => (o == null ? undefined : o[k]), obj);

function renderStatus(doc) {
  for (const node of document.querySelectorAll('[data-field]')) {
    const path = node.dataset.field;
    let v = path === 'uptime' ? fmtDuration(doc.uptime_seconds) : get(doc, path);
    if (v === undefined) continue;
    node.classList.remove('yes', 'no');
    if (typeof v === 'boolean') {
      node.classList.add(v ? 'yes' : 'no');
      v = v ? 'yes' : 'no';
    } else if (path === 'oldest_pending_age_seconds') {
      v = `${v.toFixed(1)} s`;
    }
    node.textContent = v;
  }
  renderParked(doc.parked);
  renderJournal(doc.journal);
  if (doc.recent_batches) {
    state.batches = doc.recent_batches.slice(-MAX_BATCHES);
    renderBatches();
  }
}

// Parked keys: the document lists the first of them and the total.
function renderParked(parked) {
  const section = $('#parked');
  section.hidden = parked == null || !Array.isArray(parked.keys);
  if (section.hidden) return;
  $('#parked-total').textContent = parked.total;
  section.classList.toggle('alert', parked.total > 0);
  const body = $('tbody', section);
  const rows = parked.keys.map((p) => el('tr', { class: 'failed' }, el('td', {}, p.namespace),
    el('td', { class: 'mono' }, p.interface), el('td', { class: 'num' }, p.applications.length),
    el('td', {}, p.reason), el('td', {}, p.message), el('td', { class: 'num' }, p.tries),
    el('td', {}, p.next_probe)));
  if (parked.total > parked.keys.length) {
    rows.push(el('tr', {}, el('td', { colspan: 7, class: 'hint' },
      `${parked.total - parked.keys.length} more at /parked`)));
  }
  body.replaceChildren(...rows);
}

// The journal's section is absent when the shim runs without one (--journal=false).
function renderJournal(journal) {
  $('#journal').hidden = journal == null || typeof journal !== 'object';
}

function addBatch(b) {
  state.batches.push(b);
  if (state.batches.length > MAX_BATCHES) state.batches.shift();
  renderBatches();
}

function renderBatches() {
  const rows = state.batches.slice(-20).reverse().map((b) => el('tr', { class: b.ok ? '' : 'failed', title: b.error ?? '' },
    el('td', {}, fmtTime(b.started_ms)), el('td', {}, `#${b.id}`),
    el('td', { class: 'num' }, b.keys), el('td', { class: 'num' }, b.created), el('td', { class: 'num' }, b.updated),
    el('td', { class: 'num' }, b.unchanged), el('td', { class: 'num' }, b.conflicts), el('td', { class: 'num' }, b.duration_ms),
    el('td', {}, b.ok ? 'ok' : 'failed')));
  $('#batch-rows').replaceChildren(...rows);
  drawTimeline($('#timeline'), state.batches.map((b) => ({
    start: b.started_ms, end: b.started_ms + b.duration_ms, keys: b.keys, ok: b.ok, conflicts: b.conflicts,
  })), { now: Date.now(), label: (t) => fmtTime(t).slice(0, 8) });
}

// Bars on a time axis: x = start, width = duration (at least 2 px), height ~ keys.
function drawTimeline(node, bars, { now, label, lanes = null }) {
  const w = node.clientWidth || 800, h = node.clientHeight || 120;
  node.setAttribute('viewBox', `0 0 ${w} ${h}`);
  node.replaceChildren();
  const laneCount = lanes ? lanes.length : 1;
  const top = 6, axis = 16, laneH = (h - top - axis) / laneCount;
  if (!bars.length) {
    const t = svg('text', { x: 10, y: h / 2 });
    t.textContent = 'no batches yet';
    node.append(t);
    return;
  }
  const t0 = Math.min(...bars.map((b) => b.start));
  const t1 = Math.max(now ?? 0, ...bars.map((b) => b.end), t0 + 1);
  const x = (t) => 4 + ((t - t0) / (t1 - t0)) * (w - 8);
  const maxKeys = Math.max(...bars.map((b) => b.keys), 1);
  for (const b of bars) {
    const lane = b.lane ?? 0;
    const base = top + laneH * (lane + 1);
    const bh = Math.max(2, ((laneH - 4) * b.keys) / maxKeys);
    const rect = svg('rect', { x: x(b.start), y: base - bh, width: Math.max(2, x(b.end) - x(b.start)), height: bh,
      fill: b.ok ? (b.color ?? '#2f6fde') : '#d64545', opacity: 0.85 });
    const tip = svg('title');
    tip.textContent = `${b.keys} keys, ${b.end - b.start} ms${b.conflicts ? `, ${b.conflicts} conflicts` : ''}${b.ok ? '' : ', failed'}`;
    rect.append(tip);
    node.append(rect);
    if (b.conflicts) node.append(svg('path', { d: `M${x(b.start)} ${base - bh - 7} l3 3 l-3 3 l-3 -3 z`, fill: '#c98a00' }));
  }
  if (lanes) lanes.forEach((name, i) => {
    const t = svg('text', { x: 6, y: top + laneH * i + 11 });
    t.textContent = name;
    node.append(t);
  });
  for (let i = 0; i <= 4; i++) {
    const t = t0 + ((t1 - t0) * i) / 4;
    const tx = svg('text', { x: Math.min(w - 50, x(t)), y: h - 3 });
    tx.textContent = label(t);
    node.append(tx);
  }
}

// Mappings browser: namespace -> interface -> applications, kept current by change events.
async function loadMappings() {
  const res = await fetch('/status/api/mappings');
  if (!res.ok) throw new Error(`GET /status/api/mappings: ${res.status}`);
  const list = await res.json();
  state.namespaces = new Map(list.map((ns) => [ns.namespace, new Map(ns.mappings.map((m) => [m.interface, m]))]));
  renderMappings();
}

function applyChange(c) {
  let ns = state.namespaces.get(c.namespace);
  if (c.kind === 'delete') {
    ns?.delete(c.interface);
    if (ns && ns.size === 0) state.namespaces.delete(c.namespace);
  } else {
    if (!ns) state.namespaces.set(c.namespace, (ns = new Map()));
    ns.set(c.interface, { interface: c.interface, applications: c.applications, revision: c.revision });
  }
  const feed = $('#changes');
  feed.prepend(el('li', {}, el('time', {}, fmtTime(Date.now()).slice(0, 8)), el('span', { class: `kind ${c.kind}` }, c.kind),
    el('span', { class: 'mono' }, `${c.namespace}/${c.interface}`), c.kind === 'upsert' ? ` → ${c.applications.join(', ')}` : ''));
  while (feed.children.length > MAX_CHANGES) feed.lastChild.remove();
  scheduleMappings();
}

let mappingsPending = false;
function scheduleMappings() {
  if (mappingsPending) return;
  mappingsPending = true;
  requestAnimationFrame(() => { mappingsPending = false; renderMappings(); });
}

function renderMappings() {
  const names = [...state.namespaces.keys()].sort();
  if (!state.selected || !state.namespaces.has(state.selected)) state.selected = names[0] ?? null;
  $('#namespaces').replaceChildren(...names.map((n) => {
    const li = el('li', { class: n === state.selected ? 'active' : '' }, el('span', {}, n), el('span', {}, state.namespaces.get(n).size));
    li.addEventListener('click', () => { state.selected = n; renderMappings(); });
    return li;
  }));
  const filter = $('#filter').value.trim().toLowerCase();
  const rows = [...(state.namespaces.get(state.selected)?.values() ?? [])]
    .filter((m) => !filter || m.interface.toLowerCase().includes(filter) || m.applications.some((a) => a.toLowerCase().includes(filter)))
    .sort((a, b) => a.interface.localeCompare(b.interface));
  $('#mapping-count').textContent = rows.length;
  $('#mapping-rows').replaceChildren(...rows.slice(0, 500).map((m) => el('tr', {},
    el('td', { class: 'mono' }, m.interface), el('td', {}, m.applications.join(', ')), el('td', { class: 'mono' }, m.revision))));
}

function connect() {
  const live = $('#live');
  const source = new EventSource('/status/events');
  source.addEventListener('open', () => { live.textContent = 'live'; live.className = 'pill on'; });
  source.addEventListener('error', () => { live.textContent = 'reconnecting'; live.className = 'pill off'; });
  source.addEventListener('status', (e) => renderStatus(JSON.parse(e.data)));
  source.addEventListener('batch', (e) => addBatch(JSON.parse(e.data)));
  source.addEventListener('change', (e) => applyChange(JSON.parse(e.data)));
  source.addEventListener('resync', () => loadMappings().catch((err) => showError(err.message)));
}

// The simulator.
function rolloutFromForm(form) {
  const r = {};
  for (const input of form.querySelectorAll('input, select')) {
    if (input.value === '') continue;
    const path = input.name.split('.');
    let o = r;
    for (const k of path.slice(0, -1)) o = o[k] ??= {};
    o[path.at(-1)] = input.type === 'number' ? Number(input.value) : input.value;
  }
  if (r.outage && (r.outage.start_ms === undefined || r.outage.end_ms === undefined)) delete r.outage;
  return r;
}

function runSimulation() {
  const input = JSON.stringify(rolloutFromForm($('#sim-form')));
  const started = performance.now();
  let raw;
  try {
    raw = simulate(input);
  } catch (err) {
    $('#sim-state').textContent = err.message;
    return;
  }
  const took = performance.now() - started;
  const report = JSON.parse(raw);
  $('#sim-input').textContent = input;
  $('#sim-raw').textContent = raw;
  $('#sim-result').hidden = false;
  $('#sim-batches').textContent = report.batches.length;
  $('#sim-filter-batches').textContent = report.filter_batches.length;
  $('#sim-writes').textContent = report.writes;
  $('#sim-writes-detail').textContent = `${report.created} created, ${report.updated} updated, ${report.conflicts} conflicts, ${report.calls} calls`;
  $('#sim-stored').textContent = report.all_stored_ms == null ? 'never' : `${(report.all_stored_ms / 1000).toFixed(3)} s`;
  $('#sim-stored-detail').textContent = `last call at ${(report.last_call_ms / 1000).toFixed(3)} s; ${report.failed_batches} failed batches`;
  $('#sim-state').textContent = `simulated in ${took.toFixed(0)} ms`;
  const nodes = report.rollout.nodes;
  const lanes = ['filters', ...Array.from({ length: Math.min(nodes, 8) }, (_, i) => `node ${i}`)];
  const bars = [
    // Filter batches as ticks where they left the filter (one may wait out an outage for its ack).
    ...report.filter_batches.map((b) => ({ start: b.start_ms, end: b.start_ms, keys: b.keys, ok: b.ok, lane: 0, color: '#7b61c9' })),
    ...report.batches.filter((b) => b.node < 8).map((b) => ({ start: b.start_ms, end: b.end_ms, keys: b.keys, ok: b.ok,
      conflicts: b.conflicts, lane: b.node + 1 })),
  ];
  drawTimeline($('#sim-timeline'), bars, { label: (t) => `${(t / 1000).toFixed(2)} s`, lanes });
  document.body.dataset.simRuns = String(Number(document.body.dataset.simRuns ?? 0) + 1);
}

async function startSimulator(doc) {
  const form = $('#sim-form');
  // Start from this shim's own windows.
  for (const tier of ['filter', 'shim']) {
    form.elements[`${tier}.debounce_after_ms`].value = doc.debounce.debounce_after_ms;
    form.elements[`${tier}.debounce_max_ms`].value = doc.debounce.debounce_max_ms;
    form.elements[`${tier}.first_check_ms`].value = doc.debounce.first_check_ms;
  }
  form.elements['retry.base_ms'].value = doc.debounce.retry_base_ms;
  form.elements['retry.cap_ms'].value = doc.debounce.retry_max_ms;
  form.addEventListener('submit', (e) => { e.preventDefault(); runSimulation(); });
  await init({ module_or_path: '/status/assets/snp_sim_wasm_bg.wasm' });
  $('#sim-run').disabled = false;
  $('#sim-state').textContent = 'engine loaded';
  document.body.dataset.simReady = 'true';
}

async function main() {
  $('#filter').addEventListener('input', scheduleMappings);
  const res = await fetch('/status/api/status');
  if (!res.ok) throw new Error(`GET /status/api/status: ${res.status}`);
  const doc = await res.json();
  renderStatus(doc);
  await loadMappings();
  connect();
  window.addEventListener('resize', renderBatches);
  await startSimulator(doc).catch((err) => {
    $('#sim-state').textContent = `simulator unavailable: ${err.message}`;
    throw err;
  });
}

main().catch((err) => {
  showError(err.message);
  console.error(err);
});
