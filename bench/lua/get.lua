-- GET one path with a bearer token. Args: PATH TOKEN   (PATH with its query: /api/u/stats?tz=UTC)
function init(args)
  wrk.method = "GET"
  wrk.path = args[1]
  wrk.headers["Authorization"] = "Bearer " .. args[2]
end

-- no request()/response(): wrk sends the static request and skips parsing bodies (its
-- errors.status counts answers >= 400; plans.py checks each URL's answer before).

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout))
end
