-- wrk script for MLflow's REST API: one request shape per BENCH_MODE, and a JSON summary
-- line on stdout when the run ends (latencies in microseconds).
--
--   BENCH_MODE   get | search | create_model | create_version
--   BENCH_NAMES  file with one registered model name per line (get, create_version)
--   BENCH_QUERY  the URL-encoded search query string (search)
--   BENCH_NONCE  makes created names unique across runs

local mode = os.getenv("BENCH_MODE")
local names_file = os.getenv("BENCH_NAMES")
local query = os.getenv("BENCH_QUERY") or ""
local nonce = os.getenv("BENCH_NONCE") or "0"

local threads = {}
local next_id = 0

function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

local names = {}
local idx = 0
local count = 0
local json_headers = { ["Content-Type"] = "application/json" }

function init(args)
  if names_file and names_file ~= "" then
    for line in io.lines(names_file) do
      if line ~= "" then table.insert(names, line) end
    end
  end
  idx = (tid * 7919) % math.max(#names, 1)
end

local function next_name()
  idx = idx % #names + 1
  return names[idx]
end

function request()
  if mode == "get" then
    return wrk.format("GET", "/api/2.0/mlflow/registered-models/get?name=" .. next_name())
  elseif mode == "search" then
    return wrk.format("GET", "/api/2.0/mlflow/registered-models/search?" .. query)
  elseif mode == "create_model" then
    count = count + 1
    local body = string.format(
      '{"name":"new-%s-%d-%d","description":"created by the benchmark",' ..
      '"tags":[{"key":"framework","value":"onnx"},{"key":"task","value":"vision"}]}',
      nonce, tid, count)
    return wrk.format("POST", "/api/2.0/mlflow/registered-models/create", json_headers, body)
  elseif mode == "create_version" then
    count = count + 1
    local name = next_name()
    local body = string.format(
      '{"name":"%s","source":"s3://mlflow-artifacts/bench/%s/%s-%d-%d",' ..
      '"description":"created by the benchmark"}',
      name, name, nonce, tid, count)
    return wrk.format("POST", "/api/2.0/mlflow/model-versions/create", json_headers, body)
  end
  error("unknown BENCH_MODE " .. tostring(mode))
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"status_errors":%d,"connect_errors":%d,' ..
    '"read_errors":%d,"write_errors":%d,"timeouts":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f,"max_us":%d}\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, latency.max))
end
