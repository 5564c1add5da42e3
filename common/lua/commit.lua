-- Commit an individual's new score and update the scope's running aggregates.
--
-- The aggregates (n, sum, sum of squares of every individual's current score)
-- move by the *change* of this individual's score, in one atomic step, so they
-- always describe the set of scores in the rank zset. Floats are stored with
-- %.17g, which round-trips an IEEE double exactly; the arithmetic below is the
-- same as common/result.py Aggregates.replace, so both engines agree bit for bit.
--
-- KEYS[1] scope rank zset   KEYS[2] scope agg hash
-- ARGV[1] individual id     ARGV[2] new score (a repr() of a double)
-- Returns {n, sum, sumsq} after the update (floats as strings).
local new = tonumber(ARGV[2])
local old = redis.call('ZSCORE', KEYS[1], ARGV[1])
local agg = redis.call('HMGET', KEYS[2], 'n', 'sum', 'sumsq')
local n = tonumber(agg[1] or '0')
local sum = tonumber(agg[2] or '0')
local sumsq = tonumber(agg[3] or '0')
local prev = 0
if old then
  prev = tonumber(old)
else
  n = n + 1
end
sum = sum + (new - prev)
sumsq = sumsq + (new * new - prev * prev)
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
local s = string.format('%.17g', sum)
local q = string.format('%.17g', sumsq)
redis.call('HSET', KEYS[2], 'n', n, 'sum', s, 'sumsq', q)
return {n, s, q}
