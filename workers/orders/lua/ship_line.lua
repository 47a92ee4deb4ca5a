-- ship_line: turns reserved units of one order line into shipped ones, once per fulfilment event.
--
-- KEYS[1]  line record, KEYS[2] stock hash, KEYS[3] policy hash (as in reserve_line)
-- ARGV[1]  units shipped
-- ARGV[2]  event_id of the fulfilment
--
-- Returns {'shipped', units, units still held, outcome} | {'not_reserved'}
-- (decoded once as `Shipment` in src/replies.rs: any other reply is an error there)
-- Ships at most what the line still holds: on_hand -= units, reserved -= units.

local record, stock_key, policy_key = KEYS[1], KEYS[2], KEYS[3]
local mark = 'f:' .. ARGV[2]
local stored = redis.call('HGET', record, mark)
if stored then
  local units, left, outcome = string.match(stored, '^(%-?%d+)\31(%-?%d+)\31(.*)$')
  return { 'shipped', units, left, outcome }
end
if redis.call('HGET', record, 'state') ~= 'reserved' then return { 'not_reserved' } end
local l = redis.call('HGET', record, 'loc')
local held = tonumber(redis.call('HGET', record, 'qty')) - tonumber(redis.call('HGET', record, 'shipped'))
local units = math.min(tonumber(ARGV[1]), held)
local outcome = ''
if units > 0 then
  local b = levels(stock_key, policy_key, l)
  redis.call('HINCRBY', stock_key, 'oh:' .. l, -units)
  redis.call('HINCRBY', stock_key, 'rs:' .. l, -units)
  redis.call('HINCRBY', record, 'shipped', units)
  local a = levels(stock_key, policy_key, l)
  outcome = header(now_ms(), 'applied') .. RS ..
    change_record(l, 'shipped', b, a, policy(policy_key, 'thr', l))
end
redis.call('HSET', record, mark, int(units) .. US .. int(held - units) .. US .. outcome)
return { 'shipped', int(units), int(held - units), outcome }
