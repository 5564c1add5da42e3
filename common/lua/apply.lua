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
-- which score to repair (worker.py: _repair). The mark is '<entry id> <L>',
-- L the event count of the individual's committed score (commit.lua): kept
-- from the mark before, else the count before this event (no mark means the
-- individual's last applied entry was committed, or it is new).
--
-- The individual's hash is keyed by the scope's action numbers (an: action ->
-- number, na: number -> action; a new action gets HLEN + 1, and numbers are
-- never reused), so a long action name is stored once per scope; the reply
-- gives the counts by action name.
--
-- KEYS[1] stream shard   KEYS[2] shard scopes set   KEYS[3] shard uncommitted hash
-- KEYS[4] shard capped hash (scope token -> events refused by the action cap)
-- then per entry i (base b = 4 + 12*(i-1)):
--   KEYS[b+1] scope pop hash   KEYS[b+2] scope sq hash   KEYS[b+3] scope k hash
--   KEYS[b+4] individual hash (action number -> count)
--   KEYS[b+5] idempotency marker of the event id (per scope)
--   KEYS[b+6] scope raw hash (action -> raw sum s1; only written when ARGV[4] > 0)
--   KEYS[b+7] scope dom hash (events, top, top_n, flag, logged: the dominance flag; read once
--             per scope and call, kept in Lua, written once at the end of the call)
--   KEYS[b+8] scope last-seen zset (id -> Redis TIME ms of its last applied entry;
--             only written when ARGV[7] is '1', retention on: expire.lua reads it)
--   KEYS[b+9] scope an hash (action -> number)   KEYS[b+10] scope na hash (number -> action)
--   KEYS[b+11] the individual's recent list (its last K action numbers, newest first)
--   KEYS[b+12] the individual's window hash (action number -> count in its last
--              min(K, n // 2) events, and 'n': its event count when it was kept);
--              both only touched when ARGV[8] > 0; with ARGV[8] = 0 the caller passes the
--              individual's hash (KEYS[b+4]) in their place: no new key, never touched
-- ARGV[1] group  ARGV[2] '1' to return each scope's whole pop hash (staleness 0)
-- ARGV[3] most distinct actions a scope may have (BINORMAL_MAX_ACTIONS)
-- ARGV[4] weight cap W (BINORMAL_WEIGHT_CAP; 0 = off)
-- ARGV[5] dominance share (BINORMAL_DOMINANCE_SHARE)
-- ARGV[6] raw events a scope needs before it is flagged (BINORMAL_DOMINANCE_MIN_EVENTS)
-- ARGV[7] '1' when retention is on (BINORMAL_IDLE_TTL_S or BINORMAL_MAX_INDIVIDUALS): keep KEYS[b+8]
-- ARGV[8] the recent window K (BINORMAL_RECENT_WINDOW; 0 = off: KEYS[b+11], KEYS[b+12] untouched)
-- then per entry i (base a = 8 + 7*(i-1)):
--   ARGV[a+1] entry id  ARGV[a+2] action  ARGV[a+3] scope token
--   ARGV[a+4] seconds the event_id's marker lives, '0' when the entry has no
--             event_id (its marker key is then a placeholder, never touched)
--   ARGV[a+5] the marker's value: '<entry id> <fingerprint of id NUL action>'
--   ARGV[a+6] the individual's id (kept in the dom hash when it is the scope's top)
--   ARGV[a+7] '1' when the individual is excluded from learning (a rule): its
--             own hash is counted; the population's pop/raw/sq/k are only read
--             and the scope's dominance hash is left alone
--
-- Returns one item per entry: {0} already applied; {2, marker value} duplicate
-- event_id (acked, not counted; the value is the first entry's, so the caller
-- can tell the same event from another one that reuses its id); {3, reason} a
-- key holds another type (not acked, nothing written); {4, actions} the action
-- is new to a scope that already has ARGV[3] actions (not acked, not counted,
-- the scope's count in KEYS[4] raised: the caller dead-letters the entry);
-- {1, s1_a, S2_a, K_a, counts, pop hash or {}, C_a, dominated[, window]} where counts are
-- the individual's (flat action name, count pairs, as HGETALL gives them),
-- s1_a is the action's raw sum (C_a itself when W = 0) and dominated is 0, or
-- {top id, its raw events, the scope's raw events} the first time the scope is
-- flagged (HSETNX 'logged': the worker logs it once, across restarts); window
-- (only when ARGV[8] > 0) the counts of its recent window by action name, flat.
--
-- Recent window (ARGV[8] = K > 0; binormal/drift.py: window_step is the rule): the
-- window of an individual with n events is its last k = min(K, n // 2) events. Per
-- event its action number is LPUSHed and HINCRBYed; the window's oldest events
-- past the new k leave it (LINDEX, HINCRBY -1, HDEL at 0: one when k does not grow,
-- none when it does), then LTRIM 0 K-1. k is also bounded by the list's length, and
-- the window restarts (DEL) when its 'n' is not the individual's events before this
-- one (it was counted while K was 0, or before the window existed): so a window is
-- always exactly the counts of its list's first k items, and a smaller K takes
-- effect at once (several oldest leave), a larger one as the list grows.
--
-- Dominance guard (docs/quality.md): with W > 0 an individual of n raw events
-- contributes c(x) = x while n <= W, else x'_a = floor((2 x_a W + n) / (2n))
-- (normalise(x, W), round half up) to the pop hash, which moves by
-- c(after) - c(before) over the individual's own actions only. A pop field may
-- reach 0 and stays (the action remains known to the scope and the action cap).
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
--#include share_of
local out = {}
local numbers = {}  -- per scope an key: {num = action -> number, name = number -> action} read in this call
local doms, dom_order = {}, {}  -- per scope dom key: its fields as this call leaves them (written at the end)
local max_actions = tonumber(ARGV[3])
local w = tonumber(ARGV[4])
local dom_share = tonumber(ARGV[5])
local dom_min = tonumber(ARGV[6])
local window = tonumber(ARGV[8])
-- >>> retention (setup): one TIME per call, shared by its entries >>>
-- Scripts replicate their effects (Redis 5+ default, the only mode of 7), so
-- a TIME before writes is allowed; the last-seen stamp is Redis's clock at the
-- apply, not the entry's stream time, so an old backlog is not idle on arrival.
local retain = ARGV[7] == '1'
local now_ms = 0
if retain then
  local t = redis.call('TIME')
  now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- <<< retention (setup) <<<
local entries = (#ARGV - 8) / 7
for i = 1, entries do
  local b = 4 + 12 * (i - 1)
  local a = 8 + 7 * (i - 1)
  local id = ARGV[a + 1]
  local action = ARGV[a + 2]
  local bad = wrong(KEYS[2], 'set') or wrong(KEYS[3], 'hash') or wrong(KEYS[b + 1], 'hash')
    or wrong(KEYS[b + 2], 'hash') or wrong(KEYS[b + 3], 'hash') or wrong(KEYS[b + 4], 'hash')
    or (ARGV[a + 4] ~= '0' and wrong(KEYS[b + 5], 'string'))
    or (w > 0 and wrong(KEYS[b + 6], 'hash')) or wrong(KEYS[b + 7], 'hash')
    or (retain and wrong(KEYS[b + 8], 'zset'))
    or wrong(KEYS[b + 9], 'hash') or wrong(KEYS[b + 10], 'hash')
    or (window > 0 and (wrong(KEYS[b + 11], 'list') or wrong(KEYS[b + 12], 'hash')))
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
      -- >>> action number, the individual's counts (by name) >>>
      -- numbers are never reassigned, so what this call read of a scope's an/na stays true
      local known = numbers[KEYS[b + 9]]
      if not known then
        known = {num = {}, name = {}}
        numbers[KEYS[b + 9]] = known
      end
      local num = known.num[action] or redis.call('HGET', KEYS[b + 9], action)
      if not num then
        num = tostring(redis.call('HLEN', KEYS[b + 9]) + 1)
        redis.call('HSET', KEYS[b + 9], action, num)
        redis.call('HSET', KEYS[b + 10], num, action)
      end
      known.num[action], known.name[num] = num, action
      local x = redis.call('HINCRBY', KEYS[b + 4], num, 1)
      local ind = redis.call('HGETALL', KEYS[b + 4])
      local unnamed = {}
      local total = 0  -- the individual's raw events
      for j = 1, #ind, 2 do
        if not known.name[ind[j]] then
          unnamed[#unnamed + 1] = ind[j]
        end
        total = total + tonumber(ind[j + 1])
      end
      -- HMGET in slices: unpack() of more than ~8000 values overflows Lua's C stack
      for from = 1, #unnamed, 1000 do
        local got = redis.call('HMGET', KEYS[b + 10], unpack(unnamed, from, math.min(from + 999, #unnamed)))
        for j = 1, #got do
          known.name[unnamed[from + j - 1]] = got[j]
        end
      end
      for j = 1, #ind, 2 do
        ind[j] = known.name[ind[j]]
      end
      -- <<< action number (end) <<<
      -- >>> recent window (ARGV[8] > 0) >>>
      local recent = nil
      if window > 0 then
        local rl, rw = KEYS[b + 11], KEYS[b + 12]
        if tonumber(redis.call('HGET', rw, 'n') or '0') ~= total - 1 then
          redis.call('DEL', rl, rw)  -- events counted without it (or none yet): it starts here
        end
        local len = redis.call('LPUSH', rl, num)
        redis.call('HINCRBY', rw, num, 1)
        redis.call('HSET', rw, 'n', total)  -- first: the hash is never emptied below (n stays)
        local held = redis.call('HGETALL', rw)
        local counts, size = {}, 0  -- number -> count; size: the list's first 'size' items, this one included
        for j = 1, #held, 2 do
          if held[j] ~= 'n' then
            local c = tonumber(held[j + 1])
            counts[held[j]] = c
            size = size + c
          end
        end
        local k = math.min(window, math.floor(total / 2), len)
        while size > k do
          size = size - 1
          local left = redis.call('LINDEX', rl, size)  -- 0 is the new action, so the oldest of the window
          if counts[left] == 1 then
            counts[left] = nil
            redis.call('HDEL', rw, left)
          else
            counts[left] = counts[left] - 1
            redis.call('HINCRBY', rw, left, -1)
          end
        end
        if len > window then
          redis.call('LTRIM', rl, 0, window - 1)
        end
        recent = {}
        for f, c in pairs(counts) do
          recent[#recent + 1] = known.name[f] or ('#' .. f)  -- always named: its numbers are the individual's
          recent[#recent + 1] = c
        end
      end
      -- <<< recent window (end) <<<
      local c, s1, s2, k
      local dominated = 0
      if ARGV[a + 7] == '1' then
        -- excluded from learning (a rule): the population's sums are read, not
        -- moved, and the individual does not weigh in the scope's dominance
        c = tonumber(redis.call('HGET', KEYS[b + 1], action) or 0)
        s1 = c
        if w > 0 then
          s1 = tonumber(redis.call('HGET', KEYS[b + 6], action) or 0)
        end
        s2 = tonumber(redis.call('HGET', KEYS[b + 2], action) or 0)
        k = tonumber(redis.call('HGET', KEYS[b + 3], action) or 0)
        redis.call('SADD', KEYS[2], ARGV[a + 3])
      else
        -- >>> population update: pop (C_a), raw (s1), sq (S2_a), k (K_a) >>>
        if w == 0 or total <= w then
          c = redis.call('HINCRBY', KEYS[b + 1], action, 1)
        else
          -- c(after) - c(before) over the individual's own actions (before: one
          -- event fewer of this action); only changed fields are written, but
          -- the event's action always is (so a new action gets its 0 field).
          local m = total - 1
          for j = 1, #ind, 2 do
            local f = ind[j]
            local xa = tonumber(ind[j + 1])
            local xb = xa
            if f == action then
              xb = xa - 1
            end
            local before = xb
            if m > w then
              before = share_of(xb, w, m)
            end
            local delta = share_of(xa, w, total) - before
            if f == action then
              c = redis.call('HINCRBY', KEYS[b + 1], f, delta)
            elseif delta ~= 0 then
              redis.call('HINCRBY', KEYS[b + 1], f, delta)
            end
          end
        end
        -- action z-scores stay over raw counts: s1 is kept apart once pop is capped
        s1 = c
        if w > 0 then
          s1 = redis.call('HINCRBY', KEYS[b + 6], action, 1)
        end
        -- count k -> k+1 adds (k+1)^2 - k^2 = 2k+1 = 2x-1 to the sum of squares
        s2 = redis.call('HINCRBY', KEYS[b + 2], action, 2 * x - 1)
        if x == 1 then
          k = redis.call('HINCRBY', KEYS[b + 3], action, 1)
        else
          k = tonumber(redis.call('HGET', KEYS[b + 3], action))
        end
        -- <<< population update (end) <<<
        -- >>> dominance: raw events of the scope and its top individual >>>
        local dm = doms[KEYS[b + 7]]
        if not dm then
          local d = redis.call('HMGET', KEYS[b + 7], 'events', 'top_n', 'top', 'flag', 'logged')
          dm = {key = KEYS[b + 7], events = tonumber(d[1]) or 0, top_n = tonumber(d[2]) or 0, top = d[3],
                flag = d[4], was_flag = d[4], logged = d[5], was_logged = d[5]}
          doms[KEYS[b + 7]] = dm
          dom_order[#dom_order + 1] = dm
        end
        dm.events = dm.events + 1
        if total > dm.top_n then
          dm.top_n, dm.top = total, ARGV[a + 6]
        end
        -- the same double comparison as engine.py: is_dominated
        if dm.events >= dom_min and dm.top_n / dm.events > dom_share then
          dm.flag = dm.top
          if not dm.logged then
            dm.logged = dm.top
            dominated = {dm.top, dm.top_n, dm.events}
          end
        else
          dm.flag = false
        end
        -- <<< dominance (end) <<<
      end
      local mark = redis.call('HGET', KEYS[3], KEYS[b + 4])
      local committed = mark and string.match(mark, ' (%d+)$') or (total - 1)
      redis.call('HSET', KEYS[3], KEYS[b + 4], id .. ' ' .. committed)
      -- >>> retention: last-seen index (excluded individuals too: they have counts) >>>
      if retain then
        -- GT: a stamp never goes back (an apply of an earlier TIME cannot land later,
        -- but a clock step back on the server could)
        redis.call('ZADD', KEYS[b + 8], 'GT', now_ms, ARGV[a + 6])
      end
      -- <<< retention (end) <<<
      if s1 == 1 then
        -- first time this action is seen in the scope (so also its first event)
        redis.call('SADD', KEYS[2], ARGV[a + 3])
      end
      local pop = {}
      if ARGV[2] == '1' then
        pop = redis.call('HGETALL', KEYS[b + 1])
      end
      if recent then
        out[i] = {1, s1, s2, k, ind, pop, c, dominated, recent}
      else
        out[i] = {1, s1, s2, k, ind, pop, c, dominated}
      end
    end
  end
end
-- The dominance hashes, read once per scope above and kept in Lua since: written once per scope.
for _, dm in ipairs(dom_order) do
  if dm.top then
    redis.call('HSET', dm.key, 'events', dm.events, 'top_n', dm.top_n, 'top', dm.top)
  else
    redis.call('HSET', dm.key, 'events', dm.events, 'top_n', dm.top_n)
  end
  if dm.flag and dm.flag ~= dm.was_flag then
    redis.call('HSET', dm.key, 'flag', dm.flag)
  elseif not dm.flag and dm.was_flag then
    redis.call('HDEL', dm.key, 'flag')
  end
  if dm.logged and not dm.was_logged then
    redis.call('HSET', dm.key, 'logged', dm.logged)
  end
end
return out
