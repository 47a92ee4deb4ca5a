-- restore_line: writes one order line's record as the ledger describes it (`stockctl rebuild`),
-- and the channel's own reservations it still holds.
--
-- KEYS[1]  line record    <prefix>:{<sku>}:res:<order-token>:<line_id>
-- KEYS[2]  channels hash  <prefix>:{<sku>}:ats
-- KEYS[3]  stock hash     <prefix>:{<sku>}:stock
-- KEYS[4]  backorders     <prefix>:{<sku>}:boq
-- ARGV[1]  state: reserved | released
-- ARGV[2]  its parts, as parts.lua encodes them (location, units, units shipped; in allocation
--          order)
-- ARGV[3]  units reserved (all parts)
-- ARGV[4]  units shipped (all parts)
-- ARGV[5]  milliseconds left of the record's TTL (a released line), '' to keep it
-- ARGV[6]  the order's channel ('' for none)
-- ARGV[7]  its backorder ('' for none): location \31 units waiting \31 units backordered at
--          placement \31 expected date \31 rank \31 order id \31 line id
-- ARGV[8..] triples, one per fulfilment: its event_id, units shipped, units still held after it
--
-- Returns 1.
--
-- Invariant: the record has the fields reserve_line.lua, release_line.lua and ship_line.lua read
-- (state, loc, qty, shipped, parts, ch, o, f:<event_id>), so a replayed order step finds its line
-- as the workers left it: a reserved line is not reserved twice, a fulfilment is not shipped
-- twice, a release gives back every part. A reserved line of a channel order adds what each part
-- still holds to the channel's own reservations there (`r:<ch>:<location>`, as reserve_line.lua
-- counted them; rebuild writes into an empty Redis, once per line). The outcomes themselves are
-- in the ledger already: the reservation's outcome is its header alone, and each fulfilment's
-- mark has an empty one (ship_line.lua's `units \31 left \31 outcome`).
-- A backordered line gets the fields reserve_line.lua wrote (bo, bq, bol, bor, boe, oid, lid,
-- p0: its parts at placement, which the ledger does not keep, are its location with the units
-- covered then); while units still wait and it is not released, it is queued again by its rank
-- and its location's backordered units (bo:<location>) grow by them.

local record, ats_key, state, channel = KEYS[1], KEYS[2], ARGV[1], ARGV[6]
local parts = {}
for _, p in ipairs(split(ARGV[2], RS)) do
  local x = split(p, US)
  parts[#parts + 1] = { loc = x[1], qty = tonumber(x[2]), shipped = tonumber(x[3]) }
end
local first = ''
if parts[1] then first = parts[1].loc end
local fields = { 'state', state, 'loc', first, 'qty', ARGV[3], 'shipped', ARGV[4],
  'parts', ARGV[2], 'ch', channel, 'o', header(now_ms(), 'applied') }
for i = 8, #ARGV - 2, 3 do
  fields[#fields + 1] = 'f:' .. ARGV[i]
  fields[#fields + 1] = ARGV[i + 1] .. US .. ARGV[i + 2] .. US
end
redis.call('HSET', record, unpack(fields))
if ARGV[7] ~= '' then
  local b = split(ARGV[7], US)
  local loc, waiting, backordered = b[1], tonumber(b[2]), tonumber(b[3])
  local covered = 0
  for _, p in ipairs(parts) do
    if p.loc == loc then covered = p.qty - (backordered - waiting) end
  end
  redis.call('HSET', record, 'bo', int(waiting), 'bq', int(backordered), 'bol', loc, 'bor', b[5],
    'boe', b[4], 'oid', b[6], 'lid', b[7],
    'p0', table.concat({ loc, int(math.max(covered, 0)), '0' }, US))
  if state == 'reserved' and waiting > 0 then
    redis.call('ZADD', KEYS[4], b[5], record)
    redis.call('HINCRBY', KEYS[3], 'bo:' .. loc, waiting)
  end
end
if ARGV[5] ~= '' then redis.call('PEXPIRE', record, tonumber(ARGV[5])) end
if state == 'reserved' and channel ~= '' then
  for _, p in ipairs(parts) do
    local left = p.qty - p.shipped
    if left > 0 then redis.call('HINCRBY', ats_key, 'r:' .. channel .. ':' .. p.loc, left) end
  end
end
return 1
