-- Shared by apply.lua, expire.lua and recompute.lua: each has an include line
-- naming this file, which common/scripts.py replaces with it when loading.
-- floor((2 x w + m) / (2 m)): x'_a of normalise(x, w) for an individual of m events.
-- Lua numbers are doubles: num and den are exact integers while num < 2^53 (m
-- below 2^53 / (2w + 1): 4.5e13 events for w = 100). The quotient is rounded;
-- below that bound the rounding (half an ulp of q, about q 2^-53) is smaller than
-- the distance 1/den from a non-integer quotient to the next integer, so floor()
-- is already right, and the two exact integer comparisons below guarantee it
-- whatever the argument: the result is Python's (2*x*w + m) // (2*m).
local function share_of(x, w, m)
  local num, den = 2 * x * w + m, 2 * m
  local q = math.floor(num / den)
  if q * den > num then
    q = q - 1
  elseif (q + 1) * den <= num then
    q = q + 1
  end
  return q
end
