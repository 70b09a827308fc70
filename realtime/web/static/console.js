// The console page: sign in, list and create workspaces, and a live view of one workspace.
//
// Rendering never uses innerHTML: log text goes into text nodes (ANSI SGR colours become spans).
// Log lines are batched into one DOM update per animation frame, and each pane keeps only its
// last MAX_DOM_LINES lines in the DOM (all of them, up to MAX_PANE_LINES, stay searchable).

import { OpError, WorkspaceApi, WorkspaceClient, logLines, tokenProject } from "./client.js";
import { TerminalPane } from "./terminal.js";
import { PortsAndViewers, renderPortsAndViewers } from "./presence.js";

const MAX_DOM_LINES = 5000;
const MAX_PANE_LINES = 50_000;
const MAX_MODEL_LINES = 200_000;
const MAX_FILES = 300;
const MAX_TIMELINE = 80;
const TOKEN_KEY = "qai.console.token";
const RECENT_KEY = "qai.console.recent";
const FIXED_PANES = [
  ["dev", "dev"],
  ["install", "install"],
  ["system", "system"],
];

const $ = (id) => document.getElementById(id);

/** An element with attributes and children (strings become text nodes, never markup). */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

function clock(ts) {
  return ts ? new Date(ts).toLocaleTimeString([], { hour12: false }) : "";
}

// -- ANSI SGR ----------------------------------------------------------------------------------

// CSI sequences (SGR ones are applied, the rest dropped), OSC strings, and two-byte escapes.
// eslint-disable-next-line no-control-regex
const ESCAPES = /\x1b(?:\[([0-9;:?]*)[ -/]*([@-~])|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])/g;
const CUBE = [0, 95, 135, 175, 215, 255];

function xterm256(n) {
  if (n < 232) {
    const i = n - 16;
    return `rgb(${CUBE[Math.floor(i / 36)]},${CUBE[Math.floor(i / 6) % 6]},${CUBE[i % 6]})`;
  }
  const grey = 8 + (n - 232) * 10;
  return `rgb(${grey},${grey},${grey})`;
}

/** An extended colour (`38;5;n` or `38;2;r;g;b`) at codes[i]: [colour, codes consumed]. */
function extendedColour(codes, i) {
  if (codes[i + 1] === 5 && codes[i + 2] >= 0 && codes[i + 2] <= 255) {
    const n = codes[i + 2];
    return [n < 16 ? n : xterm256(n), 2];
  }
  if (codes[i + 1] === 2 && codes.length > i + 4) {
    const [r, g, b] = codes.slice(i + 2, i + 5).map((v) => Math.max(0, Math.min(255, v | 0)));
    return [`rgb(${r},${g},${b})`, 4];
  }
  return [undefined, 0];
}

function applySgr(style, params) {
  const codes = params === "" ? [0] : params.split(/[;:]/).map((part) => Number.parseInt(part || "0", 10));
  let s = { ...style };
  for (let i = 0; i < codes.length; i++) {
    const c = codes[i];
    if (c === 0) s = {};
    else if (c === 1) s.bold = true;
    else if (c === 2) s.dim = true;
    else if (c === 3) s.italic = true;
    else if (c === 4) s.underline = true;
    else if (c === 7) s.inverse = true;
    else if (c === 9) s.strike = true;
    else if (c === 22) s.bold = s.dim = false;
    else if (c === 23) s.italic = false;
    else if (c === 24) s.underline = false;
    else if (c === 27) s.inverse = false;
    else if (c === 29) s.strike = false;
    else if (c >= 30 && c <= 37) s.fg = c - 30;
    else if (c >= 90 && c <= 97) s.fg = c - 90 + 8;
    else if (c === 39) s.fg = undefined;
    else if (c >= 40 && c <= 47) s.bg = c - 40;
    else if (c >= 100 && c <= 107) s.bg = c - 100 + 8;
    else if (c === 49) s.bg = undefined;
    else if (c === 38 || c === 48) {
      const [colour, used] = extendedColour(codes, i);
      s[c === 38 ? "fg" : "bg"] = colour;
      i += used;
    }
  }
  return s;
}

function styledSpan(text, style) {
  let { fg, bg } = style;
  if (style.inverse) [fg, bg] = [bg ?? 0, fg ?? 7];
  const classes = [];
  const span = document.createElement("span");
  if (typeof fg === "number") classes.push(`fg-${fg}`);
  else if (fg) span.style.color = fg;
  if (typeof bg === "number") classes.push(`bg-${bg}`);
  else if (bg) span.style.background = bg;
  for (const flag of ["bold", "dim", "italic", "underline", "strike"]) if (style[flag]) classes.push(`sgr-${flag}`);
  span.className = classes.join(" ");
  span.textContent = text;
  return span;
}

/** What a terminal would leave of a line with carriage returns: the text after the last one. */
function afterCarriageReturn(text) {
  const trimmed = text.endsWith("\r") ? text.slice(0, -1) : text;
  const cr = trimmed.lastIndexOf("\r");
  return cr >= 0 ? trimmed.slice(cr + 1) : trimmed;
}

/** Append `text` to `parent` as text nodes and styled spans; escape sequences never reach the DOM. */
export function renderAnsi(text, parent) {
  const line = afterCarriageReturn(text);
  let style = {};
  let last = 0;
  const put = (chunk) => {
    if (!chunk) return;
    const plain = !style.fg && style.fg !== 0 && !style.bg && style.bg !== 0 && !style.bold && !style.dim &&
      !style.italic && !style.underline && !style.strike && !style.inverse;
    parent.append(plain ? document.createTextNode(chunk) : styledSpan(chunk, style));
  };
  for (const match of line.matchAll(ESCAPES)) {
    put(line.slice(last, match.index));
    if (match[2] === "m" && !match[1].includes("?")) style = applySgr(style, match[1]);
    last = match.index + match[0].length;
  }
  put(line.slice(last));
}

export function stripAnsi(text) {
  return afterCarriageReturn(text).replace(ESCAPES, "");
}

// -- log panes ---------------------------------------------------------------------------------

class Pane {
  constructor(view, key, label) {
    this.key = key;
    this.label = label;
    this.items = []; // lines and markers, the last MAX_PANE_LINES
    this.pending = []; // not yet in the DOM
    this.domLines = 0;
    this.lineCount = 0;
    this.el = el("div", { class: "pane", "data-pane": key, role: "tabpanel", hidden: true });
    this.count = el("span", { class: "count" });
    this.exit = el("span", { class: "exit" });
    this.tab = el("button", { type: "button", role: "tab", "data-pane": key }, label, this.count, this.exit);
    this.tab.addEventListener("click", () => view.select(key));
    this.el.addEventListener("scroll", () => view.onScroll(this));
  }

  push(item) {
    this.items.push(item);
    if (!item.marker) this.lineCount += 1;
    if (this.items.length > MAX_PANE_LINES * 1.2) this.items.splice(0, this.items.length - MAX_PANE_LINES);
    this.pending.push(item);
  }

  setExit(text, ok) {
    this.exit.textContent = text;
    this.exit.className = `exit ${ok ? "exit-ok" : "exit-bad"}`;
  }
}

// -- one workspace's live view -----------------------------------------------------------------

class WorkspaceView {
  constructor(session, projectId) {
    this.session = session;
    this.projectId = projectId;
    this.model = []; // every line shown, in order: {seq, ts, source, stream, command_id, text}
    this.panes = new Map();
    this.commands = new Map(); // command_id → {cmd, exit}
    this.active = null;
    this.query = "";
    this.frame = 0;
    this.previewUrl = null;
    this.ranFromBox = null;
    this.reset();
    this.client = new WorkspaceClient({
      projectId,
      token: session.wsToken(projectId),
      baseUrl: location.origin,
      since: 0,
      name: "console",
    });
    const c = this.client;
    this.presence = new PortsAndViewers(c, (state) =>
      renderPortsAndViewers(state, document, $("port-list"), $("viewer-list")),
    );
    this.unsubscribe = [
      c.on("hello", (hello) => this.onHello(hello)),
      c.on("reset", (info) => this.onReset(info)),
      c.on("connection", (info) => {
        connectionLog.push({ project: projectId, state: info.state, seq: c.seq, code: info.code ?? null });
        this.schedule();
      }),
      c.on("status", (event) => this.onStatus(event)),
      c.on("log", (event) => this.onLog(event)),
      c.on("file", (event) => this.onFile(event)),
      c.on("preview", (event) => this.setPreview(event.data.url)),
      c.on("command", (event) => this.onCommand(event)),
    ];
    this.terminal = new TerminalPane(c, {
      box: $("term-box"),
      open: $("term-open"),
      close: $("term-close"),
      status: $("term-status"),
    });
    c.connect().catch((error) => this.showConnectionError(error));
  }

  close() {
    this.terminal.dispose();
    for (const off of this.unsubscribe) off();
    this.presence.close();
    this.client.close();
    cancelAnimationFrame(this.frame);
  }

  /** Empty every panel (a new view, or the log was reset). */
  reset() {
    this.model = [];
    this.panes.clear();
    this.commands.clear();
    $("log-tabs").replaceChildren();
    $("panes").replaceChildren();
    $("timeline").replaceChildren();
    $("file-feed").replaceChildren();
    $("reset-banner").hidden = true;
    for (const [key, label] of FIXED_PANES) this.pane(key, label);
    this.select(this.active && this.panes.has(this.active) ? this.active : "dev");
  }

  pane(key, label) {
    let pane = this.panes.get(key);
    if (!pane) {
      pane = new Pane(this, key, label);
      this.panes.set(key, pane);
      $("log-tabs").append(pane.tab);
      $("panes").append(pane.el);
    }
    return pane;
  }

  commandPane(commandId) {
    const known = this.commands.get(commandId);
    const label = known?.cmd ? `$ ${shorten(known.cmd)}` : commandId;
    return this.pane(`cmd:${commandId}`, label);
  }

  select(key) {
    this.active = key;
    for (const pane of this.panes.values()) {
      const on = pane.key === key;
      pane.el.hidden = !on;
      pane.tab.setAttribute("aria-selected", String(on));
      if (on) pane.tab.scrollIntoView({ block: "nearest", inline: "nearest" });
    }
    this.schedule();
  }

  // -- events --------------------------------------------------------------------------------

  onHello(hello) {
    const snapshot = hello.snapshot || {};
    this.setState(snapshot.state, snapshot.detail);
    for (const command of snapshot.commands || []) {
      if (!this.commands.has(command.command_id)) {
        this.commands.set(command.command_id, { cmd: commandText(command.cmd) });
      }
    }
    this.setPreview(snapshot.preview?.url || null);
  }

  onReset({ hello, previousSeq }) {
    this.reset();
    const first = hello.since + 1;
    const text = previousSeq
      ? `History reset: the log no longer holds seq ${previousSeq}; what was shown is cleared, replaying from seq ${first}.`
      : `History reset: the log starts at seq ${first}; older events are no longer retained.`;
    const banner = $("reset-banner");
    banner.textContent = text;
    banner.hidden = false;
    $("timeline").append(el("li", { class: "marker", "data-marker": "reset" }, "history reset"));
    for (const pane of this.panes.values()) pane.push({ marker: "— history reset —", kind: "reset" });
    this.schedule();
  }

  onStatus(event) {
    const { state, detail } = event.data;
    this.setState(state, detail);
    const timeline = $("timeline");
    timeline.append(
      el("li", { "data-state": state, "data-seq": event.seq, title: detail || "" }, state, el("time", {}, clock(event.ts))),
    );
    while (timeline.children.length > MAX_TIMELINE) timeline.firstChild.remove();
    timeline.scrollLeft = timeline.scrollWidth;
  }

  onLog(event) {
    const { source, stream, command_id: commandId, text } = event.data;
    const pane = source === "command" && commandId ? this.commandPane(commandId) : this.pane(source, source);
    for (const line of logLines(text)) {
      const record = { seq: event.seq, ts: event.ts, source, stream, command_id: commandId ?? null, text: line };
      this.model.push(record);
      pane.push(record);
    }
    if (this.model.length > MAX_MODEL_LINES * 1.2) this.model.splice(0, this.model.length - MAX_MODEL_LINES);
    this.schedule();
  }

  onFile(event) {
    const { change, path, origin } = event.data;
    const feed = $("file-feed");
    feed.prepend(
      el(
        "li",
        { "data-seq": event.seq, "data-path": path },
        el("span", { class: `change ${change}` }, change),
        el("span", { class: "path" }, path),
        el("span", { class: "origin" }, origin),
      ),
    );
    while (feed.children.length > MAX_FILES) feed.lastChild.remove();
  }

  onCommand(event) {
    const data = event.data;
    const known = this.commands.get(data.command_id) || {};
    if (data.state === "started") {
      known.cmd = commandText(data.cmd);
      this.commands.set(data.command_id, known);
      const pane = this.commandPane(data.command_id);
      pane.tab.firstChild.textContent = `$ ${shorten(known.cmd)}`;
      return;
    }
    known.exit = data.lost ? "lost" : data.exit_code;
    this.commands.set(data.command_id, known);
    const pane = this.commandPane(data.command_id);
    const ok = data.exit_code === 0;
    const text = data.lost
      ? "the instance running it stopped: exit code unknown"
      : `exited with code ${data.exit_code}${data.timed_out ? " (timed out)" : ""}`;
    pane.setExit(data.lost ? "lost" : `exit ${data.exit_code}`, ok);
    pane.push({ marker: `— ${text} —`, kind: "exit", className: ok ? "exit-ok" : "exit-bad" });
    if (this.ranFromBox === data.command_id) this.showExit(known.exit);
    this.schedule();
  }

  showExit(exit) {
    const result = $("command-result");
    result.textContent = exit === "lost" ? "exit code unknown (lost)" : `exit ${exit}`;
    result.className = `command-result ${exit === 0 ? "exit-ok" : "exit-bad"}`;
    result.dataset.exitCode = String(exit);
  }

  async runCommand(cmd) {
    const result = $("command-result");
    result.textContent = "running…";
    result.className = "command-result muted";
    delete result.dataset.exitCode;
    try {
      const { command_id: commandId } = await this.client.exec(cmd);
      this.ranFromBox = commandId;
      const known = this.commands.get(commandId) || {};
      known.cmd = known.cmd || cmd;
      this.commands.set(commandId, known);
      const pane = this.commandPane(commandId);
      pane.tab.firstChild.textContent = `$ ${shorten(known.cmd)}`;
      this.select(pane.key);
      if (known.exit !== undefined) this.showExit(known.exit);
    } catch (error) {
      result.textContent = `error: ${error.code || ""} ${error.message}`;
      result.className = "command-result exit-bad";
    }
  }

  async refreshPreview() {
    try {
      const data = await this.client.refresh();
      this.setPreview(data.url || data.preview_url, { reload: true });
    } catch (error) {
      $("preview-empty").hidden = false;
      $("preview-empty").textContent = `Preview refresh failed: ${error.code || ""} ${error.message}`;
    }
  }

  setState(state, detail) {
    const badge = $("ws-state");
    badge.textContent = state || "no workspace";
    badge.dataset.state = state || "none";
    badge.title = detail || "";
    const listed = document.querySelector(`#workspace-list li[data-project="${CSS.escape(this.projectId)}"] .badge`);
    if (listed) {
      listed.textContent = state || "—";
      listed.dataset.state = state || "none";
    }
  }

  setPreview(url, { reload = false } = {}) {
    const frame = $("preview-frame");
    const link = $("preview-link");
    if (url && !/^https?:\/\//i.test(url)) url = null; // only web URLs go into src and href
    if (!url) {
      if (!this.previewUrl) {
        frame.hidden = true;
        $("preview-empty").hidden = false;
        $("preview-empty").textContent = "No preview yet.";
      }
      return;
    }
    frame.hidden = false;
    $("preview-empty").hidden = true;
    link.href = url;
    link.textContent = new URL(url).host;
    if (url !== this.previewUrl || reload) frame.src = url;
    this.previewUrl = url;
  }

  showConnectionError(error) {
    if (error instanceof OpError && error.code === "closed") return;
    const connection = $("connection");
    connection.dataset.state = "closed";
    connection.textContent = `closed: ${error.message || error}`;
  }

  // -- rendering -----------------------------------------------------------------------------

  schedule() {
    if (!this.frame) this.frame = requestAnimationFrame(() => this.flush());
  }

  matches(item) {
    if (item.marker || !this.query) return true;
    item.lower ??= stripAnsi(item.text).toLowerCase();
    return item.lower.includes(this.query);
  }

  renderItem(item) {
    if (item.marker) {
      return el("div", { class: `marker ${item.className || ""}`, "data-marker": item.kind }, item.marker);
    }
    const row = document.createElement("div");
    row.className = item.stream === "stderr" ? "line stderr" : "line";
    if (this.query) row.classList.add("hit");
    row.dataset.seq = item.seq;
    row.dataset.stream = item.stream;
    const gutter = document.createElement("span");
    gutter.className = "gutter";
    gutter.textContent = item.seq;
    const text = document.createElement("span");
    text.className = "text";
    renderAnsi(item.text, text);
    row.append(gutter, text);
    return row;
  }

  flush() {
    this.frame = 0;
    for (const pane of this.panes.values()) {
      if (!pane.pending.length) continue;
      let items = pane.pending.filter((item) => this.matches(item));
      pane.pending = [];
      if (items.length > MAX_DOM_LINES) items = items.slice(-MAX_DOM_LINES);
      const fragment = document.createDocumentFragment();
      for (const item of items) fragment.append(this.renderItem(item));
      pane.el.append(fragment);
      pane.domLines += items.length;
      const excess = pane.domLines - MAX_DOM_LINES;
      if (excess > 0) {
        const range = document.createRange();
        range.setStartBefore(pane.el.firstChild);
        range.setEndAfter(pane.el.children[excess - 1]);
        range.deleteContents();
        pane.domLines -= excess;
      }
      pane.count.textContent = pane.lineCount ? String(pane.lineCount) : "";
    }
    const active = this.panes.get(this.active);
    if (active && $("follow").checked) active.el.scrollTop = active.el.scrollHeight;
    this.renderStatusLine(active);
  }

  renderStatusLine(active) {
    const connection = $("connection");
    const state = this.client.state;
    connection.dataset.state = state;
    connection.dataset.seq = String(this.client.seq ?? "");
    const seq = this.client.seq ?? "–";
    connection.textContent =
      state === "open" ? `live · seq ${seq}` : state === "reconnecting" ? `reconnecting… (have seq ${seq})` : state;
    const count = $("search-count");
    if (!active) return;
    if (this.query) {
      const hits = active.items.filter((item) => !item.marker && this.matches(item)).length;
      count.textContent = `${hits} match${hits === 1 ? "" : "es"}`;
    } else {
      count.textContent = active.lineCount > active.domLines ? `last ${active.domLines} of ${active.lineCount}` : "";
    }
  }

  search(query) {
    this.query = query.trim().toLowerCase();
    for (const pane of this.panes.values()) {
      pane.el.replaceChildren();
      pane.domLines = 0;
      pane.pending = pane.items.slice();
    }
    this.schedule();
  }

  onScroll(pane) {
    if (pane.key !== this.active) return;
    const atBottom = pane.el.scrollTop + pane.el.clientHeight >= pane.el.scrollHeight - 8;
    // Scrolling up to read stops following; scrolling back to the end resumes it.
    $("follow").checked = atBottom;
  }
}

function commandText(cmd) {
  if (Array.isArray(cmd)) {
    if (cmd.length === 3 && cmd[0] === "sh" && cmd[1] === "-c") return cmd[2];
    return cmd.join(" ");
  }
  return String(cmd ?? "");
}

function shorten(text, max = 24) {
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

// -- the page: sign-in, workspace list, routing ------------------------------------------------

class Session {
  constructor(token, mode) {
    this.token = token;
    this.mode = mode; // "service": every route; "session": one project's channel
    this.project = mode === "session" ? tokenProject(token) : null;
    this.api = new WorkspaceApi({ token, baseUrl: location.origin });
  }

  /** The channel's token: with the service token, a fresh write-scope session token per connect. */
  wsToken(projectId) {
    if (this.mode !== "service") return this.token;
    return async () => (await this.api.mintToken(projectId, { scope: "write" })).token;
  }
}

const page = {
  session: null,
  view: null,
};
const connectionLog = [];

function recent() {
  try {
    return JSON.parse(localStorage.getItem(RECENT_KEY) || "[]");
  } catch {
    return [];
  }
}

function remember(projectId) {
  const list = [projectId, ...recent().filter((id) => id !== projectId)].slice(0, 20);
  localStorage.setItem(RECENT_KEY, JSON.stringify(list));
}

async function signIn(token) {
  const api = new WorkspaceApi({ token, baseUrl: location.origin });
  try {
    await api.list();
    return new Session(token, "service");
  } catch (error) {
    if (error.status === 401 && tokenProject(token)) return new Session(token, "session");
    throw error;
  }
}

async function refreshList() {
  const session = page.session;
  const list = $("workspace-list");
  let snapshots = [];
  if (session.mode === "service") {
    try {
      snapshots = await session.api.list();
    } catch (error) {
      $("create-error").textContent = `listing failed: ${error.message}`;
    }
  }
  const states = new Map(snapshots.map((s) => [s.project_id, s.state]));
  const ids = session.mode === "service" ? [...new Set([...states.keys(), ...recent()])] : [session.project];
  list.replaceChildren(
    ...ids.map((id) =>
      el(
        "li",
        { "data-project": id, class: page.view?.projectId === id ? "current" : "" },
        el("span", {}, id),
        el("span", { class: "badge", "data-state": states.get(id) || "none" }, states.get(id) || "—"),
      ),
    ),
  );
}

function openWorkspace(projectId) {
  if (page.view?.projectId === projectId) return;
  page.view?.close();
  page.view = null;
  $("empty").hidden = Boolean(projectId);
  $("workspace").hidden = !projectId;
  if (!projectId) return;
  remember(projectId);
  $("ws-title").textContent = projectId;
  $("command-result").textContent = "";
  $("log-search").value = "";
  $("preview-frame").removeAttribute("src");
  const service = page.session.mode === "service";
  $("ws-start").hidden = !service;
  $("ws-stop").hidden = !service;
  page.view = new WorkspaceView(page.session, projectId);
  for (const item of $("workspace-list").children) item.classList.toggle("current", item.dataset.project === projectId);
}

function route() {
  const match = /^#\/w\/([A-Za-z0-9][A-Za-z0-9_-]{0,63})$/.exec(location.hash);
  const projectId = match ? match[1] : page.session?.project || null;
  openWorkspace(projectId);
}

function showSignIn(message = "") {
  page.view?.close();
  page.view = null;
  page.session = null;
  $("app").hidden = true;
  $("signout").hidden = true;
  $("signin").hidden = false;
  $("signin-error").textContent = message;
  $("whoami").textContent = "";
}

async function start(token) {
  try {
    page.session = await signIn(token);
  } catch (error) {
    sessionStorage.removeItem(TOKEN_KEY);
    showSignIn(error.status === 401 ? "That token was not accepted." : `Could not sign in: ${error.message}`);
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  const session = page.session;
  $("signin").hidden = true;
  $("app").hidden = false;
  $("signout").hidden = false;
  $("create-form").hidden = session.mode !== "service";
  $("whoami").textContent = session.mode === "service" ? "service token" : `session token · ${session.project}`;
  await refreshList();
  route();
}

function wire() {
  $("signin-form").addEventListener("submit", (e) => {
    e.preventDefault();
    start($("signin-token").value.trim());
  });
  $("signout").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    showSignIn();
  });
  $("list-refresh").addEventListener("click", () => refreshList());
  $("workspace-list").addEventListener("click", (e) => {
    const item = e.target.closest("li[data-project]");
    if (item) location.hash = `#/w/${item.dataset.project}`;
  });
  $("create-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const projectId = $("create-project").value.trim();
    $("create-error").textContent = "";
    try {
      // No files: the service lays its template. Not waiting: the view shows provisioning live.
      await page.session.api.create(projectId, { wait: false });
    } catch (error) {
      $("create-error").textContent = `${error.code}: ${error.message}`;
      return;
    }
    $("create-project").value = "";
    remember(projectId);
    location.hash = `#/w/${projectId}`;
    await refreshList();
  });
  $("ws-start").addEventListener("click", async () => {
    const view = page.view;
    try {
      await page.session.api.create(view.projectId, { wait: false });
    } catch (error) {
      $("command-result").textContent = `start failed: ${error.message}`;
    }
    refreshList();
  });
  $("ws-stop").addEventListener("click", async () => {
    try {
      await page.session.api.stop(page.view.projectId);
    } catch (error) {
      $("command-result").textContent = `stop failed: ${error.message}`;
    }
    refreshList();
  });
  $("command-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const cmd = $("command-input").value.trim();
    if (cmd && page.view) page.view.runCommand(cmd);
  });
  $("preview-refresh").addEventListener("click", () => page.view?.refreshPreview());
  $("log-search").addEventListener("input", (e) => page.view?.search(e.target.value));
  $("follow").addEventListener("change", (e) => {
    if (e.target.checked) page.view?.schedule();
  });
  window.addEventListener("hashchange", route);
}

// Hooks for tests and for people poking at the page from devtools.
window.__console = {
  /** Every log line the page shows, in order: [{seq, ts, source, stream, command_id, text}]. */
  lines: () =>
    (page.view?.model ?? []).map(({ seq, ts, source, stream, command_id, text }) => ({
      seq, ts, source, stream, command_id, text,
    })),
  /** Every change of the channel's state, with the seq the page had then: [{state, seq, code}]. */
  connections: () => connectionLog.slice(),
  connection: () => page.view?.client.state ?? null,
  seq: () => page.view?.client.seq ?? null,
  epoch: () => page.view?.client.epoch ?? null,
  duplicatesDropped: () => page.view?.client.duplicatesDropped ?? 0,
  /** How many line elements pane `key` holds in the DOM. */
  domLines: (key) => page.view?.panes.get(key)?.el.querySelectorAll(".line").length ?? 0,
  panes: () => (page.view ? [...page.view.panes.keys()] : []),
  /** The terminal pane: its screen and scrollback as text, its size, the terminal it shows. */
  terminalText: () => page.view?.terminal.text() ?? "",
  terminalSize: () => (page.view ? [page.view.terminal.xterm.cols, page.view.terminal.xterm.rows] : null),
  terminalId: () => page.view?.terminal.remote?.id ?? null,
  /** Drop the channel's socket as a network failure would (the client resumes with `since`). */
  dropSocket: () => page.view?.client._socket?.close(4000, "dropped by a test"),
};

wire();
const saved = sessionStorage.getItem(TOKEN_KEY);
if (saved) start(saved);
else showSignIn();
