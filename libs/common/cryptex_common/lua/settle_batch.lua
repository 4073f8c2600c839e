-- Apply one engine batch exactly once, only for the engine that owns the market; all
-- writes or none.
-- KEYS: 1 epoch, 2 lease, 3 settled sequence, 4 events stream, 5 private subscribers zset,
--       then one balance hash per change (n), then per order (m): order hash, open-order set
--       optionally followed by the market-data keys: the depth book's header (string), bid
--       prices (zset), ask prices (zset), levels (hash), recent trades (list)
-- ARGV: 1 epoch, 2 first seq, 3 last seq, 4 event batch JSON ("" for none),
--       5 order TTL seconds once terminal, 6 now ms, 7 n,
--       then per change: field, delta (canonical integer, may be negative),
--       then m, then per order: order id, record JSON, terminal ("1"/"0"),
--       then k, then k user ids to look up in the subscribers zset;
--       with the market-data keys, then: depth header JSON ("" = leave the key), replace
--       the book first ("1"/"0"), d, d changed levels (side "b"/"a", price ticks, the
--       level's "<price> <quantity>" or "" when it is gone), recent trades to keep, r, r
--       trade JSONs (LPUSHed in order), p, p (channel, message)
--       pairs, u, then per user: user id, channel, c, c messages (published only when
--       that user's subscriber score >= now ms)
-- After every write, and only on "ok", the market data is written and published (one round
-- trip per batch; a refused batch publishes nothing).
-- Returns {"ok", user ids among the k whose subscriber score >= now ms...}
--       | {"duplicate", settled} | {"gap", settled} | {"fenced", epoch}
--       | {"negative", key, field} | {"invalid", argname} | {"corrupt", key, field};
--       every reply but "ok" wrote nothing. Every check runs before the first write.

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

-- the market-data part starting at ARGV[at]: {depth_at, d, at, r, p, user blocks {at of
-- id, c}} when it has the documented shape up to exactly the last ARGV, else nil
local function settle_market_layout(depth_at)
  local d = settle_depth_layout(depth_at)
  if not d then return nil end
  local at = depth_at + 2 + 3 * d
  local keep, r = ARGV[at + 1], settle_count(ARGV[at + 2] or "")
  if not r or not dec_is_positive(keep or "") or #keep > 7 then return nil end
  local p = settle_count(ARGV[at + 3 + r] or "")
  if not p then return nil end
  local pos = at + 4 + r + 2 * p
  local u = settle_count(ARGV[pos] or "")
  if not u then return nil end
  local users = {}
  for j = 1, u do
    local c = settle_count(ARGV[pos + 3] or "")
    if not c then return nil end
    users[j] = {pos + 1, c}
    pos = pos + 3 + c
  end
  if #ARGV ~= pos then return nil end
  return {depth_at = depth_at, d = d, at = at, r = r, p = p, users = users}
end

-- the counts n, m, k (and the market-data layout or false) when ARGV and KEYS have the
-- documented shape, else nil
local function settle_layout()
  local n = settle_count(ARGV[7])
  if not n then return nil end
  local m = settle_count(ARGV[8 + 2 * n] or "")
  if not m then return nil end
  local k = settle_count(ARGV[9 + 2 * n + 3 * m] or "")
  if not k then return nil end
  local base = 9 + 2 * n + 3 * m + k
  if #KEYS == 5 + n + 2 * m and #ARGV == base then return n, m, k, false end
  if #KEYS ~= 10 + n + 2 * m then return nil end
  local market = settle_market_layout(base + 1)
  if not market then return nil end
  return n, m, k, market
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
local function settle_market_data(market, book, trades_key, now_ms)
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
  for _, user in ipairs(market.users) do
    local id_at, c = user[1], user[2]
    local score = redis.call("ZSCORE", KEYS[5], ARGV[id_at])
    if score and tonumber(score) >= now_ms then
      for j = 1, c do redis.call("PUBLISH", ARGV[id_at + 1], ARGV[id_at + 2 + j]) end
    end
  end
end

-- per change j: {key, field, new value}; duplicates of one field are summed in order
local function settle_balances(n)
  local rows, row_of = {}, {}
  for j = 1, n do
    local key, field, delta = KEYS[5 + j], ARGV[6 + 2 * j], ARGV[7 + 2 * j]
    if not dec_is_canonical(delta) then return nil, {"invalid", "delta " .. j} end
    local slot = key .. "\0" .. field
    local row = row_of[slot]
    if not row then
      local current = redis.call("HGET", key, field) or "0"
      if not dec_is_natural(current) then return nil, {"corrupt", key, field} end
      row = {key, field, current}
      row_of[slot] = row
      rows[#rows + 1] = row
    end
    row[3] = dec_add(row[3], delta)
  end
  for _, row in ipairs(rows) do
    if dec_is_negative(row[3]) then return nil, {"negative", row[1], row[2]} end
  end
  return rows
end

-- nil when every order write can be applied, else the refusal
local function settle_orders_refusal(n, m)
  local base, at = 5 + n, 8 + 2 * n
  for j = 1, m do
    local terminal = ARGV[at + 3 * j]
    if terminal ~= "0" and terminal ~= "1" then return {"invalid", "terminal " .. j} end
    if not key_type_is(KEYS[base + 2 * j - 1], "hash") then return {"corrupt", KEYS[base + 2 * j - 1], ""} end
    if not key_type_is(KEYS[base + 2 * j], "zset") then return {"corrupt", KEYS[base + 2 * j], ""} end
  end
  return nil
end

-- the users among the k whose subscription expires at or after now ms
local function settle_subscribed(n, m, k)
  local out, at, now_ms = {"ok"}, 9 + 2 * n + 3 * m, tonumber(ARGV[6])
  for j = 1, k do
    local score = redis.call("ZSCORE", KEYS[5], ARGV[at + j])
    if score and tonumber(score) >= now_ms then out[#out + 1] = ARGV[at + j] end
  end
  return out
end

local n, m, k, market = settle_layout()
if not n then return {"invalid", "layout"} end
if not dec_is_positive(ARGV[2]) then return {"invalid", "first seq"} end
if not dec_is_positive(ARGV[3]) or dec_cmp(ARGV[3], ARGV[2]) < 0 then return {"invalid", "last seq"} end
if not dec_is_positive(ARGV[5]) or #ARGV[5] > 12 then return {"invalid", "order TTL"} end
if not dec_is_natural(ARGV[6]) or #ARGV[6] > 15 then return {"invalid", "now ms"} end

local epoch = redis.call("GET", KEYS[1])
if epoch ~= ARGV[1] or redis.call("GET", KEYS[2]) ~= ARGV[1] then
  return {"fenced", epoch or ""}
end
local settled = redis.call("GET", KEYS[3]) or "0"
if not dec_is_natural(settled) then return {"corrupt", KEYS[3], ""} end
if dec_cmp(ARGV[3], settled) <= 0 then return {"duplicate", settled} end
if ARGV[2] ~= dec_add(settled, "1") then return {"gap", settled} end

local rows, refusal = settle_balances(n)
if not rows then return refusal end
refusal = settle_orders_refusal(n, m)
if refusal then return refusal end
if ARGV[4] ~= "" and not key_type_is(KEYS[4], "stream") then return {"corrupt", KEYS[4], ""} end
local md_at = 5 + n + 2 * m
local book, trades_key = {KEYS[md_at + 1], KEYS[md_at + 2], KEYS[md_at + 3], KEYS[md_at + 4]}, KEYS[md_at + 5]
if market then
  for j, want in ipairs({"string", "zset", "zset", "hash"}) do
    if not key_type_is(book[j], want) then return {"corrupt", book[j], ""} end
  end
  if not key_type_is(trades_key, "list") then return {"corrupt", trades_key, ""} end
end
local reply = settle_subscribed(n, m, k)

for _, row in ipairs(rows) do
  redis.call("HSET", row[1], row[2], row[3])
end
local base, at = 5 + n, 8 + 2 * n
for j = 1, m do
  local order_key = KEYS[base + 2 * j - 1]
  redis.call("HSET", order_key, "r", ARGV[at + 3 * j - 1])
  if ARGV[at + 3 * j] == "1" then
    redis.call("ZREM", KEYS[base + 2 * j], ARGV[at + 3 * j - 2])
    redis.call("EXPIRE", order_key, ARGV[5])
  end
end
if ARGV[4] ~= "" then
  redis.call("XADD", KEYS[4], "*", "b", ARGV[4])
end
redis.call("SET", KEYS[3], ARGV[3])
if market then settle_market_data(market, book, trades_key, tonumber(ARGV[6])) end
return reply
