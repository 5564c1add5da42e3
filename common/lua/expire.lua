-- Remove idle individuals of ONE scope (retention), with everything they added.
--
-- The caller (worker/retention.py) reads the oldest members of the scope's
-- last-seen zset and passes them here; this script decides for itself, from
-- that zset, which of them go: an individual is removed when its last-seen
-- stamp is at most ARGV[2] (idle expiry) or when the scope holds more than
-- ARGV[3] individuals and it is among the least recently seen ones past that
-- cap. One that is gone already (another worker swept it first) is skipped,
-- so any number of sweepers may run at once: each individual is removed once.
-- One whose individual key has an uncommitted mark (applied, score not yet
-- committed, or left for worker.py's _repair) is skipped until a later sweep,
-- so a commit in flight can never put back a score of a removed individual.
--
-- Removing an individual undoes what apply.lua and commit.lua added for it:
--   pop   minus its current contribution c(x) (x, or normalise(x, W) when it has
--         n > W events: apply.lua keeps pop at the sum of contributions)
--   raw   minus x (W > 0)     sq  minus x^2     k  minus 1
--         an action whose k reaches 0 is done by nobody any more: its fields
--         go from pop, sq, k and raw, as if it had never been counted
--   dom   events minus n; if it was the top individual, top and top_n are
--         cleared (the next event's individual becomes top) and so is its flag
--   rank: its member; agg: n - 1, sum and sumsq minus its score
--   last: its member; its counts hash is deleted, and so are its recent list and
--         window hash when passed (apply.lua, BINORMAL_RECENT_WINDOW > 0)
-- An individual excluded from learning (ARGV[a+2] = '1') never moved the
-- population, so only its own keys and score go.
--
-- KEYS[1] shard uncommitted hash   KEYS[2] shard expired hash (scope token -> removed)
-- KEYS[3] scope last-seen zset     KEYS[4] scope pop hash   KEYS[5] scope sq hash
-- KEYS[6] scope k hash             KEYS[7] scope raw hash   KEYS[8] scope dom hash
-- KEYS[9] scope rank zset          KEYS[10] scope agg hash  KEYS[11] scope na hash
--   (number -> action: the counts hashes are keyed by action number, apply.lua;
--   numbers stay assigned when an action's fields go, so na is only read)
-- then per individual i (base b = 11 + 3*(i-1)):
--   KEYS[b+1] its counts hash   KEYS[b+2] its recent list   KEYS[b+3] its window hash
--   (with the recent window off the caller passes the counts hash in place of both: a key a
--   script names must exist on the source of a slot being moved, or Redis answers TRYAGAIN)
-- ARGV[1] scope token (its field in KEYS[2])
-- ARGV[2] idle cutoff: last seen at or before this Redis ms is removed (-1: no idle expiry)
-- ARGV[3] most individuals the scope keeps (BINORMAL_MAX_INDIVIDUALS; 0: no cap)
-- ARGV[4] weight cap W (BINORMAL_WEIGHT_CAP; 0 = off)
-- then per individual i (base a = 4 + 2*(i-1)):
--   ARGV[a+1] its id (member of the last-seen and rank zsets)
--   ARGV[a+2] '1' when it is excluded from learning (a rule)
-- Returns {removed, skipped for an uncommitted mark, individuals left in KEYS[3]}.
--
-- Redis does not undo a script's earlier writes when a later command fails, so
-- every key's type is checked before anything is written (error reply: nothing done).
local want = {
  [1] = 'hash', [2] = 'hash', [3] = 'zset', [4] = 'hash', [5] = 'hash', [6] = 'hash',
  [7] = 'hash', [8] = 'hash', [9] = 'zset', [10] = 'hash', [11] = 'hash',
}
for i = 1, #KEYS do
  local t = redis.call('TYPE', KEYS[i])['ok']
  local w = want[i] or (((i - 11) % 3 == 2 and KEYS[i] ~= KEYS[i - 1]) and 'list' or 'hash')
  if t ~= 'none' and t ~= w then
    return redis.error_reply('key ' .. KEYS[i] .. ' holds a ' .. t .. ', not a ' .. w)
  end
end
--#include share_of
local cutoff = tonumber(ARGV[2])
local cap = tonumber(ARGV[3])
local w = tonumber(ARGV[4])
local removed, busy = 0, 0
local card = redis.call('ZCARD', KEYS[3])
-- The aggregates are read once and written once (as commit.lua does).
local got = redis.call('HMGET', KEYS[10], 'n', 'sum', 'sumsq')
local n, sum, sumsq = tonumber(got[1] or '0'), tonumber(got[2] or '0'), tonumber(got[3] or '0')
local agg_moved = false
-- Every change that may empty a key is gathered and made at the end, each key's
-- possible emptying its last touch: on the source of a slot being moved, Redis
-- stops a script at the next access of a key it emptied, keeping what it wrote.
-- So the zsets are read as they were when the call began: a removal only ever
-- takes members older than the next candidate, which shifts its ZRANK and the
-- card alike, so "ZRANK < card - cap" reads the same on the unchanged zset.
local gone = {}                          -- id -> true once removed in this call
local fields, dk, dc, dsq, dx = {}, {}, {}, {}, {}
local unranked, unseen = {}, {}
for item = 1, (#KEYS - 11) / 3 do
  local i = 11 + 3 * (item - 1) + 1  -- its counts hash; i + 1, i + 2 its recent list and window
  local a = 4 + 2 * (item - 1)
  local id, excluded = ARGV[a + 1], ARGV[a + 2] == '1'
  local stamp = not gone[id] and redis.call('ZSCORE', KEYS[3], id)
  local go = false
  if stamp then
    go = cutoff >= 0 and tonumber(stamp) <= cutoff
    if not go and cap > 0 and card > cap then
      -- ZRANK orders by stamp, then by id: the same order the caller read
      go = redis.call('ZRANK', KEYS[3], id) < card - cap
    end
  end
  if go and redis.call('HEXISTS', KEYS[1], KEYS[i]) == 1 then
    busy = busy + 1
    go = false
  end
  if go then
    local counts = redis.call('HGETALL', KEYS[i])
    local total = 0
    local nums = {}
    for j = 2, #counts, 2 do
      nums[#nums + 1] = counts[j - 1]
      total = total + tonumber(counts[j])
    end
    -- the counts by action name (HMGET in slices: unpack() is bounded by Lua's C stack)
    for from = 1, #nums, 1000 do
      local names = redis.call('HMGET', KEYS[11], unpack(nums, from, math.min(from + 999, #nums)))
      for j = 1, #names do
        counts[2 * (from + j - 1) - 1] = names[j]
      end
    end
    if not excluded and total > 0 then
      for j = 1, #counts, 2 do
        local f, x = counts[j], tonumber(counts[j + 1])
        local c = x
        if w > 0 and total > w then
          c = share_of(x, w, total)
        end
        if not dk[f] then
          fields[#fields + 1] = f
          dk[f], dc[f], dsq[f], dx[f] = 0, 0, 0, 0
        end
        dk[f] = dk[f] + 1
        dc[f] = dc[f] + c
        dsq[f] = dsq[f] + x * x
        dx[f] = dx[f] + x
      end
      local d = redis.call('HMGET', KEYS[8], 'top', 'flag')
      -- dom keeps its 'events' field, so these never empty it
      redis.call('HINCRBY', KEYS[8], 'events', -total)
      if d[1] == id then
        -- the next top is unknown without reading every individual: cleared, the
        -- next event's individual takes it (docs/operations.md: retention)
        redis.call('HDEL', KEYS[8], 'top')
        redis.call('HSET', KEYS[8], 'top_n', 0)
      end
      if d[2] == id then
        redis.call('HDEL', KEYS[8], 'flag')
      end
    end
    local score = redis.call('ZSCORE', KEYS[9], id)
    if score then
      local v = tonumber(score)
      unranked[#unranked + 1] = id
      n = n - 1
      sum = sum - v
      sumsq = sumsq - v * v
      agg_moved = true
    end
    if KEYS[i + 1] ~= KEYS[i] then
      redis.call('DEL', KEYS[i], KEYS[i + 1], KEYS[i + 2])  -- its own keys: not touched again
    else
      redis.call('DEL', KEYS[i])
    end
    unseen[#unseen + 1] = id
    gone[id] = true
    removed = removed + 1
  end
end
if agg_moved then
  if n <= 0 then
    -- no score left: exact zeros, not the float residue of the subtractions
    n, sum, sumsq = 0, 0, 0
  end
  redis.call('HSET', KEYS[10], 'n', n, 'sum', string.format('%.17g', sum), 'sumsq', string.format('%.17g', sumsq))
end
if removed > 0 then
  redis.call('HINCRBY', KEYS[2], ARGV[1], removed)
end
-- The population: the actions nobody does any more lose their fields (as if never
-- counted), the others move by what the removed added; the HDELs come last per key.
local dead = {}
for _, f in ipairs(fields) do
  if tonumber(redis.call('HGET', KEYS[6], f) or '0') - dk[f] <= 0 then
    dead[#dead + 1] = f
  else
    redis.call('HINCRBY', KEYS[6], f, -dk[f])
    redis.call('HINCRBY', KEYS[4], f, -dc[f])
    redis.call('HINCRBY', KEYS[5], f, -dsq[f])
    if w > 0 then
      redis.call('HINCRBY', KEYS[7], f, -dx[f])
    end
  end
end
for from = 1, #dead, 1000 do
  local last = math.min(from + 999, #dead)
  for _, key in ipairs({KEYS[4], KEYS[5], KEYS[6], KEYS[7]}) do
    redis.call('HDEL', key, unpack(dead, from, last))
  end
end
for from = 1, #unranked, 1000 do
  redis.call('ZREM', KEYS[9], unpack(unranked, from, math.min(from + 999, #unranked)))
end
for from = 1, #unseen, 1000 do
  redis.call('ZREM', KEYS[3], unpack(unseen, from, math.min(from + 999, #unseen)))
end
card = card - removed
return {removed, busy, card}
