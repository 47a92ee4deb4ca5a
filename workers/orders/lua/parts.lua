-- parts: where an order line's units are held, shared by the line scripts (prepended after the
-- shared prelude).
--
-- A line record keeps its parts in `parts`: records separated by \30, each
-- `location \31 units \31 units shipped`, in the order they were allocated (a line of a channel
-- order may be split across the channel's locations; any other line has one part). `loc` is the
-- first part's location, `qty` and `shipped` the line's totals. A record written before lines
-- could be split has no `parts`: its one part is `loc`, `qty`, `shipped`.

local function read_parts(record)
  local f = redis.call('HMGET', record, 'parts', 'loc', 'qty', 'shipped')
  local out = {}
  if f[1] then
    for _, p in ipairs(split(f[1], RS)) do
      local x = split(p, US)
      out[#out + 1] = { loc = x[1], qty = tonumber(x[2]), shipped = tonumber(x[3]) }
    end
  elseif f[2] then
    out[1] = { loc = f[2], qty = num(f[3]), shipped = num(f[4]) }
  end
  return out
end

local function encode_parts(parts)
  local out = {}
  for i, p in ipairs(parts) do out[i] = table.concat({ p.loc, int(p.qty), int(p.shipped) }, US) end
  return table.concat(out, RS)
end

-- The outcome of a line step: its header, the level changes, then the channel records.
local function line_outcome(changes, channel_records)
  local records = { header(now_ms(), 'applied') }
  for _, r in ipairs(changes) do records[#records + 1] = r end
  for _, r in ipairs(channel_records) do records[#records + 1] = r end
  return table.concat(records, RS)
end
