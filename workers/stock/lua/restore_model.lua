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
-- hd:, po:<loc>\31<po>, pd:<loc>\31<po>), with the same names and the same prelude helpers
-- (set_level, earliest_expected), and et: is the earliest expected date of the location's
-- purchase orders; a 0 is an absent field. Only a rebuild into an empty database runs this,
-- with the workers stopped.

local stock_key, loc = KEYS[1], ARGV[1]
set_level(stock_key, 'in:' .. loc, tonumber(ARGV[2]))
set_level(stock_key, 'dm:' .. loc, tonumber(ARGV[3]))
set_level(stock_key, 'qc:' .. loc, tonumber(ARGV[4]))
set_level(stock_key, 'hd:' .. loc, tonumber(ARGV[5]))
local written = 0
for i = 6, #ARGV, 3 do
  local po, out, at = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  if out > 0 then
    redis.call('HSET', stock_key, 'po:' .. loc .. US .. po, int(out), 'pd:' .. loc .. US .. po, int(at))
    written = written + 1
  end
end
set_level(stock_key, 'et:' .. loc, earliest_expected(stock_key, loc))
return written
