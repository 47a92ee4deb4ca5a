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
-- ARGV[7]  the line's rank among backorders: the order's stream sequence * 128 + the line's
--          index ('' never backorders)
-- ARGV[8]  order id, ARGV[9] line id (recorded with a backorder, for its fills' ledger entries)
--
-- Returns {'reserved', parts, outcome, backordered, expected_at} | {'short', available}
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
-- A line no candidate covers may still be confirmed when the backorder policy allows the rest
-- (the SKU's; for a channel order the channel's for the SKU: see prelude.lua): without a
-- channel, at the candidate (or, against incoming, a location with incoming) that covers most
-- of it among those whose allowance takes the rest; with a channel, what all its locations
-- have, the rest at the first of them (in allocation order) whose allowance takes it. The
-- covered units are reserved, the rest is backordered there and queued by rank; `parts` then
-- names that location last (with the units covered there, maybe 0), and `backordered` /
-- `expected_at` say how many units wait and when they are expected (0 unknown). A replay
-- answers with the parts as they were at placement, not as fills have grown them since.
-- Invariant: available (on_hand - reserved - safety) never goes below zero because of a
-- reservation. Every channel drawing from a location whose reservations changed is recomputed
-- in the same step; the order's channel counts the units as its own reservations.

local record, stock_key, policy_key, ats_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local qty, wanted, ttl, channel = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[4]), ARGV[5]

local state = redis.call('HGET', record, 'state')
if state == 'reserved' then
  local f = redis.call('HMGET', record, 'p0', 'o', 'bq', 'boe')
  if f[1] then return { 'reserved', f[1], f[2], f[3] or '0', f[4] or '0' } end
  return { 'reserved', encode_parts(read_parts(record)), f[2], '0', '0' }
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
local candidates, seen_loc = {}, {}
local function consider(l)
  if l ~= '' and not seen_loc[l] then
    seen_loc[l] = true
    candidates[#candidates + 1] = l
  end
end
local fields = nil
if wanted ~= '' then
  consider(wanted)
  take, available = whole(candidates)
elseif channel ~= '' then
  take, available = split_across(ch.specs[channel])
else
  for l in string.gmatch(redis.call('HGET', policy_key, 'prio') or '', '[^,]+') do consider(l) end
  for l in string.gmatch(ARGV[3], '[^,]+') do consider(l) end
  fields = redis.call('HKEYS', stock_key)
  local rest = {}
  for _, field in ipairs(fields) do
    if string.sub(field, 1, 3) == 'oh:' then rest[#rest + 1] = string.sub(field, 4) end
  end
  table.sort(rest)
  for _, l in ipairs(rest) do consider(l) end
  take, available = whole(candidates)
end

-- A short line under a backorder policy: what stock covers, and where the rest waits.
local backorder = nil
local pol, limit = 'n', 0
if take == nil and ARGV[7] ~= '' then
  -- A channel's order backorders under the channel's policy for the SKU.
  local spec = channel ~= '' and ch.specs[channel] or nil
  if spec ~= nil then
    pol, limit = channel_backorder_policy(policy_key, ch, spec)
  else
    pol, limit = backorder_policy(policy_key)
  end
end
if take == nil and pol ~= 'n' then
  local total = 0
  if pol == 'c' then total = backordered_total(stock_key) end
  local function allowance(l)
    local s = redis.call('HMGET', stock_key, 'in:' .. l, 'bo:' .. l)
    return backorder_allowance(pol, limit, num(s[1]), num(s[2]), total), num(s[2])
  end
  if channel ~= '' then
    local spec = ch.specs[channel]
    if spec ~= nil and spec.strategy ~= 'x' then
      local parts, left = {}, qty
      local order = allocation_order(stock_key, policy_key, ch, spec)
      for _, o in ipairs(order) do
        local t = math.min(left, math.max(levels(stock_key, policy_key, o.loc).av, 0))
        if t > 0 then
          parts[#parts + 1] = { loc = o.loc, units = t }
          left = left - t
        end
      end
      for _, o in ipairs(order) do
        local room, waiting = allowance(o.loc)
        if left <= room then
          backorder = { loc = o.loc, units = left, waiting = waiting }
          take = parts
          break
        end
      end
    end
  else
    if wanted == '' and pol == 'i' then
      -- Units arriving on a purchase order may wait where nothing is on hand yet.
      local incoming = {}
      for _, field in ipairs(fields) do
        if string.sub(field, 1, 3) == 'in:' then incoming[#incoming + 1] = string.sub(field, 4) end
      end
      table.sort(incoming)
      for _, l in ipairs(incoming) do consider(l) end
    end
    local best = nil
    for _, l in ipairs(candidates) do
      local cover = math.min(qty, math.max(levels(stock_key, policy_key, l).av, 0))
      local room, waiting = allowance(l)
      if qty - cover <= room and (best == nil or cover > best.cover) then
        best = { loc = l, cover = cover, waiting = waiting }
      end
    end
    if best ~= nil then
      take = {}
      if best.cover > 0 then take[1] = { loc = best.loc, units = best.cover } end
      backorder = { loc = best.loc, units = qty - best.cover, waiting = best.waiting }
    end
  end
end

if take == nil then
  redis.call('HSET', record, 'state', 'short', 'avail', int(available))
  redis.call('EXPIRE', record, ttl)
  return { 'short', int(available) }
end

local changes, changed, parts = {}, {}, {}
local eta, rank = 0, ARGV[7]
if backorder ~= nil then
  eta = backorder_expected_at(stock_key, backorder.loc, backorder.waiting + backorder.units)
  -- The backorder location always has a part, the last (its change carries the backorder
  -- record; the decision names the backordered units on it).
  local others, here = {}, { loc = backorder.loc, units = 0 }
  for _, t in ipairs(take) do
    if t.loc == backorder.loc then here = t else others[#others + 1] = t end
  end
  others[#others + 1] = here
  take = others
end
for _, t in ipairs(take) do
  local b, thr = levels_and_threshold(stock_key, policy_key, t.loc)
  if t.units > 0 then redis.call('HINCRBY', stock_key, 'rs:' .. t.loc, t.units) end
  if backorder ~= nil and t.loc == backorder.loc then
    redis.call('HINCRBY', stock_key, 'bo:' .. t.loc, backorder.units)
  end
  local a = levels(stock_key, policy_key, t.loc)
  changes[#changes + 1] = change_record(t.loc, 'reserved', b, a, thr)
  if backorder ~= nil and t.loc == backorder.loc then
    changes[#changes + 1] = backorder_record(ARGV[8], ARGV[9], 0, backorder.units, eta, rank)
  end
  changed[t.loc] = true
  parts[#parts + 1] = { loc = t.loc, qty = t.units, shipped = 0 }
  if channel ~= '' and t.units > 0 then add_own_reserved(ch, channel, t.loc, t.units) end
end
local channel_records = {}
settle_channels(stock_key, policy_key, ch, changed, channel_records, nil)
local outcome = line_outcome(changes, channel_records)
local encoded = encode_parts(parts)
redis.call('HSET', record, 'state', 'reserved', 'loc', parts[1].loc, 'qty', qty, 'shipped', 0,
  'parts', encoded, 'ch', channel, 'o', outcome)
if backorder == nil then return { 'reserved', encoded, outcome, '0', '0' } end
redis.call('HSET', record, 'p0', encoded, 'bo', int(backorder.units), 'bq', int(backorder.units),
  'bol', backorder.loc, 'bor', rank, 'boe', int(eta), 'oid', ARGV[8], 'lid', ARGV[9])
redis.call('ZADD', backorder_queue(stock_key), rank, record)
return { 'reserved', encoded, outcome, int(backorder.units), int(eta) }
