-- Decide, atomically, which results fire an alert rule, and append those alerts to the shard's alert stream.
--
-- One call per shard and batch (common/alertcheck.py, worker/batch.py): one check per result of a
-- scope some rule's pattern matches. Each individual has at most one state hash (keys.alert_fired),
-- one field per rule that fired for it: '<at> <entry> <armed>', when it last fired (stream-entry ms),
-- the entry that fired it, and whether it has been seen below the rule since (1) or not (0). No
-- field (or no hash) means armed: most pairs never fire, so they cost nothing.
-- A check lists the rules its result crosses (the worker evaluated the thresholds); a listed rule
-- fires when it has no field, or when the field is armed, names another entry and the cool-down
-- has passed since `at`. Every other field of the hash is re-armed: the result is below that rule
-- (or the rule no longer matches the scope, where arming changes nothing). So an individual fires
-- once per crossing, not again until the cool-down has passed AND it crossed again; the entry id
-- makes a repeated check (the same entry evaluated twice) fire nothing. A check that crosses no
-- rule costs one EXISTS when the individual never fired (the common case).
-- The hash expires (PX) at least max(cool-down, ARGV[2]) after its last fire, so an idle
-- individual costs nothing forever. Time is the entry's stream-id ms: the same for every worker.
--
-- KEYS[1] shard alert stream, then per check i (base k = 1 + 1*(i-1)):
--   KEYS[k+1] the individual's state hash (keys.alert_fired, the scope's shard tag)
-- ARGV[1] MAXLEN of the alert stream (approximate)   ARGV[2] least state lifetime in ms
-- ARGV[3..] the checks, one after the other: n (the rules the result crosses), then when n > 0
--   the entry id, the entry's ms (its stream id's time part), and n times: the rule's field name,
--   its cool-down in ms, the alert's JSON (field `alert` of the stream entry).
-- Returns one value per check: 0 when nothing fired, else one value per crossed rule (its alert's
-- stream id when it fired, else 0).
local t = redis.call('TYPE', KEYS[1])['ok']
if t ~= 'none' and t ~= 'stream' then
  return redis.error_reply('alert stream key ' .. KEYS[1] .. ' holds a ' .. t .. ', not a stream')
end
local out = {}
local least = tonumber(ARGV[2])
local p = 3
for i = 1, #KEYS - 1 do
  local key = KEYS[1 + i]
  local n = tonumber(ARGV[p])
  local entry, stamp, now, base = nil, nil, 0, p + 3
  if n > 0 then
    entry = ARGV[p + 1]
    stamp = ARGV[p + 2] -- kept as text: Lua 5.1 prints numbers past 14 digits in e-notation
    now = tonumber(stamp)
    p = p + 3 + 3 * n
  else
    p = p + 1
  end
  out[i] = 0
  -- EXISTS is O(1) on any type; a key holding another type (WRONGTYPE on HGETALL) skips the
  -- check instead of failing the call (pcall).
  if n > 0 or redis.call('EXISTS', key) == 1 then
    local flat = redis.pcall('HGETALL', key)
    if type(flat) == 'table' and flat.err == nil then
      local state = {}
      for j = 1, #flat, 2 do
        state[flat[j]] = flat[j + 1]
      end
      local crossed = {}
      local fired = {}
      local any = false
      local ttl = 0
      for c = 0, n - 1 do
        local rule = ARGV[base + 3 * c]
        local cooldown = tonumber(ARGV[base + 3 * c + 1])
        crossed[rule] = true
        fired[c + 1] = 0
        local at, last, armed = nil, nil, nil
        if state[rule] then
          at, last, armed = string.match(state[rule], '^(%d+) (%S+) ([01])$')
        end
        -- An unreadable field (not ours) counts as no state.
        if at == nil or (last ~= entry and armed == '1' and now - tonumber(at) >= cooldown) then
          fired[c + 1] = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'alert', ARGV[base + 3 * c + 2])
          redis.call('HSET', key, rule, stamp .. ' ' .. entry .. ' 0')
          ttl = math.max(ttl, cooldown, least)
          any = true
        end
      end
      for rule, value in pairs(state) do
        if not crossed[rule] then
          local at, last, armed = string.match(value, '^(%d+) (%S+) ([01])$')
          if armed == '0' then
            -- Re-armed: no new lifetime needed, the fire that wrote it set one past its cool-down.
            redis.call('HSET', key, rule, at .. ' ' .. last .. ' 1')
          end
        end
      end
      -- One hash holds every rule's field: extend its lifetime, never shorten it (PTTL is -1
      -- without a lifetime, -2 for no key; Redis 6.2 has no PEXPIRE ... GT).
      if ttl > 0 and redis.call('PTTL', key) < ttl then
        redis.call('PEXPIRE', key, ttl)
      end
      if any then
        out[i] = fired
      end
    end
  end
end
return out
