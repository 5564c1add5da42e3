-- Commit individuals' new scores and update their scopes' running aggregates.
--
-- The aggregates (n, sum, sum of squares of every individual's current score)
-- move by the *change* of an individual's score, in one atomic step, so they
-- always describe the set of scores in the rank zset. Floats are stored with
-- %.17g, which round-trips an IEEE double exactly; the arithmetic below is the
-- same as common/result.py Aggregates.replace, so both engines agree bit for bit.
--
-- One call commits a run of scores of ONE shard, in order (a later score of
-- the same individual sees the earlier one as its old value).
--
-- per score i: KEYS[2i-1] scope rank zset   KEYS[2i] scope agg hash
--              ARGV[2i-1] individual id     ARGV[2i] new score (a repr() of a double)
-- Returns {n, sum, sumsq, ...} after each update (floats as strings).
local out = {}
for i = 1, #ARGV / 2 do
  local rank, aggkey = KEYS[2 * i - 1], KEYS[2 * i]
  local member, raw = ARGV[2 * i - 1], ARGV[2 * i]
  local new = tonumber(raw)
  local old = redis.call('ZSCORE', rank, member)
  local agg = redis.call('HMGET', aggkey, 'n', 'sum', 'sumsq')
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
  redis.call('ZADD', rank, raw, member)
  local s = string.format('%.17g', sum)
  local q = string.format('%.17g', sumsq)
  redis.call('HSET', aggkey, 'n', n, 'sum', s, 'sumsq', q)
  out[#out + 1] = n
  out[#out + 1] = s
  out[#out + 1] = q
end
return out
