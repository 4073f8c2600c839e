-- Apply one engine batch exactly once, only for the engine that owns the market.
-- KEYS: 1 epoch, 2 lease, 3 settled sequence, 4 events stream
-- ARGV: 1 epoch, 2 first seq, 3 last seq, 4 event batch JSON ("" for none),
--       5 order TTL seconds once terminal, 6 n balance changes,
--       then per change: balance hash, field, delta (integer string, may be negative),
--       then n orders, then per order: order id, user id, record JSON, terminal ("1"/"0")
-- Returns {"ok"} | {"duplicate", settled} | {"gap", settled} | {"fenced", epoch}
--       | {"negative", key, field} (nothing written)
local epoch = redis.call("GET", KEYS[1])
if epoch ~= ARGV[1] or redis.call("GET", KEYS[2]) ~= ARGV[1] then
  return {"fenced", epoch or ""}
end
local settled = tonumber(redis.call("GET", KEYS[3]) or "0")
if tonumber(ARGV[3]) <= settled then return {"duplicate", tostring(settled)} end
if tonumber(ARGV[2]) ~= settled + 1 then return {"gap", tostring(settled)} end

-- non-negative integer strings compared exactly, without Lua numbers
local function ge(a, b)
  a = string.gsub(a, "^0+(%d)", "%1"); b = string.gsub(b, "^0+(%d)", "%1")
  if #a ~= #b then return #a > #b end
  return a >= b
end

local n = tonumber(ARGV[6])
local i = 7
for _ = 1, n do
  local delta = ARGV[i + 2]
  if string.sub(delta, 1, 1) == "-" then
    local current = redis.call("HGET", ARGV[i], ARGV[i + 1]) or "0"
    if string.sub(current, 1, 1) == "-" or not ge(current, string.sub(delta, 2)) then
      return {"negative", ARGV[i], ARGV[i + 1]}
    end
  end
  i = i + 3
end
i = 7
for _ = 1, n do
  redis.call("HINCRBY", ARGV[i], ARGV[i + 1], ARGV[i + 2])
  i = i + 3
end
local m = tonumber(ARGV[i])
i = i + 1
for _ = 1, m do
  local key = "order:" .. ARGV[i]
  redis.call("HSET", key, "r", ARGV[i + 2])
  if ARGV[i + 3] == "1" then
    redis.call("ZREM", "open:" .. ARGV[i + 1], ARGV[i])
    redis.call("EXPIRE", key, ARGV[5])
  end
  i = i + 4
end
if ARGV[4] ~= "" then
  redis.call("XADD", KEYS[4], "*", "b", ARGV[4])
end
redis.call("SET", KEYS[3], ARGV[3])
return {"ok"}
