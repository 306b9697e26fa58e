-- POST a fixed or templated body to one path and report one JSON line in done().
--
-- wrk ... -s post.lua URL -- PLAN_FILE
-- The plan file has one key=value per line: path, content_type, accept, authorization,
-- headers (hex of "Name: value\n" lines), mode (fixed | random | sequence), body (hex,
-- fixed mode), prefix and suffix (hex:
-- the body is prefix .. msgpack uint32(n) .. suffix), lo, hi, threads.
-- Responses are counted by HTTP status and by the node's X-Cache-Status header, so a
-- run can prove that every request really was a hit (or a miss).

local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

local function unhex(s)
  return (s:gsub("..", function(cc) return string.char(tonumber(cc, 16)) end))
end

local function u32(n)
  return string.char(math.floor(n / 16777216) % 256, math.floor(n / 65536) % 256,
                     math.floor(n / 256) % 256, n % 256)
end

function init(args)
  local plan = {}
  local f = assert(io.open(args[1], "r"))
  for line in f:lines() do
    local k, v = line:match("^([%w_]+)=(.*)$")
    if k then plan[k] = v end
  end
  f:close()
  wrk.method = "POST"
  wrk.path = plan.path
  wrk.headers["Content-Type"] = plan.content_type
  wrk.headers["Accept"] = plan.accept
  if plan.authorization and plan.authorization ~= "" then
    wrk.headers["Authorization"] = plan.authorization
  end
  if plan.headers then
    for k, v in unhex(plan.headers):gmatch("([^:\n]+): ([^\n]*)\n") do
      wrk.headers[k] = v
    end
  end
  statuses = {}
  cache = {}
  if plan.mode == "fixed" then
    wrk.body = unhex(plan.body)
    return -- no request(): wrk sends its prebuilt request, the cheapest path
  end
  local prefix, suffix = unhex(plan.prefix), unhex(plan.suffix)
  local lo, hi = tonumber(plan.lo), tonumber(plan.hi)
  local stride = tonumber(plan.threads)
  local counter = lo + (tonumber(id) or 0)
  math.randomseed(os.time() + (tonumber(id) or 0))
  if plan.mode == "random" then
    request = function()
      return wrk.format(nil, nil, nil, prefix .. "\206" .. u32(math.random(lo, hi)) .. suffix)
    end
  else
    request = function()
      local n = counter
      counter = counter + stride
      if n > hi then n = lo end -- wrapped: only a run far longer than planned gets here
      return wrk.format(nil, nil, nil, prefix .. "\206" .. u32(n) .. suffix)
    end
  end
end

function response(status, headers, body)
  local s = tostring(status)
  statuses[s] = (statuses[s] or 0) + 1
  local c = headers["X-Cache-Status"] or headers["x-cache-status"] or "-"
  cache[c] = (cache[c] or 0) + 1
end

local function json_counts(t)
  local parts = {}
  for k, v in pairs(t) do
    table.insert(parts, string.format('"%s": %d', k, v))
  end
  return "{" .. table.concat(parts, ", ") .. "}"
end

local function merge(into, t)
  for k, v in pairs(t or {}) do into[k] = (into[k] or 0) + v end
end

function done(summary, latency, requests)
  local all_status, all_cache = {}, {}
  for _, thread in ipairs(threads) do
    merge(all_status, thread:get("statuses"))
    merge(all_cache, thread:get("cache"))
  end
  local deciles = {}
  for p = 10, 100, 10 do
    local v = p == 100 and latency.max or latency:percentile(p) -- percentile(100) is 0 in wrk
    table.insert(deciles, string.format("%.3f", v / 1000))
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_s": %.6f, "bytes": %d, ' ..
    '"mean_ms": %.3f, "p50_ms": %.3f, "p90_ms": %.3f, "p99_ms": %.3f, "max_ms": %.3f, ' ..
    '"deciles_ms": [%s], "errors": {"connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d}, "statuses": %s, "cache_statuses": %s}\n',
    summary.requests, summary.duration / 1e6, summary.bytes,
    latency.mean / 1000, latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000, table.concat(deciles, ", "),
    e.connect, e.read, e.write, e.status, e.timeout,
    json_counts(all_status), json_counts(all_cache)))
end
