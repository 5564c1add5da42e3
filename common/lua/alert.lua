-- Decide, atomically, which results fire an alert rule, and append those alerts to the shard's alert stream.
--
-- One call per shard and batch (common/alerts.py, worker/batch.py): one item per (rule, result) of
-- a scope the rule's pattern matches. Each (rule, individual) has a small state hash
-- {at, entry, armed}: when it last fired (stream-entry ms), the entry that fired it, and whether it
-- has been seen below the rule since. A crossing result fires when there is no state, or when it
-- is armed and the cool-down has passed since `at`; a result below the rule re-arms an existing
-- state. So an individual fires once per crossing, not again until the cool-down has passed AND it
-- crossed again. The entry id makes a repeated item (the same entry evaluated twice) fire nothing.
-- The state expires (PX) after max(cool-down, ARGV[2]) so an idle individual costs nothing forever.
-- Time is the entry's stream-id ms (ARGV[a+4]): the same for every worker, no clock of its own.
--
-- KEYS[1] shard alert stream, then per item i (base k = 1 + 1*(i-1)):
--   KEYS[k+1] state hash of (rule, individual) (keys.alert_state, the scope's shard tag)
-- ARGV[1] MAXLEN of the alert stream (approximate)   ARGV[2] least state lifetime in ms
-- per item i (base a = 2 + 5*(i-1)):
--   ARGV[a+1] '1' when the result crosses the rule, '0' when it is below it
--   ARGV[a+2] cool-down in ms   ARGV[a+3] the entry id of the result
--   ARGV[a+4] the entry's ms (its stream id's time part)
--   ARGV[a+5] the alert's JSON (field `alert` of the stream entry; empty when below)
-- Returns one value per item: the alert's stream id when it fired, else 0.
local t = redis.call('TYPE', KEYS[1])['ok']
if t ~= 'none' and t ~= 'stream' then
  return redis.error_reply('alert stream key ' .. KEYS[1] .. ' holds a ' .. t .. ', not a stream')
end
local out = {}
local n = #KEYS - 1
local least = tonumber(ARGV[2])
for i = 1, n do
  local key = KEYS[1 + i]
  local a = 2 + 5 * (i - 1)
  local cooldown = tonumber(ARGV[a + 2])
  out[i] = 0
  -- One read per item (most are below the rule and have no state): pcall, so a state key holding
  -- another type (WRONGTYPE) skips that item instead of failing the call.
  local st = redis.pcall('HMGET', key, 'at', 'entry', 'armed')
  if type(st) == 'table' and st.err == nil then
    if ARGV[a + 1] == '1' then
      local entry = ARGV[a + 3]
      local now = tonumber(ARGV[a + 4])
      if st[1] == false or (st[2] ~= entry and st[3] == '1' and now - tonumber(st[1]) >= cooldown) then
        out[i] = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'alert', ARGV[a + 5])
        redis.call('HSET', key, 'at', now, 'entry', entry, 'armed', '0')
        redis.call('PEXPIRE', key, math.max(cooldown, least))
      end
    elseif st[1] ~= false and st[3] ~= '1' then
      redis.call('HSET', key, 'armed', '1')
      redis.call('PEXPIRE', key, math.max(cooldown, least))
    end
  end
end
return out
