-- restore_event: writes the dedup record of one event the ledger knows (`stockctl rebuild`), so
-- a late delivery of it is answered as a duplicate instead of being applied a second time.
--
-- KEYS[1]  dedup record  <prefix>:{<sku>}:evt:<event_id>
-- ARGV[1]  when it was applied, ms since the Unix epoch
-- ARGV[2]  result: applied | stale (a compare-and-set count that did not match)
-- ARGV[3]  stale: the on_hand the count expected, '' otherwise
-- ARGV[4]  stale: the on_hand it found, '' otherwise
-- ARGV[5]  milliseconds left of the dedup TTL, counted from when it was applied
--
-- Returns 1.
--
-- Invariant: the record has the fields seen() and remember() use (o, f, p). Its outcome is the
-- header alone (the ledger entry holds the changes), it is marked published (its derived events
-- are in the streams already), and its fingerprint is RESTORED_FINGERPRINT: the ledger does not
-- keep an event's content, so seen() takes any delivery of the event_id as a duplicate. It
-- expires when the lost record would have.

local record = KEYS[1]
local outcome = header(tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4])
redis.call('HSET', record, 'o', outcome, 'f', RESTORED_FINGERPRINT, 'p', '1')
redis.call('PEXPIRE', record, tonumber(ARGV[5]))
return 1
