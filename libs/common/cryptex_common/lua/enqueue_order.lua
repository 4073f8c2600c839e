-- Validate funds, lock them and queue the order: one atomic step, all or nothing.
-- KEYS: 1 balance hash, 2 market command stream, 3 order id counter,
--       4 user's open-order set, 5 client-order-id key (used only when ARGV[5] == "1"),
--       6 the request signature's replay-guard key (used only when ARGV[18] ~= "0")
-- ARGV: 1 available field, 2 locked field, 3 units to lock (canonical integer > 0),
--       4 command JSON, 5 has client order id ("1"/"0"), 6 client order id TTL seconds,
--       7 market symbol, 8 user id, 9 order record JSON without its opening "{" and
--       without orderId/createdMs/updatedMs (spliced in here), 10 the user's private
--       channel, 11 the balance hint published there, 12 lock asset,
--       13-17 stream entry field names for: order id, user id, lock asset, locked units, command,
--       18 how long the replay guard lives in ms ("0": no guard),
--       19 the order key's prefix (keys.order_key(""): the key is the prefix and the new id)
-- Returns {"ok", orderId, streamId} | {"replayed"} | {"dup", orderId} | {"insufficient"}
--       | {"invalid", argname} | {"corrupt", key, field}; every reply but "ok" wrote nothing.
-- "replayed": KEYS[6] exists, the signed request was already used; on "ok" the guard is
-- set (PX ARGV[18]), so a signed order costs one round trip (docs/decisions/0006).
-- Every check runs before the first write. The one key not in KEYS is the new order's: its
-- id comes from the counter read here (docs/decisions/0009-ledger-exact-arithmetic.md;
-- Redis Cluster mode allocates ids per user bucket instead, decision 0013).
if #KEYS ~= 6 or #ARGV ~= 19 then return {"invalid", "layout"} end
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
local last_id = redis.call("GET", KEYS[3]) or "0"
-- ids stay below 2**53: they are also sorted-set scores (doubles)
if not dec_is_natural(last_id) or #last_id > 15 then return {"corrupt", KEYS[3], ""} end
local id = dec_add(last_id, "1")
local order_key = ARGV[19] .. id
if redis.call("EXISTS", order_key) == 1 then return {"corrupt", order_key, ""} end
if not key_type_is(KEYS[2], "stream") then return {"corrupt", KEYS[2], ""} end
if not key_type_is(KEYS[4], "zset") then return {"corrupt", KEYS[4], ""} end

redis.call("HSET", KEYS[1], ARGV[1], left, ARGV[2], dec_add(locked, ARGV[3]))
redis.call("SET", KEYS[3], id)
local sid = redis.call("XADD", KEYS[2], "*", ARGV[13], id, ARGV[14], ARGV[8], ARGV[15], ARGV[12],
  ARGV[16], ARGV[3], ARGV[17], ARGV[4])
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
