-- Deposit or withdraw, exactly once per txId.
-- KEYS: 1 tx key, 2 balance hash, 3 ledger totals
-- ARGV: 1 "deposit" | "withdraw", 2 available field, 3 amount (integer string, > 0),
--       4 totals field, 5 tx record JSON
-- Returns {"ok"} | {"dup", stored record} | {"insufficient"}
local stored = redis.call("GET", KEYS[1])
if stored then return {"dup", stored} end
if ARGV[1] == "withdraw" then
  local left = redis.call("HINCRBY", KEYS[2], ARGV[2], "-" .. ARGV[3])
  if left < 0 then
    redis.call("HINCRBY", KEYS[2], ARGV[2], ARGV[3])
    return {"insufficient"}
  end
else
  redis.call("HINCRBY", KEYS[2], ARGV[2], ARGV[3])
end
redis.call("HINCRBY", KEYS[3], ARGV[4], ARGV[3])
redis.call("SET", KEYS[1], ARGV[5])
return {"ok"}
