-- reserve_line: reserves one order line at one location that covers it whole, exactly once.
--
-- KEYS[1]  line record  <prefix>:{<sku>}:res:<order-token>:<line_id>
-- KEYS[2]  stock hash   <prefix>:{<sku>}:stock
-- KEYS[3]  policy hash  <prefix>:{<sku>}:policy
-- ARGV[1]  quantity
-- ARGV[2]  location, '' to choose
-- ARGV[3]  global location priority, comma-separated ('' for none)
-- ARGV[4]  TTL of a record that holds nothing, seconds
--
-- Returns {'reserved', location, outcome} | {'short', best available}
--       | {'released', outcome of its reservation, '' if it never was reserved}
-- (decoded once as `Reservation` in src/replies.rs: any other reply is an error there)
-- A record that exists answers every replay the same way: a line is reserved at most once, and a
-- line released (or cancelled before it was reserved) is never reserved again. A released line
-- still returns its reservation's outcome: a placer that died before recording the reservation
-- in the ledger, and whose line a cancel released meanwhile, has it recorded by its redelivery.
--
-- Invariant: available (on_hand - reserved - safety) never goes below zero because of a
-- reservation: a location is taken only when its available covers the whole line.

local record, stock_key, policy_key = KEYS[1], KEYS[2], KEYS[3]
local qty, wanted, ttl = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[4])

local state = redis.call('HGET', record, 'state')
if state == 'reserved' then
  return { 'reserved', redis.call('HGET', record, 'loc'), redis.call('HGET', record, 'o') }
elseif state == 'short' then
  return { 'short', redis.call('HGET', record, 'avail') }
elseif state then
  return { 'released', redis.call('HGET', record, 'o') or '' }
end

local candidates, seen_loc = {}, {}
local function consider(l)
  if l ~= '' and not seen_loc[l] then
    seen_loc[l] = true
    candidates[#candidates + 1] = l
  end
end
if wanted ~= '' then
  consider(wanted)
else
  for l in string.gmatch(redis.call('HGET', policy_key, 'prio') or '', '[^,]+') do consider(l) end
  for l in string.gmatch(ARGV[3], '[^,]+') do consider(l) end
  local rest = {}
  for _, field in ipairs(redis.call('HKEYS', stock_key)) do
    if string.sub(field, 1, 3) == 'oh:' then rest[#rest + 1] = string.sub(field, 4) end
  end
  table.sort(rest)
  for _, l in ipairs(rest) do consider(l) end
end

local best = 0
for _, l in ipairs(candidates) do
  local b = levels(stock_key, policy_key, l)
  if b.av >= qty then
    redis.call('HINCRBY', stock_key, 'rs:' .. l, qty)
    local a = levels(stock_key, policy_key, l)
    local outcome = header(now_ms(), 'applied') .. RS ..
      change_record(l, 'reserved', b, a, policy(policy_key, 'thr', l))
    redis.call('HSET', record, 'state', 'reserved', 'loc', l, 'qty', qty, 'shipped', 0, 'o', outcome)
    return { 'reserved', l, outcome }
  end
  if b.av > best then best = b.av end
end
redis.call('HSET', record, 'state', 'short', 'avail', best)
redis.call('EXPIRE', record, ttl)
return { 'short', tostring(best) }
