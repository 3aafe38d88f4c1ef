-- GET one user's task list. Args: USER TOKEN [QUERY]
local threads = {}
function setup(thread) table.insert(threads, thread) end

function init(args)
  local query = args[3] or "limit=100"
  wrk.method = "GET"
  wrk.path = "/api/" .. args[1] .. "/tasks?" .. query
  wrk.headers["Authorization"] = "Bearer " .. args[2]
end

-- no request()/response(): wrk sends the static request and skips parsing bodies.

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout))
end
