-- mark_published: records that an event's derived events are stored in JetStream, so a later
-- duplicate of the event does not publish them again (after JetStream's duplicate window).
-- KEYS[1]  dedup record of the event
-- Returns  1 when marked, 0 when the record is gone (expired): nothing is created.
-- (The stock worker marks inside its `apply_stock` batches; the function is the prelude's.)
return mark_published(KEYS[1])
