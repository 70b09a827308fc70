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
export const EVENT_KINDS = ["status", "log", "file", "preview", "command", "custom", "provider"];

const CLOSE_POLICY = 1008;
const NORMAL_CLOSE = 1000;
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
   * @param {typeof WebSocket} [options.WebSocket] an implementation, for runtimes without a global one.
   * @param {string | null} [options.name] how other viewers see this one (`presence` events).
   */
  constructor({ projectId, token, baseUrl, since = 0, epoch = null, backoff = {}, WebSocket: impl, name = null } = {}) {
    if (!projectId) throw new TypeError("projectId is required");
    this.projectId = projectId;
    this._token = token;
    this._base = (baseUrl || globalThis.location?.origin || "").replace(/\/$/, "");
    this._since = since;
    this._epoch = epoch;
    this._name = name;
    this._backoff = { initialMs: 250, maxMs: 5000, ...backoff };
    this._WebSocket = impl || globalThis.WebSocket;
    this._handlers = new Map();
    this._inFlight = new Map();
    this._queued = [];
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
      this._open();
    }
    return this._firstHello.promise;
  }

  /** Close for good: pending and in-flight ops fail with `closed`. */
  close() {
    this._wanted = false;
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
      if (this._state === "open") this._send(entry);
      else this._queued.push(entry);
    });
  }

  ping() {
    return this.request("ping");
  }

  /** Run a command (`cmd`: a shell string, or argv); resolves with `{command_id}` at once. */
  exec(cmd, { cwd, env, timeout_s } = {}) {
    return this.request("exec", clean({ cmd, cwd, env, timeout_s }));
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

  /** Start the dev server again if needed and sign a fresh preview URL. */
  refresh({ revoke = false } = {}) {
    return this.request("refresh", { revoke });
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
    socket.onclose = (close) => {
      if (this._socket !== socket) return;
      this._socket = null;
      this._failOps("disconnected", "the channel closed before the reply; the op may or may not have run");
      if (close.code === CLOSE_POLICY && typeof this._token !== "function") {
        this._wanted = false;
        this._firstHello?.reject?.(new OpError("unauthorized", close.reason));
        this._setState("closed", { code: close.code, reason: close.reason });
        return;
      }
      this._retry({ code: close.code, reason: close.reason });
    };
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
    this._firstHello?.resolve?.(hello);
    const queued = this._queued;
    this._queued = [];
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
  mintToken(projectId, { scope = "write", ttl_s } = {}) {
    return this.call("POST", `/api/workspaces/${encodeURIComponent(projectId)}/tokens`, clean({ scope, ttl_s }));
  }

  /** A page of history: `{epoch, seq, resumed, events}`. */
  events(projectId, { since = 0, limit, epoch } = {}) {
    const params = new URLSearchParams(clean({ since: String(since), limit, epoch }));
    return this.call("GET", `/api/workspaces/${encodeURIComponent(projectId)}/events?${params}`);
  }

  refreshPreview(projectId, { revoke = false } = {}) {
    return this.call("POST", `/api/workspaces/${encodeURIComponent(projectId)}/preview`, { revoke });
  }
}

function clean(object) {
  return Object.fromEntries(Object.entries(object).filter(([, value]) => value !== undefined && value !== null));
}
