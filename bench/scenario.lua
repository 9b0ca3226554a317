-- wrk script: replays a request file, one request per line:
--   METHOD <tab> PATH <tab> BEARER TOKEN <tab> BODY (may be empty)
-- Arguments (after --): file, nonce, thread count. Each thread takes every n-th line, in
-- order, wrapping around (so a sequence of distinct rows, e.g. tasks to move, is never
-- sent twice by two threads). "%N%" in a body becomes a unique string (nonce, thread,
-- counter), so POSTs never collide on unique names. done() prints one JSON line.

local threads = {}

function setup(thread)
  thread:set("index", #threads)
  table.insert(threads, thread)
end

function init(args)
  local path, nonce, nthreads = args[1], args[2], tonumber(args[3])
  reqs = {}
  local i = 0
  for line in io.lines(path) do
    if i % nthreads == index then
      local method, p, token, body = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t?(.*)$")
      local headers = { ["Authorization"] = "Bearer " .. token }
      if body ~= nil and body ~= "" then
        headers["Content-Type"] = "application/json"
      else
        body = nil
      end
      if body ~= nil and body:find("%N%", 1, true) then
        table.insert(reqs, { method = method, path = p, headers = headers, body = body })
      else
        table.insert(reqs, { raw = wrk.format(method, p, headers, body) })
      end
    end
    i = i + 1
  end
  unique = nonce .. "-" .. index .. "-"
  counter = 0
  pos = 0
  statuses = {}
  sample = ""
end

function request()
  pos = pos + 1
  if pos > #reqs then pos = 1 end
  local r = reqs[pos]
  if r.raw then return r.raw end
  counter = counter + 1
  local body = r.body:gsub("%%N%%", unique .. counter)
  return wrk.format(r.method, r.path, r.headers, body)
end

function response(status, headers, body)
  if status >= 300 then
    local key = tostring(status)
    statuses[key] = (statuses[key] or 0) + 1
    if sample == "" and body then sample = key .. " " .. string.sub(body, 1, 300) end
  end
end

local function json_string(s)
  return '"' .. s:gsub('[%c"\\]', function(c) return string.format("\\u%04x", c:byte()) end) .. '"'
end

function done(summary, latency, requests)
  local counts, sample_out = {}, ""
  for _, thread in ipairs(threads) do
    local st = thread:get("statuses")
    if st then
      for k, v in pairs(st) do counts[k] = (counts[k] or 0) + v end
    end
    local s = thread:get("sample")
    if sample_out == "" and s and s ~= "" then sample_out = s end
  end
  local parts = {}
  for k, v in pairs(counts) do table.insert(parts, string.format('"%s": %d', k, v)) end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "mean_us": %.1f, ' ..
    '"socket_errors": %d, "timeouts": %d, "non_2xx": %d, "statuses": {%s}, "sample": %s}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.mean,
    e.connect + e.read + e.write, e.timeout, e.status, table.concat(parts, ", "), json_string(sample_out)))
end
