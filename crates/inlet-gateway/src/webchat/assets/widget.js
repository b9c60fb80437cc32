/*
 * Handoff web chat widget.
 *
 *   <script src="https://HUB/webchat/v1/widget.js" data-org="acme" data-channel="web" defer></script>
 *
 * Optional attributes: data-mode="page" (the chat fills the page), data-title,
 * data-first-name (sent as profile.firstName), data-hub (the hub's base URL when the
 * script is served from somewhere else).
 *
 * Protocol (see the README, "Web chat"): POST {base}/session gives a signed visitor
 * token; a WebSocket at {base}/ws?token=...&after=<seq> streams the conversation. Every
 * message, the visitor's own included, comes back with a seq; the page shows each seq
 * once, in order. A visitor's message is "sending..." until its echo (same clientId) comes.
 *
 * Plain ES2020, no dependencies, no build step: it doubles as a reference client.
 */
(function () {
  'use strict';

  // Only valid while the script first runs: capture it before anything is deferred.
  const script = document.currentScript ||
    document.querySelector('script[data-org][src*="/webchat/v1/widget.js"]');
  if (!script) return;

  const cfg = {
    org: script.dataset.org || '',
    channel: script.dataset.channel || '',
    mode: script.dataset.mode === 'page' ? 'page' : 'bubble',
    title: script.dataset.title || 'Chat with us',
    firstName: script.dataset.firstName || '',
    hub: (script.dataset.hub || new URL(script.src, location.href).origin).replace(/\/+$/, ''),
  };
  if (!cfg.org || !cfg.channel) {
    console.error('Handoff web chat: data-org and data-channel are required');
    return;
  }

  const base = `${cfg.hub}/webchat/v1/${encodeURIComponent(cfg.org)}/${encodeURIComponent(cfg.channel)}`;
  const tokenKey = `handoff:webchat:${cfg.org}:${cfg.channel}`;
  const PERMANENT = new Set([400, 403, 404, 409]); // asking again will not help
  const LABELS = { bot: 'Bot', agent: 'Agent' };
  // Strings are ASCII with \u escapes: a host page without a charset must not garble them.
  const MEDIA = { VIDEO: 'Video', AUDIO: 'Audio', FILE: 'File', STICKER: 'Sticker' };
  const ICON_SEND = '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M3 20.5 21 12 3 3.5 3 10l12 2-12 2z"/></svg>';
  const ICON_CHAT = '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M4 4h16a2 2 0 0 1 2 2v10a2 2 0 0 1-2 2H9l-5 4v-4a2 2 0 0 1-2-2V6a2 2 0 0 1 2-2z"/></svg>';

  // ---- storage: private modes and sandboxed frames may refuse it; the chat still works
  const memory = {};
  function load(key) {
    try { return localStorage.getItem(key); } catch (_) { return memory[key] || null; }
  }
  function store(key, value) {
    try {
      if (value == null) localStorage.removeItem(key); else localStorage.setItem(key, value);
    } catch (_) {
      if (value == null) delete memory[key]; else memory[key] = value;
    }
  }

  // The server accepts 1-64 characters of [A-Za-z0-9_-]; randomUUID needs a secure context.
  function newClientId() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    const bytes = new Uint8Array(16);
    if (window.crypto && crypto.getRandomValues) crypto.getRandomValues(bytes);
    else bytes.forEach((_, i) => { bytes[i] = Math.floor(Math.random() * 256); });
    return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  }

  // ---- DOM helpers: text goes in as textContent only, never as markup
  function el(tag, className, text, attrs) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text != null) node.textContent = text;
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
    return node;
  }

  function safeUrl(url) {
    try {
      const u = new URL(String(url || ''));
      return u.protocol === 'http:' || u.protocol === 'https:' ? u.href : null;
    } catch (_) {
      return null;
    }
  }

  function link(href, text, className) {
    const a = el('a', className, text);
    a.href = href;
    a.target = '_blank';
    a.rel = 'noopener noreferrer';
    return a;
  }

  // URLs in text become links; everything else stays text nodes.
  function linkify(value) {
    const text = String(value);
    const frag = document.createDocumentFragment();
    const re = /https?:\/\/[^\s<>"']+[^\s<>"'.,;:!?)\]]/g;
    let last = 0;
    for (const m of text.matchAll(re)) {
      const href = safeUrl(m[0]);
      if (!href) continue;
      frag.append(text.slice(last, m.index), link(href, m[0]));
      last = m.index + m[0].length;
    }
    frag.append(text.slice(last));
    return frag;
  }

  // ---- the UI
  const ui = buildUi();
  const state = {
    open: cfg.mode === 'page',
    started: false,
    token: load(tokenKey),
    visitorId: null,
    needSession: true, // every page load renews the token once
    ws: null,
    ready: false,
    attempt: 0,
    timer: null,
    failed: false,
    seen: new Set(),
    maxSeq: 0,
    outbox: new Map(), // clientId -> { frame, node }, in sending order
    stuck: true, // whether the list is scrolled to the bottom
    typingTimer: null,
  };

  function buildUi() {
    const sheet = injectStyles();
    const root = el('div', `hw-root hw-${cfg.mode}`);
    const panel = el('div', 'hw-panel', null, {
      id: `hw-panel-${cfg.org}-${cfg.channel}`.replace(/[^A-Za-z0-9_-]/g, '_'),
      role: cfg.mode === 'page' ? 'main' : 'dialog',
      'aria-label': cfg.title,
    });
    const header = el('div', 'hw-header');
    header.append(el('div', 'hw-title', cfg.title));
    const status = el('div', 'hw-status', null, { 'data-testid': 'hw-status', 'data-state': 'connecting', role: 'status' });
    status.hidden = true;
    const log = el('div', 'hw-log', null, { 'data-testid': 'hw-log', role: 'log', 'aria-live': 'polite', tabindex: '0' });
    const typing = el('div', 'hw-typing', 'Agent is typing\u2026');
    const chips = el('div', 'hw-chips');
    typing.hidden = chips.hidden = true;

    const composer = el('form', 'hw-composer');
    const input = el('textarea', 'hw-input', null, {
      'data-testid': 'hw-input', rows: '1', maxlength: '4000', placeholder: 'Write a message\u2026', 'aria-label': 'Message',
    });
    const send = el('button', 'hw-send', null, { type: 'submit', 'data-testid': 'hw-send', 'aria-label': 'Send' });
    send.innerHTML = ICON_SEND; // a constant: no outside text ever goes through innerHTML
    send.disabled = true;
    composer.append(input, send);
    panel.append(header, status, log, typing, chips, composer);
    root.append(panel);

    let launcher = null;
    if (cfg.mode === 'bubble') {
      const close = el('button', 'hw-close', '\u00d7', { type: 'button', 'aria-label': 'Close chat' });
      close.addEventListener('click', () => setOpen(false));
      header.append(close);
      launcher = el('button', 'hw-launcher', null, {
        type: 'button', 'data-testid': 'hw-launcher', 'aria-label': 'Open chat',
        'aria-controls': panel.id, 'aria-expanded': 'false',
      });
      launcher.innerHTML = ICON_CHAT;
      launcher.addEventListener('click', () => setOpen(!state.open));
      root.append(launcher);
      panel.hidden = true;
      root.addEventListener('keydown', (e) => { if (e.key === 'Escape') setOpen(false); });
    }

    input.addEventListener('input', () => {
      send.disabled = !input.value.trim();
      autosize(input);
    });
    input.addEventListener('keydown', (e) => {
      // isComposing: an Enter that confirms an IME candidate is not "send".
      if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        submit();
      }
    });
    composer.addEventListener('submit', (e) => { e.preventDefault(); submit(); });
    log.addEventListener('scroll', () => { state.stuck = nearBottom(); });

    mount(root, sheet);
    return { root, panel, status, log, typing, chips, input, send, launcher };
  }

  // The stylesheet comes from the hub; the widget stays invisible until it has loaded
  // so the host page never flashes unstyled controls.
  function injectStyles() {
    let sheet = document.querySelector('link[data-hw-css]');
    if (!sheet) {
      sheet = document.createElement('link');
      sheet.rel = 'stylesheet';
      sheet.href = `${cfg.hub}/webchat/v1/widget.css`;
      sheet.dataset.hwCss = '';
      document.head.append(sheet);
    }
    return sheet;
  }

  function mount(root, sheet) {
    if (!sheet.sheet) {
      root.style.visibility = 'hidden';
      const show = () => { root.style.visibility = ''; };
      sheet.addEventListener('load', show);
      sheet.addEventListener('error', show);
      setTimeout(show, 3000);
    }
    const attach = () => document.body.append(root);
    if (document.body) attach(); else document.addEventListener('DOMContentLoaded', attach);
  }

  function autosize(input) {
    input.style.height = 'auto';
    input.style.height = `${Math.min(input.scrollHeight, 120)}px`;
  }

  function setOpen(open) {
    if (cfg.mode === 'page') return;
    state.open = open;
    ui.panel.hidden = !open;
    ui.launcher.setAttribute('aria-expanded', String(open));
    ui.launcher.setAttribute('aria-label', open ? 'Close chat' : 'Open chat');
    ui.root.classList.toggle('hw-is-open', open);
    if (open) {
      start();
      scrollToBottom();
      ui.input.focus();
    }
  }

  function setStatus(name, text) {
    ui.status.dataset.state = name;
    ui.status.textContent = text || '';
    ui.status.hidden = name === 'open';
  }

  function nearBottom() {
    const log = ui.log;
    return log.scrollHeight - log.scrollTop - log.clientHeight < 48;
  }

  function scrollToBottom() {
    ui.log.scrollTop = ui.log.scrollHeight;
    state.stuck = true;
  }

  // ---- the connection
  // Bubble mode connects on first use, or at once for a returning visitor (so an
  // agent's answer is there when they open the panel): a page view alone makes no visitor.
  function start() {
    if (state.started) return;
    state.started = true;
    setStatus('connecting', 'Connecting\u2026');
    connect();
  }

  async function connect() {
    state.timer = null;
    let ws;
    try {
      if (state.needSession || !state.token) await openSession();
      // after: a reload starts from 0 (the server replays it all once); a reconnect
      // within this page reads on from the last seq shown.
      const url = `${base.replace(/^http/, 'ws')}/ws?token=${encodeURIComponent(state.token)}&after=${state.maxSeq}`;
      ws = new WebSocket(url);
    } catch (err) {
      // A WebSocket that cannot even be built (an https page and an http hub) is permanent.
      if (err.permanent !== false) {
        state.failed = true;
        setStatus('failed', (err.permanent && err.message) || 'The chat is not available.');
      } else {
        reconnectLater();
      }
      return;
    }
    state.ws = ws;
    ws.onmessage = (e) => onFrame(e.data);
    ws.onclose = (e) => {
      if (state.ws !== ws) return;
      state.ws = null;
      state.ready = false;
      if (e.code === 4401) {
        // Token refused (expired, re-keyed channel): start over as a new visitor.
        state.token = null;
        store(tokenKey, null);
        state.needSession = true;
      }
      reconnectLater();
    };
    // An error is always followed by close, which does the work.
    ws.onerror = () => {};
  }

  async function openSession() {
    for (;;) {
      const body = {};
      if (state.token) body.token = state.token;
      else if (cfg.firstName) body.profile = { firstName: cfg.firstName };
      let res;
      try {
        res = await fetch(`${base}/session`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify(body),
        });
      } catch (_) {
        throw failure(false);
      }
      const answer = await res.json().catch(() => ({}));
      if (res.ok && answer.token) {
        state.token = answer.token;
        store(tokenKey, answer.token);
        if (state.visitorId && state.visitorId !== answer.visitorId) forgetConversation();
        state.visitorId = answer.visitorId;
        state.needSession = false;
        return;
      }
      if (res.status === 401 && state.token) {
        state.token = null;
        store(tokenKey, null);
        continue;
      }
      throw failure(PERMANENT.has(res.status), answer.error && answer.error.message);
    }
  }

  function failure(permanent, message) {
    const err = new Error(message || 'The chat is not available.');
    err.permanent = permanent;
    return err;
  }

  // A new visitor has a new conversation: what the old one saw no longer applies.
  function forgetConversation() {
    state.seen.clear();
    state.maxSeq = 0;
    ui.log.querySelectorAll('[data-seq], .hw-note').forEach((n) => n.remove());
    clearChips();
  }

  function reconnectLater() {
    if (state.timer || state.failed) return;
    setStatus('reconnecting', 'Reconnecting\u2026');
    // Jitter keeps a restarted hub from being hit by every browser at the same instant.
    const delay = Math.min(10000, 500 * 2 ** state.attempt) * (0.8 + Math.random() * 0.4);
    state.attempt += 1;
    state.timer = setTimeout(connect, delay);
  }

  window.addEventListener('online', () => {
    if (state.started && !state.ws && state.timer) {
      clearTimeout(state.timer);
      state.attempt = 0;
      connect();
    }
  });

  function onFrame(data) {
    let frame;
    try { frame = JSON.parse(data); } catch (_) { return; }
    if (frame.type === 'ready') onReady();
    else if (frame.type === 'message') onMessage(frame);
    else if (frame.type === 'error') onError(frame);
    else if (frame.type === 'typing' && frame.from === 'agent') showTyping();
  }

  // Everything not yet confirmed goes (again) in the order it was written; the server
  // recognises a resend by its clientId and shows it once.
  function onReady() {
    state.ready = true;
    state.attempt = 0;
    setStatus('open');
    for (const item of state.outbox.values()) transmit(item.frame);
  }

  function transmit(frame) {
    if (state.ready && state.ws) state.ws.send(JSON.stringify(frame));
  }

  // ---- sending
  function submit() {
    const text = ui.input.value.trim();
    if (!text) return;
    ui.input.value = '';
    ui.send.disabled = true;
    autosize(ui.input);
    sendText(text);
  }

  function sendText(text) {
    send({ type: 'text', text: String(text), clientId: newClientId() }, { type: 'TEXT', text: String(text) });
  }

  function sendPostback(payload, title) {
    const frame = { type: 'postback', payload: String(payload), title: String(title || ''), clientId: newClientId() };
    send(frame, { type: 'PAYLOAD', payload: frame.payload, text: frame.title });
  }

  function send(frame, content) {
    clearChips(); // answered: the offered replies are stale
    const node = messageNode({ from: 'visitor', content, clientId: frame.clientId }, 'pending');
    ui.log.append(node);
    scrollToBottom();
    state.outbox.set(frame.clientId, { frame, node });
    start();
    transmit(frame);
    return frame.clientId;
  }

  function retry(clientId, item) {
    setDelivery(item.node, 'pending');
    state.outbox.delete(clientId);
    state.outbox.set(clientId, item);
    transmit(item.frame);
  }

  // ---- receiving
  function onMessage(frame) {
    const seq = Number(frame.seq);
    if (!Number.isFinite(seq) || state.seen.has(seq)) return;
    state.seen.add(seq);
    state.maxSeq = Math.max(state.maxSeq, seq);

    const stuck = state.stuck;
    const node = messageNode(frame, 'sent');
    if (node) {
      insertBySeq(node, seq);
    }
    const mine = frame.from === 'visitor' && frame.clientId && pendingNode(frame.clientId);
    if (mine) {
      state.outbox.delete(frame.clientId);
      mine.remove();
    }
    const newest = seq === state.maxSeq;
    if (newest) {
      clearChips();
      const replies = frame.content && frame.content.quickReplies;
      if (frame.from !== 'visitor' && Array.isArray(replies)) showChips(replies);
    }
    if (frame.from === 'agent') hideTyping();
    if (stuck) scrollToBottom();
  }

  // A pending or failed bubble of this page, whether or not it is still in the outbox.
  function pendingNode(clientId) {
    return Array.from(ui.log.querySelectorAll('[data-client-id]'))
      .find((n) => n.dataset.clientId === clientId && !n.dataset.seq);
  }

  // Confirmed messages stay in seq order; pending bubbles stay below them.
  function insertBySeq(node, seq) {
    const confirmed = ui.log.querySelectorAll('[data-seq]');
    for (let i = confirmed.length - 1; i >= 0; i -= 1) {
      if (Number(confirmed[i].dataset.seq) < seq) {
        confirmed[i].after(node);
        return;
      }
    }
    ui.log.prepend(node);
  }

  function onError(frame) {
    const node = frame.clientId && pendingNode(frame.clientId);
    if (!node) {
      note(frame.message || 'Something went wrong.');
      return;
    }
    const item = state.outbox.get(frame.clientId) || { frame: null, node };
    state.outbox.delete(frame.clientId);
    setDelivery(node, 'failed', frame.message || 'Not sent.', item.frame && (() => retry(frame.clientId, item)));
  }

  function note(text) {
    const stuck = state.stuck;
    ui.log.append(el('div', 'hw-note', text));
    if (stuck) scrollToBottom();
  }

  function showTyping() {
    ui.typing.hidden = false;
    clearTimeout(state.typingTimer);
    state.typingTimer = setTimeout(hideTyping, 5000);
  }

  function hideTyping() {
    clearTimeout(state.typingTimer);
    ui.typing.hidden = true;
  }

  function showChips(replies) {
    for (const reply of replies) {
      if (!reply || !reply.title) continue;
      const chip = el('button', 'hw-chip', reply.title, { type: 'button', 'data-testid': 'hw-chip' });
      chip.addEventListener('click', () => sendPostback(reply.payload || reply.title, reply.title));
      ui.chips.append(chip);
    }
    ui.chips.hidden = !ui.chips.childElementCount;
  }

  function clearChips() {
    ui.chips.textContent = '';
    ui.chips.hidden = true;
  }

  // ---- rendering one message
  function messageNode(frame, delivery) {
    // Anything the widget does not know as a person is shown as the hub's notice.
    const from = frame.from === 'visitor' || LABELS[frame.from] ? frame.from : 'system';
    const content = frame.content || {};
    const node = el('div', `hw-msg hw-from-${from}`, null, { 'data-testid': 'hw-msg', 'data-from': from });
    if (frame.seq != null) node.dataset.seq = String(frame.seq);
    if (frame.clientId) node.dataset.clientId = frame.clientId;
    if (frame.at) node.title = new Date(frame.at).toLocaleString();

    if (content.type === 'EVENT') {
      if (content.event !== 'LIVE_CHAT_ENDED') return null; // other events are for machines
      node.className = 'hw-msg hw-from-system';
      node.dataset.from = 'system';
      node.append(el('div', 'hw-system', 'The conversation with the agent has ended.'));
    } else if (from === 'system') {
      const line = renderContent(content);
      line.classList.add('hw-system');
      node.append(line);
    } else {
      if (LABELS[from]) node.append(el('div', 'hw-label', LABELS[from]));
      node.append(renderContent(content));
    }
    setDelivery(node, delivery);
    return node;
  }

  function setDelivery(node, delivery, message, onRetry) {
    node.dataset.state = delivery;
    const old = node.querySelector('.hw-meta');
    if (old) old.remove();
    if (delivery === 'pending') node.append(el('div', 'hw-meta', 'Sending\u2026'));
    if (delivery === 'failed') {
      const meta = el('div', 'hw-meta hw-failed', message);
      if (onRetry) {
        const again = el('button', 'hw-retry', 'Retry', { type: 'button', 'aria-label': 'Retry sending this message' });
        again.addEventListener('click', onRetry);
        meta.append(' ', again);
      }
      node.append(meta);
    }
  }

  function renderContent(c) {
    const bubble = el('div', 'hw-bubble');
    switch (c.type) {
      case 'TEXT':
        bubble.append(linkify(c.text || ''));
        break;
      case 'PAYLOAD':
        bubble.textContent = c.text || c.payload || '';
        break;
      case 'BUTTON':
        if (c.text) bubble.append(el('div', 'hw-text', c.text));
        bubble.append(renderButtons(c.buttons));
        break;
      case 'CAROUSEL':
        bubble.classList.add('hw-bare');
        bubble.append(renderCarousel(c.carousel));
        break;
      case 'IMAGE': {
        const src = safeUrl(c.url);
        if (src) {
          bubble.classList.add('hw-media');
          const img = el('img', 'hw-image');
          img.src = src;
          img.alt = c.text || 'Image';
          img.addEventListener('load', () => { if (state.stuck) scrollToBottom(); });
          const a = link(src, null, 'hw-image-link');
          a.append(img);
          bubble.append(a);
        }
        if (c.text) bubble.append(el('div', 'hw-caption', c.text));
        break;
      }
      default:
        if (MEDIA[c.type] && safeUrl(c.url)) {
          bubble.append(link(safeUrl(c.url), c.text ? `${MEDIA[c.type]}: ${c.text}` : MEDIA[c.type], 'hw-file'));
        } else {
          bubble.classList.add('hw-unsupported');
          bubble.textContent = '[unsupported message]';
        }
    }
    return bubble;
  }

  function renderButtons(buttons) {
    const row = el('div', 'hw-buttons');
    for (const b of Array.isArray(buttons) ? buttons.filter(Boolean) : []) {
      let node = null;
      if (b.type === 'web_url' && safeUrl(b.url)) {
        node = link(safeUrl(b.url), b.title || b.url, 'hw-button');
      } else if (b.type === 'phone_number' && b.payload) {
        node = el('a', 'hw-button', b.title || b.payload);
        node.href = `tel:${String(b.payload).replace(/[^0-9+*#]/g, '')}`;
      } else if (b.type === 'postback' || (!b.type && b.payload)) {
        node = el('button', 'hw-button', b.title || b.payload);
        node.type = 'button';
        node.addEventListener('click', () => sendPostback(b.payload || b.title, b.title));
      }
      if (!node) continue;
      node.dataset.testid = 'hw-button';
      row.append(node);
    }
    return row;
  }

  function renderCarousel(cards) {
    const strip = el('div', 'hw-carousel');
    for (const card of Array.isArray(cards) ? cards.filter(Boolean) : []) {
      const node = el('div', 'hw-card');
      const src = safeUrl(card.image_url);
      if (src) {
        const img = el('img', 'hw-card-image');
        img.src = src;
        img.alt = '';
        node.append(img);
      }
      const body = el('div', 'hw-card-body');
      if (card.title) body.append(el('div', 'hw-card-title', card.title));
      if (card.subtitle) body.append(el('div', 'hw-card-subtitle', card.subtitle));
      body.append(renderButtons(card.buttons));
      node.append(body);
      strip.append(node);
    }
    return strip;
  }

  // ---- start
  if (cfg.mode === 'page' || state.token) start();
  if (cfg.mode === 'page') ui.input.focus();
  if (!window.HandoffWebchat) {
    window.HandoffWebchat = {
      open: () => setOpen(true),
      close: () => setOpen(false),
      send: (text) => (String(text || '').trim() ? sendText(text) : null),
    };
  }
})();
