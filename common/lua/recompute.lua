-- Recompute a scope's score aggregates from scratch (bounds float drift).
--
-- Walks the rank zset (every individual's current score) and rewrites n, sum
-- and sumsq. O(individuals of the scope) and atomic, so run it per scope.
--
-- KEYS[1] scope rank zset   KEYS[2] scope agg hash
-- Returns {n, sum, sumsq} as written (floats as strings).
local rows = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local n, sum, sumsq = 0, 0, 0
for i = 2, #rows, 2 do
  local v = tonumber(rows[i])
  n = n + 1
  sum = sum + v
  sumsq = sumsq + v * v
end
local s = string.format('%.17g', sum)
local q = string.format('%.17g', sumsq)
redis.call('HSET', KEYS[2], 'n', n, 'sum', s, 'sumsq', q)
return {n, s, q}
