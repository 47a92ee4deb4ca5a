-- Shared helpers, prepended to every stockflow script at load time.
--
-- Key layout of one SKU (every key carries the SKU's hash tag, so a script touches one slot):
--   <prefix>:{<sku-token>}:stock   hash  oh:<location> -> on_hand, rs:<location> -> reserved
--   <prefix>:{<sku-token>}:policy  hash  thr / ss (SKU defaults), thr:<location> / ss:<location>
--   <prefix>:{<sku-token>}:evt:<event_id>  hash  o -> outcome, f -> fingerprint, p -> published
--
-- Outcome encoding (stored in the dedup record, returned to the worker): records separated by
-- \30, fields by \31 (locations never contain control characters):
--   header:  1 \31 applied_at_ms \31 result \31 detail_a \31 detail_b
--   change:  location \31 kind \31 b_oh \31 b_rs \31 b_ss \31 b_av \31 a_oh \31 a_rs \31 a_ss
--            \31 a_av \31 threshold ("" when none) \31 alerts (comma-separated)

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
  local s = redis.call('HMGET', stock_key, 'oh:' .. loc, 'rs:' .. loc)
  local p = redis.call('HMGET', policy_key, 'ss:' .. loc, 'ss', 'thr:' .. loc, 'thr')
  local oh, rs = num(s[1]), num(s[2])
  -- A missing field is false: the location's override, else the SKU default.
  local ss = tonumber(p[1] or p[2]) or 0
  local thr = p[3] or p[4]
  if thr then thr = tonumber(thr) else thr = nil end
  return { oh = oh, rs = rs, ss = ss, av = oh - rs - ss }, thr
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

local function change_record(loc, kind, b, a, thr)
  local t = ''
  if thr ~= nil then t = int(thr) end
  return table.concat({ loc, kind, int(b.oh), int(b.rs), int(b.ss), int(b.av),
    int(a.oh), int(a.rs), int(a.ss), int(a.av), t, table.concat(crossings(b, a, thr), ',') }, US)
end

local function header(applied_at, result, detail_a, detail_b)
  return table.concat({ '1', int(applied_at), result, detail_a or '', detail_b or '' }, US)
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
