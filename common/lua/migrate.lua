-- Convert individuals of one scope from key layout 1 to layout 2 (binormal migrate).
--
-- Layout 1 kept an individual's counts under 'i:<id>' by action name, the
-- event count of its committed score in the scope's 'ver' hash, and its
-- uncommitted mark as '<entry id>'. Layout 2 keys the counts under 'c:<id>'
-- by the scope's action numbers (an/na, as apply.lua assigns them), keeps no
-- ver (commit.lua reads the count from the mark, else from the counts), and
-- marks '<entry id> <L>'. Each individual moves atomically: counts added to
-- the new hash (HINCRBY, so a rerun after a partial run adds nothing twice:
-- the old key is deleted in the same step), its mark rewritten, its ver field
-- dropped. Rerunning is harmless: an individual without an old key is skipped.
--
-- KEYS[1] shard uncommitted hash   KEYS[2] scope ver hash (layout 1)
-- KEYS[3] scope an hash   KEYS[4] scope na hash
-- then per individual i (base b = 4 + 2*(i-1)):
--   KEYS[b+1] its layout-1 counts hash   KEYS[b+2] its layout-2 counts hash
-- per individual i (base a = 1*(i-1)):
--   ARGV[a+1] its id (its field in the ver hash)
-- Returns the number of individuals moved.
for _, key in ipairs({KEYS[1], KEYS[2], KEYS[3], KEYS[4]}) do
  local t = redis.call('TYPE', key)['ok']
  if t ~= 'none' and t ~= 'hash' then
    return redis.error_reply('key ' .. key .. ' holds a ' .. t .. ', not a hash')
  end
end
local moved = 0
for i = 1, #ARGV do
  local old, new = KEYS[4 + 2 * (i - 1) + 1], KEYS[4 + 2 * (i - 1) + 2]
  local t = redis.call('TYPE', old)['ok']
  local tn = redis.call('TYPE', new)['ok']
  if t == 'hash' and (tn == 'none' or tn == 'hash') then
    local counts = redis.call('HGETALL', old)
    for j = 1, #counts, 2 do
      local action = counts[j]
      local num = redis.call('HGET', KEYS[3], action)
      if not num then
        num = redis.call('HLEN', KEYS[3]) + 1
        redis.call('HSET', KEYS[3], action, num)
        redis.call('HSET', KEYS[4], num, action)
      end
      redis.call('HINCRBY', new, num, counts[j + 1])
    end
    local mark = redis.call('HGET', KEYS[1], old)
    if mark then
      local last = redis.call('HGET', KEYS[2], ARGV[i]) or '0'
      redis.call('HDEL', KEYS[1], old)
      redis.call('HSET', KEYS[1], new, string.match(mark, '^(%S+)') .. ' ' .. last)
    end
    redis.call('HDEL', KEYS[2], ARGV[i])
    redis.call('DEL', old)
    moved = moved + 1
  end
end
return moved
