// Sandgraph's run console. Served by `sandgraph serve` at /ui/ with a policy that allows this
// file as the only script. Every piece of text from the API goes into the page through
// textContent or attribute setters, never parsed as HTML; the run picture (SVG drawn by the host)
// is parsed as XML, stripped of anything active, and adopted as DOM nodes.
'use strict';

(() => {
  const TOKEN_KEY = 'sandgraph.token';
  const SVG_NS = 'http://www.w3.org/2000/svg';
  const FINISHED = new Set(['succeeded', 'failed', 'cancelled']);
  const PAGE = 25;

  // ---- small DOM helpers ------------------------------------------------------------------

  /** An element with attributes, listeners (`on` map) and children (strings become text). */
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = v;
      else if (k === 'on') for (const [ev, f] of Object.entries(v)) e.addEventListener(ev, f);
      else e.setAttribute(k, v === true ? '' : String(v));
    }
    append(e, children);
    return e;
  }

  function append(parent, children) {
    for (const c of children.flat()) {
      if (c === undefined || c === null || c === false) continue;
      parent.append(c instanceof Node ? c : String(c));
    }
    return parent;
  }

  function svgEl(tag, attrs, ...children) {
    const e = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === 'text') e.textContent = v;
      else e.setAttribute(k, String(v));
    }
    for (const c of children) e.append(c);
    return e;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
    return node;
  }

  const badge = (state) => el('span', { class: `badge ${state}`, 'data-state': state, text: state });
  const pre = (value) => el('pre', { text: typeof value === 'string' ? value : JSON.stringify(value, null, 2) });
  const short = (run) => String(run).slice(0, 8);
  const time = (ms) => (ms ? new Date(ms).toLocaleString() : '');

  function duration(ms) {
    if (ms === undefined || ms === null || Number.isNaN(ms)) return '';
    if (ms < 1000) return `${Math.round(ms)} ms`;
    if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
    const m = Math.floor(ms / 60000);
    return `${m} min ${Math.round((ms % 60000) / 1000)} s`;
  }

  function bytes(n) {
    if (n === undefined || n === null) return '';
    if (n < 1024) return `${n} B`;
    if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
    return `${(n / 1024 / 1024).toFixed(1)} MiB`;
  }

  function tokens(usage) {
    if (!usage || !usage.model_calls) return '';
    return `${usage.input_tokens} in / ${usage.output_tokens} out`;
  }

  // ---- session and API ------------------------------------------------------------------------

  const session = { token: null, subject: '', scopes: [] };
  const can = (scope) => session.scopes.includes(scope);

  class ApiError extends Error {
    constructor(status, problem) {
      super((problem && problem.detail) || `HTTP ${status}`);
      this.status = status;
      this.problem = problem || {};
    }
  }

  async function problemOf(resp) {
    try {
      return await resp.json();
    } catch (_) {
      return { detail: `HTTP ${resp.status} ${resp.statusText}` };
    }
  }

  /** Calls the API with the tab's token; a refused token signs the tab out. */
  async function api(path, options = {}) {
    const headers = Object.assign({}, options.headers || {}, { Authorization: `Bearer ${session.token}` });
    if (options.json !== undefined) headers['Content-Type'] = 'application/json';
    const resp = await fetch(path, {
      method: options.method || 'GET',
      headers,
      body: options.json !== undefined ? JSON.stringify(options.json) : undefined,
      cache: 'no-store',
      credentials: 'omit',
      signal: options.signal,
    });
    if (resp.status === 401) {
      const problem = await problemOf(resp);
      signOut(`The server refused the token: ${problem.detail || 'unauthorized'}`);
      throw new ApiError(401, problem);
    }
    if (!resp.ok) throw new ApiError(resp.status, await problemOf(resp));
    if (options.raw) return resp;
    const type = resp.headers.get('content-type') || '';
    return type.includes('json') ? resp.json() : resp.text();
  }

  function showLogin(message) {
    document.getElementById('login').hidden = false;
    document.getElementById('nav').hidden = true;
    document.getElementById('logout').hidden = true;
    document.getElementById('who').textContent = '';
    document.getElementById('login-error').textContent = message || '';
    clear(document.getElementById('view'));
    hideBanner();
    document.getElementById('token').focus();
  }

  function signOut(message) {
    stopView();
    sessionStorage.removeItem(TOKEN_KEY);
    session.token = null;
    session.scopes = [];
    showLogin(message);
  }

  async function signIn(token) {
    session.token = token;
    try {
      const who = await fetch('/v1/whoami', {
        headers: { Authorization: `Bearer ${token}` },
        cache: 'no-store',
        credentials: 'omit',
      });
      if (!who.ok) {
        const problem = await problemOf(who);
        session.token = null;
        sessionStorage.removeItem(TOKEN_KEY);
        const what = who.status === 403 ? 'The token lacks the runs:read scope' : 'The server refused the token';
        showLogin(`Sign-in failed. ${what}: ${problem.detail || who.status}`);
        return false;
      }
      const body = await who.json();
      session.subject = body.subject;
      session.scopes = body.scopes || [];
    } catch (e) {
      session.token = null;
      showLogin(`Sign-in failed: the server could not be reached (${e.message})`);
      return false;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    document.getElementById('login').hidden = true;
    document.getElementById('nav').hidden = false;
    document.getElementById('logout').hidden = false;
    document.getElementById('who').textContent = `${session.subject} · ${session.scopes.join(' ')}`;
    document.getElementById('token').value = '';
    return true;
  }

  function showBanner(text, kind) {
    const b = document.getElementById('banner');
    b.textContent = text;
    b.className = `banner ${kind || ''}`;
    b.hidden = false;
  }

  function hideBanner() {
    document.getElementById('banner').hidden = true;
  }

  function report(e) {
    if (e && e.name === 'AbortError') return;
    if (e instanceof ApiError && e.status === 401) return;
    showBanner(e instanceof ApiError ? `${e.status}: ${e.message}` : String(e.message || e));
  }

  // ---- views and routing ------------------------------------------------------------------------

  // The current view: its abort controller (streams, polls) and timers stop when it changes.
  let current = { abort: new AbortController(), timers: [] };

  function stopView() {
    current.abort.abort();
    for (const t of current.timers) clearInterval(t);
    current = { abort: new AbortController(), timers: [] };
  }

  function every(ms, f) {
    current.timers.push(setInterval(f, ms));
  }

  function route() {
    if (!session.token) return;
    stopView();
    hideBanner();
    const view = clear(document.getElementById('view'));
    const hash = location.hash.replace(/^#\/?/, '');
    const [path, query] = hash.split('?');
    const parts = path.split('/').filter((p) => p !== '').map(decodeURIComponent);
    const params = new URLSearchParams(query || '');
    for (const a of document.querySelectorAll('#nav a')) {
      a.classList.toggle('current', a.dataset.nav === (parts[0] || 'runs'));
    }
    const signal = current.abort.signal;
    let shown;
    if (parts.length === 0 || (parts[0] === 'runs' && parts.length === 1)) shown = runsView(view, params, signal);
    else if (parts[0] === 'runs' && parts.length === 2) shown = runView(view, parts[1], signal);
    else if (parts[0] === 'runs' && parts[2] === 'steps' && parts.length === 4) shown = stepView(view, parts[1], parts[3], signal);
    else if (parts[0] === 'graphs' && parts.length === 1) shown = graphsView(view);
    else if (parts[0] === 'graphs' && parts.length === 2) shown = graphView(view, parts[1]);
    else if (parts[0] === 'tools' && parts.length === 1) shown = toolsView(view);
    else if (parts[0] === 'tools' && parts.length === 2) shown = toolView(view, parts[1]);
    else {
      view.append(el('h1', { text: 'Not found' }), el('p', { text: `The console has no page ${location.hash}.` }));
      return;
    }
    Promise.resolve(shown).catch(report);
  }

  const link = (hash, text) => el('a', { href: hash, text });
  const runLink = (run) => link(`#/runs/${encodeURIComponent(run)}`, short(run));
  const stepHash = (run, step) => `#/runs/${encodeURIComponent(run)}/steps/${encodeURIComponent(step)}`;

  // ---- runs list ------------------------------------------------------------------------------

  async function runsView(view, params, signal) {
    const graph = params.get('graph') || '';
    const status = params.get('status') || '';
    const cursor = params.get('cursor') || '';
    const limit = /^[0-9]{1,4}$/.test(params.get('limit') || '') ? params.get('limit') : String(PAGE);
    const back = params.get('back') ? params.get('back').split(',') : [];
    const graphInput = el('input', { id: 'filter-graph', placeholder: 'graph', value: graph });
    const statusSelect = el('select', { id: 'filter-status' },
      ['', 'running', 'waiting', 'succeeded', 'failed', 'cancelled'].map((s) =>
        el('option', { value: s, selected: s === status, text: s || 'any status' })));
    const go = (extra) => {
      const q = new URLSearchParams();
      if (graphInput.value) q.set('graph', graphInput.value);
      if (statusSelect.value) q.set('status', statusSelect.value);
      if (limit !== String(PAGE)) q.set('limit', limit);
      for (const [k, v] of Object.entries(extra || {})) if (v) q.set(k, v);
      location.hash = `#/runs?${q}`;
    };
    const form = el('form', { class: 'filters', on: { submit: (e) => { e.preventDefault(); go(); } } },
      graphInput, statusSelect, el('button', { type: 'submit', text: 'Filter' }),
      el('span', { class: 'live', text: 'live' }));
    const body = el('tbody', { id: 'runs-body' });
    const table = el('table', { id: 'runs' },
      el('thead', {}, el('tr', {}, ['Run', 'Graph', 'Status', 'Started', 'Duration', 'Tokens', 'Events'].map((h) =>
        el('th', { class: ['Duration', 'Events'].includes(h) ? 'num' : undefined, text: h })))),
      body);
    const pager = el('div', { class: 'pager' });
    view.append(el('h1', { text: 'Runs' }), form, table, pager);

    const load = async () => {
      const q = new URLSearchParams({ limit, order: 'desc', usage: 'true' });
      if (graph) q.set('graph', graph);
      if (status) q.set('status', status);
      if (cursor) q.set('cursor', cursor);
      const page = await api(`/v1/runs?${q}`, { signal });
      clear(body);
      if (page.runs.length === 0) body.append(el('tr', {}, el('td', { colspan: 7, class: 'muted', text: 'No runs.' })));
      const now = Date.now();
      for (const r of page.runs) {
        const end = FINISHED.has(r.status) ? r.updated_ms : now;
        body.append(el('tr', { 'data-run': r.run },
          el('td', { class: 'mono' }, runLink(r.run)),
          el('td', {}, link(`#/graphs/${encodeURIComponent(r.graph)}`, r.graph)),
          el('td', {}, badge(r.status)),
          el('td', { text: time(r.created_ms) }),
          el('td', { class: 'num', text: duration(end - r.created_ms) }),
          el('td', { text: tokens(r.usage) }),
          el('td', { class: 'num', text: r.events })));
      }
      // Rebuilt only when the pages change, so a refresh never swaps a button being clicked.
      const pagerKey = `${back.length > 0}|${page.next_cursor}`;
      if (pager.dataset.key === pagerKey) return;
      pager.dataset.key = pagerKey;
      clear(pager);
      if (back.length > 0) {
        const prev = back.slice(0, -1);
        pager.append(el('button', { type: 'button', id: 'prev-page', text: '← Newer',
          on: { click: () => go({ cursor: back[back.length - 1] === '-' ? '' : back[back.length - 1], back: prev.join(',') }) } }));
      }
      if (page.next_cursor) {
        pager.append(el('button', { type: 'button', id: 'next-page', text: 'Older →',
          on: { click: () => go({ cursor: page.next_cursor, back: back.concat([cursor || '-']).join(',') }) } }));
      }
    };
    await load();
    every(2000, () => load().catch(report));
  }

  // ---- one run ----------------------------------------------------------------------------------

  /** What the console knows of a run, built from its event stream. */
  function newRunState() {
    return {
      status: 'running', created: null, finished: null, input: undefined, output: undefined, error: null,
      steps: new Map(), // step -> {node, iteration, attempts: [{attempt, start, end, outcome, retryIn, model: []}], status, denied}
      nodes: new Map(), // node -> {state, steps:Set}
      awaiting: new Set(),
      unknown: [],
      lastId: null,
    };
  }

  function stepOf(st, step) {
    if (!st.steps.has(step)) {
      const [node, iteration] = step.split('#');
      st.steps.set(step, { node, iteration: Number(iteration), attempts: [], status: 'scheduled', denied: false, usage: { model_calls: 0, input_tokens: 0, output_tokens: 0, model_ms: 0 } });
    }
    return st.steps.get(step);
  }

  function nodeState(st, step, state) {
    const node = step.split('#')[0];
    if (!st.nodes.has(node)) st.nodes.set(node, { state, steps: new Set() });
    const n = st.nodes.get(node);
    n.state = state;
    if (state === 'running') n.steps.add(step);
  }

  /** Applies one journal event (as the stream names it) to the run's state. */
  function applyEvent(st, kind, data) {
    const at = data.at_ms;
    switch (kind) {
      case 'run_created':
        st.created = at;
        st.input = data.input;
        st.graph = data.graph;
        break;
      case 'step_scheduled': {
        const s = stepOf(st, data.step);
        s.input = data.input;
        s.scheduled = at;
        nodeState(st, data.step, 'pending');
        break;
      }
      case 'step_started': {
        const s = stepOf(st, data.step);
        s.status = 'running';
        s.attempts.push({ attempt: data.attempt, start: at, end: null, outcome: 'running', model: [] });
        nodeState(st, data.step, 'running');
        break;
      }
      case 'step_completed': {
        const s = stepOf(st, data.step);
        s.status = 'completed';
        s.output = data.output;
        const a = s.attempts[s.attempts.length - 1];
        if (a) Object.assign(a, { end: at, outcome: 'completed' });
        nodeState(st, data.step, 'succeeded');
        break;
      }
      case 'step_failed': {
        const s = stepOf(st, data.step);
        const retrying = data.retry_in_ms !== null && data.retry_in_ms !== undefined;
        s.status = retrying ? 'retrying' : 'failed';
        s.error = { kind: data.kind, message: data.message };
        const a = s.attempts[s.attempts.length - 1];
        if (a) Object.assign(a, { end: at, outcome: s.status, retryIn: data.retry_in_ms });
        nodeState(st, data.step, retrying ? 'pending' : 'failed');
        break;
      }
      case 'crossing': {
        const s = stepOf(st, data.step);
        const c = data.crossing || {};
        const a = s.attempts[s.attempts.length - 1];
        if (c.kind === 'denial') s.denied = true;
        if (c.kind === 'model_response' && c.usage) {
          s.usage.model_calls += 1;
          s.usage.input_tokens += c.usage.input_tokens;
          s.usage.output_tokens += c.usage.output_tokens;
          s.usage.model_ms += c.usage.model_ms;
          if (a) a.model.push({ end: at, ms: c.usage.model_ms });
        }
        break;
      }
      case 'step_audit': {
        const s = stepOf(st, data.step);
        for (const call of Array.isArray(data.calls) ? data.calls : []) {
          if ((call.egress || []).some((e) => !e.allowed) || (call.filesystem || []).length > 0) s.denied = true;
        }
        break;
      }
      case 'step_awaiting_approval': {
        const s = stepOf(st, data.step);
        s.status = 'awaiting_approval';
        s.pending = data.input;
        s.waitingSince = at;
        st.awaiting.add(data.step);
        nodeState(st, data.step, 'waiting');
        break;
      }
      case 'step_approval': {
        const s = stepOf(st, data.step);
        s.status = data.approved ? 'approved' : 'rejected';
        s.waitedUntil = at;
        st.awaiting.delete(data.step);
        nodeState(st, data.step, data.approved ? 'pending' : 'failed');
        break;
      }
      case 'workspace_snapshot':
        break;
      case 'run_finished':
        st.status = data.status;
        st.finished = at;
        st.output = data.output;
        st.error = data.error;
        if (data.status !== 'succeeded') {
          for (const n of st.nodes.values()) {
            if (['running', 'pending', 'waiting'].includes(n.state)) n.state = 'cancelled';
          }
        }
        st.awaiting.clear();
        break;
      default:
        // A kind this console does not know (a newer host on a shared journal): kept and shown
        // as it came, never guessed at.
        st.unknown.push({ kind, data });
    }
  }

  /** Reads an event stream with fetch (so the token travels in a header, never in the URL),
   *  resuming after the last event id on reconnect, until the run finishes or the view closes. */
  async function followEvents(run, st, onEvents, signal) {
    for (;;) {
      if (signal.aborted) return;
      const headers = { Accept: 'text/event-stream' };
      if (st.lastId !== null) headers['Last-Event-ID'] = String(st.lastId);
      let resp;
      try {
        resp = await api(`/v1/runs/${encodeURIComponent(run)}/events`, { headers, raw: true, signal });
      } catch (e) {
        if (signal.aborted || (e instanceof ApiError && [401, 403, 404].includes(e.status))) throw e;
        await sleep(1000, signal);
        continue;
      }
      if (resp.status === 204) return;
      const reader = resp.body.getReader();
      const decoder = new TextDecoder();
      let buffer = '';
      let finished = false;
      try {
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += decoder.decode(value, { stream: true });
          let cut;
          const batch = [];
          while ((cut = buffer.indexOf('\n\n')) >= 0) {
            const frame = buffer.slice(0, cut);
            buffer = buffer.slice(cut + 2);
            const ev = parseFrame(frame);
            if (!ev) continue;
            if (ev.id !== null) st.lastId = Number(ev.id);
            let data;
            try {
              data = JSON.parse(ev.data);
            } catch (_) {
              data = { raw: ev.data };
            }
            applyEvent(st, ev.event, data);
            batch.push(ev.event);
            if (ev.event === 'run_finished') finished = true;
          }
          if (batch.length) onEvents(batch);
        }
      } catch (e) {
        if (signal.aborted) return;
      }
      if (finished || FINISHED.has(st.status)) return;
      await sleep(1000, signal);
    }
  }

  function parseFrame(frame) {
    const ev = { id: null, event: 'message', data: '' };
    let any = false;
    for (const line of frame.split('\n')) {
      if (line === '' || line.startsWith(':')) continue;
      const i = line.indexOf(':');
      const field = i < 0 ? line : line.slice(0, i);
      const value = i < 0 ? '' : line.slice(i + 1).replace(/^ /, '');
      if (field === 'id') ev.id = value;
      else if (field === 'event') ev.event = value;
      else if (field === 'data') ev.data += (ev.data ? '\n' : '') + value;
      else continue;
      any = true;
    }
    return any && ev.data !== '' ? ev : null;
  }

  function sleep(ms, signal) {
    return new Promise((resolve) => {
      const t = setTimeout(resolve, ms);
      signal.addEventListener('abort', () => { clearTimeout(t); resolve(); }, { once: true });
    });
  }

  /** The host's SVG parsed as XML and adopted with nothing active left in it. */
  function adoptSvg(text) {
    const doc = new DOMParser().parseFromString(text, 'image/svg+xml');
    const root = doc.documentElement;
    if (!root || root.namespaceURI !== SVG_NS || doc.getElementsByTagName('parsererror').length) {
      throw new Error('the picture is not SVG');
    }
    for (const bad of Array.from(root.querySelectorAll('script, foreignObject, iframe, a'))) bad.remove();
    for (const node of [root, ...root.querySelectorAll('*')]) {
      for (const attr of Array.from(node.attributes)) {
        const name = attr.name.toLowerCase();
        if (name.startsWith('on') || ((name === 'href' || name === 'xlink:href') && !attr.value.startsWith('#'))) {
          node.removeAttribute(attr.name);
        }
      }
    }
    return document.importNode(root, true);
  }

  async function runView(view, run, signal) {
    let summary;
    try {
      summary = await api(`/v1/runs/${encodeURIComponent(run)}`, { signal });
    } catch (e) {
      if (e instanceof ApiError && (e.status === 404 || e.status === 400)) {
        view.append(el('h1', { text: 'Run not found' }),
          el('p', { id: 'not-found', class: 'error', text: e.message }),
          el('p', {}, link('#/runs', '← all runs')));
        return;
      }
      throw e;
    }
    const st = newRunState();
    st.status = summary.status;
    const head = el('div');
    const actions = el('div', { class: 'actions' });
    const picture = el('div', { class: 'picture card', id: 'picture' });
    const timeline = el('div', { class: 'timeline card', id: 'timeline' });
    const steps = el('tbody', { id: 'steps-body' });
    const io = el('div', { class: 'cols', id: 'io' });
    const replay = el('div', { id: 'replay' });
    const unknown = el('div', { id: 'unknown-events' });
    view.append(
      el('p', {}, link('#/runs', '← all runs')),
      el('h1', {}, 'Run ', el('span', { class: 'mono', text: summary.run })),
      head, actions,
      el('h2', { text: 'Graph' }), picture,
      el('h2', { text: 'Timeline' }),
      el('div', { class: 'legend' }, el('span', { class: 'l-attempt', text: 'attempt' }),
        el('span', { class: 'l-failed', text: 'failed attempt' }), el('span', { class: 'l-backoff', text: 'backoff wait' }),
        el('span', { class: 'l-model', text: 'model time' })),
      timeline,
      el('h2', { text: 'Steps' }),
      el('table', { id: 'steps' }, el('thead', {}, el('tr', {}, ['Step', 'Status', 'Attempts', 'Duration', 'Tokens', ''].map((h) => el('th', { text: h })))), steps),
      io, replay, unknown);

    const pictureText = await api(`/v1/runs/${encodeURIComponent(run)}/picture?format=svg`, { signal });
    const svg = adoptSvg(pictureText);
    picture.append(svg);
    for (const g of svg.querySelectorAll('g.node')) {
      g.addEventListener('click', () => {
        const node = g.getAttribute('data-node');
        const last = [...st.steps.entries()].filter(([, s]) => s.node === node).pop();
        if (last) location.hash = stepHash(run, last[0]);
      });
    }

    const draw = () => {
      renderHead(head, summary, st);
      renderActions(actions, run, st, replay);
      for (const g of svg.querySelectorAll('g.node')) {
        const n = st.nodes.get(g.getAttribute('data-node'));
        g.setAttribute('data-state', n ? n.state : 'pending');
        const denied = [...st.steps.values()].some((s) => s.node === g.getAttribute('data-node') && s.denied);
        g.classList.toggle('denied', denied);
        setCount(g, n ? n.steps.size : 0);
      }
      renderTimeline(timeline, st);
      renderSteps(steps, run, st);
      clear(io);
      io.append(el('div', { class: 'card' }, el('h3', { text: 'Input' }), pre(st.input === undefined ? null : st.input)),
        el('div', { class: 'card' }, el('h3', { text: st.error ? 'Error' : 'Output' }),
          st.error ? el('pre', { class: 'error', id: 'run-error', text: st.error }) : el('div', { id: 'run-output' }, pre(st.output === undefined ? null : st.output))));
      clear(unknown);
      if (st.unknown.length) {
        unknown.append(el('h2', { text: 'Events this console does not know' }),
          el('ul', {}, st.unknown.map((u) => el('li', { class: 'unknown-event' }, el('code', { text: u.kind }), ' ', pre(u.data)))));
      }
    };
    // Repaints at most every 100 ms while events pour in.
    let pending = false;
    const schedule = () => {
      if (pending) return;
      pending = true;
      setTimeout(() => { pending = false; draw(); }, 100);
    };
    draw();
    every(1000, () => { if (!FINISHED.has(st.status)) renderHead(head, summary, st); });
    await followEvents(run, st, schedule, signal);
    draw();
    // Exposed for the browser tests: the state the page was drawn from.
    view.dataset.status = st.status;
  }

  function setCount(g, count) {
    let t = g.querySelector('text.count');
    if (count <= 1) {
      if (t) t.textContent = '';
      return;
    }
    if (!t) {
      const rect = g.querySelector('rect');
      const x = Number(rect.getAttribute('x')) + Number(rect.getAttribute('width')) - 6;
      const y = Number(rect.getAttribute('y')) + 12;
      // The host draws the count for a finished picture; replace it with the live one.
      for (const old of g.querySelectorAll('text[text-anchor="end"]')) old.remove();
      t = svgEl('text', { class: 'count', x, y, 'text-anchor': 'end', 'font-size': 10 });
      g.append(t);
    }
    t.textContent = `×${count}`;
  }

  function renderHead(head, summary, st) {
    clear(head);
    const created = st.created || summary.created_ms;
    const end = st.finished || (FINISHED.has(st.status) ? summary.updated_ms : Date.now());
    const usage = { model_calls: 0, input_tokens: 0, output_tokens: 0 };
    for (const s of st.steps.values()) {
      usage.model_calls += s.usage.model_calls;
      usage.input_tokens += s.usage.input_tokens;
      usage.output_tokens += s.usage.output_tokens;
    }
    head.append(el('dl', { class: 'meta' },
      el('dt', { text: 'Status' }), el('dd', { id: 'run-status' }, badge(st.status), FINISHED.has(st.status) ? '' : el('span', { class: 'live', text: ' live' })),
      el('dt', { text: 'Graph' }), el('dd', {}, link(`#/graphs/${encodeURIComponent(summary.graph)}`, summary.graph), ' ', el('span', { class: 'mono muted', text: String(summary.graph_version).slice(0, 12) })),
      el('dt', { text: 'Started' }), el('dd', { text: time(created) }),
      el('dt', { text: 'Duration' }), el('dd', { text: duration(end - created) }),
      el('dt', { text: 'Tokens' }), el('dd', { text: tokens(usage) || '—' })));
  }

  function renderActions(actions, run, st, replayBox) {
    // Rebuilt only when what can be done changes, so a repaint never swaps a button under the
    // pointer or re-enables one whose action is under way.
    const key = `${FINISHED.has(st.status)}|${[...st.awaiting].join(',')}`;
    if (actions.dataset.key === key) return;
    actions.dataset.key = key;
    clear(actions);
    const write = can('runs:write');
    if (!FINISHED.has(st.status)) {
      actions.append(el('button', { type: 'button', id: 'cancel', class: 'danger', disabled: !write,
        title: write ? 'Cancel the run' : 'Needs the runs:write scope', text: 'Cancel run',
        on: { click: async (e) => {
          e.target.disabled = true;
          try {
            await api(`/v1/runs/${encodeURIComponent(run)}/cancel`, { method: 'POST' });
            showBanner('Cancelling…', 'info');
          } catch (err) { report(err); }
        } } }));
    }
    for (const step of st.awaiting) {
      const comment = el('input', { placeholder: 'comment', 'data-step': step, class: 'approval-comment' });
      const decide = (decision) => async () => {
        try {
          await api(`/v1/runs/${encodeURIComponent(run)}/steps/${encodeURIComponent(step)}/approval`, { method: 'POST', json: { decision, comment: comment.value || undefined } });
        } catch (err) { report(err); }
      };
      actions.append(el('span', {}, `${step} awaits approval: `), comment,
        el('button', { type: 'button', class: 'approve', 'data-step': step, disabled: !write, text: 'Approve', on: { click: decide('approve') } }),
        el('button', { type: 'button', class: 'reject danger', 'data-step': step, disabled: !write, text: 'Reject', on: { click: decide('reject') } }));
    }
    actions.append(el('button', { type: 'button', id: 'replay-button', disabled: !write,
      title: write ? 'Execute every completed step again from the journal and compare' : 'Needs the runs:write scope',
      text: 'Replay', on: { click: async (e) => {
        e.target.disabled = true;
        clear(replayBox).append(el('p', { class: 'muted', text: 'Replaying…' }));
        try {
          const r = await api(`/v1/runs/${encodeURIComponent(run)}/replay`, { method: 'POST' });
          renderReplay(replayBox, run, r);
        } catch (err) { clear(replayBox); report(err); }
        e.target.disabled = false;
      } } }));
  }

  function renderReplay(box, run, r) {
    clear(box).append(el('h2', { text: 'Replay' }),
      el('p', { id: 'replay-verdict' }, badge(r.identical ? 'identical' : 'diverged'),
        r.identical ? ' every completed step reproduced its output exactly' : ' at least one step did not reproduce'),
      el('table', { id: 'replay-table' }, el('thead', {}, el('tr', {}, ['Step', 'Attempt', 'Result', 'Detail'].map((h) => el('th', { text: h })))),
        el('tbody', {}, r.steps.map((s) => el('tr', { 'data-step': s.step },
          el('td', {}, link(stepHash(run, s.step), s.step)), el('td', { text: s.attempt }), el('td', {}, badge(s.result)),
          el('td', {}, s.result === 'identical' ? '' :
            pre(s.message || s.reason || { path: s.path, recorded: s.recorded, replayed: s.replayed })))))));
  }

  function renderSteps(body, run, st) {
    clear(body);
    for (const [step, s] of st.steps) {
      const first = s.attempts[0];
      const last = s.attempts[s.attempts.length - 1];
      const took = first && last && last.end ? last.end - first.start : null;
      body.append(el('tr', { 'data-step': step, class: s.denied ? 'denied' : undefined },
        el('td', {}, link(stepHash(run, step), step)),
        el('td', {}, badge(s.status), s.denied ? el('span', { class: 'badge denied', text: 'denied' }) : ''),
        el('td', { class: 'num', text: s.attempts.length }),
        el('td', { class: 'num', text: duration(took) }),
        el('td', { text: tokens(s.usage) }),
        el('td', { class: 'error', text: s.error && s.status !== 'completed' ? `${s.error.kind}: ${s.error.message}` : '' })));
    }
  }

  /** Step attempts on a time axis: attempts, the backoff waits between them, approval waits, and
   *  the model's time inside agent steps. */
  function renderTimeline(box, st) {
    clear(box);
    const rows = [...st.steps.entries()];
    if (!st.created || rows.length === 0) {
      box.append(el('p', { class: 'muted', text: 'No step has started yet.' }));
      return;
    }
    const t0 = st.created;
    let t1 = st.finished || Date.now();
    for (const [, s] of rows) for (const a of s.attempts) t1 = Math.max(t1, a.end || a.start);
    const span = Math.max(t1 - t0, 1);
    const labelW = 160, width = 900, rowH = 22, top = 18;
    const x = (t) => labelW + ((t - t0) / span) * (width - labelW - 10);
    const svg = svgEl('svg', { viewBox: `0 0 ${width} ${top + rows.length * rowH + 6}`, role: 'img', 'aria-label': 'step timeline' });
    svg.append(svgEl('text', { x: labelW, y: 12, text: '0' }), svgEl('text', { x: width - 10, y: 12, 'text-anchor': 'end', text: duration(span) }));
    rows.forEach(([step, s], i) => {
      const y = top + i * rowH;
      svg.append(svgEl('text', { x: 4, y: y + 14, text: step.length > 24 ? `${step.slice(0, 23)}…` : step }));
      svg.append(svgEl('line', { class: 'axis', x1: labelW, x2: width - 10, y1: y + rowH - 1, y2: y + rowH - 1 }));
      if (s.waitingSince) {
        const end = s.waitedUntil || t1;
        svg.append(svgEl('rect', { class: 'bar-approval', x: x(s.waitingSince), y: y + 3, width: Math.max(x(end) - x(s.waitingSince), 1), height: rowH - 8 },
          svgEl('title', { text: `waited for approval ${duration(end - s.waitingSince)}` })));
      }
      s.attempts.forEach((a, j) => {
        const end = a.end || t1;
        svg.append(svgEl('rect', { class: `bar-attempt ${a.outcome}`, x: x(a.start), y: y + 3, width: Math.max(x(end) - x(a.start), 1), height: rowH - 8, 'data-step': step, 'data-attempt': a.attempt },
          svgEl('title', { text: `${step} attempt ${a.attempt}: ${a.outcome}, ${duration(end - a.start)}` })));
        for (const m of a.model) {
          svg.append(svgEl('rect', { class: 'bar-model', x: x(m.end - m.ms), y: y + 7, width: Math.max(x(m.end) - x(m.end - m.ms), 1), height: rowH - 16 },
            svgEl('title', { text: `model call ${duration(m.ms)}` })));
        }
        const next = s.attempts[j + 1];
        if (a.retryIn !== undefined && a.retryIn !== null && a.end) {
          const until = next ? next.start : Math.min(a.end + a.retryIn, t1);
          svg.append(svgEl('rect', { class: 'bar-backoff', x: x(a.end), y: y + 3, width: Math.max(x(until) - x(a.end), 1), height: rowH - 8 },
            svgEl('title', { text: `backoff ${duration(a.retryIn)} before attempt ${a.attempt + 1}` })));
        }
      });
    });
    box.append(svg);
  }

  // ---- one step ---------------------------------------------------------------------------------

  async function stepView(view, run, step, signal) {
    const load = async () => {
      let s;
      try {
        s = await api(`/v1/runs/${encodeURIComponent(run)}/steps/${encodeURIComponent(step)}`, { signal });
      } catch (e) {
        if (e instanceof ApiError && (e.status === 404 || e.status === 400)) {
          clear(view).append(el('h1', { text: 'Step not found' }), el('p', { id: 'not-found', class: 'error', text: e.message }),
            el('p', {}, link(`#/runs/${encodeURIComponent(run)}`, '← the run')));
          return true;
        }
        throw e;
      }
      append(clear(view), [
        el('p', {}, link(`#/runs/${encodeURIComponent(run)}`, `← run ${short(run)}`)),
        el('h1', {}, 'Step ', el('span', { class: 'mono', text: s.step })),
        el('dl', { class: 'meta' },
          el('dt', { text: 'Status' }), el('dd', { id: 'step-status' }, badge(s.status)),
          el('dt', { text: 'Node' }), el('dd', { text: `${s.node} (iteration ${s.iteration})` }),
          el('dt', { text: 'Attempts' }), el('dd', { text: s.attempts.length })),
        el('div', { class: 'cols' },
          el('div', { class: 'card' }, el('h3', { text: 'Input' }), pre(s.input)),
          el('div', { class: 'card', id: 'step-result' }, el('h3', { text: s.error ? 'Error' : 'Output' }),
            s.error ? el('pre', { class: 'error', text: `${s.error.kind}: ${s.error.message}` }) : pre(s.output === undefined ? null : s.output))),
        s.pending_input !== undefined ? el('div', { class: 'card' }, el('h3', { text: 'Awaiting approval with input' }), pre(s.pending_input)) : '',
        s.attempts.map((a) => renderAttempt(a))]);
      return FINISHED.has(s.status) || ['completed', 'failed', 'rejected'].includes(s.status);
    };
    const done = await load();
    if (!done) {
      every(1000, () => load().then((d) => { if (d) stopTimers(); }).catch(report));
    }
  }

  function stopTimers() {
    for (const t of current.timers) clearInterval(t);
    current.timers = [];
  }

  function renderAttempt(a) {
    const box = el('div', { class: 'card attempt', 'data-attempt': a.attempt });
    const took = a.started_ms && a.ended_ms ? ` · ${duration(a.ended_ms - a.started_ms)}` : '';
    box.append(el('h2', {}, `Attempt ${a.attempt} `, badge(a.outcome || 'running'), el('span', { class: 'muted', text: took })));
    if (a.error) box.append(el('p', { class: 'error', text: `${a.error.kind}: ${a.error.message}${a.error.retry_in_ms != null ? ` (retry in ${a.error.retry_in_ms} ms)` : ''}` }));
    box.append(el('h3', { text: `Crossings (${a.crossings.length})` }));
    if (a.crossings.length === 0) box.append(el('p', { class: 'muted', text: 'Nothing crossed the sandbox boundary.' }));
    const list = el('div', { class: 'crossings' });
    for (const c of a.crossings) list.append(renderCrossing(c, a.started_ms));
    box.append(list);
    box.append(el('h3', { text: 'Audit' }));
    if (!a.audit || a.audit.length === 0) box.append(el('p', { class: 'muted', text: 'No audit record (the attempt did not return).' }));
    for (const rec of a.audit || []) box.append(renderAudit(rec));
    return box;
  }

  function renderCrossing(c, start) {
    const row = el('div', { class: `crossing ${c.kind}`, 'data-kind': c.kind });
    row.append(el('span', { class: 'at', text: start ? `+${c.at_ms - start} ms` : '' }), el('span', { class: 'kind', text: c.kind.replace(/_/g, ' ') }));
    switch (c.kind) {
      case 'model_request': {
        const req = c.request || {};
        row.append(el('span', { class: 'muted', text: `${req.model || ''}` }));
        for (const m of req.messages || []) {
          row.append(el('div', { class: 'message' }, el('span', { class: 'role', text: m.role }),
            typeof m.content === 'string' ? m.content : JSON.stringify(m.content)));
        }
        if (req.tools && req.tools.length) row.append(el('div', { class: 'muted', text: `tools offered: ${req.tools.map((t) => (t.name || (t.function && t.function.name) || '?')).join(', ')}` }));
        break;
      }
      case 'model_response': {
        const u = c.usage || {};
        // The journaled answer carries the provider's timing (a Rust Duration: secs, nanos).
        const ft = c.answer && c.answer.timing && c.answer.timing.first_token;
        const ttft = ft ? `, first token after ${duration(ft.secs * 1000 + ft.nanos / 1e6)}` : '';
        row.append(el('span', { class: 'muted', text: `${u.input_tokens} tokens in, ${u.output_tokens} out, ${duration(u.model_ms)}${ttft}` }));
        if (c.answer && typeof c.answer.content === 'string') row.append(el('div', { class: 'message' }, el('span', { class: 'role', text: 'answer' }), c.answer.content));
        row.append(pre(c.answer));
        break;
      }
      case 'tool_request':
        row.append(el('code', { text: c.tool }), pre(c.input));
        break;
      case 'tool_result':
        row.append(badge(c.ok ? 'ok' : 'failed'), pre(c.output));
        break;
      case 'http_intent':
        row.append(el('code', { text: `${c.method} ${c.uri}` }));
        break;
      case 'http_response':
        row.append(el('code', { text: `${c.status} · ${bytes(c.body_bytes)}` }), c.body_preview ? pre(c.body_preview) : '');
        break;
      case 'http_failed':
        row.append(el('span', { class: 'error', text: c.message }));
        break;
      case 'denial':
        row.classList.add('denied');
        row.append(el('span', { class: 'badge denied', text: 'denied' }), ' ', el('code', { text: `${c.capability} ${c.target}` }));
        break;
      case 'wall_clock':
        row.append(el('code', { text: new Date(c.seconds * 1000 + Math.floor(c.nanoseconds / 1e6)).toISOString() }));
        break;
      case 'monotonic_clock':
        row.append(el('code', { text: `${c.nanoseconds} ns` }));
        break;
      case 'random':
        row.append(el('code', { text: `${c.bytes} bytes` }));
        break;
      default:
        row.append(pre(c));
    }
    return row;
  }

  function renderAudit(rec) {
    const box = el('div', { class: 'audit', 'data-tool': rec.tool });
    box.append(el('dl', { class: 'meta' },
      el('dt', { text: 'Tool' }), el('dd', {}, el('code', { text: rec.tool }), ' ', el('span', { class: 'mono muted', text: rec.component_digest })),
      rec.parent ? [el('dt', { text: 'Called by' }), el('dd', { class: 'mono', text: rec.parent })] : [],
      el('dt', { text: 'Outcome' }), el('dd', {}, badge(rec.outcome === 'ok' ? 'completed' : 'failed'), ' ', rec.outcome),
      el('dt', { text: 'Duration' }), el('dd', { text: duration(rec.duration_us / 1000) }),
      el('dt', { text: 'Memory peak' }), el('dd', { class: 'memory-peak', text: bytes(rec.memory_peak_bytes) }),
      el('dt', { text: 'Bytes in / out' }), el('dd', { text: `${bytes(rec.bytes_in)} / ${bytes(rec.bytes_out)}` })));
    const egress = rec.egress || [];
    if (egress.length) {
      box.append(el('table', { class: 'egress' },
        el('thead', {}, el('tr', {}, ['Verdict', 'Request', 'Reason', 'Status', 'Connected to'].map((h) => el('th', { text: h })))),
        el('tbody', {}, egress.map((e) => el('tr', { class: e.allowed ? 'allowed' : 'denied', 'data-verdict': e.allowed ? 'allowed' : 'denied' },
          el('td', {}, badge(e.allowed ? 'allowed' : 'denied')),
          el('td', {}, el('code', { text: `${e.method} ${e.target}` })),
          el('td', { class: e.allowed ? '' : 'error', text: e.reason }),
          el('td', { text: e.status || (e.timed_out ? 'timed out' : '') }),
          el('td', { class: 'mono', text: e.connected_to || '' }))))));
    }
    if ((rec.filesystem || []).length) {
      box.append(el('h3', { text: 'Filesystem refusals' }), el('ul', {}, rec.filesystem.map((f) =>
        el('li', { class: 'denied' }, el('code', { text: `${f.operation} ${f.path}` }), ` — ${f.reason}`))));
    }
    return box;
  }

  // ---- graphs and tools -----------------------------------------------------------------------

  async function graphsView(view) {
    const body = await api('/v1/graphs');
    view.append(el('h1', { text: 'Graphs' }),
      el('table', { id: 'graphs' }, el('thead', {}, el('tr', {}, ['Graph', 'Latest version', 'Versions', 'Stored'].map((h) => el('th', { text: h })))),
        el('tbody', {}, body.graphs.map((g) => el('tr', {},
          el('td', {}, link(`#/graphs/${encodeURIComponent(g.name)}`, g.name)),
          el('td', { class: 'mono', text: String(g.latest).slice(0, 12) }),
          el('td', { text: g.versions }), el('td', { text: time(g.created_ms) }))))));
  }

  async function graphView(view, name) {
    let g;
    try {
      g = await api(`/v1/graphs/${encodeURIComponent(name)}`);
    } catch (e) {
      if (e instanceof ApiError && e.status === 404) {
        view.append(el('h1', { text: 'Graph not found' }), el('p', { id: 'not-found', class: 'error', text: e.message }));
        return;
      }
      throw e;
    }
    const picture = el('div', { class: 'picture card', id: 'picture' });
    view.append(el('p', {}, link('#/graphs', '← all graphs')), el('h1', {}, 'Graph ', el('span', { class: 'mono', text: g.name })),
      el('dl', { class: 'meta' }, el('dt', { text: 'Version' }), el('dd', { class: 'mono', text: g.version }),
        el('dt', { text: 'Stored' }), el('dd', { text: time(g.created_ms) }),
        el('dt', { text: 'Runs' }), el('dd', {}, link(`#/runs?graph=${encodeURIComponent(g.name)}`, 'runs of this graph'))),
      picture, el('h2', { text: 'Source' }), pre(g.source));
    const started = performance.now();
    const svg = adoptSvg(await api(`/v1/graphs/${encodeURIComponent(name)}/picture?format=svg&version=${encodeURIComponent(g.version)}`));
    picture.append(svg);
    // Measured for the browser tests: fetch, parse and insertion of the picture.
    picture.dataset.renderMs = String(Math.round(performance.now() - started));
  }

  async function toolsView(view) {
    const body = await api('/v1/tools');
    view.append(el('h1', { text: 'Tools' }),
      el('table', { id: 'tools' }, el('thead', {}, el('tr', {}, ['Tool', 'Digest'].map((h) => el('th', { text: h })))),
        el('tbody', {}, body.tools.map((t) => el('tr', {},
          el('td', {}, link(`#/tools/${encodeURIComponent(t.name)}`, t.name)),
          el('td', { class: 'mono', text: t.digest }))))));
  }

  async function toolView(view, name) {
    let t;
    try {
      t = await api(`/v1/tools/${encodeURIComponent(name)}`);
    } catch (e) {
      if (e instanceof ApiError && e.status === 404) {
        view.append(el('h1', { text: 'Tool not found' }), el('p', { id: 'not-found', class: 'error', text: e.message }));
        return;
      }
      throw e;
    }
    const caps = t.capabilities || {};
    view.append(el('p', {}, link('#/tools', '← all tools')), el('h1', {}, 'Tool ', el('span', { class: 'mono', text: t.name })),
      el('p', { text: t.description || '' }),
      el('dl', { class: 'meta' }, el('dt', { text: 'Version' }), el('dd', { text: t.version }),
        el('dt', { text: 'Digest' }), el('dd', { class: 'mono', text: t.digest }),
        el('dt', { text: 'Workspace' }), el('dd', { text: caps.workspace }),
        el('dt', { text: 'Environment' }), el('dd', { text: (caps.env || []).join(', ') || 'none' }),
        el('dt', { text: 'Limits' }), el('dd', { class: 'mono', text: JSON.stringify(caps.limits) })),
      el('h2', { text: 'Egress it requests' }),
      (caps.egress || []).length === 0 ? el('p', { class: 'muted', text: 'None: the tool cannot reach the network.' }) :
        el('table', {}, el('thead', {}, el('tr', {}, ['Scheme', 'Host', 'Port', 'Methods'].map((h) => el('th', { text: h })))),
          el('tbody', {}, caps.egress.map((r) => el('tr', {}, el('td', { text: r.scheme }), el('td', { class: 'mono', text: r.host }),
            el('td', { text: r.port }), el('td', { text: (r.methods || []).join(', ') }))))),
      el('div', { class: 'cols' },
        el('div', { class: 'card' }, el('h3', { text: 'Input schema' }), pre(t.input_schema)),
        el('div', { class: 'card' }, el('h3', { text: 'Output schema' }), pre(t.output_schema))),
      el('h2', { text: 'Manifest' }), pre(t.manifest));
  }

  // ---- start ------------------------------------------------------------------------------------

  document.addEventListener('DOMContentLoaded', async () => {
    document.getElementById('login-form').addEventListener('submit', async (e) => {
      e.preventDefault();
      const token = document.getElementById('token').value.trim();
      if (!token) return;
      if (await signIn(token)) route();
    });
    document.getElementById('logout').addEventListener('click', () => signOut(''));
    window.addEventListener('hashchange', route);
    const saved = sessionStorage.getItem(TOKEN_KEY);
    if (saved && (await signIn(saved))) route();
    else if (!saved) showLogin('');
  });

  // For the browser tests: how the page handles an event kind it does not know.
  window.sandgraphConsole = Object.freeze({
    applyEvent: (kind, data) => {
      const st = newRunState();
      applyEvent(st, kind, data);
      return st.unknown.map((u) => u.kind);
    },
  });
})();
