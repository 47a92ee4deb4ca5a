-- restore_policy: writes a SKU's policy as its policy_set ledger entries left it
-- (`stockctl rebuild`).
--
-- KEYS[1]  policy hash  <prefix>:{<sku>}:policy
-- ARGV[1]  location priority for orders (comma-separated), '' when none was set
-- ARGV[2]  the backorder policy as policy_set stores it (i, c, u; '' for none), ARGV[3] the cap
-- ARGV[4..] triples: location ('' for the SKU-wide default), low-stock threshold ('' when none),
--           safety stock ('' when none)
--
-- Returns the number of fields written.
--
-- Invariant: the fields are the ones apply_stock.lua's policy_set writes (thr, ss, thr:<loc>,
-- ss:<loc>, prio, bo, bol), with the same names, so the scripts that read them (levels_and_threshold in
-- the prelude, reserve_line.lua) see a restored policy as the one the workers had set.

local policy_key, prio = KEYS[1], ARGV[1]
local fields = {}
local function put(name, value)
  fields[#fields + 1] = name
  fields[#fields + 1] = value
end
if prio ~= '' then put('prio', prio) end
if ARGV[2] ~= '' and ARGV[2] ~= 'n' then
  put('bo', ARGV[2])
  if ARGV[3] ~= '' then put('bol', ARGV[3]) end
end
for i = 4, #ARGV - 2, 3 do
  local suffix = ''
  if ARGV[i] ~= '' then suffix = ':' .. ARGV[i] end
  if ARGV[i + 1] ~= '' then put('thr' .. suffix, int(tonumber(ARGV[i + 1]))) end
  if ARGV[i + 2] ~= '' then put('ss' .. suffix, int(tonumber(ARGV[i + 2]))) end
end
if #fields == 0 then return 0 end
redis.call('HSET', policy_key, unpack(fields))
return #fields / 2
