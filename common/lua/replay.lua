-- Put one dead letter back into the stream it came from, and delete it.
--
-- deadletter.lua stored the original fields with an "f." prefix next to its
-- own (reason, entry_id, stream, consumer). Here they are XADDed again under
-- their own names, as a new entry, and the dead letter is deleted in the same
-- step: two replays of one dead letter (two operators, a retried call) add it
-- once. A dead letter was never counted (deadletter.lua acknowledges only an
-- entry still pending, i.e. never applied), so the new entry is counted once
-- by the workers, or dead-lettered again if it is still invalid.
--
-- KEYS[1] dead-letter stream of shard s   KEYS[2] stream of shard s
-- ARGV[1] id of the dead letter
-- Returns {1, new entry id}; {0, reason} when there is nothing to replay
-- (already replayed, recorded from another stream, or no fields left).
local got = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #got == 0 then
  return {0, 'not in the dead-letter stream (already replayed?)'}
end
local flat = got[1][2]
local args = {'XADD', KEYS[2], '*'}
local source = nil
for i = 1, #flat, 2 do
  local name = flat[i]
  if name == 'stream' then
    source = flat[i + 1]
  elseif string.sub(name, 1, 2) == 'f.' then
    args[#args + 1] = string.sub(name, 3)
    args[#args + 1] = flat[i + 1]
  end
end
if source ~= KEYS[2] then
  return {0, 'recorded from ' .. tostring(source) .. ', not ' .. KEYS[2]}
end
if #args == 3 then
  return {0, 'no fields to replay (the entry was deleted before it was read)'}
end
local id = redis.call(unpack(args))
redis.call('XDEL', KEYS[1], ARGV[1])
return {1, id}
