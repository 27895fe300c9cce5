// Vantage dashboard: one page whose views (overview, check, nodes, incidents, sign-in) are
// drawn from the API and kept current by the live feed. No build step, no dependencies but
// the vendored uPlot; every text from the API goes into the page as text, never as HTML.
'use strict';

(() => {
  const ROW = 28;
  // Worst first: the order of "sort by state".
  const SEVERITY = { down: 0, degraded: 1, pending: 2, maintenance: 3, paused: 4, up: 5, none: 6 };
  const PHASES = ['dns', 'connect', 'tls', 'ttfb', 'transfer'];
  const COLOURS = ['#7fb4ff', '#f2a65a', '#9ad17b', '#e07ad8', '#5fd3d3', '#e0d35f', '#ff7f7f'];

  const app = {
    role: null,
    checks: [],
    verdicts: new Map(),
    // The latest result per "check|region": whether it succeeded and when it was measured.
    latest: new Map(),
    regions: [],
    ws: null,
    route: '',
    overview: null,
    pending: false,
    // The events page's source filter.
    eventSource: null,
  };

  // ---- helpers -------------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === 'class') node.className = value;
      else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
      else if (key === 'data') Object.assign(node.dataset, value);
      else node.setAttribute(key, value === true ? '' : value);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  const view = () => document.getElementById('view');
  const canWrite = () => app.role === 'operator' || app.role === 'admin';
  const fmtMs = (ms) => (ms === null || ms === undefined ? '–' : `${ms < 10 ? ms.toFixed(2) : ms.toFixed(0)} ms`);
  const fmtTime = (ms) => (ms ? new Date(ms).toISOString().replace('T', ' ').slice(0, 19) : '–');
  const fmtPct = (p) => (p === null || p === undefined ? '–' : `${p.toFixed(p >= 99.9 && p < 100 ? 3 : 2)} %`);

  // Marks the end of a change once the browser has drawn it (the frame after it): the
  // benchmark reads these through the Performance API.
  function measureDrawn(name, start) {
    requestAnimationFrame(() => setTimeout(() => {
      if (start === undefined) performance.mark(name);
      else performance.measure(name, { start });
    }, 0));
  }

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(path, options = {}) {
    const init = { credentials: 'same-origin', method: options.method || 'GET', headers: {} };
    if (options.body !== undefined) {
      init.headers['content-type'] = 'application/json';
      init.body = JSON.stringify(options.body);
    }
    const response = await fetch(path, init);
    if (response.status === 204) return null;
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    if (!response.ok) {
      const message = (body && (body.message || (body.error && (body.error.message || body.error)))) || response.statusText;
      if (response.status === 401 && path !== '/ui/session') {
        signedOut();
      }
      throw new ApiError(response.status, String(message));
    }
    return body;
  }

  // ---- session -------------------------------------------------------------------------

  function showLogin(message) {
    document.getElementById('nav').hidden = true;
    document.getElementById('signout').hidden = true;
    document.getElementById('who').textContent = '';
    const error = el('p', { class: 'error', id: 'login-error' }, message || '');
    const input = el('input', { type: 'password', id: 'token', name: 'token', autocomplete: 'off', required: true, placeholder: 'vat_…' });
    const form = el('form', { class: 'stack', id: 'login' },
      el('label', {}, 'API token', input),
      el('button', { type: 'submit' }, 'Sign in'),
      error);
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      try {
        const who = await api('/ui/session', { method: 'POST', body: { token: input.value } });
        input.value = '';
        await started(who.role);
      } catch (e) {
        error.textContent = e.status === 401 ? 'That token is not valid.' : e.message;
      }
    });
    view().replaceChildren(el('div', { class: 'login' }, el('h2', {}, 'Sign in to Vantage'), form));
    input.focus();
  }

  function signedOut() {
    app.role = null;
    if (app.ws) {
      app.ws.onclose = null;
      app.ws.close();
      app.ws = null;
    }
    setLive(false);
    showLogin('Signed out.');
  }

  async function started(role) {
    app.role = role;
    document.getElementById('nav').hidden = false;
    document.getElementById('signout').hidden = false;
    document.getElementById('who').textContent = `signed in: ${role}`;
    await loadCore();
    connectLive();
    await route();
  }

  async function loadCore() {
    applyOverview(await api('/api/v1/overview'));
  }

  // The page's checks, verdicts and latest outcomes from the compact overview (see
  // control-plane/src/overview.rs): check [id, name, enabled, labels, state, reason, cells],
  // cell [region index, flags (1 failing, 2 maintenance, 4 has latest, 8 latest ok), at].
  function applyOverview(overview) {
    const regions = overview.regions || [];
    const checks = [];
    const verdicts = new Map();
    const latest = new Map();
    for (const [id, name, enabled, labels, state, reason, cells] of overview.checks || []) {
      const own = [];
      const evidence = [];
      for (const [index, flags, at] of cells) {
        const region = regions[index];
        own.push(region);
        evidence.push({ region, failing: (flags & 1) !== 0, maintenance: (flags & 2) !== 0 });
        if (flags & 4) latest.set(`${id}|${region}`, { ok: (flags & 8) !== 0, at });
      }
      checks.push({ id, name, enabled, labels, regions: own });
      verdicts.set(id, { check_id: id, state, reason, regions: evidence });
    }
    app.checks = checks;
    app.verdicts = verdicts;
    app.latest = latest;
    app.regions = regions;
  }

  // ---- live feed -----------------------------------------------------------------------

  function setLive(on) {
    const badge = document.getElementById('live');
    badge.classList.toggle('on', on);
    badge.classList.toggle('off', !on);
  }

  function connectLive() {
    if (app.ws || !app.role) return;
    // The page has just read the current state; after a reconnect it reads it again.
    const ws = new WebSocket(`wss://${location.host}/api/v1/live?latest=false`);
    const reconnect = app.liveOpened === true;
    app.ws = ws;
    ws.onopen = () => {
      setLive(true);
      if (reconnect) refreshVerdicts();
      app.liveOpened = true;
    };
    ws.onmessage = (message) => {
      let event;
      try {
        event = JSON.parse(message.data);
      } catch (_) {
        return;
      }
      onLive(event);
    };
    ws.onclose = () => {
      app.ws = null;
      setLive(false);
      if (app.role) setTimeout(connectLive, 1000);
    };
  }

  function refreshVerdicts() {
    api('/api/v1/overview').then((overview) => {
      applyOverview(overview);
      if (app.route === 'overview') scheduleMatrix();
    }).catch(() => {});
  }

  function onLive(event) {
    if (event.kind === 'result' && event.data && event.check_id) {
      const key = `${event.check_id}|${event.region}`;
      const known = app.latest.get(key);
      const at = event.data.measured_at_ms;
      if (!known || known.at <= at) {
        const changed = !known || known.ok !== event.data.ok;
        app.latest.set(key, { ok: event.data.ok, at });
        if (changed && app.route === 'overview') scheduleMatrix();
      }
    } else if (event.kind === 'verdict' && event.data && event.check_id) {
      app.verdicts.set(event.check_id, event.data);
      if (app.route === 'overview') scheduleMatrix();
      else if (app.route === `check:${event.check_id}`) updateDetailState();
    } else if (event.kind === 'lagged') {
      // Updates were missed: read the current state again.
      refreshVerdicts();
    } else if (event.kind === 'incident' && app.route === 'incidents') {
      route();
    } else if (event.kind === 'event' && app.route === 'events' && event.data && event.data.id) {
      addEventRow(event.data);
    }
  }

  // ---- routing -------------------------------------------------------------------------

  async function route() {
    if (!app.role) return;
    const hash = location.hash || '#/';
    for (const link of document.querySelectorAll('#nav a')) {
      link.classList.toggle('active', link.getAttribute('href') === hash);
    }
    try {
      if (hash.startsWith('#/checks/')) {
        await showCheck(decodeURIComponent(hash.slice('#/checks/'.length)));
      } else if (hash === '#/nodes') {
        await showNodes();
      } else if (hash.startsWith('#/nodes/')) {
        const [id, range] = hash.slice('#/nodes/'.length).split('?range=');
        await showNode(decodeURIComponent(id), range);
      } else if (hash === '#/incidents') {
        await showIncidents();
      } else if (hash === '#/events' || hash.startsWith('#/events?')) {
        await showEvents(new URLSearchParams(hash.slice('#/events'.length).replace(/^\?/, '')).get('source'));
      } else if (hash.startsWith('#/incidents/')) {
        await showIncident(decodeURIComponent(hash.slice('#/incidents/'.length)));
      } else if (hash === '#/new') {
        showCheckForm(null);
      } else if (hash === '#/enroll') {
        showEnroll();
      } else {
        showOverview();
      }
    } catch (e) {
      if (e.status !== 401) view().replaceChildren(el('p', { class: 'error' }, e.message));
    }
  }

  // ---- overview ------------------------------------------------------------------------

  // A region's state for a check: failing (DOWN) and maintenance come from the verdict; else
  // its latest result says UP, or DEGRADED when it failed but not yet enough times to count.
  function regionState(verdict, region, checkId) {
    if (verdict && verdict.state === 'paused') return 'paused';
    const evidence = verdict && (verdict.regions || []).find((r) => r.region === region);
    if (evidence && evidence.maintenance) return 'maintenance';
    if (evidence && evidence.failing) return 'down';
    const latest = app.latest.get(`${checkId || (verdict && verdict.check_id)}|${region}`);
    const last = latest || (evidence && evidence.last);
    if (!last) return 'pending';
    return last.ok ? 'up' : 'degraded';
  }

  function overallState(check) {
    const verdict = app.verdicts.get(check.id);
    if (!check.enabled) return 'paused';
    return verdict ? verdict.state : 'pending';
  }

  function labelText(check) {
    return Object.entries(check.labels || {}).map(([k, v]) => `${k}=${v}`).join(' ');
  }

  function showOverview() {
    app.route = 'overview';
    const o = app.overview || { filter: '', state: '', region: '', sort: 'name' };
    app.overview = o;
    const filter = el('input', { id: 'filter', type: 'search', placeholder: 'filter: name, label=value, region', value: o.filter });
    const stateSelect = el('select', { id: 'state' },
      el('option', { value: '' }, 'every state'),
      ...['down', 'degraded', 'up', 'maintenance', 'pending', 'paused'].map((s) => el('option', { value: s, selected: o.state === s }, s)));
    const regionSelect = el('select', { id: 'region' },
      el('option', { value: '' }, 'all regions (aggregate)'),
      ...app.regions.map((r) => el('option', { value: r, selected: o.region === r }, `region ${r}`)));
    const sortSelect = el('select', { id: 'sort' },
      ...[['name', 'sort by name'], ['state', 'sort by state'], ['label', 'sort by labels']]
        .map(([v, t]) => el('option', { value: v, selected: o.sort === v }, t)));
    const count = el('span', { class: 'count', id: 'count' });
    const controls = el('div', { class: 'controls' }, filter, stateSelect, regionSelect, sortSelect,
      canWrite() ? el('a', { href: '#/new' }, el('button', { type: 'button', id: 'new-check' }, 'New check')) : null,
      count);
    const matrix = el('div', { class: 'matrix', id: 'matrix' });
    view().replaceChildren(controls, matrix);
    const changed = (name) => () => {
      const started = performance.now();
      o.filter = filter.value;
      o.state = stateSelect.value;
      o.region = regionSelect.value;
      o.sort = sortSelect.value;
      o.rows = null;
      drawMatrix();
      measureDrawn(`vantage:${name}`, started);
    };
    filter.addEventListener('input', changed('filter'));
    stateSelect.addEventListener('change', changed('filter'));
    regionSelect.addEventListener('change', changed('region'));
    sortSelect.addEventListener('change', changed('sort'));
    matrix.addEventListener('scroll', () => scheduleMatrix(false));
    o.rows = null;
    drawMatrix();
    measureDrawn('vantage:overview');
  }

  function matrixRows(o) {
    const tokens = o.filter.toLowerCase().split(/\s+/).filter(Boolean);
    const columns = o.region ? [o.region] : app.regions;
    let rows = app.checks.filter((check) => {
      if (o.region && !check.regions.includes(o.region)) return false;
      const state = o.region ? regionState(app.verdicts.get(check.id), o.region, check.id) : overallState(check);
      if (o.state && state !== o.state) return false;
      if (!tokens.length) return true;
      const text = `${check.name} ${check.id} ${labelText(check)} ${check.regions.join(' ')}`.toLowerCase();
      return tokens.every((t) => text.includes(t));
    });
    const key = (check) => (o.region ? regionState(app.verdicts.get(check.id), o.region, check.id) : overallState(check));
    if (o.sort === 'state') {
      rows = rows.map((c) => [SEVERITY[key(c)] ?? 9, c]).sort((a, b) => a[0] - b[0] || a[1].name.localeCompare(b[1].name)).map((p) => p[1]);
    } else if (o.sort === 'label') {
      rows = rows.map((c) => [labelText(c), c]).sort((a, b) => a[0].localeCompare(b[0]) || a[1].name.localeCompare(b[1].name)).map((p) => p[1]);
    } else {
      rows = rows.slice().sort((a, b) => a.name.localeCompare(b.name));
    }
    return { rows, columns };
  }

  function scheduleMatrix(resort = true) {
    if (resort && app.overview && app.overview.sort === 'state') app.overview.rows = null;
    if (app.overview && app.overview.state) app.overview.rows = null;
    if (app.pending) return;
    app.pending = true;
    requestAnimationFrame(() => {
      app.pending = false;
      if (app.route === 'overview') drawMatrix();
    });
  }

  function drawMatrix() {
    const matrix = document.getElementById('matrix');
    if (!matrix) return;
    const o = app.overview;
    if (!o.rows) {
      const { rows, columns } = matrixRows(o);
      o.rows = rows;
      o.columns = columns;
    }
    const { rows, columns } = o;
    const template = `minmax(180px, 2fr) 90px ${columns.map(() => 'minmax(70px, 1fr)').join(' ')}`;
    document.getElementById('count').textContent = `${rows.length} of ${app.checks.length} checks`;
    const head = el('div', { class: 'head', style: `grid-template-columns: ${template}` },
      el('span', { class: 'name' }, 'check'), el('span', {}, o.region ? 'region' : 'overall'),
      ...columns.map((r) => el('span', {}, r)));
    const spacer = el('div', { style: `height: ${rows.length * ROW}px` });
    const top = Math.max(0, Math.floor(matrix.scrollTop / ROW) - 5);
    const visible = Math.ceil((matrix.clientHeight || 600) / ROW) + 10;
    const drawn = [];
    for (let i = top; i < Math.min(rows.length, top + visible); i += 1) {
      const check = rows[i];
      const verdict = app.verdicts.get(check.id);
      const overall = o.region ? regionState(verdict, o.region, check.id) : overallState(check);
      drawn.push(el('div', { class: 'row', style: `top: ${ROW + i * ROW}px; grid-template-columns: ${template}`, data: { check: check.id } },
        el('a', { class: 'name', href: `#/checks/${encodeURIComponent(check.id)}`, title: labelText(check) }, check.name),
        el('span', { class: `cell s-${overall}`, data: { check: check.id, region: '' } }, overall),
        ...columns.map((region) => {
          const state = check.regions.includes(region) ? regionState(verdict, region, check.id) : 'none';
          return el('span', { class: `cell s-${state}`, data: { check: check.id, region }, title: `${region}: ${state}` },
            state === 'none' ? '' : state);
        })));
    }
    matrix.replaceChildren(head, spacer, ...drawn);
  }

  // ---- check detail --------------------------------------------------------------------

  function badge(state) {
    return el('span', { class: `badge s-${state}`, id: 'check-state' }, state);
  }

  function updateDetailState() {
    const id = app.route.slice('check:'.length);
    const verdict = app.verdicts.get(id);
    const node = document.getElementById('check-state');
    if (node && verdict) node.replaceWith(badge(verdict.state));
    const reason = document.getElementById('check-reason');
    if (reason && verdict) reason.textContent = verdict.reason;
  }

  async function showCheck(id) {
    const clicked = app.navigatedAt;
    app.navigatedAt = undefined;
    const started = clicked !== undefined && performance.now() - clicked < 1000 ? clicked : performance.now();
    app.route = `check:${id}`;
    const now = Date.now();
    const [check, uptime, series, results, incidents] = await Promise.all([
      api(`/api/v1/checks/${encodeURIComponent(id)}`),
      api(`/api/v1/checks/${encodeURIComponent(id)}/uptime`),
      api(`/api/v1/checks/${encodeURIComponent(id)}/series?from_ms=${now - 86_400_000}&to_ms=${now}`),
      api(`/api/v1/results?check=${encodeURIComponent(id)}&limit=500`),
      api('/api/v1/incidents?limit=200'),
    ]);
    if (app.route !== `check:${id}`) return;
    const verdict = app.verdicts.get(id);
    const windows = (uptime && uptime.windows) || {};
    const cards = el('div', { class: 'cards', id: 'uptime' },
      ...['24h', '7d', '30d', '90d'].filter((w) => windows[w]).map((w) => el('div', { class: 'card' },
        el('h3', {}, `uptime ${w}`), el('div', { data: { window: w } }, fmtPct(windows[w].uptime_pct)))));
    const chart = el('div', { class: 'chart', id: 'latency-chart' });
    const failures = (results || []).filter((r) => !r.ok).slice(0, 20);
    const phases = phaseBreakdown(results || []);
    const mine = (incidents || []).filter((i) => i.subject_id === id).slice(0, 10);
    const actions = canWrite()
      ? el('div', { class: 'controls' },
        el('button', { type: 'button', id: 'run-now', onclick: () => runNow(id) }, 'Run now'),
        el('a', { href: '#/new', onclick: (e) => { e.preventDefault(); showCheckForm(check); } },
          el('button', { type: 'button', id: 'edit-check' }, 'Edit')),
        el('span', { id: 'run-result', class: 'muted' }))
      : null;
    view().replaceChildren(
      el('h2', {}, check.name, ' ', badge(verdict ? verdict.state : 'pending')),
      el('p', { class: 'muted', id: 'check-reason' }, verdict ? verdict.reason : 'no verdict yet'),
      el('p', { class: 'muted' }, `${check.kind.type} · every ${check.interval_s} s · regions ${check.regions.join(', ')} · quorum ${check.quorum ?? 'majority'} · retries ${check.retries}`),
      actions,
      cards,
      el('h3', {}, 'Latency per region, last 24 h'),
      chart,
      el('h3', {}, 'Phases (mean of recent results)'),
      phases,
      el('h3', {}, 'Recent failures'),
      failures.length
        ? el('table', { class: 'list', id: 'failures' }, el('tr', {}, el('th', {}, 'measured'), el('th', {}, 'region'), el('th', {}, 'agent'), el('th', {}, 'reason')),
          ...failures.map((r) => el('tr', {}, el('td', {}, fmtTime(r.measured_at_ms)), el('td', {}, r.region), el('td', {}, r.agent_id), el('td', {}, r.reason))))
        : el('p', { class: 'muted', id: 'failures' }, 'none'),
      el('h3', {}, 'Incidents'),
      mine.length
        ? el('table', { class: 'list' }, ...mine.map((i) => el('tr', {}, el('td', {}, fmtTime(i.opened_at_ms)), el('td', {}, i.open ? 'open' : 'resolved'), el('td', {}, i.title || i.summary || ''))))
        : el('p', { class: 'muted' }, 'none'));
    drawSeries(chart, series);
    measureDrawn('vantage:open-check', started);
  }

  function phaseBreakdown(results) {
    const sums = Object.fromEntries(PHASES.map((p) => [p, 0]));
    let n = 0;
    for (const r of results) {
      if (!r.ok) continue;
      const t = r.timings || r;
      let any = false;
      for (const p of PHASES) {
        const v = t[`${p}_ms`];
        if (typeof v === 'number') {
          sums[p] += v;
          any = true;
        }
      }
      if (any) n += 1;
    }
    if (!n) return el('p', { class: 'muted', id: 'phases' }, 'no phase timings');
    const total = PHASES.reduce((a, p) => a + sums[p], 0) || 1;
    return el('div', { id: 'phases' },
      el('div', { class: 'phases' }, ...PHASES.map((p) => el('span', { class: `p-${p}`, style: `width: ${(100 * sums[p]) / total}%`, title: `${p} ${fmtMs(sums[p] / n)}` }))),
      el('p', { class: 'muted' }, PHASES.map((p) => `${p} ${fmtMs(sums[p] / n)}`).join(' · ')));
  }

  function drawSeries(container, series) {
    const regions = Object.keys((series && series.regions) || {});
    if (!regions.length || typeof uPlot === 'undefined') {
      container.append(el('p', { class: 'muted' }, 'no results in this range'));
      return;
    }
    const times = new Set();
    for (const r of regions) for (const p of series.regions[r]) times.add(p.t_ms);
    const xs = [...times].sort((a, b) => a - b);
    const index = new Map(xs.map((t, i) => [t, i]));
    const data = [xs.map((t) => t / 1000)];
    for (const r of regions) {
      const ys = new Array(xs.length).fill(null);
      for (const p of series.regions[r]) ys[index.get(p.t_ms)] = p.avg_ms ?? null;
      data.push(ys);
    }
    const width = Math.max(320, container.clientWidth - 16);
    // eslint-disable-next-line no-new
    new uPlot({
      width,
      height: 240,
      series: [{}, ...regions.map((r, i) => ({ label: r, stroke: COLOURS[i % COLOURS.length], width: 2, spanGaps: true }))],
      axes: [{ stroke: '#8a96a3', grid: { stroke: '#26303a' } }, { stroke: '#8a96a3', grid: { stroke: '#26303a' }, values: (u, v) => v.map((x) => `${x} ms`) }],
    }, data, container);
  }

  async function runNow(id) {
    const out = document.getElementById('run-result');
    out.textContent = 'running…';
    try {
      const answer = await api(`/api/v1/checks/${encodeURIComponent(id)}/run`, { method: 'POST', body: {} });
      const regions = (answer && (answer.regions || answer.results)) || [];
      out.textContent = Array.isArray(regions)
        ? regions.map((r) => `${r.region}: ${r.ok ? 'ok' : 'failed'}`).join(' · ')
        : JSON.stringify(answer).slice(0, 200);
    } catch (e) {
      out.textContent = e.message;
    }
  }

  function showCheckForm(check) {
    app.route = 'form';
    const editing = Boolean(check);
    const name = el('input', { name: 'name', required: true, value: check ? check.name : '' });
    const url = el('input', { name: 'url', type: 'url', placeholder: 'https://example.com/health', value: check && check.kind.type === 'http' ? check.kind.url || '' : '' });
    const interval = el('input', { name: 'interval_s', type: 'number', min: 1, value: check ? check.interval_s : 60 });
    const timeout = el('input', { name: 'timeout_ms', type: 'number', min: 1, value: check ? check.timeout_ms : 5000 });
    const quorum = el('input', { name: 'quorum', type: 'number', min: 1, placeholder: 'majority', value: check && check.quorum ? check.quorum : '' });
    const retries = el('input', { name: 'retries', type: 'number', min: 1, value: check ? check.retries : 2 });
    const boxes = app.regions.map((r) => el('label', {}, el('input', { type: 'checkbox', name: 'region', value: r, checked: check ? check.regions.includes(r) : true }), ` ${r}`));
    const error = el('p', { class: 'error', id: 'form-error' });
    const form = el('form', { class: 'stack', id: 'check-form' },
      el('label', {}, 'Name', name),
      editing && check.kind.type !== 'http' ? el('p', { class: 'muted' }, `probe: ${check.kind.type} (kept)`) : el('label', {}, 'URL (HTTP check)', url),
      el('label', {}, 'Interval (s)', interval),
      el('label', {}, 'Timeout (ms, at most the interval)', timeout),
      el('fieldset', { id: 'regions' }, el('legend', {}, 'Regions'), ...boxes),
      el('label', {}, 'Quorum (regions that must fail for DOWN)', quorum),
      el('label', {}, 'Retries (failures in a row before a region fails)', retries),
      el('button', { type: 'submit' }, editing ? 'Save' : 'Create'), error);
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      const regions = boxes.map((b) => b.querySelector('input')).filter((i) => i.checked).map((i) => i.value);
      const body = {
        ...(check || {}),
        name: name.value,
        interval_s: Number(interval.value),
        timeout_ms: Number(timeout.value),
        retries: Number(retries.value),
        regions,
      };
      if (!editing || check.kind.type === 'http') body.kind = { ...(check ? check.kind : {}), type: 'http', url: url.value };
      if (quorum.value) body.quorum = Number(quorum.value);
      else delete body.quorum;
      try {
        const saved = editing
          ? await api(`/api/v1/checks/${encodeURIComponent(check.id)}`, { method: 'PUT', body })
          : await api('/api/v1/checks', { method: 'POST', body });
        await loadCore();
        location.hash = `#/checks/${encodeURIComponent(saved.id || check.id)}`;
      } catch (e) {
        error.textContent = e.message;
      }
    });
    view().replaceChildren(el('h2', {}, editing ? `Edit ${check.name}` : 'New check'), form);
  }

  // ---- nodes ---------------------------------------------------------------------------

  async function showNodes() {
    app.route = 'nodes';
    const agents = await api('/api/v1/agents');
    const now = Date.now();
    const rows = agents.map((a) => el('tr', { data: { agent: a.id } },
      el('td', {}, el('a', { href: `#/nodes/${encodeURIComponent(a.id)}` }, a.id)), el('td', {}, a.hostname), el('td', {}, a.region),
      el('td', {}, el('span', { class: `badge s-${a.state === 'online' ? 'up' : 'down'}` }, a.state)),
      el('td', {}, a.version), el('td', {}, a.arch),
      el('td', {}, a.last_seen_ms ? fmtTime(a.last_seen_ms) : '–'),
      el('td', {}, `${Math.floor((a.cert_not_after_ms - now) / 86_400_000)} d`),
      el('td', {}, `${a.spool_dropped_total ?? 0} / ${a.spool_unsendable_total ?? 0}`),
      ...SPARKS.map((spark) => el('td', { class: 'spark-cell', data: { spark: spark.name } }))));
    view().replaceChildren(el('h2', {}, `Nodes (${agents.length})`,
      canWrite() ? el('a', { href: '#/enroll', id: 'enroll-link' }, ' ', el('button', { type: 'button' }, 'Enroll nodes')) : null),
      el('table', { class: 'list', id: 'nodes' },
        el('tr', {}, ...['agent', 'host', 'region', 'state', 'version', 'arch', 'last seen', 'certificate', 'spool dropped / unsendable', ...SPARKS.map((s) => `${s.name} (1 h)`)].map((h) => el('th', {}, h))),
        ...rows));
    // The last hour of each node's metrics as sparklines, for the first nodes listed.
    const route0 = app.route;
    for (const a of agents.slice(0, MAX_SPARK_NODES)) {
      if (app.route !== route0) return;
      const samples = await api(`/api/v1/metrics?agent=${encodeURIComponent(a.id)}&from_ms=${now - 3_600_000}&limit=720`).catch(() => []);
      const row = document.querySelector(`#nodes tr[data-agent="${CSS.escape(a.id)}"]`);
      if (!row) continue;
      samples.sort((x, y) => x.measured_at_ms - y.measured_at_ms);
      for (const spark of SPARKS) {
        const cell = row.querySelector(`td[data-spark="${spark.name}"]`);
        const values = samples.map(spark.value).filter((v) => Number.isFinite(v));
        if (cell) cell.replaceChildren(sparkline(values, spark.max), el('span', { class: 'muted' }, values.length ? ` ${spark.fmt(values[values.length - 1])}` : ' –'));
      }
    }
  }

  // Node metrics drawn as sparklines: what each shows and how its last value reads.
  const MAX_SPARK_NODES = 100;
  const diskPct = (m) => {
    const disks = (m.detail && m.detail.disks) || [];
    const total = disks.reduce((n, d) => n + d.total_bytes, 0);
    return total > 0 ? (100 * disks.reduce((n, d) => n + d.used_bytes, 0)) / total : NaN;
  };
  const SPARKS = [
    { name: 'cpu', value: (m) => m.cpu_pct, max: 100, fmt: (v) => `${v.toFixed(0)} %` },
    { name: 'memory', value: (m) => (m.mem_total_bytes > 0 ? (100 * m.mem_used_bytes) / m.mem_total_bytes : NaN), max: 100, fmt: (v) => `${v.toFixed(0)} %` },
    { name: 'disk', value: diskPct, max: 100, fmt: (v) => `${v.toFixed(0)} %` },
    { name: 'network', value: (m) => m.net_rx_bytes_per_s + m.net_tx_bytes_per_s, max: null, fmt: (v) => `${(v / 1024).toFixed(0)} KiB/s` },
  ];

  // An SVG polyline of values (scaled to max, or to their own largest when max is null).
  function sparkline(values, max) {
    const ns = 'http://www.w3.org/2000/svg';
    const svg = document.createElementNS(ns, 'svg');
    svg.setAttribute('width', '80');
    svg.setAttribute('height', '18');
    svg.setAttribute('class', 'spark');
    if (values.length < 2) return svg;
    const top = max || Math.max(...values) || 1;
    const points = values.map((v, i) => `${((i / (values.length - 1)) * 80).toFixed(1)},${(17 - (Math.min(v, top) / top) * 16).toFixed(1)}`);
    const line = document.createElementNS(ns, 'polyline');
    line.setAttribute('points', points.join(' '));
    line.setAttribute('fill', 'none');
    line.setAttribute('stroke', '#7fb4ff');
    line.setAttribute('stroke-width', '1.2');
    svg.append(line);
    return svg;
  }

  // One node: what it is, then its host metrics over a range as charts (min–max band and mean
  // per step), read from raw samples or rollups as the range demands.
  const NODE_RANGES = { '1h': 3_600_000, '24h': 86_400_000, '7d': 7 * 86_400_000, '30d': 30 * 86_400_000 };
  const NODE_CHARTS = [
    { id: 'cpu', title: 'CPU', metrics: [['cpu_pct', 'cpu']], unit: (v) => `${v.toFixed(0)} %` },
    { id: 'memory', title: 'Memory used', metrics: [['mem_used_pct', 'memory']], unit: (v) => `${v.toFixed(0)} %` },
    { id: 'disk', title: 'Fullest disk used', metrics: [['disk_used_pct', 'disk']], unit: (v) => `${v.toFixed(0)} %` },
    { id: 'load', title: 'Load (1 min)', metrics: [['load1', 'load1']], unit: (v) => v.toFixed(2) },
    { id: 'network', title: 'Network', metrics: [['net_rx_bytes_per_s', 'rx'], ['net_tx_bytes_per_s', 'tx']], unit: (v) => `${(v / 1024).toFixed(0)} KiB/s` },
  ];

  async function showNode(id, rangeName) {
    const range = NODE_RANGES[rangeName] ? rangeName : '1h';
    const routeName = `node:${id}`;
    app.route = routeName;
    const now = Date.now();
    const [agent, series] = await Promise.all([
      api(`/api/v1/agents/${encodeURIComponent(id)}`),
      api(`/api/v1/agents/${encodeURIComponent(id)}/series?from_ms=${now - NODE_RANGES[range]}&to_ms=${now}`),
    ]);
    if (app.route !== routeName) return;
    const ranges = el('div', { class: 'controls', id: 'node-ranges' }, ...Object.keys(NODE_RANGES).map((r) =>
      el('a', { href: `#/nodes/${encodeURIComponent(id)}?range=${r}`, class: r === range ? 'active' : '' }, el('button', { type: 'button', data: { range: r } }, r))));
    const charts = NODE_CHARTS.map((c) => ({ c, box: el('div', { class: 'chart', id: `node-${c.id}-chart` }) }));
    view().replaceChildren(
      el('h2', {}, agent.id, ' ', el('span', { class: `badge s-${agent.state === 'online' ? 'up' : 'down'}` }, agent.state)),
      el('p', { class: 'muted', id: 'node-facts' }, `${agent.hostname} · region ${agent.region} · ${agent.arch} · version ${agent.version} · last seen ${agent.last_seen_ms ? fmtTime(agent.last_seen_ms) : '–'} · certificate ${Math.floor((agent.cert_not_after_ms - now) / 86_400_000)} d · spool dropped ${agent.spool_dropped_total ?? 0}, unsendable ${agent.spool_unsendable_total ?? 0}`),
      ranges,
      el('p', { class: 'muted', id: 'node-source' }, `points of ${Math.round(series.step_ms / 1000)} s from ${series.source === 'raw' ? 'raw samples' : `${series.source} rollups`}`),
      ...charts.flatMap(({ c, box }) => [el('h3', {}, `${c.title}, last ${range}`), box]));
    for (const { c, box } of charts) drawGauges(box, series, c);
  }

  // Draws the named metrics of a metric series: each as its mean line and a min–max band.
  function drawGauges(container, series, chart) {
    const present = chart.metrics.filter(([m]) => ((series.metrics || {})[m] || []).length);
    if (!present.length || typeof uPlot === 'undefined') {
      container.append(el('p', { class: 'muted' }, 'no samples in this range'));
      return;
    }
    const times = new Set();
    for (const [m] of present) for (const p of series.metrics[m]) times.add(p.t_ms);
    const xs = [...times].sort((a, b) => a - b);
    const index = new Map(xs.map((t, i) => [t, i]));
    const data = [xs.map((t) => t / 1000)];
    const lines = [{}];
    const bands = [];
    present.forEach(([m, label], i) => {
      const colour = COLOURS[i % COLOURS.length];
      const cols = { min: new Array(xs.length).fill(null), avg: new Array(xs.length).fill(null), max: new Array(xs.length).fill(null) };
      for (const p of series.metrics[m]) for (const k of ['min', 'avg', 'max']) cols[k][index.get(p.t_ms)] = p[k];
      const base = data.length;
      data.push(cols.max, cols.avg, cols.min);
      lines.push({ label: `${label} max`, stroke: `${colour}55`, width: 1, spanGaps: true },
        { label, stroke: colour, width: 2, spanGaps: true },
        { label: `${label} min`, stroke: `${colour}55`, width: 1, spanGaps: true });
      bands.push({ series: [base, base + 2], fill: `${colour}22` });
    });
    const width = Math.max(320, container.clientWidth - 16);
    // eslint-disable-next-line no-new
    new uPlot({
      width,
      height: 180,
      series: lines,
      bands,
      axes: [{ stroke: '#8a96a3', grid: { stroke: '#26303a' } }, { stroke: '#8a96a3', grid: { stroke: '#26303a' }, size: 70, values: (u, v) => v.map((x) => chart.unit(x)) }],
    }, data, container);
  }

  // ---- enrollment ----------------------------------------------------------------------

  // A form that creates an enrollment token, then the ways to put an agent on a node with it.
  function showEnroll() {
    app.route = 'enroll';
    if (!canWrite()) {
      view().replaceChildren(el('p', { class: 'muted' }, 'Enrolling nodes needs the operator role.'));
      return;
    }
    const out = el('div', { id: 'enroll-out' });
    const error = el('p', { class: 'error', id: 'enroll-error' });
    const form = el('form', { class: 'stack', id: 'enroll-form' },
      el('label', {}, 'Region', el('input', { name: 'region', required: true, placeholder: 'eu-west' })),
      el('label', {}, 'Agents that may enroll with it', el('input', { name: 'uses', type: 'number', min: 1, max: 10000, value: 1 })),
      el('label', {}, 'Valid for (hours)', el('input', { name: 'hours', type: 'number', min: 1, max: 8760, value: 24 })),
      el('button', { type: 'submit' }, 'Create token'), error);
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      error.textContent = '';
      const data = new FormData(form);
      try {
        const made = await api('/api/v1/enrollment-tokens', { method: 'POST', body: {
          region: String(data.get('region')).trim(),
          uses: Number(data.get('uses')),
          ttl_s: Number(data.get('hours')) * 3600,
        } });
        const snippets = made.snippets || {};
        const block = (title, id, text) => (text ? el('section', {},
          el('h3', {}, title, ' ', el('button', { type: 'button', onclick: () => navigator.clipboard.writeText(text).catch(() => {}) }, 'Copy')),
          el('pre', { class: 'snippet', id }, text)) : null);
        out.replaceChildren(
          el('p', {}, `Token ${made.id} for region ${made.region}: ${made.uses_left} use(s), until ${fmtTime(made.expires_at_ms)}. It is shown once.`),
          el('pre', { class: 'snippet', id: 'enroll-token' }, made.token),
          block('Install in a root shell on the node', 'snippet-shell', snippets.shell),
          block('cloud-init user-data', 'snippet-cloud-init', snippets.cloud_init),
          block('Install over SSH from this machine', 'snippet-ssh', snippets.ssh_install),
          snippets.unavailable ? el('p', { class: 'muted', id: 'snippet-unavailable' }, snippets.unavailable) : null);
      } catch (err) {
        error.textContent = err.message;
      }
    });
    view().replaceChildren(el('h2', {}, 'Enroll nodes'), form, out);
  }

  // ---- events --------------------------------------------------------------------------

  // Rows the events page keeps: the newest first; live events push the oldest out.
  const EVENT_ROWS = 500;

  function eventRow(e) {
    return el('tr', { class: `ev-${e.status}`, data: { event: String(e.id) } },
      el('td', {}, fmtTime(e.received_at_ms)),
      el('td', {}, e.source),
      el('td', {}, el('span', { class: `sev sev-${e.severity}` }, e.severity.replace('_', ' '))),
      el('td', {}, e.status),
      el('td', {}, e.title),
      el('td', {}, e.node ? el('a', { href: '#/nodes' }, e.node) : (e.host || '')),
      el('td', {}, e.block === null || e.block === undefined ? '' : String(e.block)),
      el('td', {}, e.incident_id ? el('a', { href: `#/incidents/${encodeURIComponent(e.incident_id)}` }, 'incident') : ''));
  }

  // A live event on the events page: first in the table, if it passes the source filter.
  function addEventRow(e) {
    const table = document.getElementById('events');
    if (!table || (app.eventSource && e.source !== app.eventSource)) return;
    if (table.querySelector(`tr[data-event="${e.id}"]`)) return;
    table.tBodies[0].prepend(eventRow(e));
    while (table.tBodies[0].rows.length > EVENT_ROWS) table.tBodies[0].lastElementChild.remove();
    document.getElementById('events-empty')?.remove();
  }

  // Events from the integration sources (Zabbix, chain webhooks), newest first and live.
  async function showEvents(source) {
    app.route = 'events';
    app.eventSource = source || null;
    const query = source ? `&source=${encodeURIComponent(source)}` : '';
    const [events, sources] = await Promise.all([
      api(`/api/v1/events?limit=200${query}`),
      api('/api/v1/sources'),
    ]);
    const pick = el('select', { id: 'event-source', onchange: (e) => {
      location.hash = e.target.value ? `#/events?source=${encodeURIComponent(e.target.value)}` : '#/events';
    } }, el('option', { value: '' }, 'every source'),
    ...sources.map((s) => el('option', { value: s.id, selected: s.id === source }, `${s.id} (${s.kind})`)));
    const table = el('table', { class: 'list', id: 'events' },
      el('thead', {}, el('tr', {}, ...['Received', 'Source', 'Severity', 'Status', 'Title', 'Node', 'Block', ''].map((h) => el('th', {}, h)))),
      el('tbody', {}, ...events.map(eventRow)));
    view().replaceChildren(el('h2', {}, 'Events'),
      el('div', { class: 'controls' }, el('label', {}, 'Source ', pick),
        el('span', { class: 'count' }, sources.length ? `${sources.length} sources` : 'No sources yet: an admin adds one with POST /api/v1/sources')),
      table,
      events.length ? null : el('p', { class: 'muted', id: 'events-empty' }, 'No events yet.'));
  }

  // ---- incidents -----------------------------------------------------------------------

  async function showIncidents() {
    app.route = 'incidents';
    const incidents = await api('/api/v1/incidents?limit=200');
    const rows = incidents.map((i) => el('tr', { data: { incident: i.id } },
      el('td', {}, fmtTime(i.opened_at_ms)), el('td', {}, el('a', { href: `#/incidents/${encodeURIComponent(i.id)}` }, `${i.subject}: ${i.subject_id}`)),
      el('td', {}, i.open ? 'open' : 'resolved'), el('td', {}, i.acknowledged_at_ms ? 'acknowledged' : ''),
      el('td', {}, i.title || i.summary || ''),
      el('td', {}, canWrite() && i.open && !i.acknowledged_at_ms
        ? el('button', { type: 'button', onclick: async () => { await api(`/api/v1/incidents/${encodeURIComponent(i.id)}/ack`, { method: 'POST', body: {} }); route(); } }, 'Acknowledge')
        : null)));
    view().replaceChildren(el('h2', {}, 'Incidents'),
      incidents.length ? el('table', { class: 'list', id: 'incidents' }, ...rows) : el('p', { class: 'muted', id: 'incidents' }, 'No incidents.'));
  }

  // One incident: its timeline (changes, acknowledgements, notes) and, for operators, a
  // note form and Acknowledge.
  async function showIncident(id) {
    app.route = `incident:${id}`;
    const { incident, timeline } = await api(`/api/v1/incidents/${encodeURIComponent(id)}`);
    const path = `/api/v1/incidents/${encodeURIComponent(id)}`;
    const error = el('p', { class: 'error', id: 'note-error' });
    const actions = [];
    if (canWrite() && incident.open && !incident.acknowledged_at_ms) {
      actions.push(el('button', { type: 'button', id: 'ack', onclick: async () => { await api(`${path}/ack`, { method: 'POST', body: {} }); route(); } }, 'Acknowledge'));
    }
    if (canWrite()) {
      const form = el('form', { class: 'stack', id: 'note-form' },
        el('label', {}, 'Note', el('textarea', { name: 'text', rows: 3, maxlength: 4096, required: true })),
        el('button', { type: 'submit' }, 'Add note'), error);
      form.addEventListener('submit', async (e) => {
        e.preventDefault();
        try {
          await api(`${path}/notes`, { method: 'POST', body: { text: String(new FormData(form).get('text')) } });
          route();
        } catch (err) {
          error.textContent = err.message;
        }
      });
      actions.push(form);
    }
    view().replaceChildren(
      el('h2', {}, incident.title),
      el('p', {}, `${incident.subject}: ${incident.subject_id} · `,
        el('span', { class: `badge s-${incident.open ? 'down' : 'up'}` }, incident.open ? 'open' : 'resolved'),
        ` · opened ${fmtTime(incident.opened_at_ms)}`,
        incident.resolved_at_ms ? ` · resolved ${fmtTime(incident.resolved_at_ms)}` : '',
        incident.acknowledged_at_ms ? ` · acknowledged ${fmtTime(incident.acknowledged_at_ms)}` : ''),
      el('table', { class: 'list', id: 'timeline' },
        el('tr', {}, ...['time', 'change', 'text', 'by'].map((h) => el('th', {}, h))),
        ...timeline.map((t) => el('tr', { data: { change: t.change } },
          el('td', {}, fmtTime(t.at_ms)), el('td', {}, t.change), el('td', {}, t.text), el('td', {}, t.author)))),
      ...actions);
  }

  // ---- start ---------------------------------------------------------------------------

  document.getElementById('signout').addEventListener('click', async () => {
    try {
      await api('/ui/session', { method: 'DELETE' });
    } finally {
      signedOut();
    }
  });
  window.addEventListener('hashchange', () => route());
  // When a view was asked for (a click on a link changes the hash first).
  document.addEventListener('click', () => {
    app.navigatedAt = performance.now();
  }, true);
  (async () => {
    try {
      const who = await api('/ui/session');
      if (who && who.role) await started(who.role);
      else showLogin('');
    } catch (e) {
      showLogin(e.status === 401 ? '' : e.message);
    }
  })();
})();
