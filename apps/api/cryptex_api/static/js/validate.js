// Client-side order checks against the market's rules, mirroring the API's
// (apps/api/cryptex_api/orders.py) so most mistakes are explained before a request is sent.
// The API checks everything again; this only saves a round trip and says it in words.
import * as D from "./decimal.js";

function plain(text) {
  return (text ?? "").toString().trim();
}

function checkDecimal(errors, field, label, text) {
  if (text === "") {
    errors.push({ field, message: `${label} is required.` });
    return false;
  }
  if (!D.isDecimal(text)) {
    errors.push({ field, message: `${label} must be a plain decimal number such as 12.5 (no sign, exponent or separators).` });
    return false;
  }
  if (D.isZero(text)) {
    errors.push({ field, message: `${label} must be greater than zero.` });
    return false;
  }
  return true;
}

function checkQuantity(errors, market, qty) {
  if (!checkDecimal(errors, "quantity", "Quantity", qty)) return false;
  const base = market.baseAsset;
  if (!D.isMultiple(qty, market.lotSize)) {
    errors.push({ field: "quantity", message: `Quantity ${qty} is not a multiple of the lot size ${market.lotSize} ${base}.` });
    return false;
  }
  if (D.cmp(qty, market.minQuantity) < 0) {
    errors.push({ field: "quantity", message: `Quantity must be at least ${market.minQuantity} ${base}.` });
    return false;
  }
  if (D.cmp(qty, market.maxQuantity) > 0) {
    errors.push({ field: "quantity", message: `Quantity must be at most ${market.maxQuantity} ${base}.` });
    return false;
  }
  return true;
}

/**
 * form: {side, type, price, quantity, quoteQuantity, amountIn ("base"|"quote"),
 *        timeInForce, postOnly}
 * market: a /markets entry. Returns {errors: [{field, message}], body} where body is the
 * POST /order JSON (decimal strings) when there are no errors.
 */
export function validateOrder(form, market) {
  const errors = [];
  const side = form.side === "sell" ? "sell" : "buy";
  const type = form.type === "market" ? "market" : "limit";
  const tif = form.timeInForce || (type === "limit" ? "GTC" : "IOC");
  const postOnly = Boolean(form.postOnly);
  const body = { market: market.symbol, side, type };

  if (market.state === "halted" || market.state === "closed") {
    errors.push({ field: "market", message: `${market.symbol} is ${market.state}: no orders are accepted.` });
  } else if (market.state === "cancelOnly") {
    errors.push({ field: "market", message: `${market.symbol} accepts cancels only.` });
  } else if (market.state === "postOnly" && !(type === "limit" && postOnly)) {
    errors.push({ field: "postOnly", message: `${market.symbol} accepts post-only limit orders only.` });
  }

  if (type === "limit") {
    const price = plain(form.price);
    const qty = plain(form.quantity);
    let priceOk = checkDecimal(errors, "price", "Price", price);
    if (priceOk && !D.isMultiple(price, market.tickSize)) {
      errors.push({ field: "price", message: `Price ${price} is not on the price grid: it must be a multiple of the tick size ${market.tickSize} ${market.quoteAsset}.` });
      priceOk = false;
    }
    const qtyOk = checkQuantity(errors, market, qty);
    if (priceOk && qtyOk) {
      const notional = D.mul(price, qty);
      if (D.cmp(notional, market.minNotional || "0") < 0) {
        errors.push({ field: "quantity", message: `Order value ${D.trim(notional)} ${market.quoteAsset} is below the minimum of ${market.minNotional} ${market.quoteAsset} (price × quantity).` });
      }
    }
    if (!["GTC", "IOC", "FOK"].includes(tif)) {
      errors.push({ field: "timeInForce", message: "Time in force must be GTC, IOC or FOK." });
    }
    if (postOnly && tif !== "GTC") {
      errors.push({ field: "postOnly", message: "A post-only order must be good-till-cancelled (GTC)." });
    }
    Object.assign(body, { price, quantity: qty, timeInForce: tif });
    if (postOnly) body.postOnly = true;
  } else {
    if (!["IOC", "FOK"].includes(tif)) {
      errors.push({ field: "timeInForce", message: "A market order is IOC or FOK: it never rests on the book." });
    }
    if (postOnly) {
      errors.push({ field: "postOnly", message: "Post-only is for limit orders only." });
    }
    body.timeInForce = tif;
    if (side === "buy" && form.amountIn === "quote") {
      const quote = plain(form.quoteQuantity);
      if (checkDecimal(errors, "quoteQuantity", "Total", quote)) {
        if (D.toScaled(quote, market.quoteDecimals) === null) {
          errors.push({ field: "quoteQuantity", message: `Total has more than ${market.quoteDecimals} decimals of ${market.quoteAsset}.` });
        } else if (D.cmp(quote, market.minNotional || "0") < 0) {
          errors.push({ field: "quoteQuantity", message: `Total must be at least ${market.minNotional} ${market.quoteAsset}.` });
        }
      }
      body.quoteQuantity = quote;
    } else {
      const qty = plain(form.quantity);
      checkQuantity(errors, market, qty);
      body.quantity = qty;
    }
  }
  return { errors, body: errors.length ? null : body };
}
