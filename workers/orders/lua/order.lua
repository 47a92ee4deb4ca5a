-- order: the order's own record (one hash in the order's slot) and its state machine.
--
-- KEYS[1]  order hash  <prefix>:{o:<order-token>}:order
--   fields: fp (placement fingerprint), lines, hold, ch (the sales channel, '' for none),
--   status (placing | confirmed | rejected | cancelled | expired | fulfilled), cancelled,
--   committed, expires (ms), published (the decision is stored in JetStream), from (status
--   before a release), settled (the release is finished: lines released, result stored)
-- ARGV[1]  action (each reply below is decoded once, by the type named in brackets, in
--          src/replies.rs: any other reply is an error there, never a default)
-- place:     ARGV[2] fingerprint, ARGV[3] encoded lines, ARGV[4] hold seconds, ARGV[5] channel
--            ('' or absent for none)
--            -> [Placement] {'go'} to (re)run the saga | {'decided', status, published}
--               | {'cancelled'} | {'conflict'}
-- decide:    ARGV[2] confirmed | rejected, ARGV[3] expires_at_ms
--            -> [Decide] {'ok'} | {'cancelled'} (cancelled meanwhile: the caller releases
--               every line)
--               | {'decided', status, published} (decided before: a replay)
-- published: ARGV[2] retention seconds; the decision is stored   -> [Marked] {'ok'}
-- cancel / expire / fulfilled / finish (finish only completes an interrupted release):
--            ARGV[2] retention seconds
--            -> [Ending] {'release', status before, lines, status now, published, channel}
--               while the caller must (still) release the lines | {'nothing', status}
-- settled:   ARGV[2] retention seconds; the release is finished   -> [Marked] {'ok'}
-- commit:    ARGV[2] retention seconds                            -> [Committed] {'ok', status}
--
-- Invariants: a cancel and a placement of one order, in any interleaving, leave nothing
-- reserved — `cancelled` and `lines` live in this one key, so whichever comes second sees the
-- other. A release interrupted by a crash is finished by the redelivery: the status moves
-- first, `settled` only once the caller is done.
--
-- Retention: the record expires (retention seconds) once the order is final — ended
-- (cancelled, expired, fulfilled) and settled, or rejected and its decision published — and
-- never earlier: until then a redelivery may still need it to finish a release or a report.
-- A record a cancel or commit creates for an order not placed (yet, or any more, its record
-- expired) expires too, unless a placement arrives first. Until then the reader
-- (`src/read.rs`) sees a cancel's record as a cancelled order without lines, and a commit's as
-- an unknown order (nothing was placed): no record this script writes is unreadable. Retention is at least the dedup TTL,
-- and the order record's clock starts after its lines' (released before `settled` / the
-- rejection), so while any line record of the order exists, the order record does: a late
-- duplicate placement meets the order, never a bare line record.

-- The status names, spelled as `OrderStatus::as_str` (src/read.rs) spells them; a unit test
-- (src/replies.rs) keeps this line equal to the Rust side. Nothing below spells a status.
local PLACING, CONFIRMED, REJECTED, CANCELLED, EXPIRED, FULFILLED = 'placing', 'confirmed', 'rejected', 'cancelled', 'expired', 'fulfilled'

local key, action = KEYS[1], ARGV[1]
local o = {}
local raw = redis.call('HGETALL', key)
for i = 1, #raw, 2 do o[raw[i]] = raw[i + 1] end
local status = o.status or ''
local ended = { [CANCELLED] = true, [EXPIRED] = true, [FULFILLED] = true }

-- Starts the retention clock of a record that will not change any more.
local function retain()
  redis.call('EXPIRE', key, tonumber(ARGV[2]))
end

if action == 'place' then
  local channel = ARGV[5] or ''
  if o.fp and o.fp ~= ARGV[2] then return { 'conflict' } end
  if o.cancelled == '1' and not o.fp then
    redis.call('HSET', key, 'fp', ARGV[2], 'lines', ARGV[3], 'ch', channel, 'status', CANCELLED,
      'from', '')
    -- The cancel's retention stops until the caller has reported it (`settled`).
    redis.call('PERSIST', key)
    return { 'cancelled' }
  end
  if status ~= '' and status ~= PLACING then
    return { 'decided', status, o.published or '0' }
  end
  redis.call('HSET', key, 'fp', ARGV[2], 'lines', ARGV[3], 'hold', ARGV[4], 'ch', channel,
    'status', PLACING)
  -- A commit that came first set a retention on the bare record: a running order keeps it.
  redis.call('PERSIST', key)
  return { 'go' }
elseif action == 'decide' then
  if status ~= PLACING then return { 'decided', status, o.published or '0' } end
  if o.cancelled == '1' then
    redis.call('HSET', key, 'status', CANCELLED, 'from', PLACING)
    return { 'cancelled' }
  end
  redis.call('HSET', key, 'status', ARGV[2], 'expires', ARGV[3])
  return { 'ok' }
elseif action == 'published' then
  -- Never recreate a record that is gone: a bare flag would read as an unknown order state.
  if #raw == 0 then return { 'ok' } end
  redis.call('HSET', key, 'published', '1')
  if status == REJECTED or (ended[status] and o.settled == '1') then retain() end
  return { 'ok' }
elseif action == 'settled' then
  if #raw == 0 then return { 'ok' } end
  redis.call('HSET', key, 'settled', '1')
  if ended[status] then retain() end
  return { 'ok' }
elseif action == 'cancel' or action == 'expire' or action == 'fulfilled' or action == 'finish' then
  if action == 'cancel' then
    redis.call('HSET', key, 'cancelled', '1')
    -- Not placed (yet, or any more): the cancel is remembered for the retention.
    if status == '' then retain() end
    if status == PLACING then
      -- The placer sees the flag when it decides, and releases; release here too, in case the
      -- placer died: releasing is idempotent and blocks later reservations of these lines.
      return { 'release', status, o.lines or '', status, o.published or '0', o.ch or '' }
    end
  end
  if ended[status] then
    if o.settled ~= '1' then
      return { 'release', o.from or '', o.lines or '', status, o.published or '0', o.ch or '' }
    end
    return { 'nothing', status }
  end
  if action == 'finish' then return { 'nothing', status } end
  if action == 'expire' and o.committed == '1' then return { 'nothing', status } end
  if status ~= CONFIRMED then return { 'nothing', status } end
  local final = { cancel = CANCELLED, expire = EXPIRED, fulfilled = FULFILLED }
  redis.call('HSET', key, 'status', final[action], 'from', status)
  return { 'release', status, o.lines or '', final[action], o.published or '0', o.ch or '' }
elseif action == 'commit' then
  redis.call('HSET', key, 'committed', '1')
  if status == '' then retain() end
  return { 'ok', status }
end
return redis.error_reply('unknown action ' .. action)
