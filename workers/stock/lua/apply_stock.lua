-- apply_stock: applies a batch of stock facts, each exactly once, in one call; marks the dedup
-- records of earlier facts as published in the same call.
--
-- The call is a list of items, in order. Each item's KEYS and ARGV follow those of the item
-- before it; its first ARGV says what it is:
--
--   an apply (4 KEYS, 13 ARGV) — one stock fact:
-- KEYS[1]  dedup record  <prefix>:{<sku>}:evt:<event_id>
-- KEYS[2]  stock hash    <prefix>:{<sku>}:stock
-- KEYS[3]  policy hash   <prefix>:{<sku>}:policy
-- KEYS[4]  channels hash <prefix>:{<sku>}:ats
-- ARGV[1]  op: received | sold | returned | adjusted | counted | transferred | policy_set
--          | channel_rules | channel_recompute | expected | expected_cancelled
--          | unsellable_moved | kit_defined | kit_buildable
-- ARGV[2]  location ('' for a SKU-wide policy_set, channel_rules, channel_recompute, and a sale
--          or return that names its channel)
-- ARGV[3]  quantity (received/sold/returned/transferred/expected/unsellable_moved; for
--          expected_cancelled '' cancels everything outstanding), delta (adjusted), counted
--          on_hand; the channel of channel_rules / channel_recompute; kit_buildable: the kits
--          buildable; kit_defined: the number of components; policy_set: the backorder
--          policy (n none, i against incoming, c capped, u unlimited; '' unchanged)
-- ARGV[4]  counted: expected on_hand, '' when unconditional; channel_rules: the override;
--          channel_recompute: the rules version asked for (the worker passed a spec that new);
--          policy_set: the cap of a capped backorder policy;
--          received / expected / expected_cancelled: the purchase order ('' for a plain
--          receipt); unsellable_moved: the state (dm | qc | hd); kit_defined: the components
--          (`sku US qty US ...`, '' for none); kit_buildable: the computation's stamp
-- ARGV[5]  transferred: destination location; expected: the expected date (ms);
--          unsellable_moved: 'in' (sellable -> state) or 'out' (state -> sellable)
-- ARGV[6]  fingerprint of the event's content
-- ARGV[7]  dedup TTL, seconds
-- ARGV[8]  policy_set: low-stock threshold, '' unchanged, negative removes
-- ARGV[9]  policy_set: safety stock, '' unchanged, negative removes
-- ARGV[10] policy_set: location priority for orders (comma-separated), '' unchanged
-- ARGV[11] the channel a sale or return came from ('' for none)
-- ARGV[12] the channel specs the worker knows (see prelude.lua)
-- ARGV[13] flags, one character each ('' for none): '1' an opening balance — the channels are
--          not recomputed now; the initial load that sent it recomputes each SKU's channels once,
--          when all its rows are applied; 'r' a replay of the fact's dead letter (`stockctl dlq
--          replay`) — a remembered `insufficient` refusal is judged again
--
--   its reply: {'applied', outcome, '0'} | {'duplicate', stored outcome, published flag}
--       | {'conflict', stored fingerprint} | {'out_of_range', location}
--       | {'unknown_channel', channel}
--       | {'kit', components} (a fact that moves stock, on a kit: nothing changed, nothing
--         remembered — the worker expands a sale or return into its components' facts and
--         refuses the rest)
--       | {'insufficient', location, units free} (an unsellable move beyond what is free;
--         remembered in the dedup record like a stale count, so a redelivery gets the same
--         refusal without being judged again — only a replay, flag 'r', judges it again)
-- Every channel drawing from a location whose levels changed is recomputed in the same step;
-- its record is part of the outcome. Units that become available at a location where order
-- lines are backordered fill them in the same step, in order of placement (see prelude.lua):
-- each fill is a `backorder_filled` change, with its backorder record, in the outcome.
--
--   a mark (1 KEY, 1 ARGV) — the derived events of an applied fact are stored in JetStream:
-- KEYS[1]  its dedup record
-- ARGV[1]  'mark'
--   its reply: {'marked', '1'} | {'marked', '0'} when the record is gone (see mark_published)
--
-- Returns one reply per item, in the items' order. On Redis Cluster every key of one call is in
-- one slot: the worker groups a batch by the SKU's hash tag.
--
-- Invariant: the first delivery of an event_id changes the levels and stores its outcome in the
-- same atomic step; every later delivery changes nothing and returns that same outcome (or
-- refusal).
-- A kit (policy field `kit`) has no stock of its own: its on_hand at a location is only ever set
-- by a `kit_buildable` whose stamp is above every stamp applied there before (stock field
-- `kg:<loc>`), so a stale computation never overwrites a newer one.
-- Incoming units are per purchase order: a receipt or cancellation of one never takes another's;
-- incoming is the sum of a location's purchase orders. Unsellable units stay within on_hand −
-- reserved when they are moved there, and never count as available. Facts in
-- one call are applied one after the other, in the items' order, exactly as separate calls
-- would apply them; the call as a whole is atomic too, so a crash never splits it. Every fact of a
-- call is stamped with the same applied_at (the server clock, read once per call).

-- The clock, read once per call: every fact of one call is applied in the same atomic step.
local call_ms = nil
local function applied_at()
  if not call_ms then call_ms = now_ms() end
  return call_ms
end

-- Facts about incoming stock (purchase orders) and unsellable units, applied by `apply_model`.
local function model_op(op, po)
  return op == 'expected' or op == 'expected_cancelled' or op == 'unsellable_moved'
    or (op == 'received' and po ~= '')
end

-- Applies an `expected`, `expected_cancelled`, `received` against a purchase order, or
-- `unsellable_moved` at `loc`: checks first, then writes, then appends its change record to
-- `records` (with the purchase order's state after it, for the ledger) and marks `changed`
-- when on_hand or the unsellable units changed (the channels follow). Returns a refusal reply,
-- or nil when applied; a refusal writes nothing.
local function apply_model(stock_key, op, loc, ARGV, read, records, changed)
  local c = read(loc)
  local b = c.b
  local a = {}
  for k, v in pairs(b) do a[k] = v end
  local qty = tonumber(ARGV[3])
  local po = ''
  if op == 'unsellable_moved' then
    local state = ARGV[4]
    if ARGV[5] == 'in' then
      -- Only free units may become unsellable: not reserved, not unsellable already.
      local free = b.oh - b.rs - b.un
      if qty > free then return { 'insufficient', loc, int(math.max(free, 0)) } end
      a[state] = b[state] + qty
    else
      if qty > b[state] then return { 'insufficient', loc, int(b[state]) } end
      a[state] = b[state] - qty
    end
    set_level(stock_key, state .. ':' .. loc, a[state])
    a.un = a.dm + a.qc + a.hd
    changed[loc] = true
  else
    po = ARGV[4]
    local pf, df = 'po:' .. loc .. US .. po, 'pd:' .. loc .. US .. po
    local s = redis.call('HMGET', stock_key, pf, df)
    local out, eta = num(s[1]), num(s[2])
    if op == 'expected' then
      out, eta = out + qty, tonumber(ARGV[5])
      a.inc = b.inc + qty
      if a.inc > MAX_LEVEL then return { 'out_of_range', loc } end
    elseif op == 'expected_cancelled' then
      local take = out
      if qty ~= nil and qty < take then take = qty end
      out, a.inc = out - take, b.inc - take
    else
      -- A receipt: what the purchase order still expects comes out of incoming; the rest (an
      -- over-receipt) goes straight to on_hand.
      local take = math.min(qty, out)
      out, a.inc, a.oh = out - take, b.inc - take, b.oh + qty
      if math.abs(a.oh) > MAX_LEVEL then return { 'out_of_range', loc } end
      redis.call('HSET', stock_key, 'oh:' .. loc, int(a.oh))
      changed[loc] = true
    end
    if out > 0 then
      redis.call('HSET', stock_key, pf, int(out), df, int(eta))
    else
      redis.call('HDEL', stock_key, pf, df)
      eta = 0
    end
    set_level(stock_key, 'in:' .. loc, a.inc)
    a.eta = earliest_expected(stock_key, loc)
    set_level(stock_key, 'et:' .. loc, a.eta)
    po = table.concat({ '', po, int(out), int(eta) }, US)
  end
  a.av = a.oh - a.rs - a.ss - a.un
  records[#records + 1] = change_record(loc, op, b, a, c.thr, po ~= '') .. po
  c.b = a
  return nil
end

-- Facts that move a SKU's own stock: a kit has none.
local MOVES_STOCK = { received = true, sold = true, returned = true, adjusted = true,
  counted = true, transferred = true, expected = true, expected_cancelled = true,
  unsellable_moved = true }

-- The refusal a dedup record's outcome remembers ({'insufficient', location, units}), or nil.
local REFUSAL = '^1' .. US .. '%d+' .. US .. 'insufficient' .. US .. '([^' .. US .. ']*)' .. US
  .. '(%-?%d+)$'
local function remembered_refusal(outcome)
  local l, free = string.match(outcome, REFUSAL)
  if l then return { 'insufficient', l, free } end
  return nil
end

-- One fact: KEYS and ARGV are the item's own (shadowing the call's).
local function apply(KEYS, ARGV)
  local dedup_key, stock_key, policy_key, ats_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
  local op, loc, qty = ARGV[1], ARGV[2], tonumber(ARGV[3])
  local fingerprint, ttl = ARGV[6], tonumber(ARGV[7])
  local channel = ARGV[11]

  local prior = seen(dedup_key, fingerprint)
  if prior then
    local refusal = prior[1] == 'duplicate' and remembered_refusal(prior[2])
    if not refusal then return prior end
    -- A replay of its dead letter is judged again, below; any other delivery is refused again.
    if not string.find(ARGV[13], 'r', 1, true) then return refusal end
  end

  local kit = nil
  if MOVES_STOCK[op] or op == 'kit_buildable' then
    kit = redis.call('HGET', policy_key, 'kit')
    if kit and op ~= 'kit_buildable' then return { 'kit', kit } end
  end

  local ch = load_channels(ats_key, ARGV[12])
  if op == 'channel_rules' or op == 'channel_recompute' then channel = ARGV[3] end
  local spec = nil
  if channel ~= '' then
    spec = ch.specs[channel]
    if spec == nil and op ~= 'channel_rules' then return { 'unknown_channel', channel } end
  end

  local at = applied_at()
  local records = {}
  -- Channel records follow the level changes in the outcome.
  local channel_records = {}
  local oversold = 0

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
  if model_op(op, ARGV[4]) then
    -- Incoming stock and unsellable units: `apply_model`, below.
  elseif loc == '' and (op == 'sold' or op == 'returned') then
    if spec.strategy == 'x' or #spec.locs == 0 then return { 'unknown_channel', channel } end
    if op == 'returned' then
      -- A return goes back to the channel's first location.
      plan[1] = { spec.locs[1], op, on_hand(spec.locs[1]) + qty }
    else
      -- Taken from the channel's locations in allocation order, as far as each has units
      -- available; what none covers is taken from the first (the goods did leave).
      local offered = channel_quantity(stock_key, policy_key, ch, spec)
      if qty > offered then oversold = qty - offered end
      local order = allocation_order(stock_key, policy_key, ch, spec)
      local take, left = {}, qty
      for _, o in ipairs(order) do
        local t = math.min(left, math.max(o.av, 0))
        take[o.loc] = t
        left = left - t
      end
      take[order[1].loc] = take[order[1].loc] + left
      for _, o in ipairs(order) do
        if take[o.loc] > 0 then plan[#plan + 1] = { o.loc, op, on_hand(o.loc) - take[o.loc] } end
      end
    end
  elseif op == 'received' or op == 'returned' or op == 'adjusted' then
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
  elseif op == 'kit_buildable' then
    -- Only for a kit, only the newest computation, and only when it changes something.
    local stamp, stamp_field = tonumber(ARGV[4]), 'kg:' .. loc
    if kit and stamp > num(redis.call('HGET', stock_key, stamp_field)) then
      redis.call('HSET', stock_key, stamp_field, ARGV[4])
      if on_hand(loc) ~= qty then plan[1] = { loc, op, qty } end
    end
  elseif op == 'kit_defined' then
    if ARGV[4] == '' then
      -- No longer a kit: what it could build is no stock of its own.
      redis.call('HDEL', policy_key, 'kit')
      for _, field in ipairs(redis.call('HKEYS', stock_key)) do
        local prefix, l = string.sub(field, 1, 3), string.sub(field, 4)
        if prefix == 'oh:' and on_hand(l) ~= 0 then plan[#plan + 1] = { l, op, 0 } end
        if prefix == 'kg:' then redis.call('HDEL', stock_key, field) end
      end
      table.sort(plan, function(x, y) return x[1] < y[1] end)
    else
      redis.call('HSET', policy_key, 'kit', ARGV[4])
    end
    if #plan == 0 then
      -- One entry records the definition itself (no levels), so rebuild restores it.
      local zero = { oh = 0, rs = 0, ss = 0, av = 0 }
      records[1] = change_record('', op, zero, zero, nil)
    end
  elseif op ~= 'policy_set' and op ~= 'channel_rules' and op ~= 'channel_recompute' then
    error('unknown op ' .. op)
  end
  local changed = {}
  for _, step in ipairs(plan) do
    if math.abs(step[3]) > MAX_LEVEL then return { 'out_of_range', step[1] } end
  end
  for _, step in ipairs(plan) do
    local l, kind, oh = step[1], step[2], step[3]
    changed[l] = true
    local c = read(l)
    local b = c.b
    redis.call('HSET', stock_key, 'oh:' .. l, int(oh))
    -- Only on_hand changed: the levels after follow without reading them back.
    local a = with_on_hand(b, oh)
    records[#records + 1] = change_record(l, kind, b, a, c.thr)
    -- The channels computed below see these levels without reading them back.
    if next(ch.specs) ~= nil then
      ch.known = ch.known or {}
      ch.known[l] = a
    end
  end
  if model_op(op, ARGV[4]) then
    local refused = apply_model(stock_key, op, loc, ARGV, read, records, changed)
    if refused then
      -- Remembered, so a redelivery (its dead letter stored, its ack lost) is not judged again
      -- against levels that may have changed since.
      if refused[1] == 'insufficient' then
        remember(dedup_key, fingerprint, header(at, 'insufficient', refused[2], refused[3]), ttl)
      end
      return refused
    end
    -- Levels it changed are read back by the channels, not taken from `known`.
    if ch.known then ch.known[loc] = nil end
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
    if ARGV[3] == 'n' then
      redis.call('HDEL', policy_key, 'bo', 'bol')
    elseif ARGV[3] ~= '' then
      redis.call('HSET', policy_key, 'bo', ARGV[3])
      if ARGV[4] ~= '' then
        redis.call('HSET', policy_key, 'bol', ARGV[4])
      else
        redis.call('HDEL', policy_key, 'bol')
      end
    end
    for i, l in ipairs(locs) do
      changed[l] = true
      local a = levels(stock_key, policy_key, l)
      records[#records + 1] = change_record(l, 'policy_set', before[i], a, policy(policy_key, 'thr', l))
    end
    if #locs == 0 then
      -- No stock anywhere yet: one entry records the policy change itself.
      local zero = { oh = 0, rs = 0, ss = 0, av = 0 }
      records[1] = change_record('', 'policy_set', zero, zero, nil)
    end
  end

  if op == 'channel_rules' then
    -- The override is recorded in the ledger (one entry, no levels), so rebuild restores it.
    local override = ARGV[4]
    if override == table.concat({ '', '', '', '', '' }, US) then override = nil end
    set_state(ch, 'o:' .. channel, override)
    local zero = { oh = 0, rs = 0, ss = 0, av = 0 }
    records[1] = change_record('', 'channel_rules', zero, zero, nil)
  end

  -- Units that became available fill the lines backordered where they did, first.
  local filled_locs = {}
  for l in pairs(changed) do filled_locs[#filled_locs + 1] = l end
  table.sort(filled_locs)
  for _, l in ipairs(filled_locs) do
    if fill_backorders(stock_key, policy_key, l, ch, records) and ch.known then ch.known[l] = nil end
  end
  -- Against incoming, what a channel lists beyond stock follows the purchase orders.
  if (op == 'expected' or op == 'expected_cancelled') and backorder_policy(policy_key) == 'i' then
    changed[loc] = true
  end

  -- The channel the input named (its sale's oversold count rides on its record), then every
  -- other channel drawing from a location that changed.
  if not string.find(ARGV[13], '1', 1, true) then
    if spec ~= nil then
      local record = settle_channel(stock_key, policy_key, ch, channel, oversold)
      if record then channel_records[#channel_records + 1] = record end
    end
    settle_channels(stock_key, policy_key, ch, changed, channel_records, channel)
  end
  for _, record in ipairs(channel_records) do records[#records + 1] = record end

  table.insert(records, 1, header(at, 'applied'))
  return remember(dedup_key, fingerprint, table.concat(records, RS), ttl)
end

local replies = {}
local k, a = 1, 1
while a <= #ARGV do
  if ARGV[a] == 'mark' then
    replies[#replies + 1] = { 'marked', int(mark_published(KEYS[k])) }
    k, a = k + 1, a + 1
  else
    replies[#replies + 1] = apply({ KEYS[k], KEYS[k + 1], KEYS[k + 2], KEYS[k + 3] },
      { unpack(ARGV, a, a + 12) })
    k, a = k + 4, a + 13
  end
end
return replies
