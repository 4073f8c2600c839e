// One WebSocket to the gateway, reconnected with exponential backoff and jitter when it
// drops. Requests ({method, params, id}) resolve with their reply's `result` or reject with
// its `error`; data messages ({stream, data}) go to `onData`. After every (re)connect
// `onOpen` runs (the page authenticates again and re-subscribes, which brings fresh
// snapshots).

/**
 * The gateway URL for this page (docs/web.md):
 *   ?ws=<url>                   taken as given;
 *   page served on port 8080    ws(s)://<same host>:8081/ws  (a local `./cryptex up`);
 *   otherwise                   same origin, path /ws          (behind the ingress).
 */
export function gatewayUrl(location = window.location) {
  const override = new URLSearchParams(location.search).get("ws");
  if (override) return override;
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  if (location.port === "8080") return `${scheme}//${location.hostname}:8081/ws`;
  return `${scheme}//${location.host}/ws`;
}

export class StreamClient {
  constructor(url, { onOpen, onData, onStatus } = {}) {
    this.url = url;
    this.onOpen = onOpen || (() => {});
    this.onData = onData || (() => {});
    this.onStatus = onStatus || (() => {});
    this.socket = null;
    this.nextId = 1;
    this.pending = new Map();
    this.attempt = 0;
    this.connects = 0;
    this.timer = null;
    this.stopped = false;
    this.minDelayMs = 500;
    this.maxDelayMs = 10_000;
  }

  get open() {
    return this.socket !== null && this.socket.readyState === WebSocket.OPEN;
  }

  connect() {
    this.stopped = false;
    clearTimeout(this.timer);
    this.onStatus("connecting", { attempt: this.attempt });
    let socket;
    try {
      socket = new WebSocket(this.url);
    } catch (err) {
      this.scheduleReconnect(`cannot open ${this.url}: ${err.message}`);
      return;
    }
    this.socket = socket;
    let stableTimer = null;
    socket.onopen = () => {
      this.connects++;
      this.onStatus("open", { connects: this.connects });
      // reset the backoff only once the connection has lasted a little while
      stableTimer = setTimeout(() => { this.attempt = 0; }, 5_000);
      Promise.resolve(this.onOpen(this.connects)).catch((err) => console.error("onOpen failed", err));
    };
    socket.onmessage = (event) => {
      let msg;
      try {
        msg = JSON.parse(event.data);
      } catch {
        return;
      }
      if (msg.stream !== undefined) {
        this.onData(msg.stream, msg.data);
      } else if (msg.id !== undefined && this.pending.has(msg.id)) {
        const { resolve, reject } = this.pending.get(msg.id);
        this.pending.delete(msg.id);
        if (msg.error) reject(Object.assign(new Error(msg.error.message || msg.error.code), msg.error));
        else resolve(msg.result);
      }
    };
    socket.onclose = (event) => {
      clearTimeout(stableTimer);
      if (this.socket !== socket) return;
      this.socket = null;
      for (const { reject } of this.pending.values()) reject(new Error("connection closed"));
      this.pending.clear();
      if (!this.stopped) this.scheduleReconnect(event.reason || `closed (${event.code})`);
    };
    socket.onerror = () => {}; // onclose follows and reconnects
  }

  scheduleReconnect(reason) {
    const base = Math.min(this.maxDelayMs, this.minDelayMs * 2 ** this.attempt);
    const delay = Math.round(base / 2 + Math.random() * (base / 2));
    this.attempt++;
    this.onStatus("reconnecting", { reason, delayMs: delay, attempt: this.attempt });
    this.timer = setTimeout(() => this.connect(), delay);
  }

  close() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.socket) this.socket.close(1000, "bye");
  }

  /** Drop the connection as if the network had (for the reconnect path and its tests). */
  drop() {
    if (this.socket) this.socket.close(4000, "dropped by the page");
  }

  request(method, params) {
    if (!this.open) return Promise.reject(new Error("not connected"));
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.socket.send(JSON.stringify(params === undefined ? { method, id } : { method, params, id }));
    });
  }

  subscribe(streams) {
    return streams.length ? this.request("SUBSCRIBE", streams) : Promise.resolve(null);
  }

  unsubscribe(streams) {
    return streams.length && this.open ? this.request("UNSUBSCRIBE", streams) : Promise.resolve(null);
  }
}
