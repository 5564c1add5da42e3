-- Recompute a scope's score aggregates from scratch (bounds float drift), and
-- optionally its population counts without the individuals excluded from learning.
--
-- Walks the rank zset (every individual's current score) and rewrites n, sum
-- and sumsq. O(individuals of the scope) and atomic, so run it per scope.
-- With ARGV[1] = '1' it also rebuilds the population hashes pop (C_a), sq
-- (S2_a) and k (K_a) from the individual hashes given, leaving out those whose
-- flag is '1' (an exclude rule, common/rules.py): O(their counts).
--
-- KEYS[1] scope rank zset   KEYS[2] scope agg hash
-- KEYS[3] scope pop hash    KEYS[4] scope sq hash   KEYS[5] scope k hash
-- then per individual i (base b = 5 + 1*(i-1)):
--   KEYS[b+1] the individual's counts hash
-- ARGV[1] '1' to rebuild pop/sq/k from the individuals, '0' for the aggregates only
-- then per individual i (base a = 1 + 1*(i-1)):
--   ARGV[a+1] '1' when it is excluded from learning (its counts are left out)
-- Returns {n, sum, sumsq, individuals learnt from, excluded} as written (floats as strings;
-- the last two are 0 without a rebuild).
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
local learnt, left = 0, 0
if ARGV[1] == '1' then
  local pop, sq, k = {}, {}, {}
  for i = 6, #KEYS do
    if ARGV[i - 4] == '1' then
      left = left + 1
    else
      learnt = learnt + 1
      local counts = redis.call('HGETALL', KEYS[i])
      for j = 1, #counts, 2 do
        local a, x = counts[j], tonumber(counts[j + 1])
        pop[a] = (pop[a] or 0) + x
        sq[a] = (sq[a] or 0) + x * x
        k[a] = (k[a] or 0) + 1
      end
    end
  end
  redis.call('DEL', KEYS[3], KEYS[4], KEYS[5])
  for a, c in pairs(pop) do
    redis.call('HSET', KEYS[3], a, c)
    redis.call('HSET', KEYS[4], a, sq[a])
    redis.call('HSET', KEYS[5], a, k[a])
  end
end
return {n, s, q, learnt, left}
