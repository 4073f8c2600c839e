-- R1, pre-hold: validate funds, lock them, record the order and put it in the user's
-- bucket outbox: one atomic step in the bucket's slot, all or nothing. The hand-over to
-- the market (handover.lua) follows (docs/decisions/0013-redis-cluster-sharded-ledger.md).
-- KEYS: 1 balance hash, 2 the bucket's outbox stream, 3 the bucket's order id counter,
--       4 user's open-order set, 5 client-order-id key (used only when ARGV[5] == "1"),
--       6 the request signature's replay-guard key (used only when ARGV[18] ~= "0")
-- ARGV: 1 available field, 2 locked field, 3 units to lock (canonical integer > 0),
--       4 command JSON, 5 has client order id ("1"/"0"), 6 client order id TTL seconds,
--       7 market symbol, 8 user id, 9 order record JSON without its opening "{" and
--       without orderId/createdMs/updatedMs (spliced in here), 10 the user's private
--       channel, 11 the balance hint published there, 12 lock asset,
--       13-17 entry field names for: order id, user id, lock asset, locked units, command,
--       18 how long the replay guard lives in ms ("0": no guard),
--       19 the order key's prefix (keys.order_key_prefix: the key is the prefix and the new id),
--       20 the bucket number b, 21 the number of buckets B, 22 the entry field name of the market
-- Returns {"ok", orderId, outboxId} | {"replayed"} | {"dup", orderId} | {"insufficient"}
--       | {"invalid", argname} | {"corrupt", key, field}; every reply but "ok" wrote nothing.
-- Order ids: n * B + b with n the bucket's counter, unique exchange-wide and below 2**53.
-- "replayed": KEYS[6] exists, the signed request was already used; on "ok" the guard is
-- set (PX ARGV[18]). Every check runs before the first write. The one key not in KEYS is
-- the new order's, in the same slot (its prefix carries the bucket tag; decision 0009).
if #KEYS ~= 6 or #ARGV ~= 22 then return {"invalid", "layout"} end
if ARGV[19] == "" then return {"invalid", "order key prefix"} end
if not dec_is_positive(ARGV[3]) then return {"invalid", "lock units"} end
if ARGV[5] ~= "0" and ARGV[5] ~= "1" then return {"invalid", "has client order id"} end
local guard = ARGV[18] ~= "0"
if guard then
  if not dec_is_positive(ARGV[18]) or #ARGV[18] > 12 then return {"invalid", "replay guard ms"} end
  if redis.call("EXISTS", KEYS[6]) == 1 then return {"replayed"} end
end
if ARGV[5] == "1" then
  if not dec_is_positive(ARGV[6]) or #ARGV[6] > 12 then return {"invalid", "client order id TTL"} end
  local existing = redis.call("GET", KEYS[5])
  if existing then return {"dup", existing} end
end
local available = redis.call("HGET", KEYS[1], ARGV[1]) or "0"
if not dec_is_natural(available) then return {"corrupt", KEYS[1], ARGV[1]} end
local locked = redis.call("HGET", KEYS[1], ARGV[2]) or "0"
if not dec_is_natural(locked) then return {"corrupt", KEYS[1], ARGV[2]} end
local left = dec_sub(available, ARGV[3])
if dec_is_negative(left) then return {"insufficient"} end
if not dec_is_natural(ARGV[20]) or not dec_is_positive(ARGV[21]) or #ARGV[21] > 6
    or tonumber(ARGV[20]) >= tonumber(ARGV[21]) then return {"invalid", "bucket"} end
local last_n = redis.call("GET", KEYS[3]) or "0"
-- ids stay below 2**53: they are also sorted-set scores (doubles)
if not dec_is_natural(last_n) or #last_n > 12 then return {"corrupt", KEYS[3], ""} end
local n = tonumber(last_n) + 1
local id = string.format("%.0f", n * tonumber(ARGV[21]) + tonumber(ARGV[20]))
if n * tonumber(ARGV[21]) >= 2^53 then return {"corrupt", KEYS[3], ""} end
local order_key = ARGV[19] .. id
if redis.call("EXISTS", order_key) == 1 then return {"corrupt", order_key, ""} end
if not key_type_is(KEYS[2], "stream") then return {"corrupt", KEYS[2], ""} end
if not key_type_is(KEYS[4], "zset") then return {"corrupt", KEYS[4], ""} end

redis.call("HSET", KEYS[1], ARGV[1], left, ARGV[2], dec_add(locked, ARGV[3]))
redis.call("SET", KEYS[3], string.format("%.0f", n))
local sid = redis.call("XADD", KEYS[2], "*", ARGV[13], id, ARGV[14], ARGV[8], ARGV[15], ARGV[12],
  ARGV[16], ARGV[3], ARGV[17], ARGV[4], ARGV[22], ARGV[7])
local ts = string.match(sid, "^(%d+)")
local record = '{"orderId":' .. id .. ',"createdMs":' .. ts .. ',"updatedMs":' .. ts .. ',' .. ARGV[9]
redis.call("HSET", order_key, "r", record, "m", ARGV[7], "u", ARGV[8])
redis.call("ZADD", KEYS[4], id, id)
if ARGV[5] == "1" then
  redis.call("SET", KEYS[5], id, "EX", ARGV[6])
end
if guard then
  redis.call("SET", KEYS[6], "1", "PX", ARGV[18])
end
redis.call("PUBLISH", ARGV[10], ARGV[11])
return {"ok", id, sid}
