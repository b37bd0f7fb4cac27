"""The web chat page: one small HTML file, no framework, readable on a cheap phone.

Right-to-left text (Arabic) is laid out by the browser (dir="auto" on every
bubble). Every message carries a client id, so a resend after a network
error counts once.
"""

WEBCHAT_HTML = """<!doctype html>
<html lang="fr">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Jisr</title>
<style>
  :root { --ink:#1d2433; --bot:#eef2f7; --me:#1f6f5c; }
  * { box-sizing: border-box; }
  body { margin:0; font:16px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans Arabic", sans-serif; color:var(--ink); background:#fafbfc; }
  header { padding:.7rem 1rem; background:var(--me); color:#fff; font-weight:600; }
  header small { display:block; font-weight:400; opacity:.85; }
  #log { padding:1rem; height:calc(100vh - 9.5rem); overflow-y:auto; }
  .msg { max-width:85%; margin:.35rem 0; padding:.55rem .8rem; border-radius:14px; white-space:pre-wrap; overflow-wrap:anywhere; }
  .bot { background:var(--bot); }
  .me { background:var(--me); color:#fff; margin-left:auto; }
  .buttons { display:flex; flex-wrap:wrap; gap:.4rem; margin:.2rem 0 .6rem; }
  .buttons button { border:1px solid var(--me); background:#fff; color:var(--me); border-radius:16px; padding:.35rem .8rem; font-size:.95rem; }
  form { display:flex; gap:.5rem; padding:.6rem; border-top:1px solid #dde3ea; background:#fff; }
  #text { flex:1; padding:.6rem .8rem; border:1px solid #c9d2dc; border-radius:20px; font-size:16px; }
  #send { padding:.6rem 1rem; border:0; border-radius:20px; background:var(--me); color:#fff; font-weight:600; }
  #status { font-size:.8rem; color:#a33; padding:0 1rem; min-height:1rem; }
</style>
</head>
<body>
<header>Jisr — جسر<small>École · Escuela · Scuola · Schule · المدرسة</small></header>
<div id="log" aria-live="polite"></div>
<div id="status"></div>
<form id="form" autocomplete="off">
  <input id="text" name="text" dir="auto" placeholder="Écrivez votre question… اكتبوا سؤالكم…" maxlength="2000" aria-label="message">
  <button id="send" type="submit">➤</button>
</form>
<script>
(function () {
  const log = document.getElementById('log'), form = document.getElementById('form'), input = document.getElementById('text'), status = document.getElementById('status');
  let session = localStorage.getItem('jisr-session'), next = Number(localStorage.getItem('jisr-next') || 0);
  const uid = () => (window.crypto && crypto.randomUUID) ? crypto.randomUUID() : String(Date.now()) + Math.random().toString(16).slice(2);

  function bubble(text, who) {
    const div = document.createElement('div');
    div.className = 'msg ' + who; div.dir = 'auto'; div.textContent = text;
    log.appendChild(div); log.scrollTop = log.scrollHeight;
  }
  function buttons(list) {
    if (!list || !list.length) return;
    const row = document.createElement('div'); row.className = 'buttons';
    list.forEach(b => { const btn = document.createElement('button'); btn.type = 'button'; btn.dir = 'auto'; btn.textContent = b.title;
      btn.onclick = () => send(b.title, b.payload); row.appendChild(btn); });
    log.appendChild(row); log.scrollTop = log.scrollHeight;
  }
  let pending = null;  // the session being created: the first poll and a first message share it
  function ensureSession() {
    if (session) return Promise.resolve(session);
    if (!pending) {
      pending = fetch('/api/webchat/session', {method: 'POST'}).then(r => r.json()).then(data => {
        session = data.session; localStorage.setItem('jisr-session', session); next = 0; localStorage.setItem('jisr-next', '0');
        return session;
      }).finally(() => { pending = null; });
    }
    return pending;
  }
  async function send(text, payload) {
    if (!text.trim() && !payload) return;
    bubble(text, 'me');
    const body = JSON.stringify({text: text, payload: payload || null, client_message_id: uid(), language: navigator.language || null});
    for (let attempt = 0; attempt < 5; attempt++) {
      try {
        const r = await fetch('/api/webchat/messages', {method: 'POST', headers: {'Content-Type': 'application/json', 'X-Jisr-Session': await ensureSession()}, body});
        if (r.status === 403) { session = null; localStorage.removeItem('jisr-session'); continue; }
        status.textContent = r.ok ? '' : 'Erreur ' + r.status; return;
      } catch (e) { status.textContent = '…'; await new Promise(res => setTimeout(res, 1000 * (attempt + 1))); }
    }
  }
  async function poll() {
    for (;;) {
      try {
        const r = await fetch('/api/webchat/messages?after=' + next + '&wait=20', {headers: {'X-Jisr-Session': await ensureSession()}});
        if (r.ok) {
          const data = await r.json();
          data.messages.forEach(m => { bubble(m.text, 'bot'); buttons(m.buttons); });
          next = data.next; localStorage.setItem('jisr-next', String(next)); status.textContent = '';
        } else { await new Promise(res => setTimeout(res, 2000)); }
      } catch (e) { status.textContent = '…'; await new Promise(res => setTimeout(res, 2000)); }
    }
  }
  form.addEventListener('submit', ev => { ev.preventDefault(); const t = input.value; input.value = ''; send(t, null); });
  if (next > 0) { next = 0; }  // a reload shows the conversation again
  poll();
})();
</script>
</body>
</html>
"""
