// Exact decimal strings, with BigInt underneath. No float ever touches an amount here:
// a value is an integer `int` scaled by 10^scale ("12.50" -> {int: 1250n, scale: 2}).

const DECIMAL = /^(\d+)(?:\.(\d+))?$/;

/** "12.50" -> {int: 1250n, scale: 2}; null when the text is not a plain non-negative decimal. */
export function parse(text) {
  if (typeof text !== "string") return null;
  const m = DECIMAL.exec(text.trim());
  if (!m) return null;
  const frac = m[2] || "";
  return { int: BigInt(m[1] + frac), scale: frac.length };
}

export function isDecimal(text) {
  return parse(text) !== null;
}

/** Digits after the point, trailing zeros not counted ("1.2500" -> 2). */
export function decimals(text) {
  const d = parse(text);
  if (!d) return null;
  const frac = (text.trim().split(".")[1] || "").replace(/0+$/, "");
  return frac.length;
}

function rescale(d, scale) {
  return d.int * 10n ** BigInt(scale - d.scale);
}

/** The value as an integer at `scale`, or null when that would drop digits. */
export function toScaled(text, scale) {
  const d = parse(text);
  if (!d) return null;
  if (d.scale <= scale) return rescale(d, scale);
  const cut = 10n ** BigInt(d.scale - scale);
  return d.int % cut === 0n ? d.int / cut : null;
}

/** Integer at `scale` -> decimal string with exactly `scale` places. */
export function format(int, scale) {
  const negative = int < 0n;
  let digits = (negative ? -int : int).toString();
  if (scale > 0) {
    digits = digits.padStart(scale + 1, "0");
    digits = `${digits.slice(0, -scale)}.${digits.slice(-scale)}`;
  }
  return negative ? `-${digits}` : digits;
}

function pair(a, b) {
  const da = parse(a);
  const db = parse(b);
  if (!da || !db) throw new TypeError(`not decimals: ${a}, ${b}`);
  const scale = Math.max(da.scale, db.scale);
  return [rescale(da, scale), rescale(db, scale), scale];
}

/** -1, 0 or 1. */
export function cmp(a, b) {
  const [x, y] = pair(a, b);
  return x < y ? -1 : x > y ? 1 : 0;
}

export function isZero(text) {
  const d = parse(text);
  return d !== null && d.int === 0n;
}

export function add(a, b) {
  const [x, y, scale] = pair(a, b);
  return format(x + y, scale);
}

export function sub(a, b) {
  const [x, y, scale] = pair(a, b);
  return format(x - y, scale);
}

export function mul(a, b) {
  const da = parse(a);
  const db = parse(b);
  if (!da || !db) throw new TypeError(`not decimals: ${a}, ${b}`);
  return format(da.int * db.int, da.scale + db.scale);
}

/** Is `value` a whole number of `step`s? (step > 0) */
export function isMultiple(value, step) {
  const [x, y] = pair(value, step);
  if (y === 0n) throw new RangeError("step is zero");
  return x % y === 0n;
}

/** A key that sorts like the value, for values with at most 18 decimals. */
export function sortKey(text) {
  return toScaled(text, 18);
}

/** Drop trailing zeros after the point ("1.2500" -> "1.25", "3.000" -> "3"). */
export function trim(text) {
  if (!text.includes(".")) return text;
  return text.replace(/0+$/, "").replace(/\.$/, "");
}
