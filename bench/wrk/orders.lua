-- wrk script for bench/bench_stack.py: signed Cryptex order traffic, one user set per thread.
--
--   CX_USERS=users.txt CX_THREADS=8 CX_OUT=result.txt wrk -t8 -c8 -d8s -s bench/wrk/orders.lua http://127.0.0.1:8080
--
-- Every wrk thread (run with -t N -c N: one connection per thread) owns the users whose line
-- number is congruent to its index modulo CX_THREADS ("apiKey apiSecret" per line) and cycles
-- through them, one request each, so no key sees more than rate / users-per-thread requests
-- a second (the API limits each key). Per thread, one cycle is four signed requests:
--   1. maker: limit GTC at the mid price (sides alternate from cycle to cycle);
--   2. taker: the opposite side at the mid price, IOC, same quantity, another user: a trade;
--   3. rest:  a limit GTC 10..50 ticks away from mid on its own side (never crosses);
--   4. cancel: DELETE /api/v1/order?orderId= of this thread's oldest resting order once more
--      than CX_REST_DEPTH rest; until then another resting order.
-- CX_MARKETS ("sol/usdc,m1/usdc,...", else CX_MARKET, else sol/usdc) lists the markets:
-- cycle c of thread t trades on market (t + c) mod N, so each market gets 1/N of the cycles
-- at any thread count; a maker, its taker and the cycle's resting order share one market
-- (cancels go by orderId alone).
-- Signing is the API's rule: X-CX-SIGN = hex HMAC-SHA256(secret, ts .. METHOD .. path .. body),
-- with ts (ms) strictly increasing per user so no two requests share a signature.
-- HMAC-SHA256 is pure LuaJIT (`bit`); the key pads are hashed once per user, so a request
-- costs two or three compressions for the inner hash and one for the outer.
-- Every thread times its own requests by kind; done() writes them, the status counts and
-- wrk's summary to CX_OUT for the Python side. CX_HMAC_VECTORS=<file> (lines "keyhex msghex")
-- makes done() also write HMACs of those vectors to CX_OUT, for the self-check.

local bit = require("bit")
local ffi = require("ffi")
local band, bor, bxor, bnot = bit.band, bit.bor, bit.bxor, bit.bnot
local ror, rshift, lshift, tobit, tohex = bit.ror, bit.rshift, bit.lshift, bit.tobit, bit.tohex
local byte, char, rep, sub, fmt = string.byte, string.char, string.rep, string.sub, string.format
local floor, concat = math.floor, table.concat

ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } cx_timespec;
  int clock_gettime(int clk_id, cx_timespec *tp);
]]
local ts_buf = ffi.new("cx_timespec")
local function wall_ms()
  ffi.C.clock_gettime(0, ts_buf) -- CLOCK_REALTIME
  return tonumber(ts_buf.tv_sec) * 1000 + floor(tonumber(ts_buf.tv_nsec) / 1000000)
end
local function mono_us()
  ffi.C.clock_gettime(1, ts_buf) -- CLOCK_MONOTONIC
  return tonumber(ts_buf.tv_sec) * 1000000 + floor(tonumber(ts_buf.tv_nsec) / 1000)
end

-- SHA-256 -----------------------------------------------------------------------------
local K = {
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
}
for i = 1, 64 do K[i] = tobit(K[i]) end
local IV = { 0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19 }
for i = 1, 8 do IV[i] = tobit(IV[i]) end
local W = {}

-- One 64-byte block of `s` starting at 1-based `off` into the state H (8 words, in place).
local function compress(H, s, off)
  for j = 0, 15 do
    local a, b, c, d = byte(s, off + j * 4, off + j * 4 + 3)
    W[j] = bor(lshift(a, 24), lshift(b, 16), lshift(c, 8), d)
  end
  for j = 16, 63 do
    local w15, w2 = W[j - 15], W[j - 2]
    local s0 = bxor(ror(w15, 7), ror(w15, 18), rshift(w15, 3))
    local s1 = bxor(ror(w2, 17), ror(w2, 19), rshift(w2, 10))
    W[j] = tobit(W[j - 16] + s0 + W[j - 7] + s1)
  end
  local a, b, c, d, e, f, g, h = H[1], H[2], H[3], H[4], H[5], H[6], H[7], H[8]
  for j = 0, 63 do
    local S1 = bxor(ror(e, 6), ror(e, 11), ror(e, 25))
    local ch = bxor(band(e, f), band(bnot(e), g))
    local t1 = h + S1 + ch + K[j + 1] + W[j]
    local S0 = bxor(ror(a, 2), ror(a, 13), ror(a, 22))
    local maj = bxor(band(a, b), band(a, c), band(b, c))
    h, g, f, e, d, c, b, a = g, f, e, tobit(d + t1), c, b, a, tobit(t1 + S0 + maj)
  end
  H[1], H[2], H[3], H[4] = tobit(H[1] + a), tobit(H[2] + b), tobit(H[3] + c), tobit(H[4] + d)
  H[5], H[6], H[7], H[8] = tobit(H[5] + e), tobit(H[6] + f), tobit(H[7] + g), tobit(H[8] + h)
end

-- Finish a hash whose state H already absorbed `done` bytes (a multiple of 64) with `msg`.
local function finish(H0, done, msg)
  local H = { H0[1], H0[2], H0[3], H0[4], H0[5], H0[6], H0[7], H0[8] }
  local len = #msg
  local bits = (done + len) * 8
  local pad = 64 - ((len + 9) % 64)
  if pad == 64 then pad = 0 end
  local hi, lo = floor(bits / 4294967296), bits % 4294967296
  local s = msg .. "\128" .. rep("\0", pad)
    .. char(band(rshift(hi, 24), 255), band(rshift(hi, 16), 255), band(rshift(hi, 8), 255), band(hi, 255))
    .. char(band(rshift(lo, 24), 255), band(rshift(lo, 16), 255), band(rshift(lo, 8), 255), band(lo, 255))
  for off = 1, #s, 64 do compress(H, s, off) end
  return H
end

local function raw(H)
  local out = {}
  for i = 1, 8 do
    local w = H[i]
    out[i] = char(band(rshift(w, 24), 255), band(rshift(w, 16), 255), band(rshift(w, 8), 255), band(w, 255))
  end
  return concat(out)
end

local function hex(H)
  return tohex(H[1], 8) .. tohex(H[2], 8) .. tohex(H[3], 8) .. tohex(H[4], 8)
      .. tohex(H[5], 8) .. tohex(H[6], 8) .. tohex(H[7], 8) .. tohex(H[8], 8)
end

local function xor_bytes(s, v)
  local out = {}
  for i = 1, #s do out[i] = char(bxor(byte(s, i), v)) end
  return concat(out)
end

-- The two states after the key pads: an HMAC key prepared once per user.
local function hmac_key(key)
  if #key > 64 then key = raw(finish(IV, 0, key)) end
  key = key .. rep("\0", 64 - #key)
  local inner = { IV[1], IV[2], IV[3], IV[4], IV[5], IV[6], IV[7], IV[8] }
  local outer = { IV[1], IV[2], IV[3], IV[4], IV[5], IV[6], IV[7], IV[8] }
  compress(inner, xor_bytes(key, 0x36), 1)
  compress(outer, xor_bytes(key, 0x5c), 1)
  return { inner = inner, outer = outer }
end

local function hmac_hex(prepared, msg)
  return hex(finish(prepared.outer, 64, raw(finish(prepared.inner, 64, msg))))
end

-- The load ----------------------------------------------------------------------------
local env = os.getenv
local MARKETS = {}
for m in string.gmatch(env("CX_MARKETS") or env("CX_MARKET") or "sol/usdc", "[^,%s]+") do
  MARKETS[#MARKETS + 1] = m
end
local market = MARKETS[1] -- this cycle's market, set at the cycle's first request
local MID = tonumber(env("CX_MID_TICKS") or "15000")        -- mid price in ticks
local PRICE_DEC = tonumber(env("CX_PRICE_DECIMALS") or "2")
local TICK_SCALE = 10 ^ PRICE_DEC
local QTY_DEC = tonumber(env("CX_QTY_DECIMALS") or "3")
local LOT_SCALE = 10 ^ QTY_DEC
local CROSS_LOTS = tonumber(env("CX_CROSS_LOTS") or "100")  -- 0.100 SOL
local REST_DEPTH = tonumber(env("CX_REST_DEPTH") or "4")
local NTHREADS = tonumber(env("CX_THREADS") or "1")
local PRICE_FMT = "%." .. PRICE_DEC .. "f"
local QTY_FMT = "%." .. QTY_DEC .. "f"
local ORDER_PATH = "/api/v1/order"

local threads = {}
local thread_count = 0

function setup(thread)
  thread:set("tid", thread_count)
  thread_count = thread_count + 1
  threads[#threads + 1] = thread
end

-- per-thread state (each wrk thread has its own Lua state)
local users = {}
local turn = 0        -- request counter, picks the user
local step = 0        -- position in the four-request cycle
local cycle = 0
local resting = {}    -- queue of {user, orderId}
local rest_head, rest_tail = 1, 0
local pending_kind, pending_user, pending_started = nil, nil, 0
local host_header

function init(_)
  math.randomseed(1000 + (tid or 0))
  local index = 0
  for line in io.lines(env("CX_USERS")) do
    local key, secret = line:match("^(%S+)%s+(%S+)")
    if key then
      if index % NTHREADS == tid then
        users[#users + 1] = { key = key, hmac = hmac_key(secret), last_ts = 0 }
      end
      index = index + 1
    end
  end
  if #users < 2 then error(fmt("thread %d has %d users; need at least 2", tid, #users)) end
  host_header = wrk.host .. (wrk.port and (":" .. wrk.port) or "")
  -- flat globals: wrk's thread:get copies a table of numbers but crashes on nested tables
  lat_maker, lat_taker, lat_rest, lat_cancel = {}, {}, {}, {}
  lat = { maker = lat_maker, taker = lat_taker, rest = lat_rest, cancel = lat_cancel }
  statuses = {}
  bad = {}          -- first few bodies of unexpected responses (a flat list of strings)
  rest_rejects = 0
end

local function next_user()
  turn = turn + 1
  return users[(turn % #users) + 1]
end

local function signed(user, method, path, body)
  local ts = wall_ms()
  if ts <= user.last_ts then ts = user.last_ts + 1 end
  user.last_ts = ts
  local ts_s = fmt("%d", ts)
  local sig = hmac_hex(user.hmac, ts_s .. method .. path .. body)
  local head = method .. " " .. path .. " HTTP/1.1\r\nHost: " .. host_header
    .. "\r\nX-CX-KEY: " .. user.key .. "\r\nX-CX-TS: " .. ts_s .. "\r\nX-CX-SIGN: " .. sig
  if body == "" then return head .. "\r\n\r\n" end
  return head .. "\r\nContent-Type: application/json\r\nContent-Length: " .. #body .. "\r\n\r\n" .. body
end

local function order_body(side, ticks, lots, tif)
  return '{"kind":"' .. side .. '","type":"limit","price":"' .. fmt(PRICE_FMT, ticks / TICK_SCALE)
    .. '","quantity":"' .. fmt(QTY_FMT, lots / LOT_SCALE) .. '","market":"' .. market .. '"'
    .. (tif and (',"timeInForce":"' .. tif .. '"') or "") .. "}"
end

local function rest_request()
  local user = next_user()
  local side = math.random(2) == 1 and "buy" or "sell"
  local away = math.random(10, 50)
  local ticks = side == "buy" and MID - away or MID + away
  pending_kind, pending_user = "rest", user
  return signed(user, "POST", ORDER_PATH, order_body(side, ticks, math.random(50, 200)))
end

function request()
  local s = step
  step = (step + 1) % 4
  local req
  if s == 0 then
    cycle = cycle + 1
    market = MARKETS[((tid + cycle) % #MARKETS) + 1]
    local user = next_user()
    pending_kind, pending_user = "maker", user
    req = signed(user, "POST", ORDER_PATH, order_body(cycle % 2 == 0 and "buy" or "sell", MID, CROSS_LOTS))
  elseif s == 1 then
    local user = next_user()
    pending_kind, pending_user = "taker", user
    req = signed(user, "POST", ORDER_PATH,
      order_body(cycle % 2 == 0 and "sell" or "buy", MID, CROSS_LOTS, "IOC"))
  elseif s == 2 or rest_tail - rest_head + 1 <= REST_DEPTH then
    req = rest_request()
  else
    local entry = resting[rest_head]
    resting[rest_head] = nil
    rest_head = rest_head + 1
    pending_kind, pending_user = "cancel", entry[1]
    req = signed(entry[1], "DELETE", ORDER_PATH .. "?orderId=" .. entry[2], "")
  end
  pending_started = mono_us()
  return req
end

function response(status, headers, body)
  local kind = pending_kind
  if kind == nil then return end
  local l = lat[kind]
  l[#l + 1] = mono_us() - pending_started
  local key = kind .. ":" .. status
  statuses[key] = (statuses[key] or 0) + 1
  if status ~= 200 and status ~= 202 and #bad < 5 then bad[#bad + 1] = kind .. " " .. status .. " " .. sub(body or "", 1, 300) end
  if kind == "rest" and (status == 200 or status == 202) then
    local oid = body and body:match('"orderId":%s*"(%d+)"')
    if oid then
      rest_tail = rest_tail + 1
      resting[rest_tail] = { pending_user, oid }
    else
      rest_rejects = rest_rejects + 1
    end
  end
  pending_kind = nil
end

local function hex_to_bytes(h)
  return (h:gsub("..", function(x) return char(tonumber(x, 16)) end))
end

function done(summary, latency, requests)
  local out = assert(io.open(env("CX_OUT"), "w"))
  out:write(fmt("summary requests=%d duration_us=%d bytes=%d connect=%d read=%d write=%d status=%d timeout=%d\n",
    summary.requests, summary.duration, summary.bytes, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.status, summary.errors.timeout))
  out:write(fmt("wrk_latency_us p50=%d p99=%d max=%d\n", latency:percentile(50), latency:percentile(99), latency.max))
  for _, thread in ipairs(threads) do
    local tid_ = thread:get("tid")
    for key, n in pairs(thread:get("statuses") or {}) do out:write(fmt("status %d %s %d\n", tid_, key, n)) end
    for _, line in ipairs(thread:get("bad") or {}) do out:write("bad ", (line:gsub("[\r\n]", " ")), "\n") end
    out:write(fmt("rest_rejects %d %d\n", tid_, thread:get("rest_rejects") or 0))
    for _, kind in ipairs({ "maker", "taker", "rest", "cancel" }) do
      local values = thread:get("lat_" .. kind) or {}
      if #values > 0 then out:write("lat ", kind, " ", concat(values, " "), "\n") end
    end
  end
  local vectors = env("CX_HMAC_VECTORS")
  if vectors then
    for line in io.lines(vectors) do
      local keyhex, msghex = line:match("^(%x*)%s+(%x*)$")
      if keyhex then
        out:write("vector ", hmac_hex(hmac_key(hex_to_bytes(keyhex)), hex_to_bytes(msghex)), "\n")
      end
    end
  end
  if env("CX_HMAC_BENCH") then -- the signing cost alone, for the self-check
    local key = hmac_key(rep("k", 64))
    local msg = "1765000000000POST/api/v1/order" .. order_body("buy", MID, CROSS_LOTS, "IOC")
    local n, started = 20000, os.clock()
    for i = 1, n do hmac_hex(key, msg .. i) end
    out:write(fmt("hmac_us %.2f\n", (os.clock() - started) * 1e6 / n))
  end
  out:close()
end
