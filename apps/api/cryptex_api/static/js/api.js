// REST client for /api/v1: public GETs, and private requests signed in the browser
// (X-CX-KEY, X-CX-TS, X-CX-SIGN = hex HMAC-SHA256(secret, ts + METHOD + path?query + body)).
import { Signer } from "./sign.js";

export const PREFIX = "/api/v1";

/** An API error in words: {status, code, message, field} from the server's JSON body. */
export class ApiError extends Error {
  constructor(status, code, message, field) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field || null;
  }
}

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) {
    if (v !== undefined && v !== null && v !== "") q.append(k, String(v));
  }
  const s = q.toString();
  return s ? `?${s}` : "";
}

async function parseResponse(resp) {
  const text = await resp.text();
  let body = null;
  if (text) {
    try {
      body = JSON.parse(text);
    } catch {
      body = text;
    }
  }
  if (!resp.ok) {
    const b = body && typeof body === "object" ? body : {};
    throw new ApiError(resp.status, b.code || `HTTP_${resp.status}`,
      b.message || (typeof body === "string" && body) || resp.statusText || "request failed", b.field);
  }
  return { status: resp.status, body };
}

export class Api {
  constructor(base = "") {
    this.base = base;
    this.apiKey = null;
    this.signer = null;
    this.clockOffsetMs = 0; // server time - local time
    this.lastTs = 0;
  }

  get signedIn() {
    return this.signer !== null;
  }

  async get(path, params) {
    let resp;
    try {
      resp = await fetch(`${this.base}${PREFIX}${path}${query(params)}`, { headers: { Accept: "application/json" } });
    } catch (err) {
      throw new ApiError(0, "NETWORK", `the API cannot be reached (${err.message})`);
    }
    return parseResponse(resp);
  }

  /** Measures the offset to the server clock, so signatures stay inside its ±5 s window. */
  async syncClock() {
    const before = Date.now();
    const { body } = await this.get("/time");
    const after = Date.now();
    this.clockOffsetMs = Math.round(body.serverTime - (before + after) / 2);
    return this.clockOffsetMs;
  }

  /** A fresh millisecond timestamp, strictly increasing, so no two requests sign alike. */
  timestamp() {
    const ts = Math.max(Date.now() + this.clockOffsetMs, this.lastTs + 1);
    this.lastTs = ts;
    return ts;
  }

  async signIn(apiKey, apiSecret, options = {}) {
    this.signer = await Signer.create(apiSecret, options);
    this.apiKey = apiKey;
    await this.syncClock().catch(() => {});
  }

  signOut() {
    this.signer = null;
    this.apiKey = null;
  }

  async signed(method, path, params, body) {
    if (!this.signer) throw new ApiError(401, "UNAUTHORIZED", "sign in first");
    const pathQs = `${PREFIX}${path}${query(params)}`;
    const data = body === undefined ? "" : JSON.stringify(body);
    const ts = String(this.timestamp());
    const headers = {
      Accept: "application/json",
      "X-CX-KEY": this.apiKey,
      "X-CX-TS": ts,
      "X-CX-SIGN": await this.signer.sign(ts, method, pathQs, data),
    };
    if (data) headers["Content-Type"] = "application/json";
    let resp;
    try {
      resp = await fetch(`${this.base}${pathQs}`, { method, headers, body: data || undefined });
    } catch (err) {
      throw new ApiError(0, "NETWORK", `the API cannot be reached (${err.message})`);
    }
    return parseResponse(resp);
  }

  /** The WebSocket AUTH params: signature of ts + "GET" + "/ws". */
  async wsAuthParams() {
    const ts = this.timestamp();
    return { apiKey: this.apiKey, timestamp: ts, signature: await this.signer.sign(String(ts), "GET", "/ws") };
  }

  // public
  markets() { return this.get("/markets"); }
  depth(market, limit = 200) { return this.get("/depth", { market, limit }); }
  trades(market, limit = 50) { return this.get("/trades", { market, limit }); }
  ticker(market) { return this.get("/ticker", { market }); }
  klines(market, interval, limit = 500) { return this.get("/klines", { market, interval, limit }); }

  // private
  placeOrder(order) { return this.signed("POST", "/order", undefined, order); }
  cancelOrder(orderId) { return this.signed("DELETE", "/order", { orderId }); }
  openOrders() { return this.signed("GET", "/orders/open"); }
  balances() { return this.signed("GET", "/balances"); }
  fills(market, limit = 50) { return this.signed("GET", "/fills", { market, limit }); }
}
