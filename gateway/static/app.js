'use strict';
// llmcam chat page. Plain DOM, no framework, no build step.
// Model and user text only ever reach the page through textContent / text
// nodes, never innerHTML, so it cannot inject markup.

const els = {};                  // DOM references, filled in init()
// sid: current session; events: its EventSource; busy: a turn or session switch is running;
// storedUpTo: the last event stored before the page opened the session (replayed into the
// list, but not news: no toast for those).
const state = { sid: null, events: null, busy: false, storedUpTo: 0 };
const thinking = makeEl('div', { class: 'thinking', text: 'thinking…' });

/* ---------- DOM helpers ---------- */

// Create an element; `text` sets textContent, other keys become attributes.
// Children may be nodes or strings (strings become text nodes, so are safe).
function makeEl(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = value;
    else node.setAttribute(key, value);
  }
  node.append(...children);
  return node;
}

// Run a DOM update, keeping the log pinned to the bottom if the user was
// already there (but not yanking them down while they read older messages).
function keepPinned(update) {
  const log = els.log;
  const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 80;
  update();
  if (atBottom) scrollToBottom();
}

// Add a node to the conversation, above the "thinking…" indicator if shown.
function appendToLog(node) {
  keepPinned(() => els.log.insertBefore(node, thinking.isConnected ? thinking : null));
}

function scrollToBottom() { els.log.scrollTop = els.log.scrollHeight; }

function addBubble(role, text = '') {
  const node = makeEl('div', { class: `msg msg-${role}`, 'data-role': role, text });
  appendToLog(node);
  return node;
}

function showError(message) {
  appendToLog(makeEl('div', { class: 'msg msg-error', 'data-role': 'error', role: 'alert', text: message }));
}

function showThinking() {
  els.log.append(thinking);
  scrollToBottom();
}

function hideThinking() { thinking.remove(); }

function setBusy(busy) {
  state.busy = busy;
  els.send.disabled = busy;
  els.newChat.disabled = busy;
  els.log.setAttribute('aria-busy', String(busy));
}

/* ---------- tiny markdown (DOM nodes only) ---------- */

// Paragraphs, line breaks, ``` fences, `code`, **bold**, links and images.
function renderMarkdown(target, src) {
  const out = document.createDocumentFragment();
  const lines = String(src ?? '').replace(/\r\n?/g, '\n').split('\n');
  let para = [];
  let code = null;               // lines of an open fenced block, or null
  const flushPara = () => { if (para.length) out.append(paragraph(para)); para = []; };
  for (const line of lines) {
    const isFence = /^\s*```/.test(line);
    if (code && isFence) { out.append(codeBlock(code)); code = null; }
    else if (code) code.push(line);
    else if (isFence) { flushPara(); code = []; }
    else if (line.trim() === '') flushPara();
    else para.push(line);
  }
  if (code) out.append(codeBlock(code));   // unterminated fence: still show it
  flushPara();
  target.replaceChildren(out);
  target.classList.remove('streaming');
}

function paragraph(lines) {
  const p = makeEl('p');
  lines.forEach((line, i) => {
    if (i) p.append(makeEl('br'));
    p.append(...inline(line));
  });
  return p;
}

function codeBlock(lines) {
  return makeEl('pre', {}, makeEl('code', { text: lines.join('\n') }));
}

const INLINE = /`([^`]+)`|\*\*(.+?)\*\*|!\[([^\]]*)\]\(([^)\s]+)\)|\[([^\]]+)\]\(([^)\s]+)\)/g;

// Split one line into text and inline nodes.
function inline(text) {
  const nodes = [];
  let last = 0;
  for (const m of text.matchAll(INLINE)) {
    if (m.index > last) nodes.push(text.slice(last, m.index));
    if (m[1] !== undefined) nodes.push(makeEl('code', { text: m[1] }));
    else if (m[2] !== undefined) nodes.push(makeEl('strong', {}, ...inline(m[2])));
    else if (m[4] !== undefined) nodes.push(image(m[3], m[4], m[0]));
    else nodes.push(link(m[5], m[6]));
    last = m.index + m[0].length;
  }
  if (last < text.length) nodes.push(text.slice(last));
  return nodes;
}

// Resolve a URL and return it only if it points at this origin.
function sameOriginUrl(url) {
  let u;
  try { u = new URL(url, location.href); } catch { return null; }
  return u.origin === location.origin ? u : null;
}

// Only session files served by the gateway are loaded; anything else the
// model writes stays plain text so it cannot make the browser fetch it.
function image(alt, url, raw) {
  const u = url.startsWith('/api/sessions/') ? sameOriginUrl(url) : null;
  if (!u) return raw;
  const href = u.pathname + u.search;
  const img = makeEl('img', { src: href, alt: alt || 'image', loading: 'lazy' });
  img.addEventListener('error', () => img.replaceWith(`[image unavailable: ${alt || url}]`));
  return makeEl('a', { href, target: '_blank', rel: 'noopener' }, img);
}

function link(label, url) {
  const u = sameOriginUrl(url);
  if (!u) return `${label} (${url})`;
  return makeEl('a', { href: u.href, target: '_blank', rel: 'noopener', text: label });
}

/* ---------- tool call blocks ---------- */

// Show JSON compactly when it parses, otherwise the raw string.
function formatJson(value, indent) {
  if (typeof value !== 'string') return JSON.stringify(value ?? null, null, indent);
  try { return JSON.stringify(JSON.parse(value), null, indent); } catch { return value; }
}

function addToolBlock(name, args) {
  const node = makeEl('div', { class: 'msg msg-tool', 'data-role': 'tool', 'data-tool': name ?? '' },
    makeEl('div', { class: 'tool-call' },
      makeEl('span', { class: 'tool-label', text: 'Tool' }),
      makeEl('code', { class: 'tool-name', text: name ?? '?' }),
      makeEl('code', { class: 'tool-args', text: args ? formatJson(args) : '' })),
    makeEl('details', { class: 'tool-details' },
      makeEl('summary', { text: 'Running…' }),
      makeEl('pre', { class: 'tool-result' })));
  appendToLog(node);
  return node;
}

function setToolResult(block, content) {
  block.querySelector('summary').textContent = 'Result';
  block.querySelector('.tool-result').textContent = formatJson(content ?? '', 2);
  block.classList.add('done');
}

/* ---------- HTTP ---------- */

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// FastAPI's detail is a string or a list of {loc, msg} field errors.
function detailText(detail) {
  if (typeof detail === 'string') return detail;
  if (Array.isArray(detail)) return detail.map((d) => (d && d.msg) || JSON.stringify(d)).join('; ');
  return detail ? JSON.stringify(detail) : '';
}

async function apiError(res) {
  let detail = '';
  try { detail = detailText((await res.json()).detail); } catch { /* body was not JSON */ }
  return new ApiError(res.status, `Error ${res.status}: ${detail || res.statusText || 'request failed'}`);
}

async function api(method, path, body) {
  const init = { method, headers: { Accept: 'application/json' } };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  if (!res.ok) throw await apiError(res);
  return res.status === 204 ? null : res.json();
}

const sessionPath = (suffix = '') => `/api/sessions/${encodeURIComponent(state.sid)}${suffix}`;

/* ---------- SSE over fetch (EventSource cannot POST) ---------- */

// Incremental parser: feed decoded text with push(), call end() at EOF.
// Handles LF, CRLF and CR line endings, even when split across chunks.
function createSseParser(onEvent) {
  let buffer = '', type = '', data = [];
  function line(text) {
    if (text === '') {                       // blank line ends an event
      if (data.length) onEvent(type || 'message', data.join('\n'));
      type = '', data = [];
      return;
    }
    if (text.startsWith(':')) return;       // comment / keep-alive
    const colon = text.indexOf(':');
    const field = colon < 0 ? text : text.slice(0, colon);
    let value = colon < 0 ? '' : text.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'event') type = value;
    else if (field === 'data') data.push(value);
  }
  return {
    push(chunk) {
      buffer += chunk;
      const eol = /\r\n|\r|\n/g;
      let start = 0, m;
      while ((m = eol.exec(buffer))) {
        // A trailing lone CR may be the first half of a CRLF: wait for more.
        if (m[0] === '\r' && m.index === buffer.length - 1) break;
        line(buffer.slice(start, m.index));
        start = eol.lastIndex;
      }
      buffer = buffer.slice(start);
    },
    end() {
      if (buffer) line(buffer.replace(/\r$/, ''));
      buffer = '';
      line('');                             // flush an unterminated last event
    },
  };
}

async function readSse(res, onEvent) {
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  const parser = createSseParser(onEvent);
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    parser.push(decoder.decode(value, { stream: true }));
  }
  parser.push(decoder.decode());
  parser.end();
}

/* ---------- one chat turn ---------- */

// Routes the streamed events of one reply into the log. Text before a tool
// call and text after it go into separate bubbles, in arrival order.
function createTurn() {
  let bubble = null, text = '';
  const pending = [];                       // tool blocks awaiting a result
  const turn = { finished: false };

  const closeSegment = () => {
    if (bubble) renderMarkdown(bubble, text);
    bubble = null, text = '';
  };

  turn.handle = (type, raw) => {
    let data = {};
    try { data = JSON.parse(raw) || {}; } catch { /* keep {} */ }
    if (type === 'token') {
      hideThinking();
      if (!bubble) {
        bubble = addBubble('assistant');
        bubble.classList.add('streaming');
      }
      text += data.text ?? '';
      keepPinned(() => { bubble.textContent = text; });
    } else if (type === 'tool_call') {
      closeSegment();
      pending.push(addToolBlock(data.name, data.arguments));
    } else if (type === 'tool_result') {
      const i = pending.findIndex((b) => b.dataset.tool === data.name);
      const block = pending.splice(Math.max(i, 0), 1)[0] || addToolBlock(data.name, '');
      setToolResult(block, data.content);
    } else if (type === 'done') {
      turn.finished = true;
      hideThinking();
      const reply = data.reply ?? text;
      if (!bubble && reply) bubble = addBubble('assistant');
      text = reply;
      closeSegment();
    } else if (type === 'error') {
      turn.finished = true;
      hideThinking();
      closeSegment();
      showError(`Error: ${detailText(data.detail) || 'the assistant failed'}`);
    }
  };
  return turn;
}

async function sendMessage(content) {
  setBusy(true);
  addBubble('user', content);
  const turn = createTurn();
  showThinking();
  try {
    const res = await fetch(sessionPath('/messages'), {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Accept: 'text/event-stream' },
      body: JSON.stringify({ content }),
    });
    if (!res.ok) throw await apiError(res);
    await readSse(res, turn.handle);
    if (!turn.finished) showError('Error: the reply stream ended unexpectedly.');
  } catch (err) {
    await reportSendError(err, content);
  } finally {
    hideThinking();
    setBusy(false);
    refreshStreams();
  }
}

// A 404 means the session is gone (expired or deleted elsewhere): start a
// fresh one and hand the text back so the user can resend it.
async function reportSendError(err, content) {
  if (!(err instanceof ApiError)) {
    showError(`Network error: ${err.message}`);
  } else if (err.status === 404) {
    try {
      await enterSession(await createSession());
      showError('This chat session no longer exists, so a new one was started. Please send your message again.');
      if (!els.input.value) els.input.value = content;
    } catch (e) {
      showError(`Could not start a new session: ${e.message}`);
    }
  } else {
    showError(err.message);
  }
}

/* ---------- sessions ---------- */

async function createSession() { return (await api('POST', '/api/sessions')).session_id; }

async function currentOrNewSession() {
  try { return (await api('GET', '/api/sessions/current')).session_id; } catch (err) {
    if (err.status !== 404) throw err;  // 404: no session cookie yet
  }
  return createSession();
}

// Switch the page to `sid`: clear the view, listen for notifications, load history.
async function enterSession(sid) {
  state.sid = sid;
  els.log.replaceChildren();
  els.notifications.replaceChildren();
  els.notificationsEmpty.hidden = false;
  // Event IDs run 1, 2, 3… per session and every event counts in its stream's `sent`, so
  // their sum is the last event already stored.
  const streams = await listStreams();
  state.storedUpTo = (streams || []).reduce((n, s) => n + (Number(s.sent) || 0), 0);
  if (streams) showStreams(streams);
  openEvents();
  await loadHistory();
}

// Rebuild bubbles and tool blocks from stored OpenAI-style messages.
async function loadHistory() {
  const messages = await api('GET', sessionPath('/messages'));
  const blocks = new Map();                 // tool_call_id -> tool block
  for (const m of messages) {
    const content = typeof m.content === 'string' ? m.content : '';
    if (m.role === 'user') {
      addBubble('user', content);
    } else if (m.role === 'assistant') {
      if (content) renderMarkdown(addBubble('assistant'), content);
      for (const call of m.tool_calls || []) {
        blocks.set(call.id, addToolBlock(call.function?.name, call.function?.arguments));
      }
    } else if (m.role === 'tool') {
      setToolResult(blocks.get(m.tool_call_id) || addToolBlock('tool', ''), content);
    }
  }
  scrollToBottom();
}

async function newChat() {
  if (state.busy) return;
  setBusy(true);
  closeEvents();
  try {
    // The old session may already be gone; a new chat should still start.
    if (state.sid) await api('DELETE', sessionPath()).catch((e) => console.warn('delete session:', e));
    await enterSession(await createSession());
  } catch (err) {
    showError(`Could not start a new chat: ${err.message}`);
  } finally {
    setBusy(false);
    els.input.focus();
  }
}

/* ---------- notifications ---------- */

function openEvents() {
  closeEvents();
  const source = new EventSource(sessionPath('/events'));
  source.addEventListener('notification', onNotification);
  state.events = source;                    // EventSource reconnects by itself
}

function closeEvents() {
  if (state.events) state.events.close();
  state.events = null;
}

function onNotification(ev) {
  let n;
  try { n = JSON.parse(ev.data); } catch { return; }
  const fresh = !(Number(ev.lastEventId) <= state.storedUpTo);
  if (fresh) showToast(n.message ?? '');
  els.notifications.append(makeEl('li', { 'data-noti-id': n.noti_id ?? '' },
    makeEl('time', { text: formatTime(n.at) }), ' ',
    makeEl('span', { class: 'noti-message', text: n.message ?? '' })));
  while (els.notifications.children.length > 200) els.notifications.firstElementChild.remove();
  els.notificationsEmpty.hidden = true;
  if (fresh) refreshStreams();             // its stream's `sent` went up
}

// `at` may be epoch seconds, epoch milliseconds or an ISO string.
function formatTime(at) {
  const d = typeof at === 'number' ? new Date(at < 1e12 ? at * 1000 : at) : new Date(at);
  return Number.isNaN(d.getTime()) ? String(at ?? '') : d.toLocaleTimeString();
}

function showToast(message) {
  const toast = makeEl('div', { class: 'toast', role: 'status', 'data-testid': 'toast', text: message });
  toast.addEventListener('click', () => toast.remove());
  els.toasts.append(toast);
  while (els.toasts.children.length > 4) els.toasts.firstElementChild.remove();
  setTimeout(() => toast.remove(), 6000);
}

// The session's streams, or null when they could not be read just now.
async function listStreams() {
  try { return await api('GET', sessionPath('/notifications')); } catch (err) {
    console.warn('list streams:', err);     // transient; the next refresh retries
    return null;
  }
}

async function refreshStreams() {
  const sid = state.sid;
  if (!sid) return;
  const streams = await listStreams();
  if (streams && sid === state.sid) showStreams(streams);  // unless the session changed
}

function showStreams(streams) {
  els.streams.replaceChildren(...streams.map(streamItem));
  els.streamsEmpty.hidden = streams.length > 0;
}

function streamItem(s) {
  const id = String(s.noti_id);
  const short = id.slice(0, 8);
  const li = makeEl('li', { class: `stream status-${s.status}`, 'data-noti-id': id },
    makeEl('code', { class: 'stream-id', title: id, text: short }),
    makeEl('span', { class: 'badge', text: s.status }),
    makeEl('span', { class: 'sent', text: `${s.sent ?? 0} sent` }));
  if (s.status === 'running') {
    const stop = makeEl('button', { type: 'button', class: 'stop', 'aria-label': `Stop stream ${short}`, text: 'Stop' });
    stop.addEventListener('click', () => stopStream(id, stop));
    li.append(stop);
  }
  return li;
}

async function stopStream(id, button) {
  button.disabled = true;
  try { await api('DELETE', sessionPath(`/notifications/${encodeURIComponent(id)}`)); } catch (err) {
    showToast(`Could not stop stream: ${err.message}`);
  }
  refreshStreams();
}

/* ---------- wiring ---------- */

function onSubmit(ev) {
  ev.preventDefault();
  const content = els.input.value.trim();
  if (state.busy || !content) return;
  els.input.value = '';
  autosize();
  sendMessage(content);
}

// Enter sends, Shift+Enter inserts a newline (and never send mid-IME-composition).
function onKeydown(ev) {
  if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
    ev.preventDefault();
    els.form.requestSubmit();
  }
}

function autosize() {
  els.input.style.height = 'auto';
  els.input.style.height = `${els.input.scrollHeight}px`;
}

async function init() {
  for (const [key, id] of Object.entries({
    log: 'messages', form: 'composer', input: 'input', send: 'send', newChat: 'new-chat',
    streams: 'streams', streamsEmpty: 'streams-empty', notifications: 'notifications',
    notificationsEmpty: 'notifications-empty', toasts: 'toasts',
  })) els[key] = document.getElementById(id);

  els.form.addEventListener('submit', onSubmit);
  els.input.addEventListener('keydown', onKeydown);
  els.input.addEventListener('input', autosize);
  els.newChat.addEventListener('click', newChat);
  setInterval(refreshStreams, 15000);

  setBusy(true);
  try {
    await enterSession(await currentOrNewSession());
  } catch (err) {
    showError(`Could not load the chat session: ${err.message}`);
  } finally {
    setBusy(false);
    els.input.focus();
  }
}

document.addEventListener('DOMContentLoaded', init);
