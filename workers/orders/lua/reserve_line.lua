-- reserve_line: reserves one order line, exactly once: at one location that covers it whole, or
-- for a channel order split across the channel's locations.
--
-- KEYS[1]  line record   <prefix>:{<sku>}:res:<order-token>:<line_id>
-- KEYS[2]  stock hash    <prefix>:{<sku>}:stock
-- KEYS[3]  policy hash   <prefix>:{<sku>}:policy
-- KEYS[4]  channels hash <prefix>:{<sku>}:ats
-- ARGV[1]  quantity
-- ARGV[2]  location, '' to choose
-- ARGV[3]  global location priority, comma-separated ('' for none)
-- ARGV[4]  TTL of a record that holds nothing, seconds
-- ARGV[5]  the order's channel ('' for none)
-- ARGV[6]  the channel specs the worker knows (see prelude.lua), the order's channel among them
--
-- Returns {'reserved', parts, outcome} | {'short', available}
--       | {'released', outcome of its reservation, '' if it never was reserved}
-- (decoded once as `Reservation` in src/replies.rs: any other reply is an error there)
-- `parts` as parts.lua encodes them. `available`: without a channel, the most any candidate
-- location had; with one, the total its locations had.
-- A record that exists answers every replay the same way: a line is reserved at most once, and a
-- line released (or cancelled before it was reserved) is never reserved again. A released line
-- still returns its reservation's outcome: a placer that died before recording the reservation
-- in the ledger, and whose line a cancel released meanwhile, has it recorded by its redelivery.
--
-- Without a channel (or with a location named), a location is taken only when its available
-- covers the whole line. With a channel, the line takes from the channel's locations in its
-- allocation order (priority: as listed; most_available: most available first) what each has
-- available until it is covered; if all of them together do not cover it, nothing is taken.
-- Invariant: available (on_hand - reserved - safety) never goes below zero because of a
-- reservation. Every channel drawing from a location whose reservations changed is recomputed
-- in the same step; the order's channel counts the units as its own reservations.

local record, stock_key, policy_key, ats_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local qty, wanted, ttl, channel = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[4]), ARGV[5]

local state = redis.call('HGET', record, 'state')
if state == 'reserved' then
  return { 'reserved', encode_parts(read_parts(record)), redis.call('HGET', record, 'o') }
elseif state == 'short' then
  return { 'short', redis.call('HGET', record, 'avail') }
elseif state then
  return { 'released', redis.call('HGET', record, 'o') or '' }
end

local ch = load_channels(ats_key, ARGV[6])

-- The parts to take, {loc, units}, or nil and what was available.
local function whole(candidates)
  local best = 0
  for _, l in ipairs(candidates) do
    local av = levels(stock_key, policy_key, l).av
    if av >= qty then return { { loc = l, units = qty } }, av end
    if av > best then best = av end
  end
  return nil, best
end

local function split_across(spec)
  local take, left, total = {}, qty, 0
  if spec ~= nil and spec.strategy ~= 'x' then
    for _, o in ipairs(allocation_order(stock_key, policy_key, ch, spec)) do
      -- Ordered as the channel sees its locations; taken only what is really available.
      local av = math.max(levels(stock_key, policy_key, o.loc).av, 0)
      total = total + av
      local t = math.min(left, av)
      if t > 0 then
        take[#take + 1] = { loc = o.loc, units = t }
        left = left - t
      end
    end
  end
  if left > 0 then return nil, total end
  return take, total
end

local take, available
if wanted ~= '' then
  take, available = whole({ wanted })
elseif channel ~= '' then
  take, available = split_across(ch.specs[channel])
else
  local candidates, seen_loc = {}, {}
  local function consider(l)
    if l ~= '' and not seen_loc[l] then
      seen_loc[l] = true
      candidates[#candidates + 1] = l
    end
  end
  for l in string.gmatch(redis.call('HGET', policy_key, 'prio') or '', '[^,]+') do consider(l) end
  for l in string.gmatch(ARGV[3], '[^,]+') do consider(l) end
  local rest = {}
  for _, field in ipairs(redis.call('HKEYS', stock_key)) do
    if string.sub(field, 1, 3) == 'oh:' then rest[#rest + 1] = string.sub(field, 4) end
  end
  table.sort(rest)
  for _, l in ipairs(rest) do consider(l) end
  take, available = whole(candidates)
end

if take == nil then
  redis.call('HSET', record, 'state', 'short', 'avail', int(available))
  redis.call('EXPIRE', record, ttl)
  return { 'short', int(available) }
end

local changes, changed, parts = {}, {}, {}
for _, t in ipairs(take) do
  local b, thr = levels_and_threshold(stock_key, policy_key, t.loc)
  redis.call('HINCRBY', stock_key, 'rs:' .. t.loc, t.units)
  local a = levels(stock_key, policy_key, t.loc)
  changes[#changes + 1] = change_record(t.loc, 'reserved', b, a, thr)
  changed[t.loc] = true
  parts[#parts + 1] = { loc = t.loc, qty = t.units, shipped = 0 }
  if channel ~= '' then add_own_reserved(ch, channel, t.loc, t.units) end
end
local channel_records = {}
settle_channels(stock_key, policy_key, ch, changed, channel_records, nil)
local outcome = line_outcome(changes, channel_records)
local encoded = encode_parts(parts)
redis.call('HSET', record, 'state', 'reserved', 'loc', parts[1].loc, 'qty', qty, 'shipped', 0,
  'parts', encoded, 'ch', channel, 'o', outcome)
return { 'reserved', encoded, outcome }
