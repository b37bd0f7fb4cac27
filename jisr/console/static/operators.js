/* The operators' console: indicators with charts and CSV, campaigns (from an example to a
 * followed run), contacts (search, consent history, reminder topics, import), programmes and calendars (read
 * only), accounts and API tokens (admins).
 *
 * One script for the five pages; the body's data-page ("operators-<section>") says which to
 * build. Built on shell.js (Jisr.el, Jisr.api): every value from the server is set as text or
 * as an attribute, never as markup, and the charts are SVG elements made here (no library,
 * nothing from another site: the Content-Security-Policy allows neither).
 */
(function () {
  'use strict';
  const { t, el, clear, flash, api, time } = window.Jisr;
  const SECTION = (document.body.dataset.page || '').replace(/^operators-/, '');
  const BASE = '/console/operators';
  const API = '/api/operators';
  const COUNTRIES = ['FR', 'ES', 'IT', 'DE', 'BE', 'NL', 'DZ', 'CI'];
  const LANGUAGES = ['ar', 'ary', 'fr', 'es', 'it', 'de'];
  const SVG_NS = 'http://www.w3.org/2000/svg';
  const COLORS = ['#1f6f5c', '#d08c00', '#3b6fb6', '#b3261e', '#7b5ea7', '#2a9d8f', '#5b6678', '#e76f51'];
  const POLL_MS = 3000;
  const MAX_BARS = 12;
  const DEFAULT_DAYS = 30;
  const main = document.getElementById('main');
  if (!main || !SECTION || SECTION === 'forbidden' || SECTION === 'not-found') return;

  // --- Small helpers ----------------------------------------------------------------------------
  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.appendChild(typeof child === 'string' || typeof child === 'number' ? document.createTextNode(String(child)) : child);
    }
    return node;
  }

  /** Empty ``node`` and put ``children`` in it, skipping nulls (Element.append would write "null"). */
  function fill(node, ...children) {
    clear(node);
    for (const child of children) if (child !== null && child !== undefined && child !== false) node.append(child);
    return node;
  }

  function field(label, input) {
    return el('label', { className: 'field' }, label, input);
  }

  function selectOf(name, options, value) {
    const node = el('select', { name, id: 'op-' + name }, options.map(([v, label]) => el('option', { value: v, text: label })));
    node.value = value || '';
    return node;
  }

  function countryOptions(account) {
    const mine = account.role === 'admin' || account.countries.includes('*') ? COUNTRIES : account.countries;
    return [['', t('operators.any_country')], ...mine.map(code => [code, code])];
  }

  function short(text, max) {
    const value = String(text === null || text === undefined ? '' : text);
    return value.length > max ? value.slice(0, max - 1) + '…' : value;
  }

  function dl(pairs) {
    const list = el('dl', { className: 'profile' });
    for (const [label, value] of pairs) {
      list.append(el('dt', { text: label }), el('dd', { text: value === null || value === undefined || value === '' ? '—' : String(value), dir: 'auto' }));
    }
    return list;
  }

  /** A catalogue text with each {value} in its own <bdi>: a value takes the direction of its
   * own first letter, so a Latin source name or a date keeps its order inside an Arabic sentence
   * (and an Arabic date, "05/12 06:20 م", reads right to left inside a Latin one). */
  function isolated(key, vars) {
    return t(key).split(/\{(\w+)\}/).map((part, index) => {
      if (index % 2 === 0) return part;
      const value = vars[part];
      return value === undefined || value === null ? '{' + part + '}' : el('bdi', { text: value });
    });
  }

  function table(columns, rows, onRow) {
    const head = el('tr', {}, columns.map(column => el('th', { text: column, attrs: { scope: 'col' } })));
    const body = el('tbody', {}, rows.map((row, index) => {
      const tr = el('tr', {}, row.map(cell => el('td', { text: cell === null || cell === undefined ? '' : String(cell), dir: 'auto' })));
      if (onRow) {
        tr.className = 'clickable';
        tr.tabIndex = 0;
        tr.addEventListener('click', () => onRow(index));
        tr.addEventListener('keydown', event => { if (event.key === 'Enter') onRow(index); });
      }
      return tr;
    }));
    return el('div', { className: 'table-wrap' }, el('table', { className: 'data' }, el('thead', {}, head), body));
  }

  /** The server's reason for a refusal: a string, or {message, errors: [...]} (imports). */
  function detailOf(data, fallback) {
    if (!data || data.detail === undefined) return { message: fallback, errors: [] };
    const detail = data.detail;
    if (typeof detail === 'string') return { message: detail, errors: [] };
    if (Array.isArray(detail)) return { message: detail.map(item => (item.loc ? item.loc.join('.') + ': ' : '') + item.msg).join('; '), errors: [] };
    return { message: String(detail.message || ''), errors: Array.isArray(detail.errors) ? detail.errors.map(String) : [] };
  }

  let csrfPromise = null;
  function csrfToken() {
    if (!csrfPromise) {
      csrfPromise = api('GET', '/api/auth/me').then(data => (data && data.csrf_token) || '');
      csrfPromise.catch(() => { csrfPromise = null; });
    }
    return csrfPromise;
  }

  /** POST a text body (a campaign's YAML, a CSV list): the shell's api() sends JSON only. */
  async function sendText(path, text, contentType) {
    const headers = { Accept: 'application/json', 'Content-Type': contentType };
    const token = await csrfToken();
    if (token) headers['X-CSRF-Token'] = token;
    let response;
    try {
      response = await fetch(path, { method: 'POST', headers, body: text, credentials: 'same-origin', cache: 'no-store' });
    } catch (error) {
      flash(t('shell.error.network'), 'error');
      throw new Jisr.ApiError(0, String(error));
    }
    let data = null;
    try { data = await response.json(); } catch (error) { data = null; }
    if (response.ok) return data;
    if (response.status === 401) Jisr.toLogin();
    const detail = detailOf(data, response.statusText || String(response.status));
    const error = new Jisr.ApiError(response.status, detail.message);
    error.errors = detail.errors;
    throw error;
  }

  function errorBox(error) {
    const box = el('div', { className: 'result result-error', attrs: { role: 'alert' } });
    box.appendChild(el('p', { text: t('operators.refused', { status: error.status, detail: error.detail }) }));
    if (error.errors && error.errors.length) box.appendChild(el('ul', { className: 'errors' }, error.errors.map(line => el('li', { text: line, dir: 'auto' }))));
    return box;
  }

  // --- Tabs -----------------------------------------------------------------------------------------
  function tabs(account) {
    const sections = ['dashboard', 'campaigns', 'contacts', 'content'];
    if (account.role === 'admin') sections.push('accounts');
    return el('nav', { className: 'op-tabs', attrs: { 'aria-label': t('operators.title') } },
      sections.map(section => el('a', {
        href: section === 'dashboard' ? BASE : BASE + '/' + section,
        text: t('operators.nav.' + section),
        className: section === SECTION ? 'op-tab current' : 'op-tab',
        attrs: section === SECTION ? { 'aria-current': 'page' } : {},
      })));
  }

  // --- Charts -----------------------------------------------------------------------------------------
  function number(value) {
    const n = Number(value);
    return Number.isFinite(n) ? n : 0;
  }

  function label(column) {
    const key = 'operators.column.' + column;
    const text = t(key);
    return text === key ? column : text;
  }

  /** Horizontal bars, one group per label (summed over the rows that share it), one bar per value column. */
  function barChart(indicator) {
    const columns = indicator.columns;
    const at = column => columns.indexOf(column);
    const labelAt = at(indicator.chart.label);
    const values = indicator.chart.values.filter(column => at(column) >= 0);
    const groups = new Map();
    for (const row of indicator.rows) {
      const key = String(row[labelAt] === null ? '?' : row[labelAt]);
      const sums = groups.get(key) || values.map(() => 0);
      values.forEach((column, i) => { sums[i] += number(row[at(column)]); });
      groups.set(key, sums);
    }
    const entries = [...groups.entries()].sort((a, b) => b[1].reduce((x, y) => x + y, 0) - a[1].reduce((x, y) => x + y, 0)).slice(0, MAX_BARS);
    const max = Math.max(1, ...entries.flatMap(([, sums]) => sums));
    // Drawn at a phone's width (1 unit ≈ 1 px at 360 px), so the text stays legible there.
    const barHeight = 13;
    const groupHeight = values.length * barHeight + 10;
    const width = 360;
    const labelWidth = 120;
    const plot = width - labelWidth - 34;
    const height = entries.length * groupHeight + 4;
    const chart = svg('svg', { viewBox: `0 0 ${width} ${height}`, class: 'chart', role: 'img', 'aria-label': indicator.title, preserveAspectRatio: 'xMinYMin meet' });
    entries.forEach(([key, sums], row) => {
      const y = row * groupHeight + 4;
      chart.appendChild(svg('text', { x: labelWidth - 6, y: y + (values.length * barHeight) / 2 + 4, 'text-anchor': 'end', class: 'chart-label' }, short(key, 19), svg('title', {}, key)));
      sums.forEach((value, i) => {
        const w = Math.max(value > 0 ? 2 : 0, Math.round((value / max) * plot));
        const bar = svg('rect', { x: labelWidth, y: y + i * barHeight, width: w, height: barHeight - 2, rx: 2, fill: COLORS[i % COLORS.length] },
          svg('title', {}, `${key} — ${label(values[i])}: ${value}`));
        chart.appendChild(bar);
        chart.appendChild(svg('text', { x: labelWidth + w + 4, y: y + i * barHeight + barHeight - 3, class: 'chart-value' }, String(Math.round(value * 10) / 10)));
      });
    });
    return el('figure', { className: 'chart-box' }, chart, values.length > 1 ? legendOf(values) : null);
  }

  function legendOf(names) {
    return el('ul', { className: 'legend' }, names.map((name, index) => el('li', {},
      svg('svg', { width: 12, height: 12, 'aria-hidden': 'true' }, svg('rect', { width: 12, height: 12, rx: 2, fill: COLORS[index % COLORS.length] })),
      ' ' + label(name))));
  }

  /** Days from the first to the last of ``days`` ("YYYY-MM-DD", sorted), so a day without any
   * event shows as 0 instead of being skipped; other labels are returned as they are. */
  function dayRange(days) {
    if (!days.length || !days.every(day => /^\d{4}-\d{2}-\d{2}$/.test(day))) return days;
    const all = [];
    const last = Date.parse(days[days.length - 1] + 'T00:00:00Z');
    for (let at = Date.parse(days[0] + 'T00:00:00Z'); at <= last && all.length <= 800; at += 86400000) {
      all.push(new Date(at).toISOString().slice(0, 10));
    }
    return all;
  }

  /** A line per series (e.g. per channel) over the label column (days). */
  function lineChart(indicator) {
    const columns = indicator.columns;
    const at = column => columns.indexOf(column);
    const xAt = at(indicator.chart.label);
    const yAt = at(indicator.chart.values[0]);
    const seriesAt = indicator.chart.series ? at(indicator.chart.series) : -1;
    const xs = dayRange([...new Set(indicator.rows.map(row => String(row[xAt])))].sort());
    const series = new Map();
    for (const row of indicator.rows) {
      const name = seriesAt >= 0 ? String(row[seriesAt]) : label(indicator.chart.values[0]);
      const points = series.get(name) || new Map();
      points.set(String(row[xAt]), (points.get(String(row[xAt])) || 0) + number(row[yAt]));
      series.set(name, points);
    }
    const names = [...series.keys()].sort();
    const max = Math.max(1, ...[...series.values()].flatMap(points => [...points.values()]));
    const width = 360, height = 180, left = 30, bottom = 24, top = 10, right = 10;
    const plotW = width - left - right, plotH = height - top - bottom;
    const x = i => left + (xs.length === 1 ? plotW / 2 : (i * plotW) / (xs.length - 1));
    const y = v => top + plotH - (v / max) * plotH;
    const chart = svg('svg', { viewBox: `0 0 ${width} ${height}`, class: 'chart', role: 'img', 'aria-label': indicator.title });
    chart.appendChild(svg('line', { x1: left, y1: top + plotH, x2: left + plotW, y2: top + plotH, class: 'chart-axis' }));
    chart.appendChild(svg('line', { x1: left, y1: top, x2: left, y2: top + plotH, class: 'chart-axis' }));
    chart.appendChild(svg('text', { x: left - 4, y: top + 8, 'text-anchor': 'end', class: 'chart-value' }, String(max)));
    chart.appendChild(svg('text', { x: left - 4, y: top + plotH, 'text-anchor': 'end', class: 'chart-value' }, '0'));
    if (xs.length) {
      chart.appendChild(svg('text', { x: left, y: height - 8, class: 'chart-value' }, xs[0]));
      if (xs.length > 1) chart.appendChild(svg('text', { x: left + plotW, y: height - 8, 'text-anchor': 'end', class: 'chart-value' }, xs[xs.length - 1]));
    }
    names.forEach((name, index) => {
      const points = series.get(name);
      const color = COLORS[index % COLORS.length];
      const path = xs.map((day, i) => `${i ? 'L' : 'M'}${x(i).toFixed(1)},${y(points.get(day) || 0).toFixed(1)}`).join(' ');
      chart.appendChild(svg('path', { d: path, fill: 'none', stroke: color, 'stroke-width': 2 }));
      xs.forEach((day, i) => {
        const value = points.get(day) || 0;
        chart.appendChild(svg('circle', { cx: x(i).toFixed(1), cy: y(value).toFixed(1), r: 3, fill: color }, svg('title', {}, `${day} — ${name}: ${value}`)));
      });
    });
    return el('figure', { className: 'chart-box' }, chart, legendOf(names));
  }

  function chartOf(indicator) {
    if (!indicator.rows.length) return el('p', { className: 'muted empty', text: t('operators.no_data') });
    return indicator.chart.kind === 'line' ? lineChart(indicator) : barChart(indicator);
  }

  // --- Dashboard ---------------------------------------------------------------------------------------
  function dashboard(account) {
    const since = el('input', { type: 'date', name: 'since', id: 'op-since' });
    const until = el('input', { type: 'date', name: 'until', id: 'op-until' });
    const country = selectOf('country', countryOptions(account), '');
    const params = new URLSearchParams(location.search);
    // By default the last 30 days: all time reads the whole message log on every visit.
    const monthAgo = new Date(Date.now() - DEFAULT_DAYS * 86400000).toISOString().slice(0, 10);
    since.value = params.has('since') || params.has('until') ? (params.get('since') || '') : monthAgo;
    until.value = params.get('until') || '';
    country.value = params.get('country') || '';
    const scopeLine = el('p', { className: 'muted', id: 'op-scope' });
    const list = el('div', { className: 'indicators', id: 'indicators' });
    const form = el('form', { className: 'card op-filters', on: { submit: event => { event.preventDefault(); load(); } } },
      field(t('operators.since'), since), field(t('operators.until'), until), field(t('operators.country'), country),
      el('button', { type: 'submit', className: 'btn', text: t('operators.apply') }));
    main.append(form, scopeLine, list);

    function query() {
      const q = new URLSearchParams();
      if (since.value) q.set('since', since.value);
      if (until.value) q.set('until', until.value);
      if (country.value) q.set('country', country.value);
      return q;
    }

    async function load() {
      const q = query();
      history.replaceState(null, '', BASE + (q.toString() ? '?' + q : ''));
      clear(list).appendChild(el('p', { className: 'muted', text: t('shell.loading') }));
      let data;
      try {
        data = await api('GET', API + '/indicators?' + q);
      } catch (error) {
        clear(list);
        return;
      }
      scopeLine.textContent = t('operators.scope', {
        since: data.scope.since ? data.scope.since.slice(0, 10) : '…',
        until: data.scope.until ? data.scope.until.slice(0, 10) : '…',
        countries: data.scope.countries.join(', '),
      });
      clear(list);
      for (const indicator of data.indicators) list.appendChild(indicatorCard(indicator, q));
    }

    load();
  }

  /** The note in the console's language (the catalog's, with the server's figures), else the server's English. */
  function noteOf(indicator) {
    const key = 'operators.note.' + indicator.name;
    const text = t(key, indicator.note_values || {});
    return text === key ? indicator.note : text;
  }

  function indicatorCard(indicator, q) {
    const csv = el('a', { className: 'btn btn-quiet csv', href: `${API}/indicators/${encodeURIComponent(indicator.name)}.csv${q.toString() ? '?' + q : ''}`, text: t('operators.csv'), attrs: { download: '' } });
    const rows = indicator.rows.map(row => row.map(cell => (cell === null ? '—' : cell)));
    return el('section', { className: 'card indicator', dataset: { name: indicator.name } },
      el('div', { className: 'indicator-head' }, el('h2', { text: t('operators.indicator.' + indicator.name) }), csv),
      el('p', { className: 'muted note', text: noteOf(indicator) }),
      chartOf(indicator),
      indicator.rows.length ? el('details', {}, el('summary', { text: t('operators.table', { n: indicator.rows.length }) }), table(indicator.columns.map(label), rows)) : null);
  }

  // --- Campaigns -----------------------------------------------------------------------------------
  function campaigns() {
    const examples = selectOf('example', [['', t('operators.campaigns.pick_example')]], '');
    const editor = el('textarea', { id: 'campaign-text', name: 'campaign', attrs: { rows: 18, spellcheck: 'false', dir: 'ltr', 'aria-label': t('operators.campaigns.editor') } });
    const result = el('div', { id: 'campaign-result', attrs: { 'aria-live': 'polite' } });
    const runsBox = el('div', { id: 'runs' });
    const follow = el('div', { id: 'follow', className: 'card', hidden: true, attrs: { 'aria-live': 'polite' } });
    let exampleTexts = new Map();
    let followTimer = null;

    const button = (id, text, handler, extra) => el('button', { type: 'button', id, className: 'btn' + (extra ? ' ' + extra : ''), text, on: { click: handler } });
    main.append(
      el('section', { className: 'card' },
        el('h2', { text: t('operators.campaigns.new') }),
        el('p', { className: 'muted', text: t('operators.campaigns.help') }),
        el('div', { className: 'row' }, field(t('operators.campaigns.example'), examples),
          button('load-example', t('operators.campaigns.load'), loadExample, 'btn-quiet')),
        editor,
        el('div', { className: 'actions' },
          button('validate', t('operators.campaigns.validate'), () => run('validate')),
          button('preview', t('operators.campaigns.preview'), () => run('preview')),
          button('schedule', t('operators.campaigns.schedule'), () => run('schedule'), 'btn-danger')),
        result),
      follow,
      el('section', { className: 'card' },
        el('div', { className: 'indicator-head' }, el('h2', { text: t('operators.campaigns.runs') }),
          button('refresh-runs', t('operators.refresh'), loadRuns, 'btn-quiet')),
        runsBox));

    async function loadExamples() {
      const data = await api('GET', API + '/campaigns/examples');
      exampleTexts = new Map(data.examples.map(example => [example.name, example.text]));
      for (const example of data.examples) examples.appendChild(el('option', { value: example.name, text: `${example.title} (${example.name}.yml)` }));
    }

    function loadExample() {
      if (!examples.value) return;
      editor.value = exampleTexts.get(examples.value) || '';
      clear(result);
    }

    async function run(action) {
      const text = editor.value;
      if (!text.trim()) { flash(t('operators.campaigns.empty'), 'error'); return; }
      if (action === 'schedule' && !window.confirm(t('operators.campaigns.confirm_schedule'))) return;
      clear(result).appendChild(el('p', { className: 'muted', text: t('shell.loading') }));
      try {
        const data = await sendText(`/api/campaigns/${action}?name=${encodeURIComponent((examples.value || 'campaign') + '.yml')}`, text, 'application/yaml');
        clear(result).appendChild(campaignOutcome(action, data));
        if (action === 'schedule') {
          await loadRuns();
          const ids = Object.values(data.runs || {});
          if (ids.length) followRun(ids[0]);
        }
      } catch (error) {
        clear(result).appendChild(errorBox(error));
      }
    }

    function campaignOutcome(action, data) {
      if (action === 'validate') return el('p', { className: 'result result-ok', text: t('operators.campaigns.valid', { campaign: data.campaign }) });
      const counts = obj => Object.entries(obj || {}).map(([k, v]) => `${k}: ${v}`).join(', ') || '—';
      const box = el('div', { className: 'result result-ok' },
        dl([
          [t('operators.campaigns.planned'), data.planned],
          [t('operators.campaigns.occurrences'), (data.occurrences || []).join(', ')],
          [t('operators.column.country'), counts(data.by_country)],
          [t('operators.column.language'), counts(data.by_language)],
          [t('operators.column.channel'), counts(data.by_channel)],
          [t('operators.campaigns.excluded'), counts(data.excluded)],
          [t('operators.campaigns.first_send'), data.first_send],
          [t('operators.campaigns.last_send'), data.last_send],
          [t('operators.campaigns.duration'), Jisr.duration(data.estimated_seconds)],
        ]));
      if (action === 'preview' && data.messages && Object.keys(data.messages).length) {
        box.appendChild(el('h3', { text: t('operators.campaigns.messages') }));
        for (const [language, text] of Object.entries(data.messages)) {
          box.appendChild(el('div', { className: 'preview-message' }, el('span', { className: 'badge', text: language }), el('p', { text, dir: 'auto' })));
        }
      }
      if (action === 'schedule') {
        box.appendChild(el('p', { text: t('operators.campaigns.scheduled', { inserted: data.inserted, enqueued: data.enqueued }) }));
      }
      return box;
    }

    async function loadRuns() {
      let data;
      try { data = await api('GET', API + '/campaigns/runs'); } catch (error) { return; }
      clear(runsBox);
      if (!data.runs.length) { runsBox.appendChild(el('p', { className: 'muted', text: t('operators.campaigns.no_runs') })); return; }
      runsBox.appendChild(el('ul', { className: 'runs' }, data.runs.map(runItem)));
    }

    function runItem(run) {
      const settled = run.delivered + run.read + run.failed + run.skipped + run.sent;
      return el('li', { className: 'run', dataset: { run: run.run } },
        el('div', { className: 'run-head' },
          el('strong', { text: `#${run.run} ${run.campaign}` }),
          el('span', { className: 'badge state-' + run.state, text: t('operators.state.' + run.state) })),
        el('div', { className: 'muted', text: `${run.occurrence} · ${t('operators.campaigns.sent_of', { n: settled, total: run.total })}` }),
        el('div', { className: 'actions' },
          el('button', { type: 'button', className: 'btn btn-quiet', text: t('operators.campaigns.follow'), on: { click: () => followRun(run.run) } }),
          control(run.run, 'pause'), control(run.run, 'resume'), control(run.run, 'cancel'),
          el('button', { type: 'button', className: 'btn btn-quiet', text: t('operators.campaigns.report'), on: { click: () => showReport(run.run) } })));
    }

    function control(runId, action) {
      return el('button', {
        type: 'button', className: 'btn btn-quiet', text: t('operators.campaigns.' + action), dataset: { action },
        on: {
          click: async () => {
            if (action === 'cancel' && !window.confirm(t('operators.campaigns.confirm_cancel'))) return;
            try {
              const data = await api('POST', `/api/campaigns/runs/${runId}/${action}`);
              flash(t('operators.campaigns.now_state', { run: runId, state: t('operators.state.' + data.state) }), 'ok');
            } catch (error) { /* the shell showed why */ }
            loadRuns();
            followRun(runId);
          },
        },
      });
    }

    function followRun(runId) {
      clearTimeout(followTimer);
      follow.hidden = false;
      const tick = async () => {
        let status;
        try {
          status = await api('GET', `/api/campaigns/runs/${runId}`, undefined, { quiet: true });
        } catch (error) {
          clear(follow).appendChild(el('p', { className: 'muted', text: t('operators.campaigns.follow_failed', { run: runId }) }));
          return;
        }
        const bar = el('progress', { id: 'run-progress', attrs: { max: 1, value: status.progress } });
        fill(follow,
          el('h2', { text: t('operators.campaigns.progress_of', { run: status.run, campaign: status.campaign }) }),
          el('p', {}, el('span', { className: 'badge state-' + status.state, id: 'run-state', text: t('operators.state.' + status.state) }),
            ' ' + t('operators.campaigns.progress', { percent: Math.round(status.progress * 100), total: status.total })),
          bar,
          dl(Object.entries(status.by_status).map(([name, n]) => [label(name), n])));
        if (['done', 'cancelled'].includes(status.state)) { loadRuns(); return; }
        followTimer = setTimeout(tick, POLL_MS);
      };
      tick();
    }

    async function showReport(runId) {
      let report;
      try { report = await api('GET', `/api/campaigns/runs/${runId}/report`); } catch (error) { return; }
      clearTimeout(followTimer);
      follow.hidden = false;
      const counts = obj => Object.entries(obj || {}).map(([k, v]) => `${k}: ${v}`).join(', ') || '—';
      fill(follow,
        el('div', { className: 'indicator-head' },
          el('h2', { text: t('operators.campaigns.report_of', { run: report.run, campaign: report.campaign }) }),
          el('a', { className: 'btn btn-quiet', href: `/api/campaigns/runs/${runId}/report.csv`, text: t('operators.csv'), attrs: { download: '' } })),
        dl([
          [t('operators.column.total'), report.total], [t('operators.column.sent'), report.sent], [t('operators.column.delivered'), report.delivered],
          [t('operators.column.read'), report.read], [t('operators.column.failed'), report.failed], [t('operators.column.queued'), report.queued],
          [t('operators.campaigns.failed_by_reason'), counts(report.failed_by_reason)],
          [t('operators.campaigns.skipped_by_reason'), counts(report.skipped_by_reason)],
          [t('operators.campaigns.replied_after'), report.replied_after], [t('operators.campaigns.opted_out_after'), report.opted_out_after],
        ]));
    }

    loadExamples().catch(() => {});
    loadRuns();
  }

  // --- Contacts ---------------------------------------------------------------------------------------
  function contacts(account) {
    const q = el('input', { type: 'search', name: 'q', id: 'op-q', attrs: { maxlength: 100, autocomplete: 'off' }, placeholder: t('operators.contacts.search_hint') });
    const country = selectOf('country', countryOptions(account), '');
    const language = selectOf('language', [['', t('operators.any')], ...LANGUAGES.map(code => [code, code])], '');
    const consent = selectOf('consent', [['', t('operators.any')], ...['opted_in', 'opted_out', 'unknown'].map(v => [v, t('operators.consent.' + v)])], '');
    const channel = selectOf('channel', [['', t('operators.any')], ...['whatsapp', 'telegram', 'messenger', 'webchat'].map(v => [v, v])], '');
    const results = el('div', { id: 'contacts' });
    const detail = el('section', { className: 'card', id: 'contact-detail', hidden: true, attrs: { 'aria-live': 'polite' } });
    let page = 1;

    const file = el('input', { type: 'file', id: 'import-file', attrs: { accept: '.csv,text/csv' } });
    const basis = el('input', { type: 'text', id: 'import-basis', attrs: { maxlength: 500 }, placeholder: t('operators.contacts.basis_hint') });
    const dryRun = el('input', { type: 'checkbox', id: 'import-dry-run' });
    dryRun.checked = true;
    const importResult = el('div', { id: 'import-result', attrs: { 'aria-live': 'polite' } });

    main.append(
      el('form', { className: 'card op-filters', on: { submit: event => { event.preventDefault(); page = 1; search(); } } },
        field(t('operators.contacts.search'), q), field(t('operators.country'), country), field(t('operators.column.language'), language),
        field(t('operators.column.consent'), consent), field(t('operators.column.channel'), channel),
        el('button', { type: 'submit', className: 'btn', text: t('operators.contacts.find') })),
      results, detail,
      el('section', { className: 'card' },
        el('h2', { text: t('operators.contacts.import') }),
        el('p', { className: 'muted', text: t('operators.contacts.import_help') }),
        field(t('operators.contacts.file'), file), field(t('operators.contacts.basis'), basis),
        el('label', { className: 'check' }, dryRun, ' ' + t('operators.contacts.dry_run')),
        el('div', { className: 'actions' }, el('button', { type: 'button', id: 'import', className: 'btn', text: t('operators.contacts.import_button'), on: { click: importList } })),
        importResult));

    async function search() {
      const params = new URLSearchParams({ page: String(page) });
      for (const [name, input] of [['q', q], ['country', country], ['language', language], ['consent', consent], ['channel', channel]]) {
        if (input.value.trim()) params.set(name, input.value.trim());
      }
      let data;
      try { data = await api('GET', API + '/contacts?' + params); } catch (error) { return; }
      clear(results);
      results.appendChild(el('p', { className: 'muted', id: 'contacts-total', text: t('operators.contacts.found', { n: data.total }) }));
      if (!data.contacts.length) return;
      const columns = ['id', 'address', 'channel', 'country', 'language', 'role', 'consent', 'last_inbound_at'];
      results.appendChild(table(columns.map(label), data.contacts.map(c => columns.map(name => (name === 'last_inbound_at' ? time(c[name]) : name === 'consent' ? t('operators.consent.' + c[name]) : c[name]))),
        index => openContact(data.contacts[index].id)));
      const pages = Math.ceil(data.total / data.page_size);
      if (pages > 1) {
        results.appendChild(el('div', { className: 'actions' },
          el('button', { type: 'button', className: 'btn btn-quiet mirror-rtl', text: '←', disabled: page <= 1, on: { click: () => { page -= 1; search(); } } }),
          el('span', { className: 'muted', text: t('operators.contacts.page', { page, pages }) }),
          el('button', { type: 'button', className: 'btn btn-quiet mirror-rtl', text: '→', disabled: page >= pages, on: { click: () => { page += 1; search(); } } })));
      }
    }

    async function openContact(id) {
      detail.hidden = false;
      clear(detail).appendChild(el('p', { className: 'muted', text: t('shell.loading') }));
      let data;
      try {
        data = await api('GET', `${API}/contacts/${id}`, undefined, { handles: [403, 404] });
      } catch (error) {
        clear(detail).appendChild(el('p', { className: 'denied', text: error.status === 403 ? t('operators.contacts.denied') : error.detail }));
        return;
      }
      const c = data.contact;
      fill(detail,
        el('h2', { text: t('operators.contacts.contact', { id: c.id }) }),
        dl([
          [label('address'), c.address], [label('channel'), c.channel], [label('country'), c.country], [label('region'), c.region],
          [label('language'), c.language], [label('role'), c.role], [label('school_level'), c.school_level], [label('consent'), t('operators.consent.' + c.consent)],
          [label('created_at'), time(c.created_at)], [label('last_inbound_at'), time(c.last_inbound_at)],
          [t('operators.contacts.messages'), `${c.messages_in} / ${c.messages_out}`],
        ]),
        data.linked.length ? el('p', { className: 'muted', text: t('operators.contacts.linked', { list: data.linked.map(l => `#${l.id} ${l.address}`).join(', ') }) }) : null,
        data.topics ? topicsOf(data.topics) : null,
        el('h3', { text: t('operators.contacts.history') }),
        data.consent_history.length
          ? table(['at', 'consent', 'source', 'basis', 'channel'].map(label), data.consent_history.map(e => [time(e.at), t('operators.consent.' + e.consent), e.source, e.basis, e.channel]))
          : el('p', { className: 'muted', text: t('operators.contacts.no_history') }));
    }

    /** Which reminder topics the family receives (the API applies the campaigns' rule), and its stops. */
    function topicsOf(topics) {
      // A topic this console has no name for (added on the server since) shows as its id.
      const name = id => (t('operators.topics.' + id) === 'operators.topics.' + id ? id : t('operators.topics.' + id));
      const names = ids => ids.map(name).join(t('operators.contacts.list_separator'));
      const line = topics.receives.length
        ? el('p', { id: 'contact-topics' }, isolated('operators.contacts.receives', { topics: names(topics.receives) }),
          topics.mode === 'all_by_default' ? el('span', { className: 'muted', text: ' ' + t('operators.contacts.all_by_default') }) : null)
        : el('p', { id: 'contact-topics' }, isolated('operators.contacts.receives_none', { reason: t('operators.contacts.none_' + topics.none_because) }));
      const stops = topics.stopped.map(s => el('li', {}, isolated('operators.contacts.stopped', {
        topic: name(s.topic), at: time(s.at), how: [s.source, s.channel].filter(Boolean).join(' · '),
      })));
      return el('div', { id: 'contact-topics-section' },
        el('h3', { text: t('operators.contacts.topics') }), line,
        stops.length ? el('ul', { id: 'contact-topic-stops' }, stops) : null);
    }

    async function importList() {
      const chosen = file.files && file.files[0];
      if (!chosen) { flash(t('operators.contacts.pick_file'), 'error'); return; }
      const params = new URLSearchParams({ name: chosen.name.replace(/[\\/]/g, '_').slice(0, 120) || 'contacts.csv', dry_run: dryRun.checked ? 'true' : 'false' });
      if (basis.value.trim()) params.set('basis', basis.value.trim());
      clear(importResult).appendChild(el('p', { className: 'muted', text: t('shell.loading') }));
      try {
        const report = await sendText(`${API}/contacts/import?${params}`, await chosen.text(), 'text/csv');
        clear(importResult).appendChild(el('div', { className: report.rejected ? 'result result-warn' : 'result result-ok' },
          el('p', { text: report.summary }),
          report.errors.length ? el('ul', { className: 'errors' }, report.errors.map(line => el('li', { text: line, dir: 'auto' }))) : null));
        if (!report.dry_run) search();
      } catch (error) {
        clear(importResult).appendChild(errorBox(error));
      }
    }

    search();
  }

  // --- Programmes and calendars ------------------------------------------------------------------------
  function content(account) {
    const country = selectOf('country', countryOptions(account), '');
    const box = el('div', { id: 'content' });
    main.append(el('form', { className: 'card op-filters', on: { submit: event => event.preventDefault() } }, field(t('operators.country'), country)), box);
    let data = null;

    function name(names) {
      return names[Jisr.language] || names.fr || Object.values(names)[0] || '';
    }

    function render() {
      clear(box);
      const code = country.value;
      box.appendChild(el('p', { className: 'result result-info', id: 'edited-in', text: t('operators.content.edited_in', { programmes: data.edited_in.programmes, calendars: data.edited_in.calendars }) }));
      box.appendChild(el('h2', { text: t('operators.content.calendars') }));
      for (const calendar of data.calendars.filter(c => !code || c.country === code)) {
        const rows = calendar.events.map(e => [name(e.names), e.kind, e.first_day === e.last_day ? e.first_day : `${e.first_day} → ${e.last_day}`,
          e.confirmed ? t('operators.content.confirmed') : t('operators.content.to_confirm'), Object.keys(e.regions).join(' ')]);
        box.appendChild(el('details', { className: 'card calendar', dataset: { country: calendar.country } },
          el('summary', { text: `${calendar.country} ${calendar.school_year} — ${calendar.file}` }),
          el('p', { className: 'muted', text: t('operators.content.source', { source: calendar.source, reviewed: calendar.reviewed }) }),
          table([t('operators.content.event'), t('operators.content.kind'), t('operators.content.dates'), t('operators.content.status'), t('operators.column.region')], rows)));
      }
      box.appendChild(el('h2', { text: t('operators.content.programmes') }));
      const programmes = data.programmes.filter(p => !code || p.countries.includes(code) || p.countries.includes('all'));
      box.appendChild(el('ul', { className: 'programmes' }, programmes.map(p => el('li', { className: 'card' },
        el('strong', { text: name(p.names), dir: 'auto' }),
        el('p', { className: 'muted', text: `${p.countries.join(', ')} · ${p.audience.join(', ')} · ${p.topics.join(', ')}` }),
        el('p', { text: name(p.how_to_join), dir: 'auto' }),
        p.contact ? el('p', { className: 'muted', text: t('operators.content.contact', { contact: p.contact }) }) : null))));
    }

    country.addEventListener('change', () => data && render());
    api('GET', API + '/content').then(result => { data = result; render(); }).catch(() => {});
  }

  // --- Accounts and roles (admins) ----------------------------------------------------------------------
  function accounts() {
    const list = el('div', { id: 'accounts' });
    const tokens = el('section', { className: 'card', id: 'tokens', hidden: true });
    const input = (name, type, extra) => el('input', { type: type || 'text', name, id: 'new-' + name, attrs: Object.assign({ autocomplete: 'off' }, extra || {}) });
    const fields = {
      username: input('username', 'text', { maxlength: 64 }),
      display_name: input('display_name', 'text', { maxlength: 120 }),
      role: selectOf('role', ['operator', 'mediator', 'admin'].map(r => [r, t('shell.account_role.' + r)]), 'operator'),
      password: input('password', 'password', { autocomplete: 'new-password' }),
      countries: input('countries', 'text', { placeholder: 'FR,BE / *' }),
      languages: input('languages', 'text', { placeholder: 'fr,ar' }),
    };
    main.append(list, tokens,
      el('form', { className: 'card', id: 'new-account', on: { submit: event => { event.preventDefault(); create(); } } },
        el('h2', { text: t('operators.accounts.new') }),
        el('div', { className: 'grid' }, Object.entries(fields).map(([name, node]) => field(t('operators.accounts.' + name), node))),
        el('div', { className: 'actions' }, el('button', { type: 'submit', className: 'btn', text: t('operators.accounts.create') }))));

    async function load() {
      let data;
      try { data = await api('GET', '/api/accounts'); } catch (error) { return; }
      clear(list).appendChild(el('section', { className: 'card' }, el('h2', { text: t('operators.accounts.list') }),
        el('ul', { className: 'runs' }, data.map(accountItem))));
    }

    function accountItem(a) {
      const role = selectOf('role-' + a.id, ['operator', 'mediator', 'admin'].map(r => [r, t('shell.account_role.' + r)]), a.role);
      const countries = el('input', { type: 'text', value: a.countries.join(','), attrs: { 'aria-label': t('operators.accounts.countries') } });
      const languages = el('input', { type: 'text', value: a.languages.join(','), attrs: { 'aria-label': t('operators.accounts.languages') } });
      return el('li', { className: 'run' + (a.active ? '' : ' inactive'), dataset: { account: a.id } },
        el('div', { className: 'run-head' }, el('strong', { text: `${a.display_name} (${a.username})`, dir: 'auto' }),
          el('span', { className: 'badge', text: a.active ? t('operators.accounts.active') : t('operators.accounts.inactive') })),
        el('div', { className: 'grid' }, field(t('operators.accounts.role'), role), field(t('operators.accounts.countries'), countries), field(t('operators.accounts.languages'), languages)),
        el('div', { className: 'actions' },
          el('button', { type: 'button', className: 'btn btn-quiet', text: t('operators.accounts.save'), on: { click: () => update(a.id, { role: role.value, countries: countries.value, languages: languages.value }) } }),
          el('button', { type: 'button', className: 'btn btn-quiet', text: t('operators.accounts.tokens'), on: { click: () => showTokens(a) } }),
          a.active ? el('button', { type: 'button', className: 'btn btn-quiet', text: t('operators.accounts.deactivate'), on: { click: () => deactivate(a) } }) : null));
    }

    async function update(id, body) {
      try { await api('PATCH', `/api/accounts/${id}`, body); flash(t('operators.accounts.saved'), 'ok'); } catch (error) { return; }
      load();
    }

    async function deactivate(a) {
      if (!window.confirm(t('operators.accounts.confirm_deactivate', { name: a.username }))) return;
      try { await api('DELETE', `/api/accounts/${a.id}`); } catch (error) { return; }
      load();
    }

    async function create() {
      const body = Object.fromEntries(Object.entries(fields).map(([name, node]) => [name, node.value]));
      try { await api('POST', '/api/accounts', body); } catch (error) { return; }
      fields.password.value = '';
      flash(t('operators.accounts.created', { name: body.username }), 'ok');
      load();
    }

    async function showTokens(a) {
      let data;
      try { data = await api('GET', `/api/accounts/${a.id}/tokens`); } catch (error) { return; }
      const name = el('input', { type: 'text', attrs: { maxlength: 80, 'aria-label': t('operators.accounts.token_name') }, placeholder: t('operators.accounts.token_name') });
      const shown = el('div', { attrs: { 'aria-live': 'polite' } });
      tokens.hidden = false;
      fill(tokens,
        el('h2', { text: t('operators.accounts.tokens_of', { name: a.username }) }),
        data.length ? table(['id', 'name', 'created_at', 'last_used_at', 'revoked_at'].map(label), data.map(tk => [tk.id, tk.name, time(tk.created_at), time(tk.last_used_at), time(tk.revoked_at)])) : el('p', { className: 'muted', text: t('operators.accounts.no_tokens') }),
        el('div', { className: 'actions' }, ...data.filter(tk => !tk.revoked_at).map(tk => el('button', {
          type: 'button', className: 'btn btn-quiet', text: t('operators.accounts.revoke', { name: tk.name }),
          on: { click: async () => { try { await api('DELETE', `/api/accounts/${a.id}/tokens/${tk.id}`); } catch (error) { return; } showTokens(a); } },
        }))),
        el('div', { className: 'row' }, name, el('button', {
          type: 'button', className: 'btn', text: t('operators.accounts.new_token'),
          on: {
            click: async () => {
              let made;
              try { made = await api('POST', `/api/accounts/${a.id}/tokens`, { name: name.value }); } catch (error) { return; }
              await showTokens(a);
              tokens.appendChild(el('p', { className: 'result result-warn' }, t('operators.accounts.token_once'), ' ', el('code', { text: made.token })));
            },
          },
        })),
        shown);
    }

    load();
  }

  // --- Start ----------------------------------------------------------------------------------------------
  const builders = { dashboard, campaigns, contacts, content, accounts };
  Jisr.me().then(account => {
    main.appendChild(tabs(account));
    const build = builders[SECTION];
    if (build) build(account);
  }).catch(() => { /* 401: the shell sends the person to the login page */ });
})();
