-- lib_decimal: exact arithmetic on decimal-integer strings, and the ledger's checks.
-- ledger.py prepends this file to every ledger script that stores amounts; nothing here
-- writes to Redis.
-- A canonical amount is "0" or an optional "-" then digits without leading zeros
-- ("-0", "+1", "007", "1e3", " 1" are not). Amounts never pass through a Lua number
-- beyond 15 digits (a double is exact only up to 2**53), so no amount has a size limit.

-- true when `s` is a canonical signed decimal-integer string
local function dec_is_canonical(s)
  return type(s) == "string" and (s == "0" or string.find(s, "^%-?[1-9]%d*$") ~= nil)
end

-- true when `s` is a canonical integer > 0
local function dec_is_positive(s)
  return type(s) == "string" and string.find(s, "^[1-9]%d*$") ~= nil
end

-- true when `s` is a canonical integer >= 0
local function dec_is_natural(s)
  return s == "0" or dec_is_positive(s)
end

local function dec_is_negative(s)
  return string.byte(s, 1) == 45 -- "-"
end

-- compare two digit strings without sign or leading zeros: -1, 0 or 1
local function dec_cmp_digits(a, b)
  if #a ~= #b then return #a < #b and -1 or 1 end
  -- 15-digit chunks as numbers: Lua's string "<" follows the server's locale
  for i = 1, #a, 15 do
    local x, y = tonumber(string.sub(a, i, i + 14)), tonumber(string.sub(b, i, i + 14))
    if x ~= y then return x < y and -1 or 1 end
  end
  return 0
end

-- digit string -> limbs of 7 digits, least significant first (each limb < 10**7)
local function dec_limbs(digits)
  local limbs = {}
  local stop = #digits
  while stop > 0 do
    local start = math.max(1, stop - 6)
    limbs[#limbs + 1] = tonumber(string.sub(digits, start, stop))
    stop = start - 1
  end
  return limbs
end

local function dec_from_limbs(limbs)
  local top = #limbs
  while top > 1 and limbs[top] == 0 do top = top - 1 end
  local parts = {string.format("%d", limbs[top])}
  for i = top - 1, 1, -1 do parts[#parts + 1] = string.format("%07d", limbs[i]) end
  return table.concat(parts)
end

-- a + b for digit strings
local function dec_add_digits(a, b)
  local x, y, out, carry = dec_limbs(a), dec_limbs(b), {}, 0
  for i = 1, math.max(#x, #y) do
    local sum = (x[i] or 0) + (y[i] or 0) + carry
    carry = sum >= 10000000 and 1 or 0
    out[i] = sum - carry * 10000000
  end
  if carry > 0 then out[#out + 1] = carry end
  return dec_from_limbs(out)
end

-- a - b for digit strings with a >= b
local function dec_sub_digits(a, b)
  local x, y, out, borrow = dec_limbs(a), dec_limbs(b), {}, 0
  for i = 1, #x do
    local diff = x[i] - (y[i] or 0) - borrow
    borrow = diff < 0 and 1 or 0
    out[i] = diff + borrow * 10000000
  end
  return dec_from_limbs(out)
end

-- (negative?, digits) of a canonical amount
local function dec_split(s)
  if dec_is_negative(s) then return true, string.sub(s, 2) end
  return false, s
end

-- a + b, both canonical; the result is canonical
local function dec_add(a, b)
  if #a <= 15 and #b <= 15 then
    -- |a|, |b| < 10**15, so the sum is below 2**53 and exact as a double
    return string.format("%.0f", tonumber(a) + tonumber(b))
  end
  local a_neg, a_digits = dec_split(a)
  local b_neg, b_digits = dec_split(b)
  if a_neg == b_neg then
    local sum = dec_add_digits(a_digits, b_digits)
    return a_neg and "-" .. sum or sum
  end
  local order = dec_cmp_digits(a_digits, b_digits)
  if order == 0 then return "0" end
  if order > 0 then
    local diff = dec_sub_digits(a_digits, b_digits)
    return a_neg and "-" .. diff or diff
  end
  local diff = dec_sub_digits(b_digits, a_digits)
  return b_neg and "-" .. diff or diff
end

-- -a for a canonical amount
local function dec_neg(a)
  if a == "0" then return "0" end
  if dec_is_negative(a) then return string.sub(a, 2) end
  return "-" .. a
end

-- a - b, both canonical
local function dec_sub(a, b)
  return dec_add(a, dec_neg(b))
end

-- compare two canonical amounts: -1, 0 or 1
local function dec_cmp(a, b)
  local a_neg, a_digits = dec_split(a)
  local b_neg, b_digits = dec_split(b)
  if a_neg ~= b_neg then return a_neg and -1 or 1 end
  local order = dec_cmp_digits(a_digits, b_digits)
  return a_neg and -order or order
end

-- the type of `key` is `want` or the key does not exist
local function key_type_is(key, want)
  local found = redis.call("TYPE", key)["ok"]
  return found == want or found == "none"
end
