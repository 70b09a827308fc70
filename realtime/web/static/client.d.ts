// Types of client.js (wire protocol v1, docs/protocol.md). tests/test_client_js.py keeps the two in step.

/** An op's or an HTTP call's failure: `code` is the protocol's error code. */
export class OpError extends Error {
  constructor(code: string, message?: string, details?: Record<string, unknown>);
  readonly code: string;
  /** The op that failed, for a websocket op. */
  readonly op?: string;
  /** The HTTP status, for an HTTP call. */
  readonly status?: number;
}

export type EventKind =
  | "status" | "log" | "file" | "preview" | "command" | "custom" | "provider" | "terminal"
  | "idle" | "port" | "presence" | "revoked" | (string & {});
export const EVENT_KINDS: readonly EventKind[];
export const SUBPROTOCOL: "qai.v1";

export interface Backoff {
  initialMs: number;
  maxMs: number;
}

export interface Heartbeat {
  intervalMs: number;
  timeoutMs: number;
}

/** Defaults shared with the Python client (docs/protocol.md, "Clients"). */
export const DEFAULTS: Readonly<{
  since: number;
  tokenScope: "read" | "write";
  backoff: Readonly<Backoff>;
  heartbeat: Readonly<Heartbeat>;
}>;

export function tokenProtocols(token: string | null | undefined): string[];
export function tokenProject(token: string | null | undefined): string | null;
export function logLines(text: string): string[];

/** One event of a project's log. */
export interface WorkspaceEvent<D = Record<string, unknown>> {
  seq: number;
  ts: number;
  kind: EventKind;
  data: D;
}

export interface Hello {
  type: "hello";
  project_id: string;
  epoch: string;
  seq: number;
  since: number;
  resumed: boolean;
  snapshot: Record<string, unknown>;
}

export type ConnectionState = "idle" | "connecting" | "open" | "reconnecting" | "closed";

export interface ConnectionChange {
  state: ConnectionState;
  attempt: number;
  code?: number;
  reason?: string;
  delayMs?: number;
  connectionId?: string;
}

export interface Reset {
  hello: Hello;
  previousSeq: number | null;
  previousEpoch: string | null;
}

export type TokenSource = string | (() => string | Promise<string>);

export interface WorkspaceClientOptions {
  projectId: string;
  /** The service token or a session token of the project; a function is called before every connect. */
  token: TokenSource;
  /** The service's http(s) origin; default the page's origin. */
  baseUrl?: string;
  /** Start after this seq: 0 (default) replays the retained history, null starts live. */
  since?: number | null;
  epoch?: string | null;
  backoff?: Partial<Backoff>;
  /** An app-level `ping` on a timer; no reply in time drops the socket and reconnects. false: none. */
  heartbeat?: Partial<Heartbeat> | false;
  WebSocket?: typeof WebSocket;
  /** How other viewers see this one (`presence` events). */
  name?: string | null;
}

export interface FileInput {
  path: string;
  content: string;
  encoding?: "utf-8" | "base64";
}

type Handler<T> = (value: T, client: WorkspaceClient) => void;

export class WorkspaceClient {
  constructor(options: WorkspaceClientOptions);
  readonly projectId: string;
  readonly state: ConnectionState;
  readonly seq: number | null;
  readonly epoch: string | null;
  readonly hello: Hello | null;
  duplicatesDropped: number;

  on(name: "hello", handler: Handler<Hello>): () => void;
  on(name: "reset", handler: Handler<Reset>): () => void;
  on(name: "connection", handler: Handler<ConnectionChange>): () => void;
  on(name: "event" | EventKind, handler: Handler<WorkspaceEvent>): () => void;
  off(name: string, handler: Handler<never>): void;

  connect(): Promise<Hello>;
  close(): void;
  request<T = unknown>(op: string, args?: Record<string, unknown>): Promise<T>;
  ping(): Promise<{ ts: number }>;
  exec(
    cmd: string | string[],
    options?: { cwd?: string; env?: Record<string, string>; timeout_s?: number; stdin?: boolean },
  ): Promise<{ command_id: string }>;
  /** Write to the stdin of a command started with `stdin: true`; `eof` closes it after. */
  input(commandId: string, data?: string, options?: { eof?: boolean }): Promise<Record<string, never>>;
  openTerminal(options?: {
    cols?: number;
    rows?: number;
    cmd?: string | string[];
    cwd?: string;
    env?: Record<string, string>;
  }): Promise<RemoteTerminal>;
  /** A handle on a terminal that is already open (one of `hello.snapshot.terminals`). */
  terminal(terminalId: string): RemoteTerminal;
  kill(commandId: string): Promise<{ command_id: string; exit_code: number }>;
  write(files: FileInput[]): Promise<{ files: { path: string; sha256: string }[] }>;
  read(path: string): Promise<{ path: string; content: string; encoding: "utf-8" | "base64" }>;
  list(path?: string): Promise<{ path: string; entries: { name: string; type: "file" | "dir"; size: number }[] }>;
  delete(path: string): Promise<unknown>;
  refresh(options?: { revoke?: boolean; port?: number }): Promise<Record<string, unknown>>;
}

/** A terminal of the workspace (a pty); its output is the log's `terminal` events. */
export class RemoteTerminal {
  constructor(client: WorkspaceClient, terminalId: string | null);
  readonly client: WorkspaceClient;
  readonly id: string | null;
  readonly exitCode: number | null;
  onData(handler: (text: string) => void): () => void;
  onExit(handler: (exitCode: number | null) => void): () => void;
  output(): AsyncIterableIterator<string>;
  /** Type `data` (keystrokes as typed: "\r" is Enter, "\x03" Ctrl-C); resolves once sent. */
  write(data: string): Promise<void>;
  resize(cols: number, rows: number): Promise<void>;
  close(): Promise<{ terminal_id: string; exit_code: number }>;
  dispose(): void;
}

export class WorkspaceApi {
  constructor(options: { token: string; baseUrl?: string });
  token: string;
  baseUrl: string;
  call<T = unknown>(method: string, path: string, body?: unknown): Promise<T>;
  list(): Promise<Record<string, unknown>[]>;
  create(
    projectId: string,
    options?: { files?: FileInput[]; env?: Record<string, string>; wait?: boolean },
  ): Promise<Record<string, unknown>>;
  get(projectId: string): Promise<Record<string, unknown>>;
  stop(projectId: string): Promise<null>;
  mintToken(
    projectId: string,
    options?: { scope?: "read" | "write"; ttl_s?: number },
  ): Promise<{ token: string; expires_at: number; scope: "read" | "write" }>;
  events(
    projectId: string,
    options?: { since?: number; limit?: number; epoch?: string },
  ): Promise<{ epoch: string; seq: number; resumed: boolean; events: WorkspaceEvent[] }>;
  refreshPreview(projectId: string, options?: { revoke?: boolean; port?: number }): Promise<Record<string, unknown>>;
}
