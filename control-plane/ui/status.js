// The public status page: reads /status/{page}/data (no login) and draws each public
// check's state and 90 daily uptime bars, the incidents of those checks and the maintenance
// windows that cover them; refreshes every 30 s.
'use strict';

const page = decodeURIComponent(location.pathname.split('/')[2] || '');
const root = document.getElementById('status');

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === 'class') node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const WORDS = {
  up: 'All systems operational', degraded: 'Partially degraded', down: 'Outage',
  maintenance: 'Under maintenance', pending: 'Waiting for the first results', paused: 'Paused',
};

function pct(share) {
  return share == null ? 'no data' : `${(share * 100).toFixed(share >= 0.9995 ? 0 : 2)} %`;
}

function day(ms) {
  return new Date(ms).toISOString().slice(0, 10);
}

function when(ms) {
  return new Date(ms).toISOString().replace('T', ' ').slice(0, 16) + ' UTC';
}

function barClass(bar) {
  if (bar.uptime == null) return 'b-none';
  if (bar.uptime >= 0.999) return 'b-ok';
  if (bar.uptime >= 0.95) return 'b-minor';
  return 'b-major';
}

function schedule(s) {
  if (s.type === 'once') return `${when(s.starts_at_ms)} – ${when(s.ends_at_ms)}`;
  return `every ${s.days.join(', ')} at ${s.start_utc} UTC for ${s.duration_min} min`;
}

function draw(data) {
  document.title = `Status: ${data.page}`;
  const parts = [
    el('h1', {}, `Status: ${data.page}`),
    el('div', { class: `summary s-${data.state}`, id: 'summary', 'data-state': data.state },
      WORDS[data.state] || data.state),
  ];
  for (const check of data.checks) {
    const bars = el('div', { class: 'bars' });
    for (const bar of check.days) {
      bars.append(el('span', {
        class: barClass(bar),
        title: `${day(bar.day_ms)}: ${pct(bar.uptime)}`,
      }));
    }
    parts.push(el('section', { class: 'check', 'data-check': check.id },
      el('div', { class: 'line' },
        el('strong', {}, check.name),
        el('span', { class: `badge s-${check.state}` }, check.state),
        el('span', { class: 'uptime' }, `${pct(check.uptime)} over 90 days`)),
      bars));
  }
  parts.push(el('h2', {}, 'Incidents'));
  if (data.incidents.length === 0) {
    parts.push(el('p', { class: 'muted', id: 'no-incidents' }, 'No incidents in the last 90 days.'));
  } else {
    const list = el('ul', { id: 'incidents' });
    for (const incident of data.incidents) {
      const span = incident.open
        ? `since ${when(incident.opened_at_ms)}`
        : `${when(incident.opened_at_ms)} – ${when(incident.resolved_at_ms)}`;
      list.append(el('li', { 'data-check': incident.check_id, class: incident.open ? 'open' : 'resolved' },
        el('strong', {}, incident.title), ` (${span})`));
    }
    parts.push(list);
  }
  parts.push(el('h2', {}, 'Maintenance'));
  if (data.maintenance.length === 0) {
    parts.push(el('p', { class: 'muted' }, 'No maintenance scheduled.'));
  } else {
    const list = el('ul', { id: 'maintenance' });
    for (const window of data.maintenance) {
      list.append(el('li', { class: window.active ? 'active' : '' },
        el('strong', {}, window.name), ` ${schedule(window.schedule)}`,
        window.active ? ' (in progress)' : ''));
    }
    parts.push(list);
  }
  parts.push(el('p', { class: 'muted' }, `Updated ${when(data.generated_at_ms)}`));
  root.replaceChildren(...parts);
}

async function load() {
  try {
    const response = await fetch(`/status/${encodeURIComponent(page)}/data`);
    if (response.status === 404) {
      root.replaceChildren(el('p', { class: 'error', id: 'missing' }, 'There is no such status page.'));
      return;
    }
    if (!response.ok) throw new Error(`status ${response.status}`);
    draw(await response.json());
  } catch (error) {
    // One notice, replaced on each failure: a page left open through an outage stays small.
    const notice = document.getElementById('refresh-error') || root.appendChild(el('p', { class: 'error', id: 'refresh-error' }));
    notice.textContent = `Could not refresh: ${error.message}`;
  }
}

load();
setInterval(load, 30000);
