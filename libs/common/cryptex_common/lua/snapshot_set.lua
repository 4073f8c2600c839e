-- Store an engine snapshot, only for the engine that owns the market (same fence as settle).
-- KEYS: 1 epoch, 2 lease, 3 snapshot key
-- ARGV: 1 epoch, 2 snapshot bytes
-- Returns 1 (stored) or 0 (fenced: another engine owns the market; nothing written).
if redis.call("GET", KEYS[1]) ~= ARGV[1] or redis.call("GET", KEYS[2]) ~= ARGV[1] then
  return 0
end
redis.call("SET", KEYS[3], ARGV[2])
return 1
