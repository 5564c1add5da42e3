-- Commit individuals' new scores and update their scopes' running aggregates.
--
-- The aggregates (n, sum, sum of squares of every individual's current score)
-- move by the *change* of an individual's score, in one atomic step, so they
-- always describe the set of scores in the rank zset. Floats are stored with
-- %.17g, which round-trips an IEEE double exactly; the arithmetic below is the
-- same as common/result.py Aggregates.replace, so both engines agree bit for bit.
--
-- Newest state wins: each score comes with the individual's event count after
-- the event it was computed for. apply.lua counts every event exactly once, so
-- that count grows by one per event and orders the states of one individual.
-- Two batches in flight (worker lanes, or several workers) can reach here in
-- the other order; a score older than the one already committed is skipped,
-- so the zset never goes back to an earlier state.
--
-- The apply of the entry a score is for left '<entry id> <L>' in the shard's
-- uncommitted hash (apply.lua), L the event count of the committed score; it
-- is removed here unless a later entry of the individual has been applied
-- since (then only its L moves, and that entry's commit removes it). Without
-- a mark the individual's last applied entry was committed: L is its event
-- count, the sum of its counts. So no per-individual record of L is kept.
--
-- One call commits a run of scores of ONE shard, in order (a later score of
-- the same individual sees the earlier one as its old value).
--
-- After each score it also reports where that score stands in the rank zset
-- (pscore, common/calibration.py: ZCOUNT strictly below, ZCOUNT equal, ZCARD)
-- and, when asked, a sample of the zset's scores for the scope's median and
-- MAD (rzscore): all of them up to ARGV[a+5], else ARGV[a+5] evenly spaced
-- ranks i*(n-1)//(ARGV[a+5]-1), the ranks common/calibration.py sample_ranks
-- gives; O(ARGV[a+5] log n), read only at the worker's refresh points.
--
-- KEYS[1] shard uncommitted hash, then per score i (base k = 1 + 3*(i-1)):
--   KEYS[k+1] scope rank zset   KEYS[k+2] scope agg hash
--   KEYS[k+3] the individual's counts hash (also its field in the uncommitted hash)
-- per score i (base a = 5*(i-1)):
--   ARGV[a+1] individual id     ARGV[a+2] new score (a repr() of a double)
--   ARGV[a+3] the individual's event count the score was computed at
--   ARGV[a+4] the entry id it was computed for
--   ARGV[a+5] sample points to return after this score (0: no sample)
-- Returns {n, sum, sumsq, committed, below, ties, card, sample, ...} after each
-- score (floats as strings; committed is 0 when the score was older than the
-- committed one, -1 when one of its scope's keys holds another type and nothing
-- of that scope was written; sample is {} unless asked for, scores as strings).
--
-- Redis does not undo a script's earlier writes when a later command fails, so
-- the keys' types are checked before anything is written: a failure half-way
-- would leave ranks moved and their aggregates not.
local ok = {}
local function fits(key, want)
  if ok[key] == nil then
    local t = redis.call('TYPE', key)['ok']
    ok[key] = (t == 'none' or t == want)
  end
  return ok[key]
end
if not fits(KEYS[1], 'hash') then
  return redis.error_reply('uncommitted key ' .. KEYS[1] .. ' is not a hash')
end
local function sample(rank, points)
  local got = {}
  local n = redis.call('ZCARD', rank)
  if n <= points then
    local all = redis.call('ZRANGE', rank, 0, -1, 'WITHSCORES')
    for j = 2, #all, 2 do
      got[#got + 1] = all[j]
    end
  else
    for j = 0, points - 1 do
      local r = math.floor(j * (n - 1) / (points - 1))
      got[#got + 1] = redis.call('ZRANGE', rank, r, r, 'WITHSCORES')[2]
    end
  end
  return got
end
local out = {}
-- The marks are read once and written at the end: a mark's HDEL may empty the
-- uncommitted hash, and on the source of a slot being moved Redis stops a
-- script at the next access of a key it emptied, keeping what it wrote so far.
local marks, touched = {}, {}
-- Each scope's aggregates are read once per call and written once at its end:
-- the doubles in between are the ones a read of the %.17g strings would give.
local aggs, order = {}, {}
for i = 1, #ARGV / 5 do
  local k = 1 + 3 * (i - 1)
  local a = 5 * (i - 1)
  local rank, aggkey, ikey = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]
  local member, raw, count = ARGV[a + 1], ARGV[a + 2], tonumber(ARGV[a + 3])
  if not (fits(rank, 'zset') and fits(aggkey, 'hash') and fits(ikey, 'hash')) then
    out[#out + 1] = 0
    out[#out + 1] = '0'
    out[#out + 1] = '0'
    out[#out + 1] = -1
    out[#out + 1] = 0
    out[#out + 1] = 0
    out[#out + 1] = 0
    out[#out + 1] = {}
  else
    local mark = marks[ikey]
    if mark == nil then
      mark = redis.call('HGET', KEYS[1], ikey)
    end
    local marked, last
    if mark then
      local l
      marked, l = string.match(mark, '^(%S+) ?(%d*)$')
      last = tonumber(l) or 0
    else
      last = 0
      for _, v in ipairs(redis.call('HVALS', ikey)) do
        last = last + tonumber(v)
      end
    end
    local agg = aggs[aggkey]
    if not agg then
      local got = redis.call('HMGET', aggkey, 'n', 'sum', 'sumsq')
      agg = {tonumber(got[1] or '0'), tonumber(got[2] or '0'), tonumber(got[3] or '0'), false}
      aggs[aggkey] = agg
      order[#order + 1] = aggkey
    end
    local committed = 0
    if last <= count then
      local new = tonumber(raw)
      local old = redis.call('ZSCORE', rank, member)
      local prev = 0
      if old then
        prev = tonumber(old)
      else
        agg[1] = agg[1] + 1
      end
      agg[2] = agg[2] + (new - prev)
      agg[3] = agg[3] + (new * new - prev * prev)
      agg[4] = true
      redis.call('ZADD', rank, raw, member)
      committed = 1
    end
    if marked == ARGV[a + 4] then
      marks[ikey] = false
      touched[#touched + 1] = ikey
    elseif marked and committed == 1 then
      marks[ikey] = marked .. ' ' .. count
      touched[#touched + 1] = ikey
    end
    out[#out + 1] = agg[1]
    out[#out + 1] = string.format('%.17g', agg[2])
    out[#out + 1] = string.format('%.17g', agg[3])
    out[#out + 1] = committed
    out[#out + 1] = redis.call('ZCOUNT', rank, '-inf', '(' .. raw)
    out[#out + 1] = redis.call('ZCOUNT', rank, raw, raw)
    out[#out + 1] = redis.call('ZCARD', rank)
    local points = tonumber(ARGV[a + 5])
    out[#out + 1] = points > 0 and sample(rank, points) or {}
  end
end
for _, aggkey in ipairs(order) do
  local agg = aggs[aggkey]
  if agg[4] then
    redis.call('HSET', aggkey, 'n', agg[1], 'sum', string.format('%.17g', agg[2]), 'sumsq', string.format('%.17g', agg[3]))
  end
end
-- Marks last, the HSETs before the HDELs: nothing touches the hash after it may be emptied.
local cleared, done = {}, {}
for _, ikey in ipairs(touched) do
  if not done[ikey] then
    done[ikey] = true
    if marks[ikey] then
      redis.call('HSET', KEYS[1], ikey, marks[ikey])
    else
      cleared[#cleared + 1] = ikey
    end
  end
end
if #cleared > 0 then
  redis.call('HDEL', KEYS[1], unpack(cleared))
end
return out
