'use strict';
// llmcam chat page. Plain DOM, no framework, no build step.
// User text reaches the page only through textContent / text nodes. Model text is rendered as
// Markdown by the vendored `marked`, with every raw HTML tag in it shown as text, and the HTML
// that comes out is passed through the vendored DOMPurify before it reaches the page.

const els = {};                  // DOM references, filled in init()
// sid: the chat on screen; view: that chat's view (its AbortController cancels what the page
// was reading for it when another chat opens); events: its EventSource; busy: a turn runs in
// this view; storedUpTo: the last notification stored before the page opened the chat (replayed
// into the list, not news: no toast); attachments: names of uploaded files for the next message.
const state = {
  sid: null, view: null, events: null, busy: false, storedUpTo: 0,
  attachments: [], uploading: 0, forgetting: null, resumes: 0, loading: false, blocked: false,
};
// Who is using the page (GET /api/me): `user` is the shown name, null when nobody signs in.
// When a user is signed in, "Your chats" is their list on the server (GET /api/sessions), the
// same on every device; `serverChats` holds it, most recently active first.
const account = { user: null, auth: 'none' };
let serverChats = null;
let chatsAsked = 0;                         // the newest GET /api/sessions wins
const thinking = makeEl('div', { class: 'thinking', 'data-testid': 'activity', text: 'thinking…' });
const MAX_UPLOAD = 10 * 1024 * 1024;
const IMAGE_TYPES = ['image/jpeg', 'image/png'];
const FILE_NAME = /^[\w.-]+\.(?:jpe?g|png)$/i;
const STOPPED_NOTE = '_(stopped)_';       // how the session marks a stopped reply in the history
const DECLINED = 'The user declined this call.';  // a declined (or unanswered) call's result

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

// Add a node to the conversation, above the activity indicator if shown.
function appendToLog(node) {
  keepPinned(() => els.log.insertBefore(node, thinking.isConnected ? thinking : null));
}

function scrollToBottom() { els.log.scrollTop = els.log.scrollHeight; }

function addBubble(role, text = '') {
  const node = makeEl('div', { class: `msg msg-${role}`, 'data-role': role, text });
  appendToLog(node);
  return node;
}

// A user's message: its text, and the images it names as ![name](files/name) as pictures.
function addUserBubble(content) {
  const node = addBubble('user');
  const lines = String(content ?? '').split('\n');
  const images = [];
  const text = lines.filter((line) => {
    const m = /^!\[[^\]]*\]\(files\/([^)\s]+)\)$/.exec(line.trim());
    if (m && FILE_NAME.test(m[1])) { images.push(m[1]); return false; }
    return true;
  }).join('\n').trim();
  if (text) node.append(makeEl('div', { class: 'user-text', text }));
  if (images.length) {
    node.append(makeEl('div', { class: 'user-images' }, ...images.map((n) => thumbnail(fileUrl(n), n))));
  }
  return node;
}

function showError(message) {
  appendToLog(makeEl('div', { class: 'msg msg-error', 'data-role': 'error', role: 'alert', text: message }));
}

function showActivity(text = 'thinking…') {
  thinking.textContent = text;
  if (!thinking.isConnected) els.log.append(thinking);
  keepPinned(() => {});
}

function hideActivity() { thinking.remove(); }

function setBusy(busy) {
  state.busy = busy;
  els.log.setAttribute('aria-busy', String(busy));
  els.stop.hidden = !busy;
  els.stop.disabled = false;
  els.send.hidden = busy;
  updateSend();
}

function updateSend() {
  els.send.disabled = state.busy || state.loading || state.uploading > 0 || !state.sid || state.blocked;
}

/* ---------- URLs of a session's files ---------- */

const sessionPath = (suffix = '', sid = state.sid) => `/api/sessions/${encodeURIComponent(sid)}${suffix}`;
const fileUrl = (name) => sessionPath(`/files/${encodeURIComponent(name)}`);

// A link or image source as the model writes it, as a URL of this origin, or null. Tools name
// files as `files/<name>`, relative to the session; `/api/sessions/...` links stay as they are.
function sessionUrl(raw) {
  const url = String(raw ?? '').trim();
  const rel = /^(?:\.\/)?files\/([^/?#\s]+)$/.exec(url);
  if (rel) {
    let name = rel[1];
    try { name = decodeURIComponent(name); } catch { /* keep as written */ }
    return fileUrl(name);
  }
  if (!url.startsWith('/api/sessions/')) return null;
  let u;
  try { u = new URL(url, location.origin); } catch { return null; }
  return u.origin === location.origin ? u.pathname + u.search : null;
}

// Where a link may go: this session's files, or the web over http(s) / mailto.
function linkUrl(raw) {
  const inSession = sessionUrl(raw);
  if (inSession) return inSession;
  let u;
  try { u = new URL(String(raw ?? ''), location.href); } catch { return null; }
  if (!['http:', 'https:', 'mailto:'].includes(u.protocol)) return null;
  if (u.origin === location.origin && !u.pathname.startsWith('/api/sessions/')) return null;
  return u.href;
}

function thumbnail(src, alt) {
  const img = makeEl('img', { src, alt: alt || 'image', loading: 'lazy' });
  img.addEventListener('error', () => img.replaceWith(`[image unavailable: ${alt || src}]`));
  return makeEl('a', { href: src, target: '_blank', rel: 'noopener', class: 'thumb' }, img);
}

/* ---------- Markdown (vendored marked + DOMPurify) ---------- */

const escapeHtml = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

let markdown = null;             // a configured Marked, once the vendored scripts are there
const PURIFY = {
  USE_PROFILES: { html: true },
  FORBID_TAGS: ['style', 'form', 'input', 'button', 'textarea', 'select', 'option', 'dialog',
    'iframe', 'object', 'embed', 'link', 'meta', 'base', 'audio', 'video', 'source', 'picture'],
  FORBID_ATTR: ['style', 'srcset', 'id', 'name', 'action', 'formaction'],
  ALLOW_DATA_ATTR: false,
  RETURN_DOM_FRAGMENT: true,
};

function setUpMarkdown() {
  if (markdown || !window.marked || !window.DOMPurify) return markdown;
  markdown = new window.marked.Marked({ gfm: true, breaks: true, async: false });
  // Raw HTML in a reply is shown as the text it is, never made into elements.
  markdown.use({ renderer: { html: ({ text }) => escapeHtml(text ?? '') } });
  // Inside DOMPurify's inert document, before anything can load: images only from this
  // session's files, links only where linkUrl() allows.
  window.DOMPurify.addHook('afterSanitizeAttributes', (node) => {
    if (node.tagName === 'IMG') {
      const src = sessionUrl(node.getAttribute('src'));
      if (src) node.setAttribute('src', src);
      else {
        node.setAttribute('data-blocked', node.getAttribute('src') || '');
        node.removeAttribute('src');
      }
    } else if (node.tagName === 'A') {
      const href = linkUrl(node.getAttribute('href'));
      if (href) node.setAttribute('href', href);
      else node.removeAttribute('href');
    }
  });
  return markdown;
}

function renderMarkdown(target, src) {
  const md = setUpMarkdown();
  const text = String(src ?? '');
  if (!md) {                       // the vendored scripts did not load: plain text
    target.textContent = text;
    target.classList.add('plain');
    return;
  }
  const fragment = window.DOMPurify.sanitize(md.parse(text), PURIFY);
  for (const img of fragment.querySelectorAll('img')) {
    const alt = img.getAttribute('alt') || '';
    if (!img.hasAttribute('src')) {
      const blocked = img.getAttribute('data-blocked');
      img.replaceWith(alt || blocked ? `[image: ${alt || blocked}]` : '');
      continue;
    }
    img.setAttribute('loading', 'lazy');
    img.addEventListener('error', () => img.replaceWith(`[image unavailable: ${alt || img.src}]`));
    if (!img.closest('a')) {
      const a = makeEl('a', { href: img.getAttribute('src'), target: '_blank', rel: 'noopener' });
      img.replaceWith(a);
      a.append(img);
    }
  }
  for (const a of fragment.querySelectorAll('a')) {
    if (!a.hasAttribute('href')) { a.replaceWith(...a.childNodes); continue; }
    a.setAttribute('target', '_blank');
    a.setAttribute('rel', 'noopener');
  }
  for (const pre of fragment.querySelectorAll('pre')) {
    const spot = document.createComment('');
    pre.replaceWith(spot);
    spot.replaceWith(codeBlock(pre));
  }
  for (const table of fragment.querySelectorAll('table')) {
    const wrap = makeEl('div', { class: 'table-wrap' });
    table.replaceWith(wrap);
    wrap.append(table);
  }
  target.replaceChildren(fragment);
}

// A fenced code block with a Copy button above it.
function codeBlock(pre) {
  const copy = makeEl('button', { type: 'button', class: 'copy', 'aria-label': 'Copy code', text: 'Copy' });
  copy.addEventListener('click', async () => {
    const ok = await copyText(pre.textContent.replace(/\n$/, ''));
    copy.textContent = ok ? 'Copied' : 'Copy failed';
    setTimeout(() => { copy.textContent = 'Copy'; }, 1500);
  });
  const lang = /language-([\w+-]+)/.exec(pre.querySelector('code')?.className || '');
  return makeEl('div', { class: 'code-block' },
    makeEl('div', { class: 'code-head' }, makeEl('span', { class: 'code-lang', text: lang ? lang[1] : '' }), copy),
    pre);
}

async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    const area = makeEl('textarea', { class: 'offscreen', readonly: '' });
    area.value = text;
    document.body.append(area);
    area.select();
    let ok = false;
    try { ok = document.execCommand('copy'); } catch { /* not allowed */ }
    area.remove();
    return ok;
  }
}

/* ---------- tool call blocks ---------- */

// Show JSON compactly when it parses, otherwise the raw string.
function formatJson(value, indent) {
  if (typeof value !== 'string') return JSON.stringify(value ?? null, null, indent);
  try { return JSON.stringify(JSON.parse(value), null, indent); } catch { return value; }
}

function addToolBlock(name, args) {
  const node = makeEl('div', { class: 'msg msg-tool running', 'data-role': 'tool', 'data-tool': name ?? '' },
    makeEl('div', { class: 'tool-call' },
      makeEl('span', { class: 'tool-label', text: 'Tool' }),
      makeEl('code', { class: 'tool-name', text: name ?? '?' }),
      makeEl('code', { class: 'tool-args', text: args ? formatJson(args) : '' })),
    makeEl('div', { class: 'tool-images', 'data-testid': 'tool-images' }),
    makeEl('details', { class: 'tool-details' },
      makeEl('summary', { text: `Running ${name ?? 'tool'}…` }),
      makeEl('pre', { class: 'tool-result' })));
  appendToLog(node);
  return node;
}

// The images a tool result shows: ![alt](files/name) or ![alt](/api/sessions/...), else the
// file a JSON result names.
function resultImages(content) {
  const text = typeof content === 'string' ? content : JSON.stringify(content ?? '');
  const found = new Map();
  for (const m of text.matchAll(/!\[([^\]]*)\]\(([^)\s]+)\)/g)) {
    const src = sessionUrl(m[2]);
    if (src && /\.(?:jpe?g|png)$/i.test(src)) found.set(src, m[1] || m[2]);
  }
  if (!found.size) {
    try {
      const file = JSON.parse(text)?.file;
      if (typeof file === 'string' && FILE_NAME.test(file)) found.set(fileUrl(file), file);
    } catch { /* not JSON */ }
  }
  return [...found];
}

function setToolResult(block, content) {
  block.classList.remove('running');
  block.classList.add('done');
  block.querySelector('summary').textContent = 'Result';
  block.querySelector('.tool-result').textContent = formatJson(content ?? '', 2);
  const images = resultImages(content);
  keepPinned(() => block.querySelector('.tool-images')
    .replaceChildren(...images.map(([src, alt]) => thumbnail(src, alt))));
}

/* ---------- confirming a tool call ---------- */

// A tool call the turn waits on until the user allows it (the `confirm` event): its name and
// arguments (as text, never as HTML) with Allow and Deny buttons. Every reader of the turn sees
// it, and a replayed turn replays it: the call's `tool_result`, or the end of the turn, says it
// waits no longer, and the buttons go.
function addConfirm(sid, data) {
  const name = String(data.name ?? '?');
  const callId = String(data.call_id ?? '');
  const allow = makeEl('button', { type: 'button', class: 'confirm-allow', text: 'Allow' });
  const deny = makeEl('button', { type: 'button', class: 'confirm-deny', text: 'Deny' });
  const status = makeEl('span', { class: 'confirm-status', role: 'status', 'data-testid': 'confirm-status' });
  const node = makeEl('div', {
    class: 'msg msg-confirm waiting', 'data-role': 'confirm', 'data-tool': name,
    'data-call-id': callId, role: 'group', 'aria-label': `Allow the tool call ${name}?`,
  },
  makeEl('div', { class: 'confirm-head' },
    makeEl('span', { class: 'confirm-label', text: 'Allow this tool call?' }),
    makeEl('code', { class: 'tool-name', text: name })),
  makeEl('pre', { class: 'confirm-args', 'data-testid': 'confirm-args', text: formatJson(data.arguments ?? '', 2) }),
  makeEl('div', { class: 'confirm-actions' }, makeEl('span', { class: 'confirm-buttons' }, allow, deny), status));
  allow.addEventListener('click', () => answerConfirm(node, sid, callId, true));
  deny.addEventListener('click', () => answerConfirm(node, sid, callId, false));
  appendToLog(node);
  return node;
}

function setConfirmStatus(node, text) {
  node.querySelector('.confirm-status').textContent = text;
}

async function answerConfirm(node, sid, callId, allow) {
  const buttons = [...node.querySelectorAll('.confirm-buttons button')];
  for (const b of buttons) b.disabled = true;
  setConfirmStatus(node, allow ? 'Allowing…' : 'Denying…');
  try {
    await api('POST', sessionPath('/turn/confirm', sid), { call_id: callId, allow });
    node.dataset.answer = allow ? 'allowed' : 'denied';
    setConfirmStatus(node, allow ? 'Allowed' : 'Denied');
    if (node.classList.contains('waiting') && sid === state.sid && state.busy) {
      showActivity(allow ? `Running ${node.dataset.tool}…` : 'thinking…');
    }
  } catch (err) {
    if (err.status === 404) {               // timed out, or answered in another tab
      node.dataset.answer = 'gone';
      setConfirmStatus(node, 'This call is no longer waiting');
      closeConfirm(node);
    } else {                                // the network, a limit: the user may try again
      setConfirmStatus(node, `Your answer was not sent: ${err.message}`);
      for (const b of buttons) b.disabled = false;
    }
  }
}

// The call waits no longer: its buttons go. `outcome` ('allowed' / 'declined'), when known from
// the call's result, is said unless this page's own answer already says it.
function closeConfirm(node, outcome = '') {
  node.classList.remove('waiting');
  node.querySelector('.confirm-buttons')?.remove();
  const said = node.dataset.answer || '';
  if (said === 'allowed' || said === 'denied' || said === 'declined') return;
  const how = { allowed: 'Allowed', declined: 'Not run: denied, or not answered in time' }[outcome];
  if (said === 'gone') {                    // this page's answer came too late: say what happened
    if (how) setConfirmStatus(node, `This call is no longer waiting. ${how}.`);
  } else {
    setConfirmStatus(node, how || 'No longer waiting');
  }
  if (outcome) node.dataset.answer = outcome;
}

/* ---------- HTTP ---------- */

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// FastAPI's detail is a string or a list of {loc, msg} field errors; never shown as raw JSON.
function detailText(detail) {
  if (typeof detail === 'string') return detail;
  if (Array.isArray(detail)) return detail.map((d) => (typeof d === 'string' ? d : d?.msg || 'invalid input')).join('; ');
  if (detail && typeof detail === 'object') return String(detail.msg || detail.message || '');
  return '';
}

// Seconds from a Retry-After header (a number of seconds or an HTTP date), or null.
function retryAfter(res) {
  const value = (res.headers.get('Retry-After') || '').trim();
  if (!value) return null;
  if (/^\d+$/.test(value)) return Number(value);
  const at = Date.parse(value);
  return Number.isNaN(at) ? null : Math.max(0, Math.ceil((at - Date.now()) / 1000));
}

// A same-site path the server names for signing in (`login` of a 401), or ''.
function loginPath(value) {
  return typeof value === 'string' && value.startsWith('/') && !value.startsWith('//') ? value : '';
}

// What a refused request says to the user: the server's own words, never its raw body.
async function apiError(res) {
  let body = null;
  try { body = await res.json(); } catch { /* body was not JSON */ }
  const detail = detailText(body?.detail);
  const error = new ApiError(res.status, `Error ${res.status}: ${detail || res.statusText || 'request failed'}`);
  error.detail = detail;
  error.limit = typeof body?.limit === 'string' ? body.limit : '';
  error.login = loginPath(body?.login);
  error.retryAfter = retryAfter(res);
  if (res.status === 429) {
    const named = error.limit && !detail.includes(error.limit) ? ` (${error.limit})` : '';
    let words = detail || 'too many requests';
    let wait = '';
    if (error.retryAfter !== null) {          // a number says more than "shortly"
      words = words.replace(/[;,.]?\s*try again shortly\.?$/i, '') || words;
      wait = ` — try again in ${error.retryAfter} s`;
    }
    error.message = `Limit reached: ${words}${named}${wait}`;
  } else if (res.status === 401) {
    error.message = `Sign-in needed: ${detail || 'this server expects a signed-in user'}`;
    if (error.login) goSignIn(error.login);   // the sign-in ended (oidc): sign in again
  }
  return error;
}

let leaving = false;
function goSignIn(path) {
  if (leaving) return;
  leaving = true;
  location.assign(path);
}

async function api(method, path, body, signal) {
  const init = { method, headers: { Accept: 'application/json' }, signal };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  if (!res.ok) throw await apiError(res);
  return res.status === 204 ? null : res.json();
}

/* ---------- SSE over fetch (EventSource cannot POST) ---------- */

// Incremental parser: feed decoded text with push(), call end() at EOF.
// Handles LF, CRLF and CR line endings, even when split across chunks.
function createSseParser(onEvent) {
  let buffer = '', type = '', data = [], lastId = '';
  function line(text) {
    if (text === '') {                       // blank line ends an event
      if (data.length) onEvent(type || 'message', data.join('\n'), lastId);
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
    else if (field === 'id' && !value.includes('\0')) lastId = value;
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

// Routes the streamed events of one turn into the log. Text before a tool call and text after
// it go into separate bubbles, in arrival order. A reply is rendered as Markdown as it grows.
function createTurn(view) {
  let bubble = null, text = '', frame = 0;
  const pending = [];                       // tool blocks awaiting a result
  const asking = [];                        // confirm prompts whose call has no result yet
  const turn = { finished: false, stopped: false };

  const render = () => {
    frame = 0;
    if (bubble) keepPinned(() => renderMarkdown(bubble, text));
  };
  const closeSegment = () => {
    if (frame) cancelAnimationFrame(frame);
    render();
    if (bubble) bubble.classList.remove('streaming');
    bubble = null, text = '';
  };

  turn.handle = (type, raw) => {
    if (view !== state.view) return;        // another chat is on screen now
    let data = {};
    try { data = JSON.parse(raw) || {}; } catch { /* keep {} */ }
    if (type === 'token') {
      hideActivity();
      if (!bubble) {
        bubble = addBubble('assistant');
        bubble.classList.add('streaming');
      }
      text += data.text ?? '';
      if (!frame) frame = requestAnimationFrame(render);
    } else if (type === 'tool_call') {
      closeSegment();
      pending.push(addToolBlock(data.name, data.arguments));
      showActivity(`Running ${data.name ?? 'a tool'}…`);
    } else if (type === 'confirm') {
      closeSegment();
      const block = pending.find((b) => b.dataset.tool === data.name && !b.dataset.asked);
      if (block) {
        block.dataset.asked = 'true';
        block.querySelector('summary').textContent = 'Waiting for your answer…';
      }
      asking.push(addConfirm(view.sid, data));
      showActivity('Waiting for your answer…');
    } else if (type === 'tool_result') {
      // A round's results come once all of its calls are answered: no prompt waits any more,
      // and this result says how its own call was answered (they come in the calls' order).
      const j = asking.findIndex((p) => p.dataset.tool === data.name);
      if (j >= 0) closeConfirm(asking.splice(j, 1)[0], data.content === DECLINED ? 'declined' : 'allowed');
      for (const prompt of asking) closeConfirm(prompt);
      const i = pending.findIndex((b) => b.dataset.tool === data.name);
      const block = pending.splice(Math.max(i, 0), 1)[0] || addToolBlock(data.name, '');
      setToolResult(block, data.content);
      showActivity(pending.length ? `Running ${pending[0].dataset.tool}…` : 'thinking…');
    } else if (type === 'done') {
      turn.finished = true;
      turn.stopped = Boolean(data.stopped);
      hideActivity();
      const reply = data.reply ?? text;
      // `reply` is the last segment's whole text: it may only be longer than what streamed.
      if (!bubble && reply && !(turn.stopped && !text)) bubble = addBubble('assistant');
      if (bubble) text = reply || text;
      const last = bubble;
      closeSegment();
      for (const prompt of asking) closeConfirm(prompt);
      for (const block of pending) markToolStopped(block);
      if (turn.stopped) markStopped(last);
    } else if (type === 'error') {
      turn.finished = true;
      hideActivity();
      closeSegment();
      for (const prompt of asking) closeConfirm(prompt);
      for (const block of pending) markToolStopped(block);
      showError(`Error: ${detailText(data.detail) || 'the assistant failed'}`);
    }
  };
  return turn;
}

function markToolStopped(block) {
  block.classList.remove('running');
  block.querySelector('summary').textContent = 'Stopped';
}

// The reply of a stopped turn stays as far as it got, with a note that it was stopped.
function markStopped(bubble) {
  const node = bubble || addBubble('assistant');
  node.classList.add('stopped');
  node.dataset.stopped = 'true';
  node.append(makeEl('div', { class: 'stopped-note', text: 'Stopped' }));
}

// Read one turn's SSE answer into the view; true if it ended with done or error.
async function followTurn(res, view) {
  const turn = createTurn(view);
  showActivity();
  setBusy(true);
  try {
    await readSse(res, turn.handle);
  } catch (err) {
    if (view !== state.view) return true;   // left for another chat: the turn runs on
    console.warn('turn stream:', err);
  } finally {
    if (view === state.view) {
      hideActivity();
      setBusy(false);
    }
  }
  if (view !== state.view) return true;
  if (turn.finished) state.resumes = 0;
  else await resumeTurn(view);
  refreshStreams();
  if (signedIn()) refreshChats();           // its title, and the order of last activity
  return true;
}

// The stream broke off (a phone that slept, a network change): pick the turn up again if it
// still runs, else show what it stored.
async function resumeTurn(view) {
  state.resumes += 1;
  if (state.resumes > 3) {                  // it keeps breaking off: say so, and stop trying
    state.resumes = 0;
    showError('Error: the reply stream ended unexpectedly. Reload the page to see the reply.');
    return;
  }
  try {
    await enterSession(view.sid);
  } catch (err) {
    showError(`Error: the reply stream ended unexpectedly (${err.message}).`);
  }
}

// `draft`: what the user typed and attached, handed back to the composer when the message
// was not taken (a limit, a gone chat, the network), so nothing they wrote is lost.
async function sendMessage(content, draft = { text: content, attachments: [] }) {
  const view = state.view;
  const bubble = addUserBubble(content);
  showActivity();
  setBusy(true);
  let res;
  try {
    res = await fetch(sessionPath('/messages', view.sid), {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Accept: 'text/event-stream' },
      body: JSON.stringify({ content }),
      signal: view.abort.signal,
    });
    if (!res.ok) throw await apiError(res);
  } catch (err) {
    if (view !== state.view) return;
    hideActivity();
    setBusy(false);
    if (err instanceof ApiError) bubble.remove();   // refused: nothing of it was recorded
    restoreDraft(draft, err.status !== 404);        // a gone chat's files are gone with it
    await reportSendError(err);
    return;
  }
  noteFirstMessage(view.sid, content);
  try {
    await followTurn(res, view);
  } catch (err) {
    if (view !== state.view) return;
    hideActivity();
    setBusy(false);
    showError(`Network error: ${err.message}`);
  }
}

function restoreDraft({ text, attachments }, withAttachments = true) {
  const typed = els.input.value;
  els.input.value = [text, typed].filter((t) => t && t.trim()).join('\n');
  if (withAttachments) {
    state.attachments = [...attachments, ...state.attachments.filter((n) => !attachments.includes(n))];
    renderAttachments();
  }
  autosize();
  updateSend();
}

// A 404 means the session is gone (expired or deleted elsewhere): start a fresh one; the text
// is back in the input box so the user can resend it. Anything else: the server's words.
async function reportSendError(err) {
  if (!(err instanceof ApiError)) {
    showError(`Network error: ${err.message}`);
  } else if (err.status === 404) {
    try {
      forgetChat(state.sid);
      await enterSession(await createSession());
      showError('This chat no longer exists on the server, so a new one was started. Please send your message again.');
    } catch (e) {
      showError(`Could not start a new chat: ${e.message}`);
    }
  } else {
    showError(err.message);
  }
}

async function stopTurn() {
  if (!state.busy || !state.sid) return;
  els.stop.disabled = true;
  try {
    await api('DELETE', sessionPath('/turn'));
  } catch (err) {
    if (err.status !== 404) {            // 404: it ended by itself just now
      showToast(`Could not stop the reply: ${err.message}`);
      els.stop.disabled = false;
    }
  }
}

/* ---------- your chats (the user's on the server, else kept in this browser) ---------- */

const CHATS_KEY = 'llmcam.chats';
const CURRENT_KEY = 'llmcam.current';
let memoryStore = { [CHATS_KEY]: '[]' };  // where localStorage is not available

function storageGet(key) {
  try { return localStorage.getItem(key); } catch { return memoryStore[key] ?? null; }
}

function storageSet(key, value) {
  try { localStorage.setItem(key, value); } catch { memoryStore = { ...memoryStore, [key]: value }; }
}

// [{id, title, created}] newest first; created in ms since the epoch.
function loadChats() {
  try {
    const list = JSON.parse(storageGet(CHATS_KEY) || '[]');
    return Array.isArray(list) ? list.filter((c) => c && typeof c.id === 'string' && c.id) : [];
  } catch {
    return [];
  }
}

function saveChats(list) {
  list.sort((a, b) => (b.created || 0) - (a.created || 0));
  storageSet(CHATS_KEY, JSON.stringify(list));
  renderChats();
}

const signedIn = () => Boolean(account.user);

// The chats to list: the signed-in user's from the server, else this browser's own.
function listChats() {
  return signedIn() ? serverChats || [] : loadChats();
}

// The signed-in user's chats from GET /api/sessions (throws when they cannot be read).
async function loadServerChats() {
  const asked = ++chatsAsked;
  const list = await api('GET', '/api/sessions');
  if (asked !== chatsAsked) return;         // a newer answer is coming
  const fresh = (Array.isArray(list) ? list : []).filter((s) => s && typeof s.session_id === 'string')
    .map((s) => ({
      id: s.session_id,
      title: chatTitle(s.title),
      created: Math.round((Number(s.created_at) || 0) * 1000),
      active: Math.round((Number(s.last_active) || 0) * 1000),
    }));
  // The chat on screen stays listed while it is open, whatever this answer missed.
  const open = (serverChats || []).find((c) => c.id === state.sid);
  if (open && !fresh.some((c) => c.id === open.id)) fresh.unshift(open);
  serverChats = fresh;
  renderChats();
}

async function refreshChats() {
  if (!signedIn()) { renderChats(); return; }
  try { await loadServerChats(); } catch (err) {
    console.warn('list chats:', err.message);  // transient; the next refresh retries
  }
}

function rememberChat(id, fields = {}) {
  if (signedIn()) {                         // shown at once; the server's list follows
    serverChats = serverChats || [];
    const chat = serverChats.find((c) => c.id === id);
    if (chat) Object.assign(chat, fields);
    else serverChats.unshift({ id, title: '', created: Date.now(), active: Date.now(), ...fields });
    renderChats();
    return;
  }
  const list = loadChats();
  const chat = list.find((c) => c.id === id);
  if (chat) Object.assign(chat, fields);
  else list.push({ id, title: '', created: Date.now(), ...fields });
  saveChats(list);
}

function forgetChat(id) {
  if (signedIn()) {
    serverChats = (serverChats || []).filter((c) => c.id !== id);
    renderChats();
  } else {
    saveChats(loadChats().filter((c) => c.id !== id));
  }
  if (storageGet(CURRENT_KEY) === id) storageSet(CURRENT_KEY, '');
}

function chatTitle(content) {
  const text = String(content ?? '').split('\n')
    .filter((line) => !/^!\[[^\]]*\]\(files\/[^)]+\)$/.test(line.trim())).join(' ').trim();
  const title = text || (/\(files\/([^)]+)\)/.exec(content)?.[1] ? 'Image' : '');
  return title.length > 80 ? `${title.slice(0, 79)}…` : title;
}

function noteFirstMessage(id, content) {
  const chat = listChats().find((c) => c.id === id);
  if (chat && !chat.title) rememberChat(id, { title: chatTitle(content) });
}

function formatDate(ms) {
  const d = new Date(ms);
  if (Number.isNaN(d.getTime())) return '';
  const today = new Date().toDateString() === d.toDateString();
  return today ? d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })
    : d.toLocaleDateString([], { year: 'numeric', month: 'short', day: 'numeric' });
}

function renderChats() {
  if (!els.chatList) return;
  const server = signedIn();
  els.chatList.dataset.source = server ? 'server' : 'browser';
  els.chatList.replaceChildren(...listChats().map((chat) => {
    const title = chat.title || 'New chat';
    const current = chat.id === state.sid;
    const when = (server && chat.active) || chat.created || 0;
    const open = makeEl('button', { type: 'button', class: 'chat-open' },
      makeEl('span', { class: 'chat-title', text: title }),
      makeEl('time', { class: 'chat-date', datetime: new Date(when).toISOString(), text: formatDate(when) }));
    if (current) open.setAttribute('aria-current', 'true');
    open.addEventListener('click', () => openChat(chat.id));
    const forget = server
      ? makeEl('button', { type: 'button', class: 'chat-forget', 'aria-label': `Delete chat: ${title}`, title: 'Delete this chat', text: '×' })
      : makeEl('button', { type: 'button', class: 'chat-forget', 'aria-label': `Forget chat: ${title}`, title: 'Forget this chat', text: '×' });
    forget.addEventListener('click', () => askForget(chat));
    return makeEl('li', { class: current ? 'chat-item current' : 'chat-item', 'data-testid': 'chat' }, open, forget);
  }));
}

async function openChat(id) {
  closeChatsOnNarrow();
  if (id === state.sid && state.view) return;
  try {
    await enterSession(id);
  } catch (err) {
    if (err.status === 404) {
      forgetChat(id);
      showToast('That chat no longer exists on the server; it was removed from your chats.');
      await enterSession(await firstChatOrNew());
    } else {
      showError(`Could not open the chat: ${err.message}`);
    }
  }
}

// Forgetting a chat of this browser's list may also delete it; a signed-in user's chat is on
// the server's list on every device, so there forgetting it means deleting it.
function askForget(chat) {
  const server = signedIn();
  state.forgetting = chat.id;
  els.forgetTitle.textContent = chat.title || 'New chat';
  els.forgetDelete.checked = false;
  els.forgetDeleteLabel.hidden = server;
  els.forgetHeading.textContent = server ? 'Delete this chat?' : 'Forget this chat?';
  els.forgetEffect.textContent = server
    ? 'is deleted on the server, on all your devices: its history and files are gone for good.'
    : "leaves this browser's list of chats.";
  els.forgetConfirm.textContent = server ? 'Delete' : 'Forget';
  els.forgetDialog.showModal();
}

async function confirmForget() {
  const id = state.forgetting;
  const deleteIt = els.forgetDelete.checked || signedIn();
  els.forgetDialog.close();
  state.forgetting = null;
  if (!id) return;
  if (deleteIt) {
    try { await api('DELETE', sessionPath('', id)); } catch (err) {
      if (err.status !== 404) { showToast(`Could not delete the chat: ${err.message}`); return; }
    }
  }
  forgetChat(id);
  if (id === state.sid) {
    state.sid = null;
    try { await enterSession(await firstChatOrNew()); } catch (err) {
      showError(`Could not open a chat: ${err.message}`);
    }
  }
}

async function firstChatOrNew() {
  const [first] = listChats();
  return first ? first.id : createSession();
}

function closeChatsOnNarrow() {
  document.body.classList.remove('chats-open');
  els.chatsToggle.setAttribute('aria-expanded', 'false');
}

/* ---------- sessions ---------- */

async function createSession() {
  const sid = (await api('POST', '/api/sessions')).session_id;
  rememberChat(sid, { created: Date.now() });
  if (signedIn()) refreshChats();
  return sid;
}

// The chat to open first: the one open last time, else the newest, else the session the cookie
// names (a page from before "Your chats"), else a new one. A signed-in user's come from the
// server.
async function startingChat() {
  if (signedIn()) {
    await loadServerChats();
    const list = listChats();
    const last = storageGet(CURRENT_KEY);
    if (last && list.some((c) => c.id === last)) return last;
    return list.length ? list[0].id : createSession();
  }
  const chats = loadChats();
  const last = storageGet(CURRENT_KEY);
  if (last && chats.some((c) => c.id === last)) return last;
  if (chats.length) return chats[0].id;
  try {
    const info = await api('GET', '/api/sessions/current');
    rememberChat(info.session_id, { created: Math.round(info.created_at * 1000) });
    return info.session_id;
  } catch (err) {
    if (err.status !== 404) throw err;  // 404: no session cookie yet
  }
  return createSession();
}

// Put chat `sid` on screen: its notifications, its history, and the turn it is running (a page
// reloaded mid-turn shows that turn from its start, still streaming).
async function enterSession(sid) {
  const view = { sid, abort: new AbortController() };
  state.loading = true;                     // no sending until the chat is on screen
  try {
    await showSession(view);
  } finally {
    if (view === state.view) {
      state.loading = false;
      updateSend();
    }
  }
}

async function showSession(view) {
  const { sid } = view;
  if (state.view) state.view.abort.abort();
  closeEvents();
  state.view = view;
  state.sid = sid;
  state.attachments = [];
  renderAttachments();
  hideActivity();
  setBusy(false);
  els.log.replaceChildren();
  els.notifications.replaceChildren();
  els.notificationsEmpty.hidden = false;
  showEventsProblem('');
  showStreams([]);
  storageSet(CURRENT_KEY, sid);
  renderChats();
  const { signal } = view.abort;

  const info = await api('GET', sessionPath('', sid), undefined, signal);
  if (view !== state.view) return;
  const chat = listChats().find((c) => c.id === sid);
  if (!chat) rememberChat(sid, { created: Math.round(info.created_at * 1000) });
  // Event IDs run 1, 2, 3… per session and every event counts in its stream's `sent`, so
  // their sum is the last event already stored.
  const streams = info.notifications || [];
  state.storedUpTo = streams.reduce((n, s) => n + (Number(s.sent) || 0), 0);
  showStreams(streams);
  openEvents();

  // Ask for the turn in flight before reading the history: when it answers, the turn's user
  // message is stored, and the turn's events are replayed from its start.
  const live = await fetch(sessionPath('/turn', sid), { headers: { Accept: 'text/event-stream' }, signal });
  if (view !== state.view) return;
  if (live.status === 404) throw await apiError(live);
  if (live.status !== 200 && live.status !== 204) {   // the history still shows what was said
    const err = await apiError(live);
    if (view !== state.view) return;
    if (live.status === 429) showError(`The reply in progress cannot be followed live: ${err.message}`);
    else console.warn('turn in flight:', err.message);
  }
  const messages = await api('GET', sessionPath('/messages', sid), undefined, signal);
  if (view !== state.view) return;
  let shown = messages;
  if (live.status === 200) {
    const lastUser = messages.map((m) => m.role).lastIndexOf('user');
    shown = lastUser >= 0 ? messages.slice(0, lastUser + 1) : messages;
  }
  showHistory(shown);
  if (!chat?.title) {
    const first = messages.find((m) => m.role === 'user' && typeof m.content === 'string');
    if (first) rememberChat(sid, { title: chatTitle(first.content) });
  }
  if (live.status === 200) followTurn(live, view);
}

// Rebuild bubbles and tool blocks from stored OpenAI-style messages.
function showHistory(messages) {
  const blocks = new Map();                 // tool_call_id -> tool block
  for (const m of messages) {
    let content = typeof m.content === 'string' ? m.content : '';
    if (m.role === 'user') {
      addUserBubble(content);
    } else if (m.role === 'assistant') {
      // The session marks a reply the user stopped with a note at its end.
      const noted = content.trimEnd().endsWith(STOPPED_NOTE);
      if (noted) content = content.trimEnd().slice(0, -STOPPED_NOTE.length).trimEnd();
      const stopped = noted || Boolean(m.stopped);
      if (content || stopped) {
        const bubble = addBubble('assistant');
        renderMarkdown(bubble, content);
        if (stopped) markStopped(bubble);
      }
      for (const call of m.tool_calls || []) {
        blocks.set(call.id, addToolBlock(call.function?.name, call.function?.arguments));
      }
    } else if (m.role === 'tool') {
      setToolResult(blocks.get(m.tool_call_id) || addToolBlock('tool', ''), content);
    }
  }
  for (const block of els.log.querySelectorAll('.msg-tool.running')) markToolStopped(block);
  scrollToBottom();
}

async function newChat() {
  closeChatsOnNarrow();
  els.newChat.disabled = true;
  try {
    await enterSession(await createSession());
  } catch (err) {
    showError(`Could not start a new chat: ${err.message}`);
  } finally {
    els.newChat.disabled = false;
    els.input.focus();
  }
}

/* ---------- uploads ---------- */

async function uploadFiles(files) {
  const view = state.view;
  if (!view) return;
  for (const file of files) {
    if (file.type && !IMAGE_TYPES.includes(file.type)) {
      showToast(`${file.name}: only JPEG and PNG images can be attached.`);
      continue;
    }
    if (file.size > MAX_UPLOAD) {
      showToast(`${file.name} is larger than 10 MB.`);
      continue;
    }
    const chip = makeEl('span', { class: 'chip uploading', text: `Uploading ${file.name}…` });
    els.attachments.append(chip);
    els.attachments.hidden = false;
    state.uploading += 1;
    updateSend();
    try {
      const form = new FormData();
      form.append('file', file, file.name);
      const res = await fetch(sessionPath('/files', view.sid), {
        method: 'POST', body: form, headers: { Accept: 'application/json' }, signal: view.abort.signal,
      });
      if (!res.ok) throw await apiError(res);
      const entry = await res.json();
      if (view === state.view) state.attachments.push(entry.name);
    } catch (err) {
      if (view === state.view) {
        const why = err.status === 413 ? 'is larger than 10 MB'
          : err.status === 415 ? 'is not a JPEG or PNG image' : `could not be uploaded (${err.message})`;
        showToast(`${file.name} ${why}.`);
      }
    } finally {
      chip.remove();
      state.uploading -= 1;
      if (view === state.view) {
        renderAttachments();
        updateSend();
      }
    }
  }
}

function renderAttachments() {
  els.attachments.querySelectorAll('.chip:not(.uploading)').forEach((c) => c.remove());
  for (const name of state.attachments) {
    const remove = makeEl('button', { type: 'button', class: 'chip-remove', 'aria-label': `Remove ${name}`, text: '×' });
    remove.addEventListener('click', () => {
      state.attachments = state.attachments.filter((n) => n !== name);
      renderAttachments();
    });
    els.attachments.append(makeEl('span', { class: 'chip', 'data-file': name },
      makeEl('img', { src: fileUrl(name), alt: '' }),
      makeEl('span', { class: 'chip-name', text: name }), remove));
  }
  els.attachments.hidden = els.attachments.children.length === 0;
}

function wireDrop() {
  let depth = 0;
  const hasFiles = (ev) => [...(ev.dataTransfer?.types || [])].includes('Files');
  const hint = (on) => { els.dropHint.hidden = !on; els.chat.classList.toggle('dropping', on); };
  els.chat.addEventListener('dragenter', (ev) => {
    if (!hasFiles(ev)) return;
    ev.preventDefault();
    depth += 1;
    hint(true);
  });
  els.chat.addEventListener('dragover', (ev) => {
    if (!hasFiles(ev)) return;
    ev.preventDefault();
    ev.dataTransfer.dropEffect = 'copy';
  });
  els.chat.addEventListener('dragleave', () => {
    depth = Math.max(0, depth - 1);
    if (!depth) hint(false);
  });
  els.chat.addEventListener('drop', (ev) => {
    if (!hasFiles(ev)) return;
    ev.preventDefault();
    depth = 0;
    hint(false);
    uploadFiles([...ev.dataTransfer.files]);
  });
  els.input.addEventListener('paste', (ev) => {
    const files = [...(ev.clipboardData?.files || [])];
    if (files.length) {
      ev.preventDefault();
      uploadFiles(files);
    }
  });
}

/* ---------- notifications ---------- */

// The session's /events stream, read with fetch (not EventSource, which hides why a request
// was refused): it reconnects as EventSource would, from the last event it saw, and a refusal
// (a limit: 429 with Retry-After) is said in the page and retried when the server allows.
function openEvents() {
  closeEvents();
  const abort = new AbortController();
  state.events = abort;
  listenEvents(state.sid, abort.signal);
}

function closeEvents() {
  if (state.events) state.events.abort();
  state.events = null;
}

const sleep = (ms, signal) => new Promise((resolve) => {
  const timer = setTimeout(resolve, ms);
  signal.addEventListener('abort', () => { clearTimeout(timer); resolve(); }, { once: true });
});

const RECONNECTING = 'Disconnected from the server: reconnecting… (notifications sent '
  + 'meanwhile arrive once it is back)';

async function listenEvents(sid, signal) {
  let lastId = '', delay = 1000, said = '';
  while (!signal.aborted) {
    let wait = delay;
    try {
      const headers = { Accept: 'text/event-stream' };
      if (lastId) headers['Last-Event-ID'] = lastId;
      const res = await fetch(sessionPath('/events', sid), { headers, signal, cache: 'no-store' });
      if (res.ok) {
        said = '';
        showEventsProblem('');
        delay = wait = 1000;
        await readSse(res, (type, data, id) => {
          if (signal.aborted) return;
          if (id) lastId = id;
          if (type === 'notification') onNotification({ data, lastEventId: id });
        });
        if (!signal.aborted) showEventsProblem(RECONNECTING);  // the server ended it
      } else {
        const err = await apiError(res);
        if (signal.aborted || res.status === 404 || res.status === 401) return;
        if (err.message !== said) {              // once, not at every retry
          said = err.message;
          showEventsProblem(`Notifications cannot be received just now. ${err.message}`);
        }
        if (err.retryAfter !== null) wait = Math.max(1000, err.retryAfter * 1000);
      }
    } catch {
      if (signal.aborted) return;                // the chat was left
      said = '';
      showEventsProblem(RECONNECTING);           // the server is gone or restarting
    }
    await sleep(wait, signal);
    delay = Math.min(delay * 2, 30000);
  }
}

// Why the notifications of this chat do not arrive (a limit, the server), or '' to clear it.
function showEventsProblem(text) {
  els.eventsProblem.textContent = text;
  els.eventsProblem.hidden = !text;
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

/* ---------- who is using the page ---------- */

// GET /api/me: 'user' (signed in), 'anonymous' (nobody signs in here, or an older server),
// 'away' (off to sign in at the provider) or 'blocked' (sign-in needed, through the proxy).
async function whoAmI() {
  let res;
  try {
    res = await fetch('/api/me', { headers: { Accept: 'application/json' }, cache: 'no-store' });
  } catch {
    return 'anonymous';                     // the chat itself will say what is wrong
  }
  if (res.status === 401) {
    const err = await apiError(res);        // with `login` it already sends the page there
    if (err.login) return 'away';
    showSignInNeeded(err.detail);
    return 'blocked';
  }
  if (!res.ok) return 'anonymous';
  let me = null;
  try { me = await res.json(); } catch { return 'anonymous'; }
  account.auth = typeof me?.auth === 'string' ? me.auth : 'none';
  account.user = typeof me?.user === 'string' && me.user ? me.user : null;
  if (me?.llm_configured === false) showNoModel();
  if (!account.user) return 'anonymous';
  els.accountName.textContent = account.user;
  els.account.hidden = false;
  return 'user';
}

// The server has no LLM to talk to: say so now, not as "Connection error" after a message.
function showNoModel() {
  els.noticeTitle.textContent = 'No language model configured';
  els.noticeText.textContent = 'This server has no LLM to answer with. Whoever runs it sets '
    + 'OPENAI_API_KEY (for OpenAI), or OPENAI_BASE_URL for an OpenAI-compatible server such '
    + 'as vLLM, Ollama or llama.cpp, and restarts it.';
  els.notice.hidden = false;
}

function showSignInNeeded(detail) {
  state.blocked = true;
  els.noticeTitle.textContent = 'Sign-in needed';
  els.noticeText.textContent = 'This server only answers signed-in users, and it did not '
    + 'learn who you are from the sign-in proxy in front of it. Sign in there, then reload '
    + `this page.${detail ? ` (The server said: ${detail})` : ''}`;
  els.notice.hidden = false;
  for (const control of [els.input, els.newChat, els.attach]) control.disabled = true;
  els.chatList.replaceChildren();
  updateSend();
}

async function signOut() {
  els.signOut.disabled = true;
  try {
    await fetch('/logout', { method: 'POST', headers: { Accept: 'application/json' } });
  } catch { /* the reload shows where things stand */ }
  storageSet(CURRENT_KEY, '');
  location.reload();
}

/* ---------- wiring ---------- */

function onSubmit(ev) {
  ev.preventDefault();
  const text = els.input.value.trim();
  if (state.busy || state.loading || state.uploading || !state.view || state.blocked) return;
  if (!text && !state.attachments.length) return;
  const images = state.attachments.map((name) => `![${name}](files/${name})`);
  const content = [text, images.join('\n')].filter(Boolean).join('\n\n');
  const draft = { text: els.input.value, attachments: state.attachments };
  els.input.value = '';
  state.attachments = [];
  renderAttachments();
  autosize();
  sendMessage(content, draft);
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
    log: 'messages', form: 'composer', input: 'input', send: 'send', stop: 'stop',
    newChat: 'new-chat', chat: 'chat', chatList: 'chat-list', chatsToggle: 'chats-toggle',
    attach: 'attach', fileInput: 'file-input', attachments: 'attachments', dropHint: 'drop-hint',
    streams: 'streams', streamsEmpty: 'streams-empty', notifications: 'notifications',
    notificationsEmpty: 'notifications-empty', toasts: 'toasts', forgetDialog: 'forget-dialog',
    forgetTitle: 'forget-title', forgetDelete: 'forget-delete', forgetConfirm: 'forget-confirm',
    forgetCancel: 'forget-cancel', forgetHeading: 'forget-heading', forgetEffect: 'forget-effect',
    forgetDeleteLabel: 'forget-delete-label', account: 'account', accountName: 'account-name',
    signOut: 'sign-out', notice: 'notice', noticeTitle: 'notice-title', noticeText: 'notice-text',
    eventsProblem: 'events-problem',
  })) els[key] = document.getElementById(id);

  setUpMarkdown();
  els.form.addEventListener('submit', onSubmit);
  els.input.addEventListener('keydown', onKeydown);
  els.input.addEventListener('input', autosize);
  els.newChat.addEventListener('click', newChat);
  els.stop.addEventListener('click', stopTurn);
  els.attach.addEventListener('click', () => els.fileInput.click());
  els.fileInput.addEventListener('change', () => {
    const files = [...els.fileInput.files];
    els.fileInput.value = '';
    uploadFiles(files);
  });
  els.forgetConfirm.addEventListener('click', confirmForget);
  els.forgetCancel.addEventListener('click', () => els.forgetDialog.close());
  els.chatsToggle.addEventListener('click', () => {
    const open = document.body.classList.toggle('chats-open');
    els.chatsToggle.setAttribute('aria-expanded', String(open));
  });
  els.signOut.addEventListener('click', signOut);
  window.addEventListener('storage', (ev) => { if (ev.key === CHATS_KEY && !signedIn()) renderChats(); });
  // a signed-in user's chats may have changed on another device
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'visible' && signedIn()) refreshChats();
  });
  wireDrop();
  setInterval(refreshStreams, 15000);

  updateSend();
  const who = await whoAmI();
  if (who === 'away' || who === 'blocked') return;  // no chat without a user here
  try {
    await openChat(await startingChat());
  } catch (err) {
    showError(`Could not load the chat session: ${err.message}`);
  } finally {
    updateSend();
    els.input.focus();
  }
}

document.addEventListener('DOMContentLoaded', init);
