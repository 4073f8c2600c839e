-- Engine ownership of a market: a fencing epoch plus a lease that holds that epoch.
-- KEYS: 1 epoch counter, 2 lease
-- ARGV: 1 "acquire" | "renew" | "release", 2 epoch (renew/release), 3 lease TTL ms
-- acquire -> new epoch (the lease was free) or 0; renew -> 1 if still ours else 0;
-- release -> 1 if it was ours. A malformed TTL is an error raised before any write.
if ARGV[1] ~= "release" and not string.find(ARGV[3] or "", "^[1-9]%d?%d?%d?%d?%d?%d?%d?%d?%d?%d?%d?$") then
  return redis.error_reply("lease TTL must be a positive integer of milliseconds")
end
if ARGV[1] == "acquire" then
  if redis.call("EXISTS", KEYS[2]) == 1 then return 0 end
  local epoch = redis.call("INCR", KEYS[1])
  redis.call("SET", KEYS[2], epoch, "PX", ARGV[3])
  return epoch
end
if redis.call("GET", KEYS[2]) ~= ARGV[2] or redis.call("GET", KEYS[1]) ~= ARGV[2] then
  return 0
end
if ARGV[1] == "renew" then
  redis.call("PEXPIRE", KEYS[2], ARGV[3])
else
  redis.call("DEL", KEYS[2])
end
return 1
