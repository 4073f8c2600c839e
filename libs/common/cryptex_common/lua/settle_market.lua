-- Settle step A, in the market's slot: record one engine batch exactly once, only for the
-- engine that owns the market; all writes or none (docs/decisions/0013).
-- KEYS: 1 epoch, 2 lease, 3 settled sequence, 4 events stream, 5 journal stream,
--       optionally followed by the market-data keys: the depth book's header (string), bid
--       prices (zset), ask prices (zset), levels (hash), recent trades (list)
-- ARGV: 1 epoch, 2 first seq, 3 last seq, 4 event batch JSON ("" for none),
--       5 a journal entry id to delete first ("" for none: the previous batch's, applied
--       in every bucket), 6 j, then j (bucket tag, that bucket's settle_bucket.lua call)
--       pairs journaled as entry `<last seq>-1`;
--       with the market-data keys, then: depth header JSON ("" = leave the key), replace
--       the book first ("1"/"0"), d, d changed levels (side "b"/"a", price ticks, the
--       level's "<price> <quantity>" or "" when it is gone), recent trades to keep, r, r
--       trade JSONs (LPUSHed in order), p, p (channel, message) pairs
-- After the batch's writes, and only on "ok", the market data is written and published.
-- Returns {"ok"} | {"duplicate", settled} | {"gap", settled} | {"fenced", epoch}
--       | {"invalid", argname} | {"corrupt", key, field}; every reply but "ok" wrote
--       nothing (but the delete of ARGV[5], which is idempotent). Every check runs first.
-- The batch's balances and orders are applied by settle_bucket.lua per bucket, after
-- this call answered "ok" (or "duplicate"); the journal keeps them until they are.

-- a count argument (at most 7 digits) as a number, else nil
local function settle_count(s)
  if not dec_is_natural(s) or #s > 7 then return nil end
  return tonumber(s)
end

-- the depth part starting at ARGV[at]: its d when every level is well formed, else nil
local function settle_depth_layout(at)
  if ARGV[at + 1] ~= "0" and ARGV[at + 1] ~= "1" then return nil end
  local d = settle_count(ARGV[at + 2] or "")
  if not d then return nil end
  for j = 1, d do
    local side, ticks, text = ARGV[at + 3 * j], ARGV[at + 3 * j + 1], ARGV[at + 3 * j + 2]
    if side ~= "b" and side ~= "a" then return nil end
    -- ticks are sorted-set scores (doubles): exact below 2**53
    if not dec_is_positive(ticks or "") or #ticks > 15 or text == nil then return nil end
  end
  return d
end

-- the market-data part starting at ARGV[at]: {depth_at, d, at, r, p} when it has the
-- documented shape up to exactly the last ARGV, else nil
local function settle_market_layout(depth_at)
  local d = settle_depth_layout(depth_at)
  if not d then return nil end
  local at = depth_at + 2 + 3 * d
  local keep, r = ARGV[at + 1], settle_count(ARGV[at + 2] or "")
  if not r or not dec_is_positive(keep or "") or #keep > 7 then return nil end
  local p = settle_count(ARGV[at + 3 + r] or "")
  if not p then return nil end
  if #ARGV ~= at + 3 + r + 2 * p then return nil end
  return {depth_at = depth_at, d = d, at = at, r = r, p = p}
end

-- the journal count j (and the market-data layout or false) when ARGV and KEYS have the
-- documented shape, else nil
local function settle_layout()
  local j = settle_count(ARGV[6])
  if not j then return nil end
  local base = 6 + 2 * j
  if #KEYS == 5 and #ARGV == base then return j, false end
  if #KEYS ~= 10 then return nil end
  local market = settle_market_layout(base + 1)
  if not market then return nil end
  return j, market
end

-- apply the changed depth levels (after every settle write): one sorted-set and one hash
-- write per changed level, so the cost follows the change, not the book
local function settle_depth(market, book)
  local at = market.depth_at
  if ARGV[at + 1] == "1" then redis.call("DEL", book[2], book[3], book[4]) end
  for j = 1, market.d do
    local prices, ticks, text = ARGV[at + 3 * j] == "b" and book[2] or book[3], ARGV[at + 3 * j + 1], ARGV[at + 3 * j + 2]
    if text == "" then
      redis.call("ZREM", prices, ticks)
      redis.call("HDEL", book[4], ticks)
    else
      redis.call("ZADD", prices, ticks, ticks)
      redis.call("HSET", book[4], ticks, text)
    end
  end
  if ARGV[at] ~= "" then redis.call("SET", book[1], ARGV[at]) end
end

-- write and publish the market data (after every settle write)
local function settle_market_data(market, book, trades_key)
  settle_depth(market, book)
  local at = market.at
  local r = market.r
  for from = 1, r, 500 do  -- unpack() has a stack limit: push in chunks, in order
    redis.call("LPUSH", trades_key, unpack(ARGV, at + 2 + from, at + 2 + math.min(r, from + 499)))
  end
  if r > 0 then redis.call("LTRIM", trades_key, 0, tonumber(ARGV[at + 1]) - 1) end
  local pos = at + 3 + r
  for j = 1, market.p do
    redis.call("PUBLISH", ARGV[pos + 2 * j - 1], ARGV[pos + 2 * j])
  end
end

local j, market = settle_layout()
if not j then return {"invalid", "layout"} end
if not dec_is_positive(ARGV[2]) then return {"invalid", "first seq"} end
if not dec_is_positive(ARGV[3]) or #ARGV[3] > 15 or dec_cmp(ARGV[3], ARGV[2]) < 0 then
  return {"invalid", "last seq"}
end
if ARGV[5] ~= "" and not string.match(ARGV[5], "^%d+%-%d+$") then return {"invalid", "journal ack"} end

local epoch = redis.call("GET", KEYS[1])
if epoch ~= ARGV[1] or redis.call("GET", KEYS[2]) ~= ARGV[1] then
  return {"fenced", epoch or ""}
end
if not key_type_is(KEYS[5], "stream") then return {"corrupt", KEYS[5], ""} end
if ARGV[5] ~= "" then redis.call("XDEL", KEYS[5], ARGV[5]) end
local settled = redis.call("GET", KEYS[3]) or "0"
if not dec_is_natural(settled) then return {"corrupt", KEYS[3], ""} end
if dec_cmp(ARGV[3], settled) <= 0 then return {"duplicate", settled} end
if ARGV[2] ~= dec_add(settled, "1") then return {"gap", settled} end

if ARGV[4] ~= "" and not key_type_is(KEYS[4], "stream") then return {"corrupt", KEYS[4], ""} end
local book, trades_key = {KEYS[6], KEYS[7], KEYS[8], KEYS[9]}, KEYS[10]
if market then
  for i, want in ipairs({"string", "zset", "zset", "hash"}) do
    if not key_type_is(book[i], want) then return {"corrupt", book[i], ""} end
  end
  if not key_type_is(trades_key, "list") then return {"corrupt", trades_key, ""} end
end

if j > 0 then
  redis.call("XADD", KEYS[5], ARGV[3] .. "-1", unpack(ARGV, 7, 6 + 2 * j))
end
if ARGV[4] ~= "" then
  redis.call("XADD", KEYS[4], "*", "b", ARGV[4])
end
redis.call("SET", KEYS[3], ARGV[3])
if market then settle_market_data(market, book, trades_key) end
return {"ok"}
