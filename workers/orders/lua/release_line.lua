-- release_line: gives back what one order line still holds, every part, exactly once.
--
-- KEYS[1]  line record, KEYS[2] stock hash, KEYS[3] policy hash, KEYS[4] channels hash
--          (as in reserve_line)
-- ARGV[1]  TTL of the record once it holds nothing, seconds
-- ARGV[2]  the channel specs the worker knows (see prelude.lua), the order's channel among them
--
-- Returns {'released', outcome} when units were given back now (outcome stored in the record, so
-- a replay returns it again), {'tombstone'} when the line was never reserved (it never will be
-- now), {'nothing'} when it held nothing.
-- (decoded once as `Release` in src/replies.rs: any other reply is an error there)
-- The outcome has one `released` change per part that still held units, then the records of
-- every channel drawing from those locations (recomputed in this step); the order's channel
-- (`ch` in the record) no longer counts those units as its own reservations.

local record, stock_key, policy_key, ats_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local ttl = tonumber(ARGV[1])
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
redis.call('HSET', record, 'state', 'released')
redis.call('EXPIRE', record, ttl)
if state ~= 'reserved' then return { 'nothing' } end
local channel = redis.call('HGET', record, 'ch') or ''
local ch = load_channels(ats_key, ARGV[2])
local changes, changed = {}, {}
for _, p in ipairs(read_parts(record)) do
  local left = p.qty - p.shipped
  if left > 0 then
    local b, thr = levels_and_threshold(stock_key, policy_key, p.loc)
    redis.call('HINCRBY', stock_key, 'rs:' .. p.loc, -left)
    local a = levels(stock_key, policy_key, p.loc)
    changes[#changes + 1] = change_record(p.loc, 'released', b, a, thr)
    changed[p.loc] = true
    if channel ~= '' then add_own_reserved(ch, channel, p.loc, -left) end
  end
end
if #changes == 0 then return { 'nothing' } end
local channel_records = {}
settle_channels(stock_key, policy_key, ch, changed, channel_records, nil)
local outcome = line_outcome(changes, channel_records)
redis.call('HSET', record, 'ro', outcome)
return { 'released', outcome }
