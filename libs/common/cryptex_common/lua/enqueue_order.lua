-- Validate funds, lock them and queue the order: one atomic step.
-- KEYS: 1 balance hash, 2 market command stream, 3 order id counter,
--       4 user's open-order set, 5 client-order-id key (checked only when ARGV[5] == "1")
-- ARGV: 1 available field, 2 locked field, 3 amount to lock (integer string, > 0),
--       4 command JSON, 5 has client order id, 6 client order id TTL seconds,
--       7 market symbol, 8 user id, 9 order record JSON without its opening "{" and
--       without orderId/createdMs/updatedMs (spliced in here), 10 the user's private
--       channel, 11 the balance hint published there (wsgateway then pushes the new balances)
-- Returns {"ok", orderId, streamId} | {"dup", orderId} | {"insufficient"}
-- Amounts stay strings and go through HINCRBY, so no Lua double ever holds an amount.
if ARGV[5] == "1" then
  local existing = redis.call("GET", KEYS[5])
  if existing then return {"dup", existing} end
end
local left = redis.call("HINCRBY", KEYS[1], ARGV[1], "-" .. ARGV[3])
if left < 0 then
  redis.call("HINCRBY", KEYS[1], ARGV[1], ARGV[3])
  return {"insufficient"}
end
redis.call("HINCRBY", KEYS[1], ARGV[2], ARGV[3])
local id = redis.call("INCR", KEYS[3])
local sid = redis.call("XADD", KEYS[2], "*", "id", id, "c", ARGV[4])
local ts = string.match(sid, "^(%d+)")
local record = '{"orderId":' .. id .. ',"createdMs":' .. ts .. ',"updatedMs":' .. ts .. ',' .. ARGV[9]
redis.call("HSET", "order:" .. id, "r", record, "m", ARGV[7], "u", ARGV[8])
redis.call("ZADD", KEYS[4], id, id)
if ARGV[5] == "1" then
  redis.call("SET", KEYS[5], id, "EX", ARGV[6])
end
redis.call("PUBLISH", ARGV[10], ARGV[11])
return {"ok", tostring(id), sid}
