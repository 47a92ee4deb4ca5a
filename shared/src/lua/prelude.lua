-- Shared helpers, prepended to every stockflow script at load time.
--
-- Key layout of one SKU (every key carries the SKU's hash tag, so a script touches one slot):
--   <prefix>:{<sku-token>}:stock   hash  oh:<location> -> on_hand, rs:<location> -> reserved,
--       in:<location> -> incoming (units on open purchase orders), et:<location> -> the earliest
--       expected date among them (ms), po:<location>\31<po> -> what purchase order <po> still
--       has outstanding there, pd:<location>\31<po> -> its expected date (ms),
--       dm:<location> / qc:<location> / hd:<location> -> unsellable units (damaged, quality
--       control, held; part of on_hand, never available). Absent fields are 0.
--       bo:<location> -> units of order lines backordered there (waiting for stock).
--   <prefix>:{<sku-token>}:policy  hash  thr / ss (SKU defaults), thr:<location> / ss:<location>,
--       bo -> the backorder policy (i against incoming, c capped, u unlimited; absent: none),
--       bol -> the cap of a capped policy
--   <prefix>:{<sku-token>}:boq  sorted set  the backordered order lines (their record keys) in
--       order of placement (score: the order's stream sequence * 128 + the line's index)
--   <prefix>:{<sku-token>}:evt:<event_id>  hash  o -> outcome, f -> fingerprint, p -> published
--
-- Outcome encoding (stored in the dedup record, returned to the worker): records separated by
-- \30, fields by \31 (locations never contain control characters):
--   header:  1 \31 applied_at_ms \31 result \31 detail_a \31 detail_b
--   change:  location \31 kind \31 b_oh \31 b_rs \31 b_ss \31 b_av \31 a_oh \31 a_rs \31 a_ss
--            \31 a_av \31 threshold ("" when none) \31 alerts (comma-separated)
--            [\31 b_in \31 b_et \31 b_dm \31 b_qc \31 b_hd \31 a_in \31 a_et \31 a_dm \31 a_qc \31 a_hd
--             [\31 purchase order \31 its outstanding units after \31 its expected date]]
--            (the incoming and unsellable fields only when one of them is not 0, or a purchase
--            order follows: other outcomes keep the 12 fields older workers read)

local US, RS = '\31', '\30'
-- Fingerprint of a dedup record restored from the ledger (`restore_event.lua`, run by
-- `stockctl rebuild`): the ledger keeps what an event did, not its content, so a restored record
-- answers every later delivery of its event_id as a duplicate, whatever that delivery holds.
local RESTORED_FINGERPRINT = '*'
-- Quantities are Lua doubles: exact up to 2^53. Levels are kept within +-10^15.
local MAX_LEVEL = 1000000000000000

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function int(v)
  return string.format('%d', v)
end

local function num(v)
  if v == false or v == nil then return 0 end
  return tonumber(v)
end

-- Policy value for a location: its override, else the SKU default, else nil.
local function policy(policy_key, name, loc)
  local v = redis.call('HGET', policy_key, name .. ':' .. loc)
  if not v then v = redis.call('HGET', policy_key, name) end
  if v then return tonumber(v) end
  return nil
end

-- Levels of a location and its low-stock threshold (nil when none), in two reads: one per hash.
local function levels_and_threshold(stock_key, policy_key, loc)
  local s = redis.call('HMGET', stock_key, 'oh:' .. loc, 'rs:' .. loc, 'in:' .. loc, 'et:' .. loc,
    'dm:' .. loc, 'qc:' .. loc, 'hd:' .. loc)
  local p = redis.call('HMGET', policy_key, 'ss:' .. loc, 'ss', 'thr:' .. loc, 'thr')
  local oh, rs = num(s[1]), num(s[2])
  -- A missing field is false: the location's override, else the SKU default.
  local ss = tonumber(p[1] or p[2]) or 0
  local thr = p[3] or p[4]
  if thr then thr = tonumber(thr) else thr = nil end
  local dm, qc, hd = num(s[5]), num(s[6]), num(s[7])
  local un = dm + qc + hd
  -- One constructor with every field: a table grown field by field is rehashed as it grows.
  local l = { oh = oh, rs = rs, ss = ss, av = oh - rs - ss - un, un = un, inc = num(s[3]),
    eta = num(s[4]), dm = dm, qc = qc, hd = hd }
  return l, thr
end

-- Writes a level field of the stock hash, removing it at 0 (absent fields read as 0).
local function set_level(stock_key, field, value)
  if value == 0 then
    redis.call('HDEL', stock_key, field)
  else
    redis.call('HSET', stock_key, field, int(value))
  end
end

-- The earliest expected date of the purchase orders still outstanding at `loc` (its `pd:`
-- fields); 0 for none.
local function earliest_expected(stock_key, loc)
  local prefix = 'pd:' .. loc .. US
  local best = 0
  local flat = redis.call('HGETALL', stock_key)
  for i = 1, #flat, 2 do
    if string.sub(flat[i], 1, #prefix) == prefix then
      local at = tonumber(flat[i + 1])
      if best == 0 or at < best then best = at end
    end
  end
  return best
end

-- Levels `l` with on_hand set to `oh` (nothing else changed): available follows.
local function with_on_hand(l, oh)
  local un = l.un or 0
  return { oh = oh, rs = l.rs, ss = l.ss, av = oh - l.rs - l.ss - un, un = un, inc = l.inc,
    eta = l.eta, dm = l.dm, qc = l.qc, hd = l.hd }
end

local function levels(stock_key, policy_key, loc)
  local l = levels_and_threshold(stock_key, policy_key, loc)
  return l
end

-- Alerts fire on crossings only, so each crossing raises exactly one.
local function crossings(b, a, thr)
  local out = {}
  if thr ~= nil and b.av > thr and a.av <= thr then out[#out + 1] = 'low_stock' end
  if b.av > 0 and a.av <= 0 then out[#out + 1] = 'out_of_stock' end
  if b.av <= 0 and a.av > 0 then out[#out + 1] = 'back_in_stock' end
  if b.oh >= 0 and a.oh < 0 then out[#out + 1] = 'negative_stock' end
  return out
end

-- One format call builds the record (not one string per field).
local CHANGE_FORMAT = '%s' .. US .. '%s' .. string.rep(US .. '%d', 8) .. string.rep(US .. '%s', 2)

local MODEL_FORMAT = string.rep(US .. '%d', 10)

local function change_record(loc, kind, b, a, thr, model)
  local t = ''
  if thr ~= nil then t = int(thr) end
  local record = string.format(CHANGE_FORMAT, loc, kind, b.oh, b.rs, b.ss, b.av, a.oh, a.rs, a.ss,
    a.av, t, table.concat(crossings(b, a, thr), ','))
  -- Incoming and unsellable fields only where the location has some (or `model` asks for them:
  -- a purchase order's trailer follows them), so every other outcome stays readable by workers
  -- that predate them: a rolling upgrade or a rollback meets no record it cannot parse.
  local bi, be, bd, bq, bh = b.inc or 0, b.eta or 0, b.dm or 0, b.qc or 0, b.hd or 0
  local ai, ae, ad, aq, ah = a.inc or 0, a.eta or 0, a.dm or 0, a.qc or 0, a.hd or 0
  if model or bi ~= 0 or be ~= 0 or bd ~= 0 or bq ~= 0 or bh ~= 0 or ai ~= 0 or ae ~= 0
      or ad ~= 0 or aq ~= 0 or ah ~= 0 then
    record = record .. string.format(MODEL_FORMAT, bi, be, bd, bq, bh, ai, ae, ad, aq, ah)
  end
  return record
end

local HEADER_FORMAT = '1' .. US .. '%d' .. string.rep(US .. '%s', 3)

local function header(applied_at, result, detail_a, detail_b)
  return string.format(HEADER_FORMAT, applied_at, result, detail_a or '', detail_b or '')
end

-- Returns the stored outcome when the event was seen, or a conflict when the same event_id
-- came with different content; nil when it is new.
local function seen(dedup_key, fingerprint)
  local stored = redis.call('HMGET', dedup_key, 'o', 'f', 'p')
  if not stored[1] then return nil end
  if stored[2] ~= fingerprint and stored[2] ~= RESTORED_FINGERPRINT then
    return { 'conflict', stored[2] }
  end
  return { 'duplicate', stored[1], stored[3] or '0' }
end

local function remember(dedup_key, fingerprint, outcome, ttl)
  redis.call('HSET', dedup_key, 'o', outcome, 'f', fingerprint, 'p', '0')
  redis.call('EXPIRE', dedup_key, ttl)
  return { 'applied', outcome, '0' }
end

-- Records that an event's derived events are stored in JetStream, so a later duplicate of the
-- event does not publish them again: 1 when marked, 0 when the record is gone (expired; nothing
-- is left behind). One command when the record holds `p` (every record remember() or
-- restore_event.lua writes does): HSET then adds no field. When it added one, the record either
-- lacked `p` or was gone, and the HSET created it; a created record holds `p` alone and is
-- deleted in the same atomic step.
local function mark_published(dedup_key)
  if redis.call('HSET', dedup_key, 'p', '1') == 0 then return 1 end
  if redis.call('HLEN', dedup_key) > 1 then return 1 end
  redis.call('DEL', dedup_key)
  return 0
end

-- Backorders and preorders. A line stock cannot cover may be confirmed as backordered when the
-- SKU's policy allows it: it holds what stock covers now, and the rest waits in the SKU's queue
-- (`boq`) for units that become available at its location, filled strictly in order of
-- placement. Its record keeps bo (units still backordered), bq (units backordered at placement),
-- bol (the location), bor (its rank in the queue), boe (the expected date), oid / lid (order
-- and line ids, for the ledger). Invariant: bo:<l> is the sum of `bo` over the queued lines at
-- <l>, and a location with backordered units has nothing available (a fill takes it first).
--
-- A backorder record in an outcome follows the change record it belongs to:
--   \28 \31 order_id \31 line_id \31 units filled \31 units still backordered \31 expected date
--   \31 rank

local FS = '\28'
-- What a channel lists beyond stock under an unlimited policy (see proto/README.md).
local UNLIMITED_BACKORDER_LISTED = 1000000

local function backorder_queue(stock_key)
  -- The queue shares the stock hash's hash tag: `...:stock` -> `...:boq`.
  return string.sub(stock_key, 1, #stock_key - 5) .. 'boq'
end

-- The SKU's backorder policy ('n' for none) and the cap of a capped one.
local function backorder_policy(policy_key)
  local p = redis.call('HMGET', policy_key, 'bo', 'bol')
  return p[1] or 'n', tonumber(p[2]) or 0
end

-- Units backordered at every location together.
local function backordered_total(stock_key)
  local total = 0
  local flat = redis.call('HGETALL', stock_key)
  for i = 1, #flat, 2 do
    if string.sub(flat[i], 1, 3) == 'bo:' then total = total + tonumber(flat[i + 1]) end
  end
  return total
end

-- How many more units the policy lets be backordered at `loc` (incoming and its backordered
-- units given for an against-incoming policy; `total` the SKU's backordered units for a capped
-- one).
local function backorder_allowance(pol, limit, inc, bo_here, total)
  if pol == 'i' then return math.max(inc - bo_here, 0) end
  if pol == 'c' then return math.max(limit - total, 0) end
  if pol == 'u' then return MAX_LEVEL end
  return 0
end

-- The date by which `upto` units (counting from the first already backordered at `loc`) are
-- expected there: the purchase orders in order of date, until they cover `upto`; 0 when they
-- never do (or nothing is incoming).
local function backorder_expected_at(stock_key, loc, upto)
  local prefix_o, prefix_d = 'po:' .. loc .. US, 'pd:' .. loc .. US
  local outstanding, dates = {}, {}
  local flat = redis.call('HGETALL', stock_key)
  for i = 1, #flat, 2 do
    local f = flat[i]
    if string.sub(f, 1, #prefix_o) == prefix_o then
      outstanding[string.sub(f, #prefix_o + 1)] = tonumber(flat[i + 1])
    elseif string.sub(f, 1, #prefix_d) == prefix_d then
      dates[#dates + 1] = { po = string.sub(f, #prefix_d + 1), at = tonumber(flat[i + 1]) }
    end
  end
  table.sort(dates, function(a, b)
    if a.at ~= b.at then return a.at < b.at end
    return a.po < b.po
  end)
  local covered = 0
  for _, d in ipairs(dates) do
    covered = covered + (outstanding[d.po] or 0)
    if covered >= upto then return d.at end
  end
  return 0
end

local function backorder_record(order_id, line_id, filled, left, eta, rank)
  return table.concat({ FS, order_id, line_id, int(filled), int(left), int(eta), rank }, US)
end

-- Sales channels. What a channel may sell of this SKU is computed here, in the same atomic step
-- as every change of its levels, from the SKU's own keys only (one slot on Redis Cluster):
--   <prefix>:{<sku-token>}:ats  hash  s:<ch> spec, o:<ch> the SKU's override of its rules,
--     q:<ch> quantity, v:<ch> its version, x:<ch> set while an oversold alert stands,
--     r:<ch>:<location> the channel's own reservations there.
-- A spec is rules_version \31 strategy (p priority, m most available, x removed) \31 buffer
-- \31 percent \31 max_listed \31 end_when_below \31 own_reservations_only ('1'/'0'/'')
-- \31 locations separated by \29 [\31 backorder policy: n, i, u or c<cap>, when the channel sets
-- one]. The worker passes the specs it knows as records separated
-- by \30, each `id \31 spec`; a stored spec newer than the passed one wins, so a worker whose
-- view of the channels lags never computes with older rules than another worker already used.
--
-- A channel record in an outcome: \29 \31 channel \31 before \31 after \31 version (0: the
-- quantity did not change) \31 rules_version \31 pool \31 oversold units \31 alert ('1'/'0').

local GS = '\29'

local function split(text, sep)
  local out = {}
  if text == nil or text == '' then return out end
  local start = 1
  while true do
    local i = string.find(text, sep, start, true)
    if not i then
      out[#out + 1] = string.sub(text, start)
      return out
    end
    out[#out + 1] = string.sub(text, start, i - 1)
    start = i + 1
  end
end

local function parse_spec(id, text)
  local f = split(text, US)
  return { id = id, text = text, rev = tonumber(f[1]) or 0, strategy = f[2],
    rules = { f[3] or '', f[4] or '', f[5] or '', f[6] or '', f[7] or '' }, locs = split(f[8], GS),
    bo = f[9] or '' }
end

-- Specs parsed in this script call, by their text: a batched call passes the same specs with
-- every item, and a spec is only read once parsed.
local parsed_specs, parsed_passed = {}, {}

local function spec_of(id, text)
  local key = id .. US .. text
  local spec = parsed_specs[key]
  if not spec then
    spec = parse_spec(id, text)
    parsed_specs[key] = spec
  end
  return spec
end

-- The specs a worker passed, parsed once per call: a list of specs, in their order.
local function passed_specs(passed)
  local list = parsed_passed[passed]
  if not list then
    list = {}
    for _, record in ipairs(split(passed, RS)) do
      local cut = string.find(record, US, 1, true)
      list[#list + 1] = spec_of(string.sub(record, 1, cut - 1), string.sub(record, cut + 1))
    end
    parsed_passed[passed] = list
  end
  return list
end

-- The SKU's channel state and the specs to compute with.
local function load_channels(ats_key, passed)
  local st = {}
  local flat = redis.call('HGETALL', ats_key)
  for i = 1, #flat, 2 do st[flat[i]] = flat[i + 1] end
  local specs = {}
  for field, value in pairs(st) do
    if string.sub(field, 1, 2) == 's:' then
      local id = string.sub(field, 3)
      specs[id] = spec_of(id, value)
    end
  end
  for _, spec in ipairs(passed_specs(passed)) do
    local id = spec.id
    if not specs[id] or specs[id].rev < spec.rev then specs[id] = spec end
  end
  return { key = ats_key, st = st, specs = specs }
end

-- The channel's rules with the SKU's override applied field by field.
local function effective_rules(ch, spec)
  local r = { spec.rules[1], spec.rules[2], spec.rules[3], spec.rules[4], spec.rules[5] }
  local o = ch.st['o:' .. spec.id]
  if o then
    local f = split(o, US)
    for i = 1, 5 do
      if f[i] and f[i] ~= '' then r[i] = f[i] end
    end
  end
  return r
end

-- Available at `l` as channel `id` sees it: its own reservations only when its rules say so.
-- `ch.known[l]`, when a script set it, holds the levels of `l` as they now are in Redis (the
-- script wrote them itself), saving the reads.
local function channel_available(stock_key, policy_key, ch, id, own, l)
  local lv = (ch.known and ch.known[l]) or levels(stock_key, policy_key, l)
  local rs = lv.rs
  if own then rs = num(ch.st['r:' .. id .. ':' .. l]) end
  -- Unsellable units are never in a channel's pool.
  return lv.oh - rs - lv.ss - lv.un
end

-- The backorder policy channel `spec` sells this SKU under, and its cap: the SKU's override of
-- the channel's rules (its sixth field), else the channel's own (its spec's), else the SKU's
-- policy (read once per script call).
local function channel_backorder_policy(policy_key, ch, spec)
  local code = split(ch.st['o:' .. spec.id] or '', US)[6]
  if code == nil or code == '' then code = spec.bo end
  if code ~= nil and code ~= '' then
    return string.sub(code, 1, 1), tonumber(string.sub(code, 2)) or 0
  end
  if ch.bo == nil then
    local pol, limit = backorder_policy(policy_key)
    ch.bo = { pol = pol, limit = limit }
  end
  return ch.bo.pol, ch.bo.limit
end

-- Units the backorder policy lets channel `spec` sell beyond stock: against incoming, what is
-- incoming at its locations less what is backordered there; capped, the cap less what is
-- backordered; unlimited, UNLIMITED_BACKORDER_LISTED.
local function channel_backorders(stock_key, policy_key, ch, spec)
  local pol, limit = channel_backorder_policy(policy_key, ch, spec)
  if pol == 'n' then return 0 end
  if pol == 'u' then return UNLIMITED_BACKORDER_LISTED end
  if pol == 'c' then return backorder_allowance(pol, limit, 0, 0, backordered_total(stock_key)) end
  local beyond = 0
  for _, l in ipairs(spec.locs) do
    local s = redis.call('HMGET', stock_key, 'in:' .. l, 'bo:' .. l)
    beyond = beyond + backorder_allowance(pol, 0, num(s[1]), num(s[2]), 0)
  end
  return beyond
end

local function channel_quantity(stock_key, policy_key, ch, spec)
  if spec.strategy == 'x' then return 0, 0 end
  local r = effective_rules(ch, spec)
  local own = r[5] == '1'
  local pool = 0
  for _, l in ipairs(spec.locs) do
    local av = channel_available(stock_key, policy_key, ch, spec.id, own, l)
    if av > 0 then pool = pool + av end
  end
  local q = pool
  if r[1] ~= '' then q = q - tonumber(r[1]) end
  if r[2] ~= '' then q = math.floor(q * tonumber(r[2]) / 100) end
  if r[3] ~= '' and q > tonumber(r[3]) then q = tonumber(r[3]) end
  if r[4] ~= '' and q < tonumber(r[4]) then q = 0 end
  if q < 0 then q = 0 end
  -- What the backorder policy lets the channel sell beyond stock (a preorder listing), within
  -- its maximum listed.
  local beyond = channel_backorders(stock_key, policy_key, ch, spec)
  if beyond > 0 then
    q = q + beyond
    if r[3] ~= '' and q > tonumber(r[3]) then q = tonumber(r[3]) end
  end
  return q, pool
end

-- Adds `delta` to channel `id`'s own reservations at `l`.
local function add_own_reserved(ch, id, l, delta)
  local field = 'r:' .. id .. ':' .. l
  local v = num(ch.st[field]) + delta
  if v == 0 then
    redis.call('HDEL', ch.key, field)
    ch.st[field] = nil
  else
    redis.call('HSET', ch.key, field, int(v))
    ch.st[field] = int(v)
  end
end

local function set_state(ch, field, value)
  if value == nil then
    if ch.st[field] ~= nil then redis.call('HDEL', ch.key, field) end
  elseif ch.st[field] ~= value then
    redis.call('HSET', ch.key, field, value)
  end
  ch.st[field] = value
end

-- Recomputes channel `id` and stores it; returns its record, or nil when there is nothing to say.
-- `oversold`: units a sale of this channel took beyond what the channel offered.
local function settle_channel(stock_key, policy_key, ch, id, oversold)
  local spec = ch.specs[id]
  local stored = ch.st['q:' .. id]
  -- A removed channel this SKU never listed leaves nothing behind.
  if spec.strategy == 'x' and stored == nil then return nil end
  set_state(ch, 's:' .. id, spec.text)
  local before = num(stored)
  local q, pool = channel_quantity(stock_key, policy_key, ch, spec)
  local version = 0
  if stored == nil or before ~= q then
    version = num(ch.st['v:' .. id]) + 1
    -- Both fields in one command.
    local qf, vf, qv, vv = 'q:' .. id, 'v:' .. id, int(q), int(version)
    if ch.st[qf] ~= qv and ch.st[vf] ~= vv then
      redis.call('HSET', ch.key, qf, qv, vf, vv)
      ch.st[qf], ch.st[vf] = qv, vv
    else
      set_state(ch, qf, qv)
      set_state(ch, vf, vv)
    end
  end
  local alert = '0'
  oversold = oversold or 0
  if oversold > 0 then
    if ch.st['x:' .. id] == nil then alert = '1' end
    set_state(ch, 'x:' .. id, '1')
  elseif q > 0 then
    set_state(ch, 'x:' .. id, nil)
  end
  if version == 0 and oversold == 0 then return nil end
  return table.concat({ GS, id, int(before), int(q), int(version), int(spec.rev), int(pool),
    int(oversold), alert }, US)
end

-- Recomputes every channel drawing from one of the locations in `changed` (a set); appends
-- their records to `records`.
local function settle_channels(stock_key, policy_key, ch, changed, records, skip)
  local ids = {}
  for id, spec in pairs(ch.specs) do
    if id ~= skip then
      for _, l in ipairs(spec.locs) do
        if changed[l] then
          ids[#ids + 1] = id
          break
        end
      end
    end
  end
  table.sort(ids)
  for _, id in ipairs(ids) do
    local record = settle_channel(stock_key, policy_key, ch, id, 0)
    if record then records[#records + 1] = record end
  end
end

-- The channel's locations in the order its allocation strategy takes them, each with its
-- available as the channel sees it.
local function allocation_order(stock_key, policy_key, ch, spec)
  local own = effective_rules(ch, spec)[5] == '1'
  local order = {}
  for i, l in ipairs(spec.locs) do
    order[i] = { loc = l, i = i, av = channel_available(stock_key, policy_key, ch, spec.id, own, l) }
  end
  if spec.strategy == 'm' then
    table.sort(order, function(a, b)
      if a.av ~= b.av then return a.av > b.av end
      return a.i < b.i
    end)
  end
  return order
end

-- Fills the lines backordered at `loc` from what is available there, in order of placement:
-- per line, reserved += units, one `backorder_filled` change and its backorder record appended
-- to `records`. A line filled whole leaves the queue; a line filled in part stops the fill (no
-- later line overtakes it). `ch` (when given) follows the lines' channels' own reservations.
-- Returns whether anything was filled.
local function fill_backorders(stock_key, policy_key, loc, ch, records)
  local waiting = num(redis.call('HGET', stock_key, 'bo:' .. loc))
  if waiting <= 0 then return false end
  local queue = backorder_queue(stock_key)
  local filled = false
  for _, line in ipairs(redis.call('ZRANGE', queue, 0, -1)) do
    local f = redis.call('HMGET', line, 'bol', 'bo', 'oid', 'lid', 'bor', 'boe', 'ch', 'parts')
    if f[1] == loc then
      local b, thr = levels_and_threshold(stock_key, policy_key, loc)
      if b.av <= 0 then break end
      local want = tonumber(f[2]) or 0
      local t = math.min(want, b.av)
      redis.call('HINCRBY', stock_key, 'rs:' .. loc, t)
      set_level(stock_key, 'bo:' .. loc, num(redis.call('HGET', stock_key, 'bo:' .. loc)) - t)
      local parts = {}
      local placed = false
      for _, p in ipairs(split(f[8] or '', RS)) do
        local x = split(p, US)
        local part = { x[1], tonumber(x[2]), x[3] }
        if not placed and part[1] == loc then
          part[2] = part[2] + t
          placed = true
        end
        parts[#parts + 1] = table.concat({ part[1], int(part[2]), part[3] }, US)
      end
      if not placed then parts[#parts + 1] = table.concat({ loc, int(t), '0' }, US) end
      local left = want - t
      redis.call('HSET', line, 'bo', int(left), 'parts', table.concat(parts, RS))
      if left == 0 then redis.call('ZREM', queue, line) end
      if ch ~= nil and f[7] and f[7] ~= '' then add_own_reserved(ch, f[7], loc, t) end
      local a = levels(stock_key, policy_key, loc)
      records[#records + 1] = change_record(loc, 'backorder_filled', b, a, thr)
      records[#records + 1] = backorder_record(f[3], f[4], t, left, tonumber(f[6]) or 0, f[5])
      filled = true
      if left > 0 then break end
    end
  end
  return filled
end
