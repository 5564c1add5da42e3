-- Recompute a scope's score aggregates from scratch (bounds float drift), and
-- optionally its population counts without the individuals excluded from learning.
--
-- Walks the rank zset (every individual's current score) and rewrites n, sum
-- and sumsq. O(individuals of the scope) and atomic, so run it per scope.
-- With ARGV[1] = '1' it also rebuilds the population hashes pop (C_a), sq
-- (S2_a), k (K_a), raw (s1, with a weight cap) and the dominance counters
-- (events, top, top_n of the dom hash) from the individual hashes given,
-- leaving out those whose flag is '1' (an exclude rule, common/rules.py):
-- O(their counts). Under the weight cap W (ARGV[2] > 0) an individual of n > W
-- events contributes normalise(x, W) to pop, as apply.lua maintains it.
--
-- The individuals' hashes are keyed by action number; the scope's na hash
-- (number -> action, apply.lua) names them. The an/na hashes are never rebuilt:
-- numbers stay assigned even when no individual learnt from has the action.
--
-- KEYS[1] scope rank zset   KEYS[2] scope agg hash
-- KEYS[3] scope pop hash    KEYS[4] scope sq hash   KEYS[5] scope k hash
-- KEYS[6] scope raw hash    KEYS[7] scope dom hash  KEYS[8] scope na hash
-- then per individual i (base b = 8 + 1*(i-1)):
--   KEYS[b+1] the individual's counts hash (action number -> count)
-- ARGV[1] '1' to rebuild the population from the individuals, '0' for the aggregates only
-- ARGV[2] weight cap W (BINORMAL_WEIGHT_CAP; 0 = off)
-- then per individual i (base a = 2 + 2*(i-1)):
--   ARGV[a+1] '1' when it is excluded from learning (its counts are left out)
--   ARGV[a+2] its id (kept as the dom hash's top when it has the most events)
-- Returns {n, sum, sumsq, individuals learnt from, excluded} as written (floats as strings;
-- the last two are 0 without a rebuild).
--#include share_of
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
  local w = tonumber(ARGV[2])
  local pop, raw, sq, k = {}, {}, {}, {}
  local events, top, top_n = 0, false, 0
  local name = {}
  local na = redis.call('HGETALL', KEYS[8])
  for j = 1, #na, 2 do
    name[na[j]] = na[j + 1]
  end
  for i = 9, #KEYS do
    local a0 = 2 + 2 * (i - 9)
    if ARGV[a0 + 1] == '1' then
      left = left + 1
    else
      learnt = learnt + 1
      local counts = redis.call('HGETALL', KEYS[i])
      local m = 0
      for j = 2, #counts, 2 do
        m = m + tonumber(counts[j])
      end
      events = events + m
      if m > top_n then
        top, top_n = ARGV[a0 + 2], m
      end
      for j = 1, #counts, 2 do
        local a, x = name[counts[j]], tonumber(counts[j + 1])
        local c = x
        if w > 0 and m > w then
          c = share_of(x, w, m)
        end
        pop[a] = (pop[a] or 0) + c
        raw[a] = (raw[a] or 0) + x
        sq[a] = (sq[a] or 0) + x * x
        k[a] = (k[a] or 0) + 1
      end
    end
  end
  redis.call('DEL', KEYS[3], KEYS[4], KEYS[5], KEYS[6])
  for a, c in pairs(pop) do
    redis.call('HSET', KEYS[3], a, c)
    redis.call('HSET', KEYS[4], a, sq[a])
    redis.call('HSET', KEYS[5], a, k[a])
    if w > 0 then
      redis.call('HSET', KEYS[6], a, raw[a])
    end
  end
  redis.call('HSET', KEYS[7], 'events', events, 'top_n', top_n)
  if top then
    redis.call('HSET', KEYS[7], 'top', top)
  else
    redis.call('HDEL', KEYS[7], 'top')
  end
end
return {n, s, q, learnt, left}
