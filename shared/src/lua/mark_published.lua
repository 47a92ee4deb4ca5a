-- mark_published: records that an event's derived events are stored in JetStream, so a later
-- duplicate of the event does not publish them again (after JetStream's duplicate window).
-- KEYS[1]  dedup record of the event
-- Returns  1 when marked, 0 when the record is gone (expired): nothing is created.
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'p', '1')
  return 1
end
return 0
