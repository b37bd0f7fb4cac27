/* The consoles' shared script: texts, safe DOM building, the API helper, the nav bar.
 *
 * Safety rule for every console page: data (a family's message, a name, a note) goes into the
 * page through textContent or attribute values set by Jisr.el, never through innerHTML. The
 * Content-Security-Policy (script-src 'self') is the second wall: even markup that slipped in
 * could not run a script.
 */
(function () {
  'use strict';
  const textsNode = document.getElementById('jisr-texts');
  const TEXTS = textsNode ? JSON.parse(textsNode.textContent) : {};
  const LANGUAGE = document.documentElement.lang || 'fr';
  // Dates in the page's language; Arabic with Latin digits, as written in the Maghreb (and as
  // the phone numbers and counts around them are).
  const DATE_LOCALE = LANGUAGE === 'ar' ? 'ar-u-nu-latn' : LANGUAGE;
  const LANGUAGE_COOKIE = 'jisr_console_lang';
  const SAFE_URL = /^(https?:\/\/|mailto:|\/(?!\/)|#|\?)/i;

  /** The text for `key`, with {name} placeholders filled from `vars`; the key itself if missing. */
  function t(key, vars) {
    const text = Object.prototype.hasOwnProperty.call(TEXTS, key) ? TEXTS[key] : key;
    if (!vars) return text;
    return text.replace(/\{(\w+)\}/g, (whole, name) => (vars[name] === undefined || vars[name] === null ? whole : String(vars[name])));
  }

  /** A DOM element. props: className, text, dir, title, hidden, type, value, disabled, attrs {}, dataset {}, on {event: fn}.
   * Children: elements, or strings (added as text nodes), or null (skipped). */
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    const p = props || {};
    if (p.className) node.className = p.className;
    if (p.text !== undefined && p.text !== null) node.textContent = String(p.text);
    for (const name of ['dir', 'title', 'type', 'value', 'name', 'placeholder', 'id', 'htmlFor']) {
      if (p[name] !== undefined && p[name] !== null) node[name] = p[name];
    }
    // A link from data (a family's attachment) may be anything: only web, mail and site links are set.
    if (p.href !== undefined && p.href !== null) {
      if (SAFE_URL.test(String(p.href))) node.href = p.href;
      else console.warn('link not set: not an http(s), mailto or site address');
    }
    if (p.hidden) node.hidden = true;
    if (p.disabled) node.disabled = true;
    for (const [name, value] of Object.entries(p.attrs || {})) {
      if (/^on/i.test(name)) throw new Error('event handler attributes are not allowed: ' + name);
      if (value !== undefined && value !== null && value !== false) node.setAttribute(name, String(value));
    }
    for (const [name, value] of Object.entries(p.dataset || {})) node.dataset[name] = String(value);
    for (const [event, handler] of Object.entries(p.on || {})) node.addEventListener(event, handler);
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.appendChild(typeof child === 'string' || typeof child === 'number' ? document.createTextNode(String(child)) : child);
    }
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
    return node;
  }

  // --- Messages to the person (errors stay until closed; confirmations fade) ------------------
  const flashBox = document.getElementById('flash');
  let flashTimer = null;
  function flash(message, kind) {
    if (!flashBox) return;
    clearTimeout(flashTimer);
    clear(flashBox);
    flashBox.className = 'flash flash-' + (kind || 'info');
    flashBox.appendChild(el('span', { className: 'flash-text', text: message }));
    flashBox.appendChild(el('button', { type: 'button', className: 'btn btn-quiet flash-close', text: '×', title: t('shell.dismiss'), attrs: { 'aria-label': t('shell.dismiss') }, on: { click: () => clearFlash() } }));
    flashBox.setAttribute('role', kind === 'error' ? 'alert' : 'status');
    if (kind !== 'error') flashTimer = setTimeout(clearFlash, 4000);
  }
  function clearFlash() {
    if (!flashBox) return;
    clear(flashBox);
    flashBox.className = 'flash';
  }

  // --- The API helper ----------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, detail) {
      super(detail);
      this.status = status;
      this.detail = detail;
    }
  }

  /** The server's reason, readable: FastAPI's {"detail": "..."} or its 422 list of fields. */
  function detailOf(body, fallback) {
    if (!body || body.detail === undefined) return fallback;
    if (typeof body.detail === 'string') return body.detail;
    if (Array.isArray(body.detail)) {
      return body.detail.map(item => {
        const where = Array.isArray(item.loc) ? item.loc.filter(part => part !== 'body').join('.') : '';
        return (where ? where + ': ' : '') + (item.msg || JSON.stringify(item));
      }).join('; ');
    }
    return JSON.stringify(body.detail);
  }

  function messageFor(status, detail) {
    if (status === 401) return t('shell.error.unauthorized');
    if (status === 403) return t('shell.error.forbidden', { detail });
    if (status === 409) return t('shell.error.conflict', { detail });
    if (status === 400 || status === 422) return t('shell.error.invalid', { detail });
    return t('shell.error.server', { status, detail });
  }

  function toLogin() {
    const next = location.pathname + location.search + location.hash;
    location.assign('/console/login?next=' + encodeURIComponent(next));
  }

  let csrfToken = null;
  let mePromise = null;

  /** The signed-in account ({id, username, display_name, role, countries, languages}), once. */
  function me() {
    if (!mePromise) {
      mePromise = api('GET', '/api/auth/me').then(data => {
        csrfToken = data.csrf_token || (data.account && data.account.csrf_token) || null;
        return data.account || data;
      });
      mePromise.catch(() => { mePromise = null; });
    }
    return mePromise;
  }

  /** Call the API. JSON in, JSON out; POSTs carry X-CSRF-Token. A 401 goes to the login page;
   * 403/409/422 and server errors show their reason in the message area (unless the caller
   * lists the status in opts.handles, to show it its own way) and reject with an ApiError. */
  async function api(method, path, body, opts) {
    const options = opts || {};
    const headers = { Accept: 'application/json' };
    const unsafe = method !== 'GET' && method !== 'HEAD';
    if (unsafe) {
      if (csrfToken === null && path !== '/api/auth/me') {
        try { await me(); } catch (error) { /* the call below reports it */ }
      }
      if (csrfToken) headers['X-CSRF-Token'] = csrfToken;
    }
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    let response;
    try {
      response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), credentials: 'same-origin', cache: 'no-store' });
    } catch (error) {
      if (!options.quiet) flash(t('shell.error.network'), 'error');
      throw new ApiError(0, String(error));
    }
    let data = null;
    const type = response.headers.get('content-type') || '';
    if (type.includes('application/json')) {
      try { data = await response.json(); } catch (error) { data = null; }
    }
    if (response.ok) return data;
    const detail = detailOf(data, response.statusText || String(response.status));
    const handled = (options.handles || []).includes(response.status);
    if (response.status === 401 && !handled) {
      flash(t('shell.error.unauthorized'), 'error');
      toLogin();
    } else if (!handled && !options.quiet) {
      flash(messageFor(response.status, detail), 'error');
    }
    throw new ApiError(response.status, detail);
  }

  // --- Formatting ----------------------------------------------------------------------------
  /** "45 s", "12 min", "2 h 05", "3 d 4 h". */
  function duration(seconds) {
    const s = Math.max(0, Math.floor(Number(seconds) || 0));
    if (s < 60) return t('shell.duration.seconds', { n: s });
    if (s < 3600) return t('shell.duration.minutes', { n: Math.floor(s / 60) });
    if (s < 86400) return t('shell.duration.hours', { h: Math.floor(s / 3600), m: String(Math.floor((s % 3600) / 60)).padStart(2, '0') });
    return t('shell.duration.days', { d: Math.floor(s / 86400), h: Math.floor((s % 86400) / 3600) });
  }

  function time(iso) {
    if (!iso) return '';
    const date = new Date(iso);
    if (isNaN(date.getTime())) return String(iso);
    const sameDay = date.toDateString() === new Date().toDateString();
    const options = sameDay ? { hour: '2-digit', minute: '2-digit' } : { day: '2-digit', month: '2-digit', hour: '2-digit', minute: '2-digit' };
    return date.toLocaleString(DATE_LOCALE, options);
  }

  function uid() {
    return (window.crypto && crypto.randomUUID) ? crypto.randomUUID() : String(Date.now()) + Math.random().toString(16).slice(2);
  }

  // --- The nav bar -----------------------------------------------------------------------------
  async function logout() {
    try {
      await api('POST', '/api/auth/logout', undefined, { handles: [401] });
    } catch (error) { /* already signed out, or the server is down: go to the login page anyway */ }
    location.assign('/console/login');
  }

  function setupNav() {
    const select = document.getElementById('nav-lang');
    if (select) {
      select.addEventListener('change', () => {
        document.cookie = LANGUAGE_COOKIE + '=' + encodeURIComponent(select.value) + '; path=/console; max-age=31536000; samesite=lax';
        const url = new URL(location.href);
        url.searchParams.delete('lang');
        location.assign(url.toString());
      });
    }
    const button = document.getElementById('logout');
    if (button) button.addEventListener('click', logout);
    me().then(account => {
      const box = document.getElementById('nav-account');
      if (box) {
        clear(box);
        box.appendChild(el('span', { className: 'nav-name', text: account.display_name || account.username, dir: 'auto' }));
        box.appendChild(el('span', { className: 'nav-role', text: t('shell.account_role.' + account.role) }));
      }
      if (button) button.hidden = false;
    }).catch(() => { /* 401 already sent the person to the login page */ });
  }

  window.Jisr = { t, el, clear, flash, clearFlash, api, ApiError, me, duration, time, uid, language: LANGUAGE, toLogin };
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', setupNav);
  else setupNav();
})();
