// The local order book, kept in step with the gateway's depth@M stream (docs/websocket.md):
// a depthSnapshot replaces the book; each depthUpdate must continue the previous one
// (U == last u + 1) and, once applied, match the checksum `c` (CRC32 of the 10 best
// levels per side). Right after a REST /depth snapshot (lastUpdateId = L) updates with
// u <= L are dropped and the first applied one must have U <= L + 1 <= u.
// A failed check makes `apply` return "resync" and the book starts buffering updates: the
// caller then rebuilds it from a fresh REST snapshot (`loadRest`, fetched again while it is
// "stale") or re-subscribes for the gateway's snapshot. Prices and sizes stay the exact
// strings received; sorting uses BigInt keys, cumulative sizes exact decimal sums.
import * as D from "./decimal.js";

export const CHECKSUM_DEPTH = 10;

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

/** zlib's CRC32 of the UTF-8 bytes of `text`, unsigned. */
export function crc32(text) {
  let crc = 0xffffffff;
  for (const byte of new TextEncoder().encode(text)) {
    crc = CRC_TABLE[(crc ^ byte) & 0xff] ^ (crc >>> 8);
  }
  return (crc ^ 0xffffffff) >>> 0;
}

export function checksumString(bids, asks) {
  const side = (levels) => levels.slice(0, CHECKSUM_DEPTH).map(([p, q]) => `${p}:${q}`).join(",");
  return `b:${side(bids)}|a:${side(asks)}`;
}

class Side {
  constructor(descending) {
    this.descending = descending;
    this.levels = new Map(); // price string -> [price, qty, sortKey]
    this.sorted = null;
  }

  clear() {
    this.levels.clear();
    this.sorted = null;
  }

  set(price, qty) {
    const key = D.sortKey(price);
    const id = key === null ? price : key.toString();
    if (D.isZero(qty)) {
      this.levels.delete(id);
    } else {
      this.levels.set(id, [price, qty, key === null ? 0n : key]);
    }
    this.sorted = null;
  }

  /** [[price, qty], ...] best first. */
  top(n = Infinity) {
    if (!this.sorted) {
      const dir = this.descending ? -1 : 1;
      this.sorted = [...this.levels.values()].sort((a, b) => (a[2] < b[2] ? -dir : a[2] > b[2] ? dir : 0));
    }
    return this.sorted.slice(0, n).map(([p, q]) => [p, q]);
  }
}

export class OrderBook {
  constructor() {
    this.bids = new Side(true);
    this.asks = new Side(false);
    this.lastU = null; // last update id the book covers; null = no book yet
    this.syncing = false; // waiting for a snapshot; updates are buffered meanwhile
    this.buffer = [];
    this.bridging = false; // the book is a REST snapshot no update has continued yet
    this.source = null; // "rest" | "ws": where the current book came from
    this.problem = null;
    this.stats = { snapshots: 0, restSnapshots: 0, updates: 0, dropped: 0, resyncs: 0, checksumOk: 0 };
  }

  get ready() {
    return this.lastU !== null && !this.syncing;
  }

  clearLevels() {
    this.bids.clear();
    this.asks.clear();
    this.lastU = null;
    this.bridging = false;
    this.source = null;
  }

  /** Forget the book and buffer updates until a snapshot (REST or WS) arrives. */
  startSync() {
    this.clearLevels();
    this.syncing = true;
    this.buffer = [];
  }

  load(bids, asks, lastUpdateId) {
    this.bids.clear();
    this.asks.clear();
    for (const [p, q] of bids) this.bids.set(p, q);
    for (const [p, q] of asks) this.asks.set(p, q);
    this.lastU = Number(lastUpdateId);
  }

  /**
   * A REST /depth body (Binance rule). Returns "ok", "ignored" (the stream is already
   * followed) or "stale" (the snapshot is older than the buffered updates reach back: fetch
   * again; the buffer is kept), or "resync" (a buffered update failed its checks).
   */
  loadRest(snapshot) {
    if (!this.syncing) return "ignored";
    const L = Number(snapshot.lastUpdateId || 0);
    const pending = this.buffer.filter((m) => Number(m.u) > L);
    if (pending.length && Number(pending[0].U) > L + 1) return "stale";
    this.load(snapshot.bids || [], snapshot.asks || [], L);
    this.syncing = false;
    this.buffer = [];
    this.bridging = true;
    this.source = "rest";
    this.stats.restSnapshots++;
    for (const m of pending) {
      const result = this.apply(m);
      if (result === "resync") return result;
    }
    return "ok";
  }

  checksum() {
    return crc32(checksumString(this.bids.top(CHECKSUM_DEPTH), this.asks.top(CHECKSUM_DEPTH)));
  }

  /** A depth@M data message. Returns "ok", "ignored", "buffered" or "resync" (see `problem`). */
  apply(msg) {
    if (msg.e === "depthSnapshot") {
      this.load(msg.bids || [], msg.asks || [], msg.lastUpdateId);
      this.syncing = false;
      this.buffer = [];
      this.bridging = false;
      this.source = "ws";
      this.lastMsg = null;
      this.stats.snapshots++;
      return this.verify(msg.c);
    }
    if (msg.e !== "depthUpdate") return "ignored";
    this.lastMsg = msg;
    if (this.syncing) {
      this.buffer.push(msg);
      if (this.buffer.length > 2000) this.buffer.shift();
      return "buffered";
    }
    if (this.lastU === null) {
      this.stats.dropped++;
      return "ignored";
    }
    const U = Number(msg.U);
    const u = Number(msg.u);
    if (this.bridging) {
      if (u <= this.lastU) {
        this.stats.dropped++;
        return "ignored";
      }
      if (!(U <= this.lastU + 1 && this.lastU + 1 <= u)) {
        return this.fail(`gap after the REST snapshot: have ${this.lastU}, got ${U}..${u}`, msg);
      }
    } else if (U !== this.lastU + 1) {
      return this.fail(`gap: expected update ${this.lastU + 1}, got ${U}..${u}`, msg);
    }
    for (const [p, q] of msg.bids || []) this.bids.set(p, q);
    for (const [p, q] of msg.asks || []) this.asks.set(p, q);
    this.lastU = u;
    this.bridging = false;
    this.source = "ws";
    this.stats.updates++;
    return this.verify(msg.c);
  }

  verify(c) {
    if (c === undefined || c === null) return "ok";
    const mine = this.checksum();
    if (mine !== Number(c) >>> 0) {
      return this.fail(`checksum mismatch at update ${this.lastU}: expected ${c}, computed ${mine}`, this.lastMsg);
    }
    this.stats.checksumOk++;
    return "ok";
  }

  fail(problem, msg = null) {
    this.problem = problem;
    this.stats.resyncs++;
    this.startSync();
    if (msg) this.buffer.push(msg); // a valid update; only the book before it was wrong
    return "resync";
  }

  /** Rows for display: best first, each [price, qty, cumulative qty] (exact strings). */
  rows(side, n) {
    const levels = (side === "bids" ? this.bids : this.asks).top(n);
    let total = "0";
    return levels.map(([p, q]) => {
      total = D.add(total, q);
      return [p, q, total];
    });
  }
}
