// The trading page: wires the REST client, the gateway stream, the order book, the chart
// and the order form to the DOM. Plain ES modules, no build step (docs/web.md).
import { Api, ApiError } from "./api.js";
import { OrderBook } from "./book.js";
import { CandleChart } from "./chart.js";
import * as D from "./decimal.js";
import { validateOrder } from "./validate.js";
import { StreamClient, gatewayUrl } from "./ws.js";

const INTERVALS = ["1m", "5m", "15m", "1h", "4h", "1d"];
const BOOK_ROWS = 12;
const MAX_TRADES = 50;
const MAX_FILLS = 100;
const OPEN_STATUSES = new Set(["new", "partially_filled"]);
const PRIVATE_STREAMS = ["user.orders", "user.fills", "user.balances"];

const $ = (id) => document.getElementById(id);

const state = {
  markets: [],
  market: null, // the selected /markets entry
  interval: "1m",
  book: new OrderBook(),
  bookGen: 0,
  trades: [],
  ticker: null,
  userKey: null,
  authed: false, // the socket is authenticated
  balances: new Map(),
  openOrders: new Map(),
  fills: new Map(),
  fillsHistory: null, // null = unknown, true = REST /fills answered, false = unavailable
};

const api = new Api("");
let ws = null;
let chart = null;

// --- small DOM helpers ------------------------------------------------------------------------
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
  return node;
}

function fill(tbody, rows, emptyText, columns) {
  tbody.replaceChildren(...(rows.length ? rows : [el("tr", { class: "empty" }, el("td", { colspan: columns }, emptyText))]));
}

const renders = new Map();
function schedule(name, fn) {
  if (renders.has(name)) return;
  const run = () => { renders.delete(name); fn(); };
  renders.set(name, true);
  if (document.hidden) setTimeout(run, 250);
  else requestAnimationFrame(run);
}

function time(ms) {
  return ms ? new Date(Number(ms)).toLocaleTimeString() : "";
}

function notice(text) {
  const n = $("notice");
  n.textContent = text || "";
  n.hidden = !text;
}

const tag = (symbol) => symbol.replace("/", "_");
const marketStreams = (m, interval) => [`depth@${m.symbol}`, `trades@${m.symbol}`, `ticker@${m.symbol}`, `kline_${interval}@${m.symbol}`];

// --- errors in words --------------------------------------------------------------------------
const FIELD_LABELS = {
  price: "Price", quantity: "Quantity", quoteQuantity: "Total", timeInForce: "Time in force",
  postOnly: "Post only", market: "Market", side: "Side", kind: "Side", type: "Type", orderId: "Order",
};
const CODE_WORDS = {
  INSUFFICIENT_FUNDS: "Not enough funds",
  OFF_TICK: "Price not on the price grid",
  OFF_LOT: "Quantity not on the lot grid",
  QUANTITY_TOO_SMALL: "Quantity too small",
  QUANTITY_TOO_LARGE: "Quantity too large",
  NOTIONAL_TOO_SMALL: "Order value too small",
  POST_ONLY_WOULD_TAKE: "The post-only order would have traded at once, so it was not placed",
  NO_LIQUIDITY: "Nothing on the book to trade against",
  MARKET_NOT_OPEN: "The market does not accept this order now",
  MARKET_HALTED: "The market is halted",
  ENGINE_UNAVAILABLE: "The matching engine is not available; try again shortly",
  RATE_LIMITED: "Too many requests; slow down a little",
  UNAUTHORIZED: "Not signed in, or the API key is unknown",
  BAD_SIGNATURE: "The signature was refused: check the API secret",
  STALE_TIMESTAMP: "The request time is too far from the server's clock",
  REPLAYED_REQUEST: "This request was already sent",
  ORDER_NOT_FOUND: "No such order",
  ORDER_NOT_OPEN: "The order is no longer open",
  NETWORK: "The exchange cannot be reached",
  INTERNAL: "The exchange had an internal error",
};

export function describeError(err) {
  if (!(err instanceof ApiError)) return err && err.message ? err.message : String(err);
  const lead = CODE_WORDS[err.code];
  const field = err.field && FIELD_LABELS[err.field] ? ` (${FIELD_LABELS[err.field]})` : "";
  const message = err.message ? err.message.charAt(0).toUpperCase() + err.message.slice(1) : "";
  return lead ? `${lead}${field}: ${message}.`.replace(/\.\.$/, ".") : `${message}${field}.`;
}

// --- connection status ------------------------------------------------------------------------
function onStatus(status, info) {
  const c = $("conn");
  c.dataset.state = status;
  if (status === "open") {
    c.dataset.connects = String(info.connects);
    c.textContent = "Live";
  } else if (status === "reconnecting") {
    state.authed = false;
    c.textContent = `Disconnected (${info.reason}); reconnecting in ${(info.delayMs / 1000).toFixed(1)} s`;
    setBookStatus("Waiting for the connection…", "syncing");
  } else {
    c.textContent = "Connecting…";
  }
}

// --- the order book ---------------------------------------------------------------------------
function setBookStatus(text, bookState) {
  $("book-status").textContent = text;
  if (bookState) $("book-panel").dataset.state = bookState;
}

function bookRows(rows, side, maxTotal) {
  return rows.map(([p, q, total]) => {
    const width = maxTotal > 0 ? Math.min(100, (Number(total) / maxTotal) * 100) : 0;
    return el("tr", {
      dataset: { price: p }, style: `--depth: ${width.toFixed(1)}%`, title: "Click to use this price",
      onclick: () => { $("price").value = p; $("price").focus(); },
    }, el("td", { class: `price ${side}` }, p), el("td", {}, q), el("td", {}, total));
  });
}

function renderBook() {
  const book = state.book;
  const panel = $("book-panel");
  const asks = book.ready || book.lastU !== null ? book.rows("asks", BOOK_ROWS) : [];
  const bids = book.ready || book.lastU !== null ? book.rows("bids", BOOK_ROWS) : [];
  const maxTotal = Math.max(Number(asks.length ? asks[asks.length - 1][2] : 0), Number(bids.length ? bids[bids.length - 1][2] : 0));
  $("asks").tBodies[0].replaceChildren(...bookRows(asks, "ask", maxTotal).reverse());
  $("bids").tBodies[0].replaceChildren(...bookRows(bids, "bid", maxTotal));
  if (asks.length && bids.length) {
    const spread = D.sub(asks[0][0], bids[0][0]);
    $("spread").textContent = `Spread ${spread}`;
  } else {
    $("spread").textContent = asks.length || bids.length ? "One-sided book" : "Empty book";
  }
  panel.dataset.lastUpdateId = String(book.lastU ?? "");
  panel.dataset.resyncs = String(book.stats.resyncs);
  panel.dataset.checksumsOk = String(book.stats.checksumOk);
  if (book.ready) {
    const how = book.source === "ws" ? "live" : "snapshot";
    setBookStatus(`${how === "live" ? "Live" : "REST snapshot"} · update ${book.lastU} · ${book.stats.checksumOk} checksums verified${book.stats.resyncs ? ` · ${book.stats.resyncs} rebuilds` : ""}`,
      how === "live" ? "live" : "snapshot");
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Rebuild the book from a fresh REST snapshot plus buffered updates; if the snapshot keeps
 *  lagging the stream, re-subscribe so the gateway sends its own snapshot. */
async function rebuildBook(reason) {
  const gen = ++state.bookGen;
  const market = state.market;
  if (!state.book.syncing) state.book.startSync();
  setBookStatus(`Rebuilding the book (${reason})…`, "syncing");
  schedule("book", renderBook);
  for (let attempt = 0; attempt < 4; attempt++) {
    let snap;
    try {
      snap = (await api.depth(tag(market.symbol), 200)).body;
    } catch (err) {
      setBookStatus(`Cannot load the book: ${describeError(err)}`, "syncing");
      await sleep(500 * (attempt + 1));
      continue;
    }
    if (gen !== state.bookGen || market !== state.market || !state.book.syncing) return;
    const result = state.book.loadRest(snap);
    if (result === "ok") {
      schedule("book", renderBook);
      return;
    }
    await sleep(200 * (attempt + 1));
    if (gen !== state.bookGen || market !== state.market || !state.book.syncing) return;
  }
  if (ws.open) {
    const stream = `depth@${market.symbol}`;
    await ws.unsubscribe([stream]).catch(() => {});
    await ws.subscribe([stream]).catch(() => {});
  }
}

function onDepth(msg) {
  const result = state.book.apply(msg);
  if (result === "resync") {
    console.warn("order book:", state.book.problem);
    rebuildBook(state.book.problem);
  }
  schedule("book", renderBook);
}

// --- trades and ticker ------------------------------------------------------------------------
function addTrades(list, newestFirst) {
  const known = new Set(state.trades.map((t) => t.tradeId));
  const fresh = list.filter((t) => !known.has(t.tradeId));
  const ordered = newestFirst ? fresh : [...fresh].reverse();
  state.trades = [...ordered, ...state.trades]
    .sort((a, b) => Number(b.tradeId) - Number(a.tradeId)).slice(0, MAX_TRADES);
  schedule("trades", renderTrades);
}

function renderTrades() {
  const rows = state.trades.map((t) => el("tr", { dataset: { tradeId: t.tradeId } },
    el("td", { class: `price ${t.takerSide === "buy" ? "bid" : "ask"}` }, t.price),
    el("td", {}, t.quantity), el("td", {}, time(t.ts))));
  fill($("trades").tBodies[0], rows, "No trades yet.", 3);
}

function renderTicker() {
  const t = state.ticker || {};
  const m = state.market;
  $("ticker-last").textContent = t.last ?? "–";
  const change = $("ticker-change");
  change.textContent = t.changePercent !== undefined && t.changePercent !== null ? `${t.changePercent}%` : "–";
  change.className = String(t.changePercent || "").startsWith("-") ? "down" : "up";
  $("ticker-high").textContent = t.high ?? "–";
  $("ticker-low").textContent = t.low ?? "–";
  $("ticker-volume").textContent = t.volume !== undefined ? `${t.volume} ${m ? m.baseAsset : ""}` : "–";
  $("ticker-count").textContent = t.count !== undefined ? String(t.count) : "–";
}

// --- chart ----------------------------------------------------------------------------------
async function loadKlines() {
  const market = state.market;
  const interval = state.interval;
  const note = $("chart-note");
  note.textContent = "Loading candles…";
  try {
    const { body } = await api.klines(tag(market.symbol), interval, 500);
    if (market !== state.market || interval !== state.interval) return;
    if (Array.isArray(body) && body.length) {
      chart.setHistory(body);
      note.textContent = `${interval} candles: history from the exchange, live updates over the stream.`;
    } else {
      note.textContent = `No ${interval} candle history yet; live candles appear as trades happen.`;
    }
  } catch (err) {
    if (market !== state.market || interval !== state.interval) return;
    note.textContent = `Candle history is unavailable (${describeError(err)}); showing live candles only.`;
  }
}

function renderIntervals() {
  const box = $("intervals");
  box.querySelectorAll("input, label").forEach((n) => n.remove());
  for (const iv of INTERVALS) {
    const id = `interval-${iv}`;
    box.append(
      el("input", { type: "radio", name: "interval", id, value: iv, checked: iv === state.interval,
        onchange: () => switchInterval(iv) }),
      el("label", { for: id }, iv),
    );
  }
}

async function switchInterval(iv) {
  if (iv === state.interval) return;
  const old = `kline_${state.interval}@${state.market.symbol}`;
  state.interval = iv;
  chart.clear();
  if (ws.open) {
    await ws.unsubscribe([old]).catch(() => {});
    await ws.subscribe([`kline_${iv}@${state.market.symbol}`]).catch((err) => notice(`Cannot follow ${iv} candles: ${err.message}`));
  }
  loadKlines();
}

// --- private data ---------------------------------------------------------------------------
function renderBalances() {
  const rows = [...state.balances.values()].sort((a, b) => a.asset.localeCompare(b.asset)).map((b) =>
    el("tr", { dataset: { asset: b.asset } }, el("th", { scope: "row" }, b.asset),
      el("td", { class: "available" }, b.available), el("td", { class: "locked" }, b.locked)));
  fill($("balances").tBodies[0], rows, state.userKey ? "No balances." : "Sign in to see your balances.", 3);
}

function renderOpenOrders() {
  const orders = [...state.openOrders.values()].sort((a, b) => Number(b.orderId) - Number(a.orderId));
  const rows = orders.map((o) => {
    const what = `${o.side} ${o.quantity ?? o.quoteQuantity ?? ""} ${o.market}${o.price ? ` at ${o.price}` : ""}`;
    return el("tr", { dataset: { orderId: o.orderId, status: o.status } },
      el("td", {}, o.market), el("td", { class: o.side === "buy" ? "bid" : "ask" }, o.side),
      el("td", {}, `${o.type}${o.postOnly ? " post-only" : ""}`), el("td", {}, o.price ?? "market"),
      el("td", {}, o.quantity ?? `${o.quoteQuantity} total`), el("td", {}, o.executedQty ?? "0"),
      el("td", {}, o.status.replace("_", " ")), el("td", {}, time(o.createdAt)),
      el("td", {}, el("button", { type: "button", class: "cancel", "aria-label": `Cancel order ${o.orderId}: ${what}`,
        onclick: (e) => cancelOrder(o.orderId, e.currentTarget) }, "Cancel")));
  });
  fill($("open-orders").tBodies[0], rows, state.userKey ? "No open orders." : "Sign in to see your orders.", 9);
}

function fillKey(f) {
  return `${f.market || ""}:${f.tradeId}:${f.orderId}`;
}

function addFills(list) {
  for (const f of list) state.fills.set(fillKey(f), f);
  if (state.fills.size > MAX_FILLS) {
    const keep = [...state.fills.values()].sort((a, b) => Number(b.ts) - Number(a.ts)).slice(0, MAX_FILLS);
    state.fills = new Map(keep.map((f) => [fillKey(f), f]));
  }
  schedule("fills", renderFills);
}

function renderFills() {
  const fills = [...state.fills.values()].sort((a, b) => Number(b.ts) - Number(a.ts) || Number(b.tradeId) - Number(a.tradeId));
  const rows = fills.map((f) => el("tr", { dataset: { tradeId: f.tradeId, orderId: f.orderId } },
    el("td", {}, f.market || ""), el("td", { class: f.side === "buy" ? "bid" : "ask" }, f.side),
    el("td", {}, f.price), el("td", {}, f.quantity), el("td", {}, `${f.fee} ${f.feeAsset}`),
    el("td", {}, f.liquidity), el("td", {}, time(f.ts))));
  fill($("fills").tBodies[0], rows, state.userKey ? "No fills yet." : "Sign in to see your fills.", 7);
}

function upsertOrder(o) {
  if (OPEN_STATUSES.has(o.status)) state.openOrders.set(o.orderId, o);
  else state.openOrders.delete(o.orderId);
  schedule("orders", renderOpenOrders);
}

async function refreshPrivate({ fills = false } = {}) {
  if (!api.signedIn) return;
  const key = state.userKey;
  const tasks = [
    api.balances().then(({ body }) => {
      if (key !== state.userKey) return;
      state.balances = new Map(body.map((b) => [b.asset, b]));
      schedule("balances", renderBalances);
    }),
    api.openOrders().then(({ body }) => {
      if (key !== state.userKey) return;
      state.openOrders = new Map(body.map((o) => [o.orderId, o]));
      schedule("orders", renderOpenOrders);
    }),
  ];
  if (fills) {
    tasks.push(api.fills(undefined, MAX_FILLS).then(({ body }) => {
      if (key !== state.userKey) return;
      state.fillsHistory = true;
      addFills(body);
      $("fills-note").textContent = "";
    }, (err) => {
      state.fillsHistory = false;
      $("fills-note").textContent = `Fill history is unavailable (${describeError(err)}); fills of this session appear as they happen.`;
    }));
  }
  const results = await Promise.allSettled(tasks);
  const failed = results.find((r) => r.status === "rejected");
  if (failed) notice(`Could not refresh your account: ${describeError(failed.reason)}`);
}

let balancesTimer = null;
function refreshBalancesSoon() {
  if (balancesTimer || !api.signedIn) return;
  balancesTimer = setTimeout(() => {
    balancesTimer = null;
    const key = state.userKey;
    api.balances().then(({ body }) => {
      if (key !== state.userKey) return;
      state.balances = new Map(body.map((b) => [b.asset, b]));
      schedule("balances", renderBalances);
    }, () => {});
  }, 250);
}

async function authSocket() {
  if (!api.signedIn || !ws.open || state.authed) return;
  try {
    await ws.request("AUTH", await api.wsAuthParams());
    state.authed = true;
    await ws.subscribe(PRIVATE_STREAMS);
  } catch (err) {
    notice(`Live account updates are off: ${err.message || err.code}`);
  }
}

// --- sign in / out ----------------------------------------------------------------------------
async function signIn(event) {
  event.preventDefault();
  const key = $("api-key").value.trim();
  const secretInput = $("api-secret");
  const secret = secretInput.value.trim();
  $("auth-error").textContent = "";
  if (!key || !secret) {
    $("auth-error").textContent = "Enter both the API key and the API secret.";
    return;
  }
  $("signin-button").disabled = true;
  try {
    await api.signIn(key, secret);
    await api.balances(); // proves the key and secret before showing anything
  } catch (err) {
    api.signOut();
    $("auth-error").textContent = `Sign-in failed. ${describeError(err)}`;
    $("signin-button").disabled = false;
    return;
  }
  secretInput.value = ""; // the signer holds the key now (a non-extractable CryptoKey with WebCrypto)
  state.userKey = key;
  $("signin-button").disabled = false;
  $("signin-form").hidden = true;
  $("signed-in").hidden = false;
  $("whoami").textContent = `Signed in with API key ${key.slice(0, 6)}…`;
  updateSubmit();
  await refreshPrivate({ fills: true });
  renderFills();
  await authSocket();
}

function signOut() {
  api.signOut();
  state.userKey = null;
  state.balances.clear();
  state.openOrders.clear();
  state.fills.clear();
  $("signin-form").hidden = false;
  $("signed-in").hidden = true;
  $("api-key").value = "";
  $("fills-note").textContent = "";
  renderBalances();
  renderOpenOrders();
  renderFills();
  updateSubmit();
  if (state.authed) {
    state.authed = false;
    ws.drop(); // a socket stays authenticated: start a fresh, anonymous one
  }
}

// --- orders -------------------------------------------------------------------------------------
function readForm() {
  const f = $("order-form");
  return {
    side: f.elements.side.value,
    type: $("order-type").value,
    price: $("price").value,
    quantity: $("quantity").value,
    quoteQuantity: $("quote-quantity").value,
    amountIn: f.elements.amountIn.value,
    timeInForce: $("tif").value,
    postOnly: $("post-only").checked,
  };
}

const FIELD_INPUTS = { price: "price", quantity: "quantity", quoteQuantity: "quote-quantity", timeInForce: "tif", postOnly: "post-only", type: "order-type" };

function showOrderErrors(errors) {
  const box = $("order-error");
  for (const id of Object.values(FIELD_INPUTS)) $(id).removeAttribute("aria-invalid");
  if (!errors.length) {
    box.replaceChildren();
    return;
  }
  box.replaceChildren(el("ul", {}, ...errors.map((e) => el("li", { dataset: { field: e.field || "" } }, e.message))));
  let first = null;
  for (const e of errors) {
    const input = FIELD_INPUTS[e.field] && $(FIELD_INPUTS[e.field]);
    if (input) {
      input.setAttribute("aria-invalid", "true");
      first = first || input;
    }
  }
  if (first) first.focus();
}

async function submitOrder(event) {
  event.preventDefault();
  $("order-result").textContent = "";
  const market = state.market;
  if (!api.signedIn) {
    showOrderErrors([{ field: "", message: "Sign in with an API key to place orders." }]);
    return;
  }
  const { errors, body } = validateOrder(readForm(), market);
  showOrderErrors(errors);
  if (errors.length) return;
  const button = $("submit-order");
  button.disabled = true;
  try {
    const { status, body: reply } = await api.placeOrder({ ...body, market: tag(market.symbol) });
    if (status === 202) {
      $("order-result").textContent = `Order ${reply.orderId} queued; the engine has not answered yet.`;
    } else if (reply.duplicate) {
      $("order-result").textContent = `Order ${reply.order.orderId} was already placed.`;
    } else {
      const o = reply.order;
      const executed = o.executedQty && !D.isZero(o.executedQty) ? ` (${o.executedQty} ${market.baseAsset} executed)` : "";
      $("order-result").textContent = `${o.side === "buy" ? "Buy" : "Sell"} order ${o.orderId}: ${o.status.replace("_", " ")}${executed}.`;
      upsertOrder(o);
      addFills((reply.fills || []).map((f) => ({ market: o.market, ...f })));
    }
  } catch (err) {
    const fieldErrors = [{ field: err.field, message: describeError(err) }];
    showOrderErrors(fieldErrors);
  } finally {
    button.disabled = false;
  }
  await refreshPrivate();
  setTimeout(() => refreshPrivate(), 1000); // settlement may land just after the reply
}

async function cancelOrder(orderId, button) {
  const msg = $("orders-message");
  msg.textContent = "";
  if (button) button.disabled = true;
  try {
    const { status } = await api.cancelOrder(orderId);
    msg.textContent = status === 202 ? `Cancel of order ${orderId} requested.` : `Order ${orderId} cancelled.`;
    if (status !== 202) {
      state.openOrders.delete(orderId);
      schedule("orders", renderOpenOrders);
    }
  } catch (err) {
    msg.textContent = `Could not cancel order ${orderId}. ${describeError(err)}`;
    if (button) button.disabled = false;
  }
  await refreshPrivate();
}

function updateForm() {
  const type = $("order-type").value;
  const side = $("order-form").elements.side.value;
  const isMarket = type === "market";
  const byQuote = isMarket && side === "buy" && $("order-form").elements.amountIn.value === "quote";
  $("price-row").hidden = isMarket;
  $("amount-in-row").hidden = !(isMarket && side === "buy");
  $("quantity-row").hidden = byQuote;
  $("quote-row").hidden = !byQuote;
  $("post-only-row").hidden = isMarket;
  const tif = $("tif");
  tif.querySelector('option[value="GTC"]').disabled = isMarket;
  if (isMarket && tif.value === "GTC") tif.value = "IOC";
  if (isMarket) $("post-only").checked = false;
  updateSubmit();
}

function updateSubmit() {
  const button = $("submit-order");
  const side = $("order-form").elements.side.value;
  const m = state.market;
  button.className = `submit ${side}`;
  button.disabled = !api.signedIn || !m;
  button.textContent = !api.signedIn ? "Sign in to trade" : `${side === "buy" ? "Buy" : "Sell"} ${m ? m.baseAsset : ""}`;
}

function renderRules() {
  const m = state.market;
  document.querySelectorAll("[data-unit=base]").forEach((n) => { n.textContent = `(${m.baseAsset})`; });
  document.querySelectorAll("[data-unit=quote]").forEach((n) => { n.textContent = `(${m.quoteAsset})`; });
  $("rules").textContent = `Price step ${m.tickSize} ${m.quoteAsset}; quantity step ${m.lotSize} ${m.baseAsset}, `
    + `from ${m.minQuantity} to ${m.maxQuantity}; order value at least ${m.minNotional} ${m.quoteAsset}. `
    + `Fees: maker ${m.makerFeeBps / 100}%, taker ${m.takerFeeBps / 100}%.`;
  const badge = $("market-state");
  badge.textContent = m.state === "open" ? "" : m.state;
  badge.hidden = m.state === "open";
}

// --- market selection and the stream --------------------------------------------------------
async function loadMarketData() {
  const market = state.market;
  const sym = tag(market.symbol);
  api.trades(sym, MAX_TRADES).then(({ body }) => {
    if (market === state.market) addTrades(body, true);
  }, (err) => notice(`Could not load trades: ${describeError(err)}`));
  api.ticker(sym).then(({ body }) => {
    if (market !== state.market) return;
    state.ticker = body;
    schedule("ticker", renderTicker);
  }, () => {});
  loadKlines();
}

async function selectMarket(symbol) {
  const market = state.markets.find((m) => m.symbol === symbol);
  if (!market) return;
  const old = state.market;
  if (old && ws.open) await ws.unsubscribe(marketStreams(old, state.interval)).catch(() => {});
  state.market = market;
  state.trades = [];
  state.ticker = null;
  state.book.startSync();
  history.replaceState(null, "", `?${new URLSearchParams({ ...Object.fromEntries(new URLSearchParams(location.search)), market: sym(market) })}`);
  chart.setMarket(market);
  renderRules();
  renderTicker();
  renderTrades();
  renderBook();
  updateSubmit();
  loadMarketData();
  rebuildBook("market selected");
  if (ws.open) await ws.subscribe(marketStreams(market, state.interval)).catch((err) => notice(`Cannot follow ${market.symbol}: ${err.message}`));
}

function sym(market) {
  return tag(market.symbol);
}

async function onOpen(connects) {
  state.authed = false;
  notice("");
  if (!state.market) return;
  state.book.startSync();
  const subscribed = ws.subscribe(marketStreams(state.market, state.interval));
  rebuildBook(connects > 1 ? "reconnected" : "connected");
  await subscribed.catch((err) => notice(`Cannot follow ${state.market.symbol}: ${err.message}`));
  if (connects > 1) { // catch up with what happened while the socket was down
    loadMarketData();
    refreshPrivate();
  }
  await authSocket();
}

function onData(stream, data) {
  const m = state.market;
  if (stream === "user.orders") {
    upsertOrder(data);
    // Funds are locked by the API when an order is accepted, and the engine only hints
    // balance changes it makes itself: re-read balances when a new order shows up.
    if (data.status === "new") refreshBalancesSoon();
    return;
  }
  if (stream === "user.fills") return addFills([data]);
  if (stream === "user.balances") {
    state.balances.set(data.asset, data);
    return schedule("balances", renderBalances);
  }
  if (!m) return;
  if (stream === `depth@${m.symbol}`) return onDepth(data);
  if (stream === `trades@${m.symbol}`) return addTrades(Array.isArray(data) ? data : [data], false);
  if (stream === `ticker@${m.symbol}`) {
    state.ticker = data;
    return schedule("ticker", renderTicker);
  }
  if (stream === `kline_${state.interval}@${m.symbol}`) return chart.update(data);
}

async function start() {
  chart = new CandleChart($("chart"));
  renderIntervals();
  $("signin-form").addEventListener("submit", signIn);
  $("signout-button").addEventListener("click", signOut);
  $("order-form").addEventListener("submit", submitOrder);
  $("order-form").addEventListener("change", updateForm);
  $("market").addEventListener("change", (e) => selectMarket(e.target.value));
  updateForm();

  let markets;
  for (let attempt = 0; ; attempt++) {
    try {
      markets = (await api.markets()).body;
      break;
    } catch (err) {
      notice(`Cannot load the markets: ${describeError(err)} Retrying…`);
      await sleep(Math.min(10_000, 1000 * 2 ** attempt));
    }
  }
  notice("");
  state.markets = markets;
  const select = $("market");
  select.replaceChildren(...markets.map((m) => el("option", { value: m.symbol }, m.symbol)));
  select.disabled = !markets.length;
  if (!markets.length) {
    notice("No markets are listed yet.");
    return;
  }
  const wanted = new URLSearchParams(location.search).get("market");
  const initial = markets.find((m) => wanted && tag(m.symbol) === tag(wanted.toUpperCase())) || markets[0];
  select.value = initial.symbol;

  ws = new StreamClient(gatewayUrl(), { onOpen, onData, onStatus });
  await selectMarket(initial.symbol);
  ws.connect();
  window.cryptex = { state, api, ws, describeError }; // for the console and the browser tests
}

start();
