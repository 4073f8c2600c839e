-- Deposit or withdraw, exactly once per txId; all writes or none.
-- KEYS: 1 tx key, 2 balance hash, 3 the bucket's totals (all three in the user's bucket slot)
-- ARGV: 1 "deposit" | "withdraw", 2 available field, 3 units (canonical integer > 0),
--       4 totals field, 5 tx record JSON; optionally 6 the user's channel and 7 the message
--       published there once the move is written (gateways turn it into balance events)
-- Returns {"ok"} | {"dup", stored record} | {"insufficient"} | {"invalid", argname}
--       | {"corrupt", key, field}; every reply but "ok" wrote nothing.
-- Amounts are decimal strings (lib_decimal): neither a balance nor an all-time total has a
-- size limit, and every check runs before the first write.
if #KEYS ~= 3 or (#ARGV ~= 5 and #ARGV ~= 7) then return {"invalid", "layout"} end
if ARGV[1] ~= "deposit" and ARGV[1] ~= "withdraw" then return {"invalid", "kind"} end
if not dec_is_positive(ARGV[3]) then return {"invalid", "units"} end
local stored = redis.call("GET", KEYS[1])
if stored then return {"dup", stored} end
local available = redis.call("HGET", KEYS[2], ARGV[2]) or "0"
if not dec_is_natural(available) then return {"corrupt", KEYS[2], ARGV[2]} end
local total = redis.call("HGET", KEYS[3], ARGV[4]) or "0"
if not dec_is_natural(total) then return {"corrupt", KEYS[3], ARGV[4]} end
local left
if ARGV[1] == "withdraw" then
  left = dec_sub(available, ARGV[3])
  if dec_is_negative(left) then return {"insufficient"} end
else
  left = dec_add(available, ARGV[3])
end

redis.call("HSET", KEYS[2], ARGV[2], left)
redis.call("HSET", KEYS[3], ARGV[4], dec_add(total, ARGV[3]))
redis.call("SET", KEYS[1], ARGV[5])
if #ARGV == 7 then redis.call("PUBLISH", ARGV[6], ARGV[7]) end
return {"ok"}
