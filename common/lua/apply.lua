-- Apply one stream entry's counters exactly once, and acknowledge it.
--
-- XACK returns 1 only for the consumer-group delivery that is still pending, so
-- whichever worker gets here first counts the entry; a second delivery (a slow
-- worker whose entry was reclaimed, a retried pipeline) sees 0 and does nothing.
-- Counting and acknowledging in one script means a crash can never leave an
-- entry counted-but-pending or acknowledged-but-uncounted.
--
-- KEYS[1] stream shard    KEYS[2] scope pop hash   KEYS[3] scope sq hash
-- KEYS[4] scope k hash    KEYS[5] individual hash  KEYS[6] shard scopes set
-- KEYS[7] idempotency marker of the event id (ignored when ARGV[6] ~= '1')
-- ARGV[1] group  ARGV[2] entry id  ARGV[3] action  ARGV[4] scope token
-- ARGV[5] '1' to return the scope's whole pop hash (snapshot staleness 0)
-- ARGV[6] '1' when the entry carries an event_id   ARGV[7] marker TTL (s)
--
-- Returns {0} already applied; {2, first_entry_id} duplicate event_id (acked,
-- not counted); {1, C_a, S2_a, K_a, individual hash, pop hash or {}}.
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then
  return {0}
end
if ARGV[6] == '1' then
  if not redis.call('SET', KEYS[7], ARGV[2], 'NX', 'EX', ARGV[7]) then
    return {2, redis.call('GET', KEYS[7])}
  end
end
local a = ARGV[3]
local x = redis.call('HINCRBY', KEYS[5], a, 1)
local c = redis.call('HINCRBY', KEYS[2], a, 1)
-- count k -> k+1 adds (k+1)^2 - k^2 = 2k+1 = 2x-1 to the sum of squares
local s2 = redis.call('HINCRBY', KEYS[3], a, 2 * x - 1)
local k
if x == 1 then
  k = redis.call('HINCRBY', KEYS[4], a, 1)
else
  k = tonumber(redis.call('HGET', KEYS[4], a))
end
if c == 1 then
  -- first time this action is seen in the scope (so also the scope's first event)
  redis.call('SADD', KEYS[6], ARGV[4])
end
local pop = {}
if ARGV[5] == '1' then
  pop = redis.call('HGETALL', KEYS[2])
end
return {1, c, s2, k, redis.call('HGETALL', KEYS[5]), pop}
