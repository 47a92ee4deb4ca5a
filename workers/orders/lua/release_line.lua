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
-- A line still backordered leaves its SKU's queue: its location's change (added, with no level
-- moved, if the line held nothing there) carries the backorder record with 0 units waiting.
-- The units given back fill the lines backordered at their locations, in order of placement, in
-- the same step (`backorder_filled` changes with their backorder records).

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
local bo = redis.call('HMGET', record, 'bo', 'bol', 'oid', 'lid', 'bor', 'boe')
local waiting = tonumber(bo[1]) or 0
-- Where the line still waits (nil when it does not: never backordered, or filled whole).
local waits_at = nil
if waiting > 0 then
  waits_at = bo[2]
  redis.call('ZREM', backorder_queue(stock_key), record)
  redis.call('HSET', record, 'bo', 0)
end
for _, p in ipairs(read_parts(record)) do
  local left = p.qty - p.shipped
  if left > 0 then
    local b, thr = levels_and_threshold(stock_key, policy_key, p.loc)
    redis.call('HINCRBY', stock_key, 'rs:' .. p.loc, -left)
    local a = levels(stock_key, policy_key, p.loc)
    changes[#changes + 1] = change_record(p.loc, 'released', b, a, thr)
    if waits_at == p.loc then
      set_level(stock_key, 'bo:' .. p.loc, num(redis.call('HGET', stock_key, 'bo:' .. p.loc)) - waiting)
      changes[#changes + 1] = backorder_record(bo[3], bo[4], 0, 0, tonumber(bo[6]) or 0, bo[5])
      waits_at = nil
    end
    changed[p.loc] = true
    if channel ~= '' then add_own_reserved(ch, channel, p.loc, -left) end
  end
end
if waits_at then
  -- Nothing held where the line waited: its removal from the queue is still recorded.
  local l = levels(stock_key, policy_key, waits_at)
  set_level(stock_key, 'bo:' .. waits_at, num(redis.call('HGET', stock_key, 'bo:' .. waits_at)) - waiting)
  changes[#changes + 1] = change_record(waits_at, 'released', l, l, policy(policy_key, 'thr', waits_at))
  changes[#changes + 1] = backorder_record(bo[3], bo[4], 0, 0, tonumber(bo[6]) or 0, bo[5])
  changed[waits_at] = true
end
if #changes == 0 then return { 'nothing' } end
local released_locs = {}
for l in pairs(changed) do released_locs[#released_locs + 1] = l end
table.sort(released_locs)
for _, l in ipairs(released_locs) do fill_backorders(stock_key, policy_key, l, ch, changes) end
local channel_records = {}
settle_channels(stock_key, policy_key, ch, changed, channel_records, nil)
local outcome = line_outcome(changes, channel_records)
redis.call('HSET', record, 'ro', outcome)
return { 'released', outcome }
