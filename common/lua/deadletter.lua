-- Move an entry to the dead-letter stream and acknowledge it, atomically.
--
-- Only the delivery that XACK still finds pending writes the dead letter, so an
-- entry is dead-lettered once even if two workers judge it at the same time.
--
-- KEYS[1] stream shard   KEYS[2] dead-letter stream (same hash tag)
-- ARGV[1] group  ARGV[2] entry id  ARGV[3] reason  ARGV[4] consumer
-- ARGV[5] MAXLEN of the dead-letter stream (approximate)
-- ARGV[6..] the entry's original field/value pairs
-- Returns 1 when written, 0 when the entry was already acknowledged.
-- Checked before the XACK: Redis does not undo a script's earlier writes when
-- a later command fails, so an XADD failing after the XACK would lose the entry.
local t = redis.call('TYPE', KEYS[2])['ok']
if t ~= 'none' and t ~= 'stream' then
  return redis.error_reply('dead-letter key ' .. KEYS[2] .. ' holds a ' .. t .. ', not a stream')
end
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then
  return 0
end
local args = {'XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*',
  'reason', ARGV[3], 'entry_id', ARGV[2], 'stream', KEYS[1], 'consumer', ARGV[4]}
for i = 6, #ARGV do
  -- original fields are prefixed so they can never shadow the fields above
  if i % 2 == 0 then
    args[#args + 1] = 'f.' .. ARGV[i]
  else
    args[#args + 1] = ARGV[i]
  end
end
redis.call(unpack(args))
return 1
