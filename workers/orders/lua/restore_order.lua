-- restore_order: writes one order's record as ORDER_RESULTS and ORDER_EVENTS describe it
-- (`stockctl rebuild`).
--
-- KEYS[1]  order hash  <prefix>:{o:<order-token>}:order
-- ARGV[1]  status: confirmed | rejected | cancelled | expired | fulfilled
-- ARGV[2]  encoded lines (`command::encode_lines`)
-- ARGV[3]  when the checkout hold expires, ms since the Unix epoch (0 when none)
-- ARGV[4]  status before the release (confirmed | placing), for an ended order
-- ARGV[5]  '1' when the order was cancelled, '' otherwise
-- ARGV[6]  '1' when the order was committed, '' otherwise
-- ARGV[7]  milliseconds left of the record's retention (a final order), '' to keep it
-- ARGV[8]  the sales channel the order comes from ('' for none)
--
-- Returns 1.
--
-- Invariant: the record has the fields order.lua reads, and the state a worker leaves once it is
-- done with the order: the decision is published, an ended order is settled (its lines are
-- released and its result is stored). A replayed command meets a decided order, so the saga
-- never runs again for it. `fp` is not restored (the ledger does not keep a placement's
-- content): a replayed placement is answered with the decision, never as a conflict.

local key, status = KEYS[1], ARGV[1]
local ended = { cancelled = true, expired = true, fulfilled = true }
local fields = { 'status', status, 'lines', ARGV[2], 'published', '1', 'expires', ARGV[3],
  'hold', '0', 'ch', ARGV[8] or '' }
local function put(name, value)
  fields[#fields + 1] = name
  fields[#fields + 1] = value
end
if ended[status] then
  put('from', ARGV[4])
  put('settled', '1')
end
if ARGV[5] == '1' then put('cancelled', '1') end
if ARGV[6] == '1' then put('committed', '1') end
redis.call('HSET', key, unpack(fields))
if ARGV[7] ~= '' then redis.call('PEXPIRE', key, tonumber(ARGV[7])) end
return 1
