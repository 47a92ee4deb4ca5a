-- ship_line: turns reserved units of one order line into shipped ones, once per fulfilment event.
--
-- KEYS[1]  line record, KEYS[2] stock hash, KEYS[3] policy hash, KEYS[4] channels hash
--          (as in reserve_line)
-- ARGV[1]  units shipped
-- ARGV[2]  event_id of the fulfilment
-- ARGV[3]  the channel specs the worker knows (see prelude.lua), the order's channel among them
--
-- Returns {'shipped', units, units still held or backordered, outcome} | {'not_reserved'}
-- (decoded once as `Shipment` in src/replies.rs: any other reply is an error there)
-- Ships at most what the line still holds, from its parts in allocation order: per part,
-- on_hand -= units, reserved -= units, one `shipped` change naming the part's location. Every
-- channel drawing from those locations is recomputed in the same step. A backordered line ships
-- only what was filled; the units it still waits for count as left (the order is not complete).

local record, stock_key, policy_key, ats_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local mark = 'f:' .. ARGV[2]
local stored = redis.call('HGET', record, mark)
if stored then
  local units, left, outcome = string.match(stored, '^(%-?%d+)\31(%-?%d+)\31(.*)$')
  return { 'shipped', units, left, outcome }
end
if redis.call('HGET', record, 'state') ~= 'reserved' then return { 'not_reserved' } end
local parts = read_parts(record)
local held = 0
for _, p in ipairs(parts) do held = held + p.qty - p.shipped end
local units = math.min(tonumber(ARGV[1]), held)
local outcome = ''
if units > 0 then
  local channel = redis.call('HGET', record, 'ch') or ''
  local ch = load_channels(ats_key, ARGV[3])
  local changes, changed, left = {}, {}, units
  for _, p in ipairs(parts) do
    local t = math.min(left, p.qty - p.shipped)
    if t > 0 then
      local b, thr = levels_and_threshold(stock_key, policy_key, p.loc)
      redis.call('HINCRBY', stock_key, 'oh:' .. p.loc, -t)
      redis.call('HINCRBY', stock_key, 'rs:' .. p.loc, -t)
      local a = levels(stock_key, policy_key, p.loc)
      changes[#changes + 1] = change_record(p.loc, 'shipped', b, a, thr)
      changed[p.loc] = true
      p.shipped = p.shipped + t
      left = left - t
      if channel ~= '' then add_own_reserved(ch, channel, p.loc, -t) end
    end
  end
  redis.call('HINCRBY', record, 'shipped', units)
  redis.call('HSET', record, 'parts', encode_parts(parts))
  local channel_records = {}
  settle_channels(stock_key, policy_key, ch, changed, channel_records, nil)
  outcome = line_outcome(changes, channel_records)
end
local left = held - units + num(redis.call('HGET', record, 'bo'))
redis.call('HSET', record, mark, int(units) .. US .. int(left) .. US .. outcome)
return { 'shipped', int(units), int(left), outcome }
