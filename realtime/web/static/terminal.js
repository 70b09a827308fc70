// The console's terminal pane: one xterm.js terminal attached to a workspace terminal.
//
// What is typed goes to the workspace terminal (`RemoteTerminal.write` keeps the order); the
// screen is whatever `terminal` events the client delivers, so a dropped socket resumes where it
// was (the client resumes from `since`) and a reloaded page redraws it by replaying the log from 0.
// The pane follows its box's size (the fit addon) and tells the workspace terminal.
//
// xterm.js writes its computed styles into <style> elements and `style` attributes, which the
// console's CSP (style-src 'self', no inline styles) refuses (and reports). So, without loosening
// the CSP: a script's `createElement("style")` makes an inert `<qai-style>` element instead (xterm
// only sets its text and removes it; a browser neither parses nor CSP-checks it) and `mirrorStyles`
// copies its text into constructed stylesheets; and a script's `setAttribute("style", …)` becomes the CSSOM assignment
// `style.cssText = …`. The CSP governs neither, and both are things a script on the page could do
// anyway: what the CSP guards against, style injected through markup, stays refused. The console
// itself never makes a <style> element or sets a style attribute.

import { Terminal } from "./vendor/xterm/xterm.js";
import { FitAddon } from "./vendor/xterm/addon-fit.js";

const INERT = "qai-style";

/** Make scripted styles of `doc` CSP-neutral from now on (once per document); see above. */
function inertStyles(doc) {
  if (doc.__inertStyles) return;
  doc.__inertStyles = true;
  const create = doc.createElement;
  doc.createElement = function createElement(tag, options) {
    return create.call(this, String(tag).toLowerCase() === "style" ? INERT : tag, options);
  };
  const { Element } = doc.defaultView;
  const setAttribute = Element.prototype.setAttribute;
  Element.prototype.setAttribute = function patchedSetAttribute(name, value) {
    if (String(name).toLowerCase() === "style" && this.style) this.style.cssText = String(value);
    else setAttribute.call(this, name, value);
  };
}

/** Keep constructed stylesheets in step with every inert style element under `root`. */
function mirrorStyles(root) {
  inertStyles(root.ownerDocument);
  const sheets = new Map(); // inert style element → [CSSStyleSheet, text]
  const sync = () => {
    for (const style of root.querySelectorAll(INERT)) {
      let entry = sheets.get(style);
      if (!entry) {
        entry = [new CSSStyleSheet(), null];
        sheets.set(style, entry);
        document.adoptedStyleSheets = [...document.adoptedStyleSheets, entry[0]];
      }
      if (entry[1] !== style.textContent) {
        entry[1] = style.textContent;
        entry[0].replaceSync(entry[1]);
      }
    }
    for (const [style, [sheet]] of sheets) {
      if (!root.contains(style)) {
        sheets.delete(style);
        document.adoptedStyleSheets = document.adoptedStyleSheets.filter((s) => s !== sheet);
      }
    }
  };
  const observer = new MutationObserver(sync);
  observer.observe(root, { childList: true, subtree: true, characterData: true });
  sync();
  return () => {
    observer.disconnect();
    const gone = new Set([...sheets.values()].map(([sheet]) => sheet));
    document.adoptedStyleSheets = document.adoptedStyleSheets.filter((s) => !gone.has(s));
  };
}

export class TerminalPane {
  /**
   * @param {import("./client.js").WorkspaceClient} client the workspace's channel
   * @param {{box: HTMLElement, open: HTMLButtonElement, close: HTMLButtonElement, status: HTMLElement}} elements
   */
  constructor(client, { box, open, close, status }) {
    this.client = client;
    this.box = box;
    this.statusEl = status;
    this.remote = null;
    this.xterm = new Terminal({ convertEol: false, cursorBlink: true, fontSize: 13, scrollback: 5000 });
    this.fit = new FitAddon();
    this.xterm.loadAddon(this.fit);
    box.replaceChildren();
    this.unmirror = mirrorStyles(box);
    this.xterm.open(box);
    this.offs = [
      this.xterm.onData((data) => this.remote?.write(data).catch((error) => this.status(`input failed: ${error.message}`))),
      this.xterm.onResize(({ cols, rows }) => this.remote?.resize(cols, rows).catch(() => {})),
    ];
    this.observer = new ResizeObserver(() => this.refit());
    this.observer.observe(box);
    const onOpen = () => this.openNew();
    const onClose = () => this.remote?.close().catch((error) => this.status(`close failed: ${error.message}`));
    open.addEventListener("click", onOpen);
    close.addEventListener("click", onClose);
    this.offs.push({ dispose: () => open.removeEventListener("click", onOpen) });
    this.offs.push({ dispose: () => close.removeEventListener("click", onClose) });
    this.offHello = client.on("hello", (hello) => this.onHello(hello));
    this.offReset = client.on("reset", () => this.xterm.reset());
    this.status("no terminal");
  }

  status(text) {
    this.statusEl.textContent = text;
    this.box.dataset.state = this.remote ? (this.remote.exitCode === null ? "open" : "exited") : "none";
  }

  refit() {
    if (this.box.offsetParent === null) return; // hidden: no size to fit to
    try {
      this.fit.fit();
    } catch {
      // not laid out yet
    }
  }

  /** After a (re)connection: adopt the newest open terminal of the snapshot if none is shown. */
  onHello(hello) {
    const open = hello.snapshot?.terminals || [];
    if (!this.remote && open.length) this.attach(this.client.terminal(open[open.length - 1].terminal_id));
  }

  attach(remote) {
    this.remote?.dispose();
    this.remote = remote;
    this.xterm.reset();
    remote.onData((text) => this.xterm.write(text));
    remote.onExit((code) => {
      this.xterm.write(`\r\n[exited with code ${code}]\r\n`);
      this.status(`exited (${code})`);
    });
    this.status(`terminal ${remote.id}`);
    this.refit();
    remote.resize(this.xterm.cols, this.xterm.rows).catch(() => {});
  }

  async openNew() {
    this.refit();
    this.status("opening…");
    try {
      const remote = await this.client.openTerminal({ cols: this.xterm.cols, rows: this.xterm.rows });
      this.attach(remote);
      this.xterm.focus();
    } catch (error) {
      this.status(`cannot open a terminal: ${error.code || ""} ${error.message}`);
    }
  }

  /** The screen and its scrollback as text, one line per row (trailing blanks trimmed). */
  text() {
    const buffer = this.xterm.buffer.active;
    const rows = [];
    for (let i = 0; i < buffer.length; i++) rows.push(buffer.getLine(i)?.translateToString(true) ?? "");
    return rows.join("\n");
  }

  dispose() {
    this.offHello();
    this.offReset();
    for (const off of this.offs) off.dispose();
    this.observer.disconnect();
    this.remote?.dispose();
    this.xterm.dispose();
    this.unmirror();
  }
}
