
-- batch: the tail of every order script. The script above is the body of `step`, a function of
-- its own KEYS and ARGV (the loader wraps it: src/batch.rs), so one call runs it for many items,
-- one after the other, exactly as that many calls of their own would run in that order.
--
-- KEYS  every item's keys, item after item
-- ARGV  per item: its number of keys, its number of arguments, then its arguments
--
-- Returns one reply per item, in order: the step's reply, or {'__step_error', message} when the
-- step raised an error (what it wrote before the error stays, as it would for a call of its own;
-- the items around it are not affected). Every key of a call must share one slot on Redis Cluster: the
-- worker groups the items by slot there (src/batch.rs).

local replies, k, a = {}, 1, 1
while a <= #ARGV do
  local nk, na = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  local keys, args = {}, {}
  for i = 1, nk do keys[i] = KEYS[k + i - 1] end
  for i = 1, na do args[i] = ARGV[a + 1 + i] end
  k, a = k + nk, a + 2 + na
  local ok, reply = pcall(step, keys, args)
  if not ok then
    -- A plain array, not an error reply: the client fails a whole call that holds one.
    if type(reply) == 'table' and reply.err then reply = reply.err end
    reply = { '__step_error', tostring(reply) }
  end
  replies[#replies + 1] = reply
end
return replies
