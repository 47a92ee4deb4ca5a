-- restore_line: writes one order line's record as the ledger describes it (`stockctl rebuild`).
--
-- KEYS[1]  line record  <prefix>:{<sku>}:res:<order-token>:<line_id>
-- ARGV[1]  state: reserved | released
-- ARGV[2]  location it was reserved at
-- ARGV[3]  units reserved
-- ARGV[4]  units shipped
-- ARGV[5]  milliseconds left of the record's TTL (a released line), '' to keep it
-- ARGV[6..] triples, one per fulfilment: its event_id, units shipped, units still held after it
--
-- Returns 1.
--
-- Invariant: the record has the fields reserve_line.lua, release_line.lua and ship_line.lua read
-- (state, loc, qty, shipped, o, f:<event_id>), so a replayed order step finds its line as the
-- workers left it: a reserved line is not reserved twice, a fulfilment is not shipped twice. The
-- outcomes themselves are in the ledger already: the reservation's outcome is its header alone,
-- and each fulfilment's mark has an empty one (ship_line.lua's `units \31 left \31 outcome`).

local record, state = KEYS[1], ARGV[1]
local fields = { 'state', state, 'loc', ARGV[2], 'qty', ARGV[3], 'shipped', ARGV[4],
  'o', header(now_ms(), 'applied') }
for i = 6, #ARGV - 2, 3 do
  fields[#fields + 1] = 'f:' .. ARGV[i]
  fields[#fields + 1] = ARGV[i + 1] .. US .. ARGV[i + 2] .. US
end
redis.call('HSET', record, unpack(fields))
if ARGV[5] ~= '' then redis.call('PEXPIRE', record, tonumber(ARGV[5])) end
return 1
