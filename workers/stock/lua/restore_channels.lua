-- restore_channels: writes one SKU's channel state as the ledger and the AVAILABILITY feed left
-- it (`stockctl rebuild`).
--
-- KEYS[1]  channels hash  <prefix>:{<sku>}:ats
-- ARGV[1..] quadruples: channel, override (the encoded rules of its last channel_rules entry,
--           '' when it has none), quantity ('' when the feed has none), version ('' likewise)
--
-- Returns the number of fields written.
--
-- Invariant: the fields are the ones apply_stock.lua writes (o:<ch>, q:<ch>, v:<ch>; see the
-- channel section of the prelude), with the same encodings. q:/v: are the feed's newest
-- message, so the next change of the channel's quantity publishes version + 1, never a
-- version the feed already holds. Specs (s:<ch>) are left to the workers, who pass them, and the
-- channel's own reservations (r:<ch>:<loc>) to the order restore.

local ats_key = KEYS[1]
local fields = {}
local function put(name, value)
  fields[#fields + 1] = name
  fields[#fields + 1] = value
end
for i = 1, #ARGV - 3, 4 do
  local ch, override, q, v = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  if override ~= '' then put('o:' .. ch, override) end
  if q ~= '' then put('q:' .. ch, int(tonumber(q))) end
  if v ~= '' then put('v:' .. ch, int(tonumber(v))) end
end
if #fields == 0 then return 0 end
redis.call('HSET', ats_key, unpack(fields))
return #fields / 2
