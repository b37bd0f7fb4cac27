/* The mediators' console: open conversations (live), one conversation with its transcript,
 * the family's profile and the actions (claim, auto-assign, transfer, reply, notes, hand back,
 * resolve). Built on shell.js (Jisr.el, Jisr.api): data is only ever set as text.
 *
 * URLs: /console/mediation (the list) and /console/mediation/<id> (a conversation; on a phone
 * one pane at a time, side by side from 900 px). Live updates come from the server-sent events
 * of /api/mediation/events; the list and the open conversation are re-read when an event
 * concerns them (debounced: thirty conversations at once must not mean thirty reads a second).
 */
(function () {
  'use strict';
  const { t, el, clear, flash, api, duration, time, uid } = window.Jisr;
  const API = '/api/mediation';
  const BASE = '/console/mediation';
  const COUNTRIES = ['FR', 'ES', 'IT', 'DE', 'BE', 'NL', 'DZ', 'CI'];
  const LANGUAGES = ['ar', 'ary', 'fr', 'es', 'it', 'de'];
  const REFRESH_DELAY_MS = 250;
  const MAX_RECONNECT_MS = 15000;

  const state = {
    account: null,
    filters: { status: 'open', country: '', language: '' },
    handoffs: [],
    listLoadedAt: 0,
    selectedId: null,
    detail: null,
    quickReplies: new Map(),   // language → [{label, text}]
    drafts: new Map(),          // handoff id → {text, key}: a reply being written survives switching cases;
                                // its idempotency key is kept until it is sent or edited (a retry counts once)
  };

  // --- Layout --------------------------------------------------------------------------------
  const main = document.getElementById('main');
  const root = el('div', { className: 'mediation' });
  const listPane = el('section', { className: 'pane-list', attrs: { 'aria-label': t('mediation.list_title') } });
  const convPane = el('section', { className: 'pane-conversation', attrs: { 'aria-live': 'polite' } });
  root.append(listPane, convPane);
  main.appendChild(root);

  const liveBadge = el('span', { className: 'badge badge-offline', id: 'live', text: t('mediation.live.reconnecting') });
  const listBox = el('ul', { className: 'handoffs', id: 'handoffs' });
  const emptyBox = el('p', { className: 'muted', id: 'handoffs-empty', text: t('mediation.empty'), hidden: true });

  function select(name, label, options, value, onChange) {
    const input = el('select', { id: 'filter-' + name, name, on: { change: event => onChange(event.target.value) } },
      options.map(([optionValue, optionLabel]) => el('option', { value: optionValue, text: optionLabel })));
    input.value = value;
    return el('label', { className: 'field' }, label, input);
  }

  function buildListPane() {
    const statusFilter = select('status', t('mediation.filter.status'),
      [['open', t('mediation.filter.open')], ['waiting', t('mediation.filter.waiting')], ['mine', t('mediation.filter.mine')]],
      state.filters.status, value => { state.filters.status = value; loadList(); });
    const countries = state.account && !state.account.countries.includes('*') && state.account.role !== 'admin' ? state.account.countries : COUNTRIES;
    const countryFilter = select('country', t('mediation.filter.country'),
      [['', t('mediation.filter.any')], ...countries.map(code => [code, code])],
      state.filters.country, value => { state.filters.country = value; loadList(); });
    const languageFilter = select('language', t('mediation.filter.language'),
      [['', t('mediation.filter.any')], ...LANGUAGES.map(code => [code, code])],
      state.filters.language, value => { state.filters.language = value; loadList(); });
    listPane.append(
      el('div', { className: 'list-head' },
        el('h2', { text: t('mediation.list_title') }),
        liveBadge,
        el('button', { type: 'button', className: 'btn btn-quiet', id: 'refresh', text: t('mediation.refresh'), on: { click: () => loadList() } })),
      el('div', { className: 'filters' }, statusFilter, countryFilter, languageFilter),
      listBox, emptyBox);
  }

  // --- The list --------------------------------------------------------------------------------
  function byUrgency(a, b) {
    return (Number(a.priority) - Number(b.priority)) || (Number(b.waiting_seconds) - Number(a.waiting_seconds)) || (a.id - b.id);
  }

  function waitingNow(handoff) {
    // The server counts up to the claim for a held case; only a waiting one keeps waiting.
    const since = handoff.status === 'waiting' ? (Date.now() - state.listLoadedAt) / 1000 : 0;
    return Number(handoff.waiting_seconds || 0) + since;
  }

  function waitingText(handoff) {
    const key = handoff.status === 'waiting' ? 'mediation.waiting_for' : 'mediation.waited';
    return t(key, { duration: duration(waitingNow(handoff)) });
  }

  function isSafety(handoff) {
    return handoff.reason === 'safety' || Number(handoff.priority) === 1;
  }

  function handoffItem(handoff) {
    const classes = ['handoff'];
    if (handoff.escalated) classes.push('escalated');
    if (isSafety(handoff)) classes.push('safety');
    if (handoff.id === state.selectedId) classes.push('selected');
    const assigned = handoff.assigned_to ? t('mediation.assigned_to', { name: handoff.assigned_to.display_name }) : null;
    const button = el('button', {
      type: 'button', className: classes.join(' '), dataset: { id: handoff.id, status: handoff.status },
      on: { click: () => open(handoff.id) },
    },
      el('span', { className: 'handoff-top' },
        el('span', { className: 'badge ' + (isSafety(handoff) ? 'badge-safety' : Number(handoff.priority) <= 2 ? 'badge-high' : ''), text: t('mediation.priority', { n: handoff.priority }) }),
        el('span', { className: 'handoff-reason', text: t('mediation.reason.' + handoff.reason) }),
        handoff.escalated ? el('span', { className: 'badge badge-escalated', text: t('mediation.escalated') }) : null,
        handoff.unread ? el('span', { className: 'badge badge-unread unread', text: t('mediation.unread', { n: handoff.unread }) }) : null),
      el('span', { className: 'handoff-bottom' },
        el('span', { className: 'handoff-language', text: handoff.language || '?' }),
        el('span', { className: 'handoff-country', text: handoff.country || '?' }),
        el('span', { text: handoff.channel || '' }),
        el('span', { className: 'handoff-waiting', text: waitingText(handoff) }),
        assigned ? el('span', { className: 'handoff-assigned', text: assigned, dir: 'auto' }) : null));
    return el('li', null, button);
  }

  const BASE_TITLE = document.title;
  function renderList() {
    clear(listBox);
    const sorted = state.handoffs.slice().sort(byUrgency);
    for (const handoff of sorted) listBox.appendChild(handoffItem(handoff));
    emptyBox.hidden = sorted.length > 0;
    // The waiting count in the tab's title: seen from another tab or app.
    const waiting = sorted.filter(h => h.status === 'waiting').length;
    document.title = (waiting ? `(${waiting}) ` : '') + BASE_TITLE;
  }

  function tickWaiting() {
    for (const node of listBox.querySelectorAll('.handoff')) {
      const handoff = state.handoffs.find(h => String(h.id) === node.dataset.id);
      const label = node.querySelector('.handoff-waiting');
      if (handoff && label) label.textContent = waitingText(handoff);
    }
  }

  let listSeq = 0;
  async function loadList() {
    const seq = ++listSeq;
    const params = new URLSearchParams({ status: state.filters.status });
    if (state.filters.country) params.set('country', state.filters.country);
    if (state.filters.language) params.set('language', state.filters.language);
    try {
      const data = await api('GET', `${API}/handoffs?${params}`);
      if (seq !== listSeq) return;  // a newer read (another filter) is on its way
      state.handoffs = data.handoffs || [];
      state.listLoadedAt = Date.now();
      renderList();
    } catch (error) { /* shown by Jisr.api */ }
  }

  // --- One conversation ------------------------------------------------------------------------
  const conv = {};  // the open conversation's parts, built once per conversation

  function showPrompt() {
    clear(convPane);
    convPane.appendChild(el('p', { className: 'muted', text: t('mediation.select_prompt') }));
  }

  function showDenied(status) {
    clear(convPane);
    convPane.appendChild(el('button', { type: 'button', className: 'btn btn-quiet back-to-list', text: t('mediation.back'), on: { click: () => go(null) } }));
    convPane.appendChild(el('p', { className: 'denied', id: 'denied', attrs: { role: 'alert' }, text: status === 404 ? t('mediation.not_found') : t('mediation.denied') }));
  }

  function buildConversation(id) {
    clear(convPane);
    conv.id = id;
    conv.actionsSignature = null;
    conv.head = el('div', { className: 'conv-head' });
    conv.profile = el('dl', { className: 'profile', id: 'profile' });
    conv.actions = el('div', { className: 'actions', id: 'actions' });
    conv.transcript = el('div', { className: 'transcript', id: 'transcript', attrs: { 'aria-label': t('mediation.family') } });
    conv.window = el('p', { className: 'window', id: 'window' });
    conv.quick = el('div', { className: 'quick', id: 'quick-replies', attrs: { 'aria-label': t('mediation.reply.quick') } });
    conv.quickSummary = el('summary', { text: t('mediation.reply.quick') });
    // Folded on a phone (seven long answers would push the reply box off screen), open when wide.
    conv.quickBox = el('details', { className: 'quick-box', id: 'quick-box' }, conv.quickSummary, conv.quick);
    conv.quickBox.open = window.matchMedia('(min-width: 900px)').matches;
    conv.text = el('textarea', { id: 'reply-text', dir: 'auto', placeholder: t('mediation.reply.placeholder'), attrs: { rows: 3, maxlength: 4000, 'aria-label': t('mediation.reply.label') },
      on: { keydown: event => { if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) { event.preventDefault(); sendReply(); } } } });
    conv.send = el('button', { type: 'button', className: 'btn', id: 'reply-send', text: t('mediation.reply.send'), on: { click: sendReply } });
    conv.claimFirst = el('p', { className: 'muted', id: 'held-by-other', text: t('mediation.reply.held_by_other'), hidden: true });
    conv.reply = el('div', { className: 'reply', id: 'reply' }, conv.quickBox, el('div', { className: 'reply-row' }, conv.text, conv.send));
    conv.notesList = el('ul', { id: 'notes' });
    conv.noteText = el('textarea', { id: 'note-text', dir: 'auto', placeholder: t('mediation.notes.placeholder'), attrs: { rows: 2, maxlength: 4000, 'aria-label': t('mediation.notes.title') } });
    conv.notes = el('div', { className: 'notes' },
      el('h3', { text: t('mediation.notes.title') }), conv.notesList, conv.noteText,
      el('button', { type: 'button', className: 'btn btn-quiet', id: 'note-add', text: t('mediation.notes.add'), on: { click: addNote } }));
    convPane.append(
      el('button', { type: 'button', className: 'btn btn-quiet back-to-list', text: t('mediation.back'), on: { click: () => go(null) } }),
      el('div', { className: 'card' }, conv.head, conv.profile, conv.actions, conv.transcript, conv.window, conv.claimFirst, conv.reply, conv.notes));
    const draft = state.drafts.get(id);
    if (draft) conv.text.value = draft.text;
    conv.text.addEventListener('input', () => setDraft(id, conv.text.value));
  }

  function setDraft(id, text) {
    if (text.trim()) state.drafts.set(id, { text, key: null });
    else state.drafts.delete(id);
  }

  function field(label, value) {
    const text = value === null || value === undefined || value === '' ? t('mediation.profile.unknown') : Array.isArray(value) ? (value.length ? value.join(', ') : t('mediation.profile.unknown')) : String(value);
    return [el('div', null, el('dt', { text: label }), el('dd', { text, dir: 'auto' }))];
  }

  // Small talk says nothing about the family's needs: left out of "topics detected".
  const SMALL_TALK = new Set(['affirm', 'deny', 'greet', 'goodbye', 'thank', 'inform', 'bot_challenge', 'change_language', 'opt_in', 'nlu_fallback']);
  function topicNames(intents) {
    return intents.filter(intent => !SMALL_TALK.has(intent)).map(intent => {
      const name = t('mediation.topic.' + intent);
      return name.startsWith('mediation.topic.') ? intent : name;
    });
  }

  function isMine(handoff) {
    return Boolean(handoff.assigned_to && state.account && handoff.assigned_to.id === state.account.id);
  }

  function isOpen(handoff) {
    return handoff.status === 'waiting' || handoff.status === 'assigned';
  }

  function renderHead(detail) {
    const handoff = detail.handoff;
    clear(conv.head);
    conv.head.append(...[
      el('h2', { text: `${t('mediation.family')} #${handoff.id} — ${t('mediation.reason.' + handoff.reason)}` }),
      el('span', { className: 'badge ' + (isSafety(handoff) ? 'badge-safety' : ''), text: t('mediation.priority', { n: handoff.priority }) }),
      el('span', { className: 'badge', id: 'conv-status', dataset: { status: handoff.status }, text: t('mediation.status.' + handoff.status) }),
      handoff.escalated ? el('span', { className: 'badge badge-escalated', text: t('mediation.escalated') }) : null,
      el('span', { className: 'muted', id: 'conv-assigned', dir: 'auto', text: handoff.assigned_to ? t('mediation.assigned_to', { name: handoff.assigned_to.display_name }) : t('mediation.unassigned') }),
    ].filter(Boolean));
    const contact = detail.contact || {};
    clear(conv.profile);
    conv.profile.append(
      ...field(t('mediation.profile.language'), contact.language || handoff.language),
      ...field(t('mediation.profile.country'), contact.country || handoff.country),
      ...field(t('mediation.profile.region'), contact.region),
      ...field(t('mediation.profile.role'), contact.role || handoff.role),
      ...field(t('mediation.profile.school_level'), contact.school_level),
      ...field(t('mediation.profile.channel'), contact.channel || handoff.channel),
      ...field(t('mediation.profile.topics'), topicNames(detail.topics || [])));
  }

  function confirmButton(id, label, confirmLabel, action, extraClass) {
    // Two taps instead of window.confirm: a dialog is slow on a phone and easy to tap through.
    const button = el('button', { type: 'button', className: 'btn ' + (extraClass || ''), id, text: label });
    let armed = null;
    button.addEventListener('click', () => {
      if (!armed) {
        button.textContent = confirmLabel;
        armed = setTimeout(() => { armed = null; button.textContent = label; }, 5000);
        return;
      }
      clearTimeout(armed);
      armed = null;
      action();
    });
    return button;
  }

  function renderActions(detail) {
    const handoff = detail.handoff;
    // Rebuilt only when who holds it changes: a live update must not reset a colleague being
    // picked for a transfer, or a confirmation half-way.
    const signature = `${handoff.status}|${handoff.assigned_to ? handoff.assigned_to.id : ''}`;
    if (conv.actionsSignature === signature) return;
    conv.actionsSignature = signature;
    clear(conv.actions);
    if (!isOpen(handoff)) return;
    const admin = Boolean(state.account && state.account.role === 'admin');
    const mine = isMine(handoff);
    // Only the holder (or an admin) acts on a held case; the hint above the reply box says so.
    if (handoff.assigned_to && !mine && !admin) return;
    if (!mine) conv.actions.appendChild(el('button', { type: 'button', className: 'btn', id: 'claim', text: t('mediation.action.claim'), on: { click: () => act('claim', undefined, 'claim') } }));
    if (handoff.status === 'waiting') conv.actions.appendChild(el('button', { type: 'button', className: 'btn btn-quiet', id: 'auto-assign', text: t('mediation.action.auto_assign'), on: { click: () => act('assign', { account_id: null }, 'assign') } }));
    const colleagues = el('select', { id: 'transfer-to', attrs: { 'aria-label': t('mediation.action.transfer_to') } }, el('option', { value: '', text: t('mediation.action.transfer_to') }));
    const transfer = el('button', { type: 'button', className: 'btn btn-quiet', id: 'transfer', text: t('mediation.action.transfer'), disabled: true,
      on: { click: () => { if (colleagues.value) act('transfer', { account_id: Number(colleagues.value) }, 'transfer'); } } });
    colleagues.addEventListener('change', () => { transfer.disabled = !colleagues.value; });
    if (mine || admin) {
      conv.actions.appendChild(el('span', { className: 'transfer' }, colleagues, transfer));
      loadColleagues(handoff.id, colleagues);
    }
    conv.actions.appendChild(confirmButton('hand-back', t('mediation.action.hand_back'), t('mediation.action.confirm_hand_back'), () => act('hand-back', undefined, 'hand_back'), 'btn-quiet'));
    conv.actions.appendChild(confirmButton('resolve', t('mediation.action.resolve'), t('mediation.action.confirm_resolve'), () => act('resolve', undefined, 'resolve'), 'btn-danger'));
  }

  async function loadColleagues(handoffId, selectNode) {
    try {
      const data = await api('GET', `${API}/mediators?handoff_id=${encodeURIComponent(handoffId)}`, undefined, { quiet: true });
      const people = (data.mediators || data || []).filter(person => !state.account || person.id !== state.account.id);
      if (!people.length) {
        selectNode.appendChild(el('option', { value: '', text: t('mediation.action.transfer_none'), disabled: true }));
        return;
      }
      for (const person of people) {
        const load = person.open_load !== undefined ? ` — ${t('mediation.action.open_load', { n: person.open_load })}` : '';
        const speaks = person.speaks_language === false ? ` — ${t('mediation.action.other_language')}` : '';
        selectNode.appendChild(el('option', { value: person.id, text: (person.display_name || person.username) + load + speaks }));
      }
    } catch (error) { /* the transfer stays unavailable; the other actions work */ }
  }

  function mediaOf(message) {
    const items = Array.isArray(message.media) ? message.media : message.media ? [message.media] : [];
    return items.map(item => {
      const kind = (item && item.kind) || 'other';
      const named = t('mediation.media_kind.' + kind);
      let label = t('mediation.media', { kind: named.startsWith('mediation.') ? kind : named });
      if (kind === 'location' && item.latitude !== undefined) label += ` (${Number(item.latitude).toFixed(5)}, ${Number(item.longitude).toFixed(5)})`;
      else if (item && item.mime_type) label += ` (${item.mime_type})`;
      // Only web addresses become links (never javascript: or data:); the rest is shown as text.
      const url = item && item.url;
      if (url && /^https?:\/\//i.test(url)) return el('a', { className: 'msg-media', href: url, text: label, attrs: { target: '_blank', rel: 'noopener noreferrer' } });
      return el('span', { className: 'msg-media', text: label });
    });
  }

  function renderTranscript(detail) {
    const box = conv.transcript;
    const nearBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 80;
    clear(box);
    for (const message of detail.transcript || []) {
      const author = ['family', 'bot', 'mediator'].includes(message.author) ? message.author : 'bot';
      const classes = ['msg', 'msg-' + author];
      if (message.status === 'failed') classes.push('msg-failed');
      const status = message.status && t('mediation.message_status.' + message.status) !== 'mediation.message_status.' + message.status ? ' · ' + t('mediation.message_status.' + message.status) : '';
      box.appendChild(el('div', { className: classes.join(' '), dataset: { id: message.id, author } },
        // <bdi>: an Arabic name must not reorder the words around it.
        el('span', { className: 'msg-meta' }, t('mediation.author.' + author), message.author_name ? ' · ' : null,
          message.author_name ? el('bdi', { text: message.author_name }) : null, ` · ${time(message.at)}${status}`),
        el('span', { className: 'msg-text', dir: 'auto', text: message.text || '' }),
        ...mediaOf(message)));
    }
    if (nearBottom || !conv.scrolledOnce) { box.scrollTop = box.scrollHeight; conv.scrolledOnce = true; }
  }

  function renderWindow(detail, refusal) {
    const form = (detail.window && detail.window.reply_form) || 'closed';
    const kind = form.startsWith('tag') ? 'tag' : ['text', 'template', 'closed'].includes(form) ? form : 'closed';
    conv.window.className = 'window window-' + kind;
    conv.window.dataset.form = form;
    clear(conv.window);
    conv.window.append(el('strong', { text: t('mediation.window.title') }), ' ', t('mediation.window.' + kind));
    if (detail.window && detail.window.closes_at && kind !== 'closed') conv.window.append(' ', t('mediation.window.closes_at', { time: time(detail.window.closes_at) }));
    const why = refusal || (detail.window && detail.window.reason);
    if (why) conv.window.append(el('span', { className: 'window-refusal', id: 'reply-refused', text: ' — ' + why }));
    // Nobody holds it: replying claims it (the server does so). Someone else holds it: ask them.
    const handoff = detail.handoff;
    const heldByOther = Boolean(handoff.assigned_to) && !isMine(handoff) && !(state.account && state.account.role === 'admin');
    const canReply = isOpen(handoff) && !heldByOther;
    conv.reply.hidden = !canReply;
    conv.claimFirst.hidden = !(isOpen(handoff) && heldByOther);
    conv.send.disabled = kind === 'closed';
  }

  function renderNotes(detail) {
    clear(conv.notesList);
    const notes = detail.notes || [];
    if (!notes.length) conv.notesList.appendChild(el('li', { className: 'muted', text: t('mediation.notes.empty') }));
    for (const note of notes) {
      conv.notesList.appendChild(el('li', null,
        el('span', { className: 'msg-meta' }, el('bdi', { text: note.author_name || '' }), ` · ${time(note.at)}`),
        el('span', { className: 'note-text', dir: 'auto', text: note.text || '' })));
    }
  }

  async function loadQuickReplies(language) {
    const code = language || '';
    if (!state.quickReplies.has(code)) {
      try {
        const data = await api('GET', `${API}/quick-replies?language=${encodeURIComponent(code)}`, undefined, { quiet: true });
        const items = Array.isArray(data) ? data : (data.quick_replies || data.replies || []);
        state.quickReplies.set(code, items.map(item => typeof item === 'string' ? { label: item, text: item } : { label: item.label || item.title || item.text, text: item.text }));
      } catch (error) {
        state.quickReplies.set(code, []);
      }
    }
    clear(conv.quick);
    const replies = state.quickReplies.get(code);
    conv.quickBox.hidden = replies.length === 0;
    conv.quickSummary.textContent = `${t('mediation.reply.quick')} (${replies.length})`;
    for (const reply of replies) {
      conv.quick.appendChild(el('button', { type: 'button', dir: 'auto', text: reply.label, title: reply.text, on: { click: () => { conv.text.value = reply.text; setDraft(conv.id, reply.text); conv.text.focus(); } } }));
    }
  }

  let detailSeq = 0;
  async function loadDetail(id, refusal) {
    const seq = ++detailSeq;
    let detail;
    try {
      detail = await api('GET', `${API}/handoffs/${encodeURIComponent(id)}`, undefined, { handles: [403, 404] });
    } catch (error) {
      if (seq !== detailSeq || state.selectedId !== id) return;
      if (error.status === 403 || error.status === 404) showDenied(error.status);
      return;
    }
    if (seq !== detailSeq || state.selectedId !== id) return;
    const first = conv.id !== id;
    if (first) buildConversation(id);
    state.detail = detail;
    renderHead(detail);
    renderActions(detail);
    renderTranscript(detail);
    renderWindow(detail, refusal);
    renderNotes(detail);
    if (first) loadQuickReplies((detail.contact && detail.contact.language) || detail.handoff.language);
  }

  // --- Actions ----------------------------------------------------------------------------------
  async function act(path, body, doneKey) {
    const id = state.selectedId;
    try {
      await api('POST', `${API}/handoffs/${encodeURIComponent(id)}/${path}`, body === undefined ? {} : body);
    } catch (error) {
      if (state.selectedId === id) loadDetail(id);
      return;
    }
    flash(t('mediation.action.done.' + doneKey), 'ok');
    loadList();
    if (path === 'hand-back' || path === 'resolve') { go(null); return; }
    loadDetail(id);
  }

  async function sendReply() {
    const id = state.selectedId;
    const text = conv.text.value.trim();
    if (!text || conv.send.disabled) return;
    const draft = state.drafts.get(id) || { text, key: null };
    if (!draft.key) draft.key = uid();
    state.drafts.set(id, draft);
    conv.send.disabled = true;
    try {
      await api('POST', `${API}/handoffs/${encodeURIComponent(id)}/reply`, { text, idempotency_key: draft.key }, { handles: [409, 422] });
      state.drafts.delete(id);
      if (conv.id === id) conv.text.value = '';
      flash(t('mediation.reply.sent'), 'ok');
      loadDetail(id);
    } catch (error) {
      conv.send.disabled = false;
      if (error.status === 409 || error.status === 422) {
        // The platform's rules refused it (window closed, template needed): say why, beside the box.
        flash(error.status === 409 ? t('shell.error.conflict', { detail: error.detail }) : t('shell.error.invalid', { detail: error.detail }), 'error');
        draft.key = null;  // refused, so not sent: the next try is a new reply
        loadDetail(id, error.detail);
      }
    }
  }

  async function addNote() {
    const id = state.selectedId;
    const text = conv.noteText.value.trim();
    if (!text) return;
    try {
      await api('POST', `${API}/handoffs/${encodeURIComponent(id)}/notes`, { text });
    } catch (error) { return; }
    conv.noteText.value = '';
    flash(t('mediation.action.done.note'), 'ok');
    loadDetail(id);
  }

  // --- Navigation ----------------------------------------------------------------------------------
  function idFromPath() {
    const match = location.pathname.match(/^\/console\/mediation\/(\d+)\/?$/);
    return match ? Number(match[1]) : null;
  }

  function show(id) {
    state.selectedId = id;
    root.classList.toggle('viewing', id !== null);
    for (const node of listBox.querySelectorAll('.handoff')) node.classList.toggle('selected', Number(node.dataset.id) === id);
    if (id === null) { conv.id = null; showPrompt(); return; }
    if (conv.id !== id) {
      clear(convPane);
      convPane.appendChild(el('p', { className: 'muted', text: t('shell.loading') }));
      conv.id = null;
      conv.scrolledOnce = false;
      if (!window.matchMedia('(min-width: 900px)').matches) window.scrollTo(0, 0);  // a phone shows the case from its top
    }
    loadDetail(id);
  }

  function go(id) {
    const url = id === null ? BASE : `${BASE}/${id}`;
    if (location.pathname !== url) history.pushState({ id }, '', url);
    show(id);
  }
  const open = id => go(id);
  window.addEventListener('popstate', () => show(idFromPath()));

  // --- Live updates --------------------------------------------------------------------------------
  let listTimer = null;
  let detailTimer = null;
  function soon(what) {
    if (what === 'list' && !listTimer) listTimer = setTimeout(() => { listTimer = null; loadList(); }, REFRESH_DELAY_MS);
    if (what === 'detail' && !detailTimer) detailTimer = setTimeout(() => { detailTimer = null; if (state.selectedId !== null) loadDetail(state.selectedId); }, REFRESH_DELAY_MS);
  }

  function handoffIdOf(data) {
    if (!data) return null;
    const value = data.handoff_id !== undefined ? data.handoff_id : data.handoff && data.handoff.id !== undefined ? data.handoff.id : data.id;
    return value === undefined || value === null ? null : Number(value);
  }

  function onEvent(event) {
    let data = null;
    try { data = JSON.parse(event.data); } catch (error) { /* a keep-alive or plain text: refresh anyway */ }
    soon('list');
    const id = handoffIdOf(data);
    if (state.selectedId !== null && (id === null || id === state.selectedId)) soon('detail');
  }

  let source = null;
  let retryMs = 1000;
  function setLive(connected) {
    liveBadge.className = 'badge ' + (connected ? 'badge-live' : 'badge-offline');
    liveBadge.textContent = connected ? t('mediation.live.connected') : t('mediation.live.reconnecting');
    liveBadge.dataset.live = connected ? '1' : '0';
  }

  function connect() {
    if (source) source.close();
    source = new EventSource(`${API}/events`);
    source.addEventListener('open', () => {
      const reconnected = retryMs > 1000 || liveBadge.dataset.live === '0';
      retryMs = 1000;
      setLive(true);
      // Events sent while the stream was down are lost: read the state again.
      if (reconnected) { soon('list'); if (state.selectedId !== null) soon('detail'); }
    });
    for (const name of ['handoff.opened', 'handoff.updated', 'message.in', 'message.out', 'message']) source.addEventListener(name, onEvent);
    source.addEventListener('error', () => {
      setLive(false);
      // The browser retries a dropped stream by itself; a refused one (401, 5xx) it gives up:
      // check the session (a 401 sends the person to the login page), then reconnect later.
      if (source.readyState === EventSource.CLOSED) {
        const wait = retryMs;
        retryMs = Math.min(retryMs * 2, MAX_RECONNECT_MS);
        setTimeout(() => { api('GET', '/api/auth/me', undefined, { quiet: true }).then(connect, error => { if (error.status !== 401) connect(); }); }, wait);
      }
    });
  }

  // --- Start -------------------------------------------------------------------------------------
  async function start() {
    try {
      state.account = await window.Jisr.me();
    } catch (error) { return; }
    buildListPane();
    setLive(false);
    connect();
    await loadList();
    show(idFromPath());
    setInterval(tickWaiting, 20000);
  }
  start();
})();
