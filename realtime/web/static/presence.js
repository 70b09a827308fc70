// Ports and viewers of the open workspace (issue 17): the console's port list and who is here.
//
// `PortsAndViewers` is the state (no DOM): it starts from each `hello`'s snapshot (`ports`,
// `presence`, `connection_id`) and applies the `port` and `presence` events that come after it
// (`seq` beyond `hello.seq`; earlier ones are already in the snapshot). `renderPortsAndViewers`
// draws it into two lists. Names and URLs are set as text and attributes, never as HTML.

/** Open ports and present viewers, kept from a `WorkspaceClient`'s frames. */
export class PortsAndViewers {
  constructor(client, onChange = () => {}) {
    this.ports = new Map(); // port → {port, state, url, expires_at}
    this.viewers = new Map(); // connection_id → {connection_id, name, since}
    this.count = 0;
    this.me = null;
    this.upTo = 0;
    this.onChange = onChange;
    this.off = [
      client.on("hello", (hello) => this.onHello(hello)),
      client.on("port", (event) => this.onPort(event)),
      client.on("presence", (event) => this.onPresence(event)),
    ];
  }

  onHello(hello) {
    const snapshot = hello.snapshot || {};
    this.upTo = hello.seq || 0;
    this.me = snapshot.connection_id || null;
    this.ports = new Map((snapshot.ports || []).map((entry) => [entry.port, entry]));
    this.viewers = new Map((snapshot.presence || []).map((viewer) => [viewer.connection_id, viewer]));
    this.count = snapshot.viewers ?? this.viewers.size;
    this.onChange(this);
  }

  onPort(event) {
    if (event.seq <= this.upTo) return;
    const data = event.data;
    if (data.state === "open") this.ports.set(data.port, data);
    else this.ports.delete(data.port);
    this.onChange(this);
  }

  onPresence(event) {
    if (event.seq <= this.upTo) return;
    const { connection_id: id, name, state } = event.data;
    if (state === "joined") {
      if (!this.viewers.has(id)) this.count += 1;
      this.viewers.set(id, { connection_id: id, name, since: event.ts });
    } else if (this.viewers.delete(id)) {
      this.count = Math.max(0, this.count - 1);
    }
    this.onChange(this);
  }

  /** The open ports, lowest first. */
  portList() {
    return [...this.ports.values()].sort((a, b) => a.port - b.port);
  }

  /** The viewers, earliest first, each with `me` when it is this console. */
  viewerList() {
    return [...this.viewers.values()]
      .sort((a, b) => a.since - b.since)
      .map((viewer) => ({ ...viewer, me: viewer.connection_id === this.me }));
  }

  close() {
    for (const off of this.off) off();
  }
}

/** Draw `state` into the `<ul>`s `ports` and `viewers` of `doc`. */
export function renderPortsAndViewers(state, doc, ports, viewers) {
  const portItems = state.portList().map((entry) => {
    const link = doc.createElement("a");
    link.href = entry.url;
    link.target = "_blank";
    link.rel = "noopener";
    link.textContent = `:${entry.port}`;
    link.dataset.port = String(entry.port);
    const item = doc.createElement("li");
    item.append(link);
    return item;
  });
  ports.replaceChildren(...portItems);
  if (!portItems.length) ports.append(Object.assign(doc.createElement("li"), { className: "muted", textContent: "none" }));
  const viewerItems = state.viewerList().map((viewer) => {
    const item = doc.createElement("li");
    item.textContent = (viewer.name || "anonymous") + (viewer.me ? " (this console)" : "");
    item.title = viewer.connection_id;
    item.dataset.connection = viewer.connection_id;
    return item;
  });
  viewers.replaceChildren(...viewerItems);
  const more = state.count - viewerItems.length;
  if (more > 0) viewers.append(Object.assign(doc.createElement("li"), { className: "muted", textContent: `+${more} more` }));
}
