-- The OpenAI-compatible routes' response status (gateway/envoy_config/openai.py enables this on
-- them only). The router's OpenAI servicer answers an error that happens before the
-- first byte of a response as a gRPC OK carrying an OpenAI error body, with the HTTP
-- status in x-infermesh-http-status (services.runtime.openai_errors): it becomes the
-- :status, and the header goes. Headers only: the body, an SSE stream included, is never
-- buffered. A gRPC response (a gRPC client calling the service itself) keeps :status 200.
function envoy_on_response(response_handle)
  local headers = response_handle:headers()
  local status = headers:get("x-infermesh-http-status")
  if status == nil then
    return
  end
  headers:remove("x-infermesh-http-status")
  local content_type = headers:get("content-type") or ""
  if string.find(content_type, "application/grpc", 1, true) == 1 then
    return
  end
  if string.match(status, "^[1-5]%d%d$") then
    headers:replace(":status", status)
  end
end
