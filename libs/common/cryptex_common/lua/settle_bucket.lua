-- Settle step B, in one ledger bucket's slot: apply a settled batch's balances and order
-- records of this bucket's users exactly once per (market, batch); all writes or none
-- (docs/decisions/0013). Run after settle_market.lua journaled the batch, by its engine
-- or by whoever replays the journal (cryptex_engine.reconcile).
-- KEYS: 1 applied hash (market tag -> last applied seq), 2 the bucket's private subscribers
--       zset, 3 the bucket's outbox stream, then one balance hash per change (n), then per
--       order (m): order hash, open-order set
-- ARGV: 1 market tag, 2 the batch's last seq, 3 order TTL seconds once terminal,
--       4 now ms, 5 n, then per change: field, delta (canonical integer, may be negative),
--       then m, then per order: order id, record JSON, terminal ("1"/"0"),
--       then k, then k user ids to look up in the subscribers zset,
--       then u, then per user: user id, channel, c, c messages (published only when that
--       user's subscriber score >= now ms), then x, then x outbox entry ids to delete (the
--       outbox entries of the orders whose place commands this batch settled)
-- Returns {"ok", user ids among the k whose subscriber score >= now ms...}
--       | {"applied", seq} (this batch or a later one was applied here: nothing written)
--       | {"negative", key, field} | {"invalid", argname} | {"corrupt", key, field};
--       every reply but "ok" wrote nothing. Every check runs before the first write.

local function count(s)
  if not dec_is_natural(s) or #s > 7 then return nil end
  return tonumber(s)
end

-- n, m, k and the user blocks {at of id, c} when ARGV and KEYS have the documented
-- shape, else nil
local function bucket_layout()
  local n = count(ARGV[5])
  if not n then return nil end
  local m = count(ARGV[6 + 2 * n] or "")
  if not m then return nil end
  local k = count(ARGV[7 + 2 * n + 3 * m] or "")
  if not k then return nil end
  local pos = 8 + 2 * n + 3 * m + k
  local u = count(ARGV[pos] or "")
  if not u then return nil end
  local users = {}
  for j = 1, u do
    local c = count(ARGV[pos + 3] or "")
    if not c then return nil end
    users[j] = {pos + 1, c}
    pos = pos + 3 + c
  end
  local x = count(ARGV[pos + 1] or "")
  if not x or #ARGV ~= pos + 1 + x or #KEYS ~= 3 + n + 2 * m then return nil end
  for j = 1, x do
    if not string.match(ARGV[pos + 1 + j], "^%d+%-%d+$") then return nil end
  end
  return n, m, k, users, pos + 1
end

-- per touched field: {key, field, new value}; duplicates of one field are summed in order
local function bucket_balances(n)
  local rows, row_of = {}, {}
  for j = 1, n do
    local key, field, delta = KEYS[3 + j], ARGV[4 + 2 * j], ARGV[5 + 2 * j]
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
local function bucket_orders_refusal(n, m)
  local base, at = 3 + n, 6 + 2 * n
  for j = 1, m do
    local terminal = ARGV[at + 3 * j]
    if terminal ~= "0" and terminal ~= "1" then return {"invalid", "terminal " .. j} end
    if not key_type_is(KEYS[base + 2 * j - 1], "hash") then return {"corrupt", KEYS[base + 2 * j - 1], ""} end
    if not key_type_is(KEYS[base + 2 * j], "zset") then return {"corrupt", KEYS[base + 2 * j], ""} end
  end
  return nil
end

local function subscribed(user_id, now_ms)
  local score = redis.call("ZSCORE", KEYS[2], user_id)
  return score and tonumber(score) >= now_ms
end

local n, m, k, users, acks_at = bucket_layout()
if not n then return {"invalid", "layout"} end
if not dec_is_positive(ARGV[2]) or #ARGV[2] > 15 then return {"invalid", "last seq"} end
if not dec_is_positive(ARGV[3]) or #ARGV[3] > 12 then return {"invalid", "order TTL"} end
if not dec_is_natural(ARGV[4]) or #ARGV[4] > 15 then return {"invalid", "now ms"} end
if not key_type_is(KEYS[1], "hash") then return {"corrupt", KEYS[1], ""} end
if not key_type_is(KEYS[3], "stream") then return {"corrupt", KEYS[3], ""} end
local applied = redis.call("HGET", KEYS[1], ARGV[1]) or "0"
if not dec_is_natural(applied) then return {"corrupt", KEYS[1], ARGV[1]} end
if dec_cmp(ARGV[2], applied) <= 0 then return {"applied", applied} end

local rows, refusal = bucket_balances(n)
if not rows then return refusal end
refusal = bucket_orders_refusal(n, m)
if refusal then return refusal end
local now_ms = tonumber(ARGV[4])
local reply, at = {"ok"}, 7 + 2 * n + 3 * m
for j = 1, k do
  if subscribed(ARGV[at + j], now_ms) then reply[#reply + 1] = ARGV[at + j] end
end

for _, row in ipairs(rows) do
  redis.call("HSET", row[1], row[2], row[3])
end
local base, oat = 3 + n, 6 + 2 * n
for j = 1, m do
  local order_key = KEYS[base + 2 * j - 1]
  redis.call("HSET", order_key, "r", ARGV[oat + 3 * j - 1])
  if ARGV[oat + 3 * j] == "1" then
    redis.call("ZREM", KEYS[base + 2 * j], ARGV[oat + 3 * j - 2])
    redis.call("EXPIRE", order_key, ARGV[3])
  end
end
redis.call("HSET", KEYS[1], ARGV[1], ARGV[2])
local x = tonumber(ARGV[acks_at])
if x > 0 then redis.call("XDEL", KEYS[3], unpack(ARGV, acks_at + 1, acks_at + x)) end
for _, user in ipairs(users) do
  local id_at, c = user[1], user[2]
  if subscribed(ARGV[id_at], now_ms) then
    for j = 1, c do redis.call("PUBLISH", ARGV[id_at + 1], ARGV[id_at + 2 + j]) end
  end
end
return reply
