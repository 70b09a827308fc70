// The workspace service's JavaScript client (wire protocol v1, docs/protocol.md).
//
// No dependencies and no build step: import it as an ES module, in a browser or any runtime
// with `WebSocket` and `fetch`.
//
//   import { WorkspaceClient } from "/static/client.js";
//   const client = new WorkspaceClient({ projectId: "demo", token });
//   client.on("log", (event) => print(event.data.text));
//   await client.connect();
//   const { command_id } = await client.exec("npm test");
//
// `WorkspaceClient` keeps one channel open per project: it resumes after any drop with `since`
// and `epoch`, delivers every event once and in `seq` order (never a duplicate, never a gap),
// and answers each op with a promise. `WorkspaceApi` wraps the HTTP routes.
//
// The token never goes in the socket's URL (URLs end up in logs and history): it travels as the
// subprotocol `qai.token.<base64url>`, next to `qai.v1`, which is all the server answers with.

/** An op's or an HTTP call's failure: `code` is the protocol's error code. */
export class OpError extends Error {
  constructor(code, message, details = {}) {
    super(message || code);
    this.name = "OpError";
    this.code = code;
    Object.assign(this, details);
  }
}

/** Event kinds of the log (protocol § Events); each is also a name `on()` accepts. */
export const EVENT_KINDS = [
  "status", "log", "file", "preview", "command", "custom", "provider", "revoked", "terminal", "idle", "port", "presence",
];

const CLOSE_POLICY = 1008;
const CLOSE_TOO_BIG = 1009;
const NORMAL_CLOSE = 1000;
/** Our own close of a socket whose pings went unanswered (a dead network path). */
const CLOSE_HEARTBEAT = 4001;
/** `WebSocket.OPEN`: only then does `send()` put a frame on the wire (a closing socket drops it). */
const SOCKET_OPEN = 1;
/** Ops waiting for the channel to open again, at most this many and this many bytes of frames. */
const MAX_QUEUED_OPS = 1000;
const MAX_QUEUED_BYTES = 4 * 1024 * 1024;
const UTF8 = new TextEncoder();

/**
 * Defaults shared with the Python client (docs/protocol.md, "Clients"): where a new channel starts
 * (`since: 0`, everything retained), the scope a minted token gets (`read`), the reconnect backoff
 * and the heartbeat (an app-level `ping` op: the server's websocket pings are invisible to browser
 * JavaScript, so a dead path is only noticed by a reply that does not come).
 */
export const DEFAULTS = Object.freeze({
  since: 0,
  tokenScope: "read",
  backoff: Object.freeze({ initialMs: 250, maxMs: 5000 }),
  heartbeat: Object.freeze({ intervalMs: 15000, timeoutMs: 10000 }),
});
/** The websocket subprotocol of the protocol (what the server's handshake answers). */
export const SUBPROTOCOL = "qai.v1";

/** The subprotocols a socket offers for `token`: `qai.v1` and `qai.token.<base64url of the token>`. */
export function tokenProtocols(token) {
  if (!token) return [SUBPROTOCOL];
  let binary = "";
  for (const byte of new TextEncoder().encode(String(token))) binary += String.fromCharCode(byte);
  const encoded = btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  return [SUBPROTOCOL, `qai.token.${encoded}`];
}

/** The project a session token is for (its `sub` claim, not verified), or null. */
export function tokenProject(token) {
  const parts = String(token || "").split(".");
  if (parts.length !== 3) return null;
  try {
    const payload = JSON.parse(atob(parts[1].replace(/-/g, "+").replace(/_/g, "/")));
    return typeof payload.sub === "string" ? payload.sub : null;
  } catch {
    return null;
  }
}

/** The `data` of a `log` event as lines (without their `\n`); a final line may lack one. */
export function logLines(text) {
  const lines = String(text).split("\n");
  if (lines.length > 1 && lines[lines.length - 1] === "") lines.pop();
  return lines;
}

export class WorkspaceClient {
  /**
   * @param {object} options
   * @param {string} options.projectId
   * @param {string | (() => string | Promise<string>)} options.token the service token or a session
   *   token of the project; a function is called before every (re)connect, so it can mint a fresh one.
   * @param {string} [options.baseUrl] the service's http(s) origin; default the page's origin.
   * @param {number | null} [options.since] start after this seq: 0 (default) replays the retained
   *   history, null starts live.
   * @param {string | null} [options.epoch] the epoch `since` belongs to.
   * @param {{initialMs?: number, maxMs?: number}} [options.backoff] reconnect delays (with jitter).
   * @param {{intervalMs?: number, timeoutMs?: number} | false} [options.heartbeat] a `ping` op every
   *   `intervalMs` while open; no reply within `timeoutMs` drops the socket and reconnects. `false`: none.
   * @param {typeof WebSocket} [options.WebSocket] an implementation, for runtimes without a global one.
   * @param {string | null} [options.name] how other viewers see this one (`presence` events).
   */
  constructor({
    projectId, token, baseUrl, since = DEFAULTS.since, epoch = null, backoff = {}, heartbeat = {}, WebSocket: impl,
    name = null,
  } = {}) {
    if (!projectId) throw new TypeError("projectId is required");
    this.projectId = projectId;
    this._token = token;
    this._base = (baseUrl || globalThis.location?.origin || "").replace(/\/$/, "");
    this._since = since;
    this._epoch = epoch;
    this._name = name;
    this._backoff = { ...DEFAULTS.backoff, ...backoff };
    this._heartbeat = heartbeat === false ? null : { ...DEFAULTS.heartbeat, ...heartbeat };
    this._beat = null;
    this._onOnline = () => this._online();
    this._WebSocket = impl || globalThis.WebSocket;
    this._handlers = new Map();
    this._inFlight = new Map();
    this._queued = [];
    this._queuedBytes = 0;
    this._nextId = 1;
    this._attempt = 0;
    this._socket = null;
    this._timer = null;
    this._state = "idle";
    this._wanted = false;
    this._hello = null;
    this._firstHello = null;
    this.duplicatesDropped = 0;
  }

  /** "idle" | "connecting" | "open" | "reconnecting" | "closed". */
  get state() {
    return this._state;
  }

  /** The seq of the last event delivered (or where the server placed the stream), null before any. */
  get seq() {
    return this._since;
  }

  /** The epoch of the log `seq` belongs to (from the last `hello`). */
  get epoch() {
    return this._epoch;
  }

  /** The last `hello` frame (its `snapshot` is the workspace as the socket opened). */
  get hello() {
    return this._hello;
  }

  /**
   * Subscribe: an event kind ("status", "log", "file", "preview", "command", "custom",
   * "provider"), "event" (every event), "hello", "reset" (the log no longer holds our position:
   * rebuild local state), or "connection" (state changes). Returns a function that unsubscribes.
   */
  on(name, handler) {
    if (!this._handlers.has(name)) this._handlers.set(name, new Set());
    this._handlers.get(name).add(handler);
    return () => this.off(name, handler);
  }

  off(name, handler) {
    this._handlers.get(name)?.delete(handler);
  }

  /** Open the channel (and keep it open until `close()`); resolves with the first `hello`. */
  connect() {
    if (!this._firstHello) {
      this._firstHello = {};
      this._firstHello.promise = new Promise((resolve, reject) => {
        this._firstHello.resolve = resolve;
        this._firstHello.reject = reject;
      });
    }
    if (!this._wanted) {
      this._wanted = true;
      globalThis.addEventListener?.("online", this._onOnline);
      this._open();
    }
    return this._firstHello.promise;
  }

  /** Close for good: pending and in-flight ops fail with `closed`. */
  close() {
    this._wanted = false;
    globalThis.removeEventListener?.("online", this._onOnline);
    this._stopHeartbeat();
    clearTimeout(this._timer);
    this._timer = null;
    const socket = this._socket;
    this._socket = null;
    if (socket) socket.close(NORMAL_CLOSE, "client closed");
    this._failOps("closed", "the client was closed");
    this._firstHello?.reject?.(new OpError("closed", "the client was closed"));
    this._setState("closed", {});
  }

  /**
   * Send an op; resolves with the reply's `data`, rejects with an `OpError` (the reply's code, or
   * "disconnected" when the socket dropped before the reply: the op may or may not have taken
   * effect). Ops made while disconnected are sent once the channel is open again.
   */
  request(op, args = {}) {
    return new Promise((resolve, reject) => {
      const id = this._nextId++;
      const frame = JSON.stringify({ ...args, op, id });
      const entry = { id, op, frame, resolve, reject };
      // A socket we (or the heartbeat) just closed is still "open" until its close event comes;
      // a frame sent to it now would be dropped unsent, so it waits for the next channel too.
      if (this._state === "open" && this._socket?.readyState === SOCKET_OPEN) this._send(entry);
      else this._enqueue(entry);
    });
  }

  ping() {
    return this.request("ping");
  }

  /**
   * Run a command (`cmd`: a shell string, or argv); resolves with `{command_id}` at once. With
   * `stdin: true` its standard input is a pipe that `input()` writes.
   */
  exec(cmd, { cwd, env, timeout_s, stdin } = {}) {
    return this.request("exec", clean({ cmd, cwd, env, timeout_s, stdin: stdin || undefined }));
  }

  /** Write `data` (text) to the stdin of a command started with `stdin: true`; `eof` closes it after. */
  input(commandId, data = "", { eof = false } = {}) {
    return this.request("input", clean({ command_id: commandId, data: data || undefined, eof }));
  }

  /**
   * Open a terminal (default: the image's login shell); resolves with a `RemoteTerminal` once it
   * runs. Its output is the `terminal` events of the log, so it survives reconnections (and a new
   * client with `since: 0` redraws it from the start).
   */
  async openTerminal({ cols, rows, cmd, cwd, env } = {}) {
    const terminal = new RemoteTerminal(this, null);
    try {
      const { terminal_id: id } = await this.request("term_open", clean({ cols, rows, cmd, cwd, env }));
      terminal._attach(id);
    } catch (error) {
      terminal.dispose();
      throw error;
    }
    return terminal;
  }

  /** A handle on a terminal that is already open (one of `hello.snapshot.terminals`). */
  terminal(terminalId) {
    return new RemoteTerminal(this, terminalId);
  }

  /** Kill a running command; resolves with `{command_id, exit_code}` once it exited. */
  kill(commandId) {
    return this.request("kill", { command_id: commandId });
  }

  /** Write files (all or nothing): `[{path, content, encoding?}]` → `{files: [{path, sha256}]}`. */
  write(files) {
    return this.request("write", { files });
  }

  read(path) {
    return this.request("read", { path });
  }

  list(path = "") {
    return this.request("list", { path });
  }

  delete(path) {
    return this.request("delete", { path });
  }

  /** Start the dev server again if needed and sign a fresh preview URL (with `port`: that open port's). */
  refresh({ revoke = false, port } = {}) {
    return this.request("refresh", clean({ revoke, port }));
  }

  // -- internals -------------------------------------------------------------------------------

  _emit(name, value) {
    for (const handler of this._handlers.get(name) || []) {
      try {
        handler(value, this);
      } catch (error) {
        console.error(`workspace client: a "${name}" handler failed`, error);
      }
    }
  }

  _setState(state, details) {
    this._state = state;
    this._emit("connection", { state, attempt: this._attempt, ...details });
  }

  /** The socket's URL (no token in it) and the subprotocols that carry the token. */
  async _target() {
    const token = typeof this._token === "function" ? await this._token() : this._token;
    const params = new URLSearchParams();
    if (this._since !== null && this._since !== undefined) {
      params.set("since", String(this._since));
      if (this._epoch) params.set("epoch", this._epoch);
    }
    if (this._name) params.set("name", this._name);
    const base = this._base.replace(/^http/, "ws");
    const query = params.toString();
    const url = `${base}/ws/projects/${encodeURIComponent(this.projectId)}${query ? `?${query}` : ""}`;
    return { url, protocols: tokenProtocols(token) };
  }

  async _open() {
    this._setState(this._attempt === 0 && !this._hello ? "connecting" : "reconnecting", {});
    let target;
    try {
      target = await this._target();
    } catch (error) {
      this._retry({ reason: `no token: ${error.message || error}` });
      return;
    }
    if (!this._wanted) return;
    let socket;
    try {
      socket = new this._WebSocket(target.url, target.protocols);
    } catch (error) {
      this._retry({ reason: `cannot open ${this._base}: ${error.message || error}` });
      return;
    }
    this._socket = socket;
    socket.onmessage = (message) => {
      if (this._socket === socket) this._receive(message.data);
    };
    socket.onclose = (close) => this._lost(socket, close.code, close.reason);
  }

  /** The socket is gone (closed by either side, or dropped for a missed heartbeat). */
  _lost(socket, code, reason) {
    if (this._socket !== socket) return;
    this._socket = null;
    this._stopHeartbeat();
    this._failOps("disconnected", "the channel closed before the reply; the op may or may not have run");
    // Reconnecting cannot fix these: a token refused with no way to get another, a frame too big.
    const fatal = { [CLOSE_POLICY]: "unauthorized", [CLOSE_TOO_BIG]: "too_large" }[code];
    if (fatal && (code !== CLOSE_POLICY || typeof this._token !== "function")) {
      this._wanted = false;
      globalThis.removeEventListener?.("online", this._onOnline);
      this._failOps("closed", reason || fatal);
      this._firstHello?.reject?.(new OpError(fatal, reason));
      this._setState("closed", { code, reason });
      return;
    }
    this._retry({ code, reason });
  }

  /** The browser says the network is back: reconnect now rather than at the end of a backoff. */
  _online() {
    if (!this._wanted) return;
    if (this._state === "reconnecting" && this._timer !== null) {
      clearTimeout(this._timer);
      this._timer = null;
      this._attempt = 0;
      this._open();
    } else if (this._state === "open") {
      this._ping(); // the old path may be dead although no close came: find out now
    }
  }

  _startHeartbeat() {
    this._stopHeartbeat();
    if (!this._heartbeat) return;
    this._beat = { interval: setInterval(() => this._ping(), this._heartbeat.intervalMs), deadline: null };
  }

  _stopHeartbeat() {
    if (!this._beat) return;
    clearInterval(this._beat.interval);
    clearTimeout(this._beat.deadline);
    this._beat = null;
  }

  /** One heartbeat: a `ping` op; no reply in time drops the socket as lost and reconnects. */
  _ping() {
    const beat = this._beat;
    const socket = this._socket;
    if (!beat || !socket || beat.deadline !== null) return;
    beat.deadline = setTimeout(() => {
      if (this._socket !== socket) return;
      try {
        socket.close(CLOSE_HEARTBEAT, "heartbeat timeout");
      } catch {
        // closing a dead socket may throw in some runtimes; it is dropped either way
      }
      this._lost(socket, CLOSE_HEARTBEAT, "no reply to ping");
    }, this._heartbeat.timeoutMs);
    this.request("ping").then(
      () => {
        if (this._beat !== beat) return;
        clearTimeout(beat.deadline);
        beat.deadline = null;
      },
      () => {},
    );
  }

  _retry(details) {
    if (!this._wanted) return;
    const ceiling = Math.min(this._backoff.maxMs, this._backoff.initialMs * 2 ** this._attempt);
    const delayMs = Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
    this._attempt += 1;
    this._setState("reconnecting", { ...details, delayMs });
    this._timer = setTimeout(() => this._open(), delayMs);
  }

  _receive(raw) {
    let frame;
    try {
      frame = JSON.parse(raw);
    } catch {
      return;
    }
    switch (frame.type) {
      case "hello":
        this._onHello(frame);
        break;
      case "event":
        this._onEvent(frame);
        break;
      case "batch":
        for (const event of frame.events) if (!this._onEvent(event)) break;
        break;
      case "reply":
        this._onReply(frame);
        break;
      default:
        break;
    }
  }

  _onHello(hello) {
    const asked = this._since;
    const hadEpoch = this._epoch;
    this._hello = hello;
    this._epoch = hello.epoch;
    // Resumed: the stream continues right after our own seq. Not resumed: our position is not
    // in the log (or we gave none); the server placed us at `hello.since`.
    this._since = hello.since;
    this._attempt = 0;
    if (!hello.resumed && asked !== null && asked !== undefined) {
      this._emit("reset", { hello, previousSeq: asked, previousEpoch: hadEpoch });
    }
    this._emit("hello", hello);
    this._setState("open", { connectionId: hello.snapshot?.connection_id });
    this._startHeartbeat();
    this._firstHello?.resolve?.(hello);
    const queued = this._queued;
    this._queued = [];
    this._queuedBytes = 0;
    for (const entry of queued) this._send(entry);
  }

  /** Deliver one event; false when it revealed a gap (the channel is reopened with `since`). */
  _onEvent(event) {
    if (this._since !== null && event.seq <= this._since) {
      this.duplicatesDropped += 1;
      return true;
    }
    if (this._since !== null && event.seq !== this._since + 1) {
      // Never happens with a conforming server; if it does, resume from what we have.
      this._socket?.close(4000, "gap");
      return false;
    }
    this._since = event.seq;
    this._emit("event", event);
    this._emit(event.kind, event);
    return true;
  }

  _onReply(reply) {
    const entry = this._inFlight.get(reply.id);
    if (!entry) return;
    this._inFlight.delete(reply.id);
    if (reply.ok) entry.resolve(reply.data);
    else entry.reject(new OpError(reply.error.code, reply.error.message, { op: entry.op }));
  }

  _enqueue(entry) {
    entry.bytes = UTF8.encode(entry.frame).length; // what it takes on the wire (only ops that wait pay for it)
    if (this._queued.length >= MAX_QUEUED_OPS || this._queuedBytes + entry.bytes > MAX_QUEUED_BYTES) {
      entry.reject(new OpError("queue_full", "too many ops are waiting for the channel to open", { op: entry.op }));
      return;
    }
    this._queued.push(entry);
    this._queuedBytes += entry.bytes;
  }

  _send(entry) {
    this._inFlight.set(entry.id, entry);
    this._socket.send(entry.frame);
  }

  _failOps(code, message) {
    const entries = [...this._inFlight.values()];
    this._inFlight.clear();
    if (code === "closed") {
      entries.push(...this._queued);
      this._queued = [];
      this._queuedBytes = 0;
    }
    for (const entry of entries) entry.reject(new OpError(code, message, { op: entry.op }));
  }
}

/** The HTTP API (`/api/workspaces…`) with a bearer token; failures reject with an `OpError`. */
export class WorkspaceApi {
  /** @param {{token: string, baseUrl?: string}} options */
  constructor({ token, baseUrl } = {}) {
    this.token = token;
    this.baseUrl = (baseUrl || globalThis.location?.origin || "").replace(/\/$/, "");
  }

  async call(method, path, body) {
    const headers = { authorization: `Bearer ${this.token}` };
    if (body !== undefined) headers["content-type"] = "application/json";
    let response;
    try {
      response = await fetch(this.baseUrl + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (error) {
      throw new OpError("network", `${method} ${path}: ${error.message || error}`);
    }
    if (response.status === 204) return null;
    const payload = await response.json().catch(() => null);
    if (!response.ok) {
      const error = payload?.error || {};
      throw new OpError(error.code || "http_error", error.message || response.statusText, {
        status: response.status,
      });
    }
    return payload;
  }

  /** The workspaces this instance runs: `[snapshot…]`. */
  async list() {
    return (await this.call("GET", "/api/workspaces")).workspaces;
  }

  /** Provision (no files: the template) or reconnect; `{session_token, ws_url, preview_url, …}`. */
  create(projectId, { files, env, wait = false } = {}) {
    return this.call("POST", "/api/workspaces", clean({ project_id: projectId, files, env, wait }));
  }

  get(projectId) {
    return this.call("GET", `/api/workspaces/${encodeURIComponent(projectId)}`);
  }

  stop(projectId) {
    return this.call("DELETE", `/api/workspaces/${encodeURIComponent(projectId)}`);
  }

  /** A session token for a browser: `{token, expires_at, scope}`. */
  mintToken(projectId, { scope = DEFAULTS.tokenScope, ttl_s } = {}) {
    return this.call("POST", `/api/workspaces/${encodeURIComponent(projectId)}/tokens`, clean({ scope, ttl_s }));
  }

  /** A page of history: `{epoch, seq, resumed, events}`. */
  events(projectId, { since = 0, limit, epoch } = {}) {
    const params = new URLSearchParams(clean({ since: String(since), limit, epoch }));
    return this.call("GET", `/api/workspaces/${encodeURIComponent(projectId)}/events?${params}`);
  }

  refreshPreview(projectId, { revoke = false, port } = {}) {
    return this.call("POST", `/api/workspaces/${encodeURIComponent(projectId)}/preview`, clean({ revoke, port }));
  }
}

/** Characters of input per op: at most 3 bytes each in UTF-8, so an op stays under the server's 64 KiB. */
const INPUT_CHUNK = 16 * 1024;
/** Output chunks an unread `output()` iterator holds before dropping the oldest. */
const OUTPUT_QUEUE = 10_000;

/**
 * A terminal in the workspace: `write` what is typed, `resize`, `close`; its screen output arrives
 * through `onData(handler)` (or `for await (const text of terminal.output())`) and its end through
 * `onExit(handler)` (`exitCode` is set then). Writes keep their order: while one op is in flight,
 * the keystrokes that follow are sent together in the next.
 */
export class RemoteTerminal {
  constructor(client, terminalId) {
    this.client = client;
    this.id = terminalId;
    this.exitCode = null;
    this._early = terminalId ? null : []; // events before the id is known, while `term_open` is in flight
    this._data = new Set();
    this._exit = new Set();
    this._pending = "";
    this._writing = null;
    this._size = null;
    this._off = client.on("terminal", (event) => this._onEvent(event));
  }

  _attach(id) {
    this.id = id;
    const early = this._early;
    this._early = null;
    for (const event of early) this._onEvent(event);
  }

  _onEvent(event) {
    if (this._early) {
      if (this._early.length < OUTPUT_QUEUE) this._early.push(event);
      return;
    }
    const data = event.data || {};
    if (data.terminal_id !== this.id) return;
    if (data.state === "exited") {
      this.exitCode = data.exit_code ?? null;
      for (const handler of this._exit) handler(this.exitCode);
    } else if (typeof data.data === "string") {
      for (const handler of this._data) handler(data.data);
    }
  }

  /** Call `handler(text)` with each chunk of screen output; returns a function that unsubscribes. */
  onData(handler) {
    this._data.add(handler);
    return () => this._data.delete(handler);
  }

  /** Call `handler(exitCode)` when the terminal ends; returns a function that unsubscribes. */
  onExit(handler) {
    this._exit.add(handler);
    return () => this._exit.delete(handler);
  }

  /** The screen output as an async iterator that ends with the terminal. */
  async *output() {
    const queue = [];
    let wake = null;
    let done = false;
    const offData = this.onData((text) => {
      queue.push(text);
      if (queue.length > OUTPUT_QUEUE) queue.shift();
      wake?.();
    });
    const offExit = this.onExit(() => {
      done = true;
      wake?.();
    });
    try {
      while (true) {
        if (queue.length) yield queue.shift();
        else if (done) return;
        else await new Promise((resolve) => (wake = resolve));
      }
    } finally {
      offData();
      offExit();
    }
  }

  /** Type `data` (keystrokes as typed: "\r" is Enter, "\x03" Ctrl-C); resolves once sent. */
  write(data) {
    this._pending += data;
    if (!this._writing) this._writing = this._flush();
    return this._writing;
  }

  async _flush() {
    try {
      while (this._pending) {
        let cut = Math.min(this._pending.length, INPUT_CHUNK);
        const last = this._pending.charCodeAt(cut - 1);
        if (cut < this._pending.length && last >= 0xd800 && last <= 0xdbff) cut -= 1; // keep a pair whole
        const chunk = this._pending.slice(0, cut);
        this._pending = this._pending.slice(cut);
        await this.client.request("term_input", { terminal_id: this.id, data: chunk });
      }
    } finally {
      this._writing = null;
    }
  }

  /** Set the window size (the programs in it get SIGWINCH); repeats of the same size are not sent. */
  resize(cols, rows) {
    if (this._size && this._size[0] === cols && this._size[1] === rows) return Promise.resolve({});
    this._size = [cols, rows];
    return this.client.request("term_resize", { terminal_id: this.id, cols, rows });
  }

  /** Hang the terminal up; resolves with `{terminal_id, exit_code}` once it has exited. */
  async close() {
    const result = await this.client.request("term_close", { terminal_id: this.id });
    this.exitCode = result.exit_code;
    return result;
  }

  /** Stop listening for its events (the terminal itself goes on). */
  dispose() {
    this._off();
    this._data.clear();
    this._exit.clear();
  }
}

function clean(object) {
  return Object.fromEntries(Object.entries(object).filter(([, value]) => value !== undefined && value !== null));
}
