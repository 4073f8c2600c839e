-- The REST book's best `limit` levels per side as one consistent read.
-- KEYS: 1 header (string), 2 bid prices (zset), 3 ask prices (zset), 4 levels (hash)
-- ARGV: 1 limit (1..5000)
-- Returns {header JSON or nil, bid levels best first, ask levels best first}, each level
-- the "<price> <quantity>" string the settle script stored.
local limit = tonumber(ARGV[1])
if not limit or limit < 1 or limit > 5000 or limit % 1 ~= 0 then return redis.error_reply("invalid limit") end
local header = redis.call("GET", KEYS[1])
local bids = redis.call("ZREVRANGE", KEYS[2], 0, limit - 1)
local asks = redis.call("ZRANGE", KEYS[3], 0, limit - 1)
local bid_levels = #bids > 0 and redis.call("HMGET", KEYS[4], unpack(bids)) or {}
local ask_levels = #asks > 0 and redis.call("HMGET", KEYS[4], unpack(asks)) or {}
return {header, bid_levels, ask_levels}
