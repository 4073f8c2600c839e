-- Hand-over: queue an order locked by enqueue_order.lua (R1) on its market's command
-- stream, at most once, in the market's slot (docs/decisions/0013).
-- KEYS: 1 the market's command stream, 2 the order's hand-over marker (keys.handed_key)
-- ARGV: 1 how long the marker lives in seconds, then the stream entry as field/value pairs
--       (the R1 outbox entry's fields, without the market's)
-- Returns {"ok", streamId} | {"dup", streamId} (handed over before: nothing written)
--       | {"invalid", argname} | {"corrupt", key, field}.
if #KEYS ~= 2 or #ARGV < 3 or #ARGV % 2 ~= 1 then return {"invalid", "layout"} end
if not dec_is_positive(ARGV[1]) or #ARGV[1] > 9 then return {"invalid", "marker TTL"} end
local first = redis.call("GET", KEYS[2])
if first then return {"dup", first} end
if not key_type_is(KEYS[1], "stream") then return {"corrupt", KEYS[1], ""} end
local sid = redis.call("XADD", KEYS[1], "*", unpack(ARGV, 2))
redis.call("SET", KEYS[2], sid, "EX", ARGV[1])
return {"ok", sid}
