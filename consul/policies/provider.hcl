# ACL policy for the provider adapters' token (OpenAI, Gemini: service "provider", one ID
# per adapter). They write their own registration and read nothing.

service "provider" {
  policy = "write"
}
