-- wrk script: POST an MCP `tools/call` JSON-RPC request, each with a unique id.
--
-- Environment:
--   MCP_SESSION_ID        value of the Mcp-Session-Id header (omitted when empty)
--   MCP_PROTOCOL_VERSION  value of the MCP-Protocol-Version header (default 2025-06-18);
--                         from 2026-07-28 on, every request also carries the standard
--                         headers Mcp-Method and Mcp-Name and the per-request _meta
--                         envelope of that revision
--   MCP_AUTHORIZATION     value of the Authorization header, e.g. `Bearer <jwt>`
--                         (omitted when empty)
--
-- done() prints one line `MCPBENCH {json}` with requests, duration, latency
-- percentiles (microseconds) and wrk's error counters, for the runner to parse.

wrk.method = "POST"

-- setup() runs in the main Lua state once per wrk thread: hand each thread an
-- index so that ids stay unique even with -t > 1 (each thread counts alone).
local thread_count = 0

function setup(thread)
  thread:set("thread_index", thread_count)
  thread_count = thread_count + 1
end

local next_id
local head_prefix
local body_prefix = '{"jsonrpc":"2.0","id":'
local body_suffix = ',"method":"tools/call","params":{"name":"echo","arguments":{"text":"ok"}}}'
local modern_suffix = ',"method":"tools/call","params":{"name":"echo","arguments":{"text":"ok"},'
  .. '"_meta":{"io.modelcontextprotocol/protocolVersion":"%s",'
  .. '"io.modelcontextprotocol/clientCapabilities":{}}}}'

function init(args)
  -- thread_index is a global set by setup(); ids of thread k start at k * 1e9 + 1.
  next_id = (thread_index or 0) * 1000000000

  local host = wrk.headers["Host"]
  if host == nil then
    host = wrk.host
    if wrk.port then
      host = host .. ":" .. wrk.port
    end
  end

  local session = os.getenv("MCP_SESSION_ID") or ""
  local version = os.getenv("MCP_PROTOCOL_VERSION") or "2025-06-18"
  local authorization = os.getenv("MCP_AUTHORIZATION") or ""

  -- Everything but Content-Length and the body is the same for every request:
  -- build it once, so that the generator spends as little CPU as possible.
  local lines = {
    "POST " .. wrk.path .. " HTTP/1.1",
    "Host: " .. host,
    "Accept: application/json, text/event-stream",
    "Content-Type: application/json",
    "MCP-Protocol-Version: " .. version,
  }
  if session ~= "" then
    lines[#lines + 1] = "Mcp-Session-Id: " .. session
  end
  if authorization ~= "" then
    lines[#lines + 1] = "Authorization: " .. authorization
  end
  -- Revisions are dates, so they compare as strings.
  if version >= "2026-07-28" then
    lines[#lines + 1] = "Mcp-Method: tools/call"
    lines[#lines + 1] = "Mcp-Name: echo"
    body_suffix = string.format(modern_suffix, version)
  end
  lines[#lines + 1] = "Content-Length: "
  head_prefix = table.concat(lines, "\r\n")
end

function request()
  next_id = next_id + 1
  local body = body_prefix .. string.format("%d", next_id) .. body_suffix
  return head_prefix .. #body .. "\r\n\r\n" .. body
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'MCPBENCH {"requests":%d,"duration_us":%d,"bytes":%d,'
      .. '"p50_us":%.1f,"p90_us":%.1f,"p99_us":%.1f,"mean_us":%.1f,"max_us":%.1f,'
      .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, latency.max,
    e.connect, e.read, e.write, e.status, e.timeout
  ))
end
