-- release_line: gives back what one order line still holds, exactly once.
--
-- KEYS[1]  line record, KEYS[2] stock hash, KEYS[3] policy hash (as in reserve_line)
-- ARGV[1]  TTL of the record once it holds nothing, seconds
--
-- Returns {'released', outcome} when units were given back now (outcome stored in the record, so
-- a replay returns it again), {'tombstone'} when the line was never reserved (it never will be
-- now), {'nothing'} when it held nothing.
-- (decoded once as `Release` in src/replies.rs: any other reply is an error there)

local record, stock_key, policy_key, ttl = KEYS[1], KEYS[2], KEYS[3], tonumber(ARGV[1])
local state = redis.call('HGET', record, 'state')
if state == 'released' then
  local outcome = redis.call('HGET', record, 'ro')
  if outcome then return { 'released', outcome } end
  return { 'nothing' }
end
if not state then
  redis.call('HSET', record, 'state', 'released')
  redis.call('EXPIRE', record, ttl)
  return { 'tombstone' }
end
if state ~= 'reserved' then
  redis.call('HSET', record, 'state', 'released')
  redis.call('EXPIRE', record, ttl)
  return { 'nothing' }
end
local l = redis.call('HGET', record, 'loc')
local left = tonumber(redis.call('HGET', record, 'qty')) - tonumber(redis.call('HGET', record, 'shipped'))
redis.call('HSET', record, 'state', 'released')
redis.call('EXPIRE', record, ttl)
if left <= 0 then return { 'nothing' } end
local b = levels(stock_key, policy_key, l)
redis.call('HINCRBY', stock_key, 'rs:' .. l, -left)
local a = levels(stock_key, policy_key, l)
local outcome = header(now_ms(), 'applied') .. RS ..
  change_record(l, 'released', b, a, policy(policy_key, 'thr', l))
redis.call('HSET', record, 'ro', outcome)
return { 'released', outcome }
