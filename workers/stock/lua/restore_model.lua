-- restore_model: writes one location's incoming and unsellable units and its open purchase
-- orders as the ledger left them (`stockctl rebuild`).
--
-- KEYS[1]  stock hash   <prefix>:{<sku>}:stock
-- ARGV[1]  location
-- ARGV[2]  incoming
-- ARGV[3]  damaged
-- ARGV[4]  quality control
-- ARGV[5]  held
-- ARGV[6..] triples: purchase order, units still outstanding (> 0), expected date (ms)
--
-- Returns the number of purchase orders written.
--
-- Invariant: the fields are the ones apply_stock.lua's apply_model writes (in:, et:, dm:, qc:,
-- hd:, po:<loc>\31<po>, pd:<loc>\31<po>), with the same names, and et: is the earliest expected
-- date of the purchase orders written; a 0 is an absent field. Only a rebuild into an empty
-- database runs this, with the workers stopped.

local stock_key, loc = KEYS[1], ARGV[1]
local function put(field, value)
  value = tonumber(value)
  if value == 0 then
    redis.call('HDEL', stock_key, field)
  else
    redis.call('HSET', stock_key, field, int(value))
  end
end
put('in:' .. loc, ARGV[2])
put('dm:' .. loc, ARGV[3])
put('qc:' .. loc, ARGV[4])
put('hd:' .. loc, ARGV[5])
local earliest, written = 0, 0
for i = 6, #ARGV, 3 do
  local po, out, at = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  if out > 0 then
    redis.call('HSET', stock_key, 'po:' .. loc .. US .. po, int(out), 'pd:' .. loc .. US .. po, int(at))
    if earliest == 0 or at < earliest then earliest = at end
    written = written + 1
  end
end
put('et:' .. loc, earliest)
return written
