-- order: the order's own record (one hash in the order's slot) and its state machine.
--
-- KEYS[1]  order hash  <prefix>:{o:<order-token>}:order
--   fields: fp (placement fingerprint), lines, hold, status (placing | confirmed | rejected |
--   cancelled | expired | fulfilled), cancelled, committed, decision (result payload)
-- ARGV[1]  action: place | decide | cancel | commit | expire | fulfilled
-- place:   ARGV[2] fingerprint, ARGV[3] encoded lines, ARGV[4] hold seconds
--          -> {'go', status} to (re)run the saga | {'decided', status, decision}
--             | {'cancelled'} | {'conflict'}
-- decide:  ARGV[2] confirmed | rejected, ARGV[3] decision payload, ARGV[4] expires_at_ms
--          -> {'ok'} | {'cancelled'} (cancelled meanwhile: the caller releases every line)
--             | {'decided', status, decision} (decided before: a replay)
-- cancel / expire / fulfilled:
--          -> {'release', status before, lines} when the caller must release the lines, or
--             {'nothing', status}
-- commit:  -> {'ok', status}
--
-- Invariant: a cancel and a placement of one order, in any interleaving, leave nothing
-- reserved: `cancelled` and `lines` live in this one key, so whichever comes second sees the
-- other.

local key, action = KEYS[1], ARGV[1]
local o = {}
local raw = redis.call('HGETALL', key)
for i = 1, #raw, 2 do o[raw[i]] = raw[i + 1] end

if action == 'place' then
  if o.fp and o.fp ~= ARGV[2] then return { 'conflict' } end
  if o.cancelled == '1' and not o.fp then
    redis.call('HSET', key, 'fp', ARGV[2], 'lines', ARGV[3], 'status', 'cancelled')
    return { 'cancelled' }
  end
  if o.status and o.status ~= 'placing' then
    return { 'decided', o.status, o.decision or '' }
  end
  redis.call('HSET', key, 'fp', ARGV[2], 'lines', ARGV[3], 'hold', ARGV[4], 'status', 'placing')
  return { 'go', 'placing' }
elseif action == 'decide' then
  if o.status ~= 'placing' then return { 'decided', o.status or '', o.decision or '' } end
  if o.cancelled == '1' then
    redis.call('HSET', key, 'status', 'cancelled')
    return { 'cancelled' }
  end
  redis.call('HSET', key, 'status', ARGV[2], 'decision', ARGV[3], 'expires', ARGV[4])
  return { 'ok' }
elseif action == 'cancel' or action == 'expire' or action == 'fulfilled' then
  local status = o.status or ''
  if action == 'cancel' then
    redis.call('HSET', key, 'cancelled', '1')
    if status == 'placing' then
      -- The placer sees the flag when it decides, and releases; release here too, in case the
      -- placer died: releasing is idempotent and blocks later reservations of these lines.
      return { 'release', status, o.lines or '' }
    end
  end
  if action == 'expire' and o.committed == '1' then return { 'nothing', status } end
  if status ~= 'confirmed' then return { 'nothing', status } end
  local final = { cancel = 'cancelled', expire = 'expired', fulfilled = 'fulfilled' }
  redis.call('HSET', key, 'status', final[action])
  return { 'release', status, o.lines or '' }
elseif action == 'commit' then
  redis.call('HSET', key, 'committed', '1')
  return { 'ok', o.status or '' }
end
return redis.error_reply('unknown action ' .. action)
