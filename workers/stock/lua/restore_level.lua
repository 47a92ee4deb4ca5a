-- restore_level: writes one location's levels as the ledger sums them (`stockctl rebuild`).
--
-- KEYS[1]  stock hash   <prefix>:{<sku>}:stock
-- ARGV[1]  location
-- ARGV[2]  on_hand, '' when no ledger entry changed it (the field stays as it is)
-- ARGV[3]  reserved, '' when no order step changed it (the field stays as it is)
--
-- Returns 1 when a field was written, 0 when neither was given.
--
-- Invariant: the fields are the ones apply_stock.lua (oh:) and the order line scripts (rs:)
-- change, set outright to the ledger's sums. Only a rebuild into an empty database runs this,
-- with the workers stopped, so no script changes the same fields meanwhile.

local stock_key, loc, oh, rs = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local fields = {}
if oh ~= '' then
  fields[#fields + 1] = 'oh:' .. loc
  fields[#fields + 1] = int(tonumber(oh))
end
if rs ~= '' then
  fields[#fields + 1] = 'rs:' .. loc
  fields[#fields + 1] = int(tonumber(rs))
end
if #fields == 0 then return 0 end
redis.call('HSET', stock_key, unpack(fields))
return 1
