-- apply_stock: applies one stock fact exactly once.
--
-- KEYS[1]  dedup record  <prefix>:{<sku>}:evt:<event_id>
-- KEYS[2]  stock hash    <prefix>:{<sku>}:stock
-- KEYS[3]  policy hash   <prefix>:{<sku>}:policy
-- ARGV[1]  op: received | sold | returned | adjusted | counted | transferred | policy_set
-- ARGV[2]  location ('' only for a SKU-wide policy_set)
-- ARGV[3]  quantity (received/sold/returned/transferred), delta (adjusted), counted on_hand
-- ARGV[4]  counted: expected on_hand, '' when unconditional
-- ARGV[5]  transferred: destination location
-- ARGV[6]  fingerprint of the event's content
-- ARGV[7]  dedup TTL, seconds
-- ARGV[8]  policy_set: low-stock threshold, '' unchanged, negative removes
-- ARGV[9]  policy_set: safety stock, '' unchanged, negative removes
-- ARGV[10] policy_set: location priority for orders (comma-separated), '' unchanged
--
-- Returns {'applied', outcome, '0'} | {'duplicate', stored outcome, published flag}
--       | {'conflict', stored fingerprint} | {'out_of_range', location}
--
-- Invariant: the first delivery of an event_id changes the levels and stores its outcome in the
-- same atomic step; every later delivery changes nothing and returns that same outcome.

local dedup_key, stock_key, policy_key = KEYS[1], KEYS[2], KEYS[3]
local op, loc, qty = ARGV[1], ARGV[2], tonumber(ARGV[3])
local fingerprint, ttl = ARGV[6], tonumber(ARGV[7])

local prior = seen(dedup_key, fingerprint)
if prior then return prior end

local at = now_ms()
local records = {}

-- Levels and threshold of each location touched, read once (a transfer's two locations differ).
local current = {}
local function read(l)
  if not current[l] then
    local b, thr = levels_and_threshold(stock_key, policy_key, l)
    current[l] = { b = b, thr = thr }
  end
  return current[l]
end

local function on_hand(l)
  return read(l).b.oh
end

-- Every change is planned first and range-checked before anything is written: a script that
-- fails half-way would leave its first writes in place.
local plan = {}
if op == 'received' or op == 'returned' or op == 'adjusted' then
  plan[1] = { loc, op, on_hand(loc) + qty }
elseif op == 'sold' then
  plan[1] = { loc, op, on_hand(loc) - qty }
elseif op == 'counted' then
  local current = on_hand(loc)
  if ARGV[4] ~= '' and tonumber(ARGV[4]) ~= current then
    return remember(dedup_key, fingerprint, header(at, 'stale', ARGV[4], int(current)), ttl)
  end
  plan[1] = { loc, op, qty }
elseif op == 'transferred' then
  plan[1] = { loc, 'transferred_out', on_hand(loc) - qty }
  plan[2] = { ARGV[5], 'transferred_in', on_hand(ARGV[5]) + qty }
elseif op ~= 'policy_set' then
  return redis.error_reply('unknown op ' .. op)
end
for _, step in ipairs(plan) do
  if math.abs(step[3]) > MAX_LEVEL then return { 'out_of_range', step[1] } end
end
for _, step in ipairs(plan) do
  local l, kind, oh = step[1], step[2], step[3]
  local c = read(l)
  local b = c.b
  redis.call('HSET', stock_key, 'oh:' .. l, int(oh))
  -- Only on_hand changed: the levels after follow without reading them back.
  local a = { oh = oh, rs = b.rs, ss = b.ss, av = oh - b.rs - b.ss }
  records[#records + 1] = change_record(l, kind, b, a, c.thr)
end

if op == 'policy_set' then
  -- Affected locations: the one named, or every known location for a SKU-wide default.
  local locs = {}
  if loc ~= '' then
    locs[1] = loc
  else
    for _, field in ipairs(redis.call('HKEYS', stock_key)) do
      if string.sub(field, 1, 3) == 'oh:' then locs[#locs + 1] = string.sub(field, 4) end
    end
    table.sort(locs)
  end
  local before = {}
  for i, l in ipairs(locs) do before[i] = levels(stock_key, policy_key, l) end
  local suffix = ''
  if loc ~= '' then suffix = ':' .. loc end
  for name, value in pairs({ thr = ARGV[8], ss = ARGV[9] }) do
    if value ~= '' then
      if tonumber(value) < 0 then
        redis.call('HDEL', policy_key, name .. suffix)
      else
        redis.call('HSET', policy_key, name .. suffix, value)
      end
    end
  end
  if ARGV[10] ~= '' then redis.call('HSET', policy_key, 'prio', ARGV[10]) end
  for i, l in ipairs(locs) do
    local a = levels(stock_key, policy_key, l)
    records[#records + 1] = change_record(l, 'policy_set', before[i], a, policy(policy_key, 'thr', l))
  end
  if #locs == 0 then
    -- No stock anywhere yet: one entry records the policy change itself.
    local zero = { oh = 0, rs = 0, ss = 0, av = 0 }
    records[1] = change_record('', 'policy_set', zero, zero, nil)
  end
end

table.insert(records, 1, header(at, 'applied'))
return remember(dedup_key, fingerprint, table.concat(records, RS), ttl)
