-- Apply stream entries' counters exactly once, and acknowledge them.
--
-- XACK returns 1 only for the consumer-group delivery that is still pending, so
-- whichever worker gets here first counts an entry; a second delivery (a slow
-- worker whose entry was reclaimed, a retried call) sees 0 and does nothing.
-- Counting and acknowledging in one script means a crash can never leave an
-- entry counted-but-pending or acknowledged-but-uncounted.
--
-- One call handles a run of entries of ONE stream shard, one after the other,
-- exactly as separate calls would (the reply for entry i is the state right
-- after entry i). Batching saves a Lua invocation and a reply per entry.
--
-- An applied entry's id is left in the shard's uncommitted hash under its
-- individual's key until commit.lua commits a score for that entry; a mark
-- that outlives a worker (killed between apply and commit) tells the others
-- which score to repair (worker.py: _repair).
--
-- KEYS[1] stream shard   KEYS[2] shard scopes set   KEYS[3] shard uncommitted hash
-- KEYS[4] shard capped hash (scope token -> events refused by the action cap)
-- then per entry i (base b = 4 + 5*(i-1)):
--   KEYS[b+1] scope pop hash   KEYS[b+2] scope sq hash   KEYS[b+3] scope k hash
--   KEYS[b+4] individual hash  KEYS[b+5] idempotency marker of the event id (per scope)
-- ARGV[1] group  ARGV[2] '1' to return each scope's whole pop hash (staleness 0)
-- ARGV[3] most distinct actions a scope may have (BINORMAL_MAX_ACTIONS)
-- then per entry i (base a = 3 + 6*(i-1)):
--   ARGV[a+1] entry id  ARGV[a+2] action  ARGV[a+3] scope token
--   ARGV[a+4] seconds the event_id's marker lives, '0' when the entry has no
--             event_id (its marker key is then a placeholder, never touched)
--   ARGV[a+5] the marker's value: '<entry id> <fingerprint of id NUL action>'
--   ARGV[a+6] '1' when the individual is excluded from learning (a rule): its
--             own hash is counted, the population's pop/sq/k are only read
--
-- Returns one item per entry: {0} already applied; {2, marker value} duplicate
-- event_id (acked, not counted; the value is the first entry's, so the caller
-- can tell the same event from another one that reuses its id); {3, reason} a
-- key holds another type (not acked, nothing written); {4, actions} the action
-- is new to a scope that already has ARGV[3] actions (not acked, not counted,
-- the scope's count in KEYS[4] raised: the caller dead-letters the entry);
-- {1, C_a, S2_a, K_a, individual hash, pop hash or {}}.
--
-- Redis does not undo a script's earlier writes when a later command fails:
-- an HINCRBY hitting a key of the wrong type (someone else's value under our
-- prefix) after the XACK would leave the entry acknowledged and half counted.
-- So every key an entry writes is type-checked before its XACK (once per key
-- and call), and such an entry is left to the worker's dead-letter path.
local checked = {}
local function wrong(key, want)
  local got = checked[key]
  if got == nil then
    local t = redis.call('TYPE', key)['ok']
    got = (t ~= 'none' and t ~= want) and ('key ' .. key .. ' holds a ' .. t .. ', not a ' .. want) or false
    checked[key] = got
  end
  return got
end
local out = {}
local max_actions = tonumber(ARGV[3])
local n = (#ARGV - 3) / 6
for i = 1, n do
  local b = 4 + 5 * (i - 1)
  local a = 3 + 6 * (i - 1)
  local id = ARGV[a + 1]
  local action = ARGV[a + 2]
  local bad = wrong(KEYS[2], 'set') or wrong(KEYS[3], 'hash') or wrong(KEYS[b + 1], 'hash')
    or wrong(KEYS[b + 2], 'hash') or wrong(KEYS[b + 3], 'hash') or wrong(KEYS[b + 4], 'hash')
    or (ARGV[a + 4] ~= '0' and wrong(KEYS[b + 5], 'string'))
  -- HLEN is O(1); HEXISTS only runs for a scope already at the cap.
  local actions = not bad and redis.call('HLEN', KEYS[b + 1]) or 0
  if not bad and actions >= max_actions and redis.call('HEXISTS', KEYS[b + 1], action) == 0 then
    bad = wrong(KEYS[4], 'hash')
    if not bad then
      redis.call('HINCRBY', KEYS[4], ARGV[a + 3], 1)
      out[i] = {4, actions}
    end
  end
  if bad then
    out[i] = {3, bad}
  elseif out[i] then
    -- refused by the action cap (above)
  elseif redis.call('XACK', KEYS[1], ARGV[1], id) == 0 then
    out[i] = {0}
  else
    local dup = false
    if ARGV[a + 4] ~= '0' then
      if not redis.call('SET', KEYS[b + 5], ARGV[a + 5], 'NX', 'EX', ARGV[a + 4]) then
        dup = true
        out[i] = {2, redis.call('GET', KEYS[b + 5])}
      end
    end
    if not dup then
      local x = redis.call('HINCRBY', KEYS[b + 4], action, 1)
      local c, s2, k
      if ARGV[a + 6] == '1' then
        -- excluded from learning: the population's sums are read, not moved
        c = tonumber(redis.call('HGET', KEYS[b + 1], action) or 0)
        s2 = tonumber(redis.call('HGET', KEYS[b + 2], action) or 0)
        k = tonumber(redis.call('HGET', KEYS[b + 3], action) or 0)
        redis.call('SADD', KEYS[2], ARGV[a + 3])
      else
      c = redis.call('HINCRBY', KEYS[b + 1], action, 1)
      -- count k -> k+1 adds (k+1)^2 - k^2 = 2k+1 = 2x-1 to the sum of squares
      s2 = redis.call('HINCRBY', KEYS[b + 2], action, 2 * x - 1)
      if x == 1 then
        k = redis.call('HINCRBY', KEYS[b + 3], action, 1)
      else
        k = tonumber(redis.call('HGET', KEYS[b + 3], action))
      end
      end -- (the population block above is left unindented: a minimal wrap)
      redis.call('HSET', KEYS[3], KEYS[b + 4], id)
      if c == 1 then
        -- first time this action is seen in the scope (so also its first event)
        redis.call('SADD', KEYS[2], ARGV[a + 3])
      end
      local pop = {}
      if ARGV[2] == '1' then
        pop = redis.call('HGETALL', KEYS[b + 1])
      end
      out[i] = {1, c, s2, k, redis.call('HGETALL', KEYS[b + 4]), pop}
    end
  end
end
return out
